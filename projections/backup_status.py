"""The backup status of every key: is it backed up, in enough places, recently, checked?

Written in the same transaction as the backup events: a row per key's backup
record (``backup_keys``) and a row per backup (``backup_records``). Statuses that
depend on the time (``due``, ``overdue``) are computed when read, from these rows
and the key view.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import StoredEvent

from domain.backups import (
    BackupPolicy,
    BackupRecord,
    KeyBackups,
    key_status,
)
from domain.clock import format_time

if TYPE_CHECKING:
    from ledger.store import LedgerRecorder, LedgerTransaction, Statement

DDL = [
    "CREATE TABLE IF NOT EXISTS backup_keys ("
    "key_name TEXT PRIMARY KEY, policy TEXT, last_backup_id TEXT, "
    "claim_id TEXT, claimed_at TEXT, last_failure TEXT, "
    "stream_version INTEGER NOT NULL, last_position BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS backup_records ("
    "backup_id TEXT PRIMARY KEY, key_name TEXT NOT NULL, taken_at TEXT NOT NULL, "
    "record TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS backup_records_key_idx "
    "ON backup_records (key_name, taken_at)",
    # A table of its own, so ledgers created before it need no change.
    "CREATE TABLE IF NOT EXISTS backup_verified ("
    "key_name TEXT PRIMARY KEY, verified_at TEXT NOT NULL)",
]

TABLES = ("backup_keys", "backup_records", "backup_verified")


def touched_backups(events: list[Any]) -> set[str]:
    """The backup ids whose record ``events`` change."""
    return {
        event.backup_id
        for event in events
        if hasattr(event, "backup_id")
        and not isinstance(event, KeyBackups.Started | KeyBackups.BackupFailed)
    }


_KEY_COLUMNS = (
    "key_name",
    "policy",
    "last_backup_id",
    "claim_id",
    "claimed_at",
    "last_failure",
    "stream_version",
    "last_position",
)
_RECORD_COLUMNS = ("backup_id", "key_name", "taken_at", "record")
_VERIFIED_COLUMNS = ("key_name", "verified_at")


def verified_row(backups: KeyBackups) -> dict[str, Any]:
    """The ``backup_verified`` row: when a backup of the key last verified whole."""
    return {"key_name": backups.key_name, "verified_at": backups.last_verified_ok_at}


def key_row(backups: KeyBackups, last_position: int) -> dict[str, Any]:
    """The ``backup_keys`` row of a key's backup record."""
    claim = backups.claim or (None, None)
    return {
        "key_name": backups.key_name,
        "policy": _dump(backups.policy),
        "last_backup_id": backups.last_backup_id,
        "claim_id": claim[0],
        "claimed_at": claim[1],
        "last_failure": _dump(backups.last_failure),
        "stream_version": backups.version,
        "last_position": last_position,
    }


def record_row(backups: KeyBackups, backup_id: str) -> dict[str, Any]:
    """The ``backup_records`` row of one backup."""
    record = backups.records[backup_id]
    return {
        "backup_id": backup_id,
        "key_name": backups.key_name,
        "taken_at": record.taken_at,
        "record": json.dumps(record.as_json(), sort_keys=True),
    }


def view_statements(
    backups: KeyBackups, touched: set[str], last_position: int
) -> list[Statement]:
    """The writes that make the read side show ``backups`` as of ``last_position``."""
    statements = [_upsert("backup_keys", _KEY_COLUMNS, key_row(backups, last_position))]
    if backups.last_verified_ok_at is not None:
        statements.append(
            _upsert("backup_verified", _VERIFIED_COLUMNS, verified_row(backups))
        )
    for backup_id in sorted(touched):
        statements.append(
            _upsert("backup_records", _RECORD_COLUMNS, record_row(backups, backup_id))
        )
    return statements


def _upsert(table: str, columns: tuple[str, ...], row: dict[str, Any]) -> Statement:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({columns[0]}) DO UPDATE SET {updates}",
        tuple(row[column] for column in columns),
    )


def snapshot_tables(
    reader: LedgerRecorder | LedgerTransaction,
) -> dict[str, list[dict[str, Any]]]:
    """Every row of the backup tables, in a stable order."""
    return {
        "backup_keys": reader.query(
            f"SELECT {', '.join(_KEY_COLUMNS)} FROM backup_keys ORDER BY key_name"
        ),
        "backup_records": reader.query(
            f"SELECT {', '.join(_RECORD_COLUMNS)} FROM backup_records "
            "ORDER BY backup_id"
        ),
        "backup_verified": reader.query(
            f"SELECT {', '.join(_VERIFIED_COLUMNS)} FROM backup_verified "
            "ORDER BY key_name"
        ),
    }


