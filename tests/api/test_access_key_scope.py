"""Grants reach every route that names a key: native, Vault transit, approvals, lists.

Key use is default-deny: a ``service`` uses only the keys a grant gives it.
Every refusal here is a 403 that changes no key and records only the refusal.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api._access import add_principal, bearer
from tests.api._support import assert_error, create, snapshot
from tests.api.test_backups import configure_targets, take

PLAINTEXT = base64.b64encode(b"hello").decode("ascii")


def _grant(client: TestClient, name: str, keys: str, *permissions: str) -> None:
    response = client.post(
        f"/v1/principals/{name}/grants",
        json={"keys": keys, "permissions": list(permissions)},
    )
    assert response.status_code == 200, response.text


def _vault(headers: dict[str, str]) -> dict[str, str]:
    """The same token as Vault sends it (``Authorization`` beside it stays ours)."""
    return {**headers, "X-Vault-Token": headers["Authorization"].split()[1]}


def _refused(
    client: TestClient,
    send: Callable[[], httpx.Response],
    code: str,
    key: str = "hr",
) -> dict[str, Any]:
    """A 403 with ``code`` that changes neither the key nor the ledger."""
    before = snapshot(client, key)
    response = send()
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == code, response.text
    assert snapshot(client, key) == before
    details: dict[str, Any] = response.json()["error"]["details"]
    return details


@pytest.fixture
def keys(client: TestClient) -> list[str]:
    names = ["hr", "payments-eu", "payments-us"]
    for name in names:
        create(client, name)
    return names


def test_a_service_without_grants_uses_no_key(
    client: TestClient, keys: list[str]
) -> None:
    """Native and transit encryption by an ungranted service are 403 KEY_NOT_GRANTED."""
    app = bearer(add_principal(client, "app", ["service"])["token"])

    details = _refused(
        client,
        lambda: client.post(
            "/v1/keys/hr/encrypt", json={"plaintext": PLAINTEXT}, headers=app
        ),
        "KEY_NOT_GRANTED",
    )
    assert details == {"permission": "key:use", "key": "hr"}
    _refused(
        client,
        lambda: client.post(
            "/v1/transit/encrypt/hr", json={"plaintext": PLAINTEXT}, headers=_vault(app)
        ),
        "KEY_NOT_GRANTED",
    )


def test_a_service_uses_only_the_keys_it_is_granted(
    client: TestClient, keys: list[str]
) -> None:
    """Granted payments-*, a service encrypts there (both APIs) and nowhere else."""
    app = bearer(add_principal(client, "app", ["service"])["token"])
    _grant(client, "app", "payments-*", "key:use")

    native = client.post(
        "/v1/keys/payments-eu/encrypt", json={"plaintext": PLAINTEXT}, headers=app
    )
    assert native.status_code == 200, native.text
    vault = client.post(
        "/v1/transit/encrypt/payments-us",
        json={"plaintext": PLAINTEXT},
        headers=_vault(app),
    )
    assert vault.status_code == 200, vault.text
    _refused(
        client,
        lambda: client.post(
            "/v1/keys/hr/encrypt", json={"plaintext": PLAINTEXT}, headers=app
        ),
        "KEY_NOT_GRANTED",
    )


TRANSIT_ON_HR = [
    pytest.param("POST", "/v1/transit/encrypt/hr",
                 {"plaintext": PLAINTEXT}, id="encrypt"),
    pytest.param("POST", "/v1/transit/encrypt/hr",
                 {"batch_input": [{"plaintext": PLAINTEXT}]}, id="batch encrypt"),
    pytest.param("POST", "/v1/transit/decrypt/hr",
                 {"ciphertext": "vault:v1:AAAA"}, id="decrypt"),
    pytest.param("POST", "/v1/transit/decrypt/hr",
                 {"batch_input": [{"ciphertext": "vault:v1:AAAA"}]},
                 id="batch decrypt"),
    pytest.param("POST", "/v1/transit/rewrap/hr",
                 {"ciphertext": "vault:v1:AAAA"}, id="rewrap"),
    pytest.param("POST", "/v1/transit/datakey/plaintext/hr", {}, id="datakey"),
    pytest.param("GET", "/v1/transit/keys/hr", None, id="read"),
    pytest.param("POST", "/v1/transit/keys/hr/rotate", {}, id="rotate"),
    pytest.param("POST", "/v1/transit/keys/hr/config",
                 {"min_decryption_version": 1}, id="config"),
    pytest.param("POST", "/v1/transit/keys/hr/trim",
                 {"min_available_version": 1}, id="trim"),
    pytest.param("GET", "/v1/transit/backup/hr", None, id="backup"),
]  # fmt: skip


def test_grants_hold_on_every_transit_route_that_names_a_key(
    client: TestClient, keys: list[str], subtests: pytest.Subtests
) -> None:
    """A principal with every role but granted only payments-* is refused on hr."""
    every = ["custodian", "service", "backup-operator", "auditor"]
    ops = _vault(bearer(add_principal(client, "ops", every)["token"]))
    _grant(
        client,
        "ops",
        "payments-*",
        "key:read",
        "key:manage",
        "key:use",
        "backup:manage",
        "backup:restore",
    )
    for case in TRANSIT_ON_HR:
        method, path, body = case.values
        with subtests.test(msg=case.id):
            details = _refused(
                client,
                lambda method=method, path=path, body=body: client.request(
                    method, path, json=body, headers=ops
                ),
                "KEY_NOT_GRANTED",
            )
            assert details["key"] == "hr"
    read = client.get("/v1/transit/keys/payments-eu", headers=ops)
    assert read.status_code == 200, read.text


def test_a_restore_checks_grants_on_the_bundles_key_and_the_key_restored_into(
    client: TestClient, runtime: Runtime, tmp_path: Path, keys: list[str]
) -> None:
    """Granted payments-*, a custodian restores no hr bundle, nor a copy named hr-2."""
    configure_targets(client, tmp_path / "targets")
    hr_backup = take(client, "hr")["backup_id"]
    eu_backup = take(client, "payments-eu")["backup_id"]
    hr_bundle = base64.b64encode(runtime.backups.read_bundle(hr_backup)).decode()
    ops = bearer(add_principal(client, "ops", ["custodian"])["token"])
    _grant(client, "ops", "payments-*", "key:read", "key:manage", "backup:restore")

    _refused(
        client,
        lambda: client.post(
            "/v1/transit/restore", json={"backup": hr_bundle}, headers=_vault(ops)
        ),
        "KEY_NOT_GRANTED",
    )
    _refused(
        client,
        lambda: client.post(
            "/v1/keys/payments-eu/restore",
            json={"backup_id": eu_backup, "into": "hr-2"},
            headers=ops,
        ),
        "KEY_NOT_GRANTED",
        key="hr-2",
    )
    copy = client.post(
        "/v1/keys/payments-eu/restore",
        json={"backup_id": eu_backup, "into": "payments-eu-2"},
        headers=ops,
    )
    assert copy.status_code == 200, copy.text


def test_an_approver_needs_grants_on_the_requests_key(
    client: TestClient, keys: list[str]
) -> None:
    """A custodian granted only payments-* cannot approve a rollback of hr."""
    assert client.post("/v1/keys/hr/rotate", json={}).status_code == 200
    policy = client.post(
        "/v1/keys/hr/dual-control", json={"actions": ["rollback"], "ttl_seconds": 600}
    )
    assert policy.status_code == 200, policy.text
    alice = bearer(add_principal(client, "alice", ["custodian"])["token"])
    bob = bearer(add_principal(client, "bob", ["custodian"])["token"])
    _grant(client, "bob", "payments-*", "key:read", "key:manage")
    asked = client.post("/v1/keys/hr/rollback", json={"version": 1}, headers=alice)
    assert asked.status_code == 202, asked.text
    approval = asked.json()["approval"]["id"]

    details = _refused(
        client,
        lambda: client.post(f"/v1/approvals/{approval}/approve", headers=bob),
        "KEY_NOT_GRANTED",
    )

    assert details == {"permission": "key:manage", "key": "hr"}
    assert client.get(f"/v1/approvals/{approval}").json()["status"] == "pending"


def test_listings_show_a_principal_with_grants_only_its_keys(
    client: TestClient, keys: list[str]
) -> None:
    """GET /v1/keys pages over the granted keys only; so does the transit LIST."""
    for name in ("payments-fr", "zz"):
        create(client, name)
    ops = bearer(add_principal(client, "ops", ["custodian"])["token"])
    everyone = client.get("/v1/keys", headers=ops).json()["keys"]
    assert len(everyone) == 5  # without grants a custodian lists every key
    _grant(client, "ops", "payments-*", "key:read")

    names, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = client.get("/v1/keys", params=params, headers=ops)
        assert page.status_code == 200, page.text
        assert len(page.json()["keys"]) <= 2
        names += [k["name"] for k in page.json()["keys"]]
        after = page.json()["next_cursor"]
        if after is None:
            break
    assert names == ["payments-eu", "payments-fr", "payments-us"]
    listed = client.get("/v1/transit/keys?list=true", headers=_vault(ops))
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"]["keys"] == names
    assert_error(client.get("/v1/keys/hr", headers=ops), 403, "KEY_NOT_GRANTED")
