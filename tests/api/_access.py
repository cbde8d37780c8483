"""Helpers for the access-control tests: principals, tokens and ledger reads."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api.conftest import TOKEN

BOOTSTRAP = {"Authorization": f"Bearer {TOKEN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def add_principal(
    client: TestClient, name: str, roles: list[str], **token_fields: Any
) -> dict[str, Any]:
    """Create a principal through the API and issue it a token; the issue response."""
    created = client.post(
        "/v1/principals", json={"name": name, "roles": roles}, headers=BOOTSTRAP
    )
    assert created.status_code == 201, created.text
    issued = client.post(
        f"/v1/principals/{name}/tokens", json=token_fields, headers=BOOTSTRAP
    )
    assert issued.status_code == 201, issued.text
    body: dict[str, Any] = issued.json()
    return body


def ledger_types(runtime: Runtime, after: int = 0) -> list[str]:
    """The event types recorded after position ``after``, read from the store."""
    return [
        entry["type"] for entry in runtime.service.events(after=after, limit=10_000)
    ]


def ledger_entries(runtime: Runtime, after: int = 0) -> list[dict[str, Any]]:
    return runtime.service.events(after=after, limit=10_000)
