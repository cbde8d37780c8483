"""The backup record of a key, the deployment's backup settings, and the rules on them.

Backup events sit on streams of their own (one per key, one for the deployment's
settings, one for scheduler runs), never on the key's stream: taking or verifying
a backup does not change the key, so a caller's ``expected_version`` on the key
still means what it did. Event names and TOPICs are a stored format (see
``domain.keys``): never rename them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from domain.clock import format_time, parse_time
from domain.errors import BackupNotFoundError, InvalidArgumentError, KeyLifecycleError

_NAMESPACE = uuid.UUID("3b0f6a8e-51d2-4c1e-8f7a-2d9c4e6b1a05")
SETTINGS_ID = uuid.UUID("7c2e9d41-0a6b-4f38-b5e1-93d8a6c4f207")
SCHEDULER_ID = uuid.UUID("a4d81f36-2c9e-4b70-8e15-6f0b3d7a9c12")
LEDGER_BACKUPS_ID = uuid.UUID("5e93c0d7-8b14-4a62-9f3e-c1a27d4b6e98")

# A claim older than this is taken to be from a scheduler that died mid-backup.
CLAIM_TIMEOUT = timedelta(minutes=10)

Status = Literal["ok", "due", "overdue", "unverified", "verification_failed", "at_risk"]
STATUSES: tuple[str, ...] = (
    "ok",
    "due",
    "overdue",
    "unverified",
    "verification_failed",
    "at_risk",
)
TargetKind = Literal["dir", "s3"]
_TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_LOCATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def backups_id_for(key_name: str) -> uuid.UUID:
    """The stream id of the backup record of the key called ``key_name``."""
    return uuid.uuid5(_NAMESPACE, f"backups/{key_name}")


@dataclass(frozen=True)
class BackupPolicy:
    """How a key is to be backed up: copies, places, how often, kept how long.

    ``targets`` empty means every configured target.
    """

    copies: int = 2
    locations: int = 2
    interval_hours: int = 24
    retention_days: int = 30
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = [
            ("copies", self.copies, 1, 16),
            ("locations", self.locations, 1, 16),
            ("interval_hours", self.interval_hours, 1, 24 * 366),
            ("retention_days", self.retention_days, 1, 36600),
        ]
        for field, value, low, high in checks:
            if not isinstance(value, int) or not low <= value <= high:
                raise InvalidArgumentError(
                    f"{field} is an integer from {low} to {high}.",
                    code="INVALID_BACKUP_POLICY",
                    field=field,
                )
        if self.locations > self.copies:
            raise InvalidArgumentError(
                "A policy cannot ask for more locations than copies.",
                code="INVALID_BACKUP_POLICY",
                field="locations",
            )
        for name in self.targets:
            validate_target_name(name)

    def as_json(self) -> dict[str, Any]:
        return {
            "copies": self.copies,
            "locations": self.locations,
            "interval_hours": self.interval_hours,
            "retention_days": self.retention_days,
            "targets": list(self.targets),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackupPolicy:
        return cls(
            copies=data["copies"],
            locations=data["locations"],
            interval_hours=data["interval_hours"],
            retention_days=data["retention_days"],
            targets=tuple(data.get("targets", ())),
        )


def validate_target_name(name: object) -> str:
    if not isinstance(name, str) or not _TARGET_NAME.fullmatch(name):
        raise InvalidArgumentError(
            "A target name is 1 to 32 of a-z 0-9 _ -, starting with a letter or digit.",
            code="INVALID_TARGET",
            field="name",
        )
    return name


def validate_location(location: object) -> str:
    if not isinstance(location, str) or not _LOCATION.fullmatch(location):
        raise InvalidArgumentError(
            "A location label is 1 to 64 of A-Z a-z 0-9 . _ -.",
            code="INVALID_TARGET",
            field="location",
        )
    return location


@dataclass(frozen=True)
class BackupRecord:
    """One backup of a key as the ledger knows it."""

    backup_id: str
    taken_at: str
    digest: str
    size: int
    versions: tuple[dict[str, Any], ...]
    retain_until: str
    copies: tuple[dict[str, Any], ...]
    failures: tuple[dict[str, Any], ...] = ()
    verified_at: str | None = None
    verification: tuple[dict[str, Any], ...] = ()
    pruned: tuple[str, ...] = ()
    trimmed: tuple[int, ...] = ()
    prune_failures: tuple[dict[str, Any], ...] = ()

    @property
    def verified_ok(self) -> bool | None:
        """True or False after a verification, None before any."""
        if self.verified_at is None:
            return None
        return all(result["ok"] for result in self.verification)

    def whole_copies(self) -> list[dict[str, Any]]:
        """Copies written whole and not found missing or damaged since."""
        bad = {
            (result["target"], result["object"])
            for result in self.verification
            if not result["ok"]
        }
        return [
            copy
            for copy in self.copies
            if (copy["target"], copy["object"]) not in bad
            and copy["target"] not in self.pruned
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "taken_at": self.taken_at,
            "digest": self.digest,
            "size": self.size,
            "versions": list(self.versions),
            "retain_until": self.retain_until,
            "copies": list(self.copies),
            "failures": list(self.failures),
            "verified_at": self.verified_at,
            "verification": list(self.verification),
            "verified_ok": self.verified_ok,
            "pruned": list(self.pruned),
            "trimmed": list(self.trimmed),
            "prune_failures": list(self.prune_failures),
        }


class KeyBackups(Aggregate):
    """Every backup of one key, its backup policy, and a scheduler's claim on it."""

    class Opened(Aggregate.Created):
        """The key's backup record was opened, with its first backup event."""

        TOPIC = "keyledger.backup.Opened"
        key_name: str

    class Started(Aggregate.Event):
        """A backup was started; recorded first so two schedulers never both take it."""

        TOPIC = "keyledger.backup.Started"
        # 2 added ``owner`` (the claiming process, host/pid/start) and
        # ``took_over`` (the claim it replaced, if any).
        class_version = 2
        backup_id: str
        reason: str
        owner: str | None
        took_over: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["owner"] = None
            state["took_over"] = None

        def apply(self, aggregate: KeyBackups) -> None:
            aggregate.claim = (self.backup_id, format_time(self.timestamp))
            aggregate.claim_owner = self.owner

    class BackupTaken(Aggregate.Event):
        """A bundle was written whole to ``copies``; each was read back and checked."""

        TOPIC = "keyledger.backup.BackupTaken"
        # 2 added ``trimmed``: the versions trimmed from the key before the backup.
        class_version = 2
        backup_id: str
        digest: str
        size: int
        versions: list[dict[str, Any]]
        retain_until: str
        copies: list[dict[str, Any]]
        checkpoint_position: int
        trimmed: list[int]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["trimmed"] = []

        def apply(self, aggregate: KeyBackups) -> None:
            aggregate.records[self.backup_id] = BackupRecord(
                backup_id=self.backup_id,
                taken_at=format_time(self.timestamp),
                digest=self.digest,
                size=self.size,
                versions=tuple(self.versions),
                retain_until=self.retain_until,
                copies=tuple(self.copies),
                trimmed=tuple(self.trimmed),
            )
            aggregate.last_backup_id = self.backup_id
            aggregate.claim = None

    class CopyFailed(Aggregate.Event):
        """One copy of a backup could not be written whole; the others still count."""

        TOPIC = "keyledger.backup.CopyFailed"
        backup_id: str
        target: str
        location: str
        code: str
        message: str

        def apply(self, aggregate: KeyBackups) -> None:
            failure = {
                "target": self.target,
                "location": self.location,
                "code": self.code,
                "message": self.message,
            }
            record = aggregate.records.get(self.backup_id)
            if record is not None:
                aggregate.records[self.backup_id] = _replace(
                    record, failures=(*record.failures, failure)
                )

    class BackupFailed(Aggregate.Event):
        """No copy of a backup could be written; the backup does not exist."""

        TOPIC = "keyledger.backup.BackupFailed"
        backup_id: str
        failures: list[dict[str, Any]]

        def apply(self, aggregate: KeyBackups) -> None:
            aggregate.claim = None
            aggregate.last_failure = {
                "backup_id": self.backup_id,
                "at": format_time(self.timestamp),
                "failures": self.failures,
            }

    class BackupVerified(Aggregate.Event):
        """Every copy of a backup was read back and checked; ``results`` per copy."""

        TOPIC = "keyledger.backup.BackupVerified"
        backup_id: str
        results: list[dict[str, Any]]

        def apply(self, aggregate: KeyBackups) -> None:
            record = aggregate.records[self.backup_id]
            aggregate.records[self.backup_id] = _replace(
                record,
                verified_at=format_time(self.timestamp),
                verification=tuple(self.results),
            )
            if all(result["ok"] for result in self.results):
                aggregate.last_verified_ok_at = format_time(self.timestamp)

    class PolicyChanged(Aggregate.Event):
        """The key's own backup policy was set, or (None) dropped for the default."""

        TOPIC = "keyledger.backup.PolicyChanged"
        policy: dict[str, Any] | None

        def apply(self, aggregate: KeyBackups) -> None:
            aggregate.policy = self.policy

    class ObjectPruned(Aggregate.Event):
        """A copy past its retention date was set aside to be deleted, on command.

        Recorded before the target is asked to delete the object, so the ledger
        never counts a copy that may be gone: from here on the copy is not
        whole. A deletion the target then refuses is a ``PruneFailed``.
        """

        TOPIC = "keyledger.backup.ObjectPruned"
        backup_id: str
        target: str
        object: str

        def apply(self, aggregate: KeyBackups) -> None:
            record = aggregate.records[self.backup_id]
            pruned = record.pruned
            if self.target not in pruned:
                pruned = (*pruned, self.target)
            aggregate.records[self.backup_id] = _replace(
                record,
                pruned=pruned,
                prune_failures=tuple(
                    failure
                    for failure in record.prune_failures
                    if failure["target"] != self.target
                ),
            )

    class PruneFailed(Aggregate.Event):
        """The target did not delete a pruned copy; it may still hold the object.

        The copy stays pruned (never counted again); pruning it can be retried.
        """

        TOPIC = "keyledger.backup.PruneFailed"
        backup_id: str
        target: str
        object: str
        code: str
        message: str

        def apply(self, aggregate: KeyBackups) -> None:
            record = aggregate.records[self.backup_id]
            failure = {
                "target": self.target,
                "object": self.object,
                "code": self.code,
                "message": self.message,
                "at": format_time(self.timestamp),
            }
            aggregate.records[self.backup_id] = _replace(
                record, prune_failures=(*record.prune_failures, failure)
            )

    def __init__(self, key_name: str) -> None:
        self.key_name = key_name
        self.policy: dict[str, Any] | None = None
        self.records: dict[str, BackupRecord] = {}
        self.last_backup_id: str | None = None
        self.claim: tuple[str, str] | None = None
        self.claim_owner: str | None = None
        self.last_failure: dict[str, Any] | None = None
        self.last_verified_ok_at: str | None = None

    @classmethod
    def open(cls, key_name: str, *, now: datetime) -> KeyBackups:
        return cls._create(
            cls.Opened, id=backups_id_for(key_name), key_name=key_name, timestamp=now
        )

    # Commands --------------------------------------------------------------

    def start(
        self,
        backup_id: str,
        *,
        reason: str,
        now: datetime,
        interval: timedelta | None = None,
        owner: str | None = None,
        owner_gone: bool = False,
    ) -> None:
        """Claim a backup; refused while another claim is fresh.

        A claim is stale, and taken over, once ``CLAIM_TIMEOUT`` has passed
        since it was made, or at once when ``owner_gone`` (the caller found
        that the process which made it no longer runs). With ``interval`` (a
        scheduled backup) it is also refused unless the last backup is at
        least that old, so a backup another scheduler took a moment ago is not
        taken twice.
        """
        last = self.records.get(self.last_backup_id or "")
        if (
            interval is not None
            and last is not None
            and now < parse_time(last.taken_at) + interval
        ):
            raise KeyLifecycleError(
                f"The backup of {self.key_name!r} is not due.",
                code="BACKUP_NOT_DUE",
                key=self.key_name,
                last_backup_id=last.backup_id,
            )
        took_over = None
        if self.claim is not None:
            claimed_at = parse_time(self.claim[1])
            if now - claimed_at < CLAIM_TIMEOUT and not owner_gone:
                raise KeyLifecycleError(
                    f"A backup of {self.key_name!r} is already under way.",
                    code="BACKUP_IN_PROGRESS",
                    key=self.key_name,
                    backup_id=self.claim[0],
                )
            took_over = self.claim[0]
        self.trigger_event(
            self.Started,
            backup_id=backup_id,
            reason=reason,
            owner=owner,
            took_over=took_over,
            timestamp=now,
        )

    def record_taken(
        self,
        backup_id: str,
        *,
        digest: str,
        size: int,
        versions: list[dict[str, Any]],
        retain_until: str,
        copies: list[dict[str, Any]],
        failures: list[dict[str, Any]],
        checkpoint_position: int,
        now: datetime,
        trimmed: Sequence[int] = (),
    ) -> None:
        """Record the copies that are whole, and a ``CopyFailed`` for each other one.

        ``trimmed`` names the versions trimmed from the key before the backup,
        which the bundle therefore does not hold.
        """
        if not copies:
            self.trigger_event(
                self.BackupFailed, backup_id=backup_id, failures=failures, timestamp=now
            )
            return
        self.trigger_event(
            self.BackupTaken,
            backup_id=backup_id,
            digest=digest,
            size=size,
            versions=versions,
            retain_until=retain_until,
            copies=copies,
            checkpoint_position=checkpoint_position,
            trimmed=list(trimmed),
            timestamp=now,
        )
        for failure in failures:
            self.trigger_event(
                self.CopyFailed, backup_id=backup_id, timestamp=now, **failure
            )

    def record_verified(
        self, backup_id: str, results: list[dict[str, Any]], *, now: datetime
    ) -> None:
        self.record(backup_id)
        self.trigger_event(
            self.BackupVerified, backup_id=backup_id, results=results, timestamp=now
        )

    def change_policy(self, policy: BackupPolicy | None, *, now: datetime) -> None:
        self.trigger_event(
            self.PolicyChanged,
            policy=None if policy is None else policy.as_json(),
            timestamp=now,
        )

    def record_pruned(
        self, backup_id: str, target: str, object_name: str, *, now: datetime
    ) -> None:
        record = self.record(backup_id)
        retrying = any(f["target"] == target for f in record.prune_failures)
        if target in record.pruned and not retrying:
            raise KeyLifecycleError(
                f"The copy of {backup_id} on {target!r} was already pruned.",
                code="ALREADY_PRUNED",
                backup_id=backup_id,
                target=target,
            )
        self.trigger_event(
            self.ObjectPruned,
            backup_id=backup_id,
            target=target,
            object=object_name,
            timestamp=now,
        )

    def record_prune_failed(
        self,
        backup_id: str,
        target: str,
        object_name: str,
        *,
        code: str,
        message: str,
        now: datetime,
    ) -> None:
        self.record(backup_id)
        self.trigger_event(
            self.PruneFailed,
            backup_id=backup_id,
            target=target,
            object=object_name,
            code=code,
            message=message,
            timestamp=now,
        )

    # Queries ---------------------------------------------------------------

    def record(self, backup_id: str) -> BackupRecord:
        try:
            return self.records[backup_id]
        except KeyError:
            raise BackupNotFoundError(
                f"No backup {backup_id!r} of {self.key_name!r}.", backup_id=backup_id
            ) from None


