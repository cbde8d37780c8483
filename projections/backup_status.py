"""The backup status of every key: is it backed up, in enough places, recently, checked?

Written in the same transaction as the backup events: a row per key's backup
record (``backup_keys``) and a row per backup (``backup_records``). Statuses that
depend on the time (``due``, ``overdue``) are computed when read, from these rows
and the key view.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from domain.backups import (
    BackupPolicy,
    BackupRecord,
    KeyBackups,
    key_status,
)
from domain.clock import format_time

if TYPE_CHECKING:
    from ledger.store import LedgerRecorder, Statement

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
]

TABLES = ("backup_keys", "backup_records")


def touched_backups(events: list[Any]) -> set[str]:
    """The backup ids whose record ``events`` change."""
    return {
        event.backup_id
        for event in events
        if hasattr(event, "backup_id")
        and not isinstance(event, KeyBackups.Started | KeyBackups.BackupFailed)
    }


def view_statements(
    backups: KeyBackups, touched: set[str], last_position: int
) -> list[Statement]:
    """The writes that make the read side show ``backups`` as of ``last_position``."""
    claim = backups.claim or (None, None)
    statements: list[Statement] = [
        (
            "INSERT INTO backup_keys (key_name, policy, last_backup_id, claim_id, "
            "claimed_at, last_failure, stream_version, last_position) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key_name) DO UPDATE "
            "SET policy = excluded.policy, last_backup_id = excluded.last_backup_id, "
            "claim_id = excluded.claim_id, claimed_at = excluded.claimed_at, "
            "last_failure = excluded.last_failure, "
            "stream_version = excluded.stream_version, "
            "last_position = excluded.last_position",
            (
                backups.key_name,
                _dump(backups.policy),
                backups.last_backup_id,
                claim[0],
                claim[1],
                _dump(backups.last_failure),
                backups.version,
                last_position,
            ),
        )
    ]
    for backup_id in sorted(touched):
        record = backups.records[backup_id]
        statements.append(
            (
                "INSERT INTO backup_records (backup_id, key_name, taken_at, record) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (backup_id) DO UPDATE "
                "SET record = excluded.record",
                (
                    backup_id,
                    backups.key_name,
                    record.taken_at,
                    json.dumps(record.as_json()),
                ),
            )
        )
    return statements


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

    Limitation: the filter is applied after reading, because ``due`` and
    ``overdue`` depend on the time of the question; a page with a filter reads
    keys in batches until it is full.
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
            "bk.last_failure, br.record "
            "FROM key_view kv LEFT JOIN backup_keys bk ON bk.key_name = kv.name "
            "LEFT JOIN backup_records br ON br.backup_id = bk.last_backup_id "
            f"WHERE {' AND '.join(clauses)} ORDER BY kv.name LIMIT %s",
            (*params, batch),
        )
        for row in rows:
            item = _status_item(recorder, row, default_policy, now)
            if status is None or item["status"] == status:
                items.append(item)
                if len(items) == limit:
                    return items, row["name"]
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
    verified = _last_verified(recorder, row["name"]) if last is not None else None
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
        "last_successful_verification_at": verified,
        "copies_by_location": _by_location(whole),
        "last_failure": json.loads(row["last_failure"])
        if row["last_failure"]
        else None,
        "destroyed_versions_held": destroyed_versions_held(recorder, row["name"], now),
    }


def _last_verified(recorder: LedgerRecorder, key_name: str) -> str | None:
    found = None
    for record in all_records(recorder, key_name):
        if record.verified_ok and (found is None or record.verified_at > found):  # type: ignore[operator]
            found = record.verified_at
    return found


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
    )


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def rebuild_statements(recorder: LedgerRecorder, repository: Any) -> list[Statement]:
    """Every backup row as the backup events make it (after a ledger restore).

    TODO: call this from ``projections.rebuild`` too, because a rebuild now
    leaves the backup tables as they are instead of checking them.
    """
    rows = recorder.query(
        "SELECT originator_id, max(notification_id) AS last_position "
        f"FROM {recorder.events_table_name} WHERE topic LIKE %s "
        "GROUP BY originator_id",
        ("keyledger.backup.%",),
    )
    statements: list[Statement] = [
        ("DELETE FROM backup_records", ()),
        ("DELETE FROM backup_keys", ()),
    ]
    for row in rows:
        aggregate = repository.get(_uuid(row["originator_id"]))
        if isinstance(aggregate, KeyBackups):
            statements += view_statements(
                aggregate, set(aggregate.records), int(row["last_position"])
            )
    return statements


def _uuid(value: Any) -> Any:
    import uuid

    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
