"""Usage counts: a read model of the usage records, kept in their transaction.

``GET /v1/keys/{name}`` shows them under ``usage``; a rebuild from the records
alone gives the same counts; key exports carry the keys' usage entries.
"""

from __future__ import annotations

import base64
import io
import threading
import zipfile
from typing import Any

from fastapi.testclient import TestClient

from api.runtime import Runtime
from ledger import offline
from projections import usage_counts
from projections.rebuild import rebuild
from tests.api._support import create, get_key, post_ok
from tests.api.test_key_use import refuse_usage_records, usage_events


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def usage(client: TestClient, name: str) -> dict[str, Any]:
    counts: dict[str, Any] = get_key(client, name)["usage"]
    return counts


def test_counts_by_operation_and_version_on_both_apis(
    client: TestClient, vault: TestClient
) -> None:
    """Native and transit uses add to the same counts; refusals count as items."""
    create(client, "counted")
    assert usage(client, "counted") == {}
    sealed = post_ok(client, "/v1/keys/counted/encrypt", {"plaintext": b64(b"a")})
    post_ok(client, "/v1/keys/counted/rotate")
    vault.post(
        "/v1/transit/encrypt/counted",
        json={"batch_input": [{"plaintext": b64(b"b")}, {"plaintext": "%%"}]},
    )
    post_ok(client, "/v1/keys/counted/rewrap", {"ciphertext": sealed["ciphertext"]})
    post_ok(client, "/v1/keys/counted/decrypt", {"ciphertext": sealed["ciphertext"]})

    counts = usage(client, "counted")
    assert set(counts) == {"encrypt", "rewrap", "decrypt"}
    encrypt = counts["encrypt"]
    assert (encrypt["requests"], encrypt["items"], encrypt["succeeded"]) == (2, 3, 2)
    assert encrypt["versions"] == {"1": 1, "2": 1}
    assert counts["rewrap"]["versions"] == {"1": 1, "2": 1}
    assert counts["decrypt"]["versions"] == {"1": 1}
    last = usage_events(client)[-1]
    assert counts["decrypt"]["last_used_at"] == last["recorded_at"]


def test_a_use_that_is_not_recorded_is_not_counted(
    client: TestClient, runtime: Runtime
) -> None:
    """Counts move in the usage record's transaction, or not at all."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/encrypt", {"plaintext": b64(b"x")})
    before = usage(client, "k")
    refuse_usage_records(runtime.service)
    response = client.post("/v1/keys/k/encrypt", json={"plaintext": b64(b"x")})
    assert response.status_code == 503
    assert usage(client, "k") == before


def test_concurrent_uses_are_each_counted_once(
    client: TestClient, runtime: Runtime
) -> None:
    create(client, "busy")
    errors: list[str] = []

    def worker() -> None:
        for _ in range(5):
            response = client.post("/v1/keys/busy/encrypt", json={"plaintext": "eA=="})
            if response.status_code != 200:
                errors.append(response.text)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert usage(client, "busy")["encrypt"]["requests"] == 30
    assert usage(client, "busy")["encrypt"]["versions"] == {"1": 30}


def test_rebuild_from_the_records_gives_the_same_counts(
    client: TestClient, runtime: Runtime
) -> None:
    """A rebuild compares the counts with the records and repairs them."""
    create(client, "a")
    create(client, "b")
    for name in ("a", "b", "a"):
        post_ok(client, f"/v1/keys/{name}/encrypt", {"plaintext": b64(b"x")})
    app = runtime.service.app
    assert rebuild(app, apply=False).matched_live
    live = usage_counts.snapshot_tables(runtime.service.ledger)

    runtime.service.ledger.execute(
        [
            ("DELETE FROM key_usage_versions", ()),
            ("UPDATE key_usage_totals SET items = 0", ()),
        ]
    )
    damaged = rebuild(app, apply=False)
    assert not damaged.matched_live
    assert any("key_usage" in line for line in damaged.differences)
    rebuild(app)
    assert usage_counts.snapshot_tables(runtime.service.ledger) == live
    assert rebuild(app, apply=False).matched_live


def _files(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_key_export_holds_the_keys_usage_and_verifies_offline(
    client: TestClient, vault: TestClient
) -> None:
    create(client, "alpha")
    create(client, "beta")
    post_ok(client, "/v1/keys/alpha/encrypt", {"plaintext": b64(b"x")})
    vault.post("/v1/transit/encrypt/beta", json={"plaintext": b64(b"y")})
    post_ok(client, "/v1/keys/beta/rotate")

    response = client.get("/v1/exports", params={"keys": "beta"})
    assert response.status_code == 200
    files = _files(response.content)
    report = offline.verify_export(files)
    assert report.ok, report
    entries = [
        offline.parse_entry(row.entry_bytes or b"")
        for row in offline.parse_export_lines(files[offline.ENTRIES_FILE])
    ]
    assert [(e["type"], e["subject"]) for e in entries] == [
        ("keyledger.key.Generated", "key:beta"),
        ("keyledger.usage.KeyUsed", "key:beta"),
        ("keyledger.key.Rotated", "key:beta"),
    ]
