"""Unit tests of the rules for using a key: minimum versions, encrypt and decrypt.

Case C01 in the domain: the floors hold for every version asked for, the
default lets only the primary encrypt, and config bounds refuse with nothing
recorded.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from domain.errors import InvalidArgumentError, KeyLifecycleError, VersionNotFoundError
from domain.keys import ManagedKey
from domain.usage import KeyUse, context_fingerprint
from tests.domain.test_keys import (
    T0,
    assert_refused,
    destroy,
    key_with_versions,
    replay,
    schedule,
)

LATER = T0 + timedelta(hours=1)


def test_new_key_has_default_floors() -> None:
    """A new key decrypts from version 1 and encrypts with the primary only."""
    key = key_with_versions(1)

    assert key.min_decryption_version == 1
    assert key.min_encryption_version is None
    assert key.summary()["min_decryption_version"] == 1
    assert key.summary()["min_encryption_version"] is None


def test_change_minimum_versions_records_both_values() -> None:
    """Raising the floors records one event carrying the resulting configuration."""
    key = key_with_versions(3)

    key.change_minimum_versions(min_decryption_version=3, now=LATER)
    key.change_minimum_versions(
        min_encryption_version=3, set_min_encryption=True, now=LATER
    )

    events = key.collect_events()
    assert type(events[-1]).__name__ == "MinimumVersionsChanged"
    assert events[-1].TOPIC == "keyledger.key.MinimumVersionsChanged"
    replayed = replay(events)
    assert replayed.min_decryption_version == 3
    assert replayed.min_encryption_version == 3
    assert replayed.to_view() == key.to_view()


def test_min_encryption_version_can_be_reset_to_primary_only() -> None:
    """``None`` with ``set_min_encryption`` returns to "only the primary encrypts"."""
    key = key_with_versions(3)
    key.change_minimum_versions(
        min_encryption_version=2, set_min_encryption=True, now=LATER
    )

    key.change_minimum_versions(
        min_encryption_version=None, set_min_encryption=True, now=LATER
    )

    assert key.min_encryption_version is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"min_decryption_version": 4}, "min_decryption_version"),
        ({"min_decryption_version": 0}, "min_decryption_version"),
        ({"min_decryption_version": -1}, "min_decryption_version"),
        (
            {"min_encryption_version": 4, "set_min_encryption": True},
            "min_encryption_version",
        ),
        (
            {"min_encryption_version": 0, "set_min_encryption": True},
            "min_encryption_version",
        ),
    ],
)
def test_floors_out_of_bounds_are_refused(changes: dict[str, int], field: str) -> None:
    """A floor above the latest version or below 1 is refused and nothing recorded."""
    key = key_with_versions(3)

    error = assert_refused(
        key,
        lambda: key.change_minimum_versions(now=LATER, **changes),  # type: ignore[arg-type]
        "MIN_VERSION_OUT_OF_RANGE",
        InvalidArgumentError,
    )

    assert error.details["field"] == field


def test_decryption_floor_is_never_above_the_primary() -> None:
    """After a rollback to v1, the floor cannot pass v1: its data must stay readable."""
    key = key_with_versions(3)
    key.roll_back_primary(1, now=LATER)

    error = assert_refused(
        key,
        lambda: key.change_minimum_versions(min_decryption_version=2, now=LATER),
        "MIN_VERSION_OUT_OF_RANGE",
        InvalidArgumentError,
    )

    assert error.details["max"] == 1


def test_encryption_floor_is_never_below_the_decryption_floor() -> None:
    """Encrypting under a version that may not decrypt would lose the data."""
    key = key_with_versions(3)
    key.change_minimum_versions(min_decryption_version=3, now=LATER)

    assert_refused(
        key,
        lambda: key.change_minimum_versions(
            min_encryption_version=2, set_min_encryption=True, now=LATER
        ),
        "MIN_VERSION_OUT_OF_RANGE",
        InvalidArgumentError,
    )


def test_empty_config_change_is_refused() -> None:
    """A change that names no floor is refused."""
    key = key_with_versions(2)

    assert_refused(
        key,
        lambda: key.change_minimum_versions(now=LATER),
        "NOTHING_TO_CHANGE",
        InvalidArgumentError,
    )


def test_rollback_below_the_decryption_floor_is_refused() -> None:
    """A primary below the floor would encrypt data nothing may decrypt."""
    key = key_with_versions(3)
    key.change_minimum_versions(min_decryption_version=2, now=LATER)

    error = assert_refused(
        key,
        lambda: key.roll_back_primary(1, now=LATER),
        "ROLLBACK_BELOW_MIN_DECRYPTION",
    )

    assert error.details == {"key": "payments", "min": 2, "version": 1}


def test_c01_floors_hold_for_every_version_asked_for() -> None:
    """C01: with floor 3 and default encryption, only v3 serves either operation."""
    key = key_with_versions(3)
    key.change_minimum_versions(min_decryption_version=3, now=LATER)

    with pytest.raises(KeyLifecycleError) as below:
        key.check_decryption(1)
    with pytest.raises(KeyLifecycleError) as not_primary:
        key.version_for_encryption(2)

    assert below.value.code == "VERSION_BELOW_MIN_DECRYPTION"
    assert below.value.details == {"key": "payments", "min": 3, "version": 1}
    assert not_primary.value.code == "VERSION_NOT_PRIMARY"
    assert key.version_for_encryption(3) == 3
    assert key.version_for_encryption() == 3
    assert key.check_decryption(3) is False


def test_explicit_version_at_or_above_min_encryption_may_encrypt() -> None:
    """With min_encryption_version 2, v2 encrypts when asked for and v1 does not."""
    key = key_with_versions(3)
    key.change_minimum_versions(
        min_encryption_version=2, set_min_encryption=True, now=LATER
    )

    assert key.version_for_encryption(2) == 2
    with pytest.raises(KeyLifecycleError) as refused:
        key.version_for_encryption(1)
    assert refused.value.code == "VERSION_NOT_PRIMARY"
    assert refused.value.details["min_encryption_version"] == 2


@pytest.mark.parametrize(
    ("prepare", "code"),
    [
        (lambda key: key.disable_version(1, now=LATER), "VERSION_DISABLED"),
        (lambda key: schedule(key, 1), "VERSION_DESTROY_SCHEDULED"),
        (lambda key: destroy(key, 1), "VERSION_DESTROYED"),
        (
            lambda key: key.mark_compromised(1, reason="leak", now=LATER),
            "VERSION_COMPROMISED",
        ),
        (lambda key: key.disable(now=LATER), "KEY_DISABLED"),
    ],
)
def test_unusable_version_refuses_decryption_with_its_own_code(
    prepare: object, code: str
) -> None:
    """Disabled, destroy-scheduled, destroyed and compromised each say which."""
    key = key_with_versions(2)
    prepare(key)  # type: ignore[operator]

    with pytest.raises(KeyLifecycleError) as refused:
        key.check_decryption(1)

    assert refused.value.code == code


def test_compromised_version_decrypts_only_when_the_caller_knows() -> None:
    """``compromised_ok`` lets a compromised version decrypt, and says it was one."""
    key = key_with_versions(2)
    key.mark_compromised(1, reason="leak", now=LATER)

    assert key.check_decryption(1, compromised_ok=True) is True
    assert key.check_decryption(2, compromised_ok=True) is False


def test_compromised_primary_refuses_encryption() -> None:
    """A compromised primary encrypts nothing, and neither does an unknown version."""
    key = key_with_versions(2)
    key.mark_compromised(2, reason="leak", now=LATER)

    with pytest.raises(KeyLifecycleError) as refused:
        key.version_for_encryption()
    with pytest.raises(VersionNotFoundError):
        key.version_for_encryption(9)

    assert refused.value.code == "VERSION_COMPROMISED"


def test_usage_record_counts_and_fingerprints_without_contexts() -> None:
    """A usage record counts outcomes and keeps only context fingerprints."""
    use = KeyUse.record(
        key_name="payments",
        key_id="id",
        operation="decrypt",
        outcomes={"ok": 2, "DECRYPTION_FAILED": 1},
        versions_decrypted=[2, 1, 2],
        contexts=[b"tenant-1", b"tenant-1", b"tenant-2"],
        compromised_versions=[1],
        now=T0,
    )

    [event] = use.collect_events()
    assert event.TOPIC == "keyledger.usage.KeyUsed"
    assert (use.items, use.succeeded) == (3, 2)
    assert use.versions_decrypted == [1, 2]
    assert use.contexts == 2
    assert context_fingerprint(b"tenant-1") in use.context_fingerprints
    assert b"tenant" not in repr(vars(event)).encode()
    assert use.compromised_use is True


def test_usage_record_refuses_unknown_operations() -> None:
    """Only the four operations are recorded."""
    with pytest.raises(ValueError, match="operation"):
        KeyUse.record(
            key_name="k", key_id="id", operation="sign", outcomes={"ok": 1}, now=T0
        )


def test_key_is_untouched_by_rule_checks() -> None:
    """Checking a use never triggers an event on the key."""
    key: ManagedKey = key_with_versions(2)
    before = len(key.pending_events)

    key.version_for_encryption()
    key.check_decryption(1)

    assert len(key.pending_events) == before
