"""The backup commands of ``keyledger``: one class per subcommand.

Each opens the ledger and the backup key the service uses, runs one backup
command (recorded on the ledger like its HTTP twin, attributed to the user who ran
it) or one read (``backup-status``, ``backups``, ``backup-targets``), prints the
result as JSON, and exits 0 on success, 1 on a refusal or a failed check, 2 when the
ledger cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domain.errors import KeyledgerError
from scripts.common import (
    add_ledger_arguments,
    cli_context,
    open_backups,
    open_ledger_for,
)


def _run(args: argparse.Namespace, command: str, work: Callable[[Any], int]) -> int:
    service = open_ledger_for(args, command)
    if service is None:
        return 2
    try:
        backups = open_backups(service, args)
        return work(backups)
    except (KeyledgerError, OSError) as error:
        code = getattr(error, "code", type(error).__name__)
        print(f"keyledger {command}: refused ({code}): {error}", file=sys.stderr)
        return 1
    finally:
        service.close()


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


class Backup:
    """``keyledger backup KEY``: back a key up now."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_ledger_arguments(parser)
        parser.add_argument("key", help="The key to back up.")
        parser.add_argument(
            "--target",
            action="append",
            default=None,
            help="A target to write to (repeatable; default: the key's policy).",
        )
        parser.add_argument(
            "--retain-until",
            help="Keep the copies until this time, e.g. 2027-01-01T00:00:00Z "
            "(default: now plus the policy's retention days; must be in the future).",
        )

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        def work(backups: Any) -> int:
            from backup.service import parse_retain_until

            outcome = backups.take_backup(
                cli_context("backup"),
                args.key,
                target_names=args.target,
                retain_until=parse_retain_until(args.retain_until),
            )
            _print(outcome.as_json())
            return 0 if outcome.record is not None else 1

        return _run(args, "backup", work)


class VerifyBackup:
    """``keyledger verify-backup ID``: read every copy back and check it."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_ledger_arguments(parser)
        parser.add_argument("backup_id", help="The backup to verify (bkp_...).")

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        def work(backups: Any) -> int:
            record, _ = backups.verify_backup(
                cli_context("verify-backup"), args.backup_id
            )
            _print(record.as_json())
            return 0 if record.verified_ok else 1

        return _run(args, "verify-backup", work)


class Prune:
    """``keyledger prune ID --target NAME``: delete one copy past its retention date."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_ledger_arguments(parser)
        parser.add_argument("backup_id", help="The backup (bkp_...).")
        parser.add_argument(
            "--target", required=True, help="The target whose copy to delete."
        )

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        def work(backups: Any) -> int:
            outcome = backups.prune(cli_context("prune"), args.backup_id, args.target)
            _print(
                {
                    "backup_id": outcome.backup_id,
                    "target": args.target,
                    "deleted": outcome.failure is None,
                    "failure": outcome.failure,
                    "receipts": [receipt.as_json() for receipt in outcome.receipts],
                }
            )
            return 0 if outcome.failure is None else 1

        return _run(args, "prune", work)


# Per kind: the option a target needs, and every option it takes.
_TARGET_OPTIONS = {
    "dir": ("path", {"path", "prefix"}),
    "s3": ("bucket", {"bucket", "prefix", "endpoint_url", "region"}),
}


