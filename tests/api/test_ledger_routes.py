"""Ledger routes: receipts, the feed, head and checkpoints, verification, the scheduler.

Also idempotent retries, which replay a saved response instead of appending again.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.runtime import Runtime, token_digest
from api.waiting import head_watch
from domain.clock import AdjustableClock, format_time
from ledger.entry import (
    GENESIS_HASH,
    canonical_json,
    checkpoint_document,
    checkpoint_signing_message,
    entry_signing_message,
)
from ledger.settings import Settings
from ledger.signing import load_public_key
from tests.api._support import (
    all_events,
    all_history,
    assert_error,
    create,
    get_key,
    head_position,
    post_ok,
    serving,
    snapshot,
    version_of,
)
from tests.api.conftest import TOKEN
from tests.conftest import T0, wait_until

SECOND = timedelta(seconds=1)
WEEK = timedelta(days=7)
HEX64 = set("0123456789abcdef")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= HEX64


# Scheduled destruction -------------------------------------------------------------


def test_scheduled_destruction_completes_exactly_once_by_the_clock(
    client: TestClient, clock: AdjustableClock
) -> None:
    """A 7-day destruction is not due a second early and happens exactly once."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/versions/1/schedule-destruction", {"days": 7})

    clock.advance(WEEK - SECOND)
    early = client.post("/v1/scheduler/run")
    assert early.status_code == 200, early.text
    assert early.json() == {"destroyed": [], "expired": []}
    assert version_of(get_key(client, "k"), 1)["state"] == "destroy_scheduled"

    clock.advance(SECOND)
    due = client.post("/v1/scheduler/run")
    assert due.status_code == 200, due.text
    [done] = due.json()["destroyed"]
    assert done["key"] == "k"
    assert done["receipt"]["type"] == "keyledger.key.VersionDestroyed"
    assert done["receipt"]["position"] == head_position(client) == 4

    assert client.post("/v1/scheduler/run").json() == {"destroyed": [], "expired": []}
    assert head_position(client) == 4

    v1 = version_of(get_key(client, "k"), 1)
    assert v1["state"] == "destroyed"
    assert v1["destroyed_at"] == format_time(T0 + WEEK)
    history = all_history(client, "k")
    destroyed = [e for e in history if e["type"] == "keyledger.key.VersionDestroyed"]
    assert len(destroyed) == 1
    assert destroyed[0]["payload"]["version"] == 1
    assert destroyed[0]["actor"]["principal"] == "system"
    assert destroyed[0]["recorded_at"] == format_time(T0 + WEEK)


def test_scheduler_destroys_due_versions_of_several_keys_once_each(
    client: TestClient, clock: AdjustableClock, runtime: Runtime
) -> None:
    """Every due version is destroyed once and its wrapped material erased."""
    for name in ("a", "b"):
        create(client, name)
        post_ok(client, f"/v1/keys/{name}/rotate")
    post_ok(client, "/v1/keys/a/versions/1/schedule-destruction", {"days": 7})
    clock.advance(timedelta(days=1))
    post_ok(client, "/v1/keys/b/versions/1/schedule-destruction", {"days": 8})
    post_ok(client, "/v1/keys/b/rotate")
    post_ok(client, "/v1/keys/b/versions/2/schedule-destruction", {"days": 30})
    clock.advance(timedelta(days=8))
    done = client.post("/v1/scheduler/run").json()["destroyed"]
    assert sorted(item["key"] for item in done) == ["a", "b"]
    assert client.post("/v1/scheduler/run").json() == {"destroyed": [], "expired": []}
    rows = runtime.service.ledger.query(
        "SELECT key_id, version FROM key_material ORDER BY key_id, version"
    )
    remaining = {(row["key_id"], row["version"]) for row in rows}
    ids = {name: get_key(client, name)["key_id"] for name in ("a", "b")}
    assert remaining == {(ids["a"], 2), (ids["b"], 2), (ids["b"], 3)}
    assert version_of(get_key(client, "b"), 2)["state"] == "destroy_scheduled"


