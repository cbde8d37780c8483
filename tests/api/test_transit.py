"""The Vault transit API: Vault's shapes and errors over the same ledger rules.

``vault`` is a client that authenticates with ``X-Vault-Token`` only, as hvac
does; ``client`` (bearer) checks the ledger and the key through the native API.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.clock import AdjustableClock
from ledger.settings import Settings
from tests.api._access import add_principal
from tests.api._support import (
    JSON,
    all_events,
    create,
    get_key,
    head_position,
    post_ok,
    snapshot,
)
from tests.api.conftest import TOKEN, vault_client
from tests.api.test_key_use import refuse_usage_records


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def assert_vault_error(response: httpx.Response, status: int, code: str) -> str:
    """Vault's error shape (with our envelope beside it); return the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"errors", "error"}, body
    assert body["error"]["code"] == code, body
    if status == 404:
        assert body["errors"] == []
        return ""
    [message] = body["errors"]
    assert isinstance(message, str) and message
    return message


def assert_envelope(body: dict[str, Any]) -> dict[str, Any]:
    """Vault's response envelope; return its ``data``."""
    assert body["lease_id"] == ""
    assert body["renewable"] is False
    assert body["lease_duration"] == 0
    assert body["wrap_info"] is None
    assert body["auth"] is None
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert "warnings" in body
    data: dict[str, Any] = body["data"]
    return data


