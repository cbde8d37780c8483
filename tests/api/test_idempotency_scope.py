"""Idempotency-Key: saved responses belong to one principal, on every command."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api._access import BOOTSTRAP, add_principal, bearer, ledger_types
from tests.api._support import assert_error, head_position, snapshot


def test_another_principals_key_never_replays_its_response(
    client: TestClient, runtime: Runtime
) -> None:
    """Alice sending the admin's Idempotency-Key runs her own command, not a replay."""
    alice = bearer(add_principal(client, "alice", ["custodian"])["token"])
    headers = {"Idempotency-Key": "shared-key"}
    admin = client.post("/v1/keys", json={"name": "a"}, headers=headers)
    assert admin.status_code == 201, admin.text

    mine = client.post("/v1/keys", json={"name": "a"}, headers={**headers, **alice})

    assert_error(mine, 409, "KEY_EXISTS")
    assert "Idempotent-Replayed" not in mine.headers
    again = client.post("/v1/keys", json={"name": "b"}, headers={**headers, **alice})
    assert again.status_code == 201, again.text
    assert "Idempotent-Replayed" not in again.headers
    assert again.json()["key"]["name"] == "b"
    # Each principal's own retry still replays its own response.
    replay = client.post("/v1/keys", json={"name": "b"}, headers={**headers, **alice})
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == again.json()
    admin_replay = client.post("/v1/keys", json={"name": "a"}, headers=headers)
    assert admin_replay.json() == admin.json()


def test_reuse_with_another_body_is_still_refused_per_principal(
    client: TestClient,
) -> None:
    """Within one principal, a key reused for another request is 422, nothing run."""
    headers = {"Idempotency-Key": "k-1"}
    assert client.post("/v1/keys", json={"name": "a"}, headers=headers).is_success
    position = head_position(client)

    response = client.post("/v1/keys", json={"name": "b"}, headers=headers)

    assert_error(response, 422, "IDEMPOTENCY_KEY_REUSED")
    assert head_position(client) == position
    assert_error(client.get("/v1/keys/b"), 404, "KEY_NOT_FOUND")


PRINCIPAL_COMMANDS = [
    pytest.param(
        "/v1/principals",
        {"name": "carol", "roles": ["auditor"]},
        201,
        id="create-principal",
    ),
    pytest.param(
        "/v1/principals/bob/roles", {"roles": ["auditor"]}, 200, id="change-roles"
    ),
    pytest.param(
        "/v1/principals/bob/grants",
        {"keys": "app-*", "permissions": ["key:read"]},
        200,
        id="set-grant",
    ),
]


@pytest.mark.parametrize(("path", "body", "status"), PRINCIPAL_COMMANDS)
def test_principal_commands_replay_under_the_same_key(
    client: TestClient,
    runtime: Runtime,
    path: str,
    body: dict[str, object],
    status: int,
) -> None:
    """A retried principal command replays its response and records nothing more."""
    add_principal(client, "bob", ["custodian"])
    headers = {"Idempotency-Key": "p-1", **BOOTSTRAP}
    first = client.post(path, json=body, headers=headers)
    assert first.status_code == status, first.text
    types = ledger_types(runtime)

    again = client.post(path, json=body, headers=headers)

    assert again.status_code == status, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert ledger_types(runtime) == types


def test_revoke_token_replays_under_the_same_key(
    client: TestClient, runtime: Runtime
) -> None:
    """A retried revocation replays the first answer, not 409 ALREADY_REVOKED."""
    token_id = add_principal(client, "bob", ["custodian"])["token_id"]
    headers = {"Idempotency-Key": "r-1"}
    first = client.post(
        f"/v1/tokens/{token_id}/revoke", json={"reason": "lost"}, headers=headers
    )
    assert first.status_code == 200, first.text
    types = ledger_types(runtime)

    again = client.post(
        f"/v1/tokens/{token_id}/revoke", json={"reason": "lost"}, headers=headers
    )

    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert ledger_types(runtime) == types


def test_a_token_is_never_issued_twice_under_one_key(
    client: TestClient, runtime: Runtime
) -> None:
    """The same key and body on the token route is 409: no second token, none shown."""
    add_principal(client, "bob", ["custodian"])
    headers = {"Idempotency-Key": "t-1"}
    first = client.post("/v1/principals/bob/tokens", json={}, headers=headers)
    assert first.status_code == 201, first.text
    token = first.json()["token"]
    types = ledger_types(runtime)
    tokens = client.get("/v1/principals/bob").json()["tokens"]

    again = client.post("/v1/principals/bob/tokens", json={}, headers=headers)

    assert_error(again, 409, "IDEMPOTENCY_KEY_ALREADY_USED")
    assert token not in again.text
    assert ledger_types(runtime) == types
    assert client.get("/v1/principals/bob").json()["tokens"] == tokens
    other = client.post(
        "/v1/principals/bob/tokens", json={"label": "x"}, headers=headers
    )
    assert_error(other, 422, "IDEMPOTENCY_KEY_REUSED")
    assert ledger_types(runtime) == types


def test_a_key_command_and_a_principal_command_share_one_key_space(
    client: TestClient,
) -> None:
    """A key used on a key route is refused on a principal route (another request)."""
    made = client.post(
        "/v1/keys", json={"name": "k"}, headers={"Idempotency-Key": "same"}
    )
    assert made.status_code == 201, made.text
    before = snapshot(client, "k")

    response = client.post(
        "/v1/principals",
        json={"name": "carol", "roles": ["auditor"]},
        headers={"Idempotency-Key": "same"},
    )

    assert_error(response, 422, "IDEMPOTENCY_KEY_REUSED")
    assert_error(client.get("/v1/principals/carol"), 404, "PRINCIPAL_NOT_FOUND")
    assert snapshot(client, "k") == before


