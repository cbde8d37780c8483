"""Concurrent writers on one PostgreSQL ledger: the chain stays gap-free and linked.

Each thread gets its own KeyService, with its own connection pool and its own
recorder (head cache, append lock), as separate processes would have.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pytest

import ledger.service
from domain.clock import AdjustableClock, Clock
from domain.errors import (
    ConcurrentModificationError,
    ExpectedVersionMismatchError,
    KeyledgerError,
    LedgerUnavailableError,
)
from ledger.entry import GENESIS_HASH
from ledger.material import KeyEncryptionKey
from ledger.service import CommandContext, CommandResult, KeyService
from ledger.signing import LedgerSigner
from ledger.store import Receipt
from tests.conftest import ADMIN

pytestmark = pytest.mark.postgres

WRITERS = 8
KEYS_PER_WRITER = 5
ROTATIONS_PER_KEY = 4  # 5 creates + 20 rotations = 25 commands per writer
ROUNDS = 3


@pytest.fixture
def open_pg_service(
    pg_url: str,
    signer: LedgerSigner,
    kek: KeyEncryptionKey,
    clock: AdjustableClock,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., KeyService]]:
    """Open KeyServices on one fresh PostgreSQL schema; close them all afterwards.

    Each pool is kept small so that eight services fit within the server's
    max_connections next to other test sessions.
    """
    real_storage_env = ledger.service.storage_env

    def small_pool_env(database_url: str) -> dict[str, str]:
        env = real_storage_env(database_url)
        env.update(POSTGRES_POOL_SIZE="2", POSTGRES_MAX_OVERFLOW="2")
        return env

    monkeypatch.setattr(ledger.service, "storage_env", small_pool_env)
    opened: list[KeyService] = []

    def open_(with_clock: Clock | None = None) -> KeyService:
        service = KeyService.open(
            database_url=pg_url, signer=signer, kek=kek, clock=with_clock or clock
        )
        opened.append(service)
        return service

    yield open_
    for service in opened:
        service.close()


@dataclass
class Outcome:
    """What one writer saw: receipts, refusals by code, keys created, rotations."""

    receipts: list[Receipt] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    rotations: dict[str, int] = field(default_factory=dict)


def context(writer: int) -> CommandContext:
    return CommandContext(ADMIN, f"writer-{writer}-{uuid.uuid4().hex[:8]}")


def assert_chain(entries: list[dict[str, Any]]) -> None:
    """Positions are exactly 1..N and every entry links the previous one's hash."""
    assert [entry["position"] for entry in entries] == list(range(1, len(entries) + 1))
    previous = GENESIS_HASH
    for entry in entries:
        assert entry["prev_hash"] == previous
        previous = entry["hash"]


class OvertakingClock:
    """A clock that lets another process append each time its owner reads the time.

    It makes deterministic what contention does by chance: another process's
    commit lands between this process's reading of the head and its append.
    """

    def __init__(self, base: Clock, overtake: Callable[[], object], limit: int):
        self.base = base
        self.overtake = overtake
        self.limit = limit
        self.armed = False
        self.overtaken = 0

    def now(self) -> datetime:
        if self.armed and self.overtaken < self.limit:
            self.overtaken += 1
            try:
                self.overtake()
            except Exception:  # e.g. blocked by this process's lock: stop
                self.limit = self.overtaken
        return self.base.now()


def run_writers(services: list[KeyService]) -> list[Outcome]:
    """Each service creates its own keys, then rotates each of them, all at once.

    Every command is tried once; a command refused as LEDGER_UNAVAILABLE is noted,
    and a key whose creation failed is not rotated.
    """
    barrier = threading.Barrier(len(services))

    def write(writer: int) -> Outcome:
        service, outcome = services[writer], Outcome()

        def attempt(command: Callable[[], CommandResult]) -> bool:
            try:
                outcome.receipts += command().receipts
            except LedgerUnavailableError as error:
                outcome.refusals.append(error.code)
                return False
            return True

        barrier.wait()
        for number in range(KEYS_PER_WRITER):
            name = f"w{writer}-k{number}"
            if attempt(lambda n=name: service.create_key(context(writer), name=n)):
                outcome.created.append(name)
        for _ in range(ROTATIONS_PER_KEY):
            for name in outcome.created:
                if attempt(lambda n=name: service.rotate(context(writer), n)):
                    outcome.rotations[name] = outcome.rotations.get(name, 0) + 1
        return outcome

    with ThreadPoolExecutor(len(services)) as pool:
        return list(pool.map(write, range(len(services))))


