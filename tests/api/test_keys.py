"""Key lifecycle routes through the API: every success, every refusal, reads and paging.

A refusal is checked by status, then by the envelope's code, and then by the key's
view, its history length and the ledger head being exactly as they were.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from fastapi.testclient import TestClient

from domain.clock import AdjustableClock, format_time
from tests.api._support import (
    all_history,
    assert_error,
    assert_refused,
    create,
    get_key,
    head_position,
    post_ok,
    snapshot,
    states,
    version_of,
)
from tests.conftest import T0

HOUR = timedelta(hours=1)


def _z(offset: timedelta) -> str:
    return format_time(T0 + offset)


def _without(view: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in fields}


@pytest.fixture
def rich_key(client: TestClient, clock: AdjustableClock) -> dict[str, Any]:
    """Key "k": v1 destroyed, v2 compromised, v3 disabled, v4 scheduled, v6 primary."""
    create(client, "k")
    for _ in range(5):
        post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/versions/1/schedule-destruction", {"days": 7})
    clock.advance(timedelta(days=7))
    assert len(client.post("/v1/scheduler/run").json()["destroyed"]) == 1
    post_ok(client, "/v1/keys/k/versions/2/compromise", {"reason": "leaked"})
    post_ok(client, "/v1/keys/k/versions/3/disable")
    post_ok(client, "/v1/keys/k/versions/4/schedule-destruction", {"days": 7})
    view = get_key(client, "k")
    assert states(view) == {
        1: "destroyed",
        2: "compromised",
        3: "disabled",
        4: "destroy_scheduled",
        5: "enabled",
        6: "enabled",
    }
    assert view["primary_version"] == 6
    assert view["stream_version"] == 11
    return view


# Create ----------------------------------------------------------------------


def test_create_key_returns_201_with_enabled_primary_v1(client: TestClient) -> None:
    """Creating a key answers 201 with version 1 enabled, primary and usable."""
    body = create(client, "alpha", description="for tests")
    key = body["key"]
    assert key["name"] == "alpha"
    assert key["algorithm"] == "aes-256-gcm"
    assert key["description"] == "for tests"
    assert key["state"] == "enabled"
    assert key["primary_version"] == 1
    assert key["primary_usable"] is True
    assert key["stream_version"] == 1
    assert key["created_at"] == format_time(T0)
    v1 = version_of(get_key(client, "alpha"), 1)
    assert v1["state"] == "enabled" and v1["primary"] is True
    assert v1["fingerprint"].startswith("sha256:")
    assert [r["type"] for r in body["receipts"]] == ["keyledger.key.Generated"]
    assert client.get("/v1/keys/alpha").json()["primary_version"] == 1


def test_create_key_refuses_existing_name_with_key_exists(client: TestClient) -> None:
    """Creating a key whose name is taken is 409 KEY_EXISTS and records nothing."""
    create(client, "dup")
    assert_refused(
        client,
        "dup",
        lambda: client.post("/v1/keys", json={"name": "dup"}),
        409,
        "KEY_EXISTS",
    )


INVALID_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("-starts-with-dash", id="leading-dash"),
    pytest.param("a" * 65, id="too-long"),
    pytest.param("has space", id="space"),
    pytest.param("caf\u00e9", id="non-ascii"),
]


def test_create_key_refuses_invalid_name_with_422(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """A name outside the allowed pattern is 422 INVALID_KEY_NAME."""
    for case in INVALID_NAMES:
        (name,) = case.values
        with subtests.test(msg=case.id):
            before = head_position(client)
            response = client.post("/v1/keys", json={"name": name})
            assert_error(response, 422, "INVALID_KEY_NAME")
            assert head_position(client) == before


def test_create_key_refuses_unsupported_algorithm_with_422(client: TestClient) -> None:
    """An unknown algorithm is 422 INVALID_FIELD naming the field."""
    response = client.post("/v1/keys", json={"name": "rsa", "algorithm": "rsa-2048"})
    details = assert_error(response, 422, "INVALID_FIELD")
    assert [f["field"] for f in details["fields"]] == ["algorithm"]
    assert_error(client.get("/v1/keys/rsa"), 404, "KEY_NOT_FOUND")


# Unknown keys and versions -------------------------------------------------------


UNKNOWN_KEY_ROUTES = [
    pytest.param("GET", "/v1/keys/nope", None, id="get"),
    pytest.param("GET", "/v1/keys/nope/history", None, id="history"),
    pytest.param("POST", "/v1/keys/nope/rotate", {}, id="rotate"),
    pytest.param("POST", "/v1/keys/nope/disable", {}, id="disable"),
    pytest.param("POST", "/v1/keys/nope/enable", {}, id="enable"),
    pytest.param("POST", "/v1/keys/nope/rollback", {"version": 1}, id="rollback"),
    pytest.param("POST", "/v1/keys/nope/versions/1/disable", {}, id="v-disable"),
    pytest.param("POST", "/v1/keys/nope/versions/1/enable", {}, id="v-enable"),
    pytest.param(
        "POST",
        "/v1/keys/nope/versions/1/compromise",
        {"reason": "x"},
        id="v-compromise",
    ),
    pytest.param(
        "POST",
        "/v1/keys/nope/versions/1/schedule-destruction",
        {"days": 7},
        id="v-schedule",
    ),
    pytest.param(
        "POST", "/v1/keys/nope/versions/1/cancel-destruction", {}, id="v-cancel"
    ),
]


def test_route_on_unknown_key_returns_404_key_not_found(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """Every key route answers 404 KEY_NOT_FOUND for a key that does not exist."""
    create(client, "other")
    for case in UNKNOWN_KEY_ROUTES:
        method, path, body = case.values
        with subtests.test(msg=case.id):
            response = client.request(method, path, json=body)
            details = assert_error(response, 404, "KEY_NOT_FOUND")
            assert details["key"] == "nope"
            assert head_position(client) == 1


VERSION_ACTIONS = [
    pytest.param("disable", {}, id="disable"),
    pytest.param("enable", {}, id="enable"),
    pytest.param("compromise", {"reason": "x"}, id="compromise"),
    pytest.param("schedule-destruction", {"days": 7}, id="schedule"),
    pytest.param("cancel-destruction", {}, id="cancel"),
]


def test_version_route_on_unknown_version_returns_404_version_not_found(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """Every version route answers 404 VERSION_NOT_FOUND for a version the key lacks."""
    create(client, "k")
    for case in VERSION_ACTIONS:
        action, body = case.values
        with subtests.test(msg=case.id):
            details = assert_refused(
                client,
                "k",
                partial(client.post, f"/v1/keys/k/versions/999/{action}", json=body),
                404,
                "VERSION_NOT_FOUND",
            )
            assert details["version"] == 999


# Rotate, disable, enable --------------------------------------------------------


def test_rotate_adds_enabled_primary_version(client: TestClient) -> None:
    """Rotating adds version 2 as the enabled primary and keeps version 1 enabled."""
    create(client, "k")
    body = post_ok(client, "/v1/keys/k/rotate", {"expected_version": 1})
    assert body["version"] == 2
    assert body["key"]["primary_version"] == 2
    assert body["key"]["stream_version"] == 2
    view = get_key(client, "k")
    assert states(view) == {1: "enabled", 2: "enabled"}
    assert version_of(view, 1)["fingerprint"] != version_of(view, 2)["fingerprint"]
    assert version_of(view, 2)["primary"] is True
    assert version_of(view, 1)["primary"] is False
    assert [r["type"] for r in body["receipts"]] == ["keyledger.key.Rotated"]


def test_rotate_disabled_key_is_refused_until_enabled(client: TestClient) -> None:
    """C02: rotating a disabled key is 409 KEY_DISABLED; after enabling, it rotates."""
    create(client, "k2")
    disabled = post_ok(client, "/v1/keys/k2/disable")["key"]
    assert disabled["state"] == "disabled"
    assert disabled["stream_version"] == 2
    assert_refused(
        client,
        "k2",
        lambda: client.post("/v1/keys/k2/rotate", json={"expected_version": 2}),
        409,
        "KEY_DISABLED",
    )
    key = client.get("/v1/keys/k2").json()
    assert key["stream_version"] == 2
    assert key["primary_version"] == 1
    enabled = post_ok(client, "/v1/keys/k2/enable")["key"]
    assert enabled["state"] == "enabled" and enabled["stream_version"] == 3
    rotated = post_ok(client, "/v1/keys/k2/rotate", {"expected_version": 3})["key"]
    assert rotated["primary_version"] == 2
    assert rotated["stream_version"] == 4
    assert client.get("/v1/keys/k2").json()["stream_version"] == 4


def test_disable_key_twice_is_refused_with_key_already_disabled(
    client: TestClient,
) -> None:
    """Disabling an already disabled key is 409 KEY_ALREADY_DISABLED."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/disable")
    assert_refused(
        client,
        "k",
        lambda: client.post("/v1/keys/k/disable"),
        409,
        "KEY_ALREADY_DISABLED",
    )