def test_dev_clock_advances_service_time(client: TestClient) -> None:
    """POST /v1/dev/clock moves the service clock so a destruction comes due."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/versions/1/schedule-destruction", {"days": 7})
    response = client.post("/v1/dev/clock", json={"seconds": 7 * 86400 - 1})
    assert response.status_code == 200, response.text
    assert response.json()["now"] == format_time(T0 + WEEK - SECOND)
    assert client.post("/v1/scheduler/run").json() == {"destroyed": [], "expired": []}
    moved = client.post("/v1/dev/clock", json={"seconds": 1}).json()
    assert moved["now"] == format_time(T0 + WEEK)
    assert moved["offset_seconds"] == 7 * 86400
    assert len(client.post("/v1/scheduler/run").json()["destroyed"]) == 1
    # every move of the clock is on the ledger, before the destruction it allowed
    types = [event["type"] for event in client.get("/v1/events").json()["events"]]
    assert types[3:] == [
        "keyledger.clock.Started",
        "keyledger.clock.Advanced",
        "keyledger.clock.Advanced",
        "keyledger.key.VersionDestroyed",
    ]


def test_dev_clock_is_404_when_disabled(runtime: Runtime, tmp_path: Any) -> None:
    """Without the dev clock setting, POST /v1/dev/clock is 404."""
    settings = Settings(data_dir=tmp_path, dev_clock=False, max_body_bytes=64 * 1024)
    off = Runtime(settings, runtime.service, runtime.clock, token_digest(TOKEN))
    with TestClient(
        create_app(settings, runtime=off), raise_server_exceptions=False
    ) as app:
        app.headers["Authorization"] = f"Bearer {TOKEN}"
        response = app.post("/v1/dev/clock", json={"seconds": 60})
    assert_error(response, 404, "NOT_FOUND")
    assert runtime.clock.now() == T0


# Receipts ----------------------------------------------------------------------------

COMMANDS = [
    pytest.param("/v1/keys", {"name": "k"}, 201, ["Generated"], id="create"),
    pytest.param("/v1/keys/k/rotate", {}, 200, ["Rotated"], id="rotate"),
    pytest.param(
        "/v1/keys/k/rotate", {"expected_version": 2}, 200, ["Rotated"], id="rotate-2"
    ),
    pytest.param(
        "/v1/keys/k/versions/1/disable", {}, 200, ["VersionDisabled"], id="v-disable"
    ),
    pytest.param(
        "/v1/keys/k/versions/1/enable", {}, 200, ["VersionEnabled"], id="v-enable"
    ),
    pytest.param(
        "/v1/keys/k/versions/1/schedule-destruction",
        {"days": 7},
        200,
        ["DestructionScheduled"],
        id="schedule",
    ),
    pytest.param(
        "/v1/keys/k/versions/1/cancel-destruction",
        {},
        200,
        ["DestructionCancelled"],
        id="cancel",
    ),
    pytest.param(
        "/v1/keys/k/versions/2/compromise",
        {"reason": "r"},
        200,
        ["MarkedCompromised"],
        id="compromise",
    ),
    pytest.param(
        "/v1/keys/k/rollback", {"to_stream_version": 3}, 200, ["RolledBack"], id="rb-to"
    ),
    pytest.param(
        "/v1/keys/k/rollback", {"version": 1}, 200, ["PrimaryRolledBack"], id="rb-v"
    ),
    pytest.param("/v1/keys/k/disable", {}, 200, ["Disabled"], id="disable"),
    pytest.param("/v1/keys/k/enable", {}, 200, ["Enabled"], id="enable"),
]


def test_every_command_returns_receipts_matching_the_feed(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """Each command's receipts carry position and hash, as in the feed."""
    position = 0
    receipts: list[dict[str, Any]] = []
    for case in COMMANDS:
        path, body, status, types = case.values
        with subtests.test(msg=case.id):
            response = client.post(path, json=body)
            assert response.status_code == status, response.text
            result = response.json()
            got = result["receipts"]
            assert [r["type"] for r in got] == [f"keyledger.key.{t}" for t in types]
            for receipt in got:
                position += 1
                assert receipt["position"] == position
                assert _is_hash(receipt["hash"])
                assert receipt["recorded_at"] == format_time(T0)
            assert response.headers["Ledger-Position"] == str(got[-1]["position"])
            assert result["key"]["last_position"] == got[-1]["position"]
            assert result["key"]["stream_version"] == got[-1]["stream_version"]
            receipts += got
    feed = {e["position"]: e for e in all_events(client)}
    assert len(feed) == len(receipts) == len(COMMANDS)
    for receipt in receipts:
        entry = feed[receipt["position"]]
        assert entry["hash"] == receipt["hash"]
        assert entry["type"] == receipt["type"]
        assert entry["stream_version"] == receipt["stream_version"]


