"""Per-key grants narrow what a principal's roles allow, key by key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api._access import add_principal, bearer
from tests.api._support import assert_error, create


def _grant(client: TestClient, name: str, keys: str, *permissions: str) -> None:
    response = client.post(
        f"/v1/principals/{name}/grants",
        json={"keys": keys, "permissions": list(permissions)},
    )
    assert response.status_code == 200, response.text


def test_a_grant_limits_a_principal_to_matching_keys(
    client: TestClient, runtime: Runtime
) -> None:
    """With a grant on payments-*, a custodian rotates those keys and no others."""
    for name in ("payments-eu", "payments-us", "hr"):
        create(client, name)
    ops = bearer(add_principal(client, "ops", ["custodian"])["token"])
    assert client.post("/v1/keys/hr/rotate", json={}, headers=ops).status_code == 200

    _grant(client, "ops", "payments-*", "key:read", "key:manage")

    rotated = client.post("/v1/keys/payments-eu/rotate", json={}, headers=ops)
    assert rotated.status_code == 200, rotated.text
    head = runtime.service.head_position()
    details = assert_error(
        client.post("/v1/keys/hr/rotate", json={}, headers=ops),
        403,
        "KEY_NOT_GRANTED",
    )
    assert details == {"permission": "key:manage", "key": "hr"}
    assert_error(client.get("/v1/keys/hr", headers=ops), 403, "KEY_NOT_GRANTED")
    assert runtime.service.head_position() == head


def test_a_grant_narrows_permissions_but_never_widens_roles(
    client: TestClient,
) -> None:
    """A read-only grant refuses commands; granting key:use gives a custodian no use."""
    create(client, "payments-eu")
    ops = bearer(add_principal(client, "ops", ["custodian"])["token"])
    _grant(client, "ops", "payments-eu", "key:read", "key:use")

    assert client.get("/v1/keys/payments-eu", headers=ops).status_code == 200
    assert_error(
        client.post("/v1/keys/payments-eu/rotate", json={}, headers=ops),
        403,
        "KEY_NOT_GRANTED",
    )
    assert_error(
        client.post(
            "/v1/keys/payments-eu/encrypt", json={"plaintext": "aGk="}, headers=ops
        ),
        403,
        "FORBIDDEN",
    )


def test_removing_the_last_grant_gives_the_roles_back_on_every_key(
    client: TestClient,
) -> None:
    """Removing a grant is an event; with no grant left, roles apply to every key."""
    create(client, "hr")
    ops = bearer(add_principal(client, "ops", ["custodian"])["token"])
    _grant(client, "ops", "payments-*", "key:manage")
    assert client.post("/v1/keys/hr/rotate", json={}, headers=ops).status_code == 403

    removed = client.post(
        "/v1/principals/ops/grants/remove", json={"keys": "payments-*"}
    )
    assert removed.status_code == 200, removed.text
    assert removed.json()["receipts"][0]["type"] == "keyledger.access.KeyGrantRemoved"
    assert removed.json()["principal"]["grants"] == []
    assert client.post("/v1/keys/hr/rotate", json={}, headers=ops).status_code == 200


REFUSED = [
    pytest.param({"keys": "pay*ments", "permissions": ["key:read"]}, 422,
                 "INVALID_KEY_PATTERN", id="star-inside"),
    pytest.param({"keys": "", "permissions": ["key:read"]}, 422,
                 "INVALID_KEY_PATTERN", id="empty"),
    pytest.param({"keys": "k", "permissions": ["admin"]}, 422, "INVALID_FIELD",
                 id="not-per-key"),
    pytest.param({"keys": "k", "permissions": []}, 422, "INVALID_FIELD",
                 id="no-permission"),
    pytest.param({"keys": "k", "permissions": ["key:read"]}, 409, "GRANT_UNCHANGED",
                 id="same-grant"),
]  # fmt: skip


def test_refused_grants_record_nothing(
    client: TestClient, runtime: Runtime, subtests: pytest.Subtests
) -> None:
    """Bad patterns and permissions are 422, a repeated grant 409; the head stays."""
    add_principal(client, "ops", ["custodian"])
    _grant(client, "ops", "k", "key:read")
    head = runtime.service.head_position()
    for case in REFUSED:
        body, status, code = case.values
        with subtests.test(msg=case.id):
            response = client.post("/v1/principals/ops/grants", json=body)
            assert_error(response, status, code)
            assert runtime.service.head_position() == head
    missing = client.post("/v1/principals/ops/grants/remove", json={"keys": "x*"})
    assert_error(missing, 404, "GRANT_NOT_FOUND")
    assert runtime.service.head_position() == head
