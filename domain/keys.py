"""The managed key aggregate: its versions, its lifecycle rules and its events.

Command methods check the rules and raise a domain error on refusal; only then do
they trigger an event, whose ``apply`` changes state and nothing else. Replaying
history therefore never consults a rule, so tightening a rule later cannot make
old history fail to load.
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn, get_args

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from domain.clock import format_time
from domain.errors import (
    InvalidArgumentError,
    KeyLifecycleError,
    VersionNotFoundError,
)

Algorithm = Literal["aes-256-gcm"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)

VersionState = Literal[
    "enabled", "disabled", "destroy_scheduled", "destroyed", "compromised"
]

MAX_VERSION = 2**31 - 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_NAMESPACE = uuid.UUID("6f1d3a52-8c0e-4d6b-9a52-4b1f0e3c7d21")


def validate_key_name(name: object) -> str:
    """Return ``name`` if it is a valid key name, else raise ``InvalidArgumentError``.

    A name is 1 to 64 ASCII letters, digits, ``.``, ``_`` or ``-``, starting
    with a letter or digit.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            "A key name is 1 to 64 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit.",
            code="INVALID_KEY_NAME",
        )
    return name


# C0 controls but tab and line breaks, DEL, and the C1 controls U+0080 to U+009F.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def validate_text(value: str, *, field: str, max_length: int, required: bool) -> str:
    """Return ``value`` if it is acceptable free text, else raise.

    Free text (descriptions, reasons, labels) may hold any Unicode but control
    characters (C0, DEL and C1) other than tab and line breaks, which no store
    keeps alike.
    """
    if required and not value.strip():
        raise InvalidArgumentError(
            f"{field} must not be empty.", code="INVALID_TEXT", field=field
        )
    if len(value) > max_length:
        raise InvalidArgumentError(
            f"{field} is at most {max_length} characters.",
            code="INVALID_TEXT",
            field=field,
        )
    if _CONTROL.search(value):
        raise InvalidArgumentError(
            f"{field} must not contain control characters.",
            code="INVALID_TEXT",
            field=field,
        )
    return value


MIN_ROTATION_PERIOD = 3600
MAX_ROTATION_PERIOD = 10 * 366 * 86400


def validate_rotation_period(seconds: int | None) -> int | None:
    """Return ``seconds`` if it is None or a rotation period in bounds, else raise.

    A period is one hour to ten years, as a whole number of seconds.
    """
    if seconds is not None and not (
        isinstance(seconds, int)
        and not isinstance(seconds, bool)
        and MIN_ROTATION_PERIOD <= seconds <= MAX_ROTATION_PERIOD
    ):
        raise InvalidArgumentError(
            f"rotation_period_seconds must be {MIN_ROTATION_PERIOD} to "
            f"{MAX_ROTATION_PERIOD} (one hour to ten years), or null for none.",
            code="ROTATION_PERIOD_OUT_OF_RANGE",
            field="rotation_period_seconds",
            value=seconds if isinstance(seconds, int) else None,
            min=MIN_ROTATION_PERIOD,
            max=MAX_ROTATION_PERIOD,
        )
    return seconds


def key_id_for(name: str) -> uuid.UUID:
    """The stream id of the key called ``name``: the same name always maps to it."""
    return uuid.uuid5(_KEY_NAMESPACE, name)


@dataclass(frozen=True)
class KeyVersion:
    """One version of a key: its state and the fingerprint of its material.

    Immutable: events replace a version's record rather than change it, so a
    copy of the key needs only a shallow copy of its versions.
    """

    version: int
    state: VersionState
    fingerprint: str
    created_at: str
    compromised: bool = False
    compromise_reason: str | None = None
    scheduled_at: str | None = None
    destroy_at: str | None = None
    destroyed_at: str | None = None

    def fields(self) -> dict[str, Any]:
        """Every field by name: ``KeyVersion(**record.fields())`` is the record.

        Field by field: ``dataclasses.asdict`` deep-copies every value, which
        shows on the write path of a key with many versions.
        """
        return {
            "version": self.version,
            "state": self.state,
            "fingerprint": self.fingerprint,
            "created_at": self.created_at,
            "compromised": self.compromised,
            "compromise_reason": self.compromise_reason,
            "scheduled_at": self.scheduled_at,
            "destroy_at": self.destroy_at,
            "destroyed_at": self.destroyed_at,
        }


