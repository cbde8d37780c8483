"""The Vault transit API while PostgreSQL refuses connections: Vault's 503."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from tests.api._support import head_position
from tests.api.test_transit import assert_vault_error, encrypt, vault_ok
from tests.conftest import database_outage, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def store_url(pg_url: str) -> str:
    """These tests are about a PostgreSQL outage only."""
    return f"{pg_url}&connect_timeout=1"


def test_use_during_database_outage_is_503_with_no_result(
    vault: TestClient, client: TestClient, pg_database: str
) -> None:
    vault_ok(vault, "keys/down", {})
    sealed = encrypt(vault, "down", b"data")
    head = head_position(client)

    with database_outage(pg_database):
        decrypt = vault.post("/v1/transit/decrypt/down", json={"ciphertext": sealed})
        read = vault.get("/v1/transit/keys/down")

    assert_vault_error(decrypt, 503, "LEDGER_UNAVAILABLE")
    assert_vault_error(read, 503, "LEDGER_UNAVAILABLE")
    assert base64.b64encode(b"data").decode() not in decrypt.text
    wait_until(lambda: client.get("/healthz").status_code == 200)
    assert head_position(client) == head
    opened = vault.post("/v1/transit/decrypt/down", json={"ciphertext": sealed})
    assert opened.status_code == 200, opened.text
