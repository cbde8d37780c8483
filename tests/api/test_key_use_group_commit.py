"""Concurrent key uses share one transaction on PostgreSQL, with exact receipts.

The test holds the recorder's append lock (the writer) while several encrypt
requests arrive, waits until every one of them has queued its usage entry,
then lets the writer go: one of them commits the whole queue. PostgreSQL's
``xmin`` of the stored rows shows they were written by one transaction, and
each response's receipt is its own entry's position and hash. Nothing here
depends on timing: the requests queue behind a lock the test holds.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api._support import create
from tests.conftest import wait_until

REQUESTS = 6
PLAINTEXT = {"plaintext": base64.b64encode(b"grouped").decode("ascii")}


def _transactions(runtime: Runtime, positions: list[int]) -> set[str]:
    """The ids of the transactions that wrote the entries at ``positions``."""
    ledger = runtime.service.ledger
    rows = ledger.query(
        f"SELECT xmin::text AS tx FROM {ledger.events_table_name} "
        "WHERE notification_id = ANY(%s)",
        (positions,),
    )
    assert len(rows) == len(positions)
    return {row["tx"] for row in rows}


def test_concurrent_uses_share_a_commit_and_each_gets_its_own_receipt(
    client: TestClient, runtime: Runtime, store_url: str
) -> None:
    """Six queued encrypts: one transaction, gap-free, each receipt its own entry."""
    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite has no group commit: each append is its own transaction")
    create(client, "k")
    recorder: Any = runtime.service.ledger  # its append lock and queue
    head = recorder.head().position
    responses: dict[str, httpx.Response] = {}

    def encrypt(request_id: str) -> None:
        responses[request_id] = client.post(
            "/v1/keys/k/encrypt", json=PLAINTEXT, headers={"X-Request-Id": request_id}
        )

    threads = [
        threading.Thread(target=encrypt, args=(f"req-group-{n}",))
        for n in range(REQUESTS)
    ]
    # Given the writer held, every request queues its usage entry behind it.
    with recorder._append_lock:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(recorder._queue) == REQUESTS)
        assert recorder.head().position == head  # nothing is written yet
    # When the writer is let go, then one commit takes the whole queue.
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    assert {r.status_code for r in responses.values()} == {200}
    receipts: dict[str, dict[str, Any]] = {}
    for request_id, response in responses.items():
        [receipt] = response.json()["receipts"]
        assert response.headers["Ledger-Position"] == str(receipt["position"])
        receipts[request_id] = receipt
    positions = sorted(r["position"] for r in receipts.values())
    assert positions == list(range(head + 1, head + REQUESTS + 1))
    stored = {e["position"]: e for e in runtime.service.events(after=head)}
    assert sorted(stored) == positions
    for request_id, receipt in receipts.items():
        entry = stored[receipt["position"]]
        assert entry["hash"] == receipt["hash"]
        assert entry["request_id"] == request_id
        assert entry["type"] == receipt["type"]
    assert len(_transactions(runtime, positions)) == 1

    # A use that does not queue behind others commits alone: the check can fail.
    alone = client.post("/v1/keys/k/encrypt", json=PLAINTEXT)
    assert alone.status_code == 200, alone.text
    [own] = alone.json()["receipts"]
    assert len(_transactions(runtime, [*positions, own["position"]])) == 2