class BackupSettings(Aggregate):
    """The deployment's backup targets and its default backup policy."""

    class Opened(Aggregate.Created):
        """The deployment's backup settings were first recorded."""

        TOPIC = "keyledger.backup.SettingsOpened"

    class TargetConfigured(Aggregate.Event):
        """A target was added or its settings replaced; never with secrets."""

        TOPIC = "keyledger.backup.TargetConfigured"
        name: str
        kind: str
        location: str
        options: dict[str, Any]

        def apply(self, aggregate: BackupSettings) -> None:
            aggregate.targets[self.name] = {
                "name": self.name,
                "kind": self.kind,
                "location": self.location,
                "options": self.options,
            }

    class DefaultPolicyChanged(Aggregate.Event):
        """The policy of every key without its own was changed."""

        TOPIC = "keyledger.backup.DefaultPolicyChanged"
        policy: dict[str, Any]

        def apply(self, aggregate: BackupSettings) -> None:
            aggregate.default_policy = self.policy

    def __init__(self) -> None:
        self.targets: dict[str, dict[str, Any]] = {}
        self.default_policy: dict[str, Any] = BackupPolicy().as_json()

    @classmethod
    def open(cls, *, now: datetime) -> BackupSettings:
        return cls._create(cls.Opened, id=SETTINGS_ID, timestamp=now)

    def configure_target(
        self,
        name: str,
        kind: str,
        location: str,
        options: dict[str, Any],
        *,
        now: datetime,
    ) -> bool:
        """Record the target; False (nothing recorded) if it is already so."""
        wanted = {"name": name, "kind": kind, "location": location, "options": options}
        if self.targets.get(name) == wanted:
            return False
        self.trigger_event(
            self.TargetConfigured,
            name=name,
            kind=kind,
            location=location,
            options=options,
            timestamp=now,
        )
        return True

    def change_default_policy(self, policy: BackupPolicy, *, now: datetime) -> None:
        self.trigger_event(
            self.DefaultPolicyChanged, policy=policy.as_json(), timestamp=now
        )


