"""Reads while PostgreSQL is unreachable answer 503, never 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import database_outage, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def store_url(pg_url: str) -> str:
    """These tests need a database that can be taken away."""
    return f"{pg_url}&connect_timeout=1"


def test_reads_during_an_outage_are_503(client: TestClient, pg_database: str) -> None:
    """Head, verify and key reads are LEDGER_UNAVAILABLE while the database is down."""
    assert client.post("/v1/keys", json={"name": "seen"}).status_code == 201
    with database_outage(pg_database):
        for path in ("/v1/ledger/head", "/v1/keys/seen", "/v1/events", "/healthz"):
            response = client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["error"]["code"] == "LEDGER_UNAVAILABLE"

    wait_until(lambda: client.get("/healthz").status_code == 200)
    assert client.get("/v1/keys/seen").status_code == 200
