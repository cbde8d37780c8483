"""Unit tests of the ManagedKey aggregate: lifecycle rules, refusals and replay.

No storage is involved: commands are called on the aggregate, and a "past" state
for ``roll_back_to`` is rebuilt by replaying a prefix of the aggregate's events.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from domain.clock import format_time, parse_time
from domain.errors import (
    InvalidArgumentError,
    KeyledgerError,
    KeyLifecycleError,
    VersionNotFoundError,
)
from domain.keys import ManagedKey, key_id_for, validate_key_name

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MIN_DAYS, MAX_DAYS = 7, 30
TICK = timedelta(minutes=1)


# Helpers -------------------------------------------------------------------


def fp(version: int) -> str:
    """A recognisable, fake fingerprint for a version's material."""
    return f"sha256:{version:064x}"


def new_key(name: str = "payments", *, now: datetime = T0) -> ManagedKey:
    """A fresh key whose version 1 is enabled and primary."""
    return ManagedKey.generate(
        name=name,
        algorithm="aes-256-gcm",
        description="test key",
        fingerprint=fp(1),
        now=now,
    )


def key_with_versions(count: int, *, now: datetime = T0) -> ManagedKey:
    """A key rotated until it has ``count`` versions, the last one primary."""
    key = new_key(now=now)
    for number in range(2, count + 1):
        key.rotate(fingerprint=fp(number), now=now + number * TICK)
    return key


def schedule(
    key: ManagedKey, version: int, *, days: int = MIN_DAYS, now: datetime = T0
) -> None:
    """Schedule ``version`` for destruction with the deployment's default bounds."""
    key.schedule_destruction(
        version, days=days, min_days=MIN_DAYS, max_days=MAX_DAYS, now=now
    )


def destroy(key: ManagedKey, version: int, *, now: datetime = T0) -> datetime:
    """Schedule and destroy ``version``; return the time it was destroyed."""
    schedule(key, version, now=now)
    due = now + timedelta(days=MIN_DAYS)
    key.destroy_version(version, now=due)
    return due


def replay(events: Sequence[Any]) -> ManagedKey:
    """Rebuild an aggregate from events alone, as the repository does."""
    aggregate: Any = None
    for event in events:
        aggregate = event.mutate(aggregate)
    assert isinstance(aggregate, ManagedKey)
    return aggregate


def assert_refused(
    key: ManagedKey,
    action: Callable[[], object],
    code: str,
    error_type: type[KeyledgerError] = KeyLifecycleError,
) -> KeyledgerError:
    """Assert ``action`` is refused with ``code`` and leaves the key untouched."""
    view_before = copy.deepcopy(key.to_view())
    pending_before = len(key.pending_events)
    with pytest.raises(error_type) as caught:
        action()
    assert caught.value.code == code
    assert key.to_view() == view_before
    assert len(key.pending_events) == pending_before
    return caught.value


def state_of(key: ManagedKey, version: int) -> str:
    return key.versions[version].state


# Creation and names --------------------------------------------------------


def test_generate_creates_enabled_primary_version_one() -> None:
    """A new key is enabled, has version 1 enabled and primary, at stream version 1."""
    key = new_key()

    view = key.to_view()
    assert view["name"] == "payments"
    assert view["key_id"] == str(key_id_for("payments"))
    assert view["state"] == "enabled"
    assert view["primary_version"] == 1
    assert view["primary_usable"] is True
    assert view["stream_version"] == 1
    assert view["created_at"] == "2026-03-01T12:00:00.000000Z"
    assert [v["version"] for v in view["versions"]] == [1]
    assert view["versions"][0]["state"] == "enabled"
    assert view["versions"][0]["primary"] is True
    assert view["versions"][0]["fingerprint"] == fp(1)


