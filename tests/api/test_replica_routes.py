"""A replica's routes in process: Min-Position, status, promotion; a fenced primary."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eventsourcing.persistence import PersistenceError
from fastapi.testclient import TestClient

from api.main import create_app
from api.routes.replication import install_replica
from api.runtime import Runtime, token_digest
from api.waiting import head_watch
from domain.clock import AdjustableClock
from domain.epochs import PROMOTED_TOPIC
from ledger.replica import Follower, ReplicaHalted, announce_signer
from ledger.service import CommandContext, KeyService
from ledger.settings import Settings
from ledger.signing import public_key_pem
from tests.api._support import (
    assert_error,
    assert_refused,
    head_position,
    serving,
    snapshot,
)
from tests.api.conftest import TOKEN
from tests.conftest import wait_until
from tests.ledger._replica_support import (
    ServiceSource,
    announced_replica,
    follow_all,
    rejoined_old_primary,
)

ReplicaClient = Callable[..., TestClient]


@pytest.fixture
def replica_client(
    clock: AdjustableClock, tmp_path: Path
) -> Iterator[Callable[..., TestClient]]:
    """Serve a follower's ledger as ``keyledger replica`` does, with the admin token."""
    opened: list[tuple[TestClient, Runtime]] = []

    def open_(follower: Follower, *, min_position_wait: float = 30) -> TestClient:
        settings = Settings(data_dir=tmp_path / "replica", max_body_bytes=64 * 1024)
        runtime = Runtime(
            settings, follower.service, clock, token_digest(TOKEN), record_access=False
        )
        app = create_app(settings, runtime=runtime)
        install_replica(app, follower, min_position_wait=min_position_wait)
        client = TestClient(app, raise_server_exceptions=False)
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        client.__enter__()
        opened.append((client, runtime))
        return client

    yield open_
    for client, runtime in opened:
        client.__exit__(None, None, None)
        runtime.stopping.set()


def caught_up(
    service: KeyService, ctx: CommandContext, open_replica: Callable[..., Follower]
) -> Follower:
    """A replica of a primary holding key ``k``, caught up."""
    service.create_key(ctx, name="k")
    follower = open_replica(ServiceSource(service))
    follow_all(follower)
    return follower


def test_min_position_waits_for_the_position_then_answers_it(
    service: KeyService,
    ctx: CommandContext,
    open_replica: Callable[..., Follower],
    replica_client: ReplicaClient,
) -> None:
    """A read asking for a position the replica lacks waits, then shows that state."""
    follower = caught_up(service, ctx, open_replica)
    client = replica_client(follower)
    rotated = service.rotate(ctx, "k")
    watch = head_watch(follower.ledger)
    answers: list[Any] = []
    reader = threading.Thread(
        target=lambda: answers.append(
            client.get("/v1/keys/k", headers={"Min-Position": str(rotated.position)})
        )
    )
    reader.start()
    # the read is waiting before the position arrives; then the replica applies it
    wait_until(lambda: watch.waiting == 1)
    assert not answers
    follow_all(follower)
    reader.join(timeout=60)

    [answer] = answers
    assert answer.status_code == 200, answer.text
    assert answer.json()["stream_version"] == rotated.key["stream_version"]
    assert int(answer.headers["Ledger-Position"]) >= rotated.position