class ConfigureTarget:
    """``keyledger backup-target NAME``: add a target or replace its settings."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_ledger_arguments(parser)
        parser.add_argument("name", help="The target's name (a-z, 0-9, _ and -).")
        parser.add_argument("--kind", required=True, choices=("dir", "s3"))
        parser.add_argument(
            "--location", required=True, help="Its location label, e.g. dc1."
        )
        parser.add_argument(
            "--path", help="dir: the directory, an absolute path that exists."
        )
        parser.add_argument(
            "--prefix",
            help="dir: one folder name under the path (letters, digits, '.', '_', "
            "'-'; no '..'); s3: a key prefix.",
        )
        parser.add_argument("--bucket", help="s3: the bucket (with Object Lock).")
        parser.add_argument("--endpoint-url", help="s3: the endpoint, if not AWS.")
        parser.add_argument("--region", help="s3: the region.")

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        options = {
            name: value
            for name, value in (
                ("path", args.path),
                ("prefix", args.prefix),
                ("bucket", args.bucket),
                ("endpoint_url", args.endpoint_url),
                ("region", args.region),
            )
            if value is not None
        }

        def work(backups: Any) -> int:
            from domain.errors import InvalidArgumentError

            needed, allowed = _TARGET_OPTIONS[args.kind]
            if needed not in options or set(options) - allowed:
                raise InvalidArgumentError(
                    f"A {args.kind} target needs --{needed} and takes only "
                    + ", ".join(f"--{o.replace('_', '-')}" for o in sorted(allowed))
                    + ".",
                    code="INVALID_TARGET",
                    target=args.name,
                )
            receipts = backups.configure_target(
                cli_context("backup-target"),
                name=args.name,
                kind=args.kind,
                location=args.location,
                options=options,
            )
            _print(
                {
                    "target": backups.targets()[args.name],
                    "receipts": [receipt.as_json() for receipt in receipts],
                }
            )
            return 0

        return _run(args, "backup-target", work)


class ListTargets:
    """``keyledger backup-targets``: the configured targets and the default policy."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_ledger_arguments(parser)

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        def work(backups: Any) -> int:
            targets = backups.targets()
            _print(
                {
                    "targets": [targets[name] for name in sorted(targets)],
                    "default_policy": backups.default_policy().as_json(),
                }
            )
            return 0

        return _run(args, "backup-targets", work)


# The exit status of a restore that waits for approval under the key's policy.
RESTORE_PENDING = 3


class Restore:
    """``keyledger restore KEY``: restore a key from a backup id or a bundle file.

    When the key's dual-control policy (or, for ``--into``, the source key's)
    names ``restore``, the restore is recorded as a pending request, printed,
    and the command exits 3: a custodian approves it through the API.
    """

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_ledger_arguments(parser)
        parser.add_argument("key", help="The key the backup is of.")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--backup-id", help="A backup recorded on this ledger.")
        source.add_argument("--bundle", help="A bundle file (disaster recovery).")
        parser.add_argument("--into", help="Restore as a new key of this name.")
        parser.add_argument(
            "--source-public-key",
            help="PEM file of the source ledger's public key, for a bundle of "
            "another ledger.",
        )

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        def work(backups: Any) -> int:
            from ledger.dual_control import DualControl
            from ledger.signing import key_id, load_public_key

            if args.backup_id is not None:
                data = backups.read_bundle(args.backup_id)
            else:
                data = Path(args.bundle).read_bytes()
            source_keys = None
            source_pem = None
            if args.source_public_key is not None:
                source_pem = Path(args.source_public_key).read_text("ascii")
                public_key = load_public_key(source_pem)
                source_keys = {key_id(public_key): public_key}
            context = cli_context("restore")
            bundle = backups.describe_bundle(
                data, source_public_keys=source_keys, expected_key=args.key
            )
            pending = DualControl(backups.keys.app, backups.keys.clock).guard_restore(
                context,
                target=args.into or bundle["key"],
                source=bundle["key"],
                arguments={
                    **bundle,
                    "into": args.into,
                    "source_public_key": source_pem,
                    "expected_version": None,
                },
                always=False,
            )
            if pending is not None:
                _print({"approval": pending.view()})
                return RESTORE_PENDING
            result = backups.restore(
                context,
                data,
                into=args.into,
                source_public_keys=source_keys,
                expected_key=args.key,
            )
            _print({"key": result.key, "restored_from": result.notes["restored_from"]})
            return 0

        return _run(args, "restore", work)


class BackupStatus:
    """``keyledger backup-status``: every key's backup status, in name order."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        from domain.backups import STATUSES

        add_ledger_arguments(parser)
        parser.add_argument(
            "--status", choices=STATUSES, help="Only the keys with this status."
        )
        _add_page_arguments(parser, "Keys", "key name")

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        def work(backups: Any) -> int:
            items, cursor = backups.status(
                after=args.after, limit=_limit(args.limit), status=args.status
            )
            _print({"keys": items, "next_cursor": cursor})
            return 0

        return _run(args, "backup-status", work)


class ListBackups:
    """``keyledger backups KEY``: a key's backup status and its backups."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_ledger_arguments(parser)
        parser.add_argument("key", help="The key whose backups to list.")
        _add_page_arguments(parser, "Backups", "cursor")

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        def work(backups: Any) -> int:
            from domain.keys import validate_key_name

            validate_key_name(args.key)
            _print(
                backups.key_backups(
                    args.key, after=args.after, limit=_limit(args.limit)
                )
            )
            return 0

        return _run(args, "backups", work)


