"""Positions on PostgreSQL: commit order, rolled-back writers, an unreachable database.

Failure case C15: a reader that checkpoints by position must never skip an event
that commits later with a lower position, and a rolled-back writer leaves no hole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest
from eventsourcing.persistence import PersistenceError

from domain.errors import ConcurrentModificationError, LedgerUnavailableError
from ledger.service import CommandContext, KeyService
from ledger.verify import verify_ledger
from tests.conftest import database_outage, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def store_url(pg_url: str) -> str:
    """These tests are about PostgreSQL only."""
    return f"{pg_url}&connect_timeout=1"


@pytest.fixture
def blocker(pg_url: str, service: KeyService) -> Iterator[psycopg.Connection]:
    """A second connection that can hold the ledger's table lock, like a slow writer."""
    dsn, _, query = pg_url.partition("?schema=")
    with psycopg.connect(dsn) as conn:
        conn.execute(f'SET search_path TO "{query}"')
        yield conn


def test_reader_never_passes_an_open_writer(
    service: KeyService,
    ctx: CommandContext,
    blocker: psycopg.Connection,
) -> None:
    """While a writer holds the lock, later appends wait; readers see no hole."""
    service.create_key(ctx, name="k15a")
    table = service.ledger.events_table_name

    # given a transaction that took the ledger lock and has not committed
    blocker.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
    done = threading.Event()

    def append() -> None:
        service.create_key(ctx, name="k15b")
        done.set()

    writer = threading.Thread(target=append)
    writer.start()

    # then the second writer cannot commit, and a reader sees only position 1
    assert not done.wait(timeout=0.5)
    assert [event["position"] for event in service.events()] == [1]

    # when the first transaction rolls back, the waiting append takes position 2
    blocker.rollback()
    writer.join(timeout=30)
    assert done.is_set()
    assert [event["position"] for event in service.events()] == [1, 2]
    assert verify_ledger(service.ledger, service.public_keys()).ok


def test_unreachable_database_is_unavailable_and_nothing_recorded(
    service: KeyService, ctx: CommandContext, pg_database: str
) -> None:
    """When the database drops and refuses connections, a command fails closed."""
    service.create_key(ctx, name="k-down")
    head = service.ledger.head()
    # given a database that has dropped every session and accepts no new ones
    with database_outage(pg_database):
        # then every command is refused as unavailable, not left hanging
        for _ in range(3):
            with pytest.raises(LedgerUnavailableError):
                service.rotate(ctx, "k-down")

    # and once the database is back, nothing was recorded by the failed commands
    wait_until(lambda: _reachable(service))
    assert service.ledger.head() == head
    assert service.get_key("k-down")["stream_version"] == 1
    # and the service works again with the same connection pool
    assert service.rotate(ctx, "k-down").key["stream_version"] == 2


def test_racing_commands_without_expected_version_lose_with_409(
    open_service: Callable[..., KeyService], ctx: CommandContext
) -> None:
    """Racing rotations: the winners are recorded, each loser gets expected/actual."""
    # given eight services (as eight processes) and one key
    services = [open_service() for _ in range(8)]
    services[0].create_key(ctx, name="raced")
    barrier = threading.Barrier(len(services))
    won: list[int] = []
    lost: list[ConcurrentModificationError] = []

    def rotate(service: KeyService) -> None:
        barrier.wait()
        try:
            won.append(service.rotate(ctx, "raced").receipts[0].position)
        except ConcurrentModificationError as error:
            lost.append(error)

    # when they all rotate it at once, without expected_version
    threads = [threading.Thread(target=rotate, args=(s,)) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then every loser was told what it expected and what it found
    assert won and len(won) + len(lost) == len(services)
    for error in lost:
        assert error.code == "CONCURRENT_MODIFICATION"
        assert error.details["actual"] > error.details["expected"]
    # and only the winners are on the ledger
    history, _ = services[0].history("raced")
    assert len(history) == 1 + len(won)
    assert verify_ledger(services[0].ledger, services[0].public_keys()).ok


def _reachable(service: KeyService) -> bool:
    try:
        service.ledger.head()
    except PersistenceError:
        return False
    return True