class ManagedKey(Aggregate):
    """A named key with an ordered list of versions, one of them primary."""

    # Versions below this were trimmed: gone from ``versions`` for good.
    min_available_version = 1
    # Seconds between rotations the key's owners promise, None for no promise;
    # a class default so keys recorded before the event existed load as None.
    rotation_period_seconds: int | None = None

    class Generated(Aggregate.Created):
        """The key was created and its version 1 generated."""

        TOPIC = "keyledger.key.Generated"
        name: str
        algorithm: str
        description: str
        fingerprint: str

    class Rotated(Aggregate.Event):
        """A new version was generated and made primary."""

        TOPIC = "keyledger.key.Rotated"
        version: int
        fingerprint: str

        def apply(self, aggregate: ManagedKey) -> None:
            at = format_time(self.timestamp)
            aggregate.versions[self.version] = KeyVersion(
                self.version, "enabled", self.fingerprint, at
            )
            aggregate.primary = self.version

    class Disabled(Aggregate.Event):
        """The key as a whole was disabled."""

        TOPIC = "keyledger.key.Disabled"

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.enabled = False

    class Enabled(Aggregate.Event):
        """The key as a whole was enabled again."""

        TOPIC = "keyledger.key.Enabled"

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.enabled = True

    class VersionDisabled(Aggregate.Event):
        """A version was disabled."""

        TOPIC = "keyledger.key.VersionDisabled"
        version: int

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.set_state(self.version, "disabled")

    class VersionEnabled(Aggregate.Event):
        """A disabled version was enabled again."""

        TOPIC = "keyledger.key.VersionEnabled"
        version: int

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.set_state(self.version, "enabled")

    class MarkedCompromised(Aggregate.Event):
        """A version was declared compromised; it can never be used again."""

        TOPIC = "keyledger.key.MarkedCompromised"
        version: int
        reason: str

        def apply(self, aggregate: ManagedKey) -> None:
            record = aggregate.versions[self.version]
            aggregate.versions[self.version] = replace(
                record,
                compromised=True,
                compromise_reason=self.reason,
                state=record.state
                if record.state == "destroy_scheduled"
                else "compromised",
            )

    class DestructionScheduled(Aggregate.Event):
        """A version's destruction was scheduled after a waiting period."""

        TOPIC = "keyledger.key.DestructionScheduled"
        version: int
        days: int
        scheduled_at: str
        destroy_at: str

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.versions[self.version] = replace(
                aggregate.versions[self.version],
                state="destroy_scheduled",
                scheduled_at=self.scheduled_at,
                destroy_at=self.destroy_at,
            )

    class DestructionCancelled(Aggregate.Event):
        """A scheduled destruction was cancelled; the version is not usable yet."""

        TOPIC = "keyledger.key.DestructionCancelled"
        version: int
        restored_state: str

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.versions[self.version] = replace(
                aggregate.versions[self.version],
                state=_as_state(self.restored_state),
                scheduled_at=None,
                destroy_at=None,
            )

    class VersionDestroyed(Aggregate.Event):
        """A version's material was erased; destroyed is final."""

        TOPIC = "keyledger.key.VersionDestroyed"
        version: int

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.versions[self.version] = replace(
                aggregate.versions[self.version],
                state="destroyed",
                destroyed_at=format_time(self.timestamp),
            )

    class PrimaryRolledBack(Aggregate.Event):
        """An earlier, still enabled version was made primary again."""

        TOPIC = "keyledger.key.PrimaryRolledBack"
        version: int
        previous_primary: int

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.primary = self.version

    class RolledBack(Aggregate.Event):
        """The key returned to its state at an earlier point of its history.

        The event carries the resulting primary and version states, so applying it
        never needs to replay anything.
        """

        TOPIC = "keyledger.key.RolledBack"
        to_stream_version: int
        primary: int
        version_states: dict[str, str]

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.primary = self.primary
            for number, state in self.version_states.items():
                aggregate.set_state(int(number), _as_state(state))

    class MinimumVersionsChanged(Aggregate.Event):
        """The lowest versions allowed to decrypt and to encrypt were changed.

        ``min_encryption_version`` None means only the primary may encrypt.
        """

        TOPIC = "keyledger.key.MinimumVersionsChanged"
        min_decryption_version: int
        min_encryption_version: int | None

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.min_decryption_version = self.min_decryption_version
            aggregate.min_encryption_version = self.min_encryption_version

    class RotationPeriodChanged(Aggregate.Event):
        """The key's rotation period was set, changed or cleared (None).

        A compliance report counts a key due for rotation once its primary
        version is older than the period.
        """

        TOPIC = "keyledger.key.RotationPeriodChanged"
        rotation_period_seconds: int | None

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.rotation_period_seconds = self.rotation_period_seconds

    class VersionsTrimmed(Aggregate.Event):
        """Every version below ``min_available_version`` left the key for good.

        ``removed`` lists the versions that were still kept; their material is
        erased in the same transaction. History keeps the events that made them.
        """

        TOPIC = "keyledger.key.VersionsTrimmed"
        min_available_version: int
        removed: list[int]

        def apply(self, aggregate: ManagedKey) -> None:
            for number in self.removed:
                aggregate.versions.pop(number, None)
            aggregate.min_available_version = self.min_available_version

    class Restored(Aggregate.Created):
        """The key was created from a backup bundle, with every version it held.

        ``versions`` are the bundle's version records (no material); ``source``
        names the backup, its digest, the source key and the source ledger.
        """

        TOPIC = "keyledger.key.Restored"
        name: str
        algorithm: str
        description: str
        fingerprint: str
        versions: list[dict[str, Any]]
        primary: int
        enabled: bool
        min_decryption_version: int
        min_encryption_version: int | None
        min_available_version: int
        source: dict[str, Any]

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.versions = {
                int(item["version"]): _version_record(item) for item in self.versions
            }
            aggregate.primary = self.primary
            aggregate.enabled = self.enabled
            aggregate.min_decryption_version = self.min_decryption_version
            aggregate.min_encryption_version = self.min_encryption_version
            aggregate.min_available_version = self.min_available_version

    class RestoredInPlace(Aggregate.Event):
        """A backup was restored over the key: material put back, states returned.

        Destroyed, compromised and destroy-scheduled versions keep their state;
        ``version_states`` holds only the states that changed.
        """

        TOPIC = "keyledger.key.RestoredInPlace"
        primary: int
        version_states: dict[str, str]
        material_versions: list[int]
        source: dict[str, Any]

        def apply(self, aggregate: ManagedKey) -> None:
            aggregate.primary = self.primary
            for number, state in self.version_states.items():
                aggregate.set_state(int(number), _as_state(state))

    def __init__(
        self, name: str, algorithm: str, description: str, fingerprint: str
    ) -> None:
        self.name = name
        self.algorithm = algorithm
        self.description = description
        self.enabled = True
        self.primary = 1
        self.min_decryption_version = 1
        self.min_encryption_version: int | None = None
        self.min_available_version = 1
        created_at = format_time(self.created_on)
        self.versions: dict[int, KeyVersion] = {
            1: KeyVersion(1, "enabled", fingerprint, created_at)
        }

    def __deepcopy__(self, memo: dict[int, Any]) -> ManagedKey:
        # Every field is immutable but the two containers, so copying those is a
        # deep copy; it keeps loading a key with thousands of versions cheap.
        clone = copy.copy(self)
        clone.versions = dict(self.versions)
        clone._pending_events = list(self._pending_events)
        return clone

    def set_state(self, version: int, state: VersionState) -> None:
        """Replace a version's state; only event ``apply`` methods call this."""
        self.versions[version] = replace(self.versions[version], state=state)

    # Commands --------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        *,
        name: str,
        settings: dict[str, Any],
        versions: list[dict[str, Any]],
        source: dict[str, Any],
        now: datetime,
    ) -> ManagedKey:
        """Create a key from a backup bundle's settings and version records."""
        records = [_version_fields(item) for item in versions]
        if not records or settings["primary"] not in {r["version"] for r in records}:
            raise InvalidArgumentError(
                "A restored key needs its primary version among its versions.",
                code="INVALID_BUNDLE_CONTENT",
            )
        return cls._create(
            cls.Restored,
            id=key_id_for(name),
            name=name,
            algorithm=settings["algorithm"],
            description=settings["description"],
            fingerprint=records[0]["fingerprint"],
            versions=records,
            primary=settings["primary"],
            enabled=settings["enabled"],
            min_decryption_version=settings["min_decryption_version"],
            min_encryption_version=settings["min_encryption_version"],
            min_available_version=settings["min_available_version"],
            source=source,
            timestamp=now,
        )

    def require_nothing_undestroyed(self, versions: list[dict[str, Any]]) -> None:
        """Refuse a restore that would bring back material this key destroyed.

        ``versions`` are a bundle's records with a ``material`` flag.
        """
        for item in versions:
            number = int(item["version"])
            if not item["material"]:
                continue
            record = self.versions.get(number)
            if number < self.min_available_version or (
                record is not None and record.state == "destroyed"
            ):
                raise KeyLifecycleError(
                    f"Version {number} of {self.name!r} was destroyed; a restore "
                    "never brings it back.",
                    code="RESTORE_WOULD_UNDESTROY",
                    key=self.name,
                    version=number,
                )

    def restore_in_place(
        self,
        *,
        primary: int,
        versions: list[dict[str, Any]],
        source: dict[str, Any],
        now: datetime,
    ) -> list[int]:
        """Put a bundle of this key back: return its version states and material.

        Refused when the key has versions newer than the bundle's (a rollback),
        when it would bring back a destroyed or trimmed version, or when a
        fingerprint differs from the ledger's (another key's bundle). Returns the
        versions whose material is put back.
        """
        newest = max(int(item["version"]) for item in versions)
        if self.next_version - 1 > newest:
            raise KeyLifecycleError(
                f"Key {self.name!r} has versions up to {self.next_version - 1}; the "
                f"backup holds only up to {newest}.",
                code="RESTORE_WOULD_ROLL_BACK",
                key=self.name,
                latest=self.next_version - 1,
                backup_latest=newest,
            )
        self.require_nothing_undestroyed(versions)
        for item in versions:
            record = self.versions.get(int(item["version"]))
            if record is not None and record.fingerprint != item["fingerprint"]:
                raise KeyLifecycleError(
                    f"Version {record.version} of the backup is not version "
                    f"{record.version} of {self.name!r}.",
                    code="BUNDLE_MISMATCH",
                    key=self.name,
                    version=record.version,
                )
        states: dict[str, str] = {}
        for item in versions:
            record = self.versions.get(int(item["version"]))
            if record is None or record.state not in ("enabled", "disabled"):
                continue
            if item["state"] in ("enabled", "disabled") and item["state"] != (
                record.state
            ):
                states[str(record.version)] = item["state"]
        new_primary = primary
        if states.get(str(primary), self.versions[primary].state) != "enabled":
            new_primary = self.primary
        materials = sorted(
            int(item["version"]) for item in versions if item["material"]
        )
        self.trigger_event(
            self.RestoredInPlace,
            primary=new_primary,
            version_states=states,
            material_versions=materials,
            source=source,
            timestamp=now,
        )
        return materials

    @classmethod
    def generate(
        cls,
        *,
        name: str,
        algorithm: str,
        description: str,
        fingerprint: str,
        now: datetime,
    ) -> ManagedKey:
        """Create a key whose version 1 is enabled and primary."""
        validate_key_name(name)
        validate_text(description, field="description", max_length=1000, required=False)
        if algorithm not in ALGORITHMS:
            raise InvalidArgumentError(
                f"Algorithm {algorithm!r} is not supported.",
                code="UNSUPPORTED_ALGORITHM",
                supported=list(ALGORITHMS),
            )
        return cls._create(
            cls.Generated,
            id=key_id_for(name),
            name=name,
            algorithm=algorithm,
            description=description,
            fingerprint=fingerprint,
            timestamp=now,
        )

    @property
    def next_version(self) -> int:
        """The number the next rotation will give its new version."""
        return max(self.versions) + 1

    def rotate(self, *, fingerprint: str, now: datetime) -> int:
        """Add a new enabled version and make it primary; refused while disabled."""
        self._require_key_enabled()
        version = self.next_version
        self.trigger_event(
            self.Rotated, version=version, fingerprint=fingerprint, timestamp=now
        )
        return version

    def disable(self, *, now: datetime) -> None:
        """Disable the key as a whole."""
        if not self.enabled:
            raise KeyLifecycleError(
                f"Key {self.name!r} is already disabled.",
                code="KEY_ALREADY_DISABLED",
                key=self.name,
            )
        self.trigger_event(self.Disabled, timestamp=now)

    def enable(self, *, now: datetime) -> None:
        """Enable the key as a whole."""
        if self.enabled:
            raise KeyLifecycleError(
                f"Key {self.name!r} is already enabled.",
                code="KEY_ALREADY_ENABLED",
                key=self.name,
            )
        self.trigger_event(self.Enabled, timestamp=now)

    def disable_version(self, version: int, *, now: datetime) -> None:
        """Disable an enabled version other than the primary."""
        record = self._get_version(version)
        if version == self.primary:
            raise KeyLifecycleError(
                f"Version {version} is the primary of {self.name!r}; rotate or "
                "roll back before disabling it.",
                code="CANNOT_DISABLE_PRIMARY",
                key=self.name,
                version=version,
            )
        self._require_state(record, "enabled", "disable")
        self.trigger_event(self.VersionDisabled, version=version, timestamp=now)

    def enable_version(self, version: int, *, now: datetime) -> None:
        """Enable a disabled version."""
        record = self._get_version(version)
        self._require_state(record, "disabled", "enable")
        self.trigger_event(self.VersionEnabled, version=version, timestamp=now)

    def mark_compromised(self, version: int, *, reason: str, now: datetime) -> bool:
        """Declare a version compromised; return whether it was the primary.

        Marking the primary is allowed and leaves the key with no usable primary
        until it is rotated.
        """
        record = self._get_version(version)
        validate_text(reason, field="reason", max_length=1000, required=True)
        self._require_not_destroyed(record)
        if record.compromised:
            raise KeyLifecycleError(
                f"Version {version} of {self.name!r} is already compromised.",
                code="ALREADY_COMPROMISED",
                key=self.name,
                version=version,
            )
        self.trigger_event(
            self.MarkedCompromised, version=version, reason=reason, timestamp=now
        )
        return version == self.primary

    def schedule_destruction(
        self,
        version: int,
        *,
        days: int,
        min_days: int,
        max_days: int,
        now: datetime,
    ) -> None:
        """Schedule a non-primary version for destruction after ``days`` days."""
        record = self._get_version(version)
        if not min_days <= days <= max_days:
            raise InvalidArgumentError(
                f"The waiting period must be {min_days} to {max_days} days.",
                code="DESTRUCTION_PERIOD_OUT_OF_RANGE",
                days=days,
                min_days=min_days,
                max_days=max_days,
            )
        if version == self.primary:
            raise KeyLifecycleError(
                f"Version {version} is the primary of {self.name!r} and cannot "
                "be destroyed; rotate first.",
                code="CANNOT_DESTROY_PRIMARY",
                key=self.name,
                version=version,
            )
        self._require_not_destroyed(record)
        if record.state == "destroy_scheduled":
            raise KeyLifecycleError(
                f"Version {version} of {self.name!r} is already scheduled for "
                "destruction.",
                code="DESTRUCTION_ALREADY_SCHEDULED",
                key=self.name,
                version=version,
                destroy_at=record.destroy_at,
            )
        # Whole days in UTC: a daylight-saving change never shortens the wait.
        now = now.astimezone(UTC)
        self.trigger_event(
            self.DestructionScheduled,
            version=version,
            days=days,
            scheduled_at=format_time(now),
            destroy_at=format_time(now + timedelta(days=days)),
            timestamp=now,
        )

    def cancel_destruction(self, version: int, *, now: datetime) -> None:
        """Cancel a scheduled destruction; the version returns to ``disabled``.

        A compromised version returns to ``compromised``; neither is ever put
        straight back to ``enabled``.
        """
        record = self._get_version(version)
        self._require_scheduled(record)
        restored = "compromised" if record.compromised else "disabled"
        self.trigger_event(
            self.DestructionCancelled,
            version=version,
            restored_state=restored,
            timestamp=now,
        )

    def destroy_version(self, version: int, *, now: datetime) -> None:
        """Destroy a version whose waiting period has passed."""
        record = self._get_version(version)
        self._require_scheduled(record)
        assert record.destroy_at is not None
        if format_time(now) < record.destroy_at:
            raise KeyLifecycleError(
                f"Version {version} of {self.name!r} is not due for destruction "
                f"until {record.destroy_at}.",
                code="DESTRUCTION_NOT_DUE",
                key=self.name,
                version=version,
                destroy_at=record.destroy_at,
            )
        self.trigger_event(self.VersionDestroyed, version=version, timestamp=now)

    def roll_back_primary(self, version: int, *, now: datetime) -> None:
        """Make an earlier, still enabled version primary again."""
        self._require_key_enabled()
        record = self._get_version(version)
        if version == self.primary:
            raise KeyLifecycleError(
                f"Version {version} is already the primary of {self.name!r}.",
                code="ALREADY_PRIMARY",
                key=self.name,
                version=version,
            )
        self._require_not_destroyed(record)
        self._require_not_compromised(record)
        self._require_state(record, "enabled", "make primary")
        self._require_decryptable_primary(version)
        self.trigger_event(
            self.PrimaryRolledBack,
            version=version,
            previous_primary=self.primary,
            timestamp=now,
        )

    def roll_back_to(self, past: ManagedKey, *, now: datetime) -> None:
        """Return to the state ``past`` had, recording the return as a new event.

        ``past`` is this key replayed to an earlier stream version. Destroyed,
        compromised and destroy-scheduled versions keep their current state,
        versions created after that point are disabled, and a destruction that
        was since cancelled is not scheduled again (the version is disabled), so
        nothing destroyed or compromised ever comes back.
        """
        self._require_key_enabled()
        if past.id != self.id or past.version >= self.version:
            raise KeyLifecycleError(
                "A rollback target must be an earlier point of the same key.",
                code="ROLLBACK_TARGET_NOT_IN_PAST",
                key=self.name,
                stream_version=self.version,
                target=past.version,
            )
        if past.primary < self.min_available_version:
            self._refuse_trimmed(past.primary)
        states: dict[str, str] = {}
        for number, record in self.versions.items():
            state: VersionState
            if record.state in ("destroyed", "compromised", "destroy_scheduled"):
                state = record.state
            elif number not in past.versions:
                state = "disabled"
            elif past.versions[number].state == "destroy_scheduled":
                # A cancelled destruction stays cancelled: the version is disabled.
                state = "disabled"
            else:
                state = past.versions[number].state
            if state != record.state:
                states[str(number)] = state
        primary = self.versions[past.primary]
        new_primary_state = states.get(str(past.primary), primary.state)
        if primary.compromised or new_primary_state != "enabled":
            raise KeyLifecycleError(
                f"At stream version {past.version} the primary of {self.name!r} was "
                f"version {past.primary}, which is now {primary.state}.",
                code="ROLLBACK_TARGET_UNUSABLE",
                key=self.name,
                version=past.primary,
                state=primary.state,
            )
        self._require_decryptable_primary(past.primary)
        self.trigger_event(
            self.RolledBack,
            to_stream_version=past.version,
            primary=past.primary,
            version_states=states,
            timestamp=now,
        )

    def change_minimum_versions(
        self,
        *,
        min_decryption_version: int | None = None,
        min_encryption_version: int | None = None,
        set_min_encryption: bool = False,
        now: datetime,
    ) -> None:
        """Change the decryption floor, the encryption floor, or both.

        ``min_decryption_version`` is 1 to the primary (the primary's own
        ciphertext must stay readable, and the primary is never above the
        latest version). ``min_encryption_version`` is None (only the primary
        encrypts) or from the decryption floor to the latest version. With
        ``set_min_encryption`` false the encryption floor is left as it is.
        Nothing is recorded when either bound is broken, or when both floors
        already have the values asked for.

        Raises:
            InvalidArgumentError: ``MIN_VERSION_OUT_OF_RANGE``, with the field,
                the value and the allowed range; or ``NOTHING_TO_CHANGE``.
        """
        if min_decryption_version is None and not set_min_encryption:
            raise InvalidArgumentError(
                "Give min_decryption_version, min_encryption_version or both.",
                code="NOTHING_TO_CHANGE",
            )
        decryption = (
            self.min_decryption_version
            if min_decryption_version is None
            else min_decryption_version
        )
        encryption = (
            min_encryption_version
            if set_min_encryption
            else self.min_encryption_version
        )
        if not 1 <= decryption <= self.primary:
            raise InvalidArgumentError(
                f"min_decryption_version of {self.name!r} must be 1 to "
                f"{self.primary} (the primary version).",
                code="MIN_VERSION_OUT_OF_RANGE",
                field="min_decryption_version",
                value=decryption,
                min=1,
                max=self.primary,
            )
        if decryption < self.min_available_version:
            raise KeyLifecycleError(
                f"Versions of {self.name!r} below {self.min_available_version} "
                "were trimmed; min_decryption_version cannot go below it.",
                code="VERSION_TRIMMED",
                key=self.name,
                min_available_version=self.min_available_version,
                version=decryption,
            )
        latest = max(self.versions)
        if encryption is not None and not decryption <= encryption <= latest:
            raise InvalidArgumentError(
                f"min_encryption_version of {self.name!r} must be "
                f"{decryption} to {latest} (from the decryption floor to the "
                "latest version), or null for the primary only.",
                code="MIN_VERSION_OUT_OF_RANGE",
                field="min_encryption_version",
                value=encryption,
                min=decryption,
                max=latest,
            )
        if (decryption, encryption) == (
            self.min_decryption_version,
            self.min_encryption_version,
        ):
            return  # already so: nothing to record
        self.trigger_event(
            self.MinimumVersionsChanged,
            min_decryption_version=decryption,
            min_encryption_version=encryption,
            timestamp=now,
        )

    def change_rotation_period(self, seconds: int | None, *, now: datetime) -> None:
        """Set the rotation period to ``seconds``, or clear it with None.

        Nothing is recorded when the period is outside the bounds, or is
        already ``seconds``.

        Raises:
            InvalidArgumentError: ``ROTATION_PERIOD_OUT_OF_RANGE`` with the value
                and the allowed range.
        """
        validate_rotation_period(seconds)
        if seconds == self.rotation_period_seconds:
            return  # already so: nothing to record
        self.trigger_event(
            self.RotationPeriodChanged, rotation_period_seconds=seconds, timestamp=now
        )

    def trim(self, min_available_version: int, *, now: datetime) -> list[int]:
        """Remove every version below ``min_available_version``; return them.

        Only versions below ``min_decryption_version`` can go, so nothing that
        may still decrypt is removed and the primary (never below that floor)
        always stays. The caller MUST erase the removed versions' material in
        the same transaction.

        Raises:
            InvalidArgumentError: ``INVALID_VERSION`` unless a positive integer.
            KeyLifecycleError: ``TRIM_ABOVE_MIN_DECRYPTION`` (with ``min`` and
                ``requested``) or ``NOTHING_TO_TRIM`` (at or below the lowest
                kept version, with ``lowest`` and ``requested``).
        """
        if (
            isinstance(min_available_version, bool)
            or not isinstance(min_available_version, int)
            or not 1 <= min_available_version <= MAX_VERSION
        ):
            raise InvalidArgumentError(
                "min_available_version must be a positive integer.",
                code="INVALID_VERSION",
                field="min_available_version",
            )
        if min_available_version > self.min_decryption_version:
            raise KeyLifecycleError(
                f"Cannot trim {self.name!r} above its min_decryption_version "
                f"{self.min_decryption_version}: those versions may still decrypt.",
                code="TRIM_ABOVE_MIN_DECRYPTION",
                key=self.name,
                min=self.min_decryption_version,
                requested=min_available_version,
            )
        lowest = min(self.versions)
        if min_available_version <= lowest:
            raise KeyLifecycleError(
                f"Key {self.name!r} keeps no version below {min_available_version}.",
                code="NOTHING_TO_TRIM",
                key=self.name,
                lowest=lowest,
                requested=min_available_version,
            )
        removed = sorted(n for n in self.versions if n < min_available_version)
        if self.primary in removed:  # pragma: no cover - the floor forbids it
            raise AssertionError("The primary is never below min_decryption_version.")
        self.trigger_event(
            self.VersionsTrimmed,
            min_available_version=min_available_version,
            removed=removed,
            timestamp=now,
        )
        return removed

    # Use rules -------------------------------------------------------------

    def version_for_encryption(self, requested: int | None = None) -> int:
        """The version to encrypt under: the primary, or ``requested`` if allowed.

        A version other than the primary may encrypt only when it was asked
        for explicitly and is at or above ``min_encryption_version``; the
        version used is never another than the one asked for.

        Raises:
            KeyLifecycleError: ``KEY_DISABLED``, ``VERSION_NOT_PRIMARY``, or the
                version's state refuses (``VERSION_COMPROMISED``,
                ``VERSION_DISABLED``, ``VERSION_DESTROY_SCHEDULED``,
                ``VERSION_DESTROYED``, ``VERSION_BELOW_MIN_DECRYPTION``).
            VersionNotFoundError: the key has no such version.
        """
        self._require_key_enabled()
        version = self.primary if requested is None else requested
        record = self._get_version(version)
        floor = self.min_encryption_version
        if version != self.primary and (floor is None or version < floor):
            raise KeyLifecycleError(
                f"Version {version} of {self.name!r} may not encrypt: only the "
                "primary"
                + ("" if floor is None else f" and versions from {floor}")
                + " may.",
                code="VERSION_NOT_PRIMARY",
                key=self.name,
                version=version,
                primary=self.primary,
                min_encryption_version=floor,
            )
        self._require_above_decryption_floor(record)
        self._require_not_destroyed(record)
        self._require_not_scheduled(record)
        self._require_not_compromised(record)
        self._require_version_enabled(record)
        return version

    def check_decryption(self, version: int, *, compromised_ok: bool = False) -> bool:
        """Check that ``version`` may decrypt; return whether it is compromised.

        A compromised version decrypts only with ``compromised_ok``, so data can
        be rescued and re-encrypted; the caller MUST flag that use.

        Raises:
            KeyLifecycleError: ``KEY_DISABLED``, ``VERSION_BELOW_MIN_DECRYPTION``
                (with ``min`` and ``version``), ``VERSION_DESTROYED``,
                ``VERSION_DESTROY_SCHEDULED``, ``VERSION_COMPROMISED`` or
                ``VERSION_DISABLED``.
            VersionNotFoundError: the key has no such version.
        """
        self._require_key_enabled()
        record = self._get_version(version)
        self._require_above_decryption_floor(record)
        self._require_not_destroyed(record)
        self._require_not_scheduled(record)
        if record.compromised:
            if not compromised_ok:
                self._require_not_compromised(record)
            return True
        self._require_version_enabled(record)
        return False

    # Queries ---------------------------------------------------------------

    @property
    def primary_usable(self) -> bool:
        """Whether the primary version can be used (not compromised)."""
        return self.versions[self.primary].state == "enabled"

    def to_view(self) -> dict[str, Any]:
        """The key as the read side shows it: plain JSON types, no material."""
        return {
            **self.summary(),
            "versions": [self.version_view(number) for number in sorted(self.versions)],
        }

    def summary(self) -> dict[str, Any]:
        """The key without its versions."""
        return {
            "name": self.name,
            "key_id": str(self.id),
            "algorithm": self.algorithm,
            "description": self.description,
            "state": "enabled" if self.enabled else "disabled",
            "primary_version": self.primary,
            "primary_usable": self.primary_usable,
            "stream_version": self.version,
            "created_at": format_time(self.created_on),
            "updated_at": format_time(self.modified_on),
            "versions_count": len(self.versions),
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "rotation_period_seconds": self.rotation_period_seconds,
        }

    def version_view(self, number: int) -> dict[str, Any]:
        """One version as the read side shows it."""
        return {**self.versions[number].fields(), "primary": number == self.primary}

    # Guards ----------------------------------------------------------------

    def _get_version(self, version: int) -> KeyVersion:
        try:
            return self.versions[version]
        except KeyError:
            if 1 <= version < self.min_available_version:
                self._refuse_trimmed(version)
            raise VersionNotFoundError(
                f"Key {self.name!r} has no version {version}.",
                key=self.name,
                version=version,
            ) from None

    def _refuse_trimmed(self, version: int) -> NoReturn:
        raise KeyLifecycleError(
            f"Version {version} of {self.name!r} was trimmed; its material is gone.",
            code="VERSION_TRIMMED",
            key=self.name,
            version=version,
            min_available_version=self.min_available_version,
        )

    def _require_key_enabled(self) -> None:
        if not self.enabled:
            raise KeyLifecycleError(
                f"Key {self.name!r} is disabled.", code="KEY_DISABLED", key=self.name
            )

    def _require_not_destroyed(self, record: KeyVersion) -> None:
        if record.state == "destroyed":
            raise KeyLifecycleError(
                f"Version {record.version} of {self.name!r} is destroyed.",
                code="VERSION_DESTROYED",
                key=self.name,
                version=record.version,
            )

    def _require_not_compromised(self, record: KeyVersion) -> None:
        if record.compromised:
            raise KeyLifecycleError(
                f"Version {record.version} of {self.name!r} is compromised.",
                code="VERSION_COMPROMISED",
                key=self.name,
                version=record.version,
            )

    def _require_not_scheduled(self, record: KeyVersion) -> None:
        if record.state == "destroy_scheduled":
            raise KeyLifecycleError(
                f"Version {record.version} of {self.name!r} is scheduled for "
                "destruction.",
                code="VERSION_DESTROY_SCHEDULED",
                key=self.name,
                version=record.version,
                destroy_at=record.destroy_at,
            )

    def _require_version_enabled(self, record: KeyVersion) -> None:
        if record.state != "enabled":
            raise KeyLifecycleError(
                f"Version {record.version} of {self.name!r} is {record.state}.",
                code="VERSION_DISABLED",
                key=self.name,
                version=record.version,
                state=record.state,
            )

    def _require_above_decryption_floor(self, record: KeyVersion) -> None:
        if record.version < self.min_decryption_version:
            raise KeyLifecycleError(
                f"Version {record.version} of {self.name!r} is below its "
                f"min_decryption_version {self.min_decryption_version}.",
                code="VERSION_BELOW_MIN_DECRYPTION",
                key=self.name,
                min=self.min_decryption_version,
                version=record.version,
            )

    def _require_decryptable_primary(self, version: int) -> None:
        if version < self.min_decryption_version:
            raise KeyLifecycleError(
                f"Version {version} of {self.name!r} is below its "
                f"min_decryption_version {self.min_decryption_version}: what it "
                "encrypted as primary could not be decrypted.",
                code="ROLLBACK_BELOW_MIN_DECRYPTION",
                key=self.name,
                min=self.min_decryption_version,
                version=version,
            )

    def _require_scheduled(self, record: KeyVersion) -> None:
        if record.state != "destroy_scheduled":
            raise KeyLifecycleError(
                f"Version {record.version} of {self.name!r} is not scheduled for "
                "destruction.",
                code="DESTRUCTION_NOT_SCHEDULED",
                key=self.name,
                version=record.version,
                state=record.state,
            )

    def _require_state(self, record: KeyVersion, wanted: str, action: str) -> None:
        if record.state == wanted:
            return
        self._require_not_destroyed(record)
        self._require_not_compromised(record)
        raise KeyLifecycleError(
            f"Cannot {action} version {record.version} of {self.name!r}: it is "
            f"{record.state}.",
            code="INVALID_TRANSITION",
            key=self.name,
            version=record.version,
            state=record.state,
        )