def test_enable_enabled_key_is_refused_with_key_already_enabled(
    client: TestClient,
) -> None:
    """Enabling a key that is enabled is 409 KEY_ALREADY_ENABLED."""
    create(client, "k")
    assert_refused(
        client,
        "k",
        lambda: client.post("/v1/keys/k/enable"),
        409,
        "KEY_ALREADY_ENABLED",
    )


def test_disable_then_enable_version_round_trips(client: TestClient) -> None:
    """A non-primary version can be disabled and enabled again."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    disabled = post_ok(client, "/v1/keys/k/versions/1/disable")
    assert states(get_key(client, "k")) == {1: "disabled", 2: "enabled"}
    assert disabled["receipts"][-1]["type"] == "keyledger.key.VersionDisabled"
    enabled = post_ok(client, "/v1/keys/k/versions/1/enable")
    assert states(get_key(client, "k")) == {1: "enabled", 2: "enabled"}
    assert enabled["receipts"][-1]["type"] == "keyledger.key.VersionEnabled"


def test_disable_primary_version_is_refused(client: TestClient) -> None:
    """Disabling the primary version is 409 CANNOT_DISABLE_PRIMARY."""
    create(client, "k")
    details = assert_refused(
        client,
        "k",
        lambda: client.post("/v1/keys/k/versions/1/disable"),
        409,
        "CANNOT_DISABLE_PRIMARY",
    )
    assert details["version"] == 1


def test_expected_version_mismatch_is_refused_with_details(client: TestClient) -> None:
    """A wrong expected_version is 409 with expected and actual in details."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    details = assert_refused(
        client,
        "k",
        lambda: client.post("/v1/keys/k/rotate", json={"expected_version": 1}),
        409,
        "EXPECTED_VERSION_MISMATCH",
    )
    assert details["expected"] == 1
    assert details["actual"] == 2