@pytest.fixture
def guarded(client: TestClient) -> tuple[dict[str, str], dict[str, str]]:
    """Key k at version 2 with rollback under dual control; alice and bob."""
    assert client.post("/v1/keys", json={"name": "k"}).status_code == 201
    assert client.post("/v1/keys/k/rotate", json={}).status_code == 200
    policy = {"actions": ["rollback", "weaken-policy"], "ttl_seconds": 3600}
    assert client.post("/v1/keys/k/dual-control", json=policy).status_code == 200
    alice = bearer(add_principal(client, "alice", ["custodian"])["token"])
    bob = bearer(add_principal(client, "bob", ["custodian"])["token"])
    return alice, bob


def test_a_retried_guarded_command_replays_its_request_once(
    client: TestClient, runtime: Runtime, guarded: tuple[dict[str, str], ...]
) -> None:
    """The same key on a guarded command replays the 202: one request recorded."""
    alice, bob = guarded
    headers = {"Idempotency-Key": "rb-1"}
    first = client.post(
        "/v1/keys/k/rollback", json={"version": 1}, headers={**headers, **alice}
    )
    assert first.status_code == 202, first.text
    types = ledger_types(runtime)

    again = client.post(
        "/v1/keys/k/rollback", json={"version": 1}, headers={**headers, **alice}
    )

    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert ledger_types(runtime) == types
    # Bob's request under the same key is his own.
    his = client.post(
        "/v1/keys/k/rollback", json={"version": 1}, headers={**headers, **bob}
    )
    assert his.status_code == 202, his.text
    assert his.json()["approval"]["id"] != first.json()["approval"]["id"]
    assert ledger_types(runtime) == [*types, "keyledger.dual_control.Requested"]


def test_a_retried_approval_replays_its_answer(
    client: TestClient, runtime: Runtime, guarded: tuple[dict[str, str], ...]
) -> None:
    """A retried approve replays the first answer, not 409 APPROVAL_NOT_PENDING."""
    alice, bob = guarded
    asked = client.post("/v1/keys/k/rollback", json={"version": 1}, headers=alice)
    approval = asked.json()["approval"]["id"]
    headers = {"Idempotency-Key": "ap-1", **bob}
    first = client.post(f"/v1/approvals/{approval}/approve", json={}, headers=headers)
    assert first.status_code == 200, first.text
    types = ledger_types(runtime)

    again = client.post(f"/v1/approvals/{approval}/approve", json={}, headers=headers)

    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.json()["approval"]["status"] == "approved"
    assert ledger_types(runtime) == types
    assert client.get("/v1/keys/k").json()["primary_version"] == 1


def test_a_retried_policy_change_replays(
    client: TestClient, runtime: Runtime, guarded: tuple[dict[str, str], ...]
) -> None:
    """Setting a policy, or asking to weaken one, replays under the same key."""
    alice, _ = guarded
    stronger = {"actions": ["rollback", "weaken-policy"], "ttl_seconds": 600}
    weaker = {"actions": ["weaken-policy"], "ttl_seconds": 600}
    for body, status in ((stronger, 200), (weaker, 202)):
        headers = {"Idempotency-Key": f"pol-{status}", **alice}
        first = client.post("/v1/keys/k/dual-control", json=body, headers=headers)
        assert first.status_code == status, first.text
        types = ledger_types(runtime)

        again = client.post("/v1/keys/k/dual-control", json=body, headers=headers)

        assert again.status_code == status, again.text
        assert again.json() == first.json()
        assert ledger_types(runtime) == types


NO_REPLAY = [
    pytest.param("/v1/keys/k/encrypt", {"plaintext": "eA=="}, 422, id="encrypt"),
    pytest.param("/v1/keys/k/datakey", {}, 422, id="datakey"),
    pytest.param("/v1/ledger/checkpoints", {}, 422, id="checkpoint"),
    pytest.param("/v1/scheduler/run", {}, 422, id="scheduler"),
    pytest.param("/v1/transit/keys/k/rotate", {}, 400, id="transit-rotate"),
    pytest.param("/v1/transit/keys/t", {}, 400, id="transit-create"),
    pytest.param("/v1/transit/datakey/plaintext/k", {}, 400, id="transit-datakey"),
]


@pytest.mark.parametrize(("path", "body", "status"), NO_REPLAY)
def test_routes_that_cannot_replay_refuse_the_header(
    client: TestClient,
    runtime: Runtime,
    path: str,
    body: dict[str, object],
    status: int,
) -> None:
    """Where no answer can be replayed, an Idempotency-Key is refused, not ignored."""
    assert client.post("/v1/keys", json={"name": "k"}).status_code == 201
    before = ledger_types(runtime)

    response = client.post(path, json=body, headers={"Idempotency-Key": "x-1"})

    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == "IDEMPOTENCY_KEY_NOT_SUPPORTED"
    if status == 400:  # the Vault transit API: Vault's envelope too
        assert response.json()["errors"]
    assert ledger_types(runtime) == before
    # Checked after the token: a caller without one is told that first.
    anonymous = client.post(
        path,
        json=body,
        headers={"Idempotency-Key": "x-1", "Authorization": "Bearer kl_nope"},
    )
    assert anonymous.status_code in (401, 403), anonymous.text