def _as_state(text: str) -> VersionState:
    if text not in get_args(VersionState):
        raise ValueError(f"Unknown version state {text!r}.")
    return text  # type: ignore[return-value]


_VERSION_FIELDS = (
    "version",
    "state",
    "fingerprint",
    "created_at",
    "compromised",
    "compromise_reason",
    "scheduled_at",
    "destroy_at",
    "destroyed_at",
)


def _version_fields(item: dict[str, Any]) -> dict[str, Any]:
    """A version record as a restore event carries it: the fields, no material."""
    return {name: item.get(name) for name in _VERSION_FIELDS}


def _version_record(item: dict[str, Any]) -> KeyVersion:
    return KeyVersion(
        version=int(item["version"]),
        state=_as_state(item["state"]),
        fingerprint=item["fingerprint"],
        created_at=item["created_at"],
        compromised=bool(item["compromised"]),
        compromise_reason=item["compromise_reason"],
        scheduled_at=item["scheduled_at"],
        destroy_at=item["destroy_at"],
        destroyed_at=item["destroyed_at"],
    )


def _register_event_topics() -> None:
    # The library registers an explicit TOPIC only when it first writes that event;
    # a process that only reads (a rebuild, a verifier, a restart) must know them too.
    for item in vars(ManagedKey).values():
        topic = getattr(item, "TOPIC", None)
        if isinstance(item, type) and isinstance(topic, str):
            get_topic(item)


_register_event_topics()