def vault_ok(vault: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = vault.post(f"/v1/transit/{path}", json=body)
    assert response.status_code == 200, response.text
    return assert_envelope(response.json())


def encrypt(vault: TestClient, name: str, data: bytes, **fields: Any) -> str:
    sealed = vault_ok(vault, f"encrypt/{name}", {"plaintext": b64(data), **fields})
    ciphertext: str = sealed["ciphertext"]
    return ciphertext


def key_with_versions(vault: TestClient, name: str, versions: int) -> None:
    """Create ``name`` and rotate it until ``versions`` is the primary."""
    vault_ok(vault, f"keys/{name}", {})
    for _ in range(versions - 1):
        vault_ok(vault, f"keys/{name}/rotate", {})


def usage_payloads(client: TestClient) -> list[dict[str, Any]]:
    return [
        e["payload"]
        for e in all_events(client)
        if e["type"] == "keyledger.usage.KeyUsed"
    ]


# Keys ------------------------------------------------------------------------


def test_key_create_read_list_rotate_in_vault_shapes(
    vault: TestClient, client: TestClient
) -> None:
    """Create, read, LIST and GET ?list=true, rotate: Vault's envelope and fields."""
    created = vault_ok(vault, "keys/orders", {"type": "aes256-gcm96"})
    assert created["name"] == "orders"
    assert created["type"] == "aes256-gcm96"
    assert list(created["keys"]) == ["1"] and isinstance(created["keys"]["1"], int)
    assert created["latest_version"] == 1
    assert created["min_decryption_version"] == 1
    assert created["min_encryption_version"] == 0
    assert created["deletion_allowed"] is False

    rotated = vault_ok(vault, "keys/orders/rotate", {})
    assert rotated["latest_version"] == 2
    assert rotated["keyledger"]["primary_version"] == 2
    assert get_key(client, "orders")["primary_version"] == 2

    read = vault.get("/v1/transit/keys/orders")
    assert assert_envelope(read.json())["keys"].keys() == {"1", "2"}
    vault_ok(vault, "keys/billing", {})
    listed = vault.request("LIST", "/v1/transit/keys")
    assert assert_envelope(listed.json()) == {"keys": ["billing", "orders"]}
    by_get = vault.get("/v1/transit/keys", params={"list": "true"})
    assert assert_envelope(by_get.json()) == {"keys": ["billing", "orders"]}
    assert_vault_error(vault.get("/v1/transit/keys"), 405, "METHOD_NOT_ALLOWED")


def test_creating_an_existing_key_warns_and_records_nothing(
    vault: TestClient, client: TestClient
) -> None:
    vault_ok(vault, "keys/k", {})
    before = snapshot(client, "k")
    again = vault.post("/v1/transit/keys/k", json={})
    assert again.status_code == 200
    assert again.json()["warnings"] == ["key k already existed"]
    assert snapshot(client, "k") == before


def test_missing_key_and_empty_list_are_vault_404s(vault: TestClient) -> None:
    """Vault answers 404 with an empty errors list for these two reads."""
    assert_vault_error(vault.request("LIST", "/v1/transit/keys"), 404, "KEY_NOT_FOUND")
    assert_vault_error(vault.get("/v1/transit/keys/none"), 404, "KEY_NOT_FOUND")
    # every other path answers a missing key with 400, as Vault does
    missing = vault.post("/v1/transit/encrypt/none", json={"plaintext": b64(b"x")})
    assert_vault_error(missing, 400, "KEY_NOT_FOUND")
    assert_vault_error(
        vault.post("/v1/transit/keys/none/rotate", json={}), 400, "KEY_NOT_FOUND"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"type": "rsa-2048"},
        {"derived": True},
        {"convergent_encryption": True},
        {"exportable": True},
        {"allow_plaintext_backup": True},
        {"auto_rotate_period": "24h"},
        {"unknown": 1},
    ],
)
def test_unsupported_key_options_are_refused(
    vault: TestClient, client: TestClient, body: dict[str, Any]
) -> None:
    """A key kind or option keyledger does not offer is 400; no key is created."""
    head = head_position(client)
    response = vault.post("/v1/transit/keys/odd", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in {"UNSUPPORTED_OPTION", "UNKNOWN_FIELD"}
    assert head_position(client) == head


def test_delete_is_refused_even_when_asked_to_allow_it(
    vault: TestClient, client: TestClient
) -> None:
    """Keys are never deleted: deletion_allowed and DELETE are 400; nothing changes."""
    vault_ok(vault, "keys/keep", {})
    before = snapshot(client, "keep")
    allow = vault.post("/v1/transit/keys/keep/config", json={"deletion_allowed": True})
    assert_vault_error(allow, 400, "UNSUPPORTED_OPTION")
    message = assert_vault_error(
        vault.delete("/v1/transit/keys/keep"), 400, "KEY_DELETION_NOT_SUPPORTED"
    )
    assert "schedule the destruction" in message
    assert snapshot(client, "keep") == before
    assert vault.get("/v1/transit/keys/keep").status_code == 200


# Config and trim (C01, C04) ----------------------------------------------------


def test_config_sets_the_floors_with_vault_meanings(
    vault: TestClient, client: TestClient
) -> None:
    """0 for min_encryption_version is primary-only; 0 for decryption means 1."""
    key_with_versions(vault, "k1", 3)
    data = vault_ok(
        vault,
        "keys/k1/config",
        {"min_decryption_version": 3, "min_encryption_version": 3},
    )
    assert (data["min_decryption_version"], data["min_encryption_version"]) == (3, 3)
    view = get_key(client, "k1")
    assert (view["min_decryption_version"], view["min_encryption_version"]) == (3, 3)

    # the same values again record nothing
    head = head_position(client)
    vault_ok(vault, "keys/k1/config", {"min_decryption_version": 3})
    assert head_position(client) == head

    reset = vault.post(
        "/v1/transit/keys/k1/config",
        json={"min_decryption_version": 0, "min_encryption_version": 0},
    )
    assert reset.status_code == 200, reset.text
    assert reset.json()["warnings"] == [
        "transit key numbering starts at 1; forcing minimum to 1"
    ]
    view = get_key(client, "k1")
    assert (view["min_decryption_version"], view["min_encryption_version"]) == (1, None)


@pytest.mark.parametrize(
    "body",
    [
        {"min_decryption_version": 5},
        {"min_decryption_version": -1},
        {"min_decryption_version": 2**40},
        {"min_encryption_version": -1},
    ],
)
def test_c01_config_out_of_bounds_is_400_and_records_nothing(
    vault: TestClient, client: TestClient, body: dict[str, Any]
) -> None:
    key_with_versions(vault, "k1", 3)
    before = snapshot(client, "k1")
    response = vault.post("/v1/transit/keys/k1/config", json=body)
    assert_vault_error(response, 400, "MIN_VERSION_OUT_OF_RANGE")
    assert snapshot(client, "k1") == before


def test_c04_trim_respects_the_floor_then_old_data_is_refused(
    vault: TestClient, client: TestClient
) -> None:
    vault_ok(vault, "keys/k4", {})
    old = encrypt(vault, "k4", b"old")
    for _ in range(4):
        vault_ok(vault, "keys/k4/rotate", {})
    vault_ok(vault, "keys/k4/config", {"min_decryption_version": 3})

    before = snapshot(client, "k4")
    above = vault.post("/v1/transit/keys/k4/trim", json={"min_available_version": 4})
    assert_vault_error(above, 400, "TRIM_ABOVE_MIN_DECRYPTION")
    assert snapshot(client, "k4") == before

    trimmed = vault.post("/v1/transit/keys/k4/trim", json={"min_available_version": 3})
    assert trimmed.status_code == 204, trimmed.text
    data = assert_envelope(vault.get("/v1/transit/keys/k4").json())
    assert sorted(data["keys"], key=int) == ["3", "4", "5"]
    assert data["min_available_version"] == 3
    refused = vault.post("/v1/transit/decrypt/k4", json={"ciphertext": old})
    assert_vault_error(refused, 400, "VERSION_TRIMMED")


# Using keys ------------------------------------------------------------------


def test_encrypt_decrypt_rewrap_datakey_round_trip(
    vault: TestClient, client: TestClient
) -> None:
    """vault:vN: ciphertexts, context bound, each use recorded like a native one."""
    vault_ok(vault, "keys/app", {})
    context = b64(b"tenant-1")
    sealed = vault_ok(
        vault, "encrypt/app", {"plaintext": b64(b"secret"), "context": context}
    )
    assert sealed["ciphertext"].startswith("vault:v1:")
    assert sealed["key_version"] == 1
    opened = vault_ok(
        vault, "decrypt/app", {"ciphertext": sealed["ciphertext"], "context": context}
    )
    assert opened == {"plaintext": b64(b"secret")}

    vault_ok(vault, "keys/app/rotate", {})
    rewrapped = vault_ok(
        vault, "rewrap/app", {"ciphertext": sealed["ciphertext"], "context": context}
    )
    assert rewrapped["ciphertext"].startswith("vault:v2:")
    assert rewrapped["key_version"] == 2

    wrapped = vault_ok(vault, "datakey/wrapped/app", {})
    assert set(wrapped) == {"ciphertext", "key_version"}
    plain = vault_ok(vault, "datakey/plaintext/app", {"bits": 512})
    assert len(base64.b64decode(plain["plaintext"])) == 64
    unwrapped = vault_ok(vault, "decrypt/app", {"ciphertext": plain["ciphertext"]})
    assert unwrapped["plaintext"] == plain["plaintext"]

    payloads = usage_payloads(client)
    assert [p["operation"] for p in payloads] == [
        "encrypt",
        "decrypt",
        "rewrap",
        "datakey",
        "datakey",
        "decrypt",
    ]
    assert all(p["key_name"] == "app" for p in payloads)
    assert b64(b"secret") not in str(all_events(client))
    assert plain["plaintext"] not in str(all_events(client))


def test_each_api_reads_only_its_own_ciphertext_form(
    vault: TestClient, client: TestClient
) -> None:
    vault_ok(vault, "keys/both", {})
    vault_form = encrypt(vault, "both", b"x")
    native_form = post_ok(client, "/v1/keys/both/encrypt", {"plaintext": b64(b"x")})[
        "ciphertext"
    ]
    native = client.post("/v1/keys/both/decrypt", json={"ciphertext": vault_form})
    assert native.status_code == 422 and "INVALID_CIPHERTEXT" in native.text
    transit = vault.post("/v1/transit/decrypt/both", json={"ciphertext": native_form})
    assert_vault_error(transit, 400, "INVALID_CIPHERTEXT")
    # the same sealed bytes under the other prefix do open: only the form differs
    relabelled = "vault:" + native_form.removeprefix("keyledger:")
    assert vault_ok(vault, "decrypt/both", {"ciphertext": relabelled}) == {
        "plaintext": b64(b"x")
    }


def bad_ciphertexts(good: str, other_key: str) -> list[tuple[str, str]]:
    body = good.split(":", 2)[2]
    return [
        ("vault:v0:" + body, "INVALID_CIPHERTEXT"),
        ("vault:v-1:" + body, "INVALID_CIPHERTEXT"),
        ("vault:v99999999999:" + body, "INVALID_CIPHERTEXT"),
        ("vault:v1:not base64!", "INVALID_CIPHERTEXT"),
        ("vault:1:" + body, "INVALID_CIPHERTEXT"),
        ("vault:v2:" + body, "DECRYPTION_FAILED"),  # version prefix altered
        (other_key, "DECRYPTION_FAILED"),  # from another key
        ("vault:v1:" + b64(b"\x00" * 40), "DECRYPTION_FAILED"),
    ]


def test_bad_ciphertexts_are_400_in_vault_shape(
    vault: TestClient, client: TestClient
) -> None:
    vault_ok(vault, "keys/k", {})
    vault_ok(vault, "keys/k/rotate", {})
    vault_ok(vault, "keys/k/config", {"min_encryption_version": 1})
    vault_ok(vault, "keys/other", {})
    good = encrypt(vault, "k", b"data", key_version=1)
    assert good.startswith("vault:v1:")
    for ciphertext, code in bad_ciphertexts(good, encrypt(vault, "other", b"data")):
        response = vault.post("/v1/transit/decrypt/k", json={"ciphertext": ciphertext})
        message = assert_vault_error(response, 400, code)
        assert "data" not in message and b64(b"data") not in response.text


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"plaintext": "not base64!"}, "INVALID_PLAINTEXT"),
        ({"plaintext": ""}, "INVALID_PLAINTEXT"),
        ({}, "INVALID_PLAINTEXT"),
        ({"plaintext": "eA==", "context": "%%"}, "INVALID_CONTEXT"),
        ({"plaintext": "eA==", "key_version": -1}, "INVALID_FIELD"),
        ({"plaintext": "eA==", "key_version": 2**40}, "INVALID_FIELD"),
        ({"plaintext": "eA==", "key_version": 7}, "VERSION_NOT_FOUND"),
        ({"plaintext": "eA==", "nonce": "AAAA"}, "UNSUPPORTED_OPTION"),
        ({"plaintext": "eA==", "associated_data": "AAAA"}, "UNSUPPORTED_OPTION"),
        ({"plaintext": "eA==", "what": 1}, "UNKNOWN_FIELD"),
    ],
)
def test_bad_encrypt_input_is_400(
    vault: TestClient, client: TestClient, fields: dict[str, Any], code: str
) -> None:
    vault_ok(vault, "keys/k", {})
    assert_vault_error(vault.post("/v1/transit/encrypt/k", json=fields), 400, code)


