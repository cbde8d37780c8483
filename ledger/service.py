"""The key service: runs lifecycle commands and records them on the ledger.

Each command loads the key, lets the domain decide, and appends the resulting
events together with every side write (wrapped material, projections, an
idempotency record) in one transaction. A command MUST NOT report success unless
that transaction committed; if the ledger cannot record, the action did not
happen and ``LedgerUnavailableError`` is raised.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent

from domain.clock import Clock, format_time, parse_time
from domain.errors import (
    ConcurrentModificationError,
    ExpectedVersionMismatchError,
    InvalidArgumentError,
    KeyExistsError,
    KeyLifecycleError,
    KeyNotFoundError,
    LedgerUnavailableError,
)
from domain.keys import (
    ManagedKey,
    key_id_for,
    validate_key_name,
    validate_rotation_period,
)
from domain.service_clock import SERVICE_CLOCK_ID, ServiceClock
from domain.topics import is_known
from ledger.application import KeyLedger, storage_env
from ledger.material import KeyEncryptionKey, fingerprint, generate_material
from ledger.signing import LedgerSigner
from ledger.store import (
    SYSTEM_ACTOR,
    Actor,
    Checkpoint,
    CurrentEpoch,
    LedgerWrite,
    Receipt,
    Sequencer,
    Statement,
)
from projections import (
    access_view,
    audit_index,
    backup_status,
    key_snapshots,
    key_view,
    usage_counts,
)

logger = logging.getLogger(__name__)

MATERIAL_DDL = [
    "CREATE TABLE IF NOT EXISTS key_material ("
    "key_id TEXT NOT NULL, version INTEGER NOT NULL, wrapped TEXT NOT NULL, "
    "PRIMARY KEY (key_id, version))",
    "CREATE TABLE IF NOT EXISTS idempotency_keys ("
    "idempotency_key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, "
    "status INTEGER NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL)",
]


# The development clock never reaches this time: every deadline the service
# computes from "now" (token expiry, destruction, rotation due dates) stays far
# from the end of the calendar Python can represent (year 9999).
LATEST_CLOCK_TIME = datetime(9000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DestructionBounds:
    """The deployment's allowed waiting period before a version is destroyed."""

    min_days: int = 7
    max_days: int = 30
    default_days: int = 30


@dataclass(frozen=True)
class CommandContext:
    """Who asked, under which request id, and what they expect the key to be at."""

    actor: Actor
    request_id: str
    expected_version: int | None = None
    idempotency: IdempotencyRecord | None = None
    # Check the command against the key as it is now, and record nothing: the
    # check dual control makes before it records a request for approval.
    dry_run: bool = False


@dataclass
class IdempotencyRecord:
    """Saves a command's response with its events, so a retry replays it.

    A saved response is found by ``stored_key``: the caller's key within its
    ``scope`` (the principal), so the same key sent by another principal never
    finds it. ``request_hash`` covers the method, the path and the body.
    """

    key: str
    request_hash: str
    status: int
    render: Callable[[Any], dict[str, Any]]
    scope: str = ""

    @property
    def stored_key(self) -> str:
        # A principal name holds no line break, so the two parts never blur.
        return f"{self.scope}\n{self.key}" if self.scope else self.key


@dataclass
class CommandResult:
    """What a command did: the key afterwards and the receipts of its events."""

    key: dict[str, Any]
    receipts: list[Receipt]
    notes: dict[str, Any] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def position(self) -> int:
        return self.receipts[-1].position if self.receipts else 0


@dataclass(frozen=True)
class ReplayedResponse:
    """A response saved under an idempotency key."""

    status: int
    body: dict[str, Any]


