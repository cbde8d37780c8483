"""Storage tests of KeyService: every test runs on SQLite and on PostgreSQL.

They check what the ledger records (and what it does not), not only what the
commands return: refusals leave every table as it was, history is never
rewritten, positions are gap-free and no secret material reaches an event.
"""

from __future__ import annotations

import base64
import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from domain.clock import AdjustableClock, format_time, parse_time
from domain.errors import (
    ExpectedVersionMismatchError,
    KeyExistsError,
    KeyledgerError,
    KeyLifecycleError,
)
from ledger.entry import GENESIS_HASH
from ledger.service import CommandContext, CommandResult, KeyService
from projections import key_snapshots
from projections.key_view import snapshot_tables
from tests.conftest import T0

NAME = "payments"
HOUR = timedelta(hours=1)
WEEK = timedelta(days=7)

Setup = Callable[[KeyService, CommandContext, AdjustableClock], object]
Command = Callable[[KeyService, CommandContext], object]


# Helpers -------------------------------------------------------------------


def three_versions(service: KeyService, ctx: CommandContext) -> None:
    """Create NAME and rotate twice: versions 1..3, version 3 primary, stream v3."""
    service.create_key(ctx, name=NAME)
    service.rotate(ctx, NAME)
    service.rotate(ctx, NAME)


def full_history(service: KeyService, name: str = NAME) -> list[dict[str, Any]]:
    items, cursor = service.history(name, limit=1000)
    assert cursor is None
    return items


def all_events(service: KeyService) -> list[dict[str, Any]]:
    return service.events(limit=10_000)


def event_types(service: KeyService, name: str = NAME) -> list[str]:
    return [entry["type"].rsplit(".", 1)[-1] for entry in full_history(service, name)]


def material_rows(service: KeyService) -> list[dict[str, Any]]:
    return service.ledger.query(
        "SELECT key_id, version, wrapped FROM key_material ORDER BY key_id, version"
    )


def snapshot(service: KeyService) -> dict[str, Any]:
    """Everything a command could change: view, history, head, events, side tables."""
    return {
        "key": service.get_key(NAME),
        "history": full_history(service),
        "head": service.head_position(),
        "events": all_events(service),
        "material": material_rows(service),
        "projection": snapshot_tables(service.ledger),
    }


def assert_chain(entries: list[dict[str, Any]]) -> None:
    """Positions are 1..N without gaps, each entry linking the previous one's hash."""
    assert [entry["position"] for entry in entries] == list(range(1, len(entries) + 1))
    previous = GENESIS_HASH
    for entry in entries:
        assert entry["prev_hash"] == previous
        previous = entry["hash"]


def with_expected(ctx: CommandContext, version: int) -> CommandContext:
    return dataclasses.replace(ctx, expected_version=version)


# Refusals change nothing --------------------------------------------------


def _nothing(service: KeyService, ctx: CommandContext, clock: AdjustableClock) -> None:
    return None


