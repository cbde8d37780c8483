"""The primary's side of replication: the long-polled feed, wrapped material, status."""

from __future__ import annotations

import base64
import threading
from datetime import timedelta

from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.access import Role
from domain.clock import AdjustableClock
from ledger.material import fingerprint
from ledger.store import Actor
from tests.api._support import assert_error, create, head_position


def test_feed_long_poll_answers_as_soon_as_an_entry_is_recorded(
    client: TestClient,
) -> None:
    create(client, "first")
    answer: dict[str, object] = {}
    started = threading.Event()

    def poll() -> None:
        started.set()
        answer.update(client.get("/v1/events", params={"after": 1, "wait": 30}).json())

    thread = threading.Thread(target=poll)
    thread.start()
    started.wait()
    create(client, "second")
    thread.join(timeout=60)
    assert not thread.is_alive()
    events = answer["events"]
    assert isinstance(events, list)
    assert [event["position"] for event in events] == [2]


def test_feed_long_poll_of_a_quiet_ledger_answers_empty(client: TestClient) -> None:
    create(client, "only")
    page = client.get("/v1/events", params={"after": 1, "wait": 0.2}).json()
    assert page == {"events": [], "next_after": 1, "head_position": 1}


def test_feed_wait_is_bounded(client: TestClient) -> None:
    assert_error(client.get("/v1/events", params={"wait": 31}), 422, "INVALID_FIELD")
    assert_error(client.get("/v1/events", params={"wait": -1}), 422, "INVALID_FIELD")


def test_material_is_served_wrapped_and_matches_the_fingerprint(
    client: TestClient, runtime: Runtime, clock: AdjustableClock
) -> None:
    key = create(client, "m")
    key_id = key["key"]["key_id"]
    answer = client.get("/v1/replication/material", params={"versions": f"{key_id}:1"})
    assert answer.status_code == 200
    [item] = answer.json()["material"]
    assert (item["key_id"], item["version"]) == (key_id, 1)
    wrapped = base64.b64decode(item["wrapped"])
    material = runtime.service.kek.unwrap(wrapped, key_id=key_id, version=1)
    assert fingerprint(material) == key["versions"][0]["fingerprint"]
    assert material not in answer.content

    client.post("/v1/keys/m/rotate")
    client.post("/v1/keys/m/versions/1/schedule-destruction", json={"days": 7})
    clock.advance(timedelta(days=7))
    client.post("/v1/scheduler/run")
    # destroyed material is left out, named with the entry that erased it;
    # version 2 is still there
    both = f"{key_id}:1,{key_id}:2"
    kept = client.get("/v1/replication/material", params={"versions": both})
    assert [item["version"] for item in kept.json()["material"]] == [2]
    [erased] = kept.json()["erased"]
    assert (erased["key_id"], erased["version"]) == (key_id, 1)
    erasing = client.get(
        "/v1/events", params={"after": erased["position"] - 1, "limit": 1}
    ).json()["events"][0]
    assert erasing["type"] == "keyledger.key.VersionDestroyed"
    assert erasing["payload"]["version"] == 1
    # a version that never existed is neither material nor erased
    never = client.get("/v1/replication/material", params={"versions": f"{key_id}:9"})
    assert never.json() == {"material": [], "erased": []}
    for bad, code in [
        ("not-a-uuid:1", "INVALID_KEY_ID"),
        (f"{key_id}:0", "INVALID_VERSION"),
        (f"{key_id}:x", "INVALID_VERSION"),
        (",".join([f"{key_id}:1"] * 201), "INVALID_FIELD"),
    ]:
        assert_error(
            client.get("/v1/replication/material", params={"versions": bad}), 422, code
        )


def test_material_needs_the_replication_permission(
    client: TestClient, runtime: Runtime
) -> None:
    key_id = create(client, "p")["key"]["key_id"]
    auditor = Actor("auditor", "tok_a", roles=frozenset({Role.AUDITOR}))
    replica = Actor("replica", "tok_r", roles=frozenset({Role.REPLICA}))
    runtime.authenticate = lambda token: auditor  # type: ignore[method-assign]
    asked = {"versions": f"{key_id}:1"}
    assert_error(client.get("/v1/replication/material", params=asked), 403, "FORBIDDEN")
    runtime.authenticate = lambda token: replica  # type: ignore[method-assign]
    assert client.get("/v1/replication/material", params=asked).status_code == 200
    assert client.get("/v1/events").status_code == 200
    assert head_position(client) == 1


def test_status_of_a_primary(client: TestClient) -> None:
    create(client, "s")
    status = client.get("/v1/replication/status")
    assert status.status_code == 200
    assert status.json()["role"] == "primary"
    assert status.json()["state"] == "primary"
    assert status.json()["fenced_by"] is None
    assert status.json()["applied"]["position"] == 1
    assert status.headers["Ledger-Position"] == "1"