class SchedulerRuns(Aggregate):
    """Every run of the backup scheduler that had something to do."""

    class Opened(Aggregate.Created):
        """The backup scheduler ran for the first time."""

        TOPIC = "keyledger.backup.SchedulerOpened"

    class SchedulerRan(Aggregate.Event):
        """One scheduler run: the due backups it took, and those that failed."""

        TOPIC = "keyledger.backup.SchedulerRan"
        taken: list[dict[str, Any]]
        failed: list[dict[str, Any]]
        skipped: list[dict[str, Any]]
        verified: list[dict[str, Any]]

        def apply(self, aggregate: SchedulerRuns) -> None:
            aggregate.runs += 1

    def __init__(self) -> None:
        self.runs = 0

    @classmethod
    def open(cls, *, now: datetime) -> SchedulerRuns:
        return cls._create(cls.Opened, id=SCHEDULER_ID, timestamp=now)

    def record_run(
        self,
        *,
        taken: list[dict[str, Any]],
        failed: list[dict[str, Any]],
        skipped: list[dict[str, Any]],
        verified: list[dict[str, Any]],
        now: datetime,
    ) -> None:
        self.trigger_event(
            self.SchedulerRan,
            taken=taken,
            failed=failed,
            skipped=skipped,
            verified=verified,
            timestamp=now,
        )