def expected_tables(
    records: Iterable[tuple[KeyBackups, int]],
) -> dict[str, list[dict[str, Any]]]:
    """The rows ``snapshot_tables`` should return for these backup records."""
    keys, rows, verified = [], [], []
    for backups, last_position in records:
        keys.append(key_row(backups, last_position))
        rows += [record_row(backups, backup_id) for backup_id in backups.records]
        if backups.last_verified_ok_at is not None:
            verified.append(verified_row(backups))
    return {
        "backup_keys": sorted(keys, key=lambda row: row["key_name"]),
        "backup_records": sorted(rows, key=lambda row: row["backup_id"]),
        "backup_verified": sorted(verified, key=lambda row: row["key_name"]),
    }


def replay(
    app: Any, reader: LedgerRecorder | LedgerTransaction
) -> list[tuple[KeyBackups, int]]:
    """Every key's backup record as its events make it, with its last position."""
    table = app.ledger.events_table_name
    found: dict[uuid.UUID, KeyBackups] = {}
    last: dict[uuid.UUID, int] = {}
    after = 0
    while True:
        rows = reader.query(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {table} WHERE notification_id > %s AND topic LIKE %s "
            "ORDER BY notification_id LIMIT %s",
            (after, "keyledger.backup.%", 500),
        )
        for row in rows:
            stream = uuid.UUID(str(row["originator_id"]))
            stored = StoredEvent(
                stream, row["originator_version"], row["topic"], row["state"]
            )
            event: Any = app.mapper.to_domain_event(stored)
            if isinstance(event, KeyBackups.Opened) or stream in found:
                found[stream] = event.mutate(found.get(stream))
                last[stream] = row["notification_id"]
        if len(rows) < 500:
            return [(backups, last[stream]) for stream, backups in found.items()]
        after = rows[-1]["notification_id"]


def get_record(
    recorder: LedgerRecorder, backup_id: str
) -> tuple[str, BackupRecord] | None:
    """The key name and record of backup ``backup_id``, or None."""
    rows = recorder.query(
        "SELECT key_name, record FROM backup_records WHERE backup_id = %s",
        (backup_id,),
    )
    if not rows:
        return None
    return rows[0]["key_name"], _record(rows[0]["record"])


def key_backups(
    recorder: LedgerRecorder, key_name: str, *, after: str | None, limit: int
) -> tuple[list[BackupRecord], str | None]:
    """One page of the key's backups, newest first, and the next cursor."""
    clauses, params = ["key_name = %s"], [key_name]
    if after is not None:
        clauses.append("taken_at || backup_id < %s")
        params.append(after)
    rows = recorder.query(
        "SELECT backup_id, taken_at, record FROM backup_records "
        f"WHERE {' AND '.join(clauses)} ORDER BY taken_at DESC, backup_id DESC "
        "LIMIT %s",
        (*params, limit + 1),
    )
    records = [_record(row["record"]) for row in rows[:limit]]
    cursor = (
        rows[limit - 1]["taken_at"] + rows[limit - 1]["backup_id"]
        if len(rows) > limit
        else None
    )
    return records, cursor


def all_records(recorder: LedgerRecorder, key_name: str) -> list[BackupRecord]:
    """Every backup of the key, oldest first."""
    rows = recorder.query(
        "SELECT record FROM backup_records WHERE key_name = %s "
        "ORDER BY taken_at, backup_id",
        (key_name,),
    )
    return [_record(row["record"]) for row in rows]