def test_key_id_for_name_is_stable_and_distinct() -> None:
    """The same name always maps to the same stream id, different names to others."""
    assert key_id_for("payments") == key_id_for("payments")
    assert key_id_for("payments") != key_id_for("Payments")
    assert new_key("payments").id == key_id_for("payments")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("-dash", id="leading-dash"),
        pytest.param("_under", id="leading-underscore"),
        pytest.param("schlüssel", id="non-ascii-letter"),
        pytest.param("k\u0661", id="non-ascii-digit"),
        pytest.param("has space", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param("name\n", id="trailing-newline"),
        pytest.param(None, id="not-a-string"),
    ],
)
def test_generate_refuses_invalid_name(name: Any) -> None:
    """An invalid key name is refused with INVALID_KEY_NAME."""
    with pytest.raises(InvalidArgumentError) as caught:
        ManagedKey.generate(
            name=name,
            algorithm="aes-256-gcm",
            description="",
            fingerprint=fp(1),
            now=T0,
        )
    assert caught.value.code == "INVALID_KEY_NAME"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a", id="1-char"),
        pytest.param("a" * 64, id="64-chars"),
        pytest.param("0key", id="leading-digit"),
        pytest.param("team.service_key-01", id="dot-underscore-dash"),
    ],
)
def test_validate_key_name_accepts_valid_name(name: str) -> None:
    """Names of 1 to 64 allowed ASCII characters starting alphanumerically pass."""
    assert validate_key_name(name) == name
    assert new_key(name).name == name


def test_generate_refuses_unsupported_algorithm() -> None:
    """An unknown algorithm is refused with UNSUPPORTED_ALGORITHM."""
    with pytest.raises(InvalidArgumentError) as caught:
        ManagedKey.generate(
            name="payments",
            algorithm="des",
            description="",
            fingerprint=fp(1),
            now=T0,
        )
    assert caught.value.code == "UNSUPPORTED_ALGORITHM"
    assert caught.value.details["supported"] == ["aes-256-gcm"]


# Rotation and the key's own state -----------------------------------------


def test_rotate_adds_enabled_version_and_makes_it_primary() -> None:
    """Rotation adds the next version, enabled, and makes it primary."""
    # given
    key = new_key()
    # when
    version = key.rotate(fingerprint=fp(2), now=T0 + TICK)
    # then
    assert version == 2
    assert key.primary == 2
    assert state_of(key, 1) == "enabled"
    assert state_of(key, 2) == "enabled"
    assert key.versions[2].created_at == format_time(T0 + TICK)
    assert key.version == 2


def test_rotate_refused_while_key_disabled() -> None:
    """Rotating a disabled key is refused with KEY_DISABLED."""
    key = new_key()
    key.disable(now=T0)

    assert_refused(key, lambda: key.rotate(fingerprint=fp(2), now=T0), "KEY_DISABLED")


def test_rotate_allowed_again_after_key_enabled() -> None:
    """Enabling a disabled key allows rotation again."""
    key = new_key()
    key.disable(now=T0)
    key.enable(now=T0 + TICK)

    assert key.rotate(fingerprint=fp(2), now=T0 + 2 * TICK) == 2


def test_disable_key_refused_when_already_disabled() -> None:
    """Disabling a disabled key is refused with KEY_ALREADY_DISABLED."""
    key = new_key()
    key.disable(now=T0)

    assert_refused(key, lambda: key.disable(now=T0), "KEY_ALREADY_DISABLED")


def test_enable_key_refused_when_already_enabled() -> None:
    """Enabling an enabled key is refused with KEY_ALREADY_ENABLED."""
    key = new_key()

    assert_refused(key, lambda: key.enable(now=T0), "KEY_ALREADY_ENABLED")


# Version enable / disable --------------------------------------------------


def test_disable_version_refuses_primary() -> None:
    """The primary version cannot be disabled: CANNOT_DISABLE_PRIMARY."""
    key = key_with_versions(2)

    assert_refused(
        key, lambda: key.disable_version(2, now=T0), "CANNOT_DISABLE_PRIMARY"
    )


def test_disable_then_enable_non_primary_version() -> None:
    """A non-primary version can be disabled and enabled again."""
    key = key_with_versions(2)

    key.disable_version(1, now=T0)
    assert state_of(key, 1) == "disabled"

    key.enable_version(1, now=T0)
    assert state_of(key, 1) == "enabled"


def test_disable_version_refuses_disabled_version() -> None:
    """Disabling an already disabled version is refused with INVALID_TRANSITION."""
    key = key_with_versions(2)
    key.disable_version(1, now=T0)

    assert_refused(key, lambda: key.disable_version(1, now=T0), "INVALID_TRANSITION")


def test_enable_version_refuses_enabled_version() -> None:
    """Enabling an enabled version is refused with INVALID_TRANSITION."""
    key = key_with_versions(2)

    assert_refused(key, lambda: key.enable_version(1, now=T0), "INVALID_TRANSITION")