STALE_COMMANDS = [
    pytest.param("/v1/keys/k/rotate", {}, id="rotate"),
    pytest.param("/v1/keys/k/disable", {}, id="disable"),
    pytest.param("/v1/keys/k/versions/1/disable", {}, id="v-disable"),
    pytest.param(
        "/v1/keys/k/versions/1/compromise", {"reason": "x"}, id="v-compromise"
    ),
    pytest.param(
        "/v1/keys/k/versions/1/schedule-destruction", {"days": 7}, id="v-schedule"
    ),
    pytest.param("/v1/keys/k/rollback", {"version": 1}, id="rollback"),
]


def test_expected_version_is_checked_on_every_command(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """Each key command refuses a stale expected_version with 409."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    for case in STALE_COMMANDS:
        path, body = case.values
        with subtests.test(msg=case.id):
            details = assert_refused(
                client,
                "k",
                partial(client.post, path, json={**body, "expected_version": 5}),
                409,
                "EXPECTED_VERSION_MISMATCH",
            )
            assert (details["expected"], details["actual"]) == (5, 2)


# Compromise --------------------------------------------------------------------


def test_compromise_primary_warns_and_leaves_no_usable_primary(
    client: TestClient,
) -> None:
    """Compromising the primary is 200 with primary_compromised and a warning."""
    create(client, "k")
    body = post_ok(client, "/v1/keys/k/versions/1/compromise", {"reason": "leaked"})
    assert body["primary_compromised"] is True
    assert isinstance(body["warning"], str) and body["warning"]
    key = client.get("/v1/keys/k").json()
    assert key["primary_usable"] is False
    assert key["primary_version"] == 1
    v1 = version_of(key, 1)
    assert v1["state"] == "compromised"
    assert v1["compromised"] is True
    assert v1["compromise_reason"] == "leaked"
    rotated = post_ok(client, "/v1/keys/k/rotate")["key"]
    assert rotated["primary_version"] == 2
    assert rotated["primary_usable"] is True


def test_compromise_non_primary_reports_no_warning(client: TestClient) -> None:
    """Compromising a non-primary version says primary_compromised false, no warning."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    body = post_ok(client, "/v1/keys/k/versions/1/compromise", {"reason": "lost"})
    assert body["primary_compromised"] is False
    assert "warning" not in body
    assert body["key"]["primary_usable"] is True


def test_compromise_scheduled_version_keeps_it_scheduled(client: TestClient) -> None:
    """A scheduled version marked compromised stays scheduled until cancelled."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/versions/1/schedule-destruction", {"days": 7})
    post_ok(client, "/v1/keys/k/versions/1/compromise", {"reason": "lost"})
    v1 = version_of(get_key(client, "k"), 1)
    assert (v1["state"], v1["compromised"]) == ("destroy_scheduled", True)
    post_ok(client, "/v1/keys/k/versions/1/cancel-destruction")
    assert version_of(get_key(client, "k"), 1)["state"] == "compromised"


def test_enable_compromised_version_is_refused(client: TestClient) -> None:
    """Enabling a compromised version is 409 VERSION_COMPROMISED."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/versions/1/compromise", {"reason": "leaked"})
    assert_refused(
        client,
        "k",
        lambda: client.post("/v1/keys/k/versions/1/enable"),
        409,
        "VERSION_COMPROMISED",
    )


# Destruction -------------------------------------------------------------------


