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