def test_request_id_is_recorded_when_well_formed(client: TestClient) -> None:
    """A well-formed X-Request-Id is recorded; a malformed one is replaced."""
    good = client.post(
        "/v1/keys", json={"name": "a"}, headers={"X-Request-Id": "req-42.a:b_c"}
    )
    assert good.status_code == 201, good.text
    bad = client.post(
        "/v1/keys", json={"name": "b"}, headers={"X-Request-Id": "has space"}
    )
    assert bad.status_code == 201, bad.text
    first, second = all_events(client)
    assert first["request_id"] == "req-42.a:b_c"
    assert second["request_id"].startswith("req_")
    assert second["actor"]["principal"] == "bootstrap-admin"


def test_read_routes_report_head_as_ledger_position(client: TestClient) -> None:
    """GET routes carry Ledger-Position equal to the current head."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    for path in (
        "/v1/keys",
        "/v1/keys/k",
        "/v1/keys/k/history",
        "/v1/events",
        "/v1/ledger/head",
        "/v1/ledger/verify",
    ):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["Ledger-Position"] == "2", path


# The feed ----------------------------------------------------------------------------


def _workload(client: TestClient, clock: AdjustableClock) -> None:
    create(client, "a")
    create(client, "b")
    for _ in range(3):
        clock.advance(timedelta(minutes=1))
        post_ok(client, "/v1/keys/a/rotate")
    post_ok(client, "/v1/keys/b/disable")
    post_ok(client, "/v1/keys/a/versions/1/compromise", {"reason": "r"})


def test_events_feed_is_a_contiguous_signed_hash_chain(
    client: TestClient, clock: AdjustableClock
) -> None:
    """The feed lists entries 1..n; each hash, signature and prev_hash checks out."""
    _workload(client, clock)
    public_key = load_public_key(
        client.get("/v1/ledger/head").json()["signing_key"]["public_key_pem"]
    )
    kid = client.get("/v1/ledger/head").json()["signing_key"]["kid"]
    events = all_events(client, limit=3)
    assert [e["position"] for e in events] == list(range(1, 8))
    assert all_events(client, limit=1000) == events
    previous = GENESIS_HASH
    for entry in events:
        assert entry["prev_hash"] == previous
        assert entry["kid"] == kid
        document = {
            k: v for k, v in entry.items() if k not in ("hash", "signature", "kid")
        }
        assert hashlib.sha256(canonical_json(document)).hexdigest() == entry["hash"]
        public_key.verify(
            bytes.fromhex(entry["signature"]), entry_signing_message(entry["hash"])
        )
        previous = entry["hash"]
    recorded = [e["recorded_at"] for e in events]
    assert recorded == sorted(recorded)


def test_events_feed_pages_by_after_and_limit(
    client: TestClient, clock: AdjustableClock
) -> None:
    """after and limit select a window of the feed and next_after continues it."""
    _workload(client, clock)
    page = client.get("/v1/events", params={"after": 2, "limit": 3}).json()
    assert [e["position"] for e in page["events"]] == [3, 4, 5]
    assert page["next_after"] == 5
    assert page["head_position"] == 7
    rest = client.get("/v1/events", params={"after": 5, "limit": 3}).json()
    assert [e["position"] for e in rest["events"]] == [6, 7]
    end = client.get("/v1/events", params={"after": 7}).json()
    assert end == {"events": [], "next_after": 7, "head_position": 7}


def test_events_feed_lists_checkpoints_only_when_asked(
    client: TestClient, clock: AdjustableClock
) -> None:
    """With checkpoints_after, a page lists the signed checkpoints over positions
    after it up to the page's last; without it, the page has no such field."""
    _workload(client, clock)
    first = client.post("/v1/ledger/checkpoints").json()["checkpoint"]
    create(client, "later")
    second = client.post("/v1/ledger/checkpoints").json()["checkpoint"]

    plain = client.get("/v1/events", params={"after": 0}).json()
    upto_first = client.get(
        "/v1/events",
        params={"after": 0, "limit": first["position"], "checkpoints_after": 0},
    ).json()
    held = client.get(
        "/v1/events",
        params={"after": second["position"], "checkpoints_after": first["position"]},
    ).json()

    assert "checkpoints" not in plain
    assert upto_first["checkpoints"] == [first]
    # a page with no entries still brings checkpoints over positions before it
    assert held["events"] == [] and held["checkpoints"] == [second]
    assert_error(
        client.get("/v1/events", params={"checkpoints_after": -1}),
        422,
        "INVALID_FIELD",
    )


