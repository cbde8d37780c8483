"""Rebuilding projections: side-effect free, identical to live, fails closed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from eventsourcing.utils import _topic_cache

from domain.clock import AdjustableClock
from domain.keys import ManagedKey, key_id_for
from ledger.service import CommandContext, KeyService
from ledger.store import LedgerWrite
from projections import key_view
from projections.rebuild import RebuildError, rebuild


def _every_action(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    service.create_key(ctx, name="all-actions")
    service.create_key(ctx, name="second", description="another key")
    for _ in range(4):
        service.rotate(ctx, "all-actions")
    service.disable_key(ctx, "second")
    service.enable_key(ctx, "second")
    service.disable_version(ctx, "all-actions", 2)
    service.enable_version(ctx, "all-actions", 2)
    service.schedule_destruction(ctx, "all-actions", 3, days=7)
    service.cancel_destruction(ctx, "all-actions", 3)
    service.mark_compromised(ctx, "all-actions", 4, reason="leaked")
    service.roll_back(ctx, "all-actions", version=2)
    service.roll_back(ctx, "all-actions", to_stream_version=6)
    service.schedule_destruction(ctx, "all-actions", 1, days=7)
    clock.advance(timedelta(days=8))
    service.destroy_due()
    # a destruction that is already due but not yet carried out when we rebuild
    service.rotate(ctx, "second")
    service.schedule_destruction(ctx, "second", 1, days=7)
    clock.advance(timedelta(days=8))


def test_rebuild_is_identical_and_appends_nothing(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """Two rebuilds leave the head unchanged and the tables identical to live ones."""
    # given a ledger with every kind of action, and a destruction already past due
    _every_action(service, ctx, clock)
    head = service.ledger.head()
    live = key_view.snapshot_tables(service.ledger)

    # when the projections are rebuilt twice
    first = rebuild(service.app)
    after_first = key_view.snapshot_tables(service.ledger)
    second = rebuild(service.app)

    # then nothing was appended, no destruction fired, and the tables match
    assert service.ledger.head() == head
    assert first.matched_live and second.matched_live
    assert after_first == live == key_view.snapshot_tables(service.ledger)
    assert key_view.due_destructions(service.ledger, "9999") == [("second", 1)]


def test_rebuild_repairs_a_damaged_read_side(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """A rebuild reports a read side that drifted and puts it right."""
    _every_action(service, ctx, clock)
    live = key_view.snapshot_tables(service.ledger)
    service.ledger.execute(
        [("UPDATE key_versions SET state = 'enabled' WHERE version = 1", ())]
    )

    report = rebuild(service.app)

    assert not report.matched_live
    assert report.differences
    assert key_view.snapshot_tables(service.ledger) == live


def test_unknown_event_type_fails_closed(
    service: KeyService, ctx: CommandContext
) -> None:
    """An event of a type this code does not know stops the rebuild at its position."""
    service.create_key(ctx, name="known")
    live = key_view.snapshot_tables(service.ledger)
    key = service.app.repository.get(key_id_for("known"))

    # an event from a future version of the product, appended properly signed
    class Frobbed(ManagedKey.Event):
        TOPIC = "keyledger.key.Frobbed"

        def apply(self, aggregate: ManagedKey) -> None:
            pass

    key.trigger_event(Frobbed)
    service.app.save(key, ledger=LedgerWrite(ctx.actor, ctx.request_id))
    # a process running today's code has never heard of that type
    _topic_cache.pop("keyledger.key.Frobbed", None)

    with pytest.raises(RebuildError) as raised:
        rebuild(service.app)

    assert raised.value.position == 2
    assert raised.value.topic == "keyledger.key.Frobbed"
    assert key_view.snapshot_tables(service.ledger) == live


def test_rebuild_while_another_process_writes_loses_nothing(
    open_service: Callable[..., KeyService], ctx: CommandContext
) -> None:
    """Rebuilds racing a writer leave a read side that still matches the events."""
    # given a second service (another process) writing all the time
    service, writer = open_service(), open_service()
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        while not stop.is_set():
            name = f"race-{len(written)}"
            writer.create_key(ctx, name=name)
            writer.rotate(ctx, name)
            written.append(1)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        # when the projections are rebuilt again and again meanwhile
        rebuilds = 0
        while rebuilds < 5 or len(written) < 30:
            rebuild(service.app)
            rebuilds += 1
    finally:
        stop.set()
        thread.join()

    # then the read side still equals what the events say
    assert rebuild(service.app, apply=False).matched_live
