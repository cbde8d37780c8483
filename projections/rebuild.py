"""Rebuild every projection from the ledger's events alone.

A rebuild reads the events in position order, replays them into fresh key
aggregates, and rewrites the projection tables in one transaction. It appends
nothing to the ledger and calls nothing outside the database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import TopicError

from domain.topics import is_known
from domain.usage import KeyUse
from projections import access_view, backup_status, key_view, usage_counts

if TYPE_CHECKING:
    from domain.keys import ManagedKey
    from ledger.application import KeyLedger
    from ledger.store import LedgerTransaction, Statement

PAGE = 500
USAGE_TOPIC = KeyUse.KeyUsed.TOPIC


class RebuildError(Exception):
    """An event could not be replayed; no projection was changed."""

    def __init__(self, position: int, topic: str, reason: str) -> None:
        super().__init__(f"Cannot replay position {position} ({topic}): {reason}")
        self.position = position
        self.topic = topic


@dataclass(frozen=True)
class RebuildReport:
    """How many events were replayed and whether the live read side already matched."""

    events: int
    keys: int
    matched_live: bool
    differences: list[str]
    applied: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "keys": self.keys,
            "matched_live": self.matched_live,
            "differences": self.differences,
            "repaired": self.applied and not self.matched_live,
        }


def replay_keys(
    app: KeyLedger, reader: LedgerTransaction
) -> tuple[dict[uuid.UUID, ManagedKey], dict[uuid.UUID, int], int]:
    """Every key as the events make it, with the position of its last event."""
    keys: dict[uuid.UUID, ManagedKey] = {}
    last_position: dict[uuid.UUID, int] = {}
    count, after = 0, 0
    table = app.ledger.events_table_name
    while True:
        rows = reader.query(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {table} WHERE notification_id > %s ORDER BY notification_id "
            "LIMIT %s",
            (after, PAGE),
        )
        for row in rows:
            count += 1
            position, topic = row["notification_id"], row["topic"]
            if not is_known(topic):
                # Skipping it could leave out what it meant: stop here.
                raise RebuildError(position, topic, "unknown event type")
            if not topic.startswith("keyledger.key."):
                # Usage records and clock moves change no projection.
                continue
            stream = uuid.UUID(str(row["originator_id"]))
            stored = StoredEvent(stream, row["originator_version"], topic, row["state"])
            try:
                event: Any = app.mapper.to_domain_event(stored)
            except (TopicError, KeyError, ValueError) as error:
                raise RebuildError(position, topic, str(error)) from None
            keys[stream] = event.mutate(keys.get(stream))
            last_position[stream] = position
        if len(rows) < PAGE:
            return keys, last_position, count
        after = rows[-1]["notification_id"]


def rebuild(app: KeyLedger, *, apply: bool = True) -> RebuildReport:
    """Rebuild the projections from the events and compare with the live tables.

    The whole rebuild runs in one transaction holding the ledger's write lock,
    so no command can append between the replay and the rewrite. With ``apply``
    the live tables are replaced by the rebuilt ones; without it they are only
    compared.
    """
    with app.ledger.exclusive() as transaction:
        keys, last_position, count = replay_keys(app, transaction)
        live = key_view.snapshot_tables(transaction)
        expected = key_view.expected_tables(
            (key, last_position[stream]) for stream, key in keys.items()
        )
        principals = access_view.replay_principals(app, transaction)
        live.update(access_view.snapshot_tables(transaction))
        expected.update(access_view.expected_tables(principals))
        backups = backup_status.replay(app, transaction)
        live.update(backup_status.snapshot_tables(transaction))
        expected.update(backup_status.expected_tables(backups))
        uses = replay_uses(app, transaction)
        live.update(usage_counts.snapshot_tables(transaction))
        expected.update(usage_counts.expected_tables(uses))
        differences = _differences(live, expected)
        if apply and differences:
            statements: list[Statement] = [
                ("DELETE FROM key_versions", ()),
                ("DELETE FROM key_view", ()),
                ("DELETE FROM key_config", ()),
                ("DELETE FROM key_rotation", ()),
            ]
            for stream, key in keys.items():
                statements += key_view.view_statements(
                    key,
                    key.versions,
                    last_position[stream],
                    config=key_view.has_config(key),
                )
            statements += access_view.rebuild_statements(principals)
            statements += backup_status.rebuild_statements(app, transaction)
            statements += usage_counts.rewrite_statements(uses)
            transaction.execute(statements)
    return RebuildReport(count, len(keys), not differences, differences, apply)


def replay_uses(app: KeyLedger, reader: LedgerTransaction) -> list[KeyUse]:
    """Every usage record, as recorded, in position order."""
    uses: list[KeyUse] = []
    after = 0
    table = app.ledger.events_table_name
    while True:
        rows = reader.query(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {table} WHERE notification_id > %s AND topic = %s "
            "ORDER BY notification_id LIMIT %s",
            (after, USAGE_TOPIC, PAGE),
        )
        for row in rows:
            stream = uuid.UUID(str(row["originator_id"]))
            stored = StoredEvent(
                stream, row["originator_version"], row["topic"], row["state"]
            )
            try:
                event: Any = app.mapper.to_domain_event(stored)
            except (TopicError, KeyError, ValueError) as error:
                raise RebuildError(
                    row["notification_id"], row["topic"], str(error)
                ) from None
            uses.append(event.mutate(None))
        if len(rows) < PAGE:
            return uses
        after = rows[-1]["notification_id"]


def _differences(
    live: dict[str, list[dict[str, Any]]], expected: dict[str, list[dict[str, Any]]]
) -> list[str]:
    found = []
    for table, rows in expected.items():
        if live.get(table) != rows:
            live_rows = live.get(table, [])
            found.append(
                f"{table}: live has {len(live_rows)} rows, rebuilt has {len(rows)}"
                + ("" if len(live_rows) != len(rows) else " (contents differ)")
            )
    return found
