"""What the command-line tools share: opening the ledger the service uses."""

from __future__ import annotations

from domain.clock import SystemClock
from ledger.service import DestructionBounds, KeyService, load_local_secrets
from ledger.settings import Settings


def open_service(settings: Settings) -> KeyService:
    """Open the existing ledger named by ``settings``; never create one.

    Raises:
        FileNotFoundError: the data folder holds no keyledger keys.
        LedgerUnavailableError: the database holds no ledger or is unreachable.
    """
    signer, kek, _ = load_local_secrets(settings.data_dir, create=False)
    return KeyService.open(
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
