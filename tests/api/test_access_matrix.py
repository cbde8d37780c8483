"""Every route against every role, and against absent, expired and revoked tokens.

The routes come from the app itself, and what each needs from its ``require``
dependency, so a route added later is covered without editing this file. A route
with no ``require`` must be listed in ``PUBLIC`` or the test fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from api.deps import api_routes, required_permissions
from api.runtime import Runtime
from domain.access import ROLE_PERMISSIONS, Role
from domain.clock import AdjustableClock
from ledger.service import KeyService
from tests.api._access import BOOTSTRAP, add_principal, bearer

# Routes anyone may call, without a token.
PUBLIC = {("GET", "/healthz")}

# Values for path parameters, by name; anything else gets "x".
PATH_VALUES = {"name": "k", "version": "1", "token_id": "tok_unknown"}


@dataclass(frozen=True)
class Caller:
    """Who sends the request, and the 401 code it must get if it is refused."""

    name: str
    headers: dict[str, str]
    role: Role | None = None
    refused_with: str | None = None


def _fill(path: str) -> str:
    return re.sub(
        r"\{([^}:]+)(:[^}]*)?\}", lambda m: PATH_VALUES.get(m.group(1), "x"), path
    )


def _routes(client: TestClient) -> list[tuple[str, str, APIRoute]]:
    routes = api_routes(client.app)  # type: ignore[arg-type]
    assert len(routes) > 30
    return routes


def _headers(token: str) -> dict[str, str]:
    # Vault-style routes read X-Vault-Token; every other route reads Bearer.
    return {**bearer(token), "X-Vault-Token": token}


def _token(client: TestClient, name: str, roles: list[str]) -> str:
    token: str = add_principal(client, name, roles)["token"]
    return token


def _callers(client: TestClient, clock: AdjustableClock) -> list[Caller]:
    callers = [
        Caller(
            role.value,
            _headers(add_principal(client, f"p-{role}", [role])["token"]),
            role,
        )
        for role in Role
    ]
    # Key use needs a grant (default-deny); the matrix checks the role table.
    granted = client.post(
        f"/v1/principals/p-{Role.SERVICE}/grants",
        json={"keys": "*", "permissions": ["key:use"]},
        headers=BOOTSTRAP,
    )
    assert granted.status_code == 200, granted.text
    every_role = [role.value for role in Role]
    expired = add_principal(client, "p-expired", every_role, expires_in_seconds=60)
    revoked = add_principal(client, "p-revoked", every_role)
    response = client.post(
        f"/v1/tokens/{revoked['token_id']}/revoke",
        json={"reason": "matrix"},
        headers=BOOTSTRAP,
    )
    assert response.status_code == 200, response.text
    clock.advance(timedelta(seconds=61))
    return [
        *callers,
        Caller("expired", _headers(expired["token"]), refused_with="TOKEN_EXPIRED"),
        Caller("revoked", _headers(revoked["token"]), refused_with="TOKEN_REVOKED"),
        Caller("no-token", {}, refused_with="MISSING_TOKEN"),
        Caller("unknown", _headers("kl_unknown"), refused_with="INVALID_TOKEN"),
    ]


def _error_code(response: httpx.Response) -> str | None:
    if response.headers.get("content-type") != "application/json":
        return None
    body = response.json()
    return body.get("error", {}).get("code") if isinstance(body, dict) else None


REFUSAL_TYPES = {
    "keyledger.access.RequestRefused",
    "keyledger.access.RefusalsRepeated",
}


def _only_refusals_recorded(service: KeyService, head: int) -> None:
    """A refused request adds at most its refusal (and a closed window's count)."""
    added = [entry["type"] for entry in service.events(after=head)]
    assert set(added) <= REFUSAL_TYPES and len(added) <= 2, added


def test_every_route_declares_its_permission(recording_client: TestClient) -> None:
    """A route without ``require`` is a mistake unless it is meant to be public."""
    undeclared = {
        (method, path)
        for method, path, route in _routes(recording_client)
        if required_permissions(route) is None
    }
    assert undeclared == PUBLIC


def test_every_route_against_every_caller(
    recording_client: TestClient,
    recording_runtime: Runtime,
    clock: AdjustableClock,
    subtests: pytest.Subtests,
) -> None:
    """401 for bad tokens, 403 for roles without the permission, else neither.

    A refused request records nothing but its refusal.
    """
    client = recording_client
    assert (
        client.post("/v1/keys", json={"name": "k"}, headers=BOOTSTRAP).status_code
        == 201
    )
    callers = _callers(client, clock)
    service = recording_runtime.service
    for method, path, route in _routes(client):
        needed = required_permissions(route)
        if needed is None:
            continue
        url = _fill(path)
        for caller in callers:
            with subtests.test(msg=f"{method} {path} as {caller.name}"):
                head = service.head_position()
                body = {} if method in ("POST", "PUT", "PATCH") else None
                response = client.request(
                    method, url, json=body, headers=caller.headers
                )
                code = (
                    response.json().get("error", {}).get("code")
                    if response.headers.get("content-type") == "application/json"
                    else None
                )
                if caller.role is None:
                    # Vault answers a token problem with 403, so its API does too.
                    vault = path.startswith("/v1/transit/")
                    assert response.status_code == (403 if vault else 401), (
                        response.text
                    )
                    assert code == caller.refused_with
                    _only_refusals_recorded(service, head)
                elif ROLE_PERMISSIONS[caller.role].isdisjoint(needed):
                    assert response.status_code == 403, response.text
                    assert code == "FORBIDDEN"
                    _only_refusals_recorded(service, head)
                else:
                    assert response.status_code not in (401, 403), response.text
                    assert response.status_code < 500, response.text
