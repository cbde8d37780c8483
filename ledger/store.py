"""Recorders that turn the eventsourcing library's stored events into a signed chain.

The library maps each domain event to a ``StoredEvent`` and hands a batch to the
application recorder. The recorders here give each event a gap-free position,
link it to the previous entry's hash, stamp a recorded time that never goes
backwards, sign it, and write it in one transaction together with the side
writes the command asked for (wrapped material, projections, idempotency
records). Nothing is written unless all of it is.

On PostgreSQL the library's table lock serialises writers so that positions
commit in order; the entry is sealed (hashed and signed) before the lock is taken,
against the head this process last wrote, and the insert only succeeds if that is
still the head. On SQLite, sealing happens under the write lock.

Every append is fenced (in its transaction, under the same lock): once the
ledger's latest epoch (``Promoted`` entry) is signed by another key, this
instance is an old primary and its appends are refused with
``PrimaryFencedError``. An append that itself records an epoch passes instead
only if it is the next epoch (2 + the epochs recorded), else ``IntegrityError``:
two racing promotions record one epoch.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import psycopg
from eventsourcing.persistence import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from psycopg.sql import SQL, Identifier

from domain.access import Role
from domain.clock import Clock, format_time
from domain.epochs import PROMOTED_TOPIC
from domain.errors import PrimaryFencedError
from ledger.entry import (
    GENESIS_HASH,
    canonical_json,
    checkpoint_document,
    checkpoint_signing_message,
    entry_hash,
    entry_signing_message,
)
from ledger.signing import LedgerSigner

Statement = tuple[str, tuple[Any, ...]]
"""A side write: SQL with ``%s`` placeholders, and its parameters."""


@dataclass(frozen=True)
class Actor:
    """Who asked for an action: a principal and the id of the token it used."""

    principal: str
    token_id: str
    # What the caller may do through the API; the service layer does not check it.
    roles: frozenset[Role] = field(default=frozenset(), compare=False)
    # Where an API request came from; in the signed entry when known.
    client: str | None = field(default=None, compare=False)
    user_agent: str | None = field(default=None, compare=False)

    def as_json(self) -> dict[str, str]:
        found = {"principal": self.principal, "token_id": self.token_id}
        if self.client is not None:
            found["client"] = self.client
        if self.user_agent is not None:
            found["user_agent"] = self.user_agent
        return found


SYSTEM_ACTOR = Actor(principal="system", token_id="-")


@dataclass(frozen=True)
class Receipt:
    """Proof that an event was recorded: its position and its entry hash."""

    position: int
    hash: str
    stream_id: str
    stream_version: int
    type: str
    recorded_at: str

    def as_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "hash": self.hash,
            "stream_version": self.stream_version,
            "type": self.type,
            "recorded_at": self.recorded_at,
        }


@dataclass
class LedgerWrite:
    """The context of one append: attribution, and what else to write with it.

    ``statements`` run in the same transaction as the events; ``after_sealed``
    callbacks get the receipts before the transaction commits and return more
    statements (used for idempotency records that quote the receipts).
    The recorder fills in ``receipts``.
    """

    actor: Actor
    request_id: str
    subjects: dict[str, str] = field(default_factory=dict)
    statements: list[Statement] = field(default_factory=list)
    after_sealed: list[Callable[[list[Receipt]], list[Statement]]] = field(
        default_factory=list
    )
    receipts: list[Receipt] = field(default_factory=list)


@dataclass(frozen=True)
class Head:
    """The last entry of the chain, or the genesis head of an empty ledger."""

    position: int
    hash: str
    recorded_at: str


EMPTY_HEAD = Head(0, GENESIS_HASH, "")


@dataclass(frozen=True)
class CurrentEpoch:
    """The ledger's latest promotion: its number, the key that signs it, where."""

    epoch: int
    kid: str
    position: int

    @classmethod
    def from_row(cls, position: int, kid: str, state: bytes) -> CurrentEpoch:
        return cls(int(json.loads(state)["payload"]["epoch"]), kid, position)


def fenced_error(epoch: CurrentEpoch, own_kid: str) -> PrimaryFencedError:
    """The refusal of an append by ``own_kid`` after ``epoch`` of another key."""
    return PrimaryFencedError(
        f"This ledger is fenced: epoch {epoch.epoch} (position {epoch.position}) "
        f"is signed by key {epoch.kid}, not by this instance's key {own_kid}; "
        "it may only follow the new primary as a replica.",
        epoch=epoch.epoch,
        kid=epoch.kid,
        position=epoch.position,
        own_kid=own_kid,
    )


def _new_epochs(stored_events: Iterable[StoredEvent]) -> list[int]:
    """The numbers of the epochs an append would record."""
    return [
        int(json.loads(stored.state)["epoch"])
        for stored in stored_events
        if stored.topic == PROMOTED_TOPIC
    ]


def _not_next_epoch(number: int, recorded: int) -> IntegrityError:
    return IntegrityError(
        f"Epoch {number} is not the next epoch ({recorded + 2}): another promotion "
        "was recorded first."
    )


