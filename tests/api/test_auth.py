"""Bearer authentication: every protected route answers 401 with WWW-Authenticate."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.access import Role
from ledger.store import Actor
from tests.api._support import JSON, assert_error, create, head_position
from tests.api.conftest import TOKEN


@contextmanager
def anonymous(client: TestClient) -> Iterator[TestClient]:
    """The same client without its Authorization header, restored afterwards."""
    saved = client.headers.pop("Authorization")
    try:
        yield client
    finally:
        client.headers["Authorization"] = saved


PROTECTED = [
    pytest.param("GET", "/v1/keys", None, id="list-keys"),
    pytest.param("POST", "/v1/keys", {"name": "new"}, id="create"),
    pytest.param("GET", "/v1/keys/k", None, id="get-key"),
    pytest.param("GET", "/v1/keys/k/history", None, id="history"),
    pytest.param("POST", "/v1/keys/k/rotate", {}, id="rotate"),
    pytest.param("POST", "/v1/keys/k/disable", {}, id="disable"),
    pytest.param("POST", "/v1/keys/k/rollback", {"version": 1}, id="rollback"),
    pytest.param(
        "POST", "/v1/keys/k/versions/1/compromise", {"reason": "x"}, id="compromise"
    ),
    pytest.param("GET", "/v1/events", None, id="events"),
    pytest.param("GET", "/v1/ledger/head", None, id="head"),
    pytest.param("POST", "/v1/ledger/checkpoints", None, id="checkpoint"),
    pytest.param("GET", "/v1/ledger/verify", None, id="verify"),
    pytest.param("POST", "/v1/scheduler/run", None, id="scheduler"),
    pytest.param("POST", "/v1/dev/clock", {"seconds": 60}, id="dev-clock"),
]


def test_missing_token_is_401_on_every_protected_route(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """Without Authorization every protected route is 401 MISSING_TOKEN."""
    create(client, "k")
    for case in PROTECTED:
        method, path, body = case.values
        with subtests.test(msg=case.id):
            with anonymous(client):
                response = client.request(method, path, json=body)
            assert_error(response, 401, "MISSING_TOKEN")
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert head_position(client) == 1
    clock = client.post("/v1/dev/clock", json={"seconds": 1}).json()["now"]
    assert clock == "2026-03-01T12:00:01.000000Z"


BAD_CREDENTIALS = [
    pytest.param("Bearer kl_wrong-token", "INVALID_TOKEN", id="wrong-token"),
    pytest.param(f"Bearer {TOKEN}x", "INVALID_TOKEN", id="token-with-suffix"),
    pytest.param(f"Bearer {TOKEN[:-1]}", "INVALID_TOKEN", id="token-prefix"),
    pytest.param("Basic xyz", "MALFORMED_TOKEN", id="basic-scheme"),
    pytest.param(f"Basic {TOKEN}", "MALFORMED_TOKEN", id="basic-with-real-token"),
    pytest.param(TOKEN, "MALFORMED_TOKEN", id="no-scheme"),
    pytest.param("Bearer", "MALFORMED_TOKEN", id="scheme-only"),
    pytest.param("Token " + TOKEN, "MALFORMED_TOKEN", id="other-scheme"),
]


def test_bad_credentials_are_401_with_www_authenticate(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """A wrong token or a non-Bearer scheme is 401 and records nothing."""
    for case in BAD_CREDENTIALS:
        header, code = case.values
        with subtests.test(msg=case.id):
            response = client.post(
                "/v1/keys", json={"name": "nope"}, headers={"Authorization": header}
            )
            assert_error(response, 401, code)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in response.text
            assert head_position(client) == 0


def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    """The auth scheme is matched case-insensitively, as HTTP requires."""
    response = client.get("/v1/keys", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200, response.text


def test_authentication_comes_before_body_parsing(client: TestClient) -> None:
    """An anonymous request with a broken body is 401, not 400."""
    with anonymous(client):
        response = client.post("/v1/keys", content=b"{broken", headers=JSON)
        too_large = client.post(
            "/v1/keys", content=b"{" + b" " * (128 * 1024) + b"}", headers=JSON
        )
    assert_error(response, 401, "MISSING_TOKEN")
    assert too_large.status_code in (401, 413)
    assert too_large.status_code != 500


def test_healthz_needs_no_token(client: TestClient) -> None:
    """/healthz answers without a token, with the head position."""
    create(client, "k")
    with anonymous(client):
        response = client.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "head_position": 1}


AUDITOR_TOKEN = "kl_test-auditor-token-not-a-secret"


def test_a_role_without_the_permission_is_403_and_records_nothing(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller whose roles lack a route's permission gets 403 FORBIDDEN, naming it."""
    create(client, "k")
    admin = runtime.authenticate

    def authenticate(token: str) -> Actor | None:
        if token == AUDITOR_TOKEN:
            return Actor("an-auditor", "tok_auditor", roles=frozenset({Role.AUDITOR}))
        return admin(token)

    monkeypatch.setattr(runtime, "authenticate", authenticate)
    auditor = {"Authorization": f"Bearer {AUDITOR_TOKEN}"}
    refused = client.post("/v1/keys/k/rotate", json={}, headers=auditor)
    assert_error(refused, 403, "FORBIDDEN")
    assert refused.json()["error"]["details"] == {"permission": "key:manage"}
    encrypt = client.post(
        "/v1/keys/k/encrypt", json={"plaintext": "aGk="}, headers=auditor
    )
    assert_error(encrypt, 403, "FORBIDDEN")
    assert head_position(client) == 1
    assert client.get("/v1/keys/k", headers=auditor).json()["primary_version"] == 1