def test_key_version_zero_means_the_primary(vault: TestClient) -> None:
    vault_ok(vault, "keys/k", {})
    vault_ok(vault, "keys/k/rotate", {})
    sealed = vault_ok(vault, "encrypt/k", {"plaintext": "eA==", "key_version": 0})
    assert sealed["key_version"] == 2


def test_context_mismatch_is_the_opaque_failure(vault: TestClient) -> None:
    vault_ok(vault, "keys/k", {})
    sealed = encrypt(vault, "k", b"x", context=b64(b"a"))
    for context in (b64(b"b"), None):
        body = {"ciphertext": sealed, "context": context}
        response = vault.post("/v1/transit/decrypt/k", json=body)
        assert_vault_error(response, 400, "DECRYPTION_FAILED")


def test_body_at_the_limit_is_served_and_one_byte_over_is_413(
    vault: TestClient, client: TestClient, runtime: Runtime
) -> None:
    vault_ok(vault, "keys/big", {})
    limit = runtime.settings.max_body_bytes
    body = b'{"plaintext":"' + base64.b64encode(bytes(limit // 2)) + b'"}'
    exact = body + b" " * (limit - len(body))
    served = vault.post("/v1/transit/encrypt/big", content=exact, headers=JSON)
    assert served.status_code == 200, served.text
    head = head_position(client)
    over = vault.post("/v1/transit/encrypt/big", content=exact + b" ", headers=JSON)
    assert_vault_error(over, 413, "PAYLOAD_TOO_LARGE")
    assert head_position(client) == head


# Batches ---------------------------------------------------------------------


def test_batch_results_in_order_with_references_and_vault_status(
    vault: TestClient, client: TestClient
) -> None:
    """Any failed item makes the batch 400 (Vault), with every item's result."""
    vault_ok(vault, "keys/b", {})
    items = [
        {"plaintext": b64(b"one"), "reference": "r1"},
        {"plaintext": "not base64!", "reference": "r2"},
        {"plaintext": b64(b"three")},
    ]
    response = vault.post("/v1/transit/encrypt/b", json={"batch_input": items})
    assert response.status_code == 400, response.text
    results = assert_envelope(response.json())["batch_results"]
    assert [r["reference"] for r in results] == ["r1", "r2", ""]
    assert results[0]["ciphertext"].startswith("vault:v1:")
    assert results[1]["error_code"] == "INVALID_PLAINTEXT"
    assert isinstance(results[1]["error"], str)
    assert "error" not in results[2]

    partial = vault.post(
        "/v1/transit/encrypt/b",
        json={"batch_input": items, "partial_failure_response_code": 207},
    )
    assert partial.status_code == 207
    good = [r for r in results if "ciphertext" in r]
    opened = vault_ok(
        vault,
        "decrypt/b",
        {"batch_input": [{"ciphertext": r["ciphertext"]} for r in good]},
    )
    assert [r["plaintext"] for r in opened["batch_results"]] == [
        b64(b"one"),
        b64(b"three"),
    ]
    assert [(p["items"], p["succeeded"]) for p in usage_payloads(client)] == [
        (3, 2),
        (3, 2),
        (2, 2),
    ]


def test_c01_batch_never_swaps_the_version_asked_for(
    vault: TestClient, client: TestClient
) -> None:
    key_with_versions(vault, "k1", 3)
    vault_ok(vault, "keys/k1/config", {"min_decryption_version": 3})
    batch = [
        {"plaintext": "eA==", "key_version": 3},
        {"plaintext": "eA==", "key_version": 1},
        {"plaintext": "eA==", "key_version": 2},
    ]
    response = vault.post("/v1/transit/encrypt/k1", json={"batch_input": batch})
    assert response.status_code == 400
    results = response.json()["data"]["batch_results"]
    assert results[0]["key_version"] == 3
    assert [r.get("error_code") for r in results[1:]] == [
        "VERSION_NOT_PRIMARY",
        "VERSION_NOT_PRIMARY",
    ]


def test_a_batch_beside_item_fields_is_refused(vault: TestClient) -> None:
    vault_ok(vault, "keys/k", {})
    body = {"plaintext": "eA==", "batch_input": [{"plaintext": "eA=="}]}
    response = vault.post("/v1/transit/encrypt/k", json=body)
    assert_vault_error(response, 400, "INVALID_FIELD")
    empty = vault.post("/v1/transit/encrypt/k", json={"batch_input": []})
    assert_vault_error(empty, 400, "INVALID_FIELD")


@pytest.fixture
def big_vault(runtime: Runtime, tmp_path: Path) -> Iterator[TestClient]:
    """A Vault client of a service that accepts 4 MiB bodies."""
    settings = Settings(data_dir=tmp_path, max_body_bytes=4 * 1024 * 1024)
    big = Runtime(settings, runtime.service, runtime.clock, runtime.admin_token_digest)
    with vault_client(big) as test_client:
        yield test_client


def test_batch_of_ten_thousand_items(big_vault: TestClient) -> None:
    vault_ok(big_vault, "keys/bulk", {})
    items = [{"plaintext": b64(b"%05d" % i)} for i in range(10_000)]
    sealed = vault_ok(big_vault, "encrypt/bulk", {"batch_input": items})
    batch = [{"ciphertext": r["ciphertext"]} for r in sealed["batch_results"]]
    opened = vault_ok(big_vault, "decrypt/bulk", {"batch_input": batch})
    assert len(opened["batch_results"]) == 10_000
    assert base64.b64decode(opened["batch_results"][-1]["plaintext"]) == b"09999"
    too_many = {"batch_input": [{"plaintext": "eA=="}] * 10_001}
    response = big_vault.post("/v1/transit/encrypt/bulk", json=too_many)
    assert_vault_error(response, 400, "BATCH_TOO_LARGE")


# Lifecycle seen through transit ----------------------------------------------


def test_decrypt_after_rollback_and_after_destruction(
    vault: TestClient, client: TestClient, clock: AdjustableClock
) -> None:
    """Older data stays readable after a rollback; a destroyed version's is refused."""
    vault_ok(vault, "keys/life", {})
    v1 = encrypt(vault, "life", b"one")
    vault_ok(vault, "keys/life/rotate", {})
    v2 = encrypt(vault, "life", b"two")
    post_ok(client, "/v1/keys/life/rollback", {"version": 1})
    assert encrypt(vault, "life", b"again").startswith("vault:v1:")
    for sealed, data in ((v1, b"one"), (v2, b"two")):
        opened = vault_ok(vault, "decrypt/life", {"ciphertext": sealed})
        assert opened == {"plaintext": b64(data)}

    post_ok(client, "/v1/keys/life/rotate")
    post_ok(client, "/v1/keys/life/versions/1/schedule-destruction", {"days": 7})
    scheduled = vault.post("/v1/transit/decrypt/life", json={"ciphertext": v1})
    assert_vault_error(scheduled, 400, "VERSION_DESTROY_SCHEDULED")
    post_ok(client, "/v1/dev/clock", {"seconds": 7 * 86400})
    post_ok(client, "/v1/scheduler/run")
    destroyed = vault.post("/v1/transit/decrypt/life", json={"ciphertext": v1})
    assert_vault_error(destroyed, 400, "VERSION_DESTROYED")
    assert vault_ok(vault, "decrypt/life", {"ciphertext": v2}) == {
        "plaintext": b64(b"two")
    }


def test_a_disabled_key_refuses_the_whole_batch(
    vault: TestClient, client: TestClient
) -> None:
    vault_ok(vault, "keys/off", {})
    post_ok(client, "/v1/keys/off/disable")
    batch = {"batch_input": [{"plaintext": "eA=="}]}
    response = vault.post("/v1/transit/encrypt/off", json=batch)
    assert_vault_error(response, 400, "KEY_DISABLED")


# Tokens and permissions --------------------------------------------------------


def test_token_problems_are_vault_403s(vault: TestClient, client: TestClient) -> None:
    create(client, "k")
    path = "/v1/transit/keys/k"
    del vault.headers["X-Vault-Token"]
    assert_vault_error(vault.get(path), 403, "MISSING_TOKEN")
    assert_vault_error(
        vault.get(path, headers={"X-Vault-Token": "kl_wrong"}), 403, "INVALID_TOKEN"
    )
    bearer = vault.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200


def test_permissions_are_the_native_ones(
    vault: TestClient,
    client: TestClient,
    runtime: Runtime,
) -> None:
    """A service granted key:use on k encrypts; it cannot read, rotate, configure."""
    vault_ok(vault, "keys/k", {})
    token = add_principal(client, "a-service", ["service"])["token"]
    granted = client.post(
        "/v1/principals/a-service/grants",
        json={"keys": "k", "permissions": ["key:use"]},
    )
    assert granted.status_code == 200, granted.text
    vault.headers["X-Vault-Token"] = token
    assert encrypt(vault, "k", b"x").startswith("vault:v1:")
    head = head_position(client)
    for method, path in [
        ("GET", "keys/k"),
        ("LIST", "keys"),
        ("POST", "keys/k/rotate"),
        ("POST", "keys/k/config"),
        ("POST", "keys/k/trim"),
        ("POST", "keys/n"),
        ("DELETE", "keys/k"),
    ]:
        response = vault.request(method, f"/v1/transit/{path}", json={})
        assert_vault_error(response, 403, "FORBIDDEN")
    assert head_position(client) == head


def test_use_not_recorded_is_503_with_nothing_returned(
    vault: TestClient, client: TestClient, runtime: Runtime
) -> None:
    """If the usage entry cannot be stored, no result leaves the service (C11)."""
    vault_ok(vault, "keys/k", {})
    sealed = encrypt(vault, "k", b"data")
    head = head_position(client)
    refuse_usage_records(runtime.service)
    for path, body in [
        ("encrypt/k", {"plaintext": b64(b"data")}),
        ("decrypt/k", {"ciphertext": sealed}),
        ("decrypt/k", {"batch_input": [{"ciphertext": sealed}]}),
        ("datakey/plaintext/k", {}),
    ]:
        response = vault.post(f"/v1/transit/{path}", json=body)
        assert_vault_error(response, 503, "LEDGER_UNAVAILABLE")
        assert "vault:v" not in response.text and b64(b"data") not in response.text
    assert head_position(client) == head


# Backup and restore ------------------------------------------------------------


def configure_target(client: TestClient, folder: Path) -> None:
    folder.mkdir(parents=True)
    response = client.put(
        "/v1/backup-targets/dc1",
        json={"kind": "dir", "location": "site-1", "options": {"path": str(folder)}},
    )
    assert response.status_code == 200, response.text


def test_backup_then_restore_under_a_new_name_and_over_itself(
    vault: TestClient, client: TestClient, tmp_path: Path
) -> None:
    """A backup is a recorded keyledger backup; restore needs force over a key."""
    configure_target(client, tmp_path / "dc1")
    vault_ok(vault, "keys/src", {})
    sealed = encrypt(vault, "src", b"kept")
    backup = vault.get("/v1/transit/backup/src")
    assert backup.status_code == 200, backup.text
    bundle = assert_envelope(backup.json())["backup"]
    assert client.get("/v1/keys/src/backups").json()["backups"]

    copy = vault.post("/v1/transit/restore/copy", json={"backup": bundle})
    assert copy.status_code == 204, copy.text
    assert vault_ok(vault, "decrypt/copy", {"ciphertext": sealed}) == {
        "plaintext": b64(b"kept")
    }

    before = snapshot(client, "src")
    again = vault.post("/v1/transit/restore", json={"backup": bundle})
    assert_vault_error(again, 400, "KEY_EXISTS")
    assert snapshot(client, "src") == before
    forced = vault.post("/v1/transit/restore", json={"backup": bundle, "force": True})
    assert forced.status_code == 204, forced.text


def test_a_damaged_backup_is_refused_and_nothing_is_recorded(
    vault: TestClient, client: TestClient, tmp_path: Path
) -> None:
    configure_target(client, tmp_path / "dc1")
    vault_ok(vault, "keys/src", {})
    bundle = assert_envelope(vault.get("/v1/transit/backup/src").json())["backup"]
    raw = bytearray(base64.b64decode(bundle))
    raw[len(raw) // 2] ^= 1
    head = head_position(client)
    for backup in (b64(bytes(raw)), "not base64!"):
        response = vault.post("/v1/transit/restore/other", json={"backup": backup})
        assert response.status_code == 400, response.text
    assert head_position(client) == head
    assert vault.get("/v1/transit/keys/other").status_code == 404


def test_backup_without_a_target_is_refused(vault: TestClient) -> None:
    vault_ok(vault, "keys/src", {})
    response = vault.get("/v1/transit/backup/src")
    assert_vault_error(response, 400, "NO_BACKUP_TARGETS")


def test_writes_accept_put_as_vault_does(vault: TestClient, client: TestClient) -> None:
    """Vault takes PUT for every write: create, rotate, config, encrypt, decrypt."""
    created = vault.put("/v1/transit/keys/p", json={})
    assert created.status_code == 200, created.text
    rotated = vault.put("/v1/transit/keys/p/rotate", json={})
    assert assert_envelope(rotated.json())["latest_version"] == 2
    configured = vault.put(
        "/v1/transit/keys/p/config", json={"min_decryption_version": 2}
    )
    assert configured.status_code == 200, configured.text
    sealed = vault.put("/v1/transit/encrypt/p", json={"plaintext": b64(b"hi")})
    ciphertext = assert_envelope(sealed.json())["ciphertext"]
    opened = vault.put("/v1/transit/decrypt/p", json={"ciphertext": ciphertext})
    assert base64.b64decode(assert_envelope(opened.json())["plaintext"]) == b"hi"
    view = get_key(client, "p")
    assert (view["primary_version"], view["min_decryption_version"]) == (2, 2)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("PATCH", "/v1/transit/keys/p", id="patch-key"),
        pytest.param("GET", "/v1/transit/encrypt/p", id="get-encrypt"),
        pytest.param("DELETE", "/v1/transit/keys/p/rotate", id="delete-rotate"),
        pytest.param("PUT", "/v1/transit/keys", id="put-keys"),
    ],
)
def test_other_methods_are_405_in_vaults_envelope(
    vault: TestClient, client: TestClient, method: str, path: str
) -> None:
    """A method a transit path does not take is 405 with Vault's errors list."""
    vault_ok(vault, "keys/p", {})
    before = snapshot(client, "p")

    response = vault.request(method, path, json={})

    assert_vault_error(response, 405, "METHOD_NOT_ALLOWED")
    assert snapshot(client, "p") == before


def test_an_unknown_transit_path_is_404_in_vaults_envelope(vault: TestClient) -> None:
    """A path the transit API does not have is 404 with Vault's (empty) errors list."""
    assert_vault_error(vault.get("/v1/transit/nowhere"), 404, "NOT_FOUND")