def test_reads_waiting_for_a_min_position_hold_no_worker_thread(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    tmp_path: Path,
    open_replica: Callable[..., Follower],
) -> None:
    """Sixty reads waiting for a position (more than the threadpool's 40 threads)
    leave other reads answered; all answer once the replica applies it."""
    follower = caught_up(service, ctx, open_replica)
    settings = Settings(data_dir=tmp_path / "replica", max_body_bytes=64 * 1024)
    runtime = Runtime(
        settings, follower.service, clock, token_digest(TOKEN), record_access=False
    )
    app = create_app(settings, runtime=runtime)
    install_replica(app, follower, min_position_wait=30)
    rotated = service.rotate(ctx, "k")
    watch = head_watch(follower.ledger)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answers: list[httpx.Response] = []

    with serving(app) as url:

        def read() -> None:
            with httpx.Client(base_url=url, headers=auth, timeout=120) as http:
                wanted = {"Min-Position": str(rotated.position)}
                answers.append(http.get("/v1/keys/k", headers=wanted))

        # given sixty reads waiting for a position the replica lacks
        readers = [threading.Thread(target=read) for _ in range(60)]
        for reader in readers:
            reader.start()
        wait_until(lambda: watch.waiting == 60)

        # when other reads come, they are answered while the sixty still wait
        with httpx.Client(base_url=url, headers=auth, timeout=120) as http:
            assert http.get("/v1/keys/k").status_code == 200
            assert http.get("/v1/replication/status").status_code == 200
            # a read without credentials does not wait: it is refused at once
            late = http.get(
                "/v1/keys/k",
                headers={"Min-Position": str(rotated.position), "Authorization": ""},
            )
            assert late.status_code == 412
        assert watch.waiting == 60 and answers == []
        follow_all(follower)
        for reader in readers:
            reader.join()
    runtime.stopping.set()

    # then every waiting read answered with the rotated key
    assert len(answers) == 60
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["stream_version"] == rotated.key["stream_version"]
        assert int(answer.headers["Ledger-Position"]) >= rotated.position