def test_enable_version_refuses_scheduled_version() -> None:
    """A version scheduled for destruction cannot be enabled: INVALID_TRANSITION."""
    key = key_with_versions(2)
    schedule(key, 1)

    assert_refused(key, lambda: key.enable_version(1, now=T0), "INVALID_TRANSITION")


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(lambda k: k.disable_version(9, now=T0), id="disable_version"),
        pytest.param(lambda k: k.enable_version(9, now=T0), id="enable_version"),
        pytest.param(
            lambda k: k.mark_compromised(9, reason="x", now=T0), id="mark_compromised"
        ),
        pytest.param(lambda k: schedule(k, 9), id="schedule_destruction"),
        pytest.param(
            lambda k: k.cancel_destruction(9, now=T0), id="cancel_destruction"
        ),
        pytest.param(lambda k: k.destroy_version(9, now=T0), id="destroy_version"),
        pytest.param(lambda k: k.roll_back_primary(9, now=T0), id="roll_back_primary"),
    ],
)
def test_command_on_unknown_version_refused(
    command: Callable[[ManagedKey], object],
) -> None:
    """A command naming a version the key lacks is refused: VERSION_NOT_FOUND."""
    key = key_with_versions(2)

    error = assert_refused(
        key, lambda: command(key), "VERSION_NOT_FOUND", VersionNotFoundError
    )
    assert error.details == {"key": "payments", "version": 9}


# Scheduling destruction ----------------------------------------------------


def test_schedule_destruction_refuses_primary() -> None:
    """The primary cannot be scheduled for destruction: CANNOT_DESTROY_PRIMARY."""
    key = key_with_versions(2)

    assert_refused(key, lambda: schedule(key, 2), "CANNOT_DESTROY_PRIMARY")


@pytest.mark.parametrize(
    "days",
    [
        pytest.param(6, id="6-days-below-min"),
        pytest.param(31, id="31-days-above-max"),
        pytest.param(0, id="zero"),
        pytest.param(-7, id="negative"),
    ],
)
def test_schedule_destruction_refuses_period_out_of_range(days: int) -> None:
    """A wait outside 7 to 30 days is refused: DESTRUCTION_PERIOD_OUT_OF_RANGE."""
    key = key_with_versions(2)

    error = assert_refused(
        key,
        lambda: schedule(key, 1, days=days),
        "DESTRUCTION_PERIOD_OUT_OF_RANGE",
        InvalidArgumentError,
    )
    assert error.details == {"days": days, "min_days": 7, "max_days": 30}


@pytest.mark.parametrize(
    "days", [pytest.param(7, id="min-7"), pytest.param(30, id="max-30")]
)
def test_schedule_destruction_sets_destroy_at_exactly_days_later(days: int) -> None:
    """destroy_at is exactly ``days`` * 24 h after scheduling, rendered with a Z."""
    # given
    key = key_with_versions(2)
    # when
    schedule(key, 1, days=days, now=T0)
    # then
    record = key.versions[1]
    assert record.state == "destroy_scheduled"
    assert record.scheduled_at == "2026-03-01T12:00:00.000000Z"
    assert record.destroy_at is not None and record.destroy_at.endswith("Z")
    assert parse_time(record.destroy_at) - T0 == timedelta(hours=24 * days)


def test_schedule_destruction_across_eu_dst_change_is_exactly_168_hours() -> None:
    """Across the EU DST change a 7-day wait is still 168 h in UTC (C08)."""
    # given: 2026-03-28T21:30Z; Europe switches to summer time on 2026-03-29
    key = key_with_versions(2)
    now = datetime(2026, 3, 28, 21, 30, tzinfo=UTC)
    # when
    schedule(key, 1, days=7, now=now)
    # then
    record = key.versions[1]
    assert record.scheduled_at == "2026-03-28T21:30:00.000000Z"
    assert record.destroy_at == "2026-04-04T21:30:00.000000Z"
    assert parse_time(record.destroy_at) - parse_time(record.scheduled_at) == (
        timedelta(hours=168)
    )


def test_schedule_destruction_with_fixed_offset_time_renders_utc() -> None:
    """A time given with a +02:00 offset is recorded in UTC with a Z suffix (C08)."""
    key = key_with_versions(2)
    now = datetime(2026, 3, 28, 23, 30, tzinfo=timezone(timedelta(hours=2)))

    schedule(key, 1, days=7, now=now)

    assert key.versions[1].scheduled_at == "2026-03-28T21:30:00.000000Z"
    assert key.versions[1].destroy_at == "2026-04-04T21:30:00.000000Z"