def test_schedule_destruction_of_primary_is_refused_until_rotated(
    client: TestClient,
) -> None:
    """C06: scheduling the primary is 409; after a rotation v1 can be scheduled."""
    create(client, "k6")
    assert_refused(
        client,
        "k6",
        lambda: client.post(
            "/v1/keys/k6/versions/1/schedule-destruction", json={"days": 7}
        ),
        409,
        "CANNOT_DESTROY_PRIMARY",
    )
    post_ok(client, "/v1/keys/k6/rotate")
    body = post_ok(client, "/v1/keys/k6/versions/1/schedule-destruction", {"days": 7})
    key = body["key"]
    assert key["primary_version"] == 2
    v1 = version_of(get_key(client, "k6"), 1)
    assert v1["state"] == "destroy_scheduled"
    assert v1["scheduled_at"] == format_time(T0)
    assert v1["destroy_at"] == format_time(T0 + timedelta(days=7))
    assert version_of(get_key(client, "k6"), 2)["state"] == "enabled"
    assert body["receipts"][-1]["type"] == "keyledger.key.DestructionScheduled"


def test_schedule_destruction_period_is_bounded_by_7_and_30_days(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """Waiting periods of 6 and 31 days are refused with 422; 7 and 30 are accepted."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/rotate")
    for days in (6, 31):
        with subtests.test(msg=f"{days} days"):
            details = assert_refused(
                client,
                "k",
                partial(
                    client.post,
                    "/v1/keys/k/versions/1/schedule-destruction",
                    json={"days": days},
                ),
                422,
                "DESTRUCTION_PERIOD_OUT_OF_RANGE",
            )
            assert (details["min_days"], details["max_days"], details["days"]) == (
                7,
                30,
                days,
            )
    post_ok(client, "/v1/keys/k/versions/1/schedule-destruction", {"days": 7})
    post_ok(client, "/v1/keys/k/versions/2/schedule-destruction", {"days": 30})
    view = get_key(client, "k")
    assert version_of(view, 1)["destroy_at"] == format_time(T0 + timedelta(days=7))
    assert version_of(view, 2)["destroy_at"] == format_time(T0 + timedelta(days=30))


def test_schedule_destruction_without_days_uses_default_period(
    client: TestClient,
) -> None:
    """Without days, the deployment's default of 30 days is used."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/versions/1/schedule-destruction")
    assert version_of(get_key(client, "k"), 1)["destroy_at"] == format_time(
        T0 + timedelta(days=30)
    )


def test_cancel_destruction_returns_version_to_disabled(client: TestClient) -> None:
    """Cancelling a scheduled destruction leaves the version disabled, never enabled."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/versions/1/schedule-destruction", {"days": 7})
    body = post_ok(client, "/v1/keys/k/versions/1/cancel-destruction")
    v1 = version_of(get_key(client, "k"), 1)
    assert v1["state"] == "disabled"
    assert v1["destroy_at"] is None and v1["scheduled_at"] is None
    assert body["receipts"][-1]["type"] == "keyledger.key.DestructionCancelled"
    assert client.post("/v1/scheduler/run").json()["destroyed"] == []


# Refusals on a key with a version in every state -----------------------------------


RICH_KEY_REFUSALS = [
    pytest.param("enable", {}, 409, "KEY_ALREADY_ENABLED", id="enable-key"),
    pytest.param(
        "versions/6/disable", {}, 409, "CANNOT_DISABLE_PRIMARY", id="disable-primary"
    ),
    pytest.param(
        "versions/3/disable", {}, 409, "INVALID_TRANSITION", id="disable-disabled"
    ),
    pytest.param(
        "versions/4/disable", {}, 409, "INVALID_TRANSITION", id="disable-scheduled"
    ),
    pytest.param(
        "versions/2/disable", {}, 409, "VERSION_COMPROMISED", id="disable-compromised"
    ),
    pytest.param(
        "versions/1/disable", {}, 409, "VERSION_DESTROYED", id="disable-destroyed"
    ),
    pytest.param(
        "versions/5/enable", {}, 409, "INVALID_TRANSITION", id="enable-enabled"
    ),
    pytest.param(
        "versions/4/enable", {}, 409, "INVALID_TRANSITION", id="enable-scheduled"
    ),
    pytest.param(
        "versions/2/enable", {}, 409, "VERSION_COMPROMISED", id="enable-compromised"
    ),
    pytest.param(
        "versions/1/enable", {}, 409, "VERSION_DESTROYED", id="enable-destroyed"
    ),
    pytest.param(
        "versions/2/compromise",
        {"reason": "again"},
        409,
        "ALREADY_COMPROMISED",
        id="compromise-compromised",
    ),
    pytest.param(
        "versions/1/compromise",
        {"reason": "late"},
        409,
        "VERSION_DESTROYED",
        id="compromise-destroyed",
    ),
    pytest.param(
        "versions/5/compromise", {}, 422, "INVALID_FIELD", id="compromise-no-reason"
    ),
    pytest.param(
        "versions/5/compromise",
        {"reason": ""},
        422,
        "INVALID_FIELD",
        id="compromise-empty-reason",
    ),
    pytest.param(
        "versions/6/schedule-destruction",
        {"days": 7},
        409,
        "CANNOT_DESTROY_PRIMARY",
        id="schedule-primary",
    ),
    pytest.param(
        "versions/4/schedule-destruction",
        {"days": 7},
        409,
        "DESTRUCTION_ALREADY_SCHEDULED",
        id="schedule-scheduled",
    ),
    pytest.param(
        "versions/1/schedule-destruction",
        {"days": 7},
        409,
        "VERSION_DESTROYED",
        id="schedule-destroyed",
    ),
    pytest.param(
        "versions/5/schedule-destruction",
        {"days": 6},
        422,
        "DESTRUCTION_PERIOD_OUT_OF_RANGE",
        id="schedule-6-days",
    ),
    pytest.param(
        "versions/5/schedule-destruction",
        {"days": 31},
        422,
        "DESTRUCTION_PERIOD_OUT_OF_RANGE",
        id="schedule-31-days",
    ),
    pytest.param(
        "versions/5/cancel-destruction",
        {},
        409,
        "DESTRUCTION_NOT_SCHEDULED",
        id="cancel-enabled",
    ),
    pytest.param(
        "versions/1/cancel-destruction",
        {},
        409,
        "DESTRUCTION_NOT_SCHEDULED",
        id="cancel-destroyed",
    ),
    pytest.param(
        "rollback", {"version": 6}, 409, "ALREADY_PRIMARY", id="rollback-primary"
    ),
    pytest.param(
        "rollback",
        {"version": 2},
        409,
        "VERSION_COMPROMISED",
        id="rollback-compromised",
    ),
    pytest.param(
        "rollback", {"version": 1}, 409, "VERSION_DESTROYED", id="rollback-destroyed"
    ),
    pytest.param(
        "rollback", {"version": 3}, 409, "INVALID_TRANSITION", id="rollback-disabled"
    ),
    pytest.param(
        "rollback", {"version": 4}, 409, "INVALID_TRANSITION", id="rollback-scheduled"
    ),
    pytest.param(
        "rollback", {"version": 99}, 404, "VERSION_NOT_FOUND", id="rollback-unknown"
    ),
    pytest.param(
        "rollback",
        {"to_stream_version": 1},
        409,
        "ROLLBACK_TARGET_UNUSABLE",
        id="rollback-to-destroyed-primary",
    ),
    pytest.param(
        "rollback",
        {"to_stream_version": 2},
        409,
        "ROLLBACK_TARGET_UNUSABLE",
        id="rollback-to-compromised-primary",
    ),
    pytest.param(
        "rollback",
        {"to_stream_version": 11},
        409,
        "ROLLBACK_TARGET_NOT_IN_PAST",
        id="rollback-to-now",
    ),
    pytest.param(
        "rollback",
        {"to_stream_version": 50},
        409,
        "ROLLBACK_TARGET_NOT_IN_PAST",
        id="rollback-to-future",
    ),
    pytest.param(
        "rollback",
        {"version": 5, "to_stream_version": 5},
        422,
        "INVALID_ROLLBACK_TARGET",
        id="rollback-two-targets",
    ),
    pytest.param(
        "rollback",
        {"version": 5, "to_time": "2026-03-01T12:00:00Z"},
        422,
        "INVALID_ROLLBACK_TARGET",
        id="rollback-version-and-time",
    ),
    pytest.param(
        "rollback", {}, 422, "INVALID_ROLLBACK_TARGET", id="rollback-no-target"
    ),
    pytest.param(
        "rollback",
        {"to_time": "2026-03-01T12:00:00"},
        422,
        "INVALID_TIME",
        id="rollback-naive-time",
    ),
    pytest.param(
        "rollback",
        {"to_time": "yesterday"},
        422,
        "INVALID_TIME",
        id="rollback-bad-time",
    ),
]


def test_refused_command_leaves_key_and_ledger_unchanged(
    client: TestClient, rich_key: dict[str, Any], subtests: pytest.Subtests
) -> None:
    """Each refused command answers its status and code and records nothing at all."""
    for case in RICH_KEY_REFUSALS:
        path, body, status, code = case.values
        with subtests.test(msg=case.id):
            assert_refused(
                client,
                "k",
                partial(client.post, f"/v1/keys/k/{path}", json=body),
                status,
                code,
            )
    assert client.get("/v1/keys/k").json() == rich_key


# Rollback ----------------------------------------------------------------------


def test_rollback_to_version_makes_it_primary(client: TestClient) -> None:
    """Rollback {version} makes an enabled earlier version primary again."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    body = post_ok(client, "/v1/keys/k/rollback", {"version": 1, "expected_version": 2})
    assert body["key"]["primary_version"] == 1
    assert states(get_key(client, "k")) == {1: "enabled", 2: "enabled"}
    assert body["receipts"][-1]["type"] == "keyledger.key.PrimaryRolledBack"
    assert client.get("/v1/keys/k").json()["primary_version"] == 1


def test_rollback_to_stream_version_restores_that_point(client: TestClient) -> None:
    """Rollback {to_stream_version} restores the primary and disables later versions."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/rotate")
    body = post_ok(client, "/v1/keys/k/rollback", {"to_stream_version": 2})
    key = body["key"]
    assert key["primary_version"] == 2
    assert states(get_key(client, "k")) == {1: "enabled", 2: "enabled", 3: "disabled"}
    assert key["stream_version"] == 4
    assert body["receipts"][-1]["type"] == "keyledger.key.RolledBack"


def test_rollback_to_time_restores_state_at_that_time(
    client: TestClient, clock: AdjustableClock
) -> None:
    """Rollback {to_time} with a Z time returns the key to its state then."""
    create(client, "k")
    clock.advance(HOUR)
    post_ok(client, "/v1/keys/k/rotate")
    clock.advance(HOUR)
    body = post_ok(client, "/v1/keys/k/rollback", {"to_time": _z(HOUR / 2)})
    key = body["key"]
    assert key["primary_version"] == 1
    assert states(get_key(client, "k")) == {1: "enabled", 2: "disabled"}
    assert key["stream_version"] == 3


def test_rollback_to_time_before_now_with_offset_is_accepted(
    client: TestClient, clock: AdjustableClock
) -> None:
    """A to_time with a +02:00 offset means the same instant as its Z form."""
    create(client, "k")
    clock.advance(HOUR)
    post_ok(client, "/v1/keys/k/rotate")
    clock.advance(HOUR)
    # 12:30Z written as 14:30+02:00.
    body = post_ok(
        client, "/v1/keys/k/rollback", {"to_time": "2026-03-01T14:30:00+02:00"}
    )
    assert body["key"]["primary_version"] == 1


def test_rollback_on_disabled_key_is_refused(client: TestClient) -> None:
    """Rolling back a disabled key is 409 KEY_DISABLED."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/disable")
    assert_refused(
        client,
        "k",
        lambda: client.post("/v1/keys/k/rollback", json={"version": 1}),
        409,
        "KEY_DISABLED",
    )


