"""Secrets never leak: key material, wrapped blobs and the admin token stay hidden.

A workload drives every kind of command (and several refusals and a server error)
through the API while logs are captured at DEBUG. Every wrapped blob is then
unwrapped with the KEK, and neither the material (raw, hex, base64) nor the blob nor
the admin token may appear in any ledger row, any response, or any log record.
"""

from __future__ import annotations

import base64
import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from ledger.material import fingerprint
from ledger.store import checkpoint_table
from projections import backup_status, key_view
from tests.api._support import JSON, get_key
from tests.api.conftest import TOKEN


class Recorder:
    """Sends requests through the client and keeps every response."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.responses: list[httpx.Response] = []

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, path, **kwargs)
        self.responses.append(response)
        return response

    def ok(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self(method, path, **kwargs)
        assert response.status_code in (200, 201), (path, response.text)
        return response


def _material_rows(runtime: Runtime) -> dict[tuple[str, int], str]:
    rows = runtime.service.ledger.query(
        "SELECT key_id, version, wrapped FROM key_material"
    )
    return {(row["key_id"], int(row["version"])): row["wrapped"] for row in rows}


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return str(value).encode("utf-8", "surrogatepass")


def _needles(runtime: Runtime, blobs: dict[tuple[str, int], str]) -> dict[str, bytes]:
    """Every form of every secret that must never be seen, by a printable label."""
    needles = {"admin token": TOKEN.encode()}
    for (key_id, version), wrapped_b64 in blobs.items():
        wrapped = base64.b64decode(wrapped_b64)
        material = runtime.service.kek.unwrap(wrapped, key_id=key_id, version=version)
        assert len(material) == 32
        label = f"{key_id} v{version}"
        needles |= {
            f"{label} material raw": material,
            f"{label} material hex": material.hex().encode(),
            f"{label} material HEX": material.hex().upper().encode(),
            f"{label} material base64": base64.b64encode(material).rstrip(b"="),
            f"{label} material base64url": base64.urlsafe_b64encode(material).rstrip(
                b"="
            ),
            f"{label} wrapped raw": wrapped,
            f"{label} wrapped base64": wrapped_b64.rstrip("=").encode(),
            f"{label} wrapped hex": wrapped.hex().encode(),
        }
    return needles


def _leaks(needles: dict[str, bytes], haystacks: dict[str, bytes]) -> list[str]:
    return [
        f"{label} in {where}"
        for where, hay in haystacks.items()
        for label, needle in needles.items()
        if needle in hay
    ]


def _run_transit_workload(vault: TestClient, responses: list[httpx.Response]) -> None:
    """The Vault transit API's uses and refusals, with ``X-Vault-Token``."""
    send = Recorder(vault)
    send.responses = responses
    send.ok("GET", "/v1/transit/keys/s2")
    send.ok("LIST", "/v1/transit/keys")
    sealed = send.ok("POST", "/v1/transit/encrypt/s2", json={"plaintext": "eA=="})
    ciphertext = sealed.json()["data"]["ciphertext"]
    send.ok("POST", "/v1/transit/decrypt/s2", json={"ciphertext": ciphertext})
    send.ok("POST", "/v1/transit/rewrap/s2", json={"ciphertext": ciphertext})
    send.ok("POST", "/v1/transit/datakey/wrapped/s2", json={})
    send("POST", "/v1/transit/decrypt/s2", json={"ciphertext": ciphertext + "A"})
    send("POST", "/v1/transit/decrypt/s1", json={"ciphertext": ciphertext})
    send("POST", "/v1/transit/keys/s2/config", json={"deletion_allowed": True})
    send("DELETE", "/v1/transit/keys/s2")
    send("GET", "/v1/transit/keys/s2", headers={"X-Vault-Token": f"{TOKEN}x"})
    send("GET", "/v1/transit/keys/none")