class LedgerBackups(Aggregate):
    """Whole-ledger archives taken, and restores of a ledger from one."""

    class Opened(Aggregate.Created):
        """The first whole-ledger archive was taken (or the ledger restored)."""

        TOPIC = "keyledger.backup.LedgerBackupsOpened"

    class ArchiveTaken(Aggregate.Event):
        """The whole ledger up to ``head_position`` was written as one archive."""

        TOPIC = "keyledger.backup.ArchiveTaken"
        digest: str
        size: int
        head_position: int
        copies: list[dict[str, Any]]
        failures: list[dict[str, Any]]

        def apply(self, aggregate: LedgerBackups) -> None:
            aggregate.archives += 1

    class LedgerRestored(Aggregate.Event):
        """This ledger was rebuilt from an archive; every entry before came from it."""

        TOPIC = "keyledger.backup.LedgerRestored"
        digest: str
        head_position: int
        source_kid: str

        def apply(self, aggregate: LedgerBackups) -> None:
            aggregate.restores += 1

    def __init__(self) -> None:
        self.archives = 0
        self.restores = 0

    @classmethod
    def open(cls, *, now: datetime) -> LedgerBackups:
        return cls._create(cls.Opened, id=LEDGER_BACKUPS_ID, timestamp=now)


# Status --------------------------------------------------------------------