def test_schedule_destruction_with_zoneinfo_time_is_exactly_168_hours() -> None:
    """A DST-aware local time still yields destroy_at exactly 168 h later in UTC."""
    # given: 22:30 in Berlin on 2026-03-28 is 21:30Z (CET, +01:00)
    key = key_with_versions(2)
    now = datetime(2026, 3, 28, 22, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    # when
    schedule(key, 1, days=7, now=now)
    # then
    assert key.versions[1].scheduled_at == "2026-03-28T21:30:00.000000Z"
    assert key.versions[1].destroy_at == "2026-04-04T21:30:00.000000Z"


def test_schedule_destruction_refuses_already_scheduled() -> None:
    """Scheduling a version again is refused: DESTRUCTION_ALREADY_SCHEDULED."""
    key = key_with_versions(2)
    schedule(key, 1)

    error = assert_refused(
        key, lambda: schedule(key, 1, days=30), "DESTRUCTION_ALREADY_SCHEDULED"
    )
    assert error.details["destroy_at"] == key.versions[1].destroy_at


def test_schedule_destruction_of_disabled_version_allowed() -> None:
    """A disabled, non-primary version can be scheduled for destruction."""
    key = key_with_versions(2)
    key.disable_version(1, now=T0)

    schedule(key, 1)

    assert state_of(key, 1) == "destroy_scheduled"


# Cancelling destruction ----------------------------------------------------


@pytest.mark.parametrize(
    "disable_first",
    [pytest.param(False, id="was-enabled"), pytest.param(True, id="was-disabled")],
)
def test_cancel_destruction_returns_version_to_disabled(disable_first: bool) -> None:
    """Cancelling a destruction returns the version to disabled, never to enabled."""
    # given
    key = key_with_versions(2)
    if disable_first:
        key.disable_version(1, now=T0)
    schedule(key, 1)
    # when
    key.cancel_destruction(1, now=T0 + TICK)
    # then
    record = key.versions[1]
    assert record.state == "disabled"
    assert record.scheduled_at is None
    assert record.destroy_at is None


@pytest.mark.parametrize(
    "compromise_before_scheduling",
    [
        pytest.param(True, id="compromised-then-scheduled"),
        pytest.param(False, id="scheduled-then-compromised"),
    ],
)
def test_cancel_destruction_of_compromised_version_returns_to_compromised(
    compromise_before_scheduling: bool,
) -> None:
    """A compromised version whose destruction is cancelled returns to compromised."""
    # given
    key = key_with_versions(2)
    if compromise_before_scheduling:
        key.mark_compromised(1, reason="leaked", now=T0)
        schedule(key, 1)
    else:
        schedule(key, 1)
        key.mark_compromised(1, reason="leaked", now=T0)
    assert state_of(key, 1) == "destroy_scheduled"
    # when
    key.cancel_destruction(1, now=T0 + TICK)
    # then
    assert state_of(key, 1) == "compromised"
    assert key.versions[1].compromised is True
    assert_refused(key, lambda: key.enable_version(1, now=T0), "VERSION_COMPROMISED")


def test_cancel_destruction_refuses_unscheduled_version() -> None:
    """Cancelling when nothing is scheduled is refused: DESTRUCTION_NOT_SCHEDULED."""
    key = key_with_versions(2)

    assert_refused(
        key, lambda: key.cancel_destruction(1, now=T0), "DESTRUCTION_NOT_SCHEDULED"
    )


# Destroying ----------------------------------------------------------------


def test_destroy_version_refused_one_microsecond_before_destroy_at() -> None:
    """Destruction one microsecond before destroy_at is refused: DESTRUCTION_NOT_DUE."""
    # given
    key = key_with_versions(2)
    schedule(key, 1, days=7, now=T0)
    due = T0 + timedelta(days=7)
    # when / then
    error = assert_refused(
        key,
        lambda: key.destroy_version(1, now=due - timedelta(microseconds=1)),
        "DESTRUCTION_NOT_DUE",
    )
    assert error.details["destroy_at"] == format_time(due)


def test_destroy_version_succeeds_exactly_at_destroy_at() -> None:
    """Destruction exactly at destroy_at succeeds and records when it happened."""
    # given
    key = key_with_versions(2)
    schedule(key, 1, days=7, now=T0)
    due = T0 + timedelta(days=7)
    # when
    key.destroy_version(1, now=due)
    # then
    record = key.versions[1]
    assert record.state == "destroyed"
    assert record.destroyed_at == format_time(due)
    assert key.primary == 2


def test_destroy_version_succeeds_for_compromised_scheduled_version() -> None:
    """A compromised version scheduled for destruction is destroyed when due."""
    key = key_with_versions(2)
    schedule(key, 1)
    key.mark_compromised(1, reason="leaked", now=T0)

    key.destroy_version(1, now=T0 + timedelta(days=MIN_DAYS))

    assert state_of(key, 1) == "destroyed"


def test_destroy_version_refuses_unscheduled_version() -> None:
    """An unscheduled version cannot be destroyed: DESTRUCTION_NOT_SCHEDULED."""
    key = key_with_versions(2)

    assert_refused(
        key,
        lambda: key.destroy_version(1, now=T0 + timedelta(days=365)),
        "DESTRUCTION_NOT_SCHEDULED",
    )


@pytest.mark.parametrize(
    ("command", "code"),
    [
        pytest.param(
            lambda k, t: k.enable_version(1, now=t), "VERSION_DESTROYED", id="enable"
        ),
        pytest.param(
            lambda k, t: k.disable_version(1, now=t), "VERSION_DESTROYED", id="disable"
        ),
        pytest.param(
            lambda k, t: schedule(k, 1, now=t), "VERSION_DESTROYED", id="schedule"
        ),
        pytest.param(
            lambda k, t: k.mark_compromised(1, reason="late", now=t),
            "VERSION_DESTROYED",
            id="compromise",
        ),
        pytest.param(
            lambda k, t: k.roll_back_primary(1, now=t),
            "VERSION_DESTROYED",
            id="roll_back_primary",
        ),
        pytest.param(
            lambda k, t: k.cancel_destruction(1, now=t),
            "DESTRUCTION_NOT_SCHEDULED",
            id="cancel",
        ),
        pytest.param(
            lambda k, t: k.destroy_version(1, now=t),
            "DESTRUCTION_NOT_SCHEDULED",
            id="destroy-again",
        ),
    ],
)
def test_destroyed_version_is_final(
    command: Callable[[ManagedKey, datetime], object], code: str
) -> None:
    """Every command that would change a destroyed version is refused."""
    # given
    key = key_with_versions(2)
    destroyed_at = destroy(key, 1)
    later = destroyed_at + TICK
    # when / then
    assert_refused(key, lambda: command(key, later), code)
    assert state_of(key, 1) == "destroyed"


# Compromise ----------------------------------------------------------------


def test_mark_compromised_primary_returns_true_and_primary_unusable() -> None:
    """Compromising the primary returns True and leaves no usable primary."""
    # given
    key = key_with_versions(2)
    # when
    was_primary = key.mark_compromised(2, reason="leaked", now=T0)
    # then
    assert was_primary is True
    assert key.primary == 2
    assert key.primary_usable is False
    assert key.to_view()["primary_usable"] is False
    record = key.versions[2]
    assert record.state == "compromised"
    assert record.compromised is True
    assert record.compromise_reason == "leaked"


def test_mark_compromised_non_primary_returns_false() -> None:
    """Compromising a non-primary version returns False; the primary stays usable."""
    key = key_with_versions(2)

    assert key.mark_compromised(1, reason="leaked", now=T0) is False
    assert key.primary_usable is True
    assert state_of(key, 1) == "compromised"


def test_mark_compromised_twice_refused() -> None:
    """A version cannot be compromised twice: ALREADY_COMPROMISED."""
    key = key_with_versions(2)
    key.mark_compromised(1, reason="leaked", now=T0)

    assert_refused(
        key,
        lambda: key.mark_compromised(1, reason="again", now=T0),
        "ALREADY_COMPROMISED",
    )


def test_rotate_after_compromised_primary_restores_usable_primary() -> None:
    """Rotating after the primary was compromised gives a usable primary again."""
    key = key_with_versions(2)
    key.mark_compromised(2, reason="leaked", now=T0)

    key.rotate(fingerprint=fp(3), now=T0 + TICK)

    assert key.primary == 3
    assert key.primary_usable is True
    assert state_of(key, 2) == "compromised"


@pytest.mark.parametrize(
    "disable_first",
    [pytest.param(False, id="from-enabled"), pytest.param(True, id="from-disabled")],
)
def test_compromised_version_can_never_be_enabled(disable_first: bool) -> None:
    """A compromised version cannot be enabled: VERSION_COMPROMISED."""
    key = key_with_versions(2)
    if disable_first:
        key.disable_version(1, now=T0)
    key.mark_compromised(1, reason="leaked", now=T0)

    assert_refused(key, lambda: key.enable_version(1, now=T0), "VERSION_COMPROMISED")


def test_compromised_version_can_never_be_made_primary() -> None:
    """A compromised version cannot be made primary again: VERSION_COMPROMISED."""
    key = key_with_versions(2)
    key.mark_compromised(1, reason="leaked", now=T0)

    assert_refused(key, lambda: key.roll_back_primary(1, now=T0), "VERSION_COMPROMISED")


def test_compromised_version_cannot_be_disabled() -> None:
    """A compromised version is not 'enabled', so disabling it is refused."""
    key = key_with_versions(2)
    key.mark_compromised(1, reason="leaked", now=T0)

    assert_refused(key, lambda: key.disable_version(1, now=T0), "VERSION_COMPROMISED")


def test_compromised_primary_cannot_be_destroyed_until_rotated() -> None:
    """A compromised primary is still the primary: CANNOT_DESTROY_PRIMARY."""
    key = key_with_versions(2)
    key.mark_compromised(2, reason="leaked", now=T0)

    assert_refused(key, lambda: schedule(key, 2), "CANNOT_DESTROY_PRIMARY")


# Rolling back the primary -------------------------------------------------


def test_roll_back_primary_to_enabled_earlier_version() -> None:
    """An enabled earlier version can be made primary again."""
    # given
    key = key_with_versions(3)
    # when
    key.roll_back_primary(1, now=T0 + TICK)
    # then
    assert key.primary == 1
    assert key.primary_usable is True
    assert [state_of(key, n) for n in (1, 2, 3)] == ["enabled"] * 3
    event = key.pending_events[-1]
    assert isinstance(event, ManagedKey.PrimaryRolledBack)
    assert event.previous_primary == 3


def test_roll_back_primary_refuses_disabled_version() -> None:
    """A disabled version cannot be made primary: INVALID_TRANSITION."""
    key = key_with_versions(2)
    key.disable_version(1, now=T0)

    assert_refused(key, lambda: key.roll_back_primary(1, now=T0), "INVALID_TRANSITION")


def test_roll_back_primary_refuses_current_primary() -> None:
    """Rolling back to the current primary is refused: ALREADY_PRIMARY."""
    key = key_with_versions(2)

    assert_refused(key, lambda: key.roll_back_primary(2, now=T0), "ALREADY_PRIMARY")


def test_roll_back_primary_refused_while_key_disabled() -> None:
    """A disabled key cannot be rolled back: KEY_DISABLED."""
    key = key_with_versions(2)
    key.disable(now=T0)

    assert_refused(key, lambda: key.roll_back_primary(1, now=T0), "KEY_DISABLED")


# Rolling back to a past state ---------------------------------------------


def test_roll_back_to_restores_past_primary_and_disables_later_versions() -> None:
    """Rolling back to a past point restores its primary and disables later versions."""
    # given: v1 primary at stream version 1, then rotated to v2 and v3
    key = new_key()
    events = list(key.collect_events())
    key.rotate(fingerprint=fp(2), now=T0 + TICK)
    key.rotate(fingerprint=fp(3), now=T0 + 2 * TICK)
    events += key.collect_events()
    past = replay(events[:1])
    # when
    key.roll_back_to(past, now=T0 + 3 * TICK)
    # then
    assert key.primary == 1
    assert key.primary_usable is True
    assert state_of(key, 1) == "enabled"
    assert state_of(key, 2) == "disabled"
    assert state_of(key, 3) == "disabled"
    (event,) = key.collect_events()
    assert isinstance(event, ManagedKey.RolledBack)
    assert event.to_stream_version == 1
    assert event.primary == 1
    assert event.version_states == {"2": "disabled", "3": "disabled"}
    assert key.version == 4


def test_roll_back_to_re_enables_version_disabled_after_point() -> None:
    """A version enabled at the past point but disabled since is enabled again."""
    # given
    key = key_with_versions(2)
    events = list(key.collect_events())
    key.disable_version(1, now=T0 + TICK)
    events += key.collect_events()
    past = replay(events[:2])
    # when
    key.roll_back_to(past, now=T0 + 2 * TICK)
    # then
    assert key.primary == 2
    assert state_of(key, 1) == "enabled"


def test_roll_back_to_refuses_past_primary_now_compromised() -> None:
    """The past primary is compromised now, so the rollback is refused."""
    # given: v1 was primary at stream version 1 and is compromised now
    key = key_with_versions(2)
    events = list(key.collect_events())
    key.mark_compromised(1, reason="leaked", now=T0 + TICK)
    events += key.collect_events()
    past = replay(events[:1])
    # when / then
    error = assert_refused(
        key,
        lambda: key.roll_back_to(past, now=T0 + 2 * TICK),
        "ROLLBACK_TARGET_UNUSABLE",
    )
    assert error.details["version"] == 1


def test_roll_back_to_refuses_past_primary_now_destroyed() -> None:
    """The past primary has been destroyed, so the rollback is refused."""
    # given
    key = key_with_versions(2)
    events = list(key.collect_events())
    destroyed_at = destroy(key, 1)
    events += key.collect_events()
    past = replay(events[:1])
    # when / then
    assert_refused(
        key,
        lambda: key.roll_back_to(past, now=destroyed_at + TICK),
        "ROLLBACK_TARGET_UNUSABLE",
    )


def test_roll_back_to_refuses_past_primary_now_scheduled() -> None:
    """The past primary is scheduled for destruction, so the rollback is refused."""
    key = key_with_versions(2)
    events = list(key.collect_events())
    schedule(key, 1)
    events += key.collect_events()
    past = replay(events[:1])

    assert_refused(
        key, lambda: key.roll_back_to(past, now=T0 + TICK), "ROLLBACK_TARGET_UNUSABLE"
    )


def test_roll_back_to_never_revives_destroyed_or_compromised_versions() -> None:
    """Versions destroyed or compromised since the past point keep that state."""
    # given: at stream version 3, v1..v3 are all enabled and v3 is primary
    key = key_with_versions(4)
    events = list(key.collect_events())
    destroyed_at = destroy(key, 1)
    key.mark_compromised(2, reason="leaked", now=destroyed_at)
    events += key.collect_events()
    past = replay(events[:3])
    assert past.primary == 3
    assert [past.versions[n].state for n in (1, 2, 3)] == ["enabled"] * 3
    # when
    key.roll_back_to(past, now=destroyed_at + TICK)
    # then
    assert key.primary == 3
    assert state_of(key, 1) == "destroyed"
    assert state_of(key, 2) == "compromised"
    assert state_of(key, 3) == "enabled"
    assert state_of(key, 4) == "disabled"


def test_roll_back_to_keeps_scheduled_destruction() -> None:
    """A version scheduled for destruction since the past point stays scheduled."""
    key = key_with_versions(3)
    events = list(key.collect_events())
    schedule(key, 1)
    destroy_at = key.versions[1].destroy_at
    events += key.collect_events()
    past = replay(events[:2])

    key.roll_back_to(past, now=T0 + TICK)

    assert key.primary == 2
    assert state_of(key, 1) == "destroy_scheduled"
    assert key.versions[1].destroy_at == destroy_at


def test_roll_back_to_over_cancelled_destruction_keeps_schedule_consistent() -> None:
    """After a rollback, no version is destroy_scheduled without a destroy_at."""
    # given: v1 scheduled at stream version 3, cancelled at stream version 4
    key = key_with_versions(2)
    events = list(key.collect_events())
    schedule(key, 1)
    key.cancel_destruction(1, now=T0 + TICK)
    events += key.collect_events()
    past = replay(events[:3])
    assert past.versions[1].state == "destroy_scheduled"
    # when
    key.roll_back_to(past, now=T0 + 2 * TICK)
    # then
    for record in key.versions.values():
        if record.state == "destroy_scheduled":
            assert record.destroy_at is not None
            assert record.scheduled_at is not None


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("same-version", id="same-version"),
        pytest.param("other-key", id="other-key"),
    ],
)
def test_roll_back_to_refuses_target_not_in_past(target: str) -> None:
    """A target not earlier in this key's stream: ROLLBACK_TARGET_NOT_IN_PAST."""
    key = key_with_versions(2)
    events = list(key.collect_events())
    past = replay(events) if target == "same-version" else new_key("other")

    assert_refused(
        key, lambda: key.roll_back_to(past, now=T0), "ROLLBACK_TARGET_NOT_IN_PAST"
    )


