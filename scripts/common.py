"""What the command-line tools share: opening the ledger the service uses."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from domain.clock import SystemClock
from domain.errors import KeyledgerError
from ledger.service import DestructionBounds, KeyService, load_local_secrets
from ledger.settings import Settings
from ledger.signing import load_trusted_keys


def open_service(settings: Settings) -> KeyService:
    """Open the existing ledger named by ``settings``; never create one.

    Raises:
        FileNotFoundError: the data folder holds no keyledger keys.
        LedgerUnavailableError: the database holds no ledger or is unreachable.
    """
    signer, kek, _ = load_local_secrets(settings.data_dir, create=False)
    service = KeyService.open(
        database_url=settings.resolved_database_url,
        signer=signer,
        kek=kek,
        clock=SystemClock(),
        bounds=DestructionBounds(
            settings.destruction_min_days,
            settings.destruction_max_days,
            settings.destruction_default_days,
        ),
        checkpoint_interval=settings.checkpoint_interval,
        create=False,
    )
    service.trusted_keys.update(load_trusted_keys(settings.data_dir))
    return service


def add_ledger_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which ledger a tool opens, as the service has them."""
    parser.add_argument(
        "--data-dir", help="The service's data folder (KEYLEDGER_DATA_DIR)."
    )
    parser.add_argument(
        "--database-url", help="The ledger's database (KEYLEDGER_DATABASE_URL)."
    )


def open_ledger_for(args: argparse.Namespace, command: str) -> KeyService | None:
    """Open the ledger the options name; on failure say why and return None."""
    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("data_dir", args.data_dir),
            ("database_url", args.database_url),
        )
        if value is not None
    }
    try:
        return open_service(Settings(**overrides))
    except (KeyledgerError, ValueError, OSError) as error:
        print(f"keyledger {command}: cannot open the ledger: {error}", file=sys.stderr)
        return None


def open_backups(service: KeyService, args: argparse.Namespace) -> Any:
    """The backup service over ``service``, with the backup key of the data folder.

    Raises:
        FileNotFoundError: the data folder holds no backup key.
    """
    from backup.key import BackupKey
    from backup.service import BackupService

    data_dir = Settings(
        **({"data_dir": args.data_dir} if args.data_dir is not None else {})
    ).data_dir
    return BackupService(service, BackupKey.load_or_create(data_dir, create=False))


def cli_context(command: str) -> Any:
    """The context of a command run from the command line, named after its user."""
    import getpass
    import secrets

    from ledger.service import CommandContext
    from ledger.store import Actor

    actor = Actor(principal=f"cli:{getpass.getuser()}", token_id="-")
    return CommandContext(actor, f"cli-{command}-{secrets.token_hex(8)}")


def record_cli_read(
    service: KeyService, route: str, key: str | None, asked: list[list[str]]
) -> None:
    """Record a read of the audit trail from the command line, before it is shown.

    Raises:
        LedgerUnavailableError: it could not be recorded; show nothing.
    """
    from domain.access_audit import AuditTrailRead

    context = cli_context(route.split()[0])
    fields = {
        "route": f"cli: keyledger {route}",
        "key": key,
        "principal": context.actor.principal,
        "token_id": context.actor.token_id,
        "path": None,
        "query": asked,
    }
    read = AuditTrailRead.record(
        fields=fields, window_seconds=0, now=service.clock.now()
    )
    _record(service, read, context)


def record_cli_export(
    service: KeyService,
    command: str,
    scope: dict[str, Any],
    data: bytes,
    manifest: dict[str, Any],
) -> None:
    """Record that ``command`` handed out evidence, before it is written anywhere.

    Raises:
        LedgerUnavailableError: it could not be recorded; write nothing.
    """
    import hashlib

    from domain.access_audit import EvidenceExport

    covered = manifest.get("covered") or {}
    fact = EvidenceExport.record(
        now=service.clock.now(),
        scope={"cli": f"keyledger {command}", **scope},
        sha256=hashlib.sha256(data).hexdigest(),
        entries=manifest["counts"]["entries"],
        first_position=covered.get("first_position"),
        last_position=covered.get("last_position"),
    )
    _record(service, fact, cli_context(command))


def _record(service: KeyService, fact: Any, context: Any) -> None:
    from eventsourcing.persistence import PersistenceError

    from domain.errors import LedgerUnavailableError
    from ledger.store import LedgerWrite

    write = LedgerWrite(actor=context.actor, request_id=context.request_id)
    try:
        service.app.save(fact, ledger=write)
    except PersistenceError as error:
        raise LedgerUnavailableError(
            "The ledger could not record this read; nothing was shown.",
            reason=type(error).__name__,
        ) from error
