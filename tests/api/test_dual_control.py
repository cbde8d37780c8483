"""Dual control: a guarded action waits for a different principal's timely approval."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.clock import AdjustableClock
from domain.dual_control import ApprovalRequest
from ledger.dual_control import DualControl
from ledger.service import KeyService
from tests.api._access import add_principal, bearer
from tests.api._support import assert_error, create, post_ok, snapshot


@pytest.fixture
def custodians(client: TestClient) -> tuple[dict[str, str], dict[str, str]]:
    """Key k at version 2 under dual control for rollback, destruction, weakening."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    policy = client.post(
        "/v1/keys/k/dual-control",
        json={
            "actions": ["rollback", "schedule-destruction", "weaken-policy"],
            "ttl_seconds": 3600,
        },
    )
    assert policy.status_code == 200, policy.text
    alice = bearer(add_principal(client, "alice", ["custodian"])["token"])
    bob = bearer(add_principal(client, "bob", ["custodian"])["token"])
    return alice, bob


def _request(
    client: TestClient, path: str, body: dict[str, Any], who: dict[str, str]
) -> dict[str, Any]:
    response = client.post(path, json=body, headers=who)
    assert response.status_code == 202, response.text
    approval: dict[str, Any] = response.json()["approval"]
    assert approval["status"] == "pending"
    return approval


def test_a_rollback_happens_only_when_another_principal_approves(
    client: TestClient, custodians: tuple[dict[str, str], dict[str, str]]
) -> None:
    """The request changes nothing; the approval runs it, as the approver."""
    alice, bob = custodians
    before = snapshot(client, "k")
    approval = _request(client, "/v1/keys/k/rollback", {"version": 1}, alice)
    assert snapshot(client, "k").view == before.view

    approved = client.post(f"/v1/approvals/{approval['id']}/approve", headers=bob)

    assert approved.status_code == 200, approved.text
    assert approved.json()["approval"]["status"] == "approved"
    assert client.get("/v1/keys/k").json()["primary_version"] == 1
    history = client.get("/v1/keys/k/history").json()["events"]
    assert history[-1]["actor"]["principal"] == "bob"


def test_self_approval_is_refused_and_changes_nothing(
    client: TestClient,
    runtime: Runtime,
    custodians: tuple[dict[str, str], dict[str, str]],
) -> None:
    """The requester cannot approve its own request: 409 SELF_APPROVAL."""
    alice, _ = custodians
    approval = _request(client, "/v1/keys/k/versions/1/schedule-destruction", {}, alice)
    head = runtime.service.head_position()

    refused = client.post(f"/v1/approvals/{approval['id']}/approve", headers=alice)

    assert_error(refused, 409, "SELF_APPROVAL")
    assert runtime.service.head_position() == head
    assert client.get(f"/v1/approvals/{approval['id']}").json()["status"] == "pending"
    states = {
        v["version"]: v["state"] for v in client.get("/v1/keys/k").json()["versions"]
    }
    assert states[1] == "enabled"


def test_an_approval_after_expiry_is_refused_and_the_expiry_recorded(
    client: TestClient,
    runtime: Runtime,
    clock: AdjustableClock,
    custodians: tuple[dict[str, str], dict[str, str]],
) -> None:
    """Past its time limit a request expires: 409, an Expired event, no action."""
    alice, bob = custodians
    approval = _request(client, "/v1/keys/k/rollback", {"version": 1}, alice)
    clock.advance(timedelta(seconds=3600))

    late = client.post(f"/v1/approvals/{approval['id']}/approve", headers=bob)

    assert_error(late, 409, "APPROVAL_EXPIRED")
    assert client.get(f"/v1/approvals/{approval['id']}").json()["status"] == "expired"
    types = [e["type"] for e in runtime.service.events(limit=1000)]
    assert types[-1] == "keyledger.dual_control.Expired"
    assert client.get("/v1/keys/k").json()["primary_version"] == 2
    again = client.post(f"/v1/approvals/{approval['id']}/approve", headers=bob)
    assert_error(again, 409, "APPROVAL_NOT_PENDING")


EXPIRED = "keyledger.dual_control.Expired"