def test_roll_back_to_refused_while_key_disabled() -> None:
    """A disabled key cannot be rolled back to a past point: KEY_DISABLED."""
    key = key_with_versions(2)
    events = list(key.collect_events())
    key.disable(now=T0)
    past = replay(events[:1])

    assert_refused(key, lambda: key.roll_back_to(past, now=T0), "KEY_DISABLED")


# Replay ----------------------------------------------------------------------


def test_replay_of_events_gives_same_view() -> None:
    """Replaying a key's events into a fresh aggregate gives the same view."""
    # given: a key taken through every kind of event
    key = new_key()
    at = T0
    key.rotate(fingerprint=fp(2), now=(at := at + TICK))
    key.rotate(fingerprint=fp(3), now=(at := at + TICK))
    key.disable_version(1, now=(at := at + TICK))
    key.enable_version(1, now=(at := at + TICK))
    key.disable(now=(at := at + TICK))
    key.enable(now=(at := at + TICK))
    key.roll_back_primary(2, now=(at := at + TICK))
    key.mark_compromised(3, reason="leaked", now=(at := at + TICK))
    schedule(key, 3, now=(at := at + TICK))
    key.cancel_destruction(3, now=(at := at + TICK))
    schedule(key, 1, days=30, now=(at := at + TICK))
    key.destroy_version(1, now=(at := at + timedelta(days=30)))
    key.rotate(fingerprint=fp(4), now=(at := at + TICK))
    events = list(key.collect_events())
    past = replay(events[:2])
    key.roll_back_to(past, now=(at := at + TICK))
    events += key.collect_events()
    # when
    replayed = replay(events)
    # then
    assert replayed.to_view() == key.to_view()
    assert replayed.version == len(events) == key.version


