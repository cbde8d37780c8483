"""KeyUser in the service layer: concurrent uses are all recorded, the chain intact."""

from __future__ import annotations

import base64
import threading

from ledger.key_use import KeyUser, UseItem
from ledger.service import CommandContext, KeyService
from ledger.verify import verify_ledger

THREADS, ROUNDS = 8, 10


def test_concurrent_uses_are_each_recorded_and_never_move_the_key(
    service: KeyService, ctx: CommandContext
) -> None:
    """Eighty uses from eight threads: eighty entries, a valid chain, key unchanged."""
    service.create_key(ctx, name="busy")
    head = service.ledger.head().position
    user = KeyUser(service)
    item = UseItem(plaintext=base64.b64encode(b"x").decode())
    barrier = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            for _ in range(ROUNDS):
                result = user.use(ctx, "busy", "encrypt", [item], single=True)
                assert result.outcomes[0].error is None
        except BaseException as error:  # reported below, with the thread's others
            failures.append(error)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert service.ledger.head().position == head + THREADS * ROUNDS
    assert service.get_key("busy")["stream_version"] == 1
    uses = [
        e
        for e in service.events(limit=1000)
        if e["type"].startswith("keyledger.usage.")
    ]
    assert len(uses) == THREADS * ROUNDS
    assert verify_ledger(service.ledger, service.public_keys()).ok
