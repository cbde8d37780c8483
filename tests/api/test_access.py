"""Principals, roles and tokens: every change an event, tokens shown once, 401 codes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.clock import AdjustableClock
from tests.api._access import (
    BOOTSTRAP,
    add_principal,
    bearer,
    ledger_entries,
    ledger_types,
)
from tests.api._support import assert_error

BOOTSTRAP_USED = "keyledger.access.BootstrapTokenUsed"


def test_a_principal_gets_roles_and_a_token_shown_once(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """Creating a principal and issuing a token are events; the token is not in them."""
    client = recording_client
    issued = add_principal(client, "alice", ["custodian"], label="laptop")

    token = issued["token"]
    assert token.startswith("kl_") and issued["token_id"].startswith("tok_")
    types = ledger_types(recording_runtime)
    assert types == [
        BOOTSTRAP_USED,
        "keyledger.access.PrincipalCreated",
        "keyledger.access.TokenIssued",
    ]
    everything = json.dumps(ledger_entries(recording_runtime))
    assert token not in everything
    assert token[3:] not in everything
    assert issued["token_id"] in everything

    shown = client.get("/v1/principals/alice", headers=BOOTSTRAP).json()
    assert shown["roles"] == ["custodian"]
    [listed] = shown["tokens"]
    assert listed["token_id"] == issued["token_id"] and listed["label"] == "laptop"
    assert token not in json.dumps(shown) and "token_sha256" not in listed
    listing = client.get("/v1/principals", headers=BOOTSTRAP).json()
    assert [p["name"] for p in listing["principals"]] == ["alice"]


def test_a_token_acts_as_its_principal_with_its_current_roles(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """Events carry the principal and token id; a role change applies at once."""
    client = recording_client
    issued = add_principal(client, "alice", ["custodian"])
    alice = bearer(issued["token"])

    created = client.post("/v1/keys", json={"name": "k"}, headers=alice)
    assert created.status_code == 201, created.text
    entry = ledger_entries(recording_runtime)[-1]
    assert entry["actor"]["principal"] == "alice"
    assert entry["actor"]["token_id"] == issued["token_id"]
    assert_error(client.get("/v1/exports", headers=alice), 403, "FORBIDDEN")

    changed = client.post(
        "/v1/principals/alice/roles", json={"roles": ["auditor"]}, headers=BOOTSTRAP
    )
    assert changed.status_code == 200, changed.text
    assert ledger_entries(recording_runtime)[-1]["payload"]["previous"] == ["custodian"]
    assert client.get("/v1/exports", headers=alice).status_code == 200
    assert_error(
        client.post("/v1/keys/k/rotate", json={}, headers=alice), 403, "FORBIDDEN"
    )


def test_expired_and_revoked_tokens_are_401_with_their_own_codes(
    recording_client: TestClient,
    recording_runtime: Runtime,
    clock: AdjustableClock,
) -> None:
    """TOKEN_EXPIRED after the expiry, TOKEN_REVOKED after a revocation."""
    client = recording_client
    short = add_principal(client, "bob", ["auditor"], expires_in_seconds=60)
    long = client.post("/v1/principals/bob/tokens", json={}, headers=BOOTSTRAP).json()
    assert client.get("/v1/keys", headers=bearer(short["token"])).status_code == 200

    clock.advance(timedelta(seconds=61))
    expired = client.get("/v1/keys", headers=bearer(short["token"]))
    assert_error(expired, 401, "TOKEN_EXPIRED")
    assert expired.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/v1/keys", headers=bearer(long["token"])).status_code == 200

    revoked = client.post(
        f"/v1/tokens/{long['token_id']}/revoke",
        json={"reason": "laptop lost — ünïcode ok"},
        headers=BOOTSTRAP,
    )
    assert revoked.status_code == 200, revoked.text
    assert ledger_types(recording_runtime)[-1] == "keyledger.access.TokenRevoked"
    assert_error(
        client.get("/v1/keys", headers=bearer(long["token"])), 401, "TOKEN_REVOKED"
    )
    assert_error(
        client.get("/v1/keys", headers=bearer("kl_never-issued")), 401, "INVALID_TOKEN"
    )


REFUSED = [
    pytest.param(
        "/v1/principals",
        {"name": "alice", "roles": ["auditor"]},
        409,
        "PRINCIPAL_EXISTS",
        id="duplicate",
    ),
    pytest.param(
        "/v1/principals",
        {"name": "system", "roles": ["auditor"]},
        422,
        "INVALID_PRINCIPAL_NAME",
        id="reserved-name",
    ),
    pytest.param(
        "/v1/principals",
        {"name": "Bad Name", "roles": ["auditor"]},
        422,
        "INVALID_PRINCIPAL_NAME",
        id="bad-name",
    ),
    pytest.param(
        "/v1/principals",
        {"name": "carol", "roles": ["root"]},
        422,
        "INVALID_FIELD",
        id="unknown-role",
    ),
    pytest.param(
        "/v1/principals",
        {"name": "carol", "roles": []},
        422,
        "INVALID_FIELD",
        id="no-role",
    ),
    pytest.param(
        "/v1/principals/alice/roles",
        {"roles": ["custodian"]},
        409,
        "ROLES_UNCHANGED",
        id="same-roles",
    ),
    pytest.param(
        "/v1/principals/nobody/roles",
        {"roles": ["custodian"]},
        404,
        "PRINCIPAL_NOT_FOUND",
        id="unknown-principal",
    ),
    pytest.param(
        "/v1/principals/alice/tokens",
        {"expires_in_seconds": 10},
        422,
        "INVALID_EXPIRY",
        id="too-short-expiry",
    ),
    pytest.param(
        "/v1/principals/alice/tokens",
        {"expires_in_seconds": 400 * 24 * 3600 + 1},
        422,
        "INVALID_EXPIRY",
        id="too-long-expiry",
    ),
    pytest.param(
        "/v1/principals/alice/tokens",
        {"expires_in_seconds": -5},
        422,
        "INVALID_EXPIRY",
        id="negative-expiry",
    ),
    pytest.param(
        "/v1/principals/alice/tokens",
        {"expires_in_seconds": "60"},
        422,
        "INVALID_FIELD",
        id="expiry-not-an-integer",
    ),
    pytest.param(
        "/v1/tokens/tok_unknown/revoke",
        {"reason": "x"},
        404,
        "TOKEN_NOT_FOUND",
        id="unknown-token",
    ),
]


def test_refused_principal_commands_record_nothing(
    client: TestClient, runtime: Runtime, subtests: pytest.Subtests
) -> None:
    """Each refusal has its code, and the ledger head does not move."""
    add_principal(client, "alice", ["custodian"])
    head = runtime.service.head_position()
    for case in REFUSED:
        path, body, status, code = case.values
        with subtests.test(msg=case.id):
            assert_error(client.post(path, json=body), status, code)
            assert runtime.service.head_position() == head


def test_revoking_twice_is_409(client: TestClient, runtime: Runtime) -> None:
    """A revoked token cannot be revoked again."""
    issued = add_principal(client, "alice", ["custodian"])
    path = f"/v1/tokens/{issued['token_id']}/revoke"
    assert client.post(path, json={"reason": "left"}).status_code == 200
    head = runtime.service.head_position()
    assert_error(
        client.post(path, json={"reason": "again"}), 409, "TOKEN_ALREADY_REVOKED"
    )
    assert runtime.service.head_position() == head


def test_bootstrap_token_use_is_recorded_once_per_window_with_a_count(
    recording_client: TestClient,
    recording_runtime: Runtime,
    clock: AdjustableClock,
) -> None:
    """Five uses in a window: one event at once, the count of four when it closes."""
    client = recording_client
    for _ in range(5):
        assert client.get("/v1/keys", headers=BOOTSTRAP).status_code == 200
    assert ledger_types(recording_runtime) == [BOOTSTRAP_USED]

    clock.advance(recording_runtime.coalescer.window)
    assert client.get("/v1/keys", headers=BOOTSTRAP).status_code == 200

    entries = ledger_entries(recording_runtime)
    assert [entry["type"] for entry in entries] == [
        BOOTSTRAP_USED,
        "keyledger.access.BootstrapTokenUsesCounted",
        BOOTSTRAP_USED,
    ]
    first, counted, _ = entries
    assert counted["stream_id"] == first["stream_id"]
    assert counted["payload"]["repeats"] == 4
    assert first["actor"]["principal"] == "bootstrap-admin"


def test_open_counts_are_recorded_when_the_service_stops(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """Stopping the service records the repeats of windows still open."""
    for _ in range(3):
        recording_client.get("/v1/keys", headers=BOOTSTRAP)

    recording_runtime.coalescer.flush(everything=True)

    entries = ledger_entries(recording_runtime)
    assert [entry["payload"].get("repeats") for entry in entries] == [None, 2]


def test_rebuild_gives_the_same_access_tables(
    client: TestClient, runtime: Runtime
) -> None:
    """The access tables are a projection: a rebuild from events gives them again."""
    from projections.rebuild import rebuild

    issued = add_principal(client, "alice", ["custodian"])
    add_principal(client, "bob", ["auditor", "service"])
    client.post(f"/v1/tokens/{issued['token_id']}/revoke", json={"reason": "x"})
    grant = {"keys": "pay-*", "permissions": ["key:read", "key:use"]}
    assert client.post("/v1/principals/bob/grants", json=grant).status_code == 200
    app = runtime.service.app

    assert rebuild(app, apply=False).matched_live
    runtime.service.ledger.execute(
        [("DELETE FROM access_tokens", ()), ("DELETE FROM access_grants", ())]
    )
    repaired = rebuild(app)
    assert not repaired.matched_live
    assert rebuild(app, apply=False).matched_live
    assert_error(
        client.get("/v1/keys", headers=bearer(issued["token"])), 401, "TOKEN_REVOKED"
    )
