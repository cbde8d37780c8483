"""Per-key grants narrow an auditor's reads of the audit trail and its exports."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api._access import BOOTSTRAP, add_principal, bearer, ledger_entries
from tests.api._support import assert_error

REFUSED = "keyledger.access.RequestRefused"
READ = "keyledger.access.AuditTrailRead"
EXPORTED = "keyledger.access.EvidenceExported"


def _grant(client: TestClient, name: str, keys: str) -> None:
    response = client.post(
        f"/v1/principals/{name}/grants",
        json={"keys": keys, "permissions": ["key:read"]},
        headers=BOOTSTRAP,
    )
    assert response.status_code == 200, response.text


@pytest.fixture
def auditors(recording_client: TestClient) -> dict[str, dict[str, str]]:
    """Keys pay_eu, payxeu and hr, a refusal on hr; eve granted ``pay_*``, ann all."""
    client = recording_client
    for name in ("pay_eu", "payxeu", "hr"):
        created = client.post("/v1/keys", json={"name": name}, headers=BOOTSTRAP)
        assert created.status_code == 201, created.text
    carl = bearer(add_principal(client, "carl", ["custodian"])["token"])
    client.post("/v1/keys/hr/versions/1/disable", json={}, headers=carl)  # 409
    eve = bearer(add_principal(client, "eve", ["auditor"])["token"])
    _grant(client, "eve", "pay_*")
    ann = bearer(add_principal(client, "ann", ["auditor"])["token"])
    return {"eve": eve, "ann": ann}


def _keys_seen(client: TestClient, path: str, headers: dict[str, str]) -> set[Any]:
    response = client.get(path, params={"limit": 1000}, headers=headers)
    assert response.status_code == 200, response.text
    return {_key_of(entry) for entry in response.json()["events"]}


def _key_of(entry: dict[str, Any]) -> Any:
    subject = entry.get("subject") or ""
    if subject.startswith("key:"):
        return subject[4:]
    return (entry.get("payload") or {}).get("key")


def _types_after(runtime: Runtime, position: int) -> list[str]:
    return [entry["type"] for entry in ledger_entries(runtime, after=position)]


def test_an_ungranted_key_is_refused_before_the_read_is_recorded(
    recording_client: TestClient,
    recording_runtime: Runtime,
    auditors: dict[str, dict[str, str]],
) -> None:
    """A key's state and ``events?key=`` on an ungranted key: 403 KEY_NOT_GRANTED,
    recorded as a refusal naming the key, and no read recorded."""
    client, eve = recording_client, auditors["eve"]
    head = recording_runtime.service.head_position()

    state = client.get(
        "/v1/audit/keys/hr/state", params={"position": head}, headers=eve
    )
    events = client.get("/v1/audit/events", params={"key": "hr"}, headers=eve)

    assert assert_error(state, 403, "KEY_NOT_GRANTED") == {
        "permission": "key:read",
        "key": "hr",
    }
    assert assert_error(events, 403, "KEY_NOT_GRANTED")["key"] == "hr"
    refusals = ledger_entries(recording_runtime, after=head)
    assert [e["type"] for e in refusals] == [REFUSED, REFUSED]
    assert [e["payload"]["key"] for e in refusals] == ["hr", "hr"]
    assert {e["payload"]["code"] for e in refusals} == {"KEY_NOT_GRANTED"}
    granted = client.get(
        "/v1/audit/keys/pay_eu/state", params={"position": head}, headers=eve
    )
    assert granted.status_code == 200, granted.text
    assert granted.json()["name"] == "pay_eu"


def test_unfiltered_audit_listings_are_narrowed_to_granted_keys(
    recording_client: TestClient, auditors: dict[str, dict[str, str]]
) -> None:
    """eve sees only pay_eu's entries (``pay_*`` does not cover payxeu); an
    auditor without grants sees every key and the entries naming none."""
    client = recording_client

    seen = _keys_seen(client, "/v1/audit/events", auditors["eve"])
    carl = _keys_seen(client, "/v1/audit/principals/carl/activity", auditors["eve"])
    refused = client.get(
        "/v1/audit/events", params={"outcome": "refused"}, headers=auditors["eve"]
    )
    everything = _keys_seen(client, "/v1/audit/events", auditors["ann"])

    assert seen == {"pay_eu"}
    assert carl == set()
    assert refused.json()["events"] == []
    assert {"pay_eu", "payxeu", "hr", None} <= everything


def test_exports_are_narrowed_to_granted_keys(
    recording_client: TestClient,
    recording_runtime: Runtime,
    auditors: dict[str, dict[str, str]],
) -> None:
    """Keys named in an export must all be granted; a time-range export, the
    compliance report and the feed are refused (LEDGER_NOT_GRANTED), and nothing
    is exported or recorded but the refusals."""
    client, eve = recording_client, auditors["eve"]
    head = recording_runtime.service.head_position()

    one_ungranted = client.get("/v1/exports", params={"keys": "pay_eu,hr"}, headers=eve)
    whole = client.get("/v1/exports", headers=eve)
    report = client.get("/v1/reports/compliance", headers=eve)
    feed = client.get("/v1/events", headers=eve)

    assert assert_error(one_ungranted, 403, "KEY_NOT_GRANTED")["key"] == "hr"
    assert_error(whole, 403, "LEDGER_NOT_GRANTED")
    assert_error(report, 403, "LEDGER_NOT_GRANTED")
    assert_error(feed, 403, "LEDGER_NOT_GRANTED")
    assert _types_after(recording_runtime, head) == [REFUSED] * 4

    granted = client.get("/v1/exports", params={"keys": "pay_eu"}, headers=eve)
    assert granted.status_code == 200, granted.text
    assert _types_after(recording_runtime, head)[-1] == EXPORTED


def test_a_grant_on_every_key_reads_the_whole_ledger(
    recording_client: TestClient, auditors: dict[str, dict[str, str]]
) -> None:
    """``*`` with key:read covers every key: a time-range export and the feed."""
    client, eve = recording_client, auditors["eve"]
    _grant(client, "eve", "*")

    assert client.get("/v1/exports", headers=eve).status_code == 200
    assert client.get("/v1/events", headers=eve).status_code == 200
    assert "hr" in _keys_seen(client, "/v1/audit/events", eve)


def test_a_malformed_key_name_is_422_whatever_the_grants(
    recording_client: TestClient, auditors: dict[str, dict[str, str]]
) -> None:
    """A name no key can have is INVALID_KEY_NAME, not a grant question."""
    for who in ("eve", "ann"):
        headers = auditors[who]
        for path, params in (
            ("/v1/audit/events", {"key": "no such/key"}),
            ("/v1/exports", {"keys": "pay_eu,"}),
        ):
            response = recording_client.get(path, params=params, headers=headers)
            assert_error(response, 422, "INVALID_KEY_NAME")