def _types(runtime: Runtime) -> list[str]:
    return [e["type"] for e in runtime.service.events(limit=10_000)]


def test_the_scheduler_records_an_expiry_nobody_asked_about(
    client: TestClient,
    runtime: Runtime,
    clock: AdjustableClock,
    custodians: tuple[dict[str, str], dict[str, str]],
) -> None:
    """Not a second early; at the limit one Expired by the system, never again."""
    alice, bob = custodians
    approval = _request(client, "/v1/keys/k/rollback", {"version": 1}, alice)
    head = runtime.service.head_position()

    clock.advance(timedelta(seconds=3599))
    early = post_ok(client, "/v1/scheduler/run")
    assert early["expired"] == []
    assert runtime.service.head_position() == head

    clock.advance(timedelta(seconds=1))
    ran = post_ok(client, "/v1/scheduler/run")
    again = post_ok(client, "/v1/scheduler/run")

    assert [(a["id"], a["status"]) for a in ran["expired"]] == [
        (approval["id"], "expired")
    ]
    assert again["expired"] == []
    [entry] = runtime.service.events(after=head, limit=10)
    assert entry["type"] == EXPIRED
    assert entry["subject"] == "key:k"
    assert entry["actor"]["principal"] == "system"
    assert client.get(f"/v1/approvals/{approval['id']}").json()["status"] == "expired"
    late = client.post(f"/v1/approvals/{approval['id']}/approve", headers=bob)
    assert_error(late, 409, "APPROVAL_NOT_PENDING")
    assert client.get("/v1/keys/k").json()["primary_version"] == 2


def test_two_schedulers_record_an_expiry_exactly_once(
    client: TestClient,
    runtime: Runtime,
    clock: AdjustableClock,
    open_service: Callable[..., KeyService],
    custodians: tuple[dict[str, str], dict[str, str]],
) -> None:
    """Two processes' schedulers expiring at once: one Expired, the other skips;
    approved and not-yet-due requests are left alone."""
    alice, bob = custodians
    lapsed = _request(client, "/v1/keys/k/rollback", {"version": 1}, alice)
    done = _request(client, "/v1/keys/k/versions/1/schedule-destruction", {}, alice)
    approved = client.post(f"/v1/approvals/{done['id']}/approve", headers=bob)
    assert approved.status_code == 200, approved.text
    clock.advance(timedelta(seconds=3600))
    post_ok(client, "/v1/keys/k/rotate")  # version 1 waits for destruction
    fresh = _request(client, "/v1/keys/k/rollback", {"version": 2}, alice)
    workers = [runtime.dual_control, DualControl(open_service().app, clock)]
    barrier = threading.Barrier(len(workers))

    def run(worker: DualControl) -> list[ApprovalRequest]:
        barrier.wait()
        return worker.expire_due()

    with ThreadPoolExecutor(len(workers)) as pool:
        results = list(pool.map(run, workers))

    assert sorted(str(p.id) for found in results for p in found) == [lapsed["id"]]
    assert _types(runtime).count(EXPIRED) == 1
    statuses = {
        item["id"]: client.get(f"/v1/approvals/{item['id']}").json()["status"]
        for item in (lapsed, done, fresh)
    }
    assert statuses == {
        lapsed["id"]: "expired",
        done["id"]: "approved",
        fresh["id"]: "pending",
    }
    assert [worker.expire_due() for worker in workers] == [[], []]


def test_weakening_the_policy_needs_approval_and_strengthening_does_not(
    client: TestClient, custodians: tuple[dict[str, str], dict[str, str]]
) -> None:
    """Dropping an action waits for a second principal, then the policy changes."""
    alice, bob = custodians
    weaker = {"actions": ["weaken-policy"], "ttl_seconds": 3600}
    approval = _request(client, "/v1/keys/k/dual-control", weaker, alice)
    assert client.get("/v1/keys/k/dual-control").json()["actions"] == [
        "rollback",
        "schedule-destruction",
        "weaken-policy",
    ]
    approved = client.post(f"/v1/approvals/{approval['id']}/approve", headers=bob)
    assert approved.status_code == 200, approved.text
    assert client.get("/v1/keys/k/dual-control").json()["actions"] == ["weaken-policy"]
    # Without rollback under dual control, a rollback runs at once.
    direct = client.post("/v1/keys/k/rollback", json={"version": 1}, headers=alice)
    assert direct.status_code == 200, direct.text