def _run_workload(
    client: TestClient, runtime: Runtime, vault: TestClient
) -> tuple[Recorder, dict[Any, str]]:
    """Create, rotate, schedule, refuse, fail and destroy; return all blobs."""
    send = Recorder(client)
    idem = {"Idempotency-Key": "secret-test-create"}
    send.ok("POST", "/v1/keys", json={"name": "s1"}, headers=idem)
    send.ok("POST", "/v1/keys", json={"name": "s1"}, headers=idem)
    send.ok("POST", "/v1/keys", json={"name": "s2", "description": "second"})
    send.ok("POST", "/v1/keys/s1/rotate", json={})
    send.ok("POST", "/v1/keys/s1/rotate", json={"expected_version": 2})
    send.ok("POST", "/v1/keys/s2/rotate", json={})
    blobs = _material_rows(runtime)
    assert len(blobs) == 5

    send.ok("POST", "/v1/keys/s1/versions/1/schedule-destruction", json={"days": 7})
    send.ok("POST", "/v1/keys/s1/versions/2/disable", json={})
    send.ok("POST", "/v1/keys/s2/versions/1/compromise", json={"reason": "test"})
    send.ok("POST", "/v1/keys/s1/rollback", json={"to_stream_version": 2})

    # Refusals and broken requests, whose error bodies are checked too.
    send("POST", "/v1/keys", json={"name": "s1"})
    send("POST", "/v1/keys", content=b"{not json", headers=JSON)
    send("POST", "/v1/keys", content=b'{"name":"k\xc3\x28"}', headers=JSON)
    send("POST", "/v1/keys", json={"name": "s3", "min_decrypt_versoin": 2})
    send("POST", "/v1/keys/s1/versions/999/disable", json={})
    send("POST", "/v1/keys/s1/versions/abc/disable", json={})
    send("POST", "/v1/keys/s2/versions/2/disable", json={})
    send("POST", "/v1/keys", content=b"{" + b" " * (65 * 1024) + b"}", headers=JSON)
    send("GET", "/v1/keys", headers={"Authorization": "Bearer kl_wrong"})
    send("GET", "/v1/keys", headers={"Authorization": f"Basic {TOKEN}"})
    send("GET", "/v1/keys", headers={"Authorization": f"Bearer {TOKEN}x"})
    send("GET", "/v1/keys/s1", params={"at": "2026-03-01T12:00:00"})
    server_error = send(
        "GET", "/v1/keys/s1", params={"at": "0001-01-01T00:00:00+01:00"}
    )
    assert server_error.status_code in (422, 500)

    _run_transit_workload(vault, send.responses)

    runtime.clock.advance(timedelta(days=7))  # type: ignore[attr-defined]
    destroyed = send.ok("POST", "/v1/scheduler/run").json()["destroyed"]
    assert [item["key"] for item in destroyed] == ["s1"]
    send.ok("POST", "/v1/dev/clock", json={"seconds": 60})
    send.ok("POST", "/v1/ledger/checkpoints")

    for path in (
        "/v1/keys",
        "/v1/keys/s1",
        "/v1/keys/s2",
        "/v1/keys/s1/history",
        "/v1/keys/s2/history",
        "/v1/events?limit=1000",
        "/v1/ledger/head",
        "/v1/ledger/verify",
        "/healthz",
    ):
        send.ok("GET", path)
    send.ok("GET", "/v1/keys/s1", params={"at": "2026-03-01T12:00:00Z"})
    return send, blobs


@pytest.fixture
def workload(
    client: TestClient,
    runtime: Runtime,
    vault: TestClient,
    caplog: pytest.LogCaptureFixture,
) -> tuple[Recorder, dict[Any, str], dict[str, bytes]]:
    """The workload's responses, the wrapped blobs it created, and every secret form."""
    caplog.set_level(logging.DEBUG)
    send, blobs = _run_workload(client, runtime, vault)
    return send, blobs, _needles(runtime, blobs)


def test_unwrapped_material_matches_the_recorded_fingerprints(
    client: TestClient, runtime: Runtime, workload: Any
) -> None:
    """Each blob opens to the fingerprinted material; destroyed material is gone."""
    _, blobs, _ = workload
    views = {
        get_key(client, name)["key_id"]: get_key(client, name) for name in ("s1", "s2")
    }
    for (key_id, version), wrapped in blobs.items():
        material = runtime.service.kek.unwrap(
            base64.b64decode(wrapped), key_id=key_id, version=version
        )
        [shown] = [v for v in views[key_id]["versions"] if v["version"] == version]
        assert shown["fingerprint"] == fingerprint(material)
    remaining = _material_rows(runtime)
    s1 = get_key(client, "s1")["key_id"]
    assert (s1, 1) not in remaining, "destroyed material must be erased"
    assert set(remaining) == set(blobs) - {(s1, 1)}


def test_secrets_never_appear_in_ledger_rows(runtime: Runtime, workload: Any) -> None:
    """No events-table row holds the material, the wrapped blob or the admin token."""
    _, _, needles = workload
    ledger = runtime.service.ledger
    rows = ledger.query(f"SELECT * FROM {ledger.events_table_name}")
    # ten key events, two moves of the dev clock and five uses on the transit API
    assert len(rows) == 17
    haystacks = {
        f"event row {i} column {column}": _as_bytes(value)
        for i, row in enumerate(rows)
        for column, value in row.items()
    }
    assert _leaks(needles, haystacks) == []