@dataclass(frozen=True)
class SealedEntry:
    """A stored event with its place in the chain, its hash and its signature."""

    position: int
    originator_id: uuid.UUID
    originator_version: int
    topic: str
    entry_bytes: bytes
    hash: str
    signature: bytes
    kid: str
    recorded_at: str

    def receipt(self) -> Receipt:
        return Receipt(
            self.position,
            self.hash,
            str(self.originator_id),
            self.originator_version,
            self.topic,
            self.recorded_at,
        )


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the head at a position."""

    position: int
    hash: str
    recorded_at: str
    kid: str
    signature: bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "hash": self.hash,
            "recorded_at": self.recorded_at,
            "kid": self.kid,
            "signature": self.signature.hex(),
        }


class Sequencer:
    """Seals stored events into chain entries after a given head."""

    def __init__(
        self, signer: LedgerSigner, clock: Clock, checkpoint_interval: int
    ) -> None:
        self.signer = signer
        self.clock = clock
        self.checkpoint_interval = checkpoint_interval

    def seal(
        self, head: Head, stored_events: Sequence[StoredEvent], write: LedgerWrite
    ) -> list[SealedEntry]:
        # Recorded time never goes backwards along the chain, whatever the clock does.
        recorded_at = max(format_time(self.clock.now()), head.recorded_at)
        position, previous = head.position, head.hash
        sealed = []
        for stored in stored_events:
            position += 1
            stream_id = str(stored.originator_id)
            entry = {
                "format": 1,
                "position": position,
                "prev_hash": previous,
                "stream_id": stream_id,
                "stream_version": stored.originator_version,
                "type": stored.topic,
                "subject": write.subjects.get(stream_id),
                "recorded_at": recorded_at,
                "actor": write.actor.as_json(),
                "request_id": write.request_id,
                "payload": json.loads(stored.state),
            }
            entry_bytes = canonical_json(entry)
            hash_hex = entry_hash(entry_bytes)
            sealed.append(
                SealedEntry(
                    position=position,
                    originator_id=uuid.UUID(stream_id),
                    originator_version=stored.originator_version,
                    topic=stored.topic,
                    entry_bytes=entry_bytes,
                    hash=hash_hex,
                    signature=self.signer.sign(entry_signing_message(hash_hex)),
                    kid=self.signer.kid,
                    recorded_at=recorded_at,
                )
            )
            previous = hash_hex
        return sealed

    def checkpoint(self, position: int, hash_hex: str, recorded_at: str) -> Checkpoint:
        document = checkpoint_document(
            position=position,
            hash_hex=hash_hex,
            recorded_at=recorded_at,
            kid=self.signer.kid,
        )
        signature = self.signer.sign(checkpoint_signing_message(document))
        return Checkpoint(position, hash_hex, recorded_at, self.signer.kid, signature)

    def due_checkpoints(self, sealed: Iterable[SealedEntry]) -> list[Checkpoint]:
        """Checkpoints for every entry whose position is a multiple of the interval."""
        return [
            self.checkpoint(entry.position, entry.hash, entry.recorded_at)
            for entry in sealed
            if entry.position % self.checkpoint_interval == 0
        ]


@dataclass
class _SealedGroup:
    """A group of appends sealed after ``tail`` was the head, ready to write."""

    tail: Head
    entries: list[SealedEntry] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)
    receipts: list[list[Receipt]] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)


@dataclass
class _PendingAppend:
    """One caller's events waiting for a group commit, and how it ended."""

    stored_events: Sequence[StoredEvent]
    write: LedgerWrite
    positions: list[int] = field(default_factory=list)
    error: BaseException | None = None
    finished: bool = False


_HEAD_MOVED = "KL001"
_FENCED = "KL002"
_NOT_NEXT_EPOCH = "KL003"
_BEGIN = SQL("BEGIN")
_COMMIT = SQL("COMMIT")
_CONTENDED_SECONDS = 1.0


class _HeadMovedError(Exception):
    """Another process appended since this one last saw the head."""


class _FencedError(Exception):
    """The ledger's latest epoch is signed by another key than this append's."""