def test_rollback_to_compromised_primary_is_refused(client: TestClient) -> None:
    """Rolling back to a point whose primary is now compromised is refused."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/versions/1/compromise", {"reason": "leaked"})
    assert_refused(
        client,
        "k",
        lambda: client.post("/v1/keys/k/rollback", json={"to_stream_version": 1}),
        409,
        "ROLLBACK_TARGET_UNUSABLE",
    )
    assert_refused(
        client,
        "k",
        lambda: client.post("/v1/keys/k/rollback", json={"version": 1}),
        409,
        "VERSION_COMPROMISED",
    )


def test_rollback_past_cancelled_destruction_never_leaves_dateless_schedule(
    client: TestClient,
) -> None:
    """Rolling back past a cancelled destruction never revives a dateless schedule."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/versions/1/schedule-destruction", {"days": 7})
    post_ok(client, "/v1/keys/k/versions/1/cancel-destruction")
    response = client.post("/v1/keys/k/rollback", json={"to_stream_version": 3})
    if response.status_code == 200:
        v1 = version_of(get_key(client, "k"), 1)
        assert v1["state"] != "destroy_scheduled" or v1["destroy_at"] is not None
    else:
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] != "CONCURRENT_MODIFICATION"


# Reading at a time ---------------------------------------------------------------