def test_an_approved_action_that_is_refused_is_recorded_as_failed(
    client: TestClient,
    runtime: Runtime,
    custodians: tuple[dict[str, str], dict[str, str]],
) -> None:
    """If the key moved so the action no longer holds, the failure is an event."""
    alice, bob = custodians
    approval = _request(client, "/v1/keys/k/versions/1/schedule-destruction", {}, alice)
    # Meanwhile version 1 is trimmed away.
    post_ok(client, "/v1/keys/k/config", {"min_decryption_version": 2})
    post_ok(client, "/v1/keys/k/trim", {"min_available_version": 2})

    approved = client.post(f"/v1/approvals/{approval['id']}/approve", headers=bob)

    assert approved.status_code in (404, 409), approved.text
    assert client.get(f"/v1/approvals/{approval['id']}").json()["status"] == "failed"
    types = [e["type"] for e in runtime.service.events(limit=1000)]
    assert types[-1] == "keyledger.dual_control.ActionFailed"


REFUSED_REQUESTS = [
    pytest.param(
        "/v1/keys/k/versions/1/schedule-destruction",
        {"days": 1},
        422,
        "DESTRUCTION_PERIOD_OUT_OF_RANGE",
        id="days-below-minimum",
    ),
    pytest.param(
        "/v1/keys/k/versions/1/schedule-destruction",
        {"days": 31},
        422,
        "DESTRUCTION_PERIOD_OUT_OF_RANGE",
        id="days-above-maximum",
    ),
    pytest.param(
        "/v1/keys/k/versions/2/schedule-destruction",
        {},
        409,
        "CANNOT_DESTROY_PRIMARY",
        id="primary-version",
    ),
    pytest.param(
        "/v1/keys/k/versions/99/schedule-destruction",
        {},
        404,
        "VERSION_NOT_FOUND",
        id="unknown-version",
    ),
    pytest.param(
        "/v1/keys/k/rollback", {"version": 2}, 409, None, id="rollback-to-primary"
    ),
    pytest.param(
        "/v1/keys/k/rollback",
        {"version": 99},
        404,
        "VERSION_NOT_FOUND",
        id="rollback-to-unknown",
    ),
    pytest.param(
        "/v1/keys/k/rollback",
        {"to_stream_version": 50},
        409,
        "ROLLBACK_TARGET_NOT_IN_PAST",
        id="rollback-to-the-future",
    ),
    pytest.param(
        "/v1/keys/k/rollback",
        {"version": 1, "expected_version": 1},
        409,
        "EXPECTED_VERSION_MISMATCH",
        id="stale-expected-version",
    ),
    pytest.param(
        "/v1/keys/k/dual-control",
        {"actions": ["weaken-policy"], "ttl_seconds": 99999999999},
        422,
        "INVALID_TTL",
        id="policy-ttl-out-of-range",
    ),
    pytest.param(
        "/v1/keys/k/dual-control",
        {"actions": [], "ttl_seconds": 30},
        422,
        "INVALID_TTL",
        id="policy-ttl-too-short",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "code"), REFUSED_REQUESTS)
def test_a_request_approval_would_refuse_is_refused_now_recording_nothing(
    client: TestClient,
    runtime: Runtime,
    custodians: tuple[dict[str, str], dict[str, str]],
    path: str,
    body: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    """The action is checked against the key before a request is recorded."""
    alice, _ = custodians
    before = snapshot(client, "k")
    policy = client.get("/v1/keys/k/dual-control").json()
    head = runtime.service.head_position()

    response = client.post(path, json=body, headers=alice)

    assert response.status_code == status, response.text
    if code is not None:
        assert_error(response, status, code)
    assert runtime.service.head_position() == head
    assert snapshot(client, "k") == before
    assert client.get("/v1/keys/k/dual-control").json() == policy


def test_unknown_approval_is_404(client: TestClient) -> None:
    assert_error(client.get("/v1/approvals/nope"), 404, "APPROVAL_NOT_FOUND")