def _disable_key(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    service.disable_key(ctx, NAME)


def _disable_v1(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    service.disable_version(ctx, NAME, 1)


def _schedule_v1(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    service.schedule_destruction(ctx, NAME, 1, days=7)


def _schedule_v1_almost_due(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    service.schedule_destruction(ctx, NAME, 1, days=7)
    clock.advance(WEEK - timedelta(microseconds=1))


def _compromise_v1(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    service.mark_compromised(ctx, NAME, 1, reason="leaked")


def _compromise_v2(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    service.mark_compromised(ctx, NAME, 2, reason="leaked")


def _destroy_v1(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    service.schedule_destruction(ctx, NAME, 1, days=7)
    clock.advance(WEEK)
    service.destroy_version(ctx, NAME, 1)


REFUSALS = [
    pytest.param(
        _disable_key,
        lambda s, c: s.rotate(c, NAME),
        "KEY_DISABLED",
        id="rotate-disabled-key",
    ),
    pytest.param(
        _disable_key,
        lambda s, c: s.disable_key(c, NAME),
        "KEY_ALREADY_DISABLED",
        id="disable-key-twice",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.enable_key(c, NAME),
        "KEY_ALREADY_ENABLED",
        id="enable-enabled-key",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.disable_version(c, NAME, 3),
        "CANNOT_DISABLE_PRIMARY",
        id="disable-primary",
    ),
    pytest.param(
        _disable_v1,
        lambda s, c: s.disable_version(c, NAME, 1),
        "INVALID_TRANSITION",
        id="disable-disabled-version",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.schedule_destruction(c, NAME, 3, days=7),
        "CANNOT_DESTROY_PRIMARY",
        id="schedule-primary",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.schedule_destruction(c, NAME, 1, days=6),
        "DESTRUCTION_PERIOD_OUT_OF_RANGE",
        id="schedule-6-days",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.schedule_destruction(c, NAME, 1, days=31),
        "DESTRUCTION_PERIOD_OUT_OF_RANGE",
        id="schedule-31-days",
    ),
    pytest.param(
        _schedule_v1,
        lambda s, c: s.schedule_destruction(c, NAME, 1, days=30),
        "DESTRUCTION_ALREADY_SCHEDULED",
        id="schedule-twice",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.cancel_destruction(c, NAME, 1),
        "DESTRUCTION_NOT_SCHEDULED",
        id="cancel-unscheduled",
    ),
    pytest.param(
        _schedule_v1_almost_due,
        lambda s, c: s.destroy_version(c, NAME, 1),
        "DESTRUCTION_NOT_DUE",
        id="destroy-1us-early",
    ),
    pytest.param(
        _compromise_v1,
        lambda s, c: s.enable_version(c, NAME, 1),
        "VERSION_COMPROMISED",
        id="enable-compromised",
    ),
    pytest.param(
        _compromise_v1,
        lambda s, c: s.roll_back(c, NAME, version=1),
        "VERSION_COMPROMISED",
        id="roll-back-primary-to-compromised",
    ),
    pytest.param(
        _compromise_v1,
        lambda s, c: s.mark_compromised(c, NAME, 1, reason="again"),
        "ALREADY_COMPROMISED",
        id="compromise-twice",
    ),
    pytest.param(
        _destroy_v1,
        lambda s, c: s.enable_version(c, NAME, 1),
        "VERSION_DESTROYED",
        id="enable-destroyed",
    ),
    pytest.param(
        _destroy_v1,
        lambda s, c: s.mark_compromised(c, NAME, 1, reason="late"),
        "VERSION_DESTROYED",
        id="compromise-destroyed",
    ),
    pytest.param(
        _destroy_v1,
        lambda s, c: s.roll_back(c, NAME, version=1),
        "VERSION_DESTROYED",
        id="roll-back-primary-to-destroyed",
    ),
    pytest.param(
        _compromise_v2,
        lambda s, c: s.roll_back(c, NAME, to_stream_version=2),
        "ROLLBACK_TARGET_UNUSABLE",
        id="roll-back-to-compromised-past-primary",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.roll_back(c, NAME, to_stream_version=3),
        "ROLLBACK_TARGET_NOT_IN_PAST",
        id="roll-back-to-current-version",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.roll_back(c, NAME, version=1, to_stream_version=1),
        "INVALID_ROLLBACK_TARGET",
        id="roll-back-two-targets",
    ),
    pytest.param(
        _disable_key,
        lambda s, c: s.roll_back(c, NAME, version=1),
        "KEY_DISABLED",
        id="roll-back-disabled-key",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.rotate(with_expected(c, 2), NAME),
        "EXPECTED_VERSION_MISMATCH",
        id="expected-version-mismatch",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.create_key(c, name=NAME),
        "KEY_EXISTS",
        id="duplicate-create",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.disable_version(c, NAME, 9),
        "VERSION_NOT_FOUND",
        id="unknown-version",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.rotate(c, "no-such-key"),
        "KEY_NOT_FOUND",
        id="unknown-key",
    ),
    pytest.param(
        _nothing,
        lambda s, c: s.create_key(c, name=".hidden"),
        "INVALID_KEY_NAME",
        id="invalid-name",
    ),
]


@pytest.mark.parametrize(("setup", "command", "code"), REFUSALS)
def test_refused_command_leaves_ledger_unchanged(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    setup: Setup,
    command: Command,
    code: str,
) -> None:
    """A refused command raises its code and changes no view, history or table."""
    # given
    three_versions(service, ctx)
    setup(service, ctx, clock)
    before = snapshot(service)
    # when
    with pytest.raises(KeyledgerError) as caught:
        command(service, ctx)
    # then
    assert caught.value.code == code
    assert snapshot(service) == before


def test_expected_version_mismatch_reports_expected_and_actual(
    service: KeyService, ctx: CommandContext
) -> None:
    """A stale expected_version is refused with the expected and actual versions."""
    three_versions(service, ctx)

    with pytest.raises(ExpectedVersionMismatchError) as caught:
        service.rotate(with_expected(ctx, 1), NAME)

    assert caught.value.code == "EXPECTED_VERSION_MISMATCH"
    assert caught.value.details == {"key": NAME, "expected": 1, "actual": 3}


def test_expected_version_match_is_recorded(
    service: KeyService, ctx: CommandContext
) -> None:
    """A command whose expected_version is the stream version is recorded."""
    three_versions(service, ctx)

    result = service.rotate(with_expected(ctx, 3), NAME)

    assert result.key["stream_version"] == 4
    assert result.key["primary_version"] == 4


def test_create_duplicate_key_refused_with_key_exists(
    service: KeyService, ctx: CommandContext, open_service: Callable[..., KeyService]
) -> None:
    """Creating a name that exists is refused, also from a second service."""
    service.create_key(ctx, name=NAME)
    other = open_service()

    for creator in (service, other):
        with pytest.raises(KeyExistsError) as caught:
            creator.create_key(ctx, name=NAME)
        assert caught.value.code == "KEY_EXISTS"
    assert service.head_position() == 1


# Several services on one store -------------------------------------------


def test_second_service_sees_same_keys(
    service: KeyService, ctx: CommandContext, open_service: Callable[..., KeyService]
) -> None:
    """A second service opened on the same store sees the same keys and history."""
    # given
    three_versions(service, ctx)
    service.create_key(ctx, name="billing")
    # when
    other = open_service()
    # then
    for name in (NAME, "billing"):
        assert other.get_key(name) == service.get_key(name)
        assert full_history(other, name) == full_history(service, name)
    assert other.head_position() == service.head_position() == 4
    assert all_events(other) == all_events(service)


def test_service_with_cached_key_sees_other_service_changes(
    service: KeyService, ctx: CommandContext, open_service: Callable[..., KeyService]
) -> None:
    """A service that has a key cached builds on another service's later events."""
    # given: the first service has the key at stream version 3 in its cache
    three_versions(service, ctx)
    other = open_service()
    # when: the other service rotates, then the first one rotates again
    other.rotate(ctx, NAME)
    result = service.rotate(ctx, NAME)
    # then
    assert result.key["stream_version"] == 5
    assert result.key["primary_version"] == 5
    assert other.get_key(NAME) == service.get_key(NAME)
    assert_chain(all_events(service))


# Destruction -----------------------------------------------------------------


def test_destruction_across_dst_change_happens_exactly_once_with_two_workers(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_service: Callable[..., KeyService],
) -> None:
    """C08: 168 h across the DST change; not due at 21:29:59Z; one destroy at 21:30Z."""
    # given: the clock at 2026-03-28T23:30:00+02:00 = 21:30Z
    clock.set(datetime(2026, 3, 28, 23, 30, tzinfo=timezone(timedelta(hours=2))))
    service.create_key(ctx, name=NAME)
    service.rotate(ctx, NAME)
    # when: v1 is scheduled for 7 days
    service.schedule_destruction(ctx, NAME, 1, days=7)
    # then: both times are UTC with a Z, exactly 168 h apart
    record = service.get_key(NAME)["versions"][0]
    assert record["scheduled_at"] == "2026-03-28T21:30:00.000000Z"
    assert record["destroy_at"] == "2026-04-04T21:30:00.000000Z"
    assert parse_time(record["destroy_at"]) - parse_time(record["scheduled_at"]) == (
        timedelta(hours=168)
    )

    # given: two workers on the same store
    workers = [service, open_service()]
    # when: one second early
    clock.set(datetime(2026, 4, 4, 21, 29, 59, tzinfo=UTC))
    early = [worker.destroy_due() for worker in workers]
    # then: nothing happens
    assert early == [[], []]
    assert "VersionDestroyed" not in event_types(service)

    # when: exactly at destroy_at, both workers run at once
    clock.set(datetime(2026, 4, 4, 21, 30, tzinfo=UTC))
    barrier = threading.Barrier(len(workers))

    def run(worker: KeyService) -> list[CommandResult]:
        barrier.wait()
        return worker.destroy_due()

    with ThreadPoolExecutor(len(workers)) as pool:
        done = list(pool.map(run, workers))
    # then: exactly one VersionDestroyed is appended
    assert sum(len(results) for results in done) == 1
    assert event_types(service).count("VersionDestroyed") == 1
    assert service.get_key(NAME)["versions"][0]["state"] == "destroyed"
    assert service.get_key(NAME)["versions"][0]["destroyed_at"] == (
        "2026-04-04T21:30:00.000000Z"
    )
    assert [worker.destroy_due() for worker in workers] == [[], []]
    assert event_types(service).count("VersionDestroyed") == 1
    assert_chain(all_events(service))


def test_destroyed_version_material_row_is_gone(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """Destroying a version erases its wrapped material and only that."""
    # given
    three_versions(service, ctx)
    key_id = service.get_key(NAME)["key_id"]
    assert [row["version"] for row in material_rows(service)] == [1, 2, 3]
    service.schedule_destruction(ctx, NAME, 2, days=7)
    clock.advance(WEEK)
    # when
    service.destroy_version(ctx, NAME, 2)
    # then
    rows = service.ledger.query("SELECT * FROM key_material")
    assert sorted((row["key_id"], row["version"]) for row in rows) == [
        (key_id, 1),
        (key_id, 3),
    ]
    assert service.get_key(NAME)["versions"][1]["state"] == "destroyed"
    assert service.destroy_due() == []


def test_destroy_due_skips_version_not_yet_due(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """destroy_due before destroy_at records nothing and keeps the material."""
    three_versions(service, ctx)
    service.schedule_destruction(ctx, NAME, 1, days=7)
    clock.advance(WEEK - timedelta(microseconds=1))
    before = snapshot(service)

    assert service.destroy_due() == []

    assert snapshot(service) == before


def test_cancelled_destruction_is_not_destroyed_when_due(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """A cancelled destruction leaves the version disabled; destroy_due ignores it."""
    three_versions(service, ctx)
    service.schedule_destruction(ctx, NAME, 1, days=7)
    service.cancel_destruction(ctx, NAME, 1)
    clock.advance(WEEK)

    assert service.destroy_due() == []

    assert service.get_key(NAME)["versions"][0]["state"] == "disabled"
    assert [row["version"] for row in material_rows(service)] == [1, 2, 3]


# Time travel -------------------------------------------------------------


def test_get_key_at_time_returns_state_at_that_time(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """get_key(at=) shows the key as it was recorded at that time."""
    # given: created at T0, rotated at T0+1h, v1 disabled at T0+2h
    service.create_key(ctx, name=NAME)
    clock.advance(HOUR)
    service.rotate(ctx, NAME)
    clock.advance(HOUR)
    service.disable_version(ctx, NAME, 1)
    # when / then
    at_creation = service.get_key(NAME, at=T0)
    assert at_creation["stream_version"] == 1
    assert at_creation["primary_version"] == 1
    assert at_creation["as_of"] == format_time(T0)

    between = service.get_key(NAME, at=T0 + HOUR - timedelta(microseconds=1))
    assert between["stream_version"] == 1

    after_rotation = service.get_key(NAME, at=T0 + HOUR)
    assert after_rotation["stream_version"] == 2
    assert after_rotation["primary_version"] == 2
    assert [v["state"] for v in after_rotation["versions"]] == ["enabled", "enabled"]

    now = service.get_key(NAME, at=T0 + 2 * HOUR)
    assert [v["state"] for v in now["versions"]] == ["disabled", "enabled"]
    current = service.get_key(NAME)
    for field in ("stream_version", "primary_version", "updated_at", "versions"):
        assert now[field] == current[field]


def test_get_key_at_time_before_creation_is_not_found(
    service: KeyService, ctx: CommandContext
) -> None:
    """Asking for a key before it existed is KEY_NOT_FOUND."""
    service.create_key(ctx, name=NAME)

    with pytest.raises(KeyledgerError) as caught:
        service.get_key(NAME, at=T0 - timedelta(microseconds=1))

    assert caught.value.code == "KEY_NOT_FOUND"


def varied_history(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> int:
    """Give NAME a history of many kinds of event; its last stream version."""
    service.create_key(ctx, name=NAME)
    for _ in range(3):
        clock.advance(HOUR)
        service.rotate(ctx, NAME)
    service.disable_version(ctx, NAME, 1)
    service.configure_key(
        ctx, NAME, rotation_period_seconds=30 * 86400, set_rotation_period=True
    )
    service.mark_compromised(ctx, NAME, 2, reason="laptop lost")
    service.configure_key(ctx, NAME, min_decryption_version=2)
    service.disable_key(ctx, NAME)
    service.enable_key(ctx, NAME)
    service.enable_version(ctx, NAME, 1)
    clock.advance(HOUR)
    service.rotate(ctx, NAME)
    return int(service.get_key(NAME)["stream_version"])


def replayed_view(service: KeyService, version: int) -> dict[str, Any]:
    """The key at ``version`` replayed by the library from its first event."""
    from domain.keys import key_id_for

    past = service.app.repository.get(key_id_for(NAME), version=version)
    return past.to_view()


def test_key_at_version_through_snapshots_matches_a_full_replay(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A past state read through snapshots equals the replay from the first event."""
    # given: snapshots every 3 stream versions, and a key with a varied history
    monkeypatch.setattr(key_snapshots, "INTERVAL", 3)
    last = varied_history(service, ctx, clock)
    # when: every version is asked for, newest first, then again
    first_pass = {
        v: service.key_at_version(NAME, v).to_view() for v in range(last, 0, -1)
    }
    second_pass = {
        v: service.key_at_version(NAME, v).to_view() for v in range(1, last + 1)
    }
    # then: both passes equal the full replay, and the snapshots were stored
    for version in range(1, last + 1):
        assert first_pass[version] == replayed_view(service, version)
        assert second_pass[version] == first_pass[version]
    stored = service.ledger.query(
        "SELECT stream_version FROM key_snapshots ORDER BY stream_version"
    )
    assert [row["stream_version"] for row in stored] == list(range(3, last + 1, 3))


def test_snapshot_of_another_history_or_format_is_ignored(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A snapshot whose entry hash or format does not match is not used."""
    monkeypatch.setattr(key_snapshots, "INTERVAL", 3)
    last = varied_history(service, ctx, clock)
    service.key_at_version(NAME, last)
    wrong = key_snapshots.encode(service.key_at_version(NAME, 1))
    # given: the snapshot at 3 names another entry, the one at 6 another format
    service.ledger.execute(
        [
            (
                "UPDATE key_snapshots SET entry_hash = %s, state = %s "
                "WHERE stream_version = 3",
                ("0" * 64, wrong),
            ),
            (
                "UPDATE key_snapshots SET format = 99, state = %s "
                "WHERE stream_version = 6",
                (wrong,),
            ),
        ]
    )
    # when / then: the answers still equal the full replay
    for version in (4, 5, 7, 8):
        assert service.key_at_version(NAME, version).to_view() == replayed_view(
            service, version
        )


def test_c17_a_damaged_snapshot_is_discarded_and_rewritten(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bytes changed under a snapshot that names the right entry: not trusted."""
    monkeypatch.setattr(key_snapshots, "INTERVAL", 3)
    last = varied_history(service, ctx, clock)
    service.key_at_version(NAME, last)
    [kept] = service.ledger.query(
        "SELECT state, digest FROM key_snapshots WHERE stream_version = 3"
    )
    # given: the snapshot at 3 has one value changed, its digest left alone
    damaged = kept["state"].replace('"state":"enabled"', '"state":"disabled"', 1)
    assert damaged != kept["state"]
    service.ledger.execute(
        [("UPDATE key_snapshots SET state = %s WHERE stream_version = 3", (damaged,))]
    )

    # then: answers equal the full replay, a warning says so, and the
    # snapshot is written again as it should be
    with caplog.at_level("WARNING"):
        for version in (4, 5):
            assert service.key_at_version(NAME, version).to_view() == replayed_view(
                service, version
            )
    assert "key_snapshot_discarded" in [record.message for record in caplog.records]
    [rewritten] = service.ledger.query(
        "SELECT state, digest FROM key_snapshots WHERE stream_version = 3"
    )
    assert rewritten == kept
    # and commands, which never read snapshots, go on at the next stream version
    expecting = dataclasses.replace(ctx, expected_version=last)
    assert service.rotate(expecting, NAME).key["stream_version"] == last + 1


def test_get_key_at_time_of_an_unknown_key_is_not_found(
    service: KeyService,
) -> None:
    """A key that never existed is KEY_NOT_FOUND at any time, and nothing is written."""
    with pytest.raises(KeyledgerError) as caught:
        service.get_key("never-made", at=T0)

    assert caught.value.code == "KEY_NOT_FOUND"
    assert service.ledger.query("SELECT count(*) AS n FROM key_snapshots")[0]["n"] == 0
    assert service.head_position() == 0


def test_roll_back_to_stream_version_appends_one_event_and_keeps_history(
    service: KeyService, ctx: CommandContext
) -> None:
    """Rolling back to a stream version appends one RolledBack; history is kept."""
    # given
    three_versions(service, ctx)
    history_before = full_history(service)
    # when
    service.roll_back(ctx, NAME, to_stream_version=2)
    # then
    history_after = full_history(service)
    assert history_after[:3] == history_before
    assert len(history_after) == 4
    rolled = history_after[3]
    assert rolled["type"] == "keyledger.key.RolledBack"
    assert rolled["payload"]["to_stream_version"] == 2
    assert rolled["payload"]["primary"] == 2
    assert rolled["payload"]["version_states"] == {"3": "disabled"}
    view = service.get_key(NAME)
    assert view["stream_version"] == 4
    assert view["primary_version"] == 2
    assert [v["state"] for v in view["versions"]] == ["enabled", "enabled", "disabled"]
    assert_chain(all_events(service))


def test_roll_back_to_time_appends_one_event_and_keeps_history(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """Rolling back to a time returns to the state then, as one new event."""
    # given: v1 at T0, v2 at T0+1h, v3 at T0+2h
    service.create_key(ctx, name=NAME)
    clock.advance(HOUR)
    service.rotate(ctx, NAME)
    clock.advance(HOUR)
    service.rotate(ctx, NAME)
    clock.advance(HOUR)
    history_before = full_history(service)
    # when: back to T0+1h30m, when v2 was primary
    service.roll_back(ctx, NAME, to_time=T0 + HOUR + HOUR / 2)
    # then
    history_after = full_history(service)
    assert history_after[:3] == history_before
    assert [entry["type"] for entry in history_after[3:]] == [
        "keyledger.key.RolledBack"
    ]
    assert history_after[3]["payload"]["to_stream_version"] == 2
    view = service.get_key(NAME)
    assert view["primary_version"] == 2
    assert view["versions"][2]["state"] == "disabled"
    assert_chain(all_events(service))


def test_roll_back_primary_to_version_appends_one_event(
    service: KeyService, ctx: CommandContext
) -> None:
    """Making an earlier version primary again appends one PrimaryRolledBack."""
    three_versions(service, ctx)

    result = service.roll_back(ctx, NAME, version=1)

    assert result.key["primary_version"] == 1
    assert event_types(service) == [
        "Generated",
        "Rotated",
        "Rotated",
        "PrimaryRolledBack",
    ]


def test_roll_back_over_cancelled_destruction_keeps_schedule_consistent(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """Rolling back past a cancelled destruction is recorded consistently or refused."""
    # given: v1 scheduled at stream version 3 and cancelled at stream version 4
    service.create_key(ctx, name=NAME)
    service.rotate(ctx, NAME)
    service.schedule_destruction(ctx, NAME, 1, days=7)
    service.cancel_destruction(ctx, NAME, 1)
    # when
    try:
        service.roll_back(ctx, NAME, to_stream_version=3)
    except KeyLifecycleError as refusal:
        # then (refused): by a lifecycle rule, not as a phantom conflict
        assert refusal.code != "CONCURRENT_MODIFICATION"
        return
    # then (recorded): a version scheduled again has a destroy_at and is destroyed
    record = service.get_key(NAME)["versions"][0]
    if record["state"] == "destroy_scheduled":
        assert record["destroy_at"] is not None
        clock.set(parse_time(record["destroy_at"]))
        assert len(service.destroy_due()) == 1
        assert service.get_key(NAME)["versions"][0]["state"] == "destroyed"


# The chain -----------------------------------------------------------------


def test_recorded_at_never_goes_backwards_when_clock_steps_back(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_service: Callable[..., KeyService],
) -> None:
    """C13: after the clock steps back, recorded_at stays put and positions increase."""
    # given: an entry recorded at T0+1h
    clock.set(T0 + HOUR)
    service.create_key(ctx, name=NAME)
    # when: the clock steps back an hour and more is appended, also by a new service
    clock.set(T0)
    service.rotate(ctx, NAME)
    open_service().rotate(ctx, NAME)
    service.create_key(ctx, name="billing")
    # then
    entries = all_events(service)
    assert len(entries) == 4
    assert_chain(entries)
    recorded = [entry["recorded_at"] for entry in entries]
    assert recorded == sorted(recorded)
    assert all(at >= format_time(T0 + HOUR) for at in recorded)
    assert all(at.endswith("Z") for at in recorded)


def test_recorded_at_follows_clock_forward(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """Each entry's recorded_at is the clock's time when the clock moves forward."""
    service.create_key(ctx, name=NAME)
    clock.advance(HOUR)
    service.rotate(ctx, NAME)

    assert [entry["recorded_at"] for entry in all_events(service)] == [
        format_time(T0),
        format_time(T0 + HOUR),
    ]


def test_event_positions_are_contiguous_from_one(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """Positions in the feed are 1..N, each linking the previous entry's hash."""
    # given: commands on two keys, interleaved, with a refusal in between
    three_versions(service, ctx)
    service.create_key(ctx, name="billing")
    with pytest.raises(KeyledgerError):
        service.disable_version(ctx, NAME, 3)
    service.rotate(ctx, "billing")
    service.mark_compromised(ctx, NAME, 1, reason="leaked")
    service.schedule_destruction(ctx, "billing", 1, days=7)
    clock.advance(WEEK)
    assert len(service.destroy_due()) == 1
    # when
    entries = all_events(service)
    # then
    assert len(entries) == 8 == service.head_position()
    assert_chain(entries)
    assert [entry["position"] for entry in service.events(after=3, limit=2)] == [4, 5]
    for name in (NAME, "billing"):
        versions = [entry["stream_version"] for entry in full_history(service, name)]
        assert versions == list(range(1, len(versions) + 1))


def test_no_secret_material_in_any_event(
    service: KeyService, ctx: CommandContext, clock: AdjustableClock
) -> None:
    """Neither wrapped nor unwrapped material, in any encoding, appears in an event."""
    # given: several versions, one compromised and one destroyed
    three_versions(service, ctx)
    service.create_key(ctx, name="billing")
    service.mark_compromised(ctx, NAME, 2, reason="leaked")
    service.schedule_destruction(ctx, NAME, 1, days=7)
    rows = material_rows(service)  # read before v1's material is erased
    assert len(rows) == 4
    clock.advance(WEEK)
    service.destroy_version(ctx, NAME, 1)
    secrets: list[bytes] = []
    for row in rows:
        wrapped = base64.b64decode(row["wrapped"])
        material = service.kek.unwrap(
            wrapped, key_id=row["key_id"], version=row["version"]
        )
        assert len(material) == 32
        for blob in (material, wrapped):
            secrets += [
                blob,
                blob.hex().encode(),
                blob.hex().upper().encode(),
                base64.b64encode(blob),
                base64.b64encode(blob).rstrip(b"="),
                base64.urlsafe_b64encode(blob).rstrip(b"="),
            ]
    # when
    table = service.ledger.events_table_name
    rows = service.ledger.query(f"SELECT state FROM {table}")
    states = [bytes(row["state"]) for row in rows]
    # then
    assert len(states) == service.head_position() == 7
    for state in states:
        for secret in secrets:
            assert secret not in state