def test_get_key_at_time_returns_state_then(
    client: TestClient, clock: AdjustableClock
) -> None:
    """GET ?at= shows the key as recorded at that time, with as_of."""
    create(client, "k")
    clock.advance(HOUR)
    post_ok(client, "/v1/keys/k/rotate")
    clock.advance(HOUR)
    post_ok(client, "/v1/keys/k/disable")

    early = client.get("/v1/keys/k", params={"at": _z(HOUR / 2)})
    assert early.status_code == 200, early.text
    assert early.json()["primary_version"] == 1
    assert early.json()["stream_version"] == 1
    assert early.json()["as_of"] == _z(HOUR / 2)

    middle = client.get("/v1/keys/k", params={"at": _z(HOUR)}).json()
    assert (middle["primary_version"], middle["stream_version"]) == (2, 2)
    assert middle["state"] == "enabled"

    offset = client.get("/v1/keys/k", params={"at": "2026-03-01T15:30:00+02:00"}).json()
    assert offset["stream_version"] == 2

    latest = client.get("/v1/keys/k", params={"at": _z(3 * HOUR)}).json()
    assert latest["state"] == "disabled" and latest["stream_version"] == 3


def test_get_key_at_time_without_offset_is_invalid_time(client: TestClient) -> None:
    """C08 step 4: a time without a UTC offset is 422 INVALID_TIME."""
    create(client, "k")
    response = client.get("/v1/keys/k", params={"at": "2026-03-01T12:00:00"})
    assert_error(response, 422, "INVALID_TIME")


