"""Auditor queries: filtered history, a key's state at any point, range verification.

Filtering goes through the ``audit_index`` projection (caught up before each
query), then the entries themselves are read from the ledger, so what an
auditor sees are the stored, signed entries, not a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.clock import format_time
from domain.errors import InvalidArgumentError, KeyNotFoundError
from domain.keys import key_id_for, validate_key_name
from ledger.entry import GENESIS_HASH
from ledger.offline import Failure, check_checkpoint_signature, verify_entries
from ledger.service import KeyService, entry_json
from ledger.store import checkpoint_table
from ledger.verify import stored_entry
from projections import audit_index


@dataclass(frozen=True)
class AuditFilter:
    """Which entries an auditor asks for; every field narrows, None means any."""

    key: str | None = None
    principal: str | None = None
    types: tuple[str, ...] = ()
    recorded_from: datetime | None = None
    recorded_to: datetime | None = None
    outcome: str | None = None
    # Only entries naming a key these patterns cover (a name, a prefix ending in
    # ``*``): an auditor narrowed by grants. None means every entry.
    keys_within: tuple[str, ...] | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.keys_within is not None:
            clauses.append(_within(self.keys_within, params))
        if self.key is not None:
            clauses.append("key_name = %s")
            params.append(self.key)
        if self.principal is not None:
            clauses.append("principal = %s")
            params.append(self.principal)
        if self.types:
            clauses.append(f"type IN ({', '.join(['%s'] * len(self.types))})")
            params += list(self.types)
        if self.recorded_from is not None:
            clauses.append("recorded_at >= %s")
            params.append(format_time(self.recorded_from))
        if self.recorded_to is not None:
            clauses.append("recorded_at < %s")
            params.append(format_time(self.recorded_to))
        if self.outcome is not None:
            if self.outcome not in audit_index.OUTCOMES:
                raise InvalidArgumentError(
                    f"outcome is one of {', '.join(audit_index.OUTCOMES)}.",
                    code="INVALID_OUTCOME",
                )
            clauses.append("outcome = %s")
            params.append(self.outcome)
        return clauses, params


def _within(patterns: tuple[str, ...], params: list[Any]) -> str:
    """A clause keeping the entries whose key one of ``patterns`` covers."""
    covered = []
    for pattern in patterns:
        if pattern == "*":
            covered.append("key_name IS NOT NULL")
        elif pattern.endswith("*"):
            # substr, not LIKE: a key name may hold '_', LIKE's wildcard.
            covered.append("substr(key_name, 1, %s) = %s")
            params += [len(pattern) - 1, pattern[:-1]]
        else:
            covered.append("key_name = %s")
            params.append(pattern)
    return f"({' OR '.join(covered)})" if covered else "1 = 0"


def search(
    service: KeyService, query: AuditFilter, *, after: int = 0, limit: int = 100
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of matching entries in position order, and the next cursor."""
    ledger = service.ledger
    audit_index.catch_up(ledger)
    clauses, params = query.where()
    clauses.append("position > %s")
    rows = ledger.query(
        f"SELECT position FROM audit_index WHERE {' AND '.join(clauses)} "
        "ORDER BY position LIMIT %s",
        (*params, after, limit + 1),
    )
    positions = [row["position"] for row in rows[:limit]]
    entries = []
    if positions:
        found = ledger.query(
            "SELECT notification_id, state, entry_hash, signature, kid "
            f"FROM {ledger.events_table_name} WHERE notification_id IN "
            f"({', '.join(['%s'] * len(positions))}) ORDER BY notification_id",
            tuple(positions),
        )
        entries = [entry_json(row) for row in found]
    cursor = positions[-1] if len(rows) > limit else None
    return entries, cursor


def key_state(
    service: KeyService,
    name: str,
    *,
    at: datetime | None = None,
    position: int | None = None,
) -> dict[str, Any]:
    """The key as recorded at time ``at`` or ledger position ``position``.

    The stream version is found through an index, then the aggregate is loaded
    up to it from its nearest snapshot (``projections.key_snapshots``), so
    the replay is short however long the key's history is.
    """
    if (at is None) == (position is None):
        raise InvalidArgumentError(
            "Give exactly one of at or position.", code="INVALID_AUDIT_POINT"
        )
    if at is not None:
        return service.get_key(name, at=at)
    validate_key_name(name)
    stream = service._stream_param(key_id_for(name))
    rows = service.ledger.query(
        f"SELECT max(originator_version) AS v FROM {service.ledger.events_table_name} "
        "WHERE originator_id = %s AND notification_id <= %s",
        (stream, position),
    )
    version = rows[0]["v"] if rows else None
    if version is None:
        raise KeyNotFoundError(
            f"Key {name!r} did not exist at position {position}.",
            key=name,
            position=position,
        )
    past = service.key_at_version(name, int(version))
    view = past.summary()
    view["versions"] = [past.version_view(n) for n in sorted(past.versions)]
    view["as_of_position"] = position
    return view


def verify_range(service: KeyService, first: int, last: int) -> dict[str, Any]:
    """Verify the entries at positions ``first`` to ``last`` and their checkpoints.

    The first entry must link to the stored hash of the entry before it (the
    genesis hash at position 1), so the range is anchored to the chain; within
    it the checks are those of ``ledger.offline``, as for an export.
    """
    if not 1 <= first <= last:
        raise InvalidArgumentError(
            "Give 1 <= from_position <= to_position.", code="INVALID_RANGE"
        )
    ledger = service.ledger
    table = ledger.events_table_name
    rows = ledger.query(
        "SELECT notification_id, originator_id, originator_version, topic, state, "
        f"entry_hash, signature, kid FROM {table} "
        "WHERE notification_id >= %s AND notification_id <= %s "
        "ORDER BY notification_id",
        (first, last),
    )
    checkpoints = ledger.query(
        "SELECT position, hash, recorded_at, kid, signature FROM "
        f"{checkpoint_table(table)} WHERE position >= %s AND position <= %s "
        "ORDER BY position",
        (first, last),
    )
    keys = service.public_keys()
    result = verify_entries(
        (stored_entry(row) for row in rows),
        keys,
        first_position=first,
        previous_hash=_hash_before(service, first),
        keep_hashes={int(c["position"]) for c in checkpoints},
    )
    report = result.report
    for checkpoint in checkpoints:
        if report.first_failure is not None:
            break
        position = int(checkpoint["position"])
        failure = check_checkpoint_signature(checkpoint, keys)
        if failure is None and result.hashes.get(position) != checkpoint["hash"]:
            failure = Failure(position, "CHECKPOINT_MISMATCH", f"checkpoint {position}")
        if failure is not None:
            report.first_failure = failure
        else:
            report.checkpoints_checked += 1
    found = report.as_json()
    found["range"] = {"from_position": first, "to_position": last}
    found["complete"] = report.head_position == last
    return found


def _hash_before(service: KeyService, first: int) -> str | None:
    if first == 1:
        return GENESIS_HASH
    rows = service.ledger.query(
        f"SELECT entry_hash FROM {service.ledger.events_table_name} "
        "WHERE notification_id = %s",
        (first - 1,),
    )
    return str(rows[0]["entry_hash"]) if rows else None