def test_secrets_never_appear_in_side_tables(runtime: Runtime, workload: Any) -> None:
    """Projections, checkpoints and saved idempotent responses hold no secret either."""
    _, _, needles = workload
    ledger = runtime.service.ledger
    tables = [
        *key_view.TABLES,
        "idempotency_keys",
        checkpoint_table(ledger.events_table_name),
    ]
    haystacks: dict[str, bytes] = {}
    for table in tables:
        rows = ledger.query(f"SELECT * FROM {table}")
        assert rows, f"{table} is empty; the workload should have filled it"
        for i, row in enumerate(rows):
            for column, value in row.items():
                haystacks[f"{table} row {i} column {column}"] = _as_bytes(value)
    assert _leaks(needles, haystacks) == []
    # Positive control: the same search does find the blobs where they belong.
    stored = {
        f"key_material row {i}": _as_bytes(row["wrapped"])
        for i, row in enumerate(ledger.query("SELECT wrapped FROM key_material"))
    }
    assert len(_leaks(needles, stored)) == 4


def test_secrets_never_appear_in_responses(workload: Any) -> None:
    """No response body or header, error bodies included, holds a secret."""
    send, _, needles = workload
    assert any(r.status_code >= 400 for r in send.responses)
    haystacks = {}
    for i, response in enumerate(send.responses):
        where = f"response {i} ({response.request.method} {response.request.url.path})"
        haystacks[f"{where} body"] = response.content
        haystacks[f"{where} headers"] = repr(dict(response.headers)).encode()
    assert _leaks(needles, haystacks) == []


def test_secrets_never_appear_in_logs(
    caplog: pytest.LogCaptureFixture, workload: Any
) -> None:
    """No log record captured at DEBUG, extras included, holds a secret."""
    _, _, needles = workload
    records = caplog.records
    formatter = logging.Formatter()
    haystacks = {}
    for i, record in enumerate(records):
        text = formatter.format(record)
        extras = repr(sorted((k, repr(v)) for k, v in vars(record).items()))
        haystacks[f"log {i} ({record.name})"] = (text + "\n" + extras).encode(
            "utf-8", "surrogatepass"
        )
    assert _leaks(needles, haystacks) == []


# Backups ---------------------------------------------------------------------


def test_backups_leak_no_material_no_backup_key_and_no_kek_blob(
    client: TestClient,
    runtime: Runtime,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Any,
) -> None:
    """Taking, verifying, refusing and restoring backups shows no secret anywhere.

    The bundle files and the whole-ledger archive hold material only wrapped under
    the backup key: neither the material, nor a KEK-wrapped blob, nor the backup
    key is in them.
    """
    from backup.key import BACKUP_KEY_FILE
    from tests.api.test_backups import configure_targets

    caplog.set_level(logging.DEBUG)
    folders = configure_targets(client, tmp_path / "targets")
    send = Recorder(client)
    send.ok("POST", "/v1/keys", json={"name": "b1"})
    send.ok("POST", "/v1/keys/b1/rotate", json={})
    taken = send.ok("POST", "/v1/keys/b1/backups", json={}).json()
    send.ok("POST", f"/v1/backups/{taken['backup_id']}/verify")
    send.ok("GET", "/v1/keys/b1/backups")
    send.ok("GET", "/v1/backup-status")
    bundle_file = folders["dc1"] / taken["backup"]["copies"][0]["object"]
    data = bundle_file.read_bytes()
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 1
    send(
        "POST",
        "/v1/keys/b1/restore",
        json={"bundle": base64.b64encode(bytes(tampered)).decode(), "into": "b2"},
    )
    send.ok(
        "POST",
        "/v1/keys/b1/restore",
        json={"backup_id": taken["backup_id"], "into": "b2"},
    )
    blobs = _material_rows(runtime)
    needles = _needles(runtime, blobs)
    backup_key = (runtime.settings.data_dir / BACKUP_KEY_FILE).read_bytes()
    needles |= {
        "backup key raw": backup_key,
        "backup key hex": backup_key.hex().encode(),
        "backup key base64": base64.b64encode(backup_key).rstrip(b"="),
    }

    from ledger.service import CommandContext
    from tests.conftest import ADMIN

    archive, _, _, _ = runtime.backups.backup_ledger(CommandContext(ADMIN, "req-a"))
    ledger = runtime.service.ledger
    haystacks = {"bundle file": data, "ledger archive": archive.data}
    for table in (ledger.events_table_name, *backup_status.TABLES):
        for i, row in enumerate(ledger.query(f"SELECT * FROM {table}")):
            for column, value in row.items():
                haystacks[f"{table} row {i} {column}"] = _as_bytes(value)
    for i, response in enumerate(send.responses):
        haystacks[f"response {i}"] = response.content
    formatter = logging.Formatter()
    for i, record in enumerate(caplog.records):
        extras = repr(sorted((k, repr(v)) for k, v in vars(record).items()))
        haystacks[f"log {i}"] = (formatter.format(record) + extras).encode()
    assert _leaks(needles, haystacks) == []
