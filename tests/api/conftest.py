"""API fixtures: a real app over a real store, driven through ``TestClient``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.runtime import Runtime, token_digest
from domain.clock import AdjustableClock
from ledger.service import KeyService
from ledger.settings import Settings
from tests.ledger.conftest import open_replica, replica_url

# The replica fixtures, shared with the ledger tests.
__all__ = ["open_replica", "replica_url"]

TOKEN = "kl_test-admin-token-not-a-secret"


@pytest.fixture
def runtime(service: KeyService, clock: AdjustableClock, tmp_path: Path) -> Runtime:
    """A runtime over the test's store, with a known admin token and the test clock.

    It records no access facts (uses of the bootstrap token, refusals), so tests
    can count the positions of their own events; the access tests turn it on.
    """
    settings = Settings(data_dir=tmp_path, dev_clock=True, max_body_bytes=64 * 1024)
    return Runtime(settings, service, clock, token_digest(TOKEN), record_access=False)


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    """An authenticated client; responses to server errors are returned, not raised."""
    app = create_app(runtime.settings, runtime=runtime)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield test_client


# Access control: a runtime that records access facts, as the service does -------


@pytest.fixture
def recording_runtime(
    service: KeyService, clock: AdjustableClock, tmp_path: Path
) -> Runtime:
    """Like ``runtime``, but recording bootstrap-token uses and refusals."""
    settings = Settings(data_dir=tmp_path, dev_clock=True, max_body_bytes=64 * 1024)
    return Runtime(settings, service, clock, token_digest(TOKEN))


@pytest.fixture
def recording_client(recording_runtime: Runtime) -> Iterator[TestClient]:
    """A client with no token set, over ``recording_runtime``."""
    app = create_app(recording_runtime.settings, runtime=recording_runtime)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def vault_client(runtime: Runtime) -> TestClient:
    """A client that sends the token as Vault clients do: ``X-Vault-Token``."""
    app = create_app(runtime.settings, runtime=runtime)
    test_client = TestClient(app, raise_server_exceptions=False)
    test_client.headers["X-Vault-Token"] = TOKEN
    return test_client


@pytest.fixture
def vault(runtime: Runtime) -> Iterator[TestClient]:
    """A Vault transit client over the same runtime as ``client``."""
    with vault_client(runtime) as test_client:
        yield test_client
