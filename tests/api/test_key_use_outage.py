"""Using a key while PostgreSQL refuses connections: 503, no result, no record."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from tests.api._support import assert_error, create, head_position, post_ok
from tests.conftest import database_outage, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def store_url(pg_url: str) -> str:
    """These tests are about a PostgreSQL outage only."""
    return f"{pg_url}&connect_timeout=1"


def test_use_during_database_outage_is_503_with_no_result(
    client: TestClient, pg_database: str
) -> None:
    """While the database drops sessions and refuses new ones, no use is answered."""
    create(client, "down")
    sealed = post_ok(client, "/v1/keys/down/encrypt", {"plaintext": "ZGF0YQ=="})
    head = head_position(client)

    with database_outage(pg_database):
        response = client.post(
            "/v1/keys/down/decrypt", json={"ciphertext": sealed["ciphertext"]}
        )

    assert_error(response, 503, "LEDGER_UNAVAILABLE")
    assert "ciphertext" not in response.text and "plaintext" not in response.text
    assert base64.b64encode(b"data").decode() not in response.text
    # once the connection pool has reconnected, nothing was recorded meanwhile
    wait_until(lambda: client.get("/healthz").status_code == 200)
    assert head_position(client) == head
    opened = client.post(
        "/v1/keys/down/decrypt", json={"ciphertext": sealed["ciphertext"]}
    )
    assert opened.status_code == 200, opened.text
