"""How much each key is used: counts per key and operation, and per version.

A read model of the ``keyledger.usage.KeyUsed`` records, written in the same
transaction as each record (so a count never runs ahead of or behind the
ledger) and rebuilt from the records alone by ``projections.rebuild``.

- ``key_usage_totals``: per key and operation, the requests recorded, the items
  they held, the items that succeeded, and the time of the latest request.
- ``key_usage_versions``: per key, operation and version, the requests in which
  that version served (decrypted or encrypted) at least one item. A usage record
  names the versions a request used, not how many items each served, so this
  counts requests, not items.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from domain.clock import format_time

if TYPE_CHECKING:
    from domain.usage import KeyUse
    from ledger.store import LedgerRecorder, LedgerTransaction, Statement

DDL = [
    "CREATE TABLE IF NOT EXISTS key_usage_totals ("
    "key_name TEXT NOT NULL, operation TEXT NOT NULL, requests BIGINT NOT NULL, "
    "items BIGINT NOT NULL, succeeded BIGINT NOT NULL, last_used_at TEXT NOT NULL, "
    "PRIMARY KEY (key_name, operation))",
    "CREATE TABLE IF NOT EXISTS key_usage_versions ("
    "key_name TEXT NOT NULL, operation TEXT NOT NULL, version INTEGER NOT NULL, "
    "requests BIGINT NOT NULL, PRIMARY KEY (key_name, operation, version))",
]

TABLES = ("key_usage_totals", "key_usage_versions")
_TOTAL_COLUMNS = (
    "key_name",
    "operation",
    "requests",
    "items",
    "succeeded",
    "last_used_at",
)
_VERSION_COLUMNS = ("key_name", "operation", "version", "requests")


def versions_used(use: KeyUse) -> list[int]:
    """The versions a recorded request used, once each."""
    return sorted(set(use.versions_decrypted) | set(use.versions_encrypted))


def count_statements(use: KeyUse) -> list[Statement]:
    """The writes that add one recorded request to the counts.

    Additions commute, so requests sharing a group commit may add in any order;
    ``last_used_at`` keeps the later time whatever the order.
    """
    at = format_time(use.created_on)
    statements: list[Statement] = [
        (
            "INSERT INTO key_usage_totals (key_name, operation, requests, items, "
            "succeeded, last_used_at) VALUES (%s, %s, 1, %s, %s, %s) "
            "ON CONFLICT (key_name, operation) DO UPDATE SET "
            "requests = key_usage_totals.requests + 1, "
            "items = key_usage_totals.items + excluded.items, "
            "succeeded = key_usage_totals.succeeded + excluded.succeeded, "
            "last_used_at = CASE WHEN excluded.last_used_at > "
            "key_usage_totals.last_used_at THEN excluded.last_used_at "
            "ELSE key_usage_totals.last_used_at END",
            (use.key_name, use.operation, use.items, use.succeeded, at),
        )
    ]
    for version in versions_used(use):
        statements.append(
            (
                "INSERT INTO key_usage_versions (key_name, operation, version, "
                "requests) VALUES (%s, %s, %s, 1) "
                "ON CONFLICT (key_name, operation, version) DO UPDATE SET "
                "requests = key_usage_versions.requests + 1",
                (use.key_name, use.operation, version),
            )
        )
    return statements


def for_key(recorder: LedgerRecorder, name: str) -> dict[str, Any]:
    """The key's usage by operation, as ``GET /v1/keys/{name}`` shows it."""
    totals = recorder.query(
        f"SELECT {', '.join(_TOTAL_COLUMNS)} FROM key_usage_totals "
        "WHERE key_name = %s ORDER BY operation",
        (name,),
    )
    versions = recorder.query(
        f"SELECT {', '.join(_VERSION_COLUMNS)} FROM key_usage_versions "
        "WHERE key_name = %s ORDER BY operation, version",
        (name,),
    )
    usage: dict[str, Any] = {
        row["operation"]: {
            "requests": int(row["requests"]),
            "items": int(row["items"]),
            "succeeded": int(row["succeeded"]),
            "last_used_at": row["last_used_at"],
            "versions": {},
        }
        for row in totals
    }
    for row in versions:
        usage[row["operation"]]["versions"][str(row["version"])] = int(row["requests"])
    return usage


def snapshot_tables(
    recorder: LedgerRecorder | LedgerTransaction,
) -> dict[str, list[dict[str, Any]]]:
    """Every row of the usage tables, in a stable order, with plain integers."""
    totals = recorder.query(
        f"SELECT {', '.join(_TOTAL_COLUMNS)} FROM key_usage_totals "
        "ORDER BY key_name, operation"
    )
    versions = recorder.query(
        f"SELECT {', '.join(_VERSION_COLUMNS)} FROM key_usage_versions "
        "ORDER BY key_name, operation, version"
    )
    return {
        "key_usage_totals": [_plain(row) for row in totals],
        "key_usage_versions": [_plain(row) for row in versions],
    }


def expected_tables(uses: Iterable[KeyUse]) -> dict[str, list[dict[str, Any]]]:
    """The rows ``snapshot_tables`` should return after recording ``uses``."""
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    versions: dict[tuple[str, str, int], int] = {}
    for use in uses:
        at = format_time(use.created_on)
        total = totals.setdefault(
            (use.key_name, use.operation),
            {
                "key_name": use.key_name,
                "operation": use.operation,
                "requests": 0,
                "items": 0,
                "succeeded": 0,
                "last_used_at": at,
            },
        )
        total["requests"] += 1
        total["items"] += use.items
        total["succeeded"] += use.succeeded
        total["last_used_at"] = max(total["last_used_at"], at)
        for version in versions_used(use):
            slot = (use.key_name, use.operation, version)
            versions[slot] = versions.get(slot, 0) + 1
    return {
        "key_usage_totals": [totals[slot] for slot in sorted(totals)],
        "key_usage_versions": [
            {"key_name": name, "operation": operation, "version": v, "requests": n}
            for (name, operation, v), n in sorted(versions.items())
        ],
    }


def rewrite_statements(uses: Iterable[KeyUse]) -> list[Statement]:
    """Replace the usage tables by the counts of ``uses`` (for a rebuild)."""
    expected = expected_tables(uses)
    statements: list[Statement] = [(f"DELETE FROM {table}", ()) for table in TABLES]
    for table, rows in expected.items():
        for row in rows:
            columns = list(row)
            statements.append(
                (
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                    f"({', '.join(['%s'] * len(columns))})",
                    tuple(row[column] for column in columns),
                )
            )
    return statements


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {
        name: int(value)
        if name in ("requests", "items", "succeeded", "version")
        else value
        for name, value in row.items()
    }
