"""The real ``hvac`` client against a real keyledger server, on both stores.

A uvicorn server runs the app in a thread on a free port; hvac talks to it over
real HTTP exactly as it talks to Vault. ``store_records`` is the kind of code a
service written for Vault's transit engine holds: it runs here unchanged.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.runtime import Runtime
from tests.api._support import head_position, post_ok, serving
from tests.api.conftest import TOKEN
from tests.api.test_transit import configure_target, usage_payloads


@pytest.fixture
def server_url(runtime: Runtime) -> Iterator[str]:
    """A real HTTP server over the test's runtime (h11, which knows LIST)."""
    with serving(create_app(runtime.settings, runtime=runtime)) as url:
        yield url


@pytest.fixture
def vault_api(server_url: str) -> hvac.Client:
    return hvac.Client(url=server_url, token=TOKEN)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def store_records(client: hvac.Client, key: str, records: list[bytes]) -> list[str]:
    """Envelope-encrypt records as a Vault transit user would; return ciphertexts."""
    transit = client.secrets.transit
    result = transit.encrypt_data(
        name=key,
        batch_input=[
            {"plaintext": b64(record), "context": b64(b"records")} for record in records
        ],
    )
    return [item["ciphertext"] for item in result["data"]["batch_results"]]


def load_records(client: hvac.Client, key: str, ciphertexts: list[str]) -> list[bytes]:
    transit = client.secrets.transit
    result = transit.decrypt_data(
        name=key,
        batch_input=[
            {"ciphertext": sealed, "context": b64(b"records")} for sealed in ciphertexts
        ],
    )
    return [
        base64.b64decode(item["plaintext"]) for item in result["data"]["batch_results"]
    ]


def test_a_vault_transit_service_runs_unchanged(
    vault_api: hvac.Client, client: TestClient
) -> None:
    """Every transit method hvac offers for aes256-gcm96 keys, end to end."""
    transit = vault_api.secrets.transit
    transit.create_key(name="orders")
    transit.create_key(name="billing", key_type="aes256-gcm96")
    assert transit.list_keys()["data"]["keys"] == ["billing", "orders"]
    assert transit.read_key(name="orders")["data"]["latest_version"] == 1

    single = transit.encrypt_data(name="orders", plaintext=b64(b"hello"))
    sealed = single["data"]["ciphertext"]
    assert sealed.startswith("vault:v1:")
    opened = transit.decrypt_data(name="orders", ciphertext=sealed)
    assert base64.b64decode(opened["data"]["plaintext"]) == b"hello"

    records = [b"first", b"second", b"third"]
    stored = store_records(vault_api, "orders", records)
    assert load_records(vault_api, "orders", stored) == records

    transit.rotate_key(name="orders")
    assert transit.read_key(name="orders")["data"]["latest_version"] == 2
    rewrapped = transit.rewrap_data(name="orders", ciphertext=sealed)
    assert rewrapped["data"]["ciphertext"].startswith("vault:v2:")
    assert rewrapped["data"]["key_version"] == 2

    data_key = transit.generate_data_key(name="orders", key_type="plaintext")
    assert len(base64.b64decode(data_key["data"]["plaintext"])) == 32
    wrapped = transit.generate_data_key(name="orders", key_type="wrapped", bits=128)
    assert "plaintext" not in wrapped["data"]
    unwrapped = transit.decrypt_data(
        name="orders", ciphertext=data_key["data"]["ciphertext"]
    )
    assert unwrapped["data"]["plaintext"] == data_key["data"]["plaintext"]

    transit.update_key_configuration(name="orders", min_decryption_version=2)
    assert transit.read_key(name="orders")["data"]["min_decryption_version"] == 2
    trimmed = transit.trim_key(name="orders", min_version=2)
    assert trimmed.status_code == 204
    assert list(transit.read_key(name="orders")["data"]["keys"]) == ["2"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="trimmed"):
        transit.decrypt_data(name="orders", ciphertext=sealed)

    # every use above is on the ledger, recorded like a native use
    operations = [payload["operation"] for payload in usage_payloads(client)]
    assert operations == [
        "encrypt",
        "decrypt",
        "encrypt",
        "decrypt",
        "rewrap",
        "datakey",
        "datakey",
        "decrypt",
        "decrypt",
    ]
    assert client.get("/v1/ledger/verify").json()["ok"] is True


