"""Unit tests of ManagedKey.trim: its rules, its event, and replay of that event."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import InvalidArgumentError, KeyLifecycleError
from tests.domain.test_keys import T0, TICK, assert_refused, key_with_versions, replay


def test_trim_records_one_event_and_replay_gives_the_same_key() -> None:
    """Trimming v1 and v2 of five is one VersionsTrimmed; replay reproduces the key."""
    key = key_with_versions(5)
    key.change_minimum_versions(min_decryption_version=3, now=T0 + 10 * TICK)

    removed = key.trim(3, now=T0 + 11 * TICK)

    assert removed == [1, 2]
    assert sorted(key.versions) == [3, 4, 5]
    assert key.min_available_version == 3
    event = key.pending_events[-1]
    assert isinstance(event, key.VersionsTrimmed)
    assert (event.min_available_version, event.removed) == (3, [1, 2])
    replayed = replay(list(key.collect_events()))
    assert replayed.to_view() == key.to_view()
    assert replayed.min_available_version == 3


@pytest.mark.parametrize("bad", [0, -1, True, 2**31])
def test_trim_refuses_a_version_that_is_not_a_positive_integer(bad: Any) -> None:
    """0, negatives, booleans and numbers past the version range are INVALID_VERSION."""
    key = key_with_versions(3)
    key.change_minimum_versions(min_decryption_version=3, now=T0 + 10 * TICK)

    assert_refused(
        key, lambda: key.trim(bad, now=T0), "INVALID_VERSION", InvalidArgumentError
    )


def test_trim_is_bounded_by_the_floor_and_the_lowest_kept_version() -> None:
    """Above min_decryption_version and at or below the lowest kept one are refused."""
    key = key_with_versions(5)
    key.change_minimum_versions(min_decryption_version=3, now=T0 + 10 * TICK)

    above = assert_refused(
        key, lambda: key.trim(4, now=T0), "TRIM_ABOVE_MIN_DECRYPTION"
    )
    assert above.details == {"key": "payments", "min": 3, "requested": 4}
    assert_refused(key, lambda: key.trim(1, now=T0), "NOTHING_TO_TRIM")
    key.trim(3, now=T0 + 11 * TICK)
    assert_refused(key, lambda: key.trim(3, now=T0), "NOTHING_TO_TRIM")


def test_trimmed_versions_are_refused_by_name_not_as_unknown() -> None:
    """A trimmed version is VERSION_TRIMMED for every use; an unknown one stays 404."""
    key = key_with_versions(4)
    key.change_minimum_versions(min_decryption_version=3, now=T0 + 10 * TICK)
    key.trim(3, now=T0 + 11 * TICK)

    with pytest.raises(KeyLifecycleError) as decrypt:
        key.check_decryption(2)
    with pytest.raises(KeyLifecycleError) as floor:
        key.change_minimum_versions(min_decryption_version=2, now=T0)

    assert decrypt.value.code == floor.value.code == "VERSION_TRIMMED"
    assert key.check_decryption(3) is False
