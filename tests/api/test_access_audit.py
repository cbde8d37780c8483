"""Refusals, audit-trail reads and exports on the ledger: who, what, from where."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.clock import AdjustableClock
from tests.api._access import BOOTSTRAP, add_principal, bearer, ledger_entries
from tests.api._support import assert_error

REFUSED = "keyledger.access.RequestRefused"
REPEATED = "keyledger.access.RefusalsRepeated"


def _after(runtime: Runtime, position: int) -> list[dict]:
    return ledger_entries(runtime, after=position)


def _key_and_auditor(client: TestClient, runtime: Runtime) -> tuple[dict, int]:
    """Key k and an auditor eve; eve's token issue response and the head after."""
    client.post("/v1/keys", json={"name": "k"}, headers=BOOTSTRAP)
    issued = add_principal(client, "eve", ["auditor"])
    return issued, runtime.service.head_position()


def test_a_401_is_recorded_without_the_token(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """An unknown token: one RequestRefused with code, route and client; no token."""
    wrong = "kl_guessed-token-value"
    response = recording_client.post(
        "/v1/keys/k/rotate",
        json={"secret-body": "do-not-keep"},
        headers={**bearer(wrong), "User-Agent": "probe/1.0"},
    )

    assert_error(response, 401, "INVALID_TOKEN")
    [entry] = ledger_entries(recording_runtime)
    assert entry["type"] == REFUSED
    payload = entry["payload"]
    assert {k: payload[k] for k in ("status", "code", "method", "route", "key")} == {
        "status": 401,
        "code": "INVALID_TOKEN",
        "method": "POST",
        "route": "/v1/keys/{name}/rotate",
        "key": "k",
    }
    assert payload["client"] == "testclient" and payload["user_agent"] == "probe/1.0"
    assert entry["actor"]["principal"] == "anonymous"
    text = json.dumps(entry)
    assert wrong not in text and "do-not-keep" not in text


def test_a_403_and_a_refused_command_are_recorded_with_their_principal(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """403 and 409 name the principal and token id; only the refusal is recorded."""
    client = recording_client
    client.post("/v1/keys", json={"name": "k"}, headers=BOOTSTRAP)
    auditor = add_principal(client, "eve", ["auditor"])
    custodian = add_principal(client, "carl", ["custodian"])
    head = recording_runtime.service.head_position()

    forbidden = client.post(
        "/v1/keys/k/rotate", json={}, headers=bearer(auditor["token"])
    )
    conflict = client.post(
        "/v1/keys/k/versions/1/disable", json={}, headers=bearer(custodian["token"])
    )

    assert_error(forbidden, 403, "FORBIDDEN")
    assert conflict.status_code == 409
    first, second = _after(recording_runtime, head)
    assert first["type"] == second["type"] == REFUSED
    assert first["payload"]["principal"] == "eve"
    assert first["payload"]["token_id"] == auditor["token_id"]
    assert second["payload"]["code"] == conflict.json()["error"]["code"]
    assert second["actor"]["principal"] == "carl"
    assert client.get("/v1/keys/k", headers=BOOTSTRAP).json()["primary_version"] == 1


def test_a_flood_of_refusals_is_one_event_and_a_count_per_window(
    recording_client: TestClient,
    recording_runtime: Runtime,
    clock: AdjustableClock,
) -> None:
    """50 identical refusals: one event now, one count when the window has passed."""
    for number in range(50):
        recording_client.get(
            "/v1/keys",
            headers={**bearer("kl_flood"), "User-Agent": f"flood/{number}"},
        )
    assert [e["type"] for e in ledger_entries(recording_runtime)] == [REFUSED]

    clock.advance(recording_runtime.coalescer.window)
    recording_client.get("/v1/keys", headers=bearer("kl_flood"))

    entries = ledger_entries(recording_runtime)
    assert [e["type"] for e in entries] == [REFUSED, REPEATED, REFUSED]
    assert entries[1]["payload"]["repeats"] == 49
    assert entries[1]["stream_id"] == entries[0]["stream_id"]


def test_a_flood_over_many_key_names_is_one_event_and_a_count(
    recording_client: TestClient,
    recording_runtime: Runtime,
    clock: AdjustableClock,
) -> None:
    """50 refusals of one caller on one route, each naming another key: one
    RequestRefused, then one count of 49 with the first ten key names."""
    client = recording_client
    auditor = bearer(add_principal(client, "eve", ["auditor"])["token"])
    head = recording_runtime.service.head_position()

    for number in range(50):
        response = client.post(f"/v1/keys/k-{number:02d}/rotate", headers=auditor)
        assert_error(response, 403, "FORBIDDEN")
    assert [e["type"] for e in _after(recording_runtime, head)] == [REFUSED]

    clock.advance(recording_runtime.coalescer.window)
    recording_runtime.coalescer.flush()

    first, counted = [
        e for e in _after(recording_runtime, head) if e["type"] in (REFUSED, REPEATED)
    ]
    assert first["payload"]["key"] == "k-00"
    assert first["payload"]["principal"] == "eve"
    assert counted["type"] == REPEATED
    assert counted["stream_id"] == first["stream_id"]
    assert counted["payload"]["repeats"] == 49
    assert counted["payload"]["keys"] == [f"k-{n:02d}" for n in range(10)]
    assert counted["payload"]["more_keys"] is True


def test_requests_are_attributed_with_client_and_user_agent(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """A command's entry names principal, token id, request id, client, user agent."""
    issued = add_principal(recording_client, "carl", ["custodian"])
    response = recording_client.post(
        "/v1/keys",
        json={"name": "k"},
        headers={
            **bearer(issued["token"]),
            "X-Request-Id": "req-attributed-1",
            "User-Agent": "=ops-tool/2 (+x)",
        },
    )

    assert response.status_code == 201
    entry = ledger_entries(recording_runtime)[-1]
    assert entry["actor"] == {
        "principal": "carl",
        "token_id": issued["token_id"],
        "client": "testclient",
        "user_agent": "=ops-tool/2 (+x)",
    }
    assert entry["request_id"] == "req-attributed-1"


def test_history_reads_and_exports_are_recorded(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """A history read is recorded; an export is EvidenceExported with its digest."""
    client = recording_client
    issued, head = _key_and_auditor(client, recording_runtime)
    auditor = bearer(issued["token"])

    assert client.get("/v1/keys/k/history", headers=auditor).status_code == 200
    exported = client.get("/v1/exports", params={"keys": "k"}, headers=auditor)

    assert exported.status_code == 200
    read, export = _after(recording_runtime, head)
    assert read["type"] == "keyledger.access.AuditTrailRead"
    assert read["payload"]["route"] == "/v1/keys/{name}/history"
    assert read["payload"]["principal"] == "eve"
    assert export["type"] == "keyledger.access.EvidenceExported"
    assert export["payload"]["sha256"] == hashlib.sha256(exported.content).hexdigest()
    assert export["payload"]["scope"]["keys"] == ["k"]


def test_refusals_on_different_routes_are_recorded_separately(
    recording_client: TestClient,
    recording_runtime: Runtime,
    clock: AdjustableClock,
) -> None:
    """Different routes are different refusals, each recorded at once."""
    recording_client.get("/v1/keys", headers=bearer("kl_x"))
    clock.advance(timedelta(seconds=1))
    recording_client.get("/v1/events", headers=bearer("kl_x"))
    routes = [e["payload"]["route"] for e in ledger_entries(recording_runtime)]
    assert routes == ["/v1/keys", "/v1/events"]


READ = "keyledger.access.AuditTrailRead"


def _reads(runtime: Runtime, position: int) -> list[dict]:
    return [e["payload"] for e in _after(runtime, position) if e["type"] == READ]


def test_an_audit_read_records_what_was_looked_at(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """A key's state at a position, a principal's activity and filtered events:
    each read records its path and query parameters, never the token."""
    client = recording_client
    issued, head = _key_and_auditor(client, recording_runtime)
    auditor = bearer(issued["token"])

    asks = [
        ("/v1/audit/keys/k/state", {"position": str(head)}),
        ("/v1/audit/principals/carl/activity", {"limit": "5"}),
        ("/v1/audit/events", {"key": "k", "type": "keyledger.key.Generated"}),
    ]
    for path, params in asks:
        response = client.get(path, params=params, headers=auditor)
        assert response.status_code == 200, response.text

    reads = _reads(recording_runtime, head)
    assert [(r["path"], r["query"]) for r in reads] == [
        ("/v1/audit/keys/k/state", [["position", str(head)]]),
        ("/v1/audit/principals/carl/activity", [["limit", "5"]]),
        ("/v1/audit/events", [["key", "k"], ["type", "keyledger.key.Generated"]]),
    ]
    assert reads[0]["key"] == "k" and reads[0]["principal"] == "eve"
    recorded = json.dumps(reads)
    assert issued["token"] not in recorded


def test_different_lookups_are_separate_reads_and_repeats_are_counted(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """Another position is another read; the same read again is only counted."""
    client = recording_client
    issued, head = _key_and_auditor(client, recording_runtime)
    auditor = bearer(issued["token"])

    first, second = str(head - 1), str(head)
    for position in (first, second, first):
        response = client.get(
            "/v1/audit/keys/k/state", params={"position": position}, headers=auditor
        )
        assert response.status_code == 200, response.text

    reads = _reads(recording_runtime, head)
    assert [r["query"] for r in reads] == [
        [["position", first]],
        [["position", second]],
    ]
    recording_runtime.coalescer.flush(everything=True)
    [counted] = [
        e["payload"]
        for e in _after(recording_runtime, head)
        if e["type"] == "keyledger.access.AuditTrailReadsCounted"
    ]
    assert counted["repeats"] == 1


def test_a_query_parameter_named_like_a_secret_is_recorded_without_its_value(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """A token passed in the query by mistake is not copied into the ledger."""
    client = recording_client
    issued, head = _key_and_auditor(client, recording_runtime)

    response = client.get(
        "/v1/audit/events",
        params={"key": "k", "access_token": issued["token"]},
        headers=bearer(issued["token"]),
    )

    assert response.status_code == 200, response.text
    [read] = _reads(recording_runtime, head)
    assert read["query"] == [["key", "k"], ["access_token", "(withheld)"]]
    assert issued["token"] not in json.dumps(_after(recording_runtime, head))


def test_a_command_refused_with_422_or_413_is_recorded_with_its_code(
    recording_client: TestClient, recording_runtime: Runtime
) -> None:
    """An unknown field, a wrong type and an oversized body on a command: each
    a RequestRefused with status and code, never the body; the key unchanged."""
    client = recording_client
    client.post("/v1/keys", json={"name": "k"}, headers=BOOTSTRAP)
    carl = add_principal(client, "carl", ["custodian"])
    headers = bearer(carl["token"])
    before = client.get("/v1/keys/k", headers=BOOTSTRAP).json()
    head = recording_runtime.service.head_position()
    limit = recording_runtime.settings.max_body_bytes

    unknown = client.post(
        "/v1/keys/k/rotate", json={"secret-field": "keep-me-out"}, headers=headers
    )
    wrong = client.post(
        "/v1/keys/k/rotate", json={"expected_version": "one"}, headers=headers
    )
    large = client.post(
        "/v1/keys/k/rotate",
        content=b'{"description": "' + b"x" * limit + b'"}',
        headers={**headers, "Content-Type": "application/json"},
    )

    assert_error(unknown, 422, "UNKNOWN_FIELD")
    assert_error(wrong, 422, "INVALID_FIELD")
    assert_error(large, 413, "PAYLOAD_TOO_LARGE")
    entries = _after(recording_runtime, head)
    assert [e["type"] for e in entries] == [REFUSED] * 3
    assert [(e["payload"]["status"], e["payload"]["code"]) for e in entries] == [
        (422, "UNKNOWN_FIELD"),
        (422, "INVALID_FIELD"),
        (413, "PAYLOAD_TOO_LARGE"),
    ]
    assert all(e["payload"]["route"] == "/v1/keys/{name}/rotate" for e in entries)
    assert entries[0]["payload"]["principal"] == "carl"
    assert "keep-me-out" not in json.dumps(entries)
    assert client.get("/v1/keys/k", headers=BOOTSTRAP).json() == before
