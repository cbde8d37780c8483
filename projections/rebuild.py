"""Rebuild every projection from the ledger's events alone.

A rebuild reads the events in position order, replays them into fresh key
aggregates, and rewrites the projection tables in one transaction. It appends
nothing to the ledger and calls nothing outside the database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventsourcing.utils import TopicError

from projections import key_view

if TYPE_CHECKING:
    from domain.keys import ManagedKey
    from ledger.application import KeyLedger
    from ledger.store import Statement

PAGE = 500


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

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "keys": self.keys,
            "matched_live": self.matched_live,
            "differences": self.differences,
        }


def replay_keys(
    app: KeyLedger,
) -> tuple[dict[uuid.UUID, ManagedKey], dict[uuid.UUID, int], int]:
    """Every key as the events make it, with the position of its last event."""
    keys: dict[uuid.UUID, ManagedKey] = {}
    last_position: dict[uuid.UUID, int] = {}
    count, start = 0, 1
    while True:
        notifications = app.recorder.select_notifications(start=start, limit=PAGE)
        for notification in notifications:
            count += 1
            if not notification.topic.startswith("keyledger.key."):
                continue
            try:
                event: Any = app.mapper.to_domain_event(notification)
            except (TopicError, KeyError, ValueError) as error:
                raise RebuildError(
                    notification.id, notification.topic, str(error)
                ) from None
            stream = uuid.UUID(str(notification.originator_id))
            keys[stream] = event.mutate(keys.get(stream))
            last_position[stream] = notification.id
        if len(notifications) < PAGE:
            return keys, last_position, count
        start = notifications[-1].id + 1


def rebuild(app: KeyLedger, *, apply: bool = True) -> RebuildReport:
    """Rebuild the projections from the events and compare with the live tables.

    With ``apply`` the live tables are replaced by the rebuilt ones in one
    transaction; without it only the comparison is made.
    """
    recorder = app.ledger
    keys, last_position, count = replay_keys(app)
    statements: list[Statement] = [
        ("DELETE FROM key_versions", ()),
        ("DELETE FROM key_view", ()),
    ]
    for stream, key in keys.items():
        statements += key_view.view_statements(key, key.versions, last_position[stream])
    live = key_view.snapshot_tables(recorder)
    expected = key_view.expected_tables(
        (key, last_position[stream]) for stream, key in keys.items()
    )
    differences = _differences(live, expected)
    if apply:
        recorder.execute(statements)
    return RebuildReport(count, len(keys), not differences, differences)


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
