"""The compliance report's collector: a period of the ledger as plain data.

``collect`` reads the ledger and its read side and returns dicts, lists and
strings only, so the HTML and PDF renderers (and a test) read the same facts.
Every fact about the period comes from signed entries recorded in [from, to);
each listed entry carries its position, hash and signing key id as evidence.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from domain.backups import BackupPolicy
from domain.clock import format_time, parse_time
from domain.errors import InvalidArgumentError
from ledger.audit import AuditFilter, search, verify_range
from ledger.service import LATEST_CLOCK_TIME, KeyService
from ledger.store import checkpoint_table
from ledger.verify import verify_ledger
from projections import audit_index, backup_status, key_view, usage_counts

DESTRUCTION_TYPES = (
    "keyledger.key.DestructionScheduled",
    "keyledger.key.VersionDestroyed",
    "keyledger.key.VersionsTrimmed",
)
DUAL_CONTROL_TYPES = (
    "keyledger.dual_control.PolicySet",
    "keyledger.dual_control.PolicyChanged",
    "keyledger.dual_control.Requested",
    "keyledger.dual_control.Approved",
    "keyledger.dual_control.Expired",
    "keyledger.dual_control.ActionFailed",
)
BACKUP_VERIFIED = "keyledger.backup.BackupVerified"
MAX_PERIOD = timedelta(days=3660)
# A key is "due" when its rotation falls within this share of its period after
# the report's end (at most 30 days): early enough to plan the rotation.
DUE_NOTICE_SHARE = 4
DUE_NOTICE_MAX = timedelta(days=30)
MAX_LISTED_REFUSALS = 1000
_PAGE = 1000


def parse_period(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """The period [start, end) from two times with offsets; else raise.

    Raises:
        InvalidArgumentError: ``INVALID_PERIOD`` when a bound is missing, or
            ``to`` is not after ``from``, or after ``LATEST_CLOCK_TIME``, or
            the period exceeds ten years;
            ``INVALID_TIME`` when a bound is not a time with an offset.
    """
    if not start or not end:
        raise InvalidArgumentError(
            "A report needs both 'from' and 'to' (times with offsets).",
            code="INVALID_PERIOD",
        )
    try:
        begins, ends = parse_time(start), parse_time(end)
    except ValueError as error:
        raise InvalidArgumentError(str(error), code="INVALID_TIME") from None
    if ends <= begins:
        raise InvalidArgumentError(
            "'to' must be later than 'from'.", code="INVALID_PERIOD"
        )
    if ends > LATEST_CLOCK_TIME:
        raise InvalidArgumentError(
            f"A report period ends by {format_time(LATEST_CLOCK_TIME)}.",
            code="INVALID_PERIOD",
        )
    if ends - begins > MAX_PERIOD:
        raise InvalidArgumentError(
            "A report covers at most ten years.", code="INVALID_PERIOD"
        )
    return begins, ends


def collect(
    service: KeyService,
    *,
    start: datetime,
    end: datetime,
    default_policy: BackupPolicy,
    now: datetime,
) -> dict[str, Any]:
    """Everything the compliance report shows about [start, end), as plain data.

    Rotations and backups are judged at ``end``: a key is overdue when its
    rotation (or backup) was due before the period ended.

    Limitation: the key inventory and the backup coverage are the read side as
    it is when the report is made, not as it was at ``end``; for a period in
    the past, keys created or rotated since appear as they are now. The
    period's own facts (refusals, destructions, approvals, verifications) are
    exactly the entries recorded in it.
    """
    ledger = service.ledger
    audit_index.catch_up(ledger)
    head = ledger.head()
    keys = _inventory(service, end)
    refusals = _refusals(service, start, end)
    return {
        "period": {"from": format_time(start), "to": format_time(end)},
        "generated_at": format_time(now),
        "ledger": _ledger_facts(service, start, end, head),
        "keys": keys,
        "key_states": dict(Counter(key["state"] for key in keys)),
        "version_states": _version_states(service),
        "rotation_counts": dict(Counter(key["rotation"]["status"] for key in keys)),
        "backups": _backups(service, default_policy, end),
        "backup_verifications": _backup_verifications(service, start, end),
        "destructions": _destructions(service, start, end),
        "destroyed_versions": _destroyed_versions(service),
        "compromises": _compromises(service, start, end),
        "refusals": refusals,
        "dual_control": _dual_control(service, start, end),
    }


def rotation_status(
    period_seconds: int | None, last_rotated_at: str, end: datetime
) -> dict[str, Any]:
    """Whether a key's rotation is ``overdue``, ``due``, ``ok`` or has no period.

    Due at = the primary version's creation + the period. Overdue when that is
    at or before ``end``; due when it falls within the notice window after it.
    """
    if period_seconds is None:
        return {"status": "no_period", "due_at": None}
    period = timedelta(seconds=period_seconds)
    due_at = parse_time(last_rotated_at) + period
    notice = min(period / DUE_NOTICE_SHARE, DUE_NOTICE_MAX)
    if due_at <= end:
        status = "overdue"
    elif due_at <= end + notice:
        status = "due"
    else:
        status = "ok"
    return {"status": status, "due_at": format_time(due_at)}


# Sections ------------------------------------------------------------------


def _ledger_facts(
    service: KeyService, start: datetime, end: datetime, head: Any
) -> dict[str, Any]:
    ledger = service.ledger
    verification = verify_ledger(ledger, service.public_keys()).as_json()
    checkpoints = ledger.query(
        "SELECT position, hash, recorded_at, kid FROM "
        f"{checkpoint_table(ledger.events_table_name)} "
        "ORDER BY position DESC LIMIT 1"
    )
    span = ledger.query(
        "SELECT min(position) AS first, max(position) AS last, count(*) AS n "
        "FROM audit_index WHERE recorded_at >= %s AND recorded_at < %s",
        (format_time(start), format_time(end)),
    )[0]
    in_period = None
    if span["first"] is not None:
        first, last = int(span["first"]), int(span["last"])
        # A verified ledger holds every range of it; only a broken one needs
        # the period's own range checked, to say whether the period is whole.
        found = (
            {"ok": True, "first_failure": None}
            if verification["ok"]
            else verify_range(service, first, last)
        )
        in_period = {
            "first_position": first,
            "last_position": last,
            "entries": int(span["n"]),
            "ok": found["ok"],
            "first_failure": found["first_failure"],
        }
    return {
        "head": {
            "position": head.position,
            "hash": head.hash,
            "recorded_at": head.recorded_at,
        },
        "verified": verification["ok"],
        "verification": verification,
        "latest_checkpoint": dict(checkpoints[0]) if checkpoints else None,
        "period": in_period,
    }


def _inventory(service: KeyService, end: datetime) -> list[dict[str, Any]]:
    ledger = service.ledger
    rotated = key_view.primary_created_at(ledger)
    keys: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page, after = key_view.list_keys(ledger, after=after, limit=_PAGE)
        for key in page:
            last = rotated[key["name"]]
            usage = usage_counts.for_key(ledger, key["name"])
            keys.append(
                {
                    "name": key["name"],
                    "algorithm": key["algorithm"],
                    "state": key["state"],
                    "primary_version": key["primary_version"],
                    "versions_count": key["versions_count"],
                    "created_at": key["created_at"],
                    "last_rotated_at": last,
                    "rotation_period_seconds": key["rotation_period_seconds"],
                    "rotation": rotation_status(
                        key["rotation_period_seconds"], last, end
                    ),
                    "uses": sum(item["requests"] for item in usage.values()),
                }
            )
        if after is None:
            return keys


def _version_states(service: KeyService) -> dict[str, int]:
    rows = service.ledger.query(
        "SELECT state, count(*) AS n FROM key_versions GROUP BY state ORDER BY state"
    )
    return {row["state"]: int(row["n"]) for row in rows}


def _backups(
    service: KeyService, default_policy: BackupPolicy, end: datetime
) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page, after = backup_status.status_page(
            service.ledger,
            default_policy=default_policy,
            now=end,
            after=after,
            limit=_PAGE,
            status=None,
        )
        items += page
        if after is None:
            break
    locations: Counter[str] = Counter()
    keys = []
    for item in items:
        locations.update(item["copies_by_location"].keys())
        last = item["last_backup"]
        keys.append(
            {
                "key": item["key"],
                "status": item["status"],
                "last_backup_at": last["taken_at"] if last else None,
                "copies_by_location": item["copies_by_location"],
                "last_successful_verification_at": item[
                    "last_successful_verification_at"
                ],
            }
        )
    return {
        "keys": keys,
        "keys_by_location": dict(sorted(locations.items())),
        "keys_without_copies": sum(1 for k in keys if not k["copies_by_location"]),
        "status_counts": dict(Counter(k["status"] for k in keys)),
    }


def _backup_verifications(
    service: KeyService, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    found = []
    for entry in _entries(service, start, end, types=(BACKUP_VERIFIED,)):
        payload = entry["payload"]
        results = [
            {
                "target": result.get("target"),
                "location": result.get("location"),
                "ok": bool(result.get("ok")),
                "code": result.get("code"),
            }
            for result in payload.get("results", [])
        ]
        found.append(
            {
                **_evidence(entry),
                "key": _key_of(entry),
                "backup_id": payload.get("backup_id"),
                "ok": all(result["ok"] for result in results),
                "results": results,
            }
        )
    return found


def _destructions(
    service: KeyService, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    found = []
    for entry in _entries(service, start, end, types=DESTRUCTION_TYPES):
        payload = entry["payload"]
        versions = payload.get("removed") or [payload.get("version")]
        found.append(
            {
                **_evidence(entry),
                "key": _key_of(entry),
                "versions": [v for v in versions if v is not None],
                "destroy_at": payload.get("destroy_at"),
            }
        )
    return found


def _compromises(
    service: KeyService, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    return [
        {
            **_evidence(entry),
            "key": _key_of(entry),
            "version": entry["payload"].get("version"),
            "reason": entry["payload"].get("reason"),
        }
        for entry in _entries(
            service, start, end, types=("keyledger.key.MarkedCompromised",)
        )
    ]


def _destroyed_versions(service: KeyService) -> list[dict[str, Any]]:
    rows = service.ledger.query(
        "SELECT key_name, version, destroyed_at FROM key_versions "
        "WHERE state = 'destroyed' ORDER BY key_name, version"
    )
    return [dict(row) for row in rows]


def _refusals(service: KeyService, start: datetime, end: datetime) -> dict[str, Any]:
    entries = list(_entries(service, start, end, outcome="refused"))
    origins = _origins(service, entries)
    items = []
    for entry in entries:
        origin = origins.get(entry["stream_id"], {})
        repeated = entry["type"] == "keyledger.access.RefusalsRepeated"
        items.append(
            {
                **_evidence(entry),
                "count": int(entry["payload"].get("repeats", 0)) if repeated else 1,
                "repeats": repeated,
                **{
                    name: origin.get(name)
                    for name in (
                        "status",
                        "code",
                        "method",
                        "route",
                        "key",
                        "principal",
                        "client",
                        "user_agent",
                    )
                },
            }
        )
    by_day: Counter[str] = Counter()
    by_code: Counter[str] = Counter()
    for item in items:
        by_day[item["recorded_at"][:10]] += item["count"]
        by_code[str(item["code"])] += item["count"]
    return {
        # Refusals are the callers' to cause: list a bounded number of them.
        "entries": items[:MAX_LISTED_REFUSALS],
        "omitted": max(0, len(items) - MAX_LISTED_REFUSALS),
        "total": sum(item["count"] for item in items),
        "by_day": dict(sorted(by_day.items())),
        "by_code": dict(sorted(by_code.items())),
    }


def _dual_control(
    service: KeyService, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    entries = list(_entries(service, start, end, types=DUAL_CONTROL_TYPES))
    origins = _origins(service, entries)
    found = []
    for entry in entries:
        origin = origins.get(entry["stream_id"], {})
        payload = entry["payload"]
        found.append(
            {
                **_evidence(entry),
                "key": payload.get("key") or origin.get("key"),
                "action": payload.get("action") or origin.get("action"),
                "requester": origin.get("requester"),
                "approver": payload.get("approver"),
                "code": payload.get("code"),
                "actions": payload.get("actions"),
            }
        )
    return found


# Reading -------------------------------------------------------------------


def _entries(
    service: KeyService,
    start: datetime,
    end: datetime,
    *,
    types: tuple[str, ...] = (),
    outcome: str | None = None,
) -> list[dict[str, Any]]:
    query = AuditFilter(
        types=types, recorded_from=start, recorded_to=end, outcome=outcome
    )
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page, cursor = search(service, query, after=after, limit=_PAGE)
        found += page
        if cursor is None:
            return found
        after = cursor


def _origins(
    service: KeyService, entries: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The payload of the first entry of each stream ``entries`` belong to.

    A repeat count or an approval names only its stream; what was refused or
    asked for is in the stream's first entry, which may precede the period.
    """
    origins = {
        entry["stream_id"]: entry["payload"]
        for entry in entries
        if entry["stream_version"] == 1
    }
    missing = {entry["stream_id"] for entry in entries} - origins.keys()
    table = service.ledger.events_table_name
    for stream in sorted(missing):
        rows = service.ledger.query(
            f"SELECT state FROM {table} "
            "WHERE originator_id = %s AND originator_version = 1",
            (service._stream_param(uuid.UUID(stream)),),
        )
        if rows:
            origins[stream] = json.loads(bytes(rows[0]["state"]))["payload"]
    return origins


def _evidence(entry: dict[str, Any]) -> dict[str, Any]:
    """What makes a listed fact checkable: where it is and how it is signed."""
    actor = entry.get("actor") or {}
    return {
        "position": entry["position"],
        "recorded_at": entry["recorded_at"],
        "type": entry["type"],
        "event": entry["type"].rpartition(".")[2],
        "actor": actor.get("principal"),
        "hash": entry["hash"],
        "kid": entry["kid"],
        "signature": entry["signature"],
    }


def _key_of(entry: dict[str, Any]) -> str | None:
    subject = str(entry.get("subject") or "")
    for prefix in ("key:", "backups:"):
        if subject.startswith(prefix):
            return subject[len(prefix) :]
    key = (entry.get("payload") or {}).get("key")
    return key if isinstance(key, str) else None