def test_ledger_position_is_at_least_the_min_position_reached(
    service: KeyService,
    ctx: CommandContext,
    open_replica: Callable[..., Follower],
    replica_client: ReplicaClient,
) -> None:
    """Committed but not yet in the replica's status: the header still says it."""
    follower = caught_up(service, ctx, open_replica)
    client = replica_client(follower, min_position_wait=0)
    held = follower.status.position
    rotated = service.rotate(ctx, "k")
    follow_all(follower)
    # the moment between a batch's commit and the status catching up with it
    follower.status.position = held
    answer = client.get("/v1/keys/k", headers={"Min-Position": str(rotated.position)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["stream_version"] == rotated.key["stream_version"]
    assert answer.headers["Ledger-Position"] == str(rotated.position)
    assert answer.headers["Ledger-Position-Exact"] == "true"


def test_ledger_position_is_a_lower_bound_of_what_the_body_shows(
    service: KeyService,
    ctx: CommandContext,
    open_replica: Callable[..., Follower],
    replica_client: ReplicaClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch applied while the handler reads shows in the body, not the header."""
    follower = caught_up(service, ctx, open_replica)
    client = replica_client(follower)
    held = follower.status.position
    rotated = service.rotate(ctx, "k")
    get_key = follower.service.get_key

    def applying_meanwhile(*args: Any, **kwargs: Any) -> Any:
        follow_all(follower)
        return get_key(*args, **kwargs)

    monkeypatch.setattr(follower.service, "get_key", applying_meanwhile)
    answer = client.get("/v1/keys/k")
    assert answer.status_code == 200, answer.text
    assert answer.json()["stream_version"] == rotated.key["stream_version"]
    assert answer.headers["Ledger-Position"] == str(held)
    assert answer.headers["Ledger-Position-Exact"] == "false"
    assert held < rotated.position
    # with nothing applied while it reads, the header is the position shown
    monkeypatch.setattr(follower.service, "get_key", get_key)
    again = client.get("/v1/keys/k")
    assert again.json() == answer.json()
    assert again.headers["Ledger-Position"] == str(rotated.position)
    assert again.headers["Ledger-Position-Exact"] == "true"


def test_a_store_outage_while_reading_is_503_not_500(
    service: KeyService,
    ctx: CommandContext,
    open_replica: Callable[..., Follower],
    replica_client: ReplicaClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    follower = caught_up(service, ctx, open_replica)
    client = replica_client(follower)

    def down() -> Any:
        raise PersistenceError("store down")

    monkeypatch.setattr(follower.ledger, "head", down)
    for headers in ({}, {"Min-Position": "1"}):
        answer = client.get("/v1/keys/k", headers=headers)
        assert_error(answer, 503, "LEDGER_UNAVAILABLE")


def test_min_position_not_reached_in_time_is_412_with_the_current_position(
    service: KeyService,
    ctx: CommandContext,
    open_replica: Callable[..., Follower],
    replica_client: ReplicaClient,
) -> None:
    """Past the wait, 412 names the position held; the header says it too."""
    follower = caught_up(service, ctx, open_replica)
    client = replica_client(follower, min_position_wait=0)
    held = follower.status.position
    late = client.get("/v1/keys/k", headers={"Min-Position": str(held + 5)})
    details = assert_error(late, 412, "POSITION_NOT_REACHED")
    assert details == {"current": held, "required": held + 5}
    assert late.headers["Ledger-Position"] == str(held)


@pytest.mark.parametrize(
    "wanted",
    [
        pytest.param("abc", id="error: not a number"),
        pytest.param("-1", id="error: negative"),
        pytest.param("1.5", id="error: not an integer"),
        pytest.param("9" * 19, id="error: too long"),
        pytest.param("", id="error: empty"),
    ],
)
def test_min_position_that_is_not_a_position_is_422(
    service: KeyService,
    ctx: CommandContext,
    open_replica: Callable[..., Follower],
    replica_client: ReplicaClient,
    wanted: str,
) -> None:
    """Min-Position is a non-negative integer, else 422 before any wait."""
    follower = caught_up(service, ctx, open_replica)
    client = replica_client(follower)
    answer = client.get("/v1/keys/k", headers={"Min-Position": wanted})
    assert_error(answer, 422, "INVALID_MIN_POSITION")


def test_status_shows_the_primary_head_the_lag_and_the_promotion(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    replica_client: ReplicaClient,
) -> None:
    """Status: following, one applied of three seen; then promoted, as a primary."""
    follower = announced_replica(service, open_replica, ctx)
    for name in ("a", "b"):
        service.create_key(ctx, name=name)
    held = follower.status.position
    follower.batch = 1
    follower.step()
    client = replica_client(follower)

    following = client.get("/v1/replication/status").json()
    assert following["state"] == "following"
    assert following["role"] == "replica"
    assert following["applied"]["position"] == held + 1
    assert following["primary_head"]["position"] == service.head_position()
    assert following["primary_head"]["seen_at"] is not None
    assert following["lag"]["events"] == 1

    follow_all(follower)
    promoted = client.post("/v1/replication/promote", json={})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["epoch"]["epoch"] == 2
    # the answer names the Promoted entry, not the service's start recorded after it
    body = promoted.json()
    [entry] = client.get(
        "/v1/events", params={"after": body["position"] - 1, "limit": 1}
    ).json()["events"]
    assert entry["type"] == PROMOTED_TOPIC
    assert entry["hash"] == body["hash"]
    assert promoted.headers["Ledger-Position"] == str(body["position"])
    assert follower.ledger.head().position > body["position"]
    status = client.get("/v1/replication/status").json()
    assert status["state"] == "promoted"
    assert status["role"] == "primary"
    assert status["lag"]["events"] == 0


def test_promote_route_refuses_with_409_and_records_nothing(
    service: KeyService,
    ctx: CommandContext,
    client: TestClient,
    open_replica: Callable[..., Follower],
    replica_client: ReplicaClient,
) -> None:
    """Behind, unannounced, already promoted, or not a replica: 409, head unchanged."""
    service.create_key(ctx, name="k")
    service.rotate(ctx, "k")
    follower = open_replica(ServiceSource(service))
    follower.batch = 1
    follower.step()
    replica = replica_client(follower)

    details = assert_refused(
        replica,
        "k",
        lambda: replica.post("/v1/replication/promote", json={}),
        409,
        "REPLICA_BEHIND",
    )
    assert details == {"applied": 1, "primary_head": 2}
    follow_all(follower)
    details = assert_refused(
        replica,
        "k",
        lambda: replica.post("/v1/replication/promote", json={"force": True}),
        409,
        "SIGNER_NOT_ANNOUNCED",
    )
    assert details == {"kid": follower.service.signer.kid}
    assert_refused(
        client,
        "k",
        lambda: client.post("/v1/replication/promote", json={}),
        409,
        "NOT_A_REPLICA",
    )


def test_promote_route_refuses_a_halted_replica_unless_forced(
    service: KeyService,
    ctx: CommandContext,
    open_replica: Callable[..., Follower],
    replica_client: ReplicaClient,
) -> None:
    """A replica halted on a gap: 409 REPLICA_HALTED with the halt; force promotes."""

    class Skipping(ServiceSource):
        def body(self, body: dict[str, Any]) -> dict[str, Any]:
            body["events"] = [e for e in body["events"] if e["position"] != 3]
            return body

    follower = open_replica(Skipping(service))
    own = public_key_pem(follower.service.signer.public_key)
    announce_signer(service, ctx.actor, "announce", own)
    for name in ("a", "b", "c"):
        service.create_key(ctx, name=name)
    with pytest.raises(ReplicaHalted):
        follow_all(follower)
    replica = replica_client(follower)
    details = assert_refused(
        replica,
        "a",
        lambda: replica.post("/v1/replication/promote", json={}),
        409,
        "REPLICA_HALTED",
    )
    assert details == {"reason": "GAP", "halted_position": 3}
    forced = replica.post("/v1/replication/promote", json={"force": True})
    assert forced.status_code == 200, forced.text
    assert forced.json()["epoch"]["forced"] is True
    assert forced.json()["epoch"]["possibly_lost"] == {"from": 3, "to": 4}


def test_a_second_promotion_over_http_is_refused(
    service: KeyService,
    ctx: CommandContext,
    open_replica: Callable[..., Follower],
    replica_client: ReplicaClient,
) -> None:
    """One epoch: promoting a promoted replica is 409 ALREADY_PROMOTED."""
    service.create_key(ctx, name="k")
    follower = announced_replica(service, open_replica, ctx)
    replica = replica_client(follower)
    assert replica.post("/v1/replication/promote", json={}).status_code == 200
    epoch = follower.service.ledger.current_epoch()
    # once promoted, its reads record the bootstrap token's use: compare epochs
    again = replica.post("/v1/replication/promote", json={"force": True})
    assert_error(again, 409, "ALREADY_PROMOTED")
    assert follower.service.ledger.current_epoch() == epoch
    promoted = [
        event
        for event in follower.service.events(limit=1000)
        if event["type"] == "keyledger.ledger.Promoted"
    ]
    assert len(promoted) == 1


# A fenced old primary ------------------------------------------------------------


def test_an_old_primary_that_saw_the_new_epoch_refuses_commands_over_http(
    service: KeyService,
    ctx: CommandContext,
    clock: AdjustableClock,
    open_replica: Callable[..., Follower],
    recording_runtime: Runtime,
    kek: Any,
) -> None:
    """Refused with 409 PRIMARY_FENCED, nothing recorded; reads still answer."""
    # given the old primary, serving and recording access, rejoined into epoch 2
    new_primary = rejoined_old_primary(service, ctx, clock, open_replica, kek)
    app = create_app(recording_runtime.settings, runtime=recording_runtime)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        before = service.ledger.head()
        key = snapshot(client, "alpha")
        assert (
            service.ledger.head() == before
        )  # the fence is seen: reads record nothing

        for send in (
            lambda: client.post("/v1/keys/alpha/rotate"),
            lambda: client.post("/v1/keys", json={"name": "new"}),
            lambda: client.post(
                "/v1/keys/alpha/encrypt", json={"plaintext": "aGVsbG8="}
            ),
        ):
            details = assert_error(send(), 409, "PRIMARY_FENCED")
            assert details["epoch"] == 2
            assert details["kid"] == new_primary.signer.kid
            assert details["own_kid"] == service.signer.kid
        assert snapshot(client, "alpha") == key
        assert head_position(client) == before.position
        status = client.get("/v1/replication/status").json()
        assert status["state"] == "fenced"
        assert status["fenced_by"]["epoch"] == 2
        assert status["fenced_by"]["kid"] == new_primary.signer.kid
    assert service.ledger.head() == before
