"""POST /v1/keys/{name}/trim: old versions leave the key, their material is erased.

Case C04 steps 1 to 3: trimming is tied to min_decryption_version, is one
``VersionsTrimmed`` event, and leaves the history of the trimmed versions intact.
Every refusal is checked by status, then code, then the key and ledger unchanged.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from domain.clock import AdjustableClock
from projections.rebuild import rebuild
from tests.api._support import (
    all_history,
    assert_error,
    assert_refused,
    create,
    get_key,
    post_ok,
)

TRIMMED = "keyledger.key.VersionsTrimmed"


def _trim(client: TestClient, name: str, **body: Any) -> Any:
    return client.post(f"/v1/keys/{name}/trim", json=body)


def _material_versions(runtime: Runtime, key_id: str) -> list[int]:
    rows = runtime.service.ledger.query(
        "SELECT version FROM key_material WHERE key_id = %s ORDER BY version",
        (key_id,),
    )
    return [row["version"] for row in rows]


@pytest.fixture
def k4(client: TestClient) -> str:
    """C04 setup: k4 rotated 4 times (v5) with min_decryption_version 3.

    Returns a ciphertext encrypted under v1 before the rotations.
    """
    create(client, "k4")
    sealed = post_ok(
        client, "/v1/keys/k4/encrypt", {"plaintext": base64.b64encode(b"old").decode()}
    )["ciphertext"]
    for _ in range(4):
        post_ok(client, "/v1/keys/k4/rotate")
    post_ok(client, "/v1/keys/k4/config", {"min_decryption_version": 3})
    view = get_key(client, "k4")
    assert view["primary_version"] == 5
    assert view["stream_version"] == 6
    assert isinstance(sealed, str) and sealed.startswith("keyledger:v1:")
    return sealed


def test_c04_trim_above_min_decryption_is_refused(client: TestClient, k4: str) -> None:
    """C04 step 1: trimming to 4 above the floor 3 is 409, nothing is appended."""
    details = assert_refused(
        client,
        "k4",
        lambda: _trim(client, "k4", min_available_version=4),
        409,
        "TRIM_ABOVE_MIN_DECRYPTION",
    )

    assert (details["min"], details["requested"]) == (3, 4)


def test_c04_trim_removes_versions_below_and_keeps_history(
    client: TestClient, runtime: Runtime, k4: str
) -> None:
    """C04 step 2: one VersionsTrimmed{removed:[1,2]}; the view lists 3 to 5 only."""
    history_before = all_history(client, "k4")

    response = _trim(client, "k4", min_available_version=3)

    assert response.status_code == 200, response.text
    body = response.json()
    assert [receipt["type"] for receipt in body["receipts"]] == [TRIMMED]
    assert body["removed"] == [1, 2]
    assert body["min_available_version"] == 3
    assert body["key"]["stream_version"] == 7
    assert response.headers["Ledger-Position"] == str(body["receipts"][0]["position"])
    view = get_key(client, "k4")
    assert [v["version"] for v in view["versions"]] == [3, 4, 5]
    assert view["versions_count"] == 3
    assert view["primary_version"] == 5
    history = all_history(client, "k4")
    assert history[:-1] == history_before
    assert history[-1]["type"] == TRIMMED
    assert history[-1]["payload"]["removed"] == [1, 2]
    assert history[-1]["payload"]["min_available_version"] == 3
    made = [(e["type"], e["payload"].get("version")) for e in history[:2]]
    assert made == [("keyledger.key.Generated", None), ("keyledger.key.Rotated", 2)]
    assert _material_versions(runtime, view["key_id"]) == [3, 4, 5]


def test_c04_config_below_trimmed_versions_is_refused(
    client: TestClient, k4: str
) -> None:
    """C04 step 3: min_decryption_version 2 after trimming to 3 is VERSION_TRIMMED."""
    post_ok(client, "/v1/keys/k4/trim", {"min_available_version": 3})

    details = assert_refused(
        client,
        "k4",
        lambda: client.post("/v1/keys/k4/config", json={"min_decryption_version": 2}),
        409,
        "VERSION_TRIMMED",
    )

    assert details["min_available_version"] == 3
    assert post_ok(client, "/v1/keys/k4/config", {"min_decryption_version": 4})


def test_decrypting_data_of_a_trimmed_version_is_refused(
    client: TestClient, k4: str
) -> None:
    """Old v1 ciphertext is refused with VERSION_TRIMMED, and v1 cannot encrypt."""
    post_ok(client, "/v1/keys/k4/trim", {"min_available_version": 3})

    refused = client.post("/v1/keys/k4/decrypt", json={"ciphertext": k4})
    explicit = client.post(
        "/v1/keys/k4/encrypt",
        json={"plaintext": base64.b64encode(b"x").decode(), "version": 2},
    )

    assert assert_error(refused, 409, "VERSION_TRIMMED")["version"] == 1
    assert assert_error(explicit, 409, "VERSION_TRIMMED")["version"] == 2


def test_trim_at_or_below_the_lowest_kept_version_is_refused(
    client: TestClient, k4: str
) -> None:
    """Trimming to 1, or again to 3 after trimming to 3, is 409 NOTHING_TO_TRIM."""
    assert_refused(
        client,
        "k4",
        lambda: _trim(client, "k4", min_available_version=1),
        409,
        "NOTHING_TO_TRIM",
    )
    post_ok(client, "/v1/keys/k4/trim", {"min_available_version": 3})

    for requested in (2, 3):
        details = assert_refused(
            client,
            "k4",
            partial(_trim, client, "k4", min_available_version=requested),
            409,
            "NOTHING_TO_TRIM",
        )
        assert (details["lowest"], details["requested"]) == (3, requested)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"min_available_version": 0}, "INVALID_FIELD"),
        ({"min_available_version": -1}, "INVALID_FIELD"),
        ({"min_available_version": "2"}, "INVALID_FIELD"),
        ({"min_available_version": 2.0}, "INVALID_FIELD"),
        ({"min_available_version": True}, "INVALID_FIELD"),
        ({"min_available_version": None}, "INVALID_FIELD"),
        ({}, "INVALID_FIELD"),
        ({"min_available_version": 2, "removed": [1]}, "UNKNOWN_FIELD"),
    ],
)
def test_trim_body_is_strict(
    client: TestClient, k4: str, body: dict[str, Any], code: str
) -> None:
    """Only a positive integer min_available_version (and expected_version) is taken."""
    assert_refused(
        client, "k4", lambda: client.post("/v1/keys/k4/trim", json=body), 422, code
    )


def test_trim_respects_expected_version(client: TestClient, k4: str) -> None:
    """A stale expected_version is 409 with expected and actual; the right one trims."""
    details = assert_refused(
        client,
        "k4",
        lambda: _trim(client, "k4", min_available_version=3, expected_version=5),
        409,
        "EXPECTED_VERSION_MISMATCH",
    )

    assert (details["expected"], details["actual"]) == (5, 6)
    assert post_ok(
        client, "/v1/keys/k4/trim", {"min_available_version": 3, "expected_version": 6}
    )["removed"] == [1, 2]


def test_trim_with_idempotency_key_replays_without_a_second_event(
    client: TestClient, k4: str
) -> None:
    """The same Idempotency-Key and body answers the first response again."""
    headers = {"Idempotency-Key": "trim-k4-once"}
    body = {"min_available_version": 3}

    first = client.post("/v1/keys/k4/trim", json=body, headers=headers)
    again = client.post("/v1/keys/k4/trim", json=body, headers=headers)

    assert first.status_code == 200, first.text
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert [e["type"] for e in all_history(client, "k4")].count(TRIMMED) == 1


def test_commands_on_trimmed_versions_are_refused(client: TestClient, k4: str) -> None:
    """Version commands and rollbacks that name a trimmed version are 409."""
    post_ok(client, "/v1/keys/k4/trim", {"min_available_version": 3})
    requests = {
        "disable": ("/v1/keys/k4/versions/1/disable", {}),
        "compromise": ("/v1/keys/k4/versions/2/compromise", {"reason": "x"}),
        "schedule": ("/v1/keys/k4/versions/2/schedule-destruction", {"days": 7}),
        "rollback to version": ("/v1/keys/k4/rollback", {"version": 2}),
        # At stream version 1 the primary was v1, now trimmed.
        "rollback to point": ("/v1/keys/k4/rollback", {"to_stream_version": 1}),
    }

    for path, body in requests.values():
        assert_refused(
            client,
            "k4",
            partial(client.post, path, json=body),
            409,
            "VERSION_TRIMMED",
        )
    assert_error(
        client.post("/v1/keys/k4/versions/6/disable", json={}), 404, "VERSION_NOT_FOUND"
    )


def test_rollback_to_a_point_whose_primary_was_kept_still_works(
    client: TestClient, k4: str
) -> None:
    """A rollback to a point whose primary survived the trim is recorded."""
    post_ok(client, "/v1/keys/k4/trim", {"min_available_version": 3})

    body = post_ok(client, "/v1/keys/k4/rollback", {"to_stream_version": 4})

    assert body["key"]["primary_version"] == 4
    view = get_key(client, "k4")
    assert [(v["version"], v["state"]) for v in view["versions"]] == [
        (3, "enabled"),
        (4, "enabled"),
        (5, "disabled"),
    ]


def test_trim_leaves_rebuild_equal_and_the_ledger_verified(
    client: TestClient, runtime: Runtime, k4: str
) -> None:
    """The rebuilt read side equals the live one, and the ledger still verifies."""
    create(client, "other")
    post_ok(client, "/v1/keys/other/rotate")
    post_ok(client, "/v1/keys/k4/trim", {"min_available_version": 3})
    post_ok(client, "/v1/keys/k4/rotate")
    before = get_key(client, "k4"), get_key(client, "other")

    report = rebuild(runtime.service.app, apply=False)
    verified = client.get("/v1/ledger/verify")

    assert report.matched_live, report.differences
    assert (get_key(client, "k4"), get_key(client, "other")) == before
    assert [v["version"] for v in before[0]["versions"]] == [3, 4, 5, 6]
    assert verified.status_code == 200, verified.text
    assert verified.json()["ok"] is True


def test_view_as_of_before_the_trim_still_shows_the_trimmed_versions(
    client: TestClient, clock: AdjustableClock, k4: str
) -> None:
    """GET at a time before the trim replays the key then; now it matches the view."""
    at_before = get_key(client, "k4")["updated_at"]
    clock.advance(timedelta(seconds=1))
    post_ok(client, "/v1/keys/k4/trim", {"min_available_version": 3})
    now = get_key(client, "k4")

    then = client.get("/v1/keys/k4", params={"at": at_before})
    replayed = client.get("/v1/keys/k4", params={"at": now["updated_at"]})

    assert then.status_code == 200, then.text
    assert [v["version"] for v in then.json()["versions"]] == [1, 2, 3, 4, 5]
    # usage counts are shown only now, not as of a time
    volatile = ("as_of", "last_position", "next_versions_cursor", "usage")
    assert {k: v for k, v in replayed.json().items() if k not in volatile} == {
        k: v for k, v in now.items() if k not in volatile
    }
