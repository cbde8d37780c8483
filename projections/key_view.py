"""The current view of every key: versions, states, primary, scheduled destructions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from domain.keys import ManagedKey
    from ledger.store import LedgerRecorder, Statement

DDL = [
    "CREATE TABLE IF NOT EXISTS key_view ("
    "name TEXT PRIMARY KEY, key_id TEXT NOT NULL, algorithm TEXT NOT NULL, "
    "state TEXT NOT NULL, primary_version INTEGER NOT NULL, "
    "stream_version INTEGER NOT NULL, created_at TEXT NOT NULL, "
    "updated_at TEXT NOT NULL, last_position BIGINT NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS destruction_schedule ("
    "key_name TEXT NOT NULL, version INTEGER NOT NULL, destroy_at TEXT NOT NULL, "
    "PRIMARY KEY (key_name, version))",
    "CREATE INDEX IF NOT EXISTS destruction_schedule_due_idx "
    "ON destruction_schedule (destroy_at)",
]

TABLES = ("key_view", "destruction_schedule")

MAX_PAGE = 1000


def view_statements(key: ManagedKey, last_position: int) -> list[Statement]:
    """The writes that make the read side show ``key`` as of ``last_position``."""
    view = key.to_view()
    doc = json.dumps(view, sort_keys=True, separators=(",", ":"))
    statements: list[Statement] = [
        (
            "INSERT INTO key_view (name, key_id, algorithm, state, primary_version, "
            "stream_version, created_at, updated_at, last_position, doc) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET key_id = excluded.key_id, "
            "algorithm = excluded.algorithm, state = excluded.state, "
            "primary_version = excluded.primary_version, "
            "stream_version = excluded.stream_version, "
            "created_at = excluded.created_at, updated_at = excluded.updated_at, "
            "last_position = excluded.last_position, doc = excluded.doc",
            (
                view["name"],
                view["key_id"],
                view["algorithm"],
                view["state"],
                view["primary_version"],
                view["stream_version"],
                view["created_at"],
                view["updated_at"],
                last_position,
                doc,
            ),
        ),
        ("DELETE FROM destruction_schedule WHERE key_name = %s", (view["name"],)),
    ]
    for version in view["versions"]:
        if version["state"] == "destroy_scheduled":
            statements.append(
                (
                    "INSERT INTO destruction_schedule (key_name, version, destroy_at) "
                    "VALUES (%s, %s, %s)",
                    (view["name"], version["version"], version["destroy_at"]),
                )
            )
    return statements


def get_key(recorder: LedgerRecorder, name: str) -> dict[str, Any] | None:
    """The current view of the key called ``name``, or None."""
    rows = recorder.query(
        "SELECT doc, last_position FROM key_view WHERE name = %s", (name,)
    )
    if not rows:
        return None
    view: dict[str, Any] = json.loads(rows[0]["doc"])
    view["last_position"] = rows[0]["last_position"]
    return view


def list_keys(
    recorder: LedgerRecorder,
    *,
    after: str | None = None,
    limit: int = 100,
    state: str | None = None,
    prefix: str | None = None,
    algorithm: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of keys in name order, and the cursor for the next page (or None)."""
    clauses: list[str] = ["1 = 1"]
    params: list[Any] = []
    if after is not None:
        clauses.append("name > %s")
        params.append(after)
    if state is not None:
        clauses.append("state = %s")
        params.append(state)
    if algorithm is not None:
        clauses.append("algorithm = %s")
        params.append(algorithm)
    if prefix is not None:
        clauses.append("substr(name, 1, %s) = %s")
        params += [len(prefix), prefix]
    rows = recorder.query(
        f"SELECT doc, last_position FROM key_view WHERE {' AND '.join(clauses)} "
        "ORDER BY name LIMIT %s",
        (*params, limit + 1),
    )
    items = []
    for row in rows[:limit]:
        view = json.loads(row["doc"])
        view["last_position"] = row["last_position"]
        items.append(view)
    cursor = items[-1]["name"] if len(rows) > limit else None
    return items, cursor


def due_destructions(
    recorder: LedgerRecorder, now: str, limit: int = 100
) -> list[tuple[str, int]]:
    """Scheduled destructions whose time has come, oldest first."""
    rows = recorder.query(
        "SELECT key_name, version FROM destruction_schedule WHERE destroy_at <= %s "
        "ORDER BY destroy_at, key_name, version LIMIT %s",
        (now, limit),
    )
    return [(row["key_name"], row["version"]) for row in rows]


def snapshot_tables(recorder: LedgerRecorder) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of this projection, in a stable order."""
    return {
        "key_view": recorder.query("SELECT * FROM key_view ORDER BY name"),
        "destruction_schedule": recorder.query(
            "SELECT * FROM destruction_schedule ORDER BY key_name, version"
        ),
    }