class KeyService:
    """Lifecycle commands and the queries the API and the CLI need."""

    def __init__(
        self,
        app: KeyLedger,
        *,
        kek: KeyEncryptionKey,
        clock: Clock,
        bounds: DestructionBounds,
        signer: LedgerSigner,
    ) -> None:
        self.app = app
        self.ledger = app.ledger
        self.kek = kek
        self.clock = clock
        self.bounds = bounds
        self.signer = signer
        # Other keys this ledger's entries may be signed with (a replica's primary).
        self.trusted_keys: dict[str, Any] = {}

    @classmethod
    def open(
        cls,
        *,
        database_url: str,
        signer: LedgerSigner,
        kek: KeyEncryptionKey,
        clock: Clock,
        bounds: DestructionBounds | None = None,
        checkpoint_interval: int = 100,
        create: bool = True,
    ) -> KeyService:
        """Open the ledger at ``database_url``, creating its tables if ``create``.

        Without ``create`` the ledger MUST already exist: tools that only read
        it never bring an empty one into being.

        Raises:
            LedgerUnavailableError: the database cannot be reached, or holds no
                ledger and ``create`` is false.
        """
        sequencer = Sequencer(signer, clock, checkpoint_interval)
        env = storage_env(database_url)
        if (
            not create
            and "SQLITE_DBNAME" in env
            and not Path(env["SQLITE_DBNAME"]).is_file()
        ):
            raise LedgerUnavailableError(
                f"There is no ledger file at {env['SQLITE_DBNAME']}."
            )
        try:
            app = KeyLedger(
                sequencer=sequencer,
                extra_ddl=[
                    *key_view.DDL,
                    *backup_status.DDL,
                    *MATERIAL_DDL,
                    *access_view.DDL,
                    *usage_counts.DDL,
                    *audit_index.DDL,
                    *key_snapshots.DDL,
                ],
                env=env,
                create_tables=create,
            )
            if not create:
                app.ledger.head()
        except PersistenceError as error:
            raise LedgerUnavailableError(
                "The ledger's database could not be opened, or holds no ledger.",
                reason=type(error).__name__,
            ) from error
        return cls(
            app,
            kek=kek,
            clock=clock,
            bounds=bounds or DestructionBounds(),
            signer=signer,
        )

    def close(self) -> None:
        self.app.close()

    # Commands --------------------------------------------------------------

    def create_key(
        self,
        context: CommandContext,
        *,
        name: str,
        algorithm: str = "aes-256-gcm",
        description: str = "",
        rotation_period_seconds: int | None = None,
    ) -> CommandResult:
        """Create a key; its version 1 is generated, enabled and primary.

        With ``rotation_period_seconds`` the key's rotation period is recorded
        in the same write, right after its creation.
        """
        validate_key_name(name)
        validate_rotation_period(rotation_period_seconds)
        self._replay(context)
        if self._exists(name):
            raise KeyExistsError(f"A key named {name!r} already exists.", key=name)
        key_id = str(key_id_for(name))
        material = generate_material(algorithm) if algorithm == "aes-256-gcm" else b""
        key = ManagedKey.generate(
            name=name,
            algorithm=algorithm,
            description=description,
            fingerprint=fingerprint(material),
            now=self.clock.now(),
        )
        if rotation_period_seconds is not None:
            key.change_rotation_period(rotation_period_seconds, now=self.clock.now())
        statements = [self._put_material(key_id, 1, material)]
        try:
            return self._save(key, context, statements)
        except ConcurrentModificationError:
            raise KeyExistsError(
                f"A key named {name!r} already exists.", key=name
            ) from None

    def rotate(self, context: CommandContext, name: str) -> CommandResult:
        """Add a new enabled version and make it primary."""
        key = self._load_for_command(name, context)
        material = generate_material(key.algorithm)
        version = key.rotate(fingerprint=fingerprint(material), now=self.clock.now())
        statement = self._put_material(str(key.id), version, material)
        return self._save(key, context, [statement], version=version)

    def disable_key(self, context: CommandContext, name: str) -> CommandResult:
        return self._simple(name, context, lambda key, now: key.disable(now=now))

    def enable_key(self, context: CommandContext, name: str) -> CommandResult:
        return self._simple(name, context, lambda key, now: key.enable(now=now))

    def disable_version(
        self, context: CommandContext, name: str, version: int
    ) -> CommandResult:
        return self._simple(
            name, context, lambda key, now: key.disable_version(version, now=now)
        )

    def enable_version(
        self, context: CommandContext, name: str, version: int
    ) -> CommandResult:
        return self._simple(
            name, context, lambda key, now: key.enable_version(version, now=now)
        )

    def mark_compromised(
        self, context: CommandContext, name: str, version: int, *, reason: str
    ) -> CommandResult:
        """Declare a version compromised; say so when the key lost its primary."""
        key = self._load_for_command(name, context)
        was_primary = key.mark_compromised(version, reason=reason, now=self.clock.now())
        notes: dict[str, Any] = {"primary_compromised": was_primary}
        if was_primary:
            notes["warning"] = (
                "The primary version is compromised: the key has no usable primary "
                "until it is rotated."
            )
        return self._save(key, context, [], notes=notes)

    def schedule_destruction(
        self, context: CommandContext, name: str, version: int, *, days: int | None
    ) -> CommandResult:
        bounds = self.bounds
        period = bounds.default_days if days is None else days
        return self._simple(
            name,
            context,
            lambda key, now: key.schedule_destruction(
                version,
                days=period,
                min_days=bounds.min_days,
                max_days=bounds.max_days,
                now=now,
            ),
        )

    def cancel_destruction(
        self, context: CommandContext, name: str, version: int
    ) -> CommandResult:
        return self._simple(
            name, context, lambda key, now: key.cancel_destruction(version, now=now)
        )

    def destroy_version(
        self, context: CommandContext, name: str, version: int
    ) -> CommandResult:
        """Destroy a version that is due, erasing its material in the same commit."""
        key = self._load_for_command(name, context)
        key.destroy_version(version, now=self.clock.now())
        erase = (
            "DELETE FROM key_material WHERE key_id = %s AND version = %s",
            (str(key.id), version),
        )
        return self._save(key, context, [erase])

    def trim_versions(
        self, context: CommandContext, name: str, *, min_available_version: int
    ) -> CommandResult:
        """Trim every version below ``min_available_version``, erasing its material.

        The material rows go in the same commit as the ``VersionsTrimmed`` event.
        """
        key = self._load_for_command(name, context)
        removed = key.trim(min_available_version, now=self.clock.now())
        erase = (
            "DELETE FROM key_material WHERE key_id = %s AND version < %s",
            (str(key.id), min_available_version),
        )
        notes = {"removed": removed, "min_available_version": min_available_version}
        return self._save(key, context, [erase], notes=notes)

    def roll_back(
        self,
        context: CommandContext,
        name: str,
        *,
        version: int | None = None,
        to_stream_version: int | None = None,
        to_time: datetime | None = None,
    ) -> CommandResult:
        """Make an earlier version primary, or return the key to an earlier point."""
        if (
            sum(option is not None for option in (version, to_stream_version, to_time))
            != 1
        ):
            raise InvalidArgumentError(
                "Give exactly one of version, to_stream_version or to_time.",
                code="INVALID_ROLLBACK_TARGET",
            )
        key = self._load_for_command(name, context)
        now = self.clock.now()
        if version is not None:
            key.roll_back_primary(version, now=now)
            return self._save(key, context, [])
        if to_time is not None:
            try:
                to_stream_version = self.stream_version_at(key, to_time)
            except KeyNotFoundError:
                raise KeyLifecycleError(
                    f"Key {name!r} did not exist at {format_time(to_time)}.",
                    code="ROLLBACK_TARGET_NOT_IN_PAST",
                    key=name,
                    to_time=format_time(to_time),
                ) from None
        assert to_stream_version is not None
        if not 1 <= to_stream_version < key.version:
            raise KeyLifecycleError(
                f"Stream version {to_stream_version} is not an earlier point of "
                f"{name!r} (now at {key.version}).",
                code="ROLLBACK_TARGET_NOT_IN_PAST",
                key=name,
                stream_version=key.version,
                target=to_stream_version,
            )
        past: ManagedKey = self.app.repository.get(key.id, version=to_stream_version)
        key.roll_back_to(past, now=now)
        return self._save(key, context, [])

    def change_minimum_versions(
        self,
        context: CommandContext,
        name: str,
        *,
        min_decryption_version: int | None = None,
        min_encryption_version: int | None = None,
        set_min_encryption: bool = False,
    ) -> CommandResult:
        """Change the key's decryption and encryption floors (bounds checked)."""
        return self.configure_key(
            context,
            name,
            min_decryption_version=min_decryption_version,
            min_encryption_version=min_encryption_version,
            set_min_encryption=set_min_encryption,
        )

    def configure_key(
        self,
        context: CommandContext,
        name: str,
        *,
        min_decryption_version: int | None = None,
        min_encryption_version: int | None = None,
        set_min_encryption: bool = False,
        rotation_period_seconds: int | None = None,
        set_rotation_period: bool = False,
    ) -> CommandResult:
        """Change the key's floors, its rotation period, or both, in one write.

        Each change is bounds checked before anything is recorded; with neither
        asked for the request is refused with ``NOTHING_TO_CHANGE``; when the
        key already has every value asked for, with ``CONFIG_UNCHANGED`` (409,
        as a principal's unchanged roles are ``ROLES_UNCHANGED``).
        """
        floors = min_decryption_version is not None or set_min_encryption
        if not floors and not set_rotation_period:
            raise InvalidArgumentError(
                "Give min_decryption_version, min_encryption_version or "
                "rotation_period_seconds.",
                code="NOTHING_TO_CHANGE",
            )

        def change(key: ManagedKey, now: datetime) -> None:
            if floors:
                key.change_minimum_versions(
                    min_decryption_version=min_decryption_version,
                    min_encryption_version=min_encryption_version,
                    set_min_encryption=set_min_encryption,
                    now=now,
                )
            if set_rotation_period:
                key.change_rotation_period(rotation_period_seconds, now=now)

        key = self._load_for_command(name, context)
        change(key, self.clock.now())
        if not key.pending_events:
            raise KeyLifecycleError(
                f"Key {name!r} already has every value asked for; nothing changed.",
                code="CONFIG_UNCHANGED",
                key=name,
            )
        return self._save(key, context, [])

    def destroy_due(self, limit: int = 100) -> list[CommandResult]:
        """Destroy every version whose waiting period has passed, each exactly once.

        Safe to run in several processes at once: a version another process
        destroyed first is skipped.
        """
        done = []
        now = format_time(self.clock.now())
        for name, version in key_view.due_destructions(self.ledger, now, limit):
            context = CommandContext(SYSTEM_ACTOR, f"scheduler-{secrets.token_hex(8)}")
            try:
                done.append(self.destroy_version(context, name, version))
            except KeyLifecycleError as refusal:
                logger.debug(
                    "destruction_skipped",
                    extra={"key": name, "version": version, "code": refusal.code},
                )
        return done

    # Queries ---------------------------------------------------------------

    def get_key(
        self,
        name: str,
        *,
        at: datetime | None = None,
        versions_after: int = 0,
        versions_limit: int = 100,
    ) -> dict[str, Any]:
        """The key with one page of its versions, now or as recorded at ``at``."""
        validate_key_name(name)
        if at is None:
            current = key_view.get_key(
                self.ledger,
                name,
                versions_after=versions_after,
                versions_limit=versions_limit,
            )
            if current is None:
                raise KeyNotFoundError(f"No key named {name!r}.", key=name)
            return current
        stream_version = self._stream_version_at(name, at)
        past = self.key_at_version(name, stream_version)
        view = past.summary()
        numbers = [n for n in sorted(past.versions) if n > versions_after]
        view["versions"] = [past.version_view(n) for n in numbers[:versions_limit]]
        view["next_versions_cursor"] = (
            numbers[versions_limit - 1] if len(numbers) > versions_limit else None
        )
        view["as_of"] = format_time(at)
        return view

    def stream_version_at(self, key: ManagedKey, at: datetime) -> int:
        """The key's stream version as recorded at time ``at``."""
        rows = self.ledger.query(
            f"SELECT max(originator_version) AS v FROM {self.ledger.events_table_name} "
            "WHERE originator_id = %s AND recorded_at <= %s",
            (self._stream_param(key.id), format_time(at)),
        )
        found = rows[0]["v"] if rows else None
        if found is None:
            raise KeyNotFoundError(
                f"Key {key.name!r} did not exist at {format_time(at)}.",
                key=key.name,
                at=format_time(at),
            )
        return int(found)

    def _stream_version_at(self, name: str, at: datetime) -> int:
        """The stream version of the key called ``name`` as recorded at ``at``."""
        table = self.ledger.events_table_name
        stream = self._stream_param(key_id_for(name))
        # Read backwards along (originator_id, recorded_at): a key with thousands
        # of events costs one index probe, not a scan of its stream.
        rows = self.ledger.query(
            f"SELECT originator_version FROM {table} WHERE originator_id = %s "
            "AND recorded_at <= %s "
            "ORDER BY recorded_at DESC, originator_version DESC LIMIT 1",
            (stream, format_time(at)),
        )
        if rows:
            return int(rows[0]["originator_version"])
        if not self.ledger.query(
            f"SELECT 1 AS found FROM {table} WHERE originator_id = %s LIMIT 1",
            (stream,),
        ):
            raise KeyNotFoundError(f"No key named {name!r}.", key=name)
        raise KeyNotFoundError(
            f"Key {name!r} did not exist at {format_time(at)}.",
            key=name,
            at=format_time(at),
        )

    def key_at_version(self, name: str, version: int) -> ManagedKey:
        """The key called ``name`` as it was at stream version ``version``.

        The replay starts from the nearest snapshot at or below ``version``
        (``projections.key_snapshots``), so it applies fewer than
        ``key_snapshots.INTERVAL`` events however long the key's history is, and
        it stores the snapshots it passes on the way.

        Raises:
            KeyNotFoundError: the key has no events up to ``version``.
        """
        key_id = key_id_for(validate_key_name(name))
        rows = self.ledger.query(
            "SELECT stream_version, format, entry_hash, state, digest "
            "FROM key_snapshots WHERE key_id = %s AND stream_version <= %s "
            "ORDER BY stream_version DESC LIMIT 1",
            (str(key_id), version),
        )
        first = int(rows[0]["stream_version"]) if rows else 1
        events = self._stream_rows(key_id, first, version)
        key: ManagedKey | None = None
        if rows:
            key = key_snapshots.usable(
                rows[0], events[0]["entry_hash"] if events else None
            )
            if key is not None:
                events = events[1:]
            else:
                # Another release's format, another history or damaged bytes:
                # replay from the first event, rewriting the snapshot on the way.
                logger.warning(
                    "key_snapshot_discarded",
                    extra={"key": name, "stream_version": first},
                )
                events = self._stream_rows(key_id, 1, version)
        statements: list[Statement] = []
        for row in events:
            stored = StoredEvent(
                key_id, row["originator_version"], row["topic"], bytes(row["state"])
            )
            event: Any = self.app.mapper.to_domain_event(stored)
            key = event.mutate(key)
            if key is not None and key_snapshots.due(key.version):
                try:
                    statements.append(
                        key_snapshots.snapshot_statement(key, row["entry_hash"])
                    )
                except key_snapshots.SnapshotFormatError:
                    logger.warning("key_snapshot_skipped", extra={"key": name})
        if key is None:
            raise KeyNotFoundError(
                f"Key {name!r} has no events up to stream version {version}.",
                key=name,
                stream_version=version,
            )
        if statements:
            self.ledger.execute(statements)
        return key

    def _stream_rows(self, key_id: Any, first: int, last: int) -> list[dict[str, Any]]:
        return self.ledger.query(
            "SELECT originator_version, topic, state, entry_hash "
            f"FROM {self.ledger.events_table_name} WHERE originator_id = %s "
            "AND originator_version >= %s AND originator_version <= %s "
            "ORDER BY originator_version",
            (self._stream_param(key_id), first, last),
        )

    def history(
        self, name: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of the key's events in stream order, and the next cursor."""
        key_id = key_id_for(validate_key_name(name))
        if not self._exists(name):
            raise KeyNotFoundError(f"No key named {name!r}.", key=name)
        rows = self.ledger.query(
            "SELECT notification_id, state, entry_hash, signature, kid "
            f"FROM {self.ledger.events_table_name} "
            "WHERE originator_id = %s AND originator_version > %s "
            "ORDER BY originator_version LIMIT %s",
            (self._stream_param(key_id), after, limit + 1),
        )
        items = [entry_json(row) for row in rows[:limit]]
        cursor = items[-1]["stream_version"] if len(rows) > limit else None
        return items, cursor

    def events(self, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """The ledger feed: entries in position order after ``after``."""
        rows = self.ledger.query(
            "SELECT notification_id, state, entry_hash, signature, kid "
            f"FROM {self.ledger.events_table_name} WHERE notification_id > %s "
            "ORDER BY notification_id LIMIT %s",
            (after, limit),
        )
        return [entry_json(row) for row in rows]

    def advance_clock(self, context: CommandContext, seconds: int) -> CommandResult:
        """Record a move of the development clock; the caller then moves it.

        Recorded first, so a move that is not on the ledger never happens.

        Raises:
            InvalidArgumentError: ``CLOCK_OUT_OF_RANGE`` when the move would take
                the clock to ``LATEST_CLOCK_TIME`` or past it; nothing recorded.
        """
        self._replay(context)
        now = self.clock.now()
        if seconds >= (LATEST_CLOCK_TIME - now).total_seconds():
            raise InvalidArgumentError(
                f"The clock cannot pass {format_time(LATEST_CLOCK_TIME)}.",
                code="CLOCK_OUT_OF_RANGE",
                now=format_time(now),
                latest=format_time(LATEST_CLOCK_TIME),
            )
        try:
            clock: ServiceClock = self.app.repository.get(SERVICE_CLOCK_ID)
        except AggregateNotFoundError:
            clock = ServiceClock.start(now=now)
        except PersistenceError as error:
            raise _unavailable(error) from error
        reached = now + timedelta(seconds=seconds)
        clock.advance(seconds, now=reached)
        write = LedgerWrite(
            actor=context.actor,
            request_id=context.request_id,
            subjects={str(SERVICE_CLOCK_ID): "service-clock"},
        )
        view = {"offset_seconds": clock.offset_seconds}
        notes = {"now": format_time(reached)}
        record = context.idempotency
        if record is not None:
            write.after_sealed.append(
                lambda receipts: [
                    self._idempotency_statement(
                        record, CommandResult(view, receipts, notes)
                    )
                ]
            )
        try:
            self.app.save(clock, ledger=write)
        except IntegrityError as error:
            saved = self.saved_response(record) if record is not None else None
            if record is not None and saved is not None:
                raise _Replay(self._check_replay(record, saved)) from None
            raise ConcurrentModificationError(
                "Another move of the clock was recorded first."
            ) from error
        except PersistenceError as error:
            raise _unavailable(error) from error
        return CommandResult(view, write.receipts, notes)

    def clock_offset_seconds(self) -> int:
        """How far the recorded moves of the development clock add up to."""
        try:
            clock: ServiceClock = self.app.repository.get(SERVICE_CLOCK_ID)
        except AggregateNotFoundError:
            return 0
        return clock.offset_seconds

    def checkpoint_now(self) -> Checkpoint | None:
        """Sign the current head and store it as a checkpoint; None if empty."""
        head = self.ledger.head()
        if head.position == 0:
            return None
        checkpoint = self.app.sequencer.checkpoint(
            head.position, head.hash, head.recorded_at
        )
        self.ledger.insert_checkpoint(checkpoint)
        return checkpoint

    def public_keys(self) -> dict[str, Any]:
        """The public keys this ledger's entries are verified against, by key id."""
        return {**self.trusted_keys, self.signer.kid: self.signer.public_key}

    def head_position(self) -> int:
        return self.ledger.head().position

    def unknown_event_type(self) -> tuple[int, str] | None:
        """The first position holding an event type this release cannot read.

        One pass over the table's topics, at start: a ledger written by a newer
        release is refused whole rather than read with gaps in its meaning.
        """
        rows = self.ledger.query(
            "SELECT topic, min(notification_id) AS position "
            f"FROM {self.ledger.events_table_name} GROUP BY topic",
            (),
        )
        unknown = [
            (int(row["position"]), str(row["topic"]))
            for row in rows
            if not is_known(row["topic"])
        ]
        return min(unknown) if unknown else None

    def fenced_by(self) -> CurrentEpoch | None:
        """The newer epoch that fences this instance, or None if it may write.

        An instance is fenced once its ledger's latest epoch is signed by a key
        other than its own: it was the primary before a promotion elsewhere.
        Every append then fails with ``PrimaryFencedError``; reads still work.
        """
        epoch = self.ledger.current_epoch()
        if epoch is None or epoch.kid == self.signer.kid:
            return None
        return epoch

    # Internals -------------------------------------------------------------

    def _stream_param(self, key_id: Any) -> Any:
        # SQLite keeps stream ids as hex text, PostgreSQL as uuid.
        return (
            key_id.hex
            if self.ledger.__class__.__name__.startswith("SQLite")
            else key_id
        )

    def _exists(self, name: str) -> bool:
        try:
            self.app.repository.get(key_id_for(name))
        except AggregateNotFoundError:
            return False
        except PersistenceError as error:
            raise _unavailable(error) from error
        return True

    def _load(self, name: str) -> ManagedKey:
        validate_key_name(name)
        try:
            key: ManagedKey = self.app.repository.get(key_id_for(name))
        except AggregateNotFoundError:
            raise KeyNotFoundError(f"No key named {name!r}.", key=name) from None
        except PersistenceError as error:
            raise _unavailable(error) from error
        return key

    def _load_for_command(self, name: str, context: CommandContext) -> ManagedKey:
        key = self._load(name)
        self._replay(context)
        expected = context.expected_version
        if expected is not None and expected != key.version:
            raise ExpectedVersionMismatchError(
                f"Key {name!r} is at stream version {key.version}, not {expected}.",
                key=name,
                expected=expected,
                actual=key.version,
            )
        return key

    def _simple(
        self,
        name: str,
        context: CommandContext,
        action: Callable[[ManagedKey, datetime], object],
    ) -> CommandResult:
        key = self._load_for_command(name, context)
        action(key, self.clock.now())
        return self._save(key, context, [])

    def _replay(self, context: CommandContext) -> None:
        """Raise ``Replay`` if this idempotency key already has a saved response."""
        replay_saved(self.ledger, context)

    def saved_response(self, record: IdempotencyRecord) -> dict[str, Any] | None:
        return saved_response(self.ledger, record)

    @staticmethod
    def _check_replay(
        record: IdempotencyRecord, saved: dict[str, Any]
    ) -> ReplayedResponse:
        return check_replay(record, saved)

    def _put_material(self, key_id: str, version: int, material: bytes) -> Statement:
        wrapped = self.kek.wrap(material, key_id=key_id, version=version)
        return (
            "INSERT INTO key_material (key_id, version, wrapped) VALUES (%s, %s, %s)",
            (key_id, version, base64.b64encode(wrapped).decode("ascii")),
        )

    def _save(
        self,
        key: ManagedKey,
        context: CommandContext,
        statements: list[Statement],
        *,
        notes: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> CommandResult:
        result_notes = dict(notes or {})
        if version is not None:
            result_notes["version"] = version
        if context.dry_run:
            return CommandResult(key.summary(), [], result_notes, [])
        removed = key_view.removed_versions(key.pending_events)
        touched = key_view.touched_versions(key.pending_events) - removed
        view = key.summary()
        versions = [key.version_view(number) for number in sorted(touched)]
        write = LedgerWrite(
            actor=context.actor,
            request_id=context.request_id,
            subjects={str(key.id): f"key:{key.name}"},
            statements=statements,
        )
        config = key_view.config_changed(key.pending_events)
        write.after_sealed.append(
            lambda receipts: key_view.view_statements(
                key, touched, receipts[-1].position, config=config, removed=removed
            )
        )
        record = context.idempotency
        if record is not None:
            write.after_sealed.append(
                lambda receipts: [
                    self._idempotency_statement(
                        record,
                        CommandResult(
                            {**view, "last_position": receipts[-1].position},
                            receipts,
                            result_notes,
                            versions,
                        ),
                    )
                ]
            )
        try:
            self.app.save(key, ledger=write)
        except IntegrityError as error:
            if record is not None:
                saved = self.saved_response(record)
                if saved is not None:
                    raise _Replay(self._check_replay(record, saved)) from None
            current = self._load(key.name).version
            if current == key.version - 1:
                # The key did not move: a side write failed, not a concurrent command.
                raise _unavailable(error) from error
            raise ConcurrentModificationError(
                f"Another command on {key.name!r} was recorded first.",
                key=key.name,
                expected=key.version - 1,
                actual=current,
            ) from error
        except PersistenceError as error:
            raise _unavailable(error) from error
        view["last_position"] = write.receipts[-1].position
        return CommandResult(view, write.receipts, result_notes, versions)

    def _idempotency_statement(
        self, record: IdempotencyRecord, result: CommandResult
    ) -> Statement:
        return idempotency_statement(record, result, self.clock.now())


def saved_response(ledger: Any, record: IdempotencyRecord) -> dict[str, Any] | None:
    """The response saved under the record's scoped key, if any."""
    rows = ledger.query(
        "SELECT request_hash, status, body FROM idempotency_keys "
        "WHERE idempotency_key = %s",
        (record.stored_key,),
    )
    return rows[0] if rows else None


def check_replay(record: IdempotencyRecord, saved: dict[str, Any]) -> ReplayedResponse:
    """The saved response, or 422 ``IDEMPOTENCY_KEY_REUSED`` for another request."""
    if saved["request_hash"] != record.request_hash:
        raise InvalidArgumentError(
            "This Idempotency-Key was already used with a different request.",
            code="IDEMPOTENCY_KEY_REUSED",
        )
    return ReplayedResponse(int(saved["status"]), json.loads(saved["body"]))


def replay_saved(ledger: Any, context: CommandContext) -> None:
    """Raise ``Replay`` if the context's idempotency key has a saved response."""
    record = context.idempotency
    if record is None:
        return
    saved = saved_response(ledger, record)
    if saved is not None:
        raise _Replay(check_replay(record, saved))


def idempotency_statement(
    record: IdempotencyRecord, result: Any, now: datetime
) -> Statement:
    """The row that saves ``record.render(result)``, written with the events."""
    return (
        "INSERT INTO idempotency_keys (idempotency_key, request_hash, status, "
        "body, created_at) VALUES (%s, %s, %s, %s, %s)",
        (
            record.stored_key,
            record.request_hash,
            record.status,
            json.dumps(record.render(result)),
            format_time(now),
        ),
    )


class _Replay(Exception):  # noqa: N818 - control flow, never reaches a caller
    """Carries a saved response out of a command that must not run again."""

    def __init__(self, response: ReplayedResponse) -> None:
        super().__init__("replay")
        self.response = response


Replay = _Replay


def entry_json(row: dict[str, Any]) -> dict[str, Any]:
    """A stored entry as the API shows it: the entry, its hash and signature."""
    state = row["state"]
    entry: dict[str, Any] = json.loads(state)
    entry["hash"] = row["entry_hash"]
    entry["signature"] = bytes(row["signature"]).hex()
    entry["kid"] = row["kid"]
    return entry


def _unavailable(error: Exception) -> LedgerUnavailableError:
    logger.warning("ledger_unavailable", extra={"error_type": type(error).__name__})
    return LedgerUnavailableError(
        "The ledger could not record or read; the action did not happen."
    )


def parse_optional_time(text: str | None) -> datetime | None:
    """Parse an API time, refusing one without a UTC offset."""
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as error:
        raise InvalidArgumentError(str(error), code="INVALID_TIME") from None


SIGNING_KEY_FILE = "signing-key.pem"
KEK_FILE = "kek.bin"


def load_local_secrets(
    data_dir: Path, *, create: bool = True
) -> tuple[LedgerSigner, KeyEncryptionKey, bool]:
    """Load the signing key and KEK from ``data_dir``, generating them on first use.

    The folder is created readable by its owner only. A secret file that others
    can read is refused, as ssh refuses a private key with open permissions.

    Raises:
        FileNotFoundError: ``create`` is false and the secrets are not there.
        PermissionError: a secret file can be read by group or others.
    """
    paths = [data_dir / SIGNING_KEY_FILE, data_dir / KEK_FILE]
    if not create:
        missing = [path.name for path in paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{data_dir} holds no keyledger keys ({', '.join(missing)} missing); "
                "give the service's data folder with --data-dir or KEYLEDGER_DATA_DIR."
            )
    if not data_dir.exists():
        data_dir.mkdir(mode=0o700, parents=True)
    for path in paths:
        if path.exists() and path.stat().st_mode & 0o077:
            raise PermissionError(
                f"{path} can be read by others; run: chmod 600 {path}"
            )
    signer, new_signer = LedgerSigner.load_or_create(paths[0])
    kek, new_kek = KeyEncryptionKey.load_or_create(paths[1])
    return signer, kek, new_signer or new_kek
