"""Everything the running service holds: settings, the key service, the admin token.

Built once at start-up. On first start it generates the signing key, the KEK and
the bootstrap admin token in the data folder (mode 0600); the token itself is
printed once and only its hash is kept. An old primary whose ledger holds a newer
epoch signed by another key starts fenced: it serves reads and records nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import logging
import os
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from backup.key import BackupKey
from backup.service import BackupService
from domain.access import ALL_ROLES
from domain.access_audit import BootstrapTokenUse, ServiceRun
from domain.clock import AdjustableClock, Clock, SystemClock
from domain.errors import (
    KeyledgerError,
    PrimaryFencedError,
    StoreIsReplicaError,
    UnknownEventTypeError,
)
from ledger.access import AccessService, Coalescer
from ledger.application import redact_url
from ledger.dual_control import DualControl
from ledger.replica import unpromoted_replica
from ledger.service import DestructionBounds, KeyService, load_local_secrets
from ledger.settings import Settings
from ledger.signing import load_trusted_keys
from ledger.store import SYSTEM_ACTOR, Actor, CurrentEpoch, fenced_error

logger = logging.getLogger(__name__)

TOKEN_HASH_FILE = "admin-token.sha256"
BOOTSTRAP_PRINCIPAL = "bootstrap-admin"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_id(token: str) -> str:
    """A public name for a token: never the token, never enough to guess it."""
    return "tok_" + token_digest(token)[:12]


@dataclass
class Runtime:
    """The service's state for the lifetime of the process."""

    settings: Settings
    service: KeyService
    clock: Clock
    admin_token_digest: str
    new_admin_token: str | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    scheduler: threading.Thread | None = None
    backup_service: BackupService | None = field(default=None, repr=False)
    # Record access facts (bootstrap-token use) on the ledger; tests that count
    # positions of their own events turn it off.
    record_access: bool = True
    access: AccessService = field(init=False)
    coalescer: Coalescer = field(init=False)
    dual_control: DualControl = field(init=False)
    # The newer epoch of another key that fences this old primary, once seen.
    fenced: CurrentEpoch | None = None

    run: ServiceRun | None = None

    def __post_init__(self) -> None:
        self.access = AccessService(self.service.app, self.clock)
        self.coalescer = Coalescer(self.service.app, self.clock)
        self.dual_control = DualControl(self.service.app, self.clock)

    @property
    def backups(self) -> BackupService:
        """The backup service, with the backup key from the data folder."""
        if self.backup_service is None:
            self.backup_service = BackupService(
                self.service, BackupKey.load_or_create(self.settings.data_dir)
            )
        return self.backup_service

    def authenticate(self, token: str) -> Actor | None:
        """The actor a bearer token stands for, or None if it is unknown.

        The bootstrap token holds every role, and its use is recorded (once per
        window, with a count of the repeats) before the request goes on.

        Raises:
            AuthenticationError: a principal's token expired or was revoked.
            LedgerUnavailableError: the use of the bootstrap token could not be
                recorded, so the request must not go on.
        """
        if hmac.compare_digest(token_digest(token), self.admin_token_digest):
            actor = Actor(BOOTSTRAP_PRINCIPAL, token_id(token), roles=ALL_ROLES)
            if self.record_access:
                self.record_fact(
                    lambda: self.coalescer.occurred(
                        ("bootstrap-token", actor.token_id),
                        lambda now, seconds: BootstrapTokenUse.record(
                            token_id=actor.token_id, window_seconds=seconds, now=now
                        ),
                        actor,
                        f"auth_{uuid.uuid4().hex}",
                    )
                )
            return actor
        return self.access.authenticate(token)

    def record_fact(self, record: Callable[[], object]) -> None:
        """Record an access fact; if a newer epoch fences this primary, record none.

        A fenced primary can record nothing more, as a replica: the read that
        came with the fact goes on unrecorded, and so does every later one.

        Raises:
            LedgerUnavailableError: the fact could not be recorded otherwise.
        """
        try:
            record()
        except PrimaryFencedError:
            self.notice_fence()

    def notice_fence(self) -> None:
        """Re-read the ledger's epoch after an append was refused as fenced."""
        epoch = self.service.fenced_by()
        if epoch is not None:
            self.fence(epoch)

    def fence(self, epoch: CurrentEpoch) -> None:
        """Stop recording anything: a newer epoch of another key was seen."""
        if self.fenced is None:
            logger.warning(
                "primary_fenced",
                extra={
                    "epoch": epoch.epoch,
                    "kid": epoch.kid,
                    "position": epoch.position,
                    "own_kid": self.service.signer.kid,
                },
            )
        self.fenced = epoch
        self.record_access = False
        self.run = None

    def fenced_error(self) -> PrimaryFencedError | None:
        """The refusal every command gets while fenced, else None."""
        if self.fenced is None:
            return None
        return fenced_error(self.fenced, self.service.signer.kid)

    def start_scheduler(self) -> None:
        """Destroy due versions and record expired approval requests in the
        background, every scheduler interval."""
        if self.fenced is not None:
            return  # it would only record refusals: a fenced primary writes nothing

        def loop() -> None:
            while not self.stopping.wait(self.settings.scheduler_interval_seconds):
                try:
                    self.coalescer.flush()
                    done = self.service.destroy_due()
                    if done:
                        logger.info(
                            "destructions_completed", extra={"count": len(done)}
                        )
                except KeyledgerError as error:
                    logger.warning("scheduler_failed", extra={"code": error.code})
                try:
                    expired = self.dual_control.expire_due()
                    if expired:
                        logger.info("approvals_expired", extra={"count": len(expired)})
                except KeyledgerError as error:
                    logger.warning("approval_expiry_failed", extra={"code": error.code})
                try:
                    self.backups.run_scheduler(record_idle=False)
                except KeyledgerError as error:
                    logger.warning(
                        "backup_scheduler_failed", extra={"code": error.code}
                    )

        self.scheduler = threading.Thread(target=loop, name="scheduler", daemon=True)
        self.scheduler.start()

    def record_start(self) -> None:
        """Record that the service starts, and from now on every access fact."""
        self.record_access = True
        if self.run is None:
            self.run = ServiceRun.start(
                version=_version(),
                kid=self.service.signer.kid,
                pid=os.getpid(),
                now=self.clock.now(),
            )
            self.coalescer.record(self.run, SYSTEM_ACTOR, "service-start")

    def record_stop(self) -> None:
        """Record the open access counts and, for the service, that it stops.

        Called when the app shuts down: uvicorn ends the process by re-raising
        the signal it caught, so code after ``uvicorn.run`` may never run.
        """
        try:
            self.coalescer.flush(everything=True)
            if self.run is not None:
                self.run.stop(now=self.clock.now())
                self.coalescer.record(self.run, SYSTEM_ACTOR, "service-stop")
                self.run = None
        except KeyledgerError as error:
            logger.warning("service_stop_not_recorded", extra={"code": error.code})

    def close(self) -> None:
        self.stopping.set()
        if self.scheduler is not None:
            self.scheduler.join(timeout=5)
        self.record_stop()
        self.service.close()


