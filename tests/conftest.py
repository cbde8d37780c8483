"""Shared fixtures: every storage-dependent test runs on SQLite and on PostgreSQL.

PostgreSQL is found through ``KEYLEDGER_TEST_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``). The suite creates its own
database for the session and a fresh schema for each test, and drops them after.
With no server reachable the PostgreSQL cases are skipped with one clear line,
except under ``CI=true``, where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from domain.clock import AdjustableClock
from ledger.material import KeyEncryptionKey
from ledger.service import CommandContext, DestructionBounds, KeyService
from ledger.signing import LedgerSigner
from ledger.store import Actor

ADMIN = Actor(principal="test-admin", token_id="tok_test")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

_server_url = os.environ.get(
    "KEYLEDGER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_unreachable: str | None = None


def _with_dbname(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of this test session's own, dropped at the end."""
    try:
        admin = psycopg.connect(_server_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        message = f"PostgreSQL not reachable at KEYLEDGER_TEST_DATABASE_URL: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message.splitlines()[0])
    admin.close()
    with new_database("keyledger_test") as url:
        yield url


@contextmanager
def new_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database made with CREATE DATABASE, dropped when the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_dbname(_server_url, name)
    finally:
        with psycopg.connect(_server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A URL to a fresh, empty schema in the session's PostgreSQL database."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{pg_database}?schema={schema}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger store: an SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def clock() -> AdjustableClock:
    return AdjustableClock(T0)


@pytest.fixture(scope="session")
def signer() -> LedgerSigner:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return LedgerSigner(Ed25519PrivateKey.generate())


@pytest.fixture(scope="session")
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey(os.urandom(32))


@pytest.fixture
def open_service(
    store_url: str, signer: LedgerSigner, kek: KeyEncryptionKey, clock: AdjustableClock
) -> Iterator[Callable[..., KeyService]]:
    """Open services on the test's store; all of them are closed afterwards."""
    opened: list[KeyService] = []

    def open_(**overrides: object) -> KeyService:
        options: dict[str, object] = {
            "database_url": store_url,
            "signer": signer,
            "kek": kek,
            "clock": clock,
            "bounds": DestructionBounds(),
            "checkpoint_interval": 100,
        }
        options.update(overrides)
        service = KeyService.open(**options)  # type: ignore[arg-type]
        opened.append(service)
        return service

    yield open_
    for service in opened:
        service.close()


@pytest.fixture
def service(open_service: Callable[..., KeyService]) -> KeyService:
    """A key service on a fresh store, with a fixed clock at ``T0``."""
    return open_service()


@pytest.fixture
def ctx() -> CommandContext:
    """A command context for the test admin."""
    return CommandContext(ADMIN, f"req-{uuid.uuid4().hex[:8]}")


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds, e.g. for a connection pool to reconnect.

    Polling for a state is not a timing assertion: the test fails only if the
    state never comes within a generous bound.
    """
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout} s")
        time.sleep(0.2)


@contextmanager
def database_outage(database_url: str) -> Iterator[None]:
    """The database drops every session and refuses new ones until the block ends."""
    dbname = database_url.rpartition("/")[2]
    admin_url = database_url.rpartition("/")[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