def key_status(
    record: BackupRecord | None,
    policy: BackupPolicy,
    *,
    created_at: str,
    now: datetime,
) -> tuple[Status, str]:
    """The one status of a key's backups, and when its next backup is due.

    Precedence: a failed verification, then too few copies or places
    (``at_risk``), then lateness (``overdue`` once a whole interval late,
    ``due`` from the due time), then ``unverified``, else ``ok``.
    """
    interval = timedelta(hours=policy.interval_hours)
    since = parse_time(record.taken_at if record is not None else created_at)
    if record is None:
        since -= interval  # never backed up: due from the key's creation
    due_at = since + interval
    lateness: Status | None = None
    if now >= due_at + interval:
        lateness = "overdue"
    elif now >= due_at:
        lateness = "due"
    if record is None:
        return lateness or "due", format_time(due_at)
    if record.verified_ok is False:
        return "verification_failed", format_time(due_at)
    whole = record.whole_copies()
    places = {copy["location"] for copy in whole}
    if len(whole) < policy.copies or len(places) < policy.locations:
        return "at_risk", format_time(due_at)
    if lateness is not None:
        return lateness, format_time(due_at)
    if record.verified_ok is None:
        return "unverified", format_time(due_at)
    return "ok", format_time(due_at)


def _replace(record: BackupRecord, **changes: Any) -> BackupRecord:
    from dataclasses import replace

    return replace(record, **changes)


for _aggregate in (KeyBackups, BackupSettings, SchedulerRuns, LedgerBackups):
    for _item in vars(_aggregate).values():
        if isinstance(_item, type) and isinstance(getattr(_item, "TOPIC", None), str):
            get_topic(_item)