def build_runtime(settings: Settings, *, appends: bool = True) -> Runtime:
    """Load or create local secrets and open the ledger.

    A replica starts with ``appends`` false: its ledger is the primary's, byte
    for byte, so it records neither its start nor any access fact until it is
    promoted (see ``Runtime.record_start``).
    """
    data_dir = settings.data_dir
    signer, kek, _ = load_local_secrets(data_dir)
    clock: Clock = AdjustableClock() if settings.dev_clock else SystemClock()
    service = KeyService.open(
        database_url=settings.resolved_database_url,
        signer=signer,
        kek=kek,
        clock=clock,
        bounds=DestructionBounds(
            settings.destruction_min_days,
            settings.destruction_max_days,
            settings.destruction_default_days,
        ),
        checkpoint_interval=settings.checkpoint_interval,
    )
    unknown = service.unknown_event_type()
    if unknown is not None:
        service.close()
        position, topic = unknown
        raise UnknownEventTypeError(
            f"The ledger holds an event of type {topic!r} at position {position}, "
            "which this release cannot read; upgrade keyledger to serve it.",
            position=position,
            topic=topic,
        )
    # A replica's store may serve as a primary once promoted; fenced by a newer
    # epoch (an old primary that rejoined), it serves reads and records nothing.
    following = (
        unpromoted_replica(service) if appends and service.fenced_by() is None else None
    )
    if following is not None:
        service.close()
        raise StoreIsReplicaError(
            f"This store is a replica of {following['source']} "
            f"(state {following['state']}"
            + (f", {following['reason']}" if following["reason"] else "")
            + "): serve it with `keyledger replica`, or promote it first with "
            "`keyledger promote`.",
            source=following["source"],
            state=following["state"],
            reason=following["reason"],
        )
    service.trusted_keys.update(load_trusted_keys(data_dir))
    if isinstance(clock, AdjustableClock):
        # Every earlier move of the development clock is on the ledger: replay them.
        clock.advance(timedelta(seconds=service.clock_offset_seconds()))
    # Only once the ledger is open, so a failed first start cannot lose the token.
    digest, new_token = _admin_token(settings, data_dir)
    logger.info(
        "ledger_opened",
        extra={
            "database": redact_url(settings.resolved_database_url),
            "kid": signer.kid,
        },
    )
    runtime = Runtime(settings, service, clock, digest, new_token)
    runtime.record_access = appends
    fenced = service.fenced_by() if appends else None
    if fenced is not None:
        runtime.fence(fenced)
        appends = False
    try:
        # The backup key is made on the first start, so it can be kept safe at once.
        backups = runtime.backups
        if appends and settings.backup_settings_file is not None:
            backups.apply_settings_file(settings.backup_settings_file)
    except BaseException:
        runtime.close()
        raise
    if appends:
        runtime.record_start()
    return runtime


def _version() -> str:
    try:
        return importlib.metadata.version("keyledger")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _admin_token(settings: Settings, data_dir: Path) -> tuple[str, str | None]:
    if settings.admin_token is not None:
        return token_digest(settings.admin_token.get_secret_value()), None
    path = data_dir / TOKEN_HASH_FILE
    if path.exists():
        return path.read_text().strip(), None
    token = "kl_" + secrets.token_urlsafe(32)
    from ledger.signing import write_secret_file

    write_secret_file(path, token_digest(token).encode("ascii"))
    return token_digest(token), token