class AppendSignal:
    """Wakes readers waiting for the head to pass a position (long-polls, replicas).

    Appends made in this process wake waiters at once; appends made by other
    processes on the same database are seen by re-reading the head at least
    every ``recheck`` seconds, so a waiter never sleeps past one.
    """

    def __init__(self, recheck: float = 1.0) -> None:
        self._condition = threading.Condition()
        self._generation = 0
        self.recheck = recheck

    def notify(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait_for(self, position: int, timeout: float, head: Callable[[], Head]) -> Head:
        """Wait until the head reaches ``position`` or ``timeout`` passes; the head."""
        deadline = time.monotonic() + timeout
        while True:
            with self._condition:
                generation = self._generation
            current = head()
            remaining = deadline - time.monotonic()
            if current.position >= position or remaining <= 0:
                return current
            with self._condition:
                if self._generation == generation:
                    self._condition.wait(min(remaining, self.recheck))


class LedgerTransaction(Protocol):
    """Reads and writes inside one transaction that holds the ledger's write lock."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
    def execute(self, statements: Sequence[Statement]) -> None: ...


class LedgerRecorder(Protocol):
    """What the rest of the product needs from either recorder."""

    events_table_name: str

    def attach(self, sequencer: Sequencer, extra_ddl: Sequence[str]) -> None: ...
    def create_table(self) -> None: ...
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None: ...
    def head(self) -> Head: ...
    def current_epoch(self) -> CurrentEpoch | None: ...
    def wait_for_position(self, position: int, timeout: float) -> Head: ...
    def insert_replicated(
        self,
        entries: Sequence[SealedEntry],
        statements: Sequence[Statement],
        *,
        expected_head: int,
    ) -> None: ...
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
    def execute(self, statements: Sequence[Statement]) -> None: ...
    def exclusive(self) -> AbstractContextManager[LedgerTransaction]: ...
    def insert_checkpoint(self, checkpoint: Checkpoint) -> None: ...
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]: ...
    def max_notification_id(self) -> int | None: ...
    def select_events(
        self,
        originator_id: uuid.UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]: ...


def checkpoint_table(events_table_name: str) -> str:
    return f"{events_table_name}_checkpoints"


# PostgreSQL ----------------------------------------------------------------


_library_select_events = PostgresApplicationRecorder.select_events.__wrapped__
# How long an exclusive transaction may sit idle between two of its statements.
EXCLUSIVE_IDLE_LIMIT = "10min"

Method = TypeVar("Method", bound=Callable[..., Any])


def _reconnecting(method: Method) -> Method:
    """Try a read twice, briefly.

    The library retries ten times with a connection timeout each, which holds a
    request for most of a minute in an outage; this fails fast instead. Dead
    pooled connections are weeded out by the pool's pre-ping, so the service
    recovers as soon as the database is back.
    """

    @functools.wraps(method)
    def reading(self: PostgresLedgerRecorder, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, 3):
            try:
                return method(self, *args, **kwargs)
            except (InterfaceError, OperationalError):
                if attempt == 2:
                    raise
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    return reading  # type: ignore[return-value]


class PostgresLedgerRecorder(PostgresApplicationRecorder):
    """The ledger on PostgreSQL: append-only tables, enforced by the database."""

    def __init__(
        self, datastore: Any, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.sequencer: Sequencer | None = None
        self.extra_ddl: list[str] = []
        self._head_cache: Head | None = None
        self._append_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_PendingAppend] = []
        self._contended_until = 0.0
        self.appended = AppendSignal()
        schema, table = datastore.schema, events_table_name
        checkpoints = checkpoint_table(table)
        self.checkpoints_table_name = checkpoints
        ident = {
            "schema": Identifier(schema),
            "table": Identifier(table),
            "checkpoints": Identifier(checkpoints),
            "refuse": Identifier(f"{table}_refuse_change"),
            "expect": Identifier(f"{table}_expect_head"),
            "fence": Identifier(f"{table}_expect_signer"),
            "next_epoch": Identifier(f"{table}_expect_epoch"),
        }
        self.sql_create_statements = [
            SQL("SELECT pg_advisory_xact_lock(7236410591)").format(),
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{table} ("
                "originator_id uuid NOT NULL, "
                "originator_version bigint NOT NULL, "
                "topic text NOT NULL, "
                "state bytea NOT NULL, "
                "notification_id bigint NOT NULL CHECK (notification_id > 0), "
                "entry_hash text NOT NULL, "
                "signature bytea NOT NULL, "
                "kid text NOT NULL, "
                "recorded_at text NOT NULL, "
                "PRIMARY KEY (originator_id, originator_version))"
            ).format(**ident),
            SQL(
                "CREATE UNIQUE INDEX IF NOT EXISTS {index} "
                "ON {schema}.{table} (notification_id)"
            ).format(index=Identifier(f"{table}_position_idx"), **ident),
            SQL(
                "CREATE INDEX IF NOT EXISTS {index} "
                "ON {schema}.{table} (originator_id, recorded_at)"
            ).format(index=Identifier(f"{table}_stream_time_idx"), **ident),
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{checkpoints} ("
                "position bigint PRIMARY KEY, hash text NOT NULL, "
                "recorded_at text NOT NULL, kid text NOT NULL, "
                "signature bytea NOT NULL)"
            ).format(**ident),
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{refuse}() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION "
                "'ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP "
                "USING ERRCODE = 'insufficient_privilege'; END $$"
            ).format(**ident),
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{expect}(expected bigint) "
                "RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
                "IF (SELECT coalesce(max(notification_id), 0) FROM {schema}.{table}) "
                "<> expected THEN RAISE EXCEPTION 'the ledger head moved' "
                "USING ERRCODE = '" + _HEAD_MOVED + "'; END IF; END $$"
            ).format(**ident),
            SQL(
                "CREATE INDEX IF NOT EXISTS {index} ON {schema}.{table} "
                "(notification_id) WHERE topic = '" + PROMOTED_TOPIC + "'"
            ).format(index=Identifier(f"{table}_epoch_idx"), **ident),
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{fence}(signer text) "
                "RETURNS void LANGUAGE plpgsql AS $$ DECLARE latest text; BEGIN "
                "SELECT kid INTO latest FROM {schema}.{table} "
                "WHERE topic = '" + PROMOTED_TOPIC + "' "
                "ORDER BY notification_id DESC LIMIT 1; "
                "IF latest IS NOT NULL AND latest <> signer THEN RAISE EXCEPTION "
                "'the ledger is fenced by a newer epoch' "
                "USING ERRCODE = '" + _FENCED + "'; END IF; END $$"
            ).format(**ident),
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{next_epoch}(epoch bigint) "
                "RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
                "IF (SELECT count(*) FROM {schema}.{table} "
                "WHERE topic = '" + PROMOTED_TOPIC + "') <> epoch - 2 THEN "
                "RAISE EXCEPTION 'epoch % is not the next epoch', epoch "
                "USING ERRCODE = '" + _NOT_NEXT_EPOCH + "'; END IF; END $$"
            ).format(**ident),
        ]
        for target in (table, checkpoints):
            names = {"target": Identifier(target), **ident}
            self.sql_create_statements += [
                SQL(
                    "CREATE OR REPLACE TRIGGER {trigger} BEFORE UPDATE OR DELETE "
                    "ON {schema}.{target} FOR EACH ROW EXECUTE FUNCTION "
                    "{schema}.{refuse}()"
                ).format(trigger=Identifier(f"{target}_append_only_rows"), **names),
                SQL(
                    "CREATE OR REPLACE TRIGGER {trigger} BEFORE TRUNCATE "
                    "ON {schema}.{target} FOR EACH STATEMENT EXECUTE FUNCTION "
                    "{schema}.{refuse}()"
                ).format(trigger=Identifier(f"{target}_append_only_truncate"), **names),
            ]
        self._insert_entries = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, "
            "state, notification_id, entry_hash, signature, kid, recorded_at) VALUES "
        ).format(**ident)
        self._expect_head = SQL("SELECT {schema}.{expect}(%s)").format(**ident)
        self._expect_signer = SQL("SELECT {schema}.{fence}(%s)").format(**ident)
        self._expect_epoch = SQL("SELECT {schema}.{next_epoch}(%s)").format(**ident)
        self._select_epoch = SQL(
            "SELECT notification_id, kid, state FROM {schema}.{table} "
            "WHERE topic = %s ORDER BY notification_id DESC LIMIT 1"
        ).format(**ident)
        self._insert_checkpoint = SQL(
            "INSERT INTO {schema}.{checkpoints} "
            "(position, hash, recorded_at, kid, signature) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (position) DO NOTHING"
        ).format(**ident)
        self._set_search_path = SQL("SET LOCAL search_path TO {schema}").format(**ident)
        self._select_head = SQL(
            "SELECT notification_id, entry_hash, recorded_at FROM {schema}.{table} "
            "ORDER BY notification_id DESC LIMIT 1"
        ).format(**ident)

    def attach(self, sequencer: Sequencer, extra_ddl: Sequence[str]) -> None:
        """Give the recorder its signer and clock, and the side tables' DDL."""
        self.sequencer = sequencer
        self.extra_ddl = list(extra_ddl)

    def _create_table(self, curs: Any) -> None:
        super()._create_table(curs)
        curs.execute(
            SQL("SET LOCAL search_path TO {0}").format(
                Identifier(self.datastore.schema)
            )
        )
        for statement in self.extra_ddl:
            curs.execute(statement.encode())

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Append in a group commit: concurrent appends share one transaction.

        A caller queues its events, then waits for the append lock. Whoever holds
        it takes every queued append and commits them together, so eight writers
        cost about one commit, not eight. The chain stays gap-free and each
        caller gets exactly its own receipts. If the shared transaction fails on
        a conflict, each append is retried on its own, so one caller's conflict
        never fails another's append.
        """
        write = _require_write(self.sequencer, kwargs)
        if not stored_events:
            return []
        pending = _PendingAppend(stored_events, write)
        with self._queue_lock:
            self._queue.append(pending)
        with self._append_lock:
            if not pending.finished:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit_group(group)
        if isinstance(pending.error, _FencedError):
            epoch = self.current_epoch()
            assert epoch is not None and self.sequencer is not None
            raise fenced_error(epoch, self.sequencer.signer.kid) from None
        if pending.error is not None:
            raise pending.error
        if not pending.positions:
            raise PersistenceError("The append was interrupted; nothing was recorded.")
        return pending.positions

    def _commit_group(self, group: list[_PendingAppend]) -> None:
        try:
            try:
                self._commit(group)
            except (IntegrityError, DatabaseError):
                # One caller's bad write must not fail the others: go one by one.
                if len(group) == 1:
                    raise
                for pending in group:
                    try:
                        self._commit([pending])
                    except Exception as error:
                        pending.error = error
        except Exception as error:
            for pending in group:
                if not pending.positions:
                    pending.error = error
        finally:
            for pending in group:
                pending.finished = True

    def _commit(self, group: list[_PendingAppend]) -> None:
        """Seal and write a group against the cached head, or under the lock.

        The fast path seals outside any lock against the head this process
        last wrote and sends the whole transaction in one round trip; the
        database checks under its lock that the head has not moved. If another
        process did append, the slow path takes the lock first, reads the head,
        and seals under the lock, so a busy ledger never starves a writer.
        """
        if time.monotonic() < self._contended_until:
            # Another process has been appending: the optimistic path would lose.
            self._finish(group, self._commit_under_lock(group))
            return
        try:
            head = self._head_cache or self.head()
            sealed = self._seal_group(group, head)
            with self.datastore.get_connection() as conn:
                self._run_script(
                    conn,
                    [
                        (_BEGIN, ()),
                        *self._lock_script(),
                        (self._expect_head, (head.position,)),
                        *self._fence_script(group),
                        *self._write_script(sealed),
                        (_COMMIT, ()),
                    ],
                )
        except _HeadMovedError:
            self._head_cache = None
            self._contended_until = time.monotonic() + _CONTENDED_SECONDS
            sealed = self._commit_under_lock(group)
        except BaseException:
            self._head_cache = None
            raise
        self._finish(group, sealed)

    def _commit_under_lock(self, group: list[_PendingAppend]) -> _SealedGroup:
        with self.datastore.get_connection() as conn:
            self._run_script(conn, [(_BEGIN, ()), *self._lock_script()])
            try:
                row = conn.execute(self._select_head).fetchone()
                head = (
                    EMPTY_HEAD
                    if row is None
                    else Head(
                        row["notification_id"], row["entry_hash"], row["recorded_at"]
                    )
                )
                sealed = self._seal_group(group, head)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._run_script(
                conn,
                [
                    *self._fence_script(group),
                    *self._write_script(sealed),
                    (_COMMIT, ()),
                ],
            )
        return sealed

    def _fence_script(
        self, group: list[_PendingAppend]
    ) -> list[tuple[Any, Sequence[Any]]]:
        """The fence check; for an append that starts an epoch, that it is the next.

        Epochs are numbered from 2 in the order they are recorded, so a promotion
        that counted the epochs before another committed is refused here.
        """
        assert self.sequencer is not None
        epochs = [
            number for pending in group for number in _new_epochs(pending.stored_events)
        ]
        if epochs:
            return [(self._expect_epoch, (number,)) for number in epochs]
        return [(self._expect_signer, (self.sequencer.signer.kid,))]

    def _seal_group(self, group: list[_PendingAppend], head: Head) -> _SealedGroup:
        assert self.sequencer is not None
        result = _SealedGroup(tail=head)
        for pending in group:
            entries = self.sequencer.seal(
                result.tail, pending.stored_events, pending.write
            )
            receipts = [entry.receipt() for entry in entries]
            result.statements += pending.write.statements
            for callback in pending.write.after_sealed:
                result.statements += callback(receipts)
            result.receipts.append(receipts)
            result.entries += entries
            last = entries[-1]
            result.tail = Head(last.position, last.hash, last.recorded_at)
        result.checkpoints = self.sequencer.due_checkpoints(result.entries)
        return result

    def _finish(self, group: list[_PendingAppend], sealed: _SealedGroup) -> None:
        self._head_cache = sealed.tail
        for pending, receipts in zip(group, sealed.receipts, strict=True):
            pending.write.receipts = receipts
            pending.positions = [receipt.position for receipt in receipts]
        self.appended.notify()

    def insert_replicated(
        self,
        entries: Sequence[SealedEntry],
        statements: Sequence[Statement],
        *,
        expected_head: int,
    ) -> None:
        """Store entries sealed elsewhere, exactly as given, after ``expected_head``.

        A replica's append: the entries keep the primary's bytes, hash and
        signature, and ``statements`` (projections, the replica's position) run
        in the same transaction. Nothing is written if the head is not
        ``expected_head``.

        Raises:
            IntegrityError: the head moved, or a position is already held.
        """
        if not entries:
            return
        sealed = _SealedGroup(
            tail=EMPTY_HEAD, entries=list(entries), statements=list(statements)
        )
        with self._append_lock:
            self._head_cache = None
            try:
                with self.datastore.get_connection() as conn:
                    self._run_script(
                        conn,
                        [
                            (_BEGIN, ()),
                            *self._lock_script(),
                            (self._expect_head, (expected_head,)),
                            *self._write_script(sealed),
                            (_COMMIT, ()),
                        ],
                    )
            except _HeadMovedError:
                raise IntegrityError("The ledger head moved: not replicated.") from None
            except psycopg.IntegrityError as error:
                raise IntegrityError(str(error)) from error
        self.appended.notify()

    def wait_for_position(self, position: int, timeout: float) -> Head:
        """The head once it reaches ``position``, or after ``timeout`` seconds."""
        return self.appended.wait_for(position, timeout, self.head)

    def _lock_script(self) -> list[tuple[Any, Sequence[Any]]]:
        return [
            (self._set_search_path, ()),
            *((statement, ()) for statement in self.lock_table_statements),
        ]

    def _write_script(self, sealed: _SealedGroup) -> list[tuple[Any, Sequence[Any]]]:
        entries = sealed.entries
        rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(entries))
        return [
            (
                self._insert_entries + SQL(rows),
                [
                    value
                    for entry in entries
                    for value in (
                        entry.originator_id,
                        entry.originator_version,
                        entry.topic,
                        entry.entry_bytes,
                        entry.position,
                        entry.hash,
                        entry.signature,
                        entry.kid,
                        entry.recorded_at,
                    )
                ],
            ),
            *((SQL(sql), params) for sql, params in sealed.statements),
            *(
                (
                    self._insert_checkpoint,
                    (c.position, c.hash, c.recorded_at, c.kid, c.signature),
                )
                for c in sealed.checkpoints
            ),
            (SQL("NOTIFY {0}").format(Identifier(self.channel_name)), ()),
        ]

    @staticmethod
    def _run_script(conn: Any, script: list[tuple[Any, Sequence[Any]]]) -> None:
        # One round trip for many statements: psycopg's pipeline sends them all
        # before reading any result, and prepared statements spare the server
        # from parsing and planning the same SQL on every append.
        try:
            with conn.pipeline(), conn.cursor() as curs:
                for query, params in script:
                    control = query is _BEGIN or query is _COMMIT
                    curs.execute(query, params or None, prepare=not control)
        except psycopg.Error as error:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
            if error.sqlstate == _HEAD_MOVED:
                raise _HeadMovedError from None
            if error.sqlstate == _FENCED:
                raise _FencedError from None
            if error.sqlstate == _NOT_NEXT_EPOCH:
                raise IntegrityError(str(error)) from None
            raise

    @_reconnecting
    def select_events(self, *args: Any, **kwargs: Any) -> Sequence[StoredEvent]:
        events: Sequence[StoredEvent] = _library_select_events(self, *args, **kwargs)
        return events

    @_reconnecting
    def head(self) -> Head:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_head)
            row = curs.fetchone()
        if row is None:
            return EMPTY_HEAD
        return Head(row["notification_id"], row["entry_hash"], row["recorded_at"])

    @_reconnecting
    def current_epoch(self) -> CurrentEpoch | None:
        """The latest ``Promoted`` entry, or None if the ledger has no epoch yet."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_epoch, (PROMOTED_TOPIC,))
            row = curs.fetchone()
        if row is None:
            return None
        return CurrentEpoch.from_row(
            int(row["notification_id"]), row["kid"], bytes(row["state"])
        )

    @_reconnecting
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                SQL("SET search_path TO {0}").format(Identifier(self.datastore.schema))
            )
            curs.execute(sql.encode(), tuple(params))
            if curs.description is None:
                return []
            return [_plain(dict(row)) for row in curs.fetchall()]

    def execute(self, statements: Sequence[Statement]) -> None:
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            curs.execute(
                SQL("SET LOCAL search_path TO {0}").format(
                    Identifier(self.datastore.schema)
                )
            )
            for sql, params in statements:
                curs.execute(sql.encode(), params)

    @contextmanager
    def exclusive(self) -> Iterator[LedgerTransaction]:
        """A transaction that holds the ledger's write lock: appends wait for it.

        A rebuild or a ledger archive computes for seconds between statements on
        a large ledger, longer than the library's idle-in-transaction limit, so
        this transaction alone may idle up to ``EXCLUSIVE_IDLE_LIMIT``.
        """
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            curs.execute(self._set_search_path)
            curs.execute(
                "SET LOCAL idle_in_transaction_session_timeout = "
                f"'{EXCLUSIVE_IDLE_LIMIT}'"
            )
            self._lock_table(curs)
            yield _PostgresTransaction(curs)

    def insert_checkpoint(self, checkpoint: Checkpoint) -> None:
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            curs.execute(
                self._insert_checkpoint,
                (
                    checkpoint.position,
                    checkpoint.hash,
                    checkpoint.recorded_at,
                    checkpoint.kid,
                    checkpoint.signature,
                ),
            )


# SQLite --------------------------------------------------------------------


class SQLiteLedgerRecorder(SQLiteApplicationRecorder):
    """The ledger in an SQLite file: the embedded default, no server to install."""

    def __init__(self, datastore: Any, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name)
        self.sequencer: Sequencer | None = None
        self.extra_ddl: list[str] = []
        self.checkpoints_table_name = checkpoint_table(events_table_name)
        self.appended = AppendSignal()

    def attach(self, sequencer: Sequencer, extra_ddl: Sequence[str]) -> None:
        """Give the recorder its signer and clock, and the side tables' DDL."""
        self.sequencer = sequencer
        self.extra_ddl = list(extra_ddl)

    def construct_create_table_statements(self) -> list[str]:
        table = self.events_table_name
        checkpoints = checkpoint_table(table)
        statements = [
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "notification_id INTEGER PRIMARY KEY CHECK (notification_id > 0), "
            "originator_id TEXT NOT NULL, "
            "originator_version INTEGER NOT NULL, "
            "topic TEXT NOT NULL, "
            "state BLOB NOT NULL, "
            "entry_hash TEXT NOT NULL, "
            "signature BLOB NOT NULL, "
            "kid TEXT NOT NULL, "
            "recorded_at TEXT NOT NULL, "
            "UNIQUE (originator_id, originator_version))",
            f"CREATE INDEX IF NOT EXISTS {table}_stream_time_idx "
            f"ON {table} (originator_id, recorded_at)",
            f"CREATE INDEX IF NOT EXISTS {table}_epoch_idx "
            f"ON {table} (notification_id) WHERE topic = '{PROMOTED_TOPIC}'",
            f"CREATE TABLE IF NOT EXISTS {checkpoints} ("
            "position INTEGER PRIMARY KEY, hash TEXT NOT NULL, "
            "recorded_at TEXT NOT NULL, kid TEXT NOT NULL, signature BLOB NOT NULL)",
        ]
        for target in (table, checkpoints):
            for operation in ("UPDATE", "DELETE"):
                statements.append(
                    f"CREATE TRIGGER IF NOT EXISTS {target}_no_{operation.lower()} "
                    f"BEFORE {operation} ON {target} BEGIN SELECT RAISE(ABORT, "
                    f"'ledger table {target} is append-only: {operation} refused'); "
                    "END"
                )
        return statements

    def create_table(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            for statement in self.construct_create_table_statements():
                c.execute(statement)
            for statement in self.extra_ddl:
                c.execute(statement)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        write = _require_write(self.sequencer, kwargs)
        assert self.sequencer is not None
        if not stored_events:
            return []
        with _sqlite_errors(), self.datastore.get_connection(commit=True) as conn:
            raw = conn._sqlite_conn
            try:
                raw.execute("BEGIN IMMEDIATE")
                self._check_epoch(raw, stored_events)
                head = self._head(raw)
                sealed = self.sequencer.seal(head, stored_events, write)
                receipts = [entry.receipt() for entry in sealed]
                self._insert_entries(raw, sealed)
                statements = list(write.statements)
                for callback in write.after_sealed:
                    statements += callback(receipts)
                for sql, params in statements:
                    raw.execute(_qmarks(sql), params)
                for checkpoint in self.sequencer.due_checkpoints(sealed):
                    self._insert_checkpoint(raw, checkpoint)
                raw.commit()
            except BaseException:
                raw.rollback()
                raise
        write.receipts = receipts
        self.appended.notify()
        return [entry.position for entry in sealed]

    def insert_replicated(
        self,
        entries: Sequence[SealedEntry],
        statements: Sequence[Statement],
        *,
        expected_head: int,
    ) -> None:
        """Store entries sealed elsewhere, exactly as given, after ``expected_head``.

        See ``PostgresLedgerRecorder.insert_replicated``.
        """
        if not entries:
            return
        with _sqlite_errors(), self.datastore.get_connection(commit=True) as conn:
            raw = conn._sqlite_conn
            try:
                raw.execute("BEGIN IMMEDIATE")
                if self._head(raw).position != expected_head:
                    raise IntegrityError("The ledger head moved: not replicated.")
                self._insert_entries(raw, entries)
                for sql, params in statements:
                    raw.execute(_qmarks(sql), params)
                raw.commit()
            except BaseException:
                raw.rollback()
                raise
        self.appended.notify()

    def wait_for_position(self, position: int, timeout: float) -> Head:
        """The head once it reaches ``position``, or after ``timeout`` seconds."""
        return self.appended.wait_for(position, timeout, self.head)

    def _insert_entries(
        self, raw: sqlite3.Connection, entries: Sequence[SealedEntry]
    ) -> None:
        raw.executemany(
            f"INSERT INTO {self.events_table_name} (notification_id, "
            "originator_id, originator_version, topic, state, entry_hash, "
            "signature, kid, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    entry.position,
                    entry.originator_id.hex,
                    entry.originator_version,
                    entry.topic,
                    entry.entry_bytes,
                    entry.hash,
                    entry.signature,
                    entry.kid,
                    entry.recorded_at,
                )
                for entry in entries
            ],
        )

    def _insert_checkpoint(
        self, raw: sqlite3.Connection, checkpoint: Checkpoint
    ) -> None:
        raw.execute(
            f"INSERT OR IGNORE INTO {self.checkpoints_table_name} "
            "(position, hash, recorded_at, kid, signature) VALUES (?, ?, ?, ?, ?)",
            (
                checkpoint.position,
                checkpoint.hash,
                checkpoint.recorded_at,
                checkpoint.kid,
                checkpoint.signature,
            ),
        )

    def _head(self, raw: sqlite3.Connection) -> Head:
        row = raw.execute(
            f"SELECT notification_id, entry_hash, recorded_at FROM "
            f"{self.events_table_name} ORDER BY notification_id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return EMPTY_HEAD
        return Head(row[0], row[1], row[2])

    def head(self) -> Head:
        with _sqlite_errors(), self.datastore.get_connection(commit=False) as conn:
            return self._head(conn._sqlite_conn)

    def _check_epoch(
        self, raw: sqlite3.Connection, stored_events: Sequence[StoredEvent]
    ) -> None:
        """The fence; for an append that starts an epoch, that it is the next."""
        assert self.sequencer is not None
        epochs = _new_epochs(stored_events)
        if epochs:
            (recorded,) = raw.execute(
                f"SELECT count(*) FROM {self.events_table_name} WHERE topic = ?",
                (PROMOTED_TOPIC,),
            ).fetchone()
            for number in epochs:
                if number != recorded + 2:
                    raise _not_next_epoch(number, recorded)
            return
        epoch = self._current_epoch(raw)
        own_kid = self.sequencer.signer.kid
        if epoch is not None and epoch.kid != own_kid:
            raise fenced_error(epoch, own_kid)

    def _current_epoch(self, raw: sqlite3.Connection) -> CurrentEpoch | None:
        row = raw.execute(
            f"SELECT notification_id, kid, state FROM {self.events_table_name} "
            "WHERE topic = ? ORDER BY notification_id DESC LIMIT 1",
            (PROMOTED_TOPIC,),
        ).fetchone()
        return None if row is None else CurrentEpoch.from_row(row[0], row[1], row[2])

    def current_epoch(self) -> CurrentEpoch | None:
        """The latest ``Promoted`` entry, or None if the ledger has no epoch yet."""
        with _sqlite_errors(), self.datastore.get_connection(commit=False) as conn:
            return self._current_epoch(conn._sqlite_conn)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        clauses: list[str] = ["1=1"]
        params: list[Any] = []
        if start is not None:
            clauses.append(
                "notification_id >= ?" if inclusive_of_start else "notification_id > ?"
            )
            params.append(start)
        if stop is not None:
            clauses.append("notification_id <= ?")
            params.append(stop)
        if topics:
            clauses.append(f"topic IN ({','.join('?' * len(topics))})")
            params += list(topics)
        rows = self.query(
            f"SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {self.events_table_name} WHERE {' AND '.join(clauses)} "
            "ORDER BY notification_id LIMIT ?",
            [*params, limit],
            _placeholders=False,
        )
        return [
            Notification(
                id=row["notification_id"],
                originator_id=uuid.UUID(row["originator_id"]),
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=row["state"],
            )
            for row in rows
        ]

    def max_notification_id(self) -> int:
        return self.head().position

    def query(
        self, sql: str, params: Sequence[Any] = (), *, _placeholders: bool = True
    ) -> list[dict[str, Any]]:
        with _sqlite_errors(), self.datastore.get_connection(commit=False) as conn:
            cursor = conn._sqlite_conn.execute(
                _qmarks(sql) if _placeholders else sql, tuple(params)
            )
            if cursor.description is None:
                return []
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def execute(self, statements: Sequence[Statement]) -> None:
        with _sqlite_errors(), self.datastore.get_connection(commit=True) as conn:
            raw = conn._sqlite_conn
            try:
                raw.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    raw.execute(_qmarks(sql), params)
                raw.commit()
            except BaseException:
                raw.rollback()
                raise

    @contextmanager
    def exclusive(self) -> Iterator[LedgerTransaction]:
        """A transaction that holds the database's write lock: appends wait for it."""
        with _sqlite_errors(), self.datastore.get_connection(commit=True) as conn:
            raw = conn._sqlite_conn
            raw.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTransaction(raw)
                raw.commit()
            except BaseException:
                raw.rollback()
                raise

    def insert_checkpoint(self, checkpoint: Checkpoint) -> None:
        with _sqlite_errors(), self.datastore.get_connection(commit=True) as conn:
            raw = conn._sqlite_conn
            self._insert_checkpoint(raw, checkpoint)
            raw.commit()


# Helpers -------------------------------------------------------------------


class _PostgresTransaction:
    def __init__(self, curs: Any) -> None:
        self._curs = curs

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self._curs.execute(sql.encode(), tuple(params))
        if self._curs.description is None:
            return []
        return [_plain(dict(row)) for row in self._curs.fetchall()]

    def execute(self, statements: Sequence[Statement]) -> None:
        for sql, params in statements:
            self._curs.execute(sql.encode(), params)


class _SQLiteTransaction:
    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self._raw.execute(_qmarks(sql), tuple(params))
        if cursor.description is None:
            return []
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def execute(self, statements: Sequence[Statement]) -> None:
        for sql, params in statements:
            self._raw.execute(_qmarks(sql), params)


def _require_write(sequencer: Sequencer | None, kwargs: dict[str, Any]) -> LedgerWrite:
    # Fail closed: an append without a signer or without attribution never happens.
    write = kwargs.get("ledger")
    if sequencer is None or not isinstance(write, LedgerWrite):
        raise PersistenceError("Appends need a signer and a LedgerWrite context.")
    return write


def _qmarks(sql: str) -> str:
    return sql.replace("%s", "?")


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {
        name: bytes(value) if isinstance(value, memoryview) else value
        for name, value in row.items()
    }


class _sqlite_errors:  # noqa: N801 - used as a context manager, reads as a clause
    """Translate sqlite3 errors into the library's persistence errors."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not isinstance(exc, sqlite3.Error):
            return
        mapping: list[tuple[type[sqlite3.Error], type[PersistenceError]]] = [
            (sqlite3.IntegrityError, IntegrityError),
            (sqlite3.OperationalError, OperationalError),
            (sqlite3.InterfaceError, InterfaceError),
            (sqlite3.DatabaseError, DatabaseError),
        ]
        for source, target in mapping:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise PersistenceError(str(exc)) from exc
