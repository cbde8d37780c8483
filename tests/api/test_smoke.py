"""A first end-to-end pass through the API on both stores."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_create_then_rotate_returns_receipts(client: TestClient) -> None:
    """Creating and rotating a key return receipts with contiguous positions."""
    created = client.post("/v1/keys", json={"name": "smoke"})
    assert created.status_code == 201
    rotated = client.post("/v1/keys/smoke/rotate", json={"expected_version": 1})
    assert rotated.status_code == 200
    assert rotated.headers["Ledger-Position"] == "2"
    assert rotated.json()["key"]["primary_version"] == 2
    assert client.get("/v1/ledger/verify").json()["ok"] is True