def test_replay_is_side_effect_free() -> None:
    """Replaying the same events twice gives equal views and leaves events intact."""
    key = key_with_versions(3)
    key.mark_compromised(3, reason="leaked", now=T0)
    events = list(key.collect_events())
    states_before = [copy.deepcopy(vars(event)) for event in events]

    first = replay(events)
    second = replay(events)

    assert first.to_view() == second.to_view() == key.to_view()
    assert first is not second
    assert first.versions[1] is not second.versions[1]
    assert [vars(event) for event in events] == states_before
    assert first.pending_events == []


def test_replay_does_not_consult_rules() -> None:
    """History that today's rules would refuse (a 3-day wait) still replays."""
    # given: an event recorded under an older, looser rule
    key = key_with_versions(2)
    key.trigger_event(
        ManagedKey.DestructionScheduled,
        version=1,
        days=3,
        scheduled_at=format_time(T0),
        destroy_at=format_time(T0 + timedelta(days=3)),
        timestamp=T0,
    )
    events = list(key.collect_events())
    # when
    replayed = replay(events)
    # then
    assert replayed.versions[1].state == "destroy_scheduled"
    assert replayed.versions[1].destroy_at == "2026-03-04T12:00:00.000000Z"
    assert replayed.to_view() == key.to_view()


