"""The development clock: every move recorded, and bounded far from year 9999."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from domain.clock import AdjustableClock, format_time
from ledger.service import LATEST_CLOCK_TIME
from tests.api._support import assert_error, head_position

TEN_YEARS = 315_360_000


def test_the_clock_never_moves_past_its_latest_time(
    client: TestClient, clock: AdjustableClock
) -> None:
    """A move that would pass the latest time is 422 CLOCK_OUT_OF_RANGE, unrecorded."""
    clock.advance(LATEST_CLOCK_TIME - clock.now() - timedelta(days=365))
    moved = client.post("/v1/dev/clock", json={"seconds": 86_400})
    assert moved.status_code == 200, moved.text
    before = head_position(client)
    now = clock.now()

    refused = client.post("/v1/dev/clock", json={"seconds": TEN_YEARS})

    details = assert_error(refused, 422, "CLOCK_OUT_OF_RANGE")
    assert details["latest"] == format_time(LATEST_CLOCK_TIME)
    assert head_position(client) == before
    assert clock.now() == now
    exact = (LATEST_CLOCK_TIME - now).total_seconds()
    assert_error(
        client.post("/v1/dev/clock", json={"seconds": int(exact)}),
        422,
        "CLOCK_OUT_OF_RANGE",
    )
    assert head_position(client) == before


def test_a_report_works_at_the_latest_reachable_time(
    client: TestClient, clock: AdjustableClock
) -> None:
    """Near the clock's bound, keys still rotate and the compliance report answers."""
    made = client.post(
        "/v1/keys", json={"name": "k", "rotation_period_seconds": 3600 * 24 * 3660}
    )
    assert made.status_code == 201, made.text
    clock.advance(LATEST_CLOCK_TIME - clock.now() - timedelta(days=2))
    assert client.post("/v1/keys/k/rotate", json={}).status_code == 200

    report = client.get(
        "/v1/reports/compliance",
        params={
            "from": format_time(clock.now() - timedelta(days=30)),
            "to": format_time(LATEST_CLOCK_TIME),
        },
    )

    assert report.status_code == 200, report.text
    assert datetime(8999, 12, 1, tzinfo=UTC) < clock.now() < LATEST_CLOCK_TIME


def test_a_retried_move_replays_and_moves_the_clock_once(
    client: TestClient, clock: AdjustableClock
) -> None:
    """The same Idempotency-Key and body replays the answer; the clock moved once."""
    headers = {"Idempotency-Key": "tick-1"}
    first = client.post("/v1/dev/clock", json={"seconds": 3600}, headers=headers)
    assert first.status_code == 200, first.text
    now, position = clock.now(), head_position(client)

    again = client.post("/v1/dev/clock", json={"seconds": 3600}, headers=headers)

    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["offset_seconds"] == first.json()["offset_seconds"]
    assert again.json()["receipts"] == first.json()["receipts"]
    assert clock.now() == now
    assert head_position(client) == position
    assert_error(
        client.post("/v1/dev/clock", json={"seconds": 60}, headers=headers),
        422,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert clock.now() == now
