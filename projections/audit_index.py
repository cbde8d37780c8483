"""An index of every entry by key, principal, type, time and outcome, for auditors.

Filtering the events table itself would mean parsing every entry's JSON for the
actor and the key: fine for a thousand entries, hopeless for a million. This
projection keeps one narrow row per entry with indexed columns. It is caught up
from the events table (strictly in position order, idempotently) before every
query, so it never answers with less than what was recorded when it was asked,
and it costs the write path nothing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ledger.store import LedgerRecorder, Statement

DDL = [
    "CREATE TABLE IF NOT EXISTS audit_index ("
    "position BIGINT PRIMARY KEY, recorded_at TEXT NOT NULL, type TEXT NOT NULL, "
    "key_name TEXT, principal TEXT NOT NULL, outcome TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_index_key_idx "
    "ON audit_index (key_name, position)",
    "CREATE INDEX IF NOT EXISTS audit_index_principal_idx "
    "ON audit_index (principal, position)",
    "CREATE INDEX IF NOT EXISTS audit_index_type_idx ON audit_index (type, position)",
    "CREATE INDEX IF NOT EXISTS audit_index_time_idx "
    "ON audit_index (recorded_at, position)",
    "CREATE INDEX IF NOT EXISTS audit_index_outcome_idx "
    "ON audit_index (outcome, position)",
]

REFUSED_TYPES = frozenset(
    {"keyledger.access.RequestRefused", "keyledger.access.RefusalsRepeated"}
)
USE_TYPE = "keyledger.usage.KeyUsed"
OUTCOMES = ("success", "refused")
PAGE = 2000


def index_row(position: int, entry: dict[str, Any]) -> dict[str, Any]:
    """The index row of one entry: what an auditor filters on."""
    subject = entry.get("subject") or ""
    payload = entry.get("payload") or {}
    key = subject[4:] if subject.startswith("key:") else payload.get("key")
    actor = entry.get("actor") or {}
    return {
        "position": position,
        "recorded_at": entry["recorded_at"],
        "type": entry["type"],
        "key_name": key if isinstance(key, str) else None,
        "principal": str(actor.get("principal", "")),
        "outcome": outcome_of(entry["type"], payload),
    }


def outcome_of(event_type: str, payload: dict[str, Any]) -> str:
    """``refused`` for a refused request, and for a key use any item of which was
    refused (fewer ``succeeded`` than ``items``); else ``success``."""
    if event_type in REFUSED_TYPES:
        return "refused"
    if event_type == USE_TYPE and payload.get("succeeded") != payload.get("items"):
        return "refused"
    return "success"


def catch_up(ledger: LedgerRecorder) -> int:
    """Index every entry recorded since the last catch-up; how many were added."""
    rows = ledger.query("SELECT max(position) AS last FROM audit_index")
    last = int(rows[0]["last"] or 0) if rows else 0
    added = 0
    while True:
        entries = ledger.query(
            f"SELECT notification_id, state FROM {ledger.events_table_name} "
            "WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
            (last, PAGE),
        )
        if not entries:
            return added
        statements: list[Statement] = []
        for row in entries:
            indexed = index_row(row["notification_id"], json.loads(bytes(row["state"])))
            statements.append(
                (
                    "INSERT INTO audit_index (position, recorded_at, type, key_name, "
                    "principal, outcome) VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (position) DO NOTHING",
                    tuple(indexed.values()),
                )
            )
        ledger.execute(statements)
        added += len(entries)
        last = entries[-1]["notification_id"]