# Rotation period -----------------------------------------------------------


def test_rotation_period_is_set_changed_cleared_and_replayed() -> None:
    """Each change is an event; replaying the events gives the same period."""
    key = new_key()
    assert key.rotation_period_seconds is None

    key.change_rotation_period(90 * 86400, now=T0 + TICK)
    key.change_rotation_period(3600, now=T0 + 2 * TICK)
    events = list(key.collect_events())

    assert key.rotation_period_seconds == 3600
    assert [type(e).__name__ for e in events[1:]] == ["RotationPeriodChanged"] * 2
    assert replay(events).rotation_period_seconds == 3600
    assert replay(events[:2]).rotation_period_seconds == 90 * 86400
    assert replay(events[:1]).rotation_period_seconds is None
    key.change_rotation_period(None, now=T0 + 3 * TICK)
    assert key.rotation_period_seconds is None
    assert key.summary()["rotation_period_seconds"] is None


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(3599, id="below an hour"),
        pytest.param(10 * 366 * 86400 + 1, id="above ten years"),
        pytest.param(True, id="a boolean"),
    ],
)
def test_rotation_period_out_of_bounds_records_nothing(seconds: Any) -> None:
    """A period outside one hour to ten years is refused before any event."""
    key = new_key()
    list(key.collect_events())

    with pytest.raises(InvalidArgumentError) as refused:
        key.change_rotation_period(seconds, now=T0 + TICK)

    assert refused.value.code == "ROTATION_PERIOD_OUT_OF_RANGE"
    assert list(key.collect_events()) == []
    assert key.rotation_period_seconds is None