def test_hvac_raises_its_own_exceptions_for_our_refusals(
    vault_api: hvac.Client, client: TestClient, server_url: str
) -> None:
    """The error paths a Vault client handles: the same exceptions here."""
    transit = vault_api.secrets.transit
    transit.create_key(name="k")
    sealed = transit.encrypt_data(name="k", plaintext=b64(b"x"))["data"]["ciphertext"]
    head = head_position(client)

    with pytest.raises(hvac.exceptions.InvalidPath):
        transit.read_key(name="missing")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="standard base64"):
        transit.encrypt_data(name="k", plaintext="not base64!")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="could not be decrypted"):
        transit.decrypt_data(name="k", ciphertext=sealed, context=b64(b"other"))
    with pytest.raises(hvac.exceptions.InvalidRequest):
        transit.decrypt_data(name="k", ciphertext="vault:v0:AAAA")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="min_decryption_version"):
        transit.update_key_configuration(name="k", min_decryption_version=5)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="deletion_allowed"):
        transit.update_key_configuration(name="k", deletion_allowed=True)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="cannot be deleted"):
        transit.delete_key(name="k")
    with pytest.raises(
        hvac.exceptions.InvalidRequest, match="above its min_decryption_version"
    ):
        transit.trim_key(name="k", min_version=2)
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=server_url, token="kl_wrong").secrets.transit.read_key(name="k")

    with pytest.raises(hvac.exceptions.InvalidRequest) as failed:
        transit.encrypt_data(
            name="k", batch_input=[{"plaintext": b64(b"ok")}, {"plaintext": "%%"}]
        )
    results: list[dict[str, Any]] = failed.value.json["data"]["batch_results"]
    assert results[0]["ciphertext"].startswith("vault:v1:")
    assert results[1]["error_code"] == "INVALID_PLAINTEXT"

    # refused commands recorded nothing; the decrypts and the batch were uses
    assert head_position(client) == head + len(usage_payloads(client)) - 1


def test_strict_http_lists_with_get(server_url: str) -> None:
    """hvac's strict_http mode sends GET ?list=true instead of LIST."""
    strict = hvac.Client(url=server_url, token=TOKEN, strict_http=True)
    strict.secrets.transit.create_key(name="only")
    assert strict.secrets.transit.list_keys()["data"]["keys"] == ["only"]


def test_a_rollback_on_the_native_api_shows_through_hvac(
    vault_api: hvac.Client, client: TestClient
) -> None:
    """Data under an older version stays readable after a rollback."""
    transit = vault_api.secrets.transit
    transit.create_key(name="r")
    old = transit.encrypt_data(name="r", plaintext=b64(b"old"))["data"]["ciphertext"]
    transit.rotate_key(name="r")
    new = transit.encrypt_data(name="r", plaintext=b64(b"new"))["data"]["ciphertext"]
    post_ok(client, "/v1/keys/r/rollback", {"version": 1})
    for sealed, data in ((old, b"old"), (new, b"new")):
        plaintext = transit.decrypt_data(name="r", ciphertext=sealed)["data"][
            "plaintext"
        ]
        assert base64.b64decode(plaintext) == data
    again = transit.encrypt_data(name="r", plaintext=b64(b"x"))["data"]
    assert again["key_version"] == 1


def test_backup_and_restore_through_hvac(
    vault_api: hvac.Client, client: TestClient, tmp_path: Path
) -> None:
    """hvac's backup_key and restore_key, over keyledger's signed bundles."""
    configure_target(client, tmp_path / "dc1")
    transit = vault_api.secrets.transit
    transit.create_key(name="src")
    sealed = transit.encrypt_data(name="src", plaintext=b64(b"x"))["data"]["ciphertext"]
    backup = transit.backup_key(name="src")["data"]["backup"]
    restored = transit.restore_key(backup=backup, name="copy")
    assert restored.status_code == 204
    opened = transit.decrypt_data(name="copy", ciphertext=sealed)["data"]["plaintext"]
    assert base64.b64decode(opened) == b"x"
    with pytest.raises(hvac.exceptions.InvalidRequest, match="force=true"):
        transit.restore_key(backup=backup)
    assert transit.restore_key(backup=backup, force=True).status_code == 204
