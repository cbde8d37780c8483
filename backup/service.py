"""The backup service: takes, verifies, prunes and restores backups, all on the ledger.

Every action is recorded before it is reported. A backup is first claimed
(``Started``, with the record's expected version, so two schedulers never both
take it), then its bundle is written to each target, read back and checked, and
only then are the whole copies recorded (``BackupTaken``), each failed copy as a
``CopyFailed``. The ledger never claims a copy that is not whole: a crash
between the claim and the record leaves only the claim.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, PersistenceError

from backup.bundle import BundleError, build_bundle, digest_of, open_bundle
from backup.key import BackupKey
from backup.ledger_archive import (
    Archive,
    OpenedArchive,
    build_archive,
    open_archive,
    restore_statements,
)
from backup.targets import (
    Target,
    TargetError,
    build_target,
    check_dir_options,
    object_name,
)
from domain.backups import (
    LEDGER_BACKUPS_ID,
    SCHEDULER_ID,
    SETTINGS_ID,
    BackupPolicy,
    BackupRecord,
    BackupSettings,
    KeyBackups,
    LedgerBackups,
    SchedulerRuns,
    backups_id_for,
    validate_location,
    validate_target_name,
)
from domain.clock import format_time, parse_time
from domain.errors import (
    BackupNotFoundError,
    BackupRefusedError,
    InvalidArgumentError,
    KeyExistsError,
    KeyledgerError,
    KeyLifecycleError,
    KeyNotFoundError,
)
from domain.keys import ManagedKey, key_id_for, validate_key_name
from ledger.service import (
    CommandContext,
    CommandResult,
    KeyService,
    _unavailable,
)
from ledger.store import SYSTEM_ACTOR, LedgerWrite, Receipt, Statement
from projections import backup_status

logger = logging.getLogger(__name__)

_BUNDLE_REFUSALS = {
    "FROM_OTHER_LEDGER": (
        "BUNDLE_FROM_OTHER_LEDGER",
        "The bundle is signed by a ledger whose public key was not given.",
    ),
    "OTHER_BACKUP_KEY": (
        "BUNDLE_OTHER_BACKUP_KEY",
        "The bundle was wrapped under another backup key.",
    ),
}


@dataclass(frozen=True)
class BackupOutcome:
    """What taking a backup did: the record (None if no copy was whole)."""

    key_name: str
    backup_id: str
    record: BackupRecord | None
    failures: list[dict[str, Any]]
    receipts: list[Receipt]

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key_name,
            "backup_id": self.backup_id,
            "backup": None if self.record is None else self.record.as_json(),
            "failures": self.failures,
            "receipts": [receipt.as_json() for receipt in self.receipts],
        }


@dataclass(frozen=True)
class PruneOutcome:
    """What pruning a copy did: ``failure`` is None when the target deleted it."""

    backup_id: str
    failure: dict[str, Any] | None
    receipts: list[Receipt]


class BackupService:
    """Backups of keys to the configured targets, recorded on the keys' ledger."""

    def __init__(
        self,
        keys: KeyService,
        backup_key: BackupKey,
        *,
        target_factory: Callable[[dict[str, Any]], Target] = build_target,
    ) -> None:
        self.keys = keys
        self.backup_key = backup_key
        self.target_factory = target_factory
        self._built: dict[str, tuple[dict[str, Any], Target]] = {}

    # Settings ----------------------------------------------------------------

    def settings(self) -> BackupSettings:
        found = self._get(SETTINGS_ID)
        if found is None:
            return BackupSettings.open(now=self.keys.clock.now())
        assert isinstance(found, BackupSettings)
        return found

    def targets(self) -> dict[str, dict[str, Any]]:
        return dict(self.settings().targets)

    def default_policy(self) -> BackupPolicy:
        return BackupPolicy.from_json(self.settings().default_policy)

    def configure_target(
        self,
        context: CommandContext,
        *,
        name: str,
        kind: str,
        location: str,
        options: dict[str, Any],
    ) -> list[Receipt]:
        """Record a target's configuration (nothing if it is already so).

        The target is built first, so a configuration that cannot work (an S3
        bucket without Object Lock) is refused and nothing is recorded. A new
        or changed ``dir`` target's options are checked first
        (``check_dir_options``: an absolute path to an existing directory, a
        safe prefix); one already recorded as it is is left alone, so a
        settings file applied again at startup never fails on a target that
        is away for a while.

        Raises:
            InvalidArgumentError: the name, location or options are wrong (422).
            BackupRefusedError: the target refuses (``TARGET_<code>``, 409).
        """
        validate_target_name(name)
        validate_location(location)
        config = {"name": name, "kind": kind, "location": location, "options": options}
        if kind == "dir" and self.targets().get(name) != config:
            check_dir_options(name, options)
        try:
            self.target_factory(config)
        except TargetError as error:
            raise BackupRefusedError(
                error.message, code=f"TARGET_{error.code}", target=name
            ) from None
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidArgumentError(
                f"Target {name!r} is not configured right: {error}",
                code="INVALID_TARGET",
                target=name,
            ) from None
        settings = self.settings()
        if not settings.configure_target(
            name, kind, location, options, now=self.keys.clock.now()
        ):
            return []
        return self._record(settings, context, "backup-settings", [])

    def apply_settings_file(self, path: Path) -> list[Receipt]:
        """Record the targets and default policy of a settings file, if they differ.

        The file is ``{"targets": [{"name", "kind", "location", "options"}],
        "default_policy": {...}}`` (both optional). Applying the same file again
        records nothing.

        Raises:
            InvalidArgumentError: the file is not of that shape (``INVALID_SETTINGS``).
            OSError: the file cannot be read.
        """
        context = CommandContext(SYSTEM_ACTOR, f"settings-file-{secrets.token_hex(8)}")
        try:
            document = json.loads(path.read_text("utf-8"))
            targets = list(document.get("targets", []))
            policy = document.get("default_policy")
            receipts = []
            for item in targets:
                receipts += self.configure_target(
                    context,
                    name=item["name"],
                    kind=item["kind"],
                    location=item["location"],
                    options=dict(item["options"]),
                )
            if policy is not None:
                wanted = BackupPolicy.from_json(
                    {**BackupPolicy().as_json(), **dict(policy)}
                )
                if wanted != self.default_policy():
                    receipts += self.change_default_policy(context, wanted)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise InvalidArgumentError(
                f"{path} is not a backup settings file: {error}",
                code="INVALID_SETTINGS",
            ) from None
        return receipts

    def change_default_policy(
        self, context: CommandContext, policy: BackupPolicy
    ) -> list[Receipt]:
        """Record a new default policy.

        Raises:
            InvalidArgumentError: the policy names a target not configured
                (``UNKNOWN_TARGET``); nothing is recorded.
        """
        self._require_targets_known(policy.targets)
        settings = self.settings()
        settings.change_default_policy(policy, now=self.keys.clock.now())
        return self._record(settings, context, "backup-settings", [])

    def change_key_policy(
        self, context: CommandContext, key_name: str, policy: BackupPolicy | None
    ) -> list[Receipt]:
        """Give a key its own policy, or (None) return it to the default.

        Raises:
            KeyNotFoundError: no key has that name.
            InvalidArgumentError: the policy names a target not configured
                (``UNKNOWN_TARGET``); nothing is recorded.
        """
        self.keys._load(key_name)
        if policy is not None:
            self._require_targets_known(policy.targets)
        backups = self._key_backups(key_name)
        backups.change_policy(policy, now=self.keys.clock.now())
        return self._save_backups(backups, context)

    def policy_for(self, key_name: str) -> BackupPolicy:
        return self._backup_policy(key_name)[0]

    def _backup_policy(self, key_name: str) -> tuple[BackupPolicy, str]:
        """The key's backup policy and whether it is the key's own or the default."""
        found = self._get(backups_id_for(key_name))
        if isinstance(found, KeyBackups) and found.policy is not None:
            return BackupPolicy.from_json(found.policy), "key"
        return self.default_policy(), "default"

    def _policies(self, key_name: str) -> dict[str, Any]:
        """The key's policies as a bundle holds them: backup and dual control."""
        from ledger.dual_control import DualControl

        backup, source = self._backup_policy(key_name)
        dual = DualControl(self.keys.app, self.keys.clock).policy(key_name)
        return {
            "backup": {**backup.as_json(), "source": source},
            "dual_control": None
            if dual is None
            else {"actions": list(dual.actions), "ttl_seconds": dual.ttl_seconds},
        }

    # Backups ---------------------------------------------------------------

    def take_backup(
        self,
        context: CommandContext,
        key_name: str,
        *,
        target_names: list[str] | None = None,
        retain_until: datetime | None = None,
        reason: str = "manual",
    ) -> BackupOutcome:
        """Back the key up now to its policy's targets (or the ones named).

        Raises:
            KeyNotFoundError: no key has that name.
            InvalidArgumentError: an unknown target, or a retention date not in
                the future (``RETENTION_IN_PAST``).
            BackupRefusedError: no target is configured, or another backup of
                the key is under way (``BACKUP_IN_PROGRESS``).
        """
        validate_key_name(key_name)
        self.keys._load(key_name)
        now = self.keys.clock.now()
        policy = self.policy_for(key_name)
        targets = self._chosen_targets(target_names or list(policy.targets))
        until = retain_until or now + timedelta(days=policy.retention_days)
        if until <= now:
            raise InvalidArgumentError(
                "The retention date must be in the future.",
                code="RETENTION_IN_PAST",
                retain_until=format_time(until),
            )
        backup_id = "bkp_" + secrets.token_hex(12)

        # 1. Claim it: only one claimant of a due backup gets past this.
        backups = self._key_backups(key_name)
        backups.start(
            backup_id,
            reason=reason,
            now=now,
            interval=timedelta(hours=policy.interval_hours)
            if reason == "scheduled"
            else None,
            owner=claim_owner(),
            owner_gone=backups.claim is not None and owner_gone(backups.claim_owner),
        )
        receipts = self._save_backups(backups, context)

        # 2. Build and write every copy; each is read back before it counts.
        try:
            bundle = build_bundle(
                self.keys,
                key_name,
                backup_key=self.backup_key,
                backup_id=backup_id,
                policy=self._policies(key_name),
            )
        except KeyledgerError as error:
            # Release the claim with a recorded failure, then report the cause.
            failure = {"target": "-", "code": error.code, "message": error.message}
            backups.record_taken(
                backup_id,
                digest="",
                size=0,
                versions=[],
                retain_until=format_time(until),
                copies=[],
                failures=[failure],
                checkpoint_position=0,
                now=self.keys.clock.now(),
            )
            with contextlib.suppress(KeyledgerError):
                self._save_backups(backups, context)
            raise
        name = object_name(bundle.digest)
        copies, failures = [], []
        for config in targets:
            try:
                target = self._build(config)
                target.put(name, bundle.data, retain_until=until)
                if digest_of(target.get(name)) != bundle.digest:
                    raise TargetError(
                        "READ_BACK_MISMATCH",
                        f"Target {target.name!r} returned other bytes than written.",
                    )
            except TargetError as error:
                logger.warning(
                    "backup_copy_failed",
                    extra={
                        "key": key_name,
                        "target": config["name"],
                        "code": error.code,
                    },
                )
                failures.append(
                    {
                        "target": config["name"],
                        "location": config["location"],
                        "code": error.code,
                        "message": error.message,
                    }
                )
                continue
            copies.append(
                {
                    "target": config["name"],
                    "location": config["location"],
                    "object": name,
                }
            )

        # 3. Record what is whole, and every failure.
        backups.record_taken(
            backup_id,
            digest=bundle.digest,
            size=bundle.size,
            versions=bundle.versions,
            retain_until=format_time(until),
            copies=copies,
            failures=failures,
            checkpoint_position=bundle.checkpoint_position,
            now=self.keys.clock.now(),
            trimmed=bundle.trimmed,
        )
        receipts += self._save_backups(backups, context)
        return BackupOutcome(
            key_name, backup_id, backups.records.get(backup_id), failures, receipts
        )

    def verify_backup(
        self, context: CommandContext, backup_id: str
    ) -> tuple[BackupRecord, list[Receipt]]:
        """Read every copy back and check it; record the result per copy."""
        key_name, record = self._find(backup_id)
        key = self._current_key(key_name)
        results = []
        for copy in record.copies:
            if copy["target"] in record.pruned:
                continue
            code = self._check_copy(copy, record, key)
            results.append({**copy, "ok": code is None, "code": code or "OK"})
        backups = self._key_backups(key_name)
        backups.record_verified(backup_id, results, now=self.keys.clock.now())
        receipts = self._save_backups(backups, context)
        return backups.records[backup_id], receipts

    def prune(
        self, context: CommandContext, backup_id: str, target_name: str
    ) -> PruneOutcome:
        """Delete a copy past its retention date, recording the prune first.

        The retention date is checked against the ledger's record (a refusal,
        ``RETAINED``, records nothing). Then ``ObjectPruned`` is recorded, so
        the ledger stops counting the copy before the target is asked to
        delete it: if that recording fails nothing is deleted, and if the
        deletion then fails (the target's own retention date, a read-only
        folder, an unreachable bucket) the failure is recorded as
        ``PruneFailed`` and the copy stays uncounted. The ledger may say a copy
        is gone that a target still holds, never the other way round.
        """
        key_name, record = self._find(backup_id)
        copy = next((c for c in record.copies if c["target"] == target_name), None)
        if copy is None:
            raise BackupNotFoundError(
                f"Backup {backup_id} has no copy on {target_name!r}.",
                backup_id=backup_id,
                target=target_name,
            )
        now = self.keys.clock.now()
        if format_time(now) < record.retain_until:
            raise BackupRefusedError(
                f"Backup {backup_id} is retained until {record.retain_until}.",
                code="RETAINED",
                backup_id=backup_id,
                retain_until=record.retain_until,
            )
        try:
            target = self._target(target_name)
        except TargetError as error:
            raise BackupRefusedError(
                error.message, code=f"TARGET_{error.code}", backup_id=backup_id
            ) from None

        # 1. Record the prune: from now on the copy does not count.
        backups = self._key_backups(key_name)
        backups.record_pruned(backup_id, target_name, copy["object"], now=now)
        receipts = self._save_backups(backups, context)

        # 2. Delete; a refusal is recorded, and the copy stays uncounted.
        try:
            target.delete(copy["object"], now=now)
        except TargetError as error:
            logger.warning(
                "prune_failed",
                extra={
                    "backup_id": backup_id,
                    "target": target_name,
                    "code": error.code,
                },
            )
            failure = {
                "target": target_name,
                "code": error.code,
                "message": error.message,
            }
            backups.record_prune_failed(
                backup_id,
                target_name,
                copy["object"],
                code=error.code,
                message=error.message,
                now=self.keys.clock.now(),
            )
            try:
                receipts += self._save_backups(backups, context)
            except KeyledgerError:
                logger.warning(
                    "prune_failure_unrecorded", extra={"backup_id": backup_id}
                )
            return PruneOutcome(backup_id, failure, receipts)
        return PruneOutcome(backup_id, None, receipts)

    # Restore ---------------------------------------------------------------

    def read_bundle(self, backup_id: str) -> bytes:
        """The bytes of a backup from the first copy that is whole."""
        _, record = self._find(backup_id)
        for copy in record.copies:
            if copy["target"] in record.pruned:
                continue
            try:
                data = self._target(copy["target"]).get(copy["object"])
            except (TargetError, BackupRefusedError):
                continue
            if digest_of(data) == record.digest:
                return data
        raise BackupRefusedError(
            f"No copy of backup {backup_id} could be read whole.",
            code="NO_WHOLE_COPY",
            backup_id=backup_id,
        )

    def describe_bundle(
        self,
        data: bytes,
        *,
        source_public_keys: dict[str, Ed25519PublicKey] | None = None,
        expected_key: str | None = None,
    ) -> dict[str, str]:
        """What a bundle holds, once it verifies: its key, backup id and digest.

        Records nothing. A restore that must wait for approval names the bundle
        by these, never by its bytes (they hold wrapped material).

        Raises:
            BackupRefusedError: the bundle failed verification.
            InvalidArgumentError: it is not a backup of ``expected_key``.
        """
        opened = self._open(data, source_public_keys)
        source_name = opened.key["name"]
        _require_bundle_of(source_name, expected_key)
        return {
            "key": source_name,
            "backup_id": opened.body["backup_id"],
            "digest": digest_of(data),
        }

    def restore(
        self,
        context: CommandContext,
        data: bytes,
        *,
        into: str | None = None,
        source_public_keys: dict[str, Ed25519PublicKey] | None = None,
        expected_key: str | None = None,
    ) -> CommandResult:
        """Restore a bundle into its own key or as a new key called ``into``.

        A restore never leaves a version in a weaker state than this ledger
        records for it now. In place, the key's compromised and
        destroy-scheduled versions keep their state (only ``enabled`` and
        ``disabled`` come from the bundle). As a new key, the source key's
        versions are checked (when this ledger holds the source key: the
        bundle is its own, or a version's material is the same), and the
        restore is refused when the bundle would bring back a compromised
        version as uncompromised (``RESTORE_WOULD_REVIVE_COMPROMISED``), a
        version scheduled for destruction as not scheduled, or due later
        (``RESTORE_WOULD_CANCEL_DESTRUCTION``), or a destroyed or trimmed
        version at all (``RESTORE_WOULD_UNDESTROY``). To copy such a key,
        restore a backup taken after the change: it carries the states.

        Nothing is recorded when the bundle fails verification, when the
        restore would roll back a key with newer versions, or when it would
        weaken a version's state as above (all 409).

        Limitation: the source key is read before the restore is written, so
        a compromise recorded on it between the two is not seen by this check.
        """
        if into is not None:
            validate_key_name(into)
        opened = self._open(data, source_public_keys)
        source_name = opened.key["name"]
        _require_bundle_of(source_name, expected_key)
        name = into or source_name
        source = {
            "backup_id": opened.body["backup_id"],
            "digest": digest_of(data),
            "key": source_name,
            "ledger_kid": opened.body["ledger_kid"],
            "taken_at": opened.body["taken_at"],
        }
        versions = [
            {**item, "material": item["wrapped"] is not None}
            for item in opened.versions
        ]
        existing = self._current_key(name)
        now = self.keys.clock.now()
        if name != source_name:
            origin = self._current_key(source_name)
            if origin is not None and (
                opened.body["ledger_kid"] == self.keys.signer.kid
                or _shares_material(origin, versions)
            ):
                require_no_weaker_state(origin, versions)
        if existing is None:
            key = ManagedKey.restore(
                name=name,
                settings=opened.key,
                versions=versions,
                source=source,
                now=now,
            )
            material_versions = sorted(opened.materials)
        elif name != source_name:
            raise KeyExistsError(f"A key named {name!r} already exists.", key=name)
        else:
            key = self.keys._load_for_command(name, context)
            material_versions = key.restore_in_place(
                primary=opened.key["primary"], versions=versions, source=source, now=now
            )
        key_id = str(key_id_for(name))
        statements: list[Statement] = [
            ("DELETE FROM key_material WHERE key_id = %s AND version = %s", (key_id, n))
            for n in material_versions
        ]
        statements += [
            self.keys._put_material(key_id, n, opened.materials[n])
            for n in material_versions
        ]
        return self.keys._save(
            key, context, statements, notes={"restored_from": source}
        )

    # Scheduler -------------------------------------------------------------

    def run_scheduler(
        self, *, limit: int = 100, record_idle: bool = True
    ) -> dict[str, Any]:
        """Take every backup that is due, and only those; verify; record the run.

        Safe to run in several processes at once: the claim on each key's
        backup record lets exactly one of them take a due backup. Each backup
        taken, and the last backup of each key still ``unverified``, is then
        verified (two racing schedulers may both verify the same one; each
        verification is recorded). A run that did nothing is recorded only
        with ``record_idle``; with no target configured nothing is due.
        """
        report: dict[str, Any] = {
            "taken": [],
            "failed": [],
            "skipped": [],
            "verified": [],
        }
        if not self.targets():
            if record_idle:
                self._record_run(report)
            return report
        now = self.keys.clock.now()
        due, _ = backup_status.status_page(
            self.keys.ledger,
            default_policy=self.default_policy(),
            now=now,
            after=None,
            limit=10_000,
            status=None,
        )
        names = [item["key"] for item in due if item["status"] in ("due", "overdue")][
            :limit
        ]
        unverified = [
            item["last_backup"]["backup_id"]
            for item in due
            if item["status"] == "unverified"
        ][:limit]
        taken, failed, skipped = report["taken"], report["failed"], report["skipped"]
        for name in names:
            context = CommandContext(
                SYSTEM_ACTOR, f"backup-scheduler-{secrets.token_hex(8)}"
            )
            try:
                outcome = self.take_backup(context, name, reason="scheduled")
            except KeyledgerError as refusal:
                skipped.append({"key": name, "code": refusal.code})
                continue
            if outcome.record is None:
                failed.append({"key": name, "backup_id": outcome.backup_id})
            else:
                taken.append({"key": name, "backup_id": outcome.backup_id})
        for backup_id in [*unverified, *(item["backup_id"] for item in taken)]:
            context = CommandContext(
                SYSTEM_ACTOR, f"backup-scheduler-{secrets.token_hex(8)}"
            )
            try:
                record, _ = self.verify_backup(context, backup_id)
            except KeyledgerError as refusal:
                skipped.append({"backup_id": backup_id, "code": refusal.code})
                continue
            report["verified"].append(
                {"backup_id": backup_id, "ok": bool(record.verified_ok)}
            )
        if taken or failed or skipped or report["verified"] or record_idle:
            self._record_run(report)
        return report

    # Whole ledger ------------------------------------------------------------

    def backup_ledger(
        self, context: CommandContext, *, target_names: list[str] | None = None
    ) -> tuple[Archive, list[dict[str, Any]], list[dict[str, Any]], list[Receipt]]:
        """Write the whole ledger as one archive to the targets; record it.

        Returns the archive, the whole copies, the failed ones and the receipts.
        """
        archive = build_archive(self.keys, backup_key=self.backup_key)
        until = self.keys.clock.now() + timedelta(
            days=self.default_policy().retention_days
        )
        name = "ledger-" + object_name(archive.digest)
        copies, failures = [], []
        for config in self._chosen_targets(target_names or []):
            try:
                target = self._build(config)
                target.put(name, archive.data, retain_until=until)
                if digest_of(target.get(name)) != archive.digest:
                    raise TargetError("READ_BACK_MISMATCH", "Read back other bytes.")
            except TargetError as error:
                failures.append(
                    {
                        "target": config["name"],
                        "code": error.code,
                        "message": error.message,
                    }
                )
                continue
            copies.append(
                {
                    "target": config["name"],
                    "location": config["location"],
                    "object": name,
                }
            )
        found = self._get(LEDGER_BACKUPS_ID)
        record = (
            found
            if isinstance(found, LedgerBackups)
            else LedgerBackups.open(now=self.keys.clock.now())
        )
        record.trigger_event(
            LedgerBackups.ArchiveTaken,
            digest=archive.digest,
            size=len(archive.data),
            head_position=archive.head_position,
            copies=copies,
            failures=failures,
            timestamp=self.keys.clock.now(),
        )
        receipts = self._record(record, context, "ledger-backups", [])
        return archive, copies, failures, receipts

    def restore_ledger(
        self,
        context: CommandContext,
        data: bytes,
        *,
        source_public_keys: dict[str, Ed25519PublicKey] | None = None,
        opened: OpenedArchive | None = None,
    ) -> list[Receipt]:
        """Rebuild this (empty) ledger from an archive, then record that it was.

        ``opened`` is ``data`` already checked by ``verify_ledger_archive`` (a
        tool that checks before it creates anything); without it the archive
        is checked here, against this ledger's key and ``source_public_keys``.

        Raises:
            BackupRefusedError: ``LEDGER_NOT_EMPTY``, or the archive failed a
                check (``ARCHIVE_INVALID`` with the reason); nothing is written.
        """
        if opened is None:
            public_keys = {self.keys.signer.kid: self.keys.signer.public_key}
            public_keys.update(source_public_keys or {})
            opened = verify_ledger_archive(
                data, public_keys=public_keys, backup_key=self.backup_key
            )
        statements = restore_statements(self.keys, opened)
        with self.keys.ledger.exclusive() as transaction:
            if transaction.query(
                f"SELECT 1 FROM {self.keys.ledger.events_table_name} LIMIT 1"
            ):
                raise BackupRefusedError(
                    "A ledger is restored only into an empty one.",
                    code="LEDGER_NOT_EMPTY",
                )
            transaction.execute(statements)
        from projections.rebuild import rebuild

        rebuild(self.keys.app)
        found = self._get(LEDGER_BACKUPS_ID)
        record = (
            found
            if isinstance(found, LedgerBackups)
            else LedgerBackups.open(now=self.keys.clock.now())
        )
        record.trigger_event(
            LedgerBackups.LedgerRestored,
            digest=digest_of(data),
            head_position=opened.body["head"]["position"],
            source_kid=opened.body["ledger_kid"],
            timestamp=self.keys.clock.now(),
        )
        return self._record(record, context, "ledger-backups", [])

    # Queries ---------------------------------------------------------------

    def status(
        self, *, after: str | None, limit: int, status: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        return backup_status.status_page(
            self.keys.ledger,
            default_policy=self.default_policy(),
            now=self.keys.clock.now(),
            after=after,
            limit=limit,
            status=status,
        )

    def key_backups(
        self, key_name: str, *, after: str | None, limit: int
    ) -> dict[str, Any]:
        """The key's status and one page of its backups, newest first."""
        self.keys._load(key_name)
        [status], _ = backup_status.status_page(
            self.keys.ledger,
            default_policy=self.default_policy(),
            now=self.keys.clock.now(),
            after=None,
            limit=1,
            status=None,
            key=key_name,
        )
        records, cursor = backup_status.key_backups(
            self.keys.ledger, key_name, after=after, limit=limit
        )
        return {
            **status,
            "backups": [record.as_json() for record in records],
            "next_cursor": cursor,
        }

    def get_backup(self, backup_id: str) -> dict[str, Any]:
        key_name, record = self._find(backup_id)
        return {"key": key_name, **record.as_json()}

    # Internals -------------------------------------------------------------

    def _open(
        self, data: bytes, source_public_keys: dict[str, Ed25519PublicKey] | None
    ) -> Any:
        public_keys = {self.keys.signer.kid: self.keys.signer.public_key}
        public_keys.update(source_public_keys or {})
        try:
            return open_bundle(
                data, public_keys=public_keys, backup_key=self.backup_key
            )
        except BundleError as error:
            code, message = _BUNDLE_REFUSALS.get(
                error.reason,
                (
                    "BUNDLE_INVALID",
                    "The bundle failed verification; nothing was restored.",
                ),
            )
            logger.warning("bundle_refused", extra={"reason": error.reason})
            raise BackupRefusedError(message, code=code) from None

    def _check_copy(
        self, copy: dict[str, Any], record: BackupRecord, key: ManagedKey | None
    ) -> str | None:
        """None if the copy is whole and agrees with the ledger, else a reason code."""
        try:
            data = self._target(copy["target"]).get(copy["object"])
        except TargetError as error:
            return error.code
        except BackupRefusedError:
            return "TARGET_NOT_CONFIGURED"
        if digest_of(data) != record.digest:
            return "DIGEST_MISMATCH"
        try:
            opened = self._open(data, None)
        except BackupRefusedError as refusal:
            return refusal.code
        if key is not None:
            for item in opened.versions:
                kept = key.versions.get(int(item["version"]))
                if kept is not None and kept.fingerprint != item["fingerprint"]:
                    return "FINGERPRINT_MISMATCH"
        return None

    def _require_targets_known(self, names: Iterable[str]) -> None:
        configured = self.targets()
        for name in names:
            if name not in configured:
                raise InvalidArgumentError(
                    f"No backup target is called {name!r}.",
                    code="UNKNOWN_TARGET",
                    target=name,
                )

    def _chosen_targets(self, names: list[str]) -> list[dict[str, Any]]:
        configured = self.targets()
        if not configured:
            raise BackupRefusedError(
                "No backup target is configured.", code="NO_BACKUP_TARGETS"
            )
        self._require_targets_known(names)
        chosen = names or sorted(configured)
        return [configured[name] for name in chosen]

    def _target(self, name: str) -> Target:
        config = self.targets().get(name)
        if config is None:
            raise BackupRefusedError(
                f"No backup target is called {name!r}.",
                code="UNKNOWN_TARGET",
                target=name,
            )
        return self._build(config)

    def _build(self, config: dict[str, Any]) -> Target:
        """The target for ``config``, built once per configuration."""
        built = self._built.get(config["name"])
        if built is None or built[0] != config:
            built = (config, self.target_factory(config))
            self._built[config["name"]] = built
        return built[1]

    def _find(self, backup_id: str) -> tuple[str, BackupRecord]:
        found = backup_status.get_record(self.keys.ledger, backup_id)
        if found is None:
            raise BackupNotFoundError(f"No backup {backup_id!r}.", backup_id=backup_id)
        return found

    def _current_key(self, name: str) -> ManagedKey | None:
        try:
            return self.keys._load(name)
        except KeyNotFoundError:
            return None

    def _get(self, aggregate_id: Any) -> Aggregate | None:
        try:
            found: Aggregate = self.keys.app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        except PersistenceError as error:
            raise _unavailable(error) from error
        return found

    def _key_backups(self, key_name: str) -> KeyBackups:
        found = self._get(backups_id_for(key_name))
        if found is None:
            return KeyBackups.open(key_name, now=self.keys.clock.now())
        assert isinstance(found, KeyBackups)
        return found

    def _save_backups(
        self, backups: KeyBackups, context: CommandContext
    ) -> list[Receipt]:
        touched = backup_status.touched_backups(list(backups.pending_events))

        def callback(receipts: list[Receipt]) -> list[Statement]:
            return backup_status.view_statements(
                backups, touched, receipts[-1].position
            )

        return self._record(
            backups, context, f"backups:{backups.key_name}", [], after=[callback]
        )

    def _record(
        self,
        aggregate: Aggregate,
        context: CommandContext,
        subject: str,
        statements: list[Statement],
        *,
        after: list[Callable[[list[Receipt]], list[Statement]]] | None = None,
    ) -> list[Receipt]:
        write = LedgerWrite(
            actor=context.actor,
            request_id=context.request_id,
            subjects={str(aggregate.id): subject},
            statements=statements,
            after_sealed=list(after or []),
        )
        try:
            self.keys.app.save(aggregate, ledger=write)
        except IntegrityError:
            raise BackupRefusedError(
                "Another backup command on the same record was recorded first.",
                code="BACKUP_IN_PROGRESS",
            ) from None
        except PersistenceError as error:
            raise _unavailable(error) from error
        return write.receipts

    def _record_run(self, report: dict[str, Any]) -> None:
        context = CommandContext(
            SYSTEM_ACTOR, f"backup-scheduler-{secrets.token_hex(8)}"
        )
        for _ in range(3):
            found = self._get(SCHEDULER_ID)
            runs = (
                found
                if isinstance(found, SchedulerRuns)
                else SchedulerRuns.open(now=self.keys.clock.now())
            )
            runs.record_run(**report, now=self.keys.clock.now())
            try:
                self._record(runs, context, "backup-scheduler", [])
                return
            except BackupRefusedError:
                continue  # another scheduler recorded its run first: reload
        logger.warning("scheduler_run_unrecorded")


def _process_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None.

    Field 0 is the state (``Z``: ended, not yet reaped); field 19 the start
    time, which tells a process from a later one that reused its pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text("ascii")
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields after it do not.
    return stat.rpartition(")")[2].split()


def _process_start(pid: int) -> str | None:
    fields = _process_stat(pid)
    return None if fields is None else fields[19]


def claim_owner() -> str:
    """This process as a claim names it: ``host/pid/start``."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{pid}/{_process_start(pid) or '-'}"


def owner_gone(owner: str | None) -> bool:
    """Whether the process that made a claim is known to no longer run.

    Only a process on this host can be judged; a claim by another host, or
    one recorded without an owner, waits for ``CLAIM_TIMEOUT``. Taking over a
    claim wrongly (two hosts of one name) cannot make the ledger claim a copy
    that is not whole: the first claimant's record then fails on the stream's
    version, and its copies stay unrecorded.
    """
    if owner is None:
        return False
    host, _, rest = owner.partition("/")
    pid_text, _, start = rest.partition("/")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return start not in ("-", _process_start(pid))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it runs, as another user
    fields = _process_stat(pid)
    if fields is None:
        return False
    if fields[0] == "Z":
        return True  # it ended; only its exit status is left
    return start != "-" and fields[19] != start


def verify_ledger_archive(
    data: bytes,
    *,
    public_keys: dict[str, Ed25519PublicKey],
    backup_key: BackupKey,
) -> OpenedArchive:
    """Check a whole-ledger archive without any ledger: signature, chain, blobs.

    Raises:
        BackupRefusedError: ``ARCHIVE_INVALID`` with the reason (for example
            ``FROM_OTHER_LEDGER``: no key in ``public_keys`` signed it).
    """
    try:
        return open_archive(data, public_keys=public_keys, backup_key=backup_key)
    except BundleError as error:
        raise BackupRefusedError(
            "The archive failed verification; nothing was restored.",
            code="ARCHIVE_INVALID",
            reason=error.reason,
        ) from None


def _shares_material(origin: ManagedKey, versions: list[dict[str, Any]]) -> bool:
    """Whether a bundle holds a version of ``origin``: same number, same material."""
    for item in versions:
        record = origin.versions.get(int(item["version"]))
        if record is not None and record.fingerprint == item["fingerprint"]:
            return True
    return False


def require_no_weaker_state(origin: ManagedKey, versions: list[dict[str, Any]]) -> None:
    """Refuse a copy of ``origin`` that would weaken a state the ledger records.

    ``versions`` are a bundle's records with a ``material`` flag. Compromise,
    destruction and a scheduled destruction are one-way for a copy: the copy
    must carry each as the ledger records it now. ``enabled`` and
    ``disabled`` (and the key's use floors) are the operator's reversible
    choices, so the bundle's are kept.

    Raises:
        KeyLifecycleError: ``RESTORE_WOULD_UNDESTROY``.
        BackupRefusedError: ``RESTORE_WOULD_REVIVE_COMPROMISED`` or
            ``RESTORE_WOULD_CANCEL_DESTRUCTION``, with the key and version.
    """
    origin.require_nothing_undestroyed(versions)
    for item in sorted(versions, key=lambda item: int(item["version"])):
        number = int(item["version"])
        record = origin.versions.get(number)
        if record is None:
            continue
        if record.state == "destroyed" and item["state"] != "destroyed":
            raise KeyLifecycleError(
                f"Version {number} of {origin.name!r} was destroyed; a restore "
                "never brings it back.",
                code="RESTORE_WOULD_UNDESTROY",
                key=origin.name,
                version=number,
            )
        if record.compromised and not item.get("compromised"):
            raise BackupRefusedError(
                f"Version {number} of {origin.name!r} is compromised; the backup "
                "predates that and would bring it back usable.",
                code="RESTORE_WOULD_REVIVE_COMPROMISED",
                key=origin.name,
                version=number,
                state=record.state,
                backup_state=item["state"],
            )
        if record.state == "destroy_scheduled" and (
            item["state"] != "destroy_scheduled"
            or item.get("destroy_at") is None
            or item["destroy_at"] > (record.destroy_at or "")
        ):
            raise BackupRefusedError(
                f"Version {number} of {origin.name!r} is to be destroyed at "
                f"{record.destroy_at}; the backup would bring it back without "
                "that destruction.",
                code="RESTORE_WOULD_CANCEL_DESTRUCTION",
                key=origin.name,
                version=number,
                destroy_at=record.destroy_at,
                backup_state=item["state"],
            )


def _require_bundle_of(source_name: str, expected_key: str | None) -> None:
    if expected_key is not None and expected_key != source_name:
        raise InvalidArgumentError(
            f"The bundle is a backup of {source_name!r}, not {expected_key!r}.",
            code="BUNDLE_KEY_MISMATCH",
            key=expected_key,
        )


def decode_bundle_upload(text: str) -> bytes:
    """A bundle sent in a JSON body as standard base64."""
    from ledger.cipher import decode_base64

    return decode_base64(text, field="bundle", allow_empty=False)


def parse_retain_until(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as error:
        raise InvalidArgumentError(str(error), code="INVALID_TIME") from None