def status_page(
    recorder: LedgerRecorder,
    *,
    default_policy: BackupPolicy,
    now: datetime,
    after: str | None,
    limit: int,
    status: str | None,
    key: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of keys' backup statuses in name order, filtered by ``status``.

    The cursor is None on the last page. Limitation: the filter is applied
    after reading, because ``due`` and ``overdue`` depend on the time of the
    question; a page with a filter reads keys in batches until it is full.
    """
    items: list[dict[str, Any]] = []
    cursor = after
    batch = 200
    while True:
        clauses, params = ["1 = 1"], []
        if cursor is not None:
            clauses.append("kv.name > %s")
            params.append(cursor)
        if key is not None:
            clauses.append("kv.name = %s")
            params.append(key)
        rows = recorder.query(
            "SELECT kv.name, kv.created_at, bk.policy, bk.last_backup_id, "
            "bk.last_failure, br.record, bv.verified_at "
            "FROM key_view kv LEFT JOIN backup_keys bk ON bk.key_name = kv.name "
            "LEFT JOIN backup_records br ON br.backup_id = bk.last_backup_id "
            "LEFT JOIN backup_verified bv ON bv.key_name = kv.name "
            f"WHERE {' AND '.join(clauses)} ORDER BY kv.name LIMIT %s",
            (*params, batch),
        )
        for row in rows:
            item = _status_item(recorder, row, default_policy, now)
            if status is None or item["status"] == status:
                items.append(item)
                if len(items) > limit:
                    # One more than asked: there is a next page.
                    return items[:limit], items[limit - 1]["key"]
        if len(rows) < batch:
            return items, None
        cursor = rows[-1]["name"]


def _status_item(
    recorder: LedgerRecorder,
    row: dict[str, Any],
    default_policy: BackupPolicy,
    now: datetime,
) -> dict[str, Any]:
    own = json.loads(row["policy"]) if row["policy"] else None
    policy = BackupPolicy.from_json(own) if own else default_policy
    last = _record(row["record"]) if row["record"] else None
    status, due_at = key_status(last, policy, created_at=row["created_at"], now=now)
    whole = last.whole_copies() if last is not None else []
    return {
        "key": row["name"],
        "status": status,
        "policy": policy.as_json(),
        "policy_source": "key" if own else "default",
        "next_due_at": due_at,
        "last_backup": None
        if last is None
        else {
            "backup_id": last.backup_id,
            "taken_at": last.taken_at,
            "retain_until": last.retain_until,
            "verified_at": last.verified_at,
            "verified_ok": last.verified_ok,
        },
        "last_successful_verification_at": row["verified_at"],
        "copies_by_location": _by_location(whole),
        "last_failure": json.loads(row["last_failure"])
        if row["last_failure"]
        else None,
        "destroyed_versions_held": destroyed_versions_held(recorder, row["name"], now),
    }


def destroyed_versions_held(
    recorder: LedgerRecorder, key_name: str, now: datetime
) -> list[dict[str, Any]]:
    """Per destroyed version, the immutable backups that still hold its material."""
    destroyed = [
        row["version"]
        for row in recorder.query(
            "SELECT version FROM key_versions WHERE key_name = %s "
            "AND state = 'destroyed' ORDER BY version",
            (key_name,),
        )
    ]
    if not destroyed:
        return []
    moment = format_time(now)
    records = all_records(recorder, key_name)
    held = []
    for number in destroyed:
        holders = [
            {
                "backup_id": record.backup_id,
                "retain_until": record.retain_until,
                "copies": record.whole_copies(),
            }
            for record in records
            if record.retain_until > moment
            and record.whole_copies()
            and any(
                item["version"] == number and item["material"]
                for item in record.versions
            )
        ]
        if holders:
            held.append({"version": number, "backups": holders})
    return held


def _by_location(copies: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for copy in copies:
        counts[copy["location"]] = counts.get(copy["location"], 0) + 1
    return dict(sorted(counts.items()))


def _record(text: str) -> BackupRecord:
    data = json.loads(text)
    return BackupRecord(
        backup_id=data["backup_id"],
        taken_at=data["taken_at"],
        digest=data["digest"],
        size=data["size"],
        versions=tuple(data["versions"]),
        retain_until=data["retain_until"],
        copies=tuple(data["copies"]),
        failures=tuple(data["failures"]),
        verified_at=data["verified_at"],
        verification=tuple(data["verification"]),
        pruned=tuple(data["pruned"]),
        trimmed=tuple(data.get("trimmed", ())),
        prune_failures=tuple(data.get("prune_failures", ())),
    )


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def rebuild_statements(app: Any, reader: Any) -> list[Statement]:
    """The writes that replace the backup tables by what the events make them."""
    statements: list[Statement] = [
        ("DELETE FROM backup_records", ()),
        ("DELETE FROM backup_keys", ()),
        ("DELETE FROM backup_verified", ()),
    ]
    for backups, last_position in replay(app, reader):
        statements += view_statements(backups, set(backups.records), last_position)
    return statements
