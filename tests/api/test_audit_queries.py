"""Auditor queries: filtered, paged history; a key at a point; range verification."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.clock import AdjustableClock, format_time
from tests.api._access import BOOTSTRAP, add_principal, bearer
from tests.api._support import assert_error
from tests.conftest import T0


@pytest.fixture
def auditor(recording_client: TestClient, clock: AdjustableClock) -> dict[str, str]:
    """A ledger with two keys, two custodians and a refusal; an auditor's headers."""
    client = recording_client
    alice = bearer(add_principal(client, "alice", ["custodian"])["token"])
    bob = bearer(add_principal(client, "bob", ["custodian"])["token"])
    client.post("/v1/keys", json={"name": "pay"}, headers=alice)
    clock.advance(timedelta(hours=1))
    client.post("/v1/keys", json={"name": "hr"}, headers=bob)
    client.post("/v1/keys/pay/rotate", json={}, headers=bob)
    client.post("/v1/keys/pay/versions/2/disable", json={}, headers=alice)  # 409
    return bearer(add_principal(client, "eve", ["auditor"])["token"])


def _events(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict]:
    response = client.get("/v1/audit/events", params=params, headers=headers)
    assert response.status_code == 200, response.text
    events: list[dict] = response.json()["events"]
    return events


def test_filters_by_key_principal_type_time_and_outcome(
    recording_client: TestClient, auditor: dict[str, str]
) -> None:
    """Each filter narrows; the entries are the stored, signed ones."""
    client = recording_client
    by_key = _events(client, auditor, key="pay")
    assert [e["type"] for e in by_key] == [
        "keyledger.key.Generated",
        "keyledger.key.Rotated",
        "keyledger.access.RequestRefused",
    ]
    assert all("hash" in e and "signature" in e for e in by_key)
    by_bob = _events(client, auditor, principal="bob")
    assert [e["subject"] for e in by_bob] == ["key:hr", "key:pay"]
    rotations = _events(client, auditor, type="keyledger.key.Rotated")
    assert [e["subject"] for e in rotations] == ["key:pay"]
    later = _events(
        client, auditor, key="pay", **{"from": format_time(T0 + timedelta(minutes=30))}
    )
    assert later[0]["type"] == "keyledger.key.Rotated"
    refused = _events(client, auditor, outcome="refused", key="pay")
    assert [e["payload"]["principal"] for e in refused] == ["alice"]
    activity = client.get("/v1/audit/principals/alice/activity", headers=auditor)
    assert [e["subject"] for e in activity.json()["events"]] == [
        "key:pay",
        None,
    ]


def test_pages_follow_position_order(
    recording_client: TestClient, auditor: dict[str, str]
) -> None:
    """Pages of one entry, followed by next_after, give the whole filtered list."""
    client = recording_client
    whole = _events(client, auditor, principal="bob")
    seen, after = [], 0
    while True:
        page = client.get(
            "/v1/audit/events",
            params={"principal": "bob", "limit": 1, "after": after},
            headers=auditor,
        ).json()
        seen += page["events"]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == whole


def test_key_state_at_a_time_or_a_position(
    recording_client: TestClient, auditor: dict[str, str]
) -> None:
    """The key as it was: one version before the rotation, two after."""
    client = recording_client
    [generated, rotated, _] = _events(client, auditor, key="pay")

    at_creation = client.get(
        "/v1/audit/keys/pay/state",
        params={"position": generated["position"]},
        headers=auditor,
    ).json()
    after_rotation = client.get(
        "/v1/audit/keys/pay/state",
        params={"at": rotated["recorded_at"]},
        headers=auditor,
    ).json()

    assert at_creation["primary_version"] == 1
    assert len(at_creation["versions"]) == 1
    assert after_rotation["primary_version"] == 2
    before = client.get(
        "/v1/audit/keys/hr/state", params={"position": 1}, headers=auditor
    )
    assert_error(before, 404, "KEY_NOT_FOUND")
    both = client.get(
        "/v1/audit/keys/pay/state",
        params={"position": 1, "at": rotated["recorded_at"]},
        headers=auditor,
    )
    assert_error(both, 422, "INVALID_AUDIT_POINT")


def test_verify_a_range(
    recording_client: TestClient, recording_runtime: Runtime, auditor: dict[str, str]
) -> None:
    """A range verifies, linked to the stored entry before it."""
    head = recording_runtime.service.head_position()
    response = recording_client.get(
        "/v1/audit/verify",
        params={"from_position": 3, "to_position": head - 1},
        headers=auditor,
    )
    report = response.json()
    assert report["ok"] and report["complete"], report
    assert report["checked"] == head - 3
    bad = recording_client.get(
        "/v1/audit/verify",
        params={"from_position": 5, "to_position": 4},
        headers=auditor,
    )
    assert_error(bad, 422, "INVALID_RANGE")


def test_audit_queries_are_auditor_only_and_recorded(
    recording_client: TestClient, recording_runtime: Runtime, auditor: dict[str, str]
) -> None:
    """A custodian is refused; an auditor's query is an AuditTrailRead."""
    custodian = bearer(add_principal(recording_client, "carl", ["custodian"])["token"])
    refused = recording_client.get("/v1/audit/events", headers=custodian)
    assert_error(refused, 403, "FORBIDDEN")
    recording_client.get("/v1/audit/events", headers=auditor)
    reads = _events(recording_client, BOOTSTRAP, type="keyledger.access.AuditTrailRead")
    assert [r["payload"]["principal"] for r in reads][:1] == ["eve"]
    assert_error(
        recording_client.get(
            "/v1/audit/events", params={"outcome": "maybe"}, headers=auditor
        ),
        422,
        "INVALID_OUTCOME",
    )


def test_a_refused_key_use_is_a_refused_outcome(
    recording_client: TestClient, auditor: dict[str, str]
) -> None:
    """A use whose item was refused is ``refused``; a use that succeeded is not."""
    client = recording_client
    service = add_principal(client, "svc", ["service"])
    granted = client.post(
        "/v1/principals/svc/grants",
        json={"keys": "pay", "permissions": ["key:use"]},
        headers=BOOTSTRAP,
    )
    assert granted.status_code == 200, granted.text
    used = bearer(service["token"])
    sealed = client.post(
        "/v1/keys/pay/encrypt",
        json={"plaintext": "eA==", "context": "YQ=="},
        headers=used,
    )
    assert sealed.status_code == 200, sealed.text
    opened = client.post(
        "/v1/keys/pay/decrypt",
        json={"ciphertext": sealed.json()["ciphertext"], "context": "Yg=="},
        headers=used,
    )
    assert opened.status_code == 422, opened.text

    uses = {"key": "pay", "type": "keyledger.usage.KeyUsed"}
    refused = _events(client, auditor, outcome="refused", **uses)
    succeeded = _events(client, auditor, outcome="success", **uses)

    assert [e["payload"]["operation"] for e in refused] == ["decrypt"]
    assert refused[0]["payload"]["succeeded"] == 0
    assert [e["payload"]["operation"] for e in succeeded] == ["encrypt"]