def test_get_key_at_time_before_creation_is_404(client: TestClient) -> None:
    """A time before the key existed is 404 KEY_NOT_FOUND."""
    create(client, "k")
    response = client.get("/v1/keys/k", params={"at": _z(-timedelta(seconds=1))})
    assert_error(response, 404, "KEY_NOT_FOUND")


@pytest.mark.parametrize(
    ("at", "via"),
    [
        pytest.param("0001-01-01T00:00:00+01:00", "get", id="get-year-1-east"),
        pytest.param("9999-12-31T23:59:59-01:00", "get", id="get-year-9999-west"),
        pytest.param(
            "0001-01-01T00:00:00+01:00", "rollback", id="rollback-year-1-east"
        ),
    ],
)
def test_time_out_of_utc_range_is_invalid_time(
    client: TestClient, at: str, via: str
) -> None:
    """A time that cannot be expressed in UTC is 422 INVALID_TIME, not 500."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    if via == "get":
        response = client.get("/v1/keys/k", params={"at": at})
        assert_error(response, 422, "INVALID_TIME")
    else:
        assert_refused(
            client,
            "k",
            lambda: client.post("/v1/keys/k/rollback", json={"to_time": at}),
            422,
            "INVALID_TIME",
        )


def test_current_view_matches_replay_after_every_command(
    client: TestClient, clock: AdjustableClock, subtests: pytest.Subtests
) -> None:
    """After each command the projected view equals the key replayed to now."""
    steps = [
        ("/v1/keys", {"name": "k"}),
        ("/v1/keys/k/rotate", {}),
        ("/v1/keys/k/rotate", {}),
        ("/v1/keys/k/versions/1/disable", {}),
        ("/v1/keys/k/versions/1/enable", {}),
        ("/v1/keys/k/versions/1/schedule-destruction", {"days": 7}),
        ("/v1/keys/k/versions/2/compromise", {"reason": "x"}),
        ("/v1/keys/k/rollback", {"to_stream_version": 3}),
        ("/v1/keys/k/versions/1/cancel-destruction", {}),
        ("/v1/keys/k/versions/1/enable", {}),
        ("/v1/keys/k/rollback", {"version": 1}),
        ("/v1/keys/k/versions/3/compromise", {"reason": "y"}),
        ("/v1/keys/k/rotate", {}),
        ("/v1/keys/k/disable", {}),
        ("/v1/keys/k/enable", {}),
        ("/v1/keys/k/versions/3/schedule-destruction", {"days": 7}),
        ("/v1/scheduler/run", None),
    ]
    # usage counts are shown only now, not as of a time
    volatile = ("as_of", "last_position", "next_versions_cursor", "usage")
    for number, (path, body) in enumerate(steps, start=1):
        clock.advance(timedelta(days=8) if body is None else timedelta(seconds=1))
        with subtests.test(msg=f"{number} {path}"):
            response = client.post(path, json=body)
            assert response.status_code in (200, 201), response.text
            current = get_key(client, "k")
            replayed = client.get("/v1/keys/k", params={"at": format_time(clock.now())})
            assert replayed.status_code == 200, replayed.text
            assert _without(current, volatile) == _without(replayed.json(), volatile)
    assert get_key(client, "k")["stream_version"] == len(steps)


# Listing -------------------------------------------------------------------------


@pytest.fixture
def five_keys(client: TestClient) -> list[str]:
    """Keys alpha-1, alpha-2, beta-1 (disabled), beta-2 and gamma."""
    names = ["gamma", "beta-2", "alpha-1", "beta-1", "alpha-2"]
    for name in names:
        create(client, name)
    post_ok(client, "/v1/keys/beta-1/disable")
    return sorted(names)


def _names(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [key["name"] for key in response.json()["keys"]]


def test_list_keys_pages_in_name_order_with_cursor(
    client: TestClient, five_keys: list[str]
) -> None:
    """Paging by limit and the after cursor lists every key once, in name order."""
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if after is not None:
            params["after"] = after
        page = client.get("/v1/keys", params=params)
        seen += _names(page)
        pages += 1
        after = page.json()["next_cursor"]
        if after is None:
            break
        assert after == seen[-1]
    assert seen == five_keys
    assert pages == 3


def test_list_keys_exact_page_has_no_cursor(
    client: TestClient, five_keys: list[str]
) -> None:
    """A page that holds exactly the remaining keys has no next cursor."""
    page = client.get("/v1/keys", params={"limit": 5})
    assert _names(page) == five_keys
    assert page.json()["next_cursor"] is None


LIST_FILTERS = [
    pytest.param({"prefix": "beta"}, ["beta-1", "beta-2"], id="prefix"),
    pytest.param({"state": "disabled"}, ["beta-1"], id="disabled"),
    pytest.param(
        {"state": "enabled"}, ["alpha-1", "alpha-2", "beta-2", "gamma"], id="enabled"
    ),
    pytest.param({"state": "enabled", "prefix": "beta"}, ["beta-2"], id="prefix-state"),
    pytest.param(
        {"prefix": "alpha", "after": "alpha-1"}, ["alpha-2"], id="prefix-after"
    ),
    pytest.param({"prefix": "zeta"}, [], id="no-match"),
    pytest.param({"prefix": "_"}, [], id="like-underscore-is-literal"),
    pytest.param({"algorithm": "aes-256-gcm", "limit": 1}, ["alpha-1"], id="algorithm"),
    pytest.param({"algorithm": "rsa"}, [], id="other-algorithm"),
    pytest.param({"after": "gamma"}, [], id="after-last"),
]


def test_list_keys_filters(
    client: TestClient, five_keys: list[str], subtests: pytest.Subtests
) -> None:
    """The prefix, state, algorithm and after filters combine as documented."""
    for case in LIST_FILTERS:
        params, expected = case.values
        with subtests.test(msg=case.id):
            assert _names(client.get("/v1/keys", params=params)) == expected


BAD_LIST_QUERIES = [
    pytest.param({"limit": 100000}, id="limit-huge"),
    pytest.param({"limit": 1001}, id="limit-over"),
    pytest.param({"limit": 0}, id="limit-zero"),
    pytest.param({"limit": "ten"}, id="limit-text"),
    pytest.param({"state": "destroyed"}, id="state-unknown"),
    pytest.param({"prefix": ""}, id="prefix-empty"),
    pytest.param({"after": "a" * 65}, id="after-too-long"),
]


def test_list_keys_bad_query_is_422(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """Out-of-range or malformed list parameters are 422 INVALID_FIELD."""
    for case in BAD_LIST_QUERIES:
        (params,) = case.values
        with subtests.test(msg=case.id):
            assert_error(client.get("/v1/keys", params=params), 422, "INVALID_FIELD")


# History -----------------------------------------------------------------------


def test_history_pages_return_every_event_once_in_order(client: TestClient) -> None:
    """Paging history by the cursor returns each event exactly once, in stream order."""
    create(client, "k")
    create(client, "other")
    for path in ["rotate", "disable", "enable", "rotate", "versions/1/disable"]:
        post_ok(client, f"/v1/keys/k/{path}")
    full = all_history(client, "k")
    assert [e["stream_version"] for e in full] == [1, 2, 3, 4, 5, 6]
    for limit in (1, 2, 3, 4, 6):
        paged = all_history(client, "k", limit=limit)
        assert paged == full
    positions = [e["position"] for e in full]
    assert positions == sorted(positions) and len(set(positions)) == 6
    assert {e["subject"] for e in full} == {"key:k"}
    assert [e["type"] for e in full] == [
        "keyledger.key.Generated",
        "keyledger.key.Rotated",
        "keyledger.key.Disabled",
        "keyledger.key.Enabled",
        "keyledger.key.Rotated",
        "keyledger.key.VersionDisabled",
    ]


def test_history_first_page_has_cursor_at_last_stream_version(
    client: TestClient,
) -> None:
    """A partial history page's next_cursor is the last stream version on it."""
    create(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    post_ok(client, "/v1/keys/k/rotate")
    page = client.get("/v1/keys/k/history", params={"limit": 2}).json()
    assert [e["stream_version"] for e in page["events"]] == [1, 2]
    assert page["next_cursor"] == 2
    rest = client.get("/v1/keys/k/history", params={"after": 2, "limit": 2}).json()
    assert [e["stream_version"] for e in rest["events"]] == [3]
    assert rest["next_cursor"] is None


BAD_HISTORY_QUERIES = [
    pytest.param({"limit": 0}, id="limit-zero"),
    pytest.param({"limit": 1001}, id="limit-over"),
    pytest.param({"after": -1}, id="after-negative"),
    pytest.param({"after": "x"}, id="after-text"),
]


def test_history_bad_query_is_422(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    """Out-of-range history paging parameters are 422 INVALID_FIELD."""
    create(client, "k")
    for case in BAD_HISTORY_QUERIES:
        (params,) = case.values
        with subtests.test(msg=case.id):
            response = client.get("/v1/keys/k/history", params=params)
            assert_error(response, 422, "INVALID_FIELD")


def test_snapshot_helper_sees_a_successful_command(client: TestClient) -> None:
    """The unchanged-state check is sensitive: a success changes all three parts."""
    create(client, "k")
    before = snapshot(client, "k")
    post_ok(client, "/v1/keys/k/rotate")
    after = snapshot(client, "k")
    assert after.view != before.view
    assert after.history_count == (before.history_count or 0) + 1
    assert after.head_position == before.head_position + 1


def test_list_filter_outside_the_name_alphabet_is_422(client: TestClient) -> None:
    """A prefix no key name could have (a LIKE wildcard) is refused, not matched."""
    response = client.get("/v1/keys", params={"prefix": "%"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "INVALID_FIELD"
