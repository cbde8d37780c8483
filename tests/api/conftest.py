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

TOKEN = "kl_test-admin-token-not-a-secret"


@pytest.fixture
def runtime(service: KeyService, clock: AdjustableClock, tmp_path: Path) -> Runtime:
    """A runtime over the test's store, with a known admin token and the test clock."""
    settings = Settings(data_dir=tmp_path, dev_clock=True, max_body_bytes=64 * 1024)
    return Runtime(settings, service, clock, token_digest(TOKEN))


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    """An authenticated client; responses to server errors are returned, not raised."""
    app = create_app(runtime.settings, runtime=runtime)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield test_client