class SetBackupPolicy:
    """``keyledger backup-policy``: set the default policy, or one key's own."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        from domain.backups import BackupPolicy as Policy

        defaults = Policy()
        add_ledger_arguments(parser)
        parser.add_argument(
            "--key", help="Set this key's own policy (default: the default policy)."
        )
        parser.add_argument(
            "--use-default",
            action="store_true",
            help="With --key: drop the key's own policy for the default.",
        )
        for option, help_text in (
            ("copies", "Whole copies wanted (1 to 16)"),
            ("locations", "Distinct locations wanted (1 to --copies)"),
            ("interval-hours", "Hours between backups"),
            ("retention-days", "Days each backup is kept"),
        ):
            default = getattr(defaults, option.replace("-", "_"))
            parser.add_argument(
                f"--{option}",
                type=int,
                default=None,
                help=f"{help_text}; default {default}.",
            )
        parser.add_argument(
            "--target",
            action="append",
            default=None,
            help="A target to write to (repeatable; default: every target).",
        )

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        from domain.backups import BackupPolicy as Policy
        from domain.errors import InvalidArgumentError

        fields = {
            "copies": args.copies,
            "locations": args.locations,
            "interval_hours": args.interval_hours,
            "retention_days": args.retention_days,
        }
        given = {name: value for name, value in fields.items() if value is not None}

        def work(backups: Any) -> int:
            context = cli_context("backup-policy")
            if args.use_default:
                if args.key is None or given or args.target:
                    raise InvalidArgumentError(
                        "--use-default needs --key and no other policy option.",
                        code="INVALID_BACKUP_POLICY",
                    )
                receipts = backups.change_key_policy(context, args.key, None)
            else:
                policy = Policy(**given, targets=tuple(args.target or ()))
                if args.key is None:
                    receipts = backups.change_default_policy(context, policy)
                else:
                    receipts = backups.change_key_policy(context, args.key, policy)
            current = (
                backups.default_policy()
                if args.key is None
                else backups.policy_for(args.key)
            )
            _print(
                {
                    "key": args.key,
                    "policy": current.as_json(),
                    "receipts": [receipt.as_json() for receipt in receipts],
                }
            )
            return 0

        return _run(args, "backup-policy", work)


def _add_page_arguments(
    parser: argparse.ArgumentParser, items: str, cursor: str
) -> None:
    parser.add_argument(
        "--after", help=f"Start after this {cursor} (a page's next_cursor)."
    )
    parser.add_argument(
        "--limit", type=int, default=100, help=f"{items} per page (1 to 1000)."
    )


def _limit(value: int) -> int:
    from domain.errors import InvalidArgumentError

    if not 1 <= value <= 1000:
        raise InvalidArgumentError(
            "--limit is from 1 to 1000.", code="INVALID_FIELD", field="limit"
        )
    return value


class Scheduler:
    """``keyledger scheduler``: carry out due destructions and take due backups."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_ledger_arguments(parser)
        parser.add_argument(
            "--once", action="store_true", help="Run once and exit (for cron)."
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=60.0,
            help="Seconds between runs without --once.",
        )

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        def work(backups: Any) -> int:
            while True:
                destroyed = backups.keys.destroy_due()
                report = backups.run_scheduler(record_idle=args.once)
                _print({"destroyed": len(destroyed), **report})
                if args.once:
                    return 0 if not report["failed"] else 1
                time.sleep(args.interval)

        return _run(args, "scheduler", work)