@contextmanager
def _serving(runtime: Runtime) -> Iterator[str]:
    """A real HTTP server (uvicorn in a thread) over the test's runtime."""
    with serving(create_app(runtime.settings, runtime=runtime)) as url:
        yield url


def _long_polls(
    url: str, count: int, after: int, answers: list[httpx.Response]
) -> list[threading.Thread]:
    def poll() -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as http:
            answers.append(http.get("/v1/events", params={"after": after, "wait": 30}))

    threads = [threading.Thread(target=poll) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_open_long_polls_hold_no_worker_thread_and_wake_on_the_next_entry(
    runtime: Runtime,
) -> None:
    """Sixty open long-polls (more than the threadpool's 40 threads) leave every
    other request answered, and all of them answer with the next entry."""
    watch = head_watch(runtime.service.ledger)
    with (
        _serving(runtime) as url,
        httpx.Client(base_url=url, headers=AUTH, timeout=120) as http,
    ):
        assert http.post("/v1/keys", json={"name": "payments"}).status_code == 201
        head = http.get("/v1/ledger/head").json()["head"]["position"]
        answers: list[httpx.Response] = []
        # given sixty long-polls waiting for the entry after the head
        threads = _long_polls(url, 60, head, answers)
        wait_until(lambda: watch.waiting == 60)

        # when other requests come, they are answered while all sixty still wait
        assert http.get("/v1/keys/payments").status_code == 200
        assert http.get("/v1/ledger/head").status_code == 200
        assert watch.waiting == 60 and answers == []
        created = http.post("/v1/keys", json={"name": "orders"})
        assert created.status_code == 201
        for thread in threads:
            thread.join()

    # then each long-poll answered with the new entry, none ran out its wait
    assert len(answers) == 60
    for answer in answers:
        assert answer.status_code == 200
        page = answer.json()
        assert [event["position"] for event in page["events"]] == [head + 1]
        assert page["next_after"] == head + 1


def test_long_polls_beyond_the_cap_answer_at_once(runtime: Runtime) -> None:
    """Past the per-principal cap a long-poll does not wait: an empty page at once."""
    watch = head_watch(runtime.service.ledger)
    watch.max_per_principal = 1
    with (
        _serving(runtime) as url,
        httpx.Client(base_url=url, headers=AUTH, timeout=120) as http,
    ):
        head = http.get("/v1/ledger/head").json()["head"]["position"]
        answers: list[httpx.Response] = []
        threads = _long_polls(url, 1, head, answers)
        wait_until(lambda: watch.waiting == 1)

        refused = http.get("/v1/events", params={"after": head, "wait": 30})

        assert refused.status_code == 200
        assert refused.headers["Long-Poll"] == "refused"
        assert refused.json() == {
            "events": [],
            "next_after": head,
            "head_position": head,
        }
        assert watch.waiting == 1 and answers == []  # the first one still waits
        assert http.post("/v1/keys", json={"name": "k"}).status_code == 201
        for thread in threads:
            thread.join()
    assert [e["position"] for e in answers[0].json()["events"]] == [head + 1]


BAD_FEED_QUERIES = [
    pytest.param({"limit": 0}, id="limit-zero"),
    pytest.param({"limit": 1001}, id="limit-over"),
    pytest.param({"limit": 100000}, id="limit-huge"),
    pytest.param({"after": -1}, id="after-negative"),
    pytest.param({"after": "one"}, id="after-text"),
]


def test_events_bad_query_is_422(client: TestClient, subtests: pytest.Subtests) -> None:
    """Out-of-range feed parameters are 422 INVALID_FIELD."""
    for case in BAD_FEED_QUERIES:
        (params,) = case.values
        with subtests.test(msg=case.id):
            assert_error(client.get("/v1/events", params=params), 422, "INVALID_FIELD")


def test_events_after_beyond_64_bits_is_not_500(client: TestClient) -> None:
    """An after cursor past any position is an empty page or 422, never 500."""
    create(client, "k")
    response = client.get("/v1/events", params={"after": 2**70})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        assert response.json()["events"] == []


# Head, checkpoints, verification ----------------------------------------


def test_head_of_empty_ledger_is_genesis(client: TestClient) -> None:
    """An empty ledger's head is position 0 with the genesis hash and no checkpoint."""
    response = client.get("/v1/ledger/head")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["head"]["position"] == 0
    assert body["head"]["hash"] == GENESIS_HASH
    assert body["checkpoint"] is None
    assert body["signing_key"]["kid"].startswith("ed25519:")
    assert "BEGIN PUBLIC KEY" in body["signing_key"]["public_key_pem"]
    assert "PRIVATE" not in response.text


def test_checkpoint_on_empty_ledger_is_409(client: TestClient) -> None:
    """POST /v1/ledger/checkpoints on an empty ledger is 409 LEDGER_EMPTY."""
    assert_error(client.post("/v1/ledger/checkpoints"), 409, "LEDGER_EMPTY")
    assert client.get("/v1/ledger/head").json()["checkpoint"] is None


def test_checkpoint_signs_the_current_head(client: TestClient) -> None:
    """A checkpoint is 201, names the head, verifies, and GET head shows it."""
    create(client, "a")
    create(client, "b")
    head = client.get("/v1/ledger/head").json()
    response = client.post("/v1/ledger/checkpoints")
    assert response.status_code == 201, response.text
    assert response.headers["Ledger-Position"] == "2"
    checkpoint = response.json()["checkpoint"]
    assert checkpoint["position"] == 2
    assert checkpoint["hash"] == head["head"]["hash"]
    assert checkpoint["kid"] == head["signing_key"]["kid"]
    document = checkpoint_document(
        position=checkpoint["position"],
        hash_hex=checkpoint["hash"],
        recorded_at=checkpoint["recorded_at"],
        kid=checkpoint["kid"],
    )
    public_key = load_public_key(head["signing_key"]["public_key_pem"])
    public_key.verify(
        bytes.fromhex(checkpoint["signature"]), checkpoint_signing_message(document)
    )
    assert client.get("/v1/ledger/head").json()["checkpoint"] == checkpoint
    assert head_position(client) == 2, "a checkpoint is not a ledger entry"
    report = client.get("/v1/ledger/verify").json()
    assert report["ok"] is True
    assert report["checkpoints_checked"] == 1


def test_verify_reports_ok_for_an_untouched_ledger(
    client: TestClient, clock: AdjustableClock
) -> None:
    """GET /v1/ledger/verify is ok and has checked every entry."""
    _workload(client, clock)
    response = client.get("/v1/ledger/verify")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is True
    assert report["checked"] == 7
    assert report["head"]["position"] == 7
    assert report["first_failure"] is None


def test_unknown_route_and_method_use_the_envelope(client: TestClient) -> None:
    """An unknown path is 404 and a wrong method 405, both in the envelope."""
    assert_error(client.get("/v1/nothing-here"), 404, "NOT_FOUND")
    assert_error(client.delete("/v1/keys"), 405, "METHOD_NOT_ALLOWED")


# Idempotency ------------------------------------------------------------


def test_idempotent_create_replays_first_response(client: TestClient) -> None:
    """The same Idempotency-Key and body replays the 201; no second event."""
    headers = {"Idempotency-Key": "create-k-1"}
    first = client.post("/v1/keys", json={"name": "k"}, headers=headers)
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    second = client.post("/v1/keys", json={"name": "k"}, headers=headers)
    assert second.status_code == 201, second.text
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["Ledger-Position"] == first.headers["Ledger-Position"] == "1"
    assert second.json() == first.json()
    assert head_position(client) == 1
    assert len(all_history(client, "k")) == 1


def test_idempotent_command_replays_even_after_later_changes(
    client: TestClient,
) -> None:
    """A retried rotate replays its saved response even after other commands ran."""
    create(client, "k")
    headers = {"Idempotency-Key": "rotate-1"}
    body = {"expected_version": 1}
    first = client.post("/v1/keys/k/rotate", json=body, headers=headers)
    assert first.status_code == 200, first.text
    post_ok(client, "/v1/keys/k/versions/1/disable")
    before = snapshot(client, "k")
    again = client.post("/v1/keys/k/rotate", json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["receipts"] == first.json()["receipts"]
    assert again.json() == first.json()
    assert snapshot(client, "k") == before


REUSES = [
    pytest.param("/v1/keys/k/rotate", {"expected_version": 2}, id="different-body"),
    pytest.param("/v1/keys/k/disable", {}, id="different-route"),
    pytest.param("/v1/keys", {"name": "other"}, id="create"),
]


def test_idempotency_key_reuse_with_other_request_is_422(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """An Idempotency-Key used for another request is 422, appending nothing."""
    create(client, "k")
    headers = {"Idempotency-Key": "once"}
    first = client.post(
        "/v1/keys/k/rotate", json={"expected_version": 1}, headers=headers
    )
    assert first.status_code == 200, first.text
    for case in REUSES:
        path, body = case.values
        with subtests.test(msg=case.id):
            before = snapshot(client, "k")
            response = client.post(path, json=body, headers=headers)
            assert_error(response, 422, "IDEMPOTENCY_KEY_REUSED")
            assert snapshot(client, "k") == before
    assert_error(client.get("/v1/keys/other"), 404, "KEY_NOT_FOUND")


@pytest.mark.parametrize(
    "key",
    [pytest.param("", id="empty"), pytest.param("x" * 256, id="256-chars")],
)
def test_malformed_idempotency_key_is_422(client: TestClient, key: str) -> None:
    """An Idempotency-Key outside 1..255 characters is 422 INVALID_IDEMPOTENCY_KEY."""
    response = client.post(
        "/v1/keys", json={"name": "k"}, headers={"Idempotency-Key": key}
    )
    assert_error(response, 422, "INVALID_IDEMPOTENCY_KEY")
    assert head_position(client) == 0