def test_writers_on_separate_services_keep_chain_gap_free(
    open_pg_service: Callable[..., KeyService],
) -> None:
    """Eight services writing their own keys at once leave positions 1..N, linked."""
    # given: eight services, as eight processes would have
    services = [open_pg_service() for _ in range(WRITERS)]
    # when
    outcomes = run_writers(services)
    # then: exactly the successful commands are in the chain, each once
    receipts = [receipt for outcome in outcomes for receipt in outcome.receipts]
    attempts = sum(len(o.receipts) + len(o.refusals) for o in outcomes)
    assert attempts > 0 and len(receipts) > 0
    reader = open_pg_service()
    entries = reader.events(limit=100_000)
    assert len(entries) == len(receipts) == reader.head_position()
    assert_chain(entries)
    assert sorted(receipt.position for receipt in receipts) == list(
        range(1, len(receipts) + 1)
    )
    by_position = {entry["position"]: entry for entry in entries}
    for receipt in receipts:
        assert by_position[receipt.position]["hash"] == receipt.hash
        assert by_position[receipt.position]["stream_version"] == receipt.stream_version
    # then: each key has exactly its recorded versions, and material for each
    material = reader.ledger.query("SELECT key_id, version FROM key_material")
    assert len(material) == len(receipts)
    for writer, outcome in enumerate(outcomes):
        for number in range(KEYS_PER_WRITER):
            name = f"w{writer}-k{number}"
            if name not in outcome.created:
                with pytest.raises(KeyledgerError) as caught:
                    reader.get_key(name)
                assert caught.value.code == "KEY_NOT_FOUND"
                continue
            versions = 1 + outcome.rotations.get(name, 0)
            items, _ = reader.history(name, limit=100)
            assert [item["stream_version"] for item in items] == list(
                range(1, versions + 1)
            )
            assert reader.get_key(name)["primary_version"] == versions


def test_append_overtaken_by_other_process_is_still_recorded(
    open_pg_service: Callable[..., KeyService], clock: AdjustableClock
) -> None:
    """A command whose optimistic append another process overtakes is still recorded.

    The second process appends while the first reads its clock for the command
    and again while it seals against its cached head; the first must then fall
    back to sealing under the lock, and succeed.
    """
    # given: process B appends each time process A reads its clock, twice
    other = open_pg_service()
    other.create_key(context(1), name="busy")
    overtaking = OvertakingClock(
        clock, lambda: other.rotate(context(1), "busy"), limit=2
    )
    writer = open_pg_service(overtaking)
    writer.create_key(context(0), name="mine")
    # when
    overtaking.armed = True
    result = writer.rotate(context(0), "mine")
    overtaking.armed = False
    # then
    assert result.key["stream_version"] == 2
    assert overtaking.overtaken == 2
    entries = writer.events(limit=1000)
    assert len(entries) == 2 + overtaking.overtaken + 1
    assert_chain(entries)


def test_writers_racing_on_same_key_record_only_winners(
    open_pg_service: Callable[..., KeyService],
) -> None:
    """Eight services rotating one key with expected_version: one winner per round."""
    # given
    services = [open_pg_service() for _ in range(WRITERS)]
    services[0].create_key(context(0), name="shared")
    outcomes = [Outcome() for _ in range(WRITERS)]
    barrier = threading.Barrier(WRITERS)

    def rotate(writer: int, expected: int) -> None:
        ctx = replace(context(writer), expected_version=expected)
        barrier.wait()
        try:
            result = services[writer].rotate(ctx, "shared")
        except (ExpectedVersionMismatchError, ConcurrentModificationError) as lost:
            outcomes[writer].refusals.append(lost.code)
        else:
            outcomes[writer].receipts += result.receipts

    # when: several rounds, all writers expecting the same stream version
    for round_ in range(ROUNDS):
        expected = 1 + round_
        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(rotate, range(WRITERS), [expected] * WRITERS))
    # then: exactly one winner per round, everyone else lost with a conflict code
    winners = [receipt for outcome in outcomes for receipt in outcome.receipts]
    refusals = [code for outcome in outcomes for code in outcome.refusals]
    assert len(winners) == ROUNDS
    assert len(refusals) == ROUNDS * (WRITERS - 1)
    assert set(refusals) <= {"EXPECTED_VERSION_MISMATCH", "CONCURRENT_MODIFICATION"}
    reader = open_pg_service()
    entries = reader.events(limit=1000)
    assert len(entries) == 1 + ROUNDS == reader.head_position()
    assert_chain(entries)
    assert sorted(receipt.position for receipt in winners) == list(range(2, ROUNDS + 2))
    history, _ = reader.history("shared", limit=100)
    assert [item["type"] for item in history].count("keyledger.key.Rotated") == ROUNDS
    assert [item["stream_version"] for item in history] == list(range(1, ROUNDS + 2))
    material = reader.ledger.query("SELECT version FROM key_material ORDER BY version")
    assert [row["version"] for row in material] == list(range(1, ROUNDS + 2))
    assert reader.get_key("shared")["primary_version"] == ROUNDS + 1
