"""Helpers shared by the API tests: snapshots of a key, refusal checks, raw bodies."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import wait_until

JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class KeySnapshot:
    """What must not change when a command is refused: view, history length, head."""

    view: dict[str, Any] | None
    history_count: int | None
    head_position: int


def head_position(client: TestClient) -> int:
    """The ledger's head position as GET /v1/ledger/head reports it."""
    response = client.get("/v1/ledger/head")
    assert response.status_code == 200, response.text
    position: int = response.json()["head"]["position"]
    return position


def all_history(
    client: TestClient, name: str, limit: int = 1000
) -> list[dict[str, Any]]:
    """Every history entry of ``name``, following the cursor to the end."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        response = client.get(
            f"/v1/keys/{name}/history", params={"after": after, "limit": limit}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["events"]
        if page["next_cursor"] is None:
            return events
        after = page["next_cursor"]


def all_events(client: TestClient, limit: int = 1000) -> list[dict[str, Any]]:
    """Every entry of the ledger feed, following ``next_after`` to the end."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        response = client.get("/v1/events", params={"after": after, "limit": limit})
        assert response.status_code == 200, response.text
        page = response.json()
        if not page["events"]:
            return events
        events += page["events"]
        after = page["next_after"]


def snapshot(client: TestClient, name: str) -> KeySnapshot:
    """The key's view, its history length and the ledger head, as the API shows them."""
    response = client.get(f"/v1/keys/{name}")
    if response.status_code == 404:
        return KeySnapshot(None, None, head_position(client))
    assert response.status_code == 200, response.text
    return KeySnapshot(
        response.json(), len(all_history(client, name)), head_position(client)
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check the status, then the envelope's code; return the error's details."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    details: dict[str, Any] = body["error"]["details"]
    assert isinstance(details, dict)
    return details


def assert_refused(
    client: TestClient,
    name: str,
    send: Callable[[], httpx.Response],
    status: int,
    code: str,
) -> dict[str, Any]:
    """Send a request that must be refused and check the key and ledger did not move."""
    before = snapshot(client, name)
    details = assert_error(send(), status, code)
    assert snapshot(client, name) == before
    return details


def create(client: TestClient, name: str, **fields: Any) -> dict[str, Any]:
    """Create a key and return the response body."""
    response = client.post("/v1/keys", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def post_ok(
    client: TestClient, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """POST a command that must succeed with 200 and return the response body."""
    response = client.post(path, json={} if body is None else body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def get_key(client: TestClient, name: str) -> dict[str, Any]:
    """The key's current view from GET /v1/keys/{name}, with its versions."""
    response = client.get(f"/v1/keys/{name}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    assert view.get("next_versions_cursor") is None, "more versions than one page"
    return view


def version_of(view: dict[str, Any], number: int) -> dict[str, Any]:
    """The entry of version ``number`` in a key view."""
    [found] = [v for v in view["versions"] if v["version"] == number]
    return found


def states(view: dict[str, Any]) -> dict[int, str]:
    """Each version's state in a key view."""
    return {v["version"]: v["state"] for v in view["versions"]}


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """A real HTTP server (uvicorn in a thread, h11) for ``app``; its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="h11",  # which also knows Vault's LIST method
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