class BackupLedger:
    """``keyledger backup-ledger``: archive the whole ledger to the targets."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_ledger_arguments(parser)
        parser.add_argument(
            "--target",
            action="append",
            default=None,
            help="A target to write to (repeatable; default: every target).",
        )
        parser.add_argument("--out", help="Also write the archive to this file.")

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        def work(backups: Any) -> int:
            archive, copies, failures, receipts = backups.backup_ledger(
                cli_context("backup-ledger"), target_names=args.target
            )
            if args.out:
                Path(args.out).write_bytes(archive.data)
            _print(
                {
                    "digest": archive.digest,
                    "size": len(archive.data),
                    "head_position": archive.head_position,
                    "copies": copies,
                    "failures": failures,
                    "position": receipts[-1].position,
                }
            )
            return 0 if copies or args.out else 1

        return _run(args, "backup-ledger", work)


class RestoreLedger:
    """``keyledger restore-ledger FILE``: build a new instance from an archive.

    The archive is checked in full (signature, every entry and checkpoint, every
    blob) before anything is created, against ``--source-public-key`` and the
    data folder's own signing key if it has one. Only then are the signing key
    and KEK made (when the folder has none) and the store opened; a restore
    refused after that (``LEDGER_NOT_EMPTY``, a store fault) removes the files
    it made, so the folder is left as it was.

    Limitation: a PostgreSQL store keeps the empty tables that opening it made
    when the restore then fails on a fault of the store itself.
    """

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_ledger_arguments(parser)
        parser.add_argument("archive", help="The archive file (from backup-ledger).")
        parser.add_argument(
            "--source-public-key",
            help="PEM file of the source ledger's public key. Needed unless the "
            "data folder already holds the source's signing key: a new instance "
            "signs with a key of its own, and an archive no given key signed is "
            "refused (ARCHIVE_INVALID, reason FROM_OTHER_LEDGER).",
        )

    @staticmethod
    def main(args: argparse.Namespace) -> int:
        from backup.key import BackupKey
        from backup.service import BackupService, verify_ledger_archive
        from domain.clock import SystemClock
        from ledger.service import (
            KEK_FILE,
            SIGNING_KEY_FILE,
            KeyService,
            load_local_secrets,
        )
        from ledger.settings import Settings
        from ledger.signing import LedgerSigner, key_id, load_public_key

        overrides = {
            name: value
            for name, value in (
                ("data_dir", args.data_dir),
                ("database_url", args.database_url),
            )
            if value is not None
        }
        try:
            settings = Settings(**overrides)
            data_dir = settings.data_dir
            backup_key = BackupKey.load_or_create(data_dir, create=False)
        except (KeyledgerError, ValueError, OSError) as error:
            print(f"keyledger restore-ledger: cannot open: {error}", file=sys.stderr)
            return 2

        # Check the whole archive before anything is created.
        try:
            data = Path(args.archive).read_bytes()
            public_keys = {}
            if args.source_public_key is not None:
                public_key = load_public_key(Path(args.source_public_key).read_bytes())
                public_keys[key_id(public_key)] = public_key
            if (data_dir / SIGNING_KEY_FILE).is_file():
                own, _ = LedgerSigner.load_or_create(data_dir / SIGNING_KEY_FILE)
                public_keys[own.kid] = own.public_key
            opened = verify_ledger_archive(
                data, public_keys=public_keys, backup_key=backup_key
            )
        except (KeyledgerError, ValueError, OSError) as error:
            return _restore_ledger_refused(error)

        # Whatever this command creates from here is removed if it fails.
        made = _absent_files(
            [data_dir / SIGNING_KEY_FILE, data_dir / KEK_FILE],
            settings.resolved_database_url,
        )
        try:
            signer, kek, _ = load_local_secrets(data_dir)
            service = KeyService.open(
                database_url=settings.resolved_database_url,
                signer=signer,
                kek=kek,
                clock=SystemClock(),
                checkpoint_interval=settings.checkpoint_interval,
            )
        except (KeyledgerError, ValueError, OSError) as error:
            _remove(made)
            print(f"keyledger restore-ledger: cannot open: {error}", file=sys.stderr)
            return 2
        try:
            receipts = BackupService(service, backup_key).restore_ledger(
                cli_context("restore-ledger"), data, opened=opened
            )
        except (KeyledgerError, OSError) as error:
            service.close()
            _remove(made)
            return _restore_ledger_refused(error)
        service.close()
        _print({"restored": True, "position": receipts[-1].position})
        return 0


def _restore_ledger_refused(error: Exception) -> int:
    code = getattr(error, "code", type(error).__name__)
    details = getattr(error, "details", {})
    print(
        f"keyledger restore-ledger: refused ({code}): {error} {details}",
        file=sys.stderr,
    )
    return 1


def _absent_files(secrets: list[Path], database_url: str) -> list[Path]:
    """The files a restore may create that are not there yet."""
    from ledger.application import sqlite_path

    candidates = list(secrets)
    if database_url.startswith("sqlite:"):
        try:
            store = sqlite_path(database_url)
        except ValueError:  # opening the store refuses it before making a file
            store = ""
        candidates += [
            Path(store + suffix) for suffix in ("", "-wal", "-shm", "-journal") if store
        ]
    return [path for path in candidates if not path.exists()]


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
