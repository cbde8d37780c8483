"""The eventsourcing application that records the ledger, and its storage settings.

Storage is chosen by a URL: ``sqlite:///path/to/file`` (the embedded default) or
``postgresql://user:password@host:port/dbname?schema=name`` (production).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from eventsourcing.application import Application
from eventsourcing.persistence import Mapper, Transcoder

from domain.clock import format_time, parse_time
from ledger.entry import canonical_json
from ledger.store import LedgerRecorder, Sequencer


class LedgerTranscoder(Transcoder):
    """Encodes event state as canonical JSON; decodes it back out of a ledger entry.

    ``encode`` gives the payload that the recorder seals into an entry, so
    ``decode`` receives the whole stored entry and takes its payload.
    """

    def encode(self, obj: Any) -> bytes:
        state = dict(obj)
        state["timestamp"] = format_time(state["timestamp"])
        return canonical_json(state)

    def decode(self, data: bytes) -> Any:
        entry = json.loads(data)
        state = dict(entry["payload"])
        state["timestamp"] = parse_time(state["timestamp"])
        return state


class KeyLedger(Application[uuid.UUID]):
    """The ledger application: one events table, one total order, signed entries."""

    name = "keyledger"

    def __init__(
        self,
        *,
        sequencer: Sequencer,
        extra_ddl: Sequence[str],
        env: dict[str, str],
        create_tables: bool = True,
    ) -> None:
        self._sequencer = sequencer
        self._extra_ddl = list(extra_ddl)
        self._create_tables = create_tables
        super().__init__(env)

    def construct_mapper(self) -> Mapper[Any]:
        return self.factory.mapper(transcoder=LedgerTranscoder())

    def construct_recorder(self) -> Any:
        recorder: LedgerRecorder = self.factory.application_recorder()  # type: ignore[assignment]
        recorder.attach(self._sequencer, self._extra_ddl)
        if self._create_tables:
            recorder.create_table()
        return recorder

    @property
    def sequencer(self) -> Sequencer:
        """Seals and signs entries and checkpoints for this ledger."""
        return self._sequencer

    @property
    def ledger(self) -> LedgerRecorder:
        """The recorder, with the ledger's own read methods."""
        return self.recorder  # type: ignore[return-value]


def storage_env(database_url: str) -> dict[str, str]:
    """The eventsourcing settings for a storage URL.

    Raises:
        ValueError: the URL is neither ``sqlite:///...`` nor ``postgresql://...``.
    """
    url = urlparse(database_url)
    common = {"CREATE_TABLE": "no", "AGGREGATE_CACHE_MAXSIZE": "1000"}
    if url.scheme == "sqlite":
        path = sqlite_path(database_url)
        return {
            **common,
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": "30",
            "APPLICATION_RECORDER_TOPIC": "ledger.store:SQLiteLedgerRecorder",
        }
    if url.scheme in ("postgresql", "postgres"):
        query = parse_qs(url.query)
        dbname = unquote(url.path.lstrip("/"))
        if not dbname:
            raise ValueError("A PostgreSQL URL needs a database name.")
        return {
            **common,
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
            "POSTGRES_SCHEMA": query.get("schema", ["public"])[0],
            "POSTGRES_POOL_SIZE": "10",
            "POSTGRES_MAX_OVERFLOW": "10",
            "POSTGRES_LOCK_TIMEOUT": "10",
            "POSTGRES_CONNECT_TIMEOUT": query.get("connect_timeout", ["3"])[0],
            # Test a pooled connection before use, so one the server dropped
            # (a restart, an outage) is replaced instead of failing a request.
            "POSTGRES_PRE_PING": "y",
            "APPLICATION_RECORDER_TOPIC": "ledger.store:PostgresLedgerRecorder",
        }
    raise ValueError(
        "KEYLEDGER_DATABASE_URL must start with sqlite:/// or postgresql://."
    )


def sqlite_path(database_url: str) -> str:
    """The file an ``sqlite:///`` URL names."""
    path = unquote(urlparse(database_url).path)
    if not path or path == "/":
        raise ValueError("An SQLite URL needs a file path: sqlite:///path/to/file.")
    return path


def redact_url(database_url: str) -> str:
    """The URL without its password, fit for logs and messages."""
    url = urlparse(database_url)
    if url.password is None:
        return database_url
    netloc = url.netloc.replace(f":{url.password}@", ":***@")
    return url._replace(netloc=netloc).geturl()
