"""POST /v1/keys/{name}/config: the minimum versions, their bounds, the key view.

Case C01's configuration steps: bounds refuse with 422 and nothing is appended.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from projections.rebuild import rebuild
from tests.api._support import (
    all_history,
    assert_error,
    assert_refused,
    create,
    get_key,
    post_ok,
)


def _key_at_v3(client: TestClient, name: str = "k1") -> None:
    create(client, name)
    post_ok(client, f"/v1/keys/{name}/rotate")
    post_ok(client, f"/v1/keys/{name}/rotate")


def test_new_key_shows_default_minimum_versions(client: TestClient) -> None:
    """A new key decrypts from v1 and encrypts with the primary only (null)."""
    create(client, "fresh")

    view = get_key(client, "fresh")

    assert view["min_decryption_version"] == 1
    assert view["min_encryption_version"] is None


def test_config_records_an_event_and_shows_in_the_view(client: TestClient) -> None:
    """C01: min_decryption_version 3 after two rotations is stream version 4."""
    _key_at_v3(client)

    body = post_ok(client, "/v1/keys/k1/config", {"min_decryption_version": 3})

    assert body["receipts"][-1]["type"] == "keyledger.key.MinimumVersionsChanged"
    assert body["key"]["stream_version"] == 4
    assert body["key"]["min_decryption_version"] == 3
    view = get_key(client, "k1")
    assert (view["min_decryption_version"], view["min_encryption_version"]) == (3, None)
    assert all_history(client, "k1")[-1]["payload"]["min_decryption_version"] == 3
    listed = client.get("/v1/keys").json()["keys"]
    assert listed[0]["min_decryption_version"] == 3


def test_config_sets_and_resets_min_encryption_version(client: TestClient) -> None:
    """min_encryption_version takes a version, and null returns it to primary only."""
    _key_at_v3(client)

    set_ = post_ok(client, "/v1/keys/k1/config", {"min_encryption_version": 2})
    reset = post_ok(client, "/v1/keys/k1/config", {"min_encryption_version": None})

    assert set_["key"]["min_encryption_version"] == 2
    assert reset["key"]["min_encryption_version"] is None
    assert get_key(client, "k1")["min_encryption_version"] is None


def test_config_above_latest_version_is_refused(client: TestClient) -> None:
    """C01: min_decryption_version 5 on a key at v3 is 422 and nothing is appended."""
    _key_at_v3(client)

    details = assert_refused(
        client,
        "k1",
        lambda: client.post("/v1/keys/k1/config", json={"min_decryption_version": 5}),
        422,
        "MIN_VERSION_OUT_OF_RANGE",
    )

    assert details["max"] == 3


def test_config_below_one_is_refused(client: TestClient) -> None:
    """C01: min_decryption_version -1 (and 0) is 422 and nothing is appended."""
    _key_at_v3(client)

    for value in (-1, 0):
        assert_refused(
            client,
            "k1",
            lambda value=value: client.post(
                "/v1/keys/k1/config", json={"min_decryption_version": value}
            ),
            422,
            "INVALID_FIELD",
        )


def test_config_refuses_null_decryption_floor_and_empty_body(
    client: TestClient,
) -> None:
    """A null min_decryption_version and an empty change are both 422, unrecorded."""
    _key_at_v3(client)

    assert_refused(
        client,
        "k1",
        lambda: client.post(
            "/v1/keys/k1/config", json={"min_decryption_version": None}
        ),
        422,
        "INVALID_FIELD",
    )
    assert_refused(
        client,
        "k1",
        lambda: client.post("/v1/keys/k1/config", json={}),
        422,
        "NOTHING_TO_CHANGE",
    )
    assert_refused(
        client,
        "k1",
        lambda: client.post("/v1/keys/k1/config", json={"min_decrypt_versoin": 2}),
        422,
        "UNKNOWN_FIELD",
    )


def test_config_respects_expected_version(client: TestClient) -> None:
    """A stale expected_version is 409 with expected and actual."""
    _key_at_v3(client)

    details = assert_error(
        client.post(
            "/v1/keys/k1/config",
            json={"min_decryption_version": 2, "expected_version": 1},
        ),
        409,
        "EXPECTED_VERSION_MISMATCH",
    )

    assert details["actual"] == 3


NO_OPS = [
    pytest.param({"min_encryption_version": None}, id="null-encryption-floor"),
    pytest.param({"min_decryption_version": 1}, id="same-decryption-floor"),
    pytest.param(
        {"min_decryption_version": 1, "min_encryption_version": None},
        id="both-floors",
    ),
    pytest.param({"rotation_period_seconds": None}, id="no-period-again"),
    pytest.param(
        {"min_decryption_version": 1, "rotation_period_seconds": None}, id="all"
    ),
]


@pytest.mark.parametrize("body", NO_OPS)
def test_config_that_changes_nothing_is_409_and_records_nothing(
    client: TestClient, body: dict[str, object]
) -> None:
    """Asking only for the values the key already has is 409, with no new event."""
    _key_at_v3(client)

    for _ in range(2):
        assert_refused(
            client,
            "k1",
            lambda: client.post("/v1/keys/k1/config", json=body),
            409,
            "CONFIG_UNCHANGED",
        )


def test_the_same_config_sent_twice_records_one_event(client: TestClient) -> None:
    """The second of two equal changes is 409 CONFIG_UNCHANGED; one event in all."""
    _key_at_v3(client)
    first = post_ok(client, "/v1/keys/k1/config", {"rotation_period_seconds": 86400})
    assert len(first["receipts"]) == 1

    assert_refused(
        client,
        "k1",
        lambda: client.post(
            "/v1/keys/k1/config", json={"rotation_period_seconds": 86400}
        ),
        409,
        "CONFIG_UNCHANGED",
    )
    assert get_key(client, "k1")["rotation_period_seconds"] == 86400


def test_config_records_only_what_changes(client: TestClient) -> None:
    """An unchanged floor beside a new period records the period alone."""
    _key_at_v3(client)
    before = len(all_history(client, "k1"))

    changed = post_ok(
        client,
        "/v1/keys/k1/config",
        {"min_decryption_version": 1, "rotation_period_seconds": 86400},
    )

    assert len(changed["receipts"]) == 1
    history = all_history(client, "k1")
    assert len(history) == before + 1
    assert history[-1]["type"].endswith("RotationPeriodChanged")


def test_rollback_below_the_floor_is_refused(client: TestClient) -> None:
    """Rolling the primary back below min_decryption_version is 409, unrecorded."""
    _key_at_v3(client)
    post_ok(client, "/v1/keys/k1/config", {"min_decryption_version": 2})

    assert_refused(
        client,
        "k1",
        lambda: client.post("/v1/keys/k1/rollback", json={"version": 1}),
        409,
        "ROLLBACK_BELOW_MIN_DECRYPTION",
    )


def test_rebuild_reproduces_the_config(client: TestClient, runtime: object) -> None:
    """The rebuilt read side equals the live one, with configs set and reset."""
    _key_at_v3(client, "a")
    _key_at_v3(client, "b")
    post_ok(client, "/v1/keys/a/config", {"min_decryption_version": 2})
    post_ok(client, "/v1/keys/b/config", {"min_encryption_version": 3})
    post_ok(client, "/v1/keys/b/config", {"min_encryption_version": None})
    before = get_key(client, "a"), get_key(client, "b")

    report = rebuild(runtime.service.app)  # type: ignore[attr-defined]

    assert report.matched_live, report.differences
    assert (get_key(client, "a"), get_key(client, "b")) == before
    assert before[0]["min_decryption_version"] == 2
    assert before[1]["min_encryption_version"] is None


DAY = 86400


def test_rotation_period_set_at_create_shows_on_the_key(client: TestClient) -> None:
    """A period given at create is recorded as its own event and shown on GET."""
    body = create(client, "rot", rotation_period_seconds=90 * DAY)

    assert [r["type"] for r in body["receipts"]] == [
        "keyledger.key.Generated",
        "keyledger.key.RotationPeriodChanged",
    ]
    assert get_key(client, "rot")["rotation_period_seconds"] == 90 * DAY
    payload = all_history(client, "rot")[-1]["payload"]
    assert payload["rotation_period_seconds"] == 90 * DAY


def test_rotation_period_is_set_changed_and_cleared_by_config(
    client: TestClient,
) -> None:
    """The config route sets, changes and (with null) clears the rotation period."""
    create(client, "rot")
    assert get_key(client, "rot")["rotation_period_seconds"] is None

    set_ = post_ok(client, "/v1/keys/rot/config", {"rotation_period_seconds": 3600})
    both = post_ok(
        client,
        "/v1/keys/rot/config",
        {"rotation_period_seconds": 30 * DAY, "min_encryption_version": 1},
    )
    assert get_key(client, "rot")["rotation_period_seconds"] == 30 * DAY
    cleared = post_ok(client, "/v1/keys/rot/config", {"rotation_period_seconds": None})

    assert set_["receipts"][-1]["type"] == "keyledger.key.RotationPeriodChanged"
    assert [r["type"] for r in both["receipts"]] == [
        "keyledger.key.MinimumVersionsChanged",
        "keyledger.key.RotationPeriodChanged",
    ]
    assert cleared["key"]["rotation_period_seconds"] is None
    assert get_key(client, "rot")["rotation_period_seconds"] is None
    listed = client.get("/v1/keys").json()["keys"]
    assert listed[0]["rotation_period_seconds"] is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(3599, id="below one hour"),
        pytest.param(10 * 366 * DAY + 1, id="above ten years"),
        pytest.param(0, id="zero"),
        pytest.param(-DAY, id="negative"),
    ],
)
def test_rotation_period_out_of_bounds_is_refused(
    client: TestClient, value: int
) -> None:
    """A period outside one hour to ten years is 422 and nothing is recorded."""
    create(client, "rot", rotation_period_seconds=DAY)

    details = assert_refused(
        client,
        "rot",
        lambda: client.post(
            "/v1/keys/rot/config",
            json={"rotation_period_seconds": value, "min_decryption_version": 1},
        ),
        422,
        "ROTATION_PERIOD_OUT_OF_RANGE",
    )

    assert (details["min"], details["max"]) == (3600, 10 * 366 * DAY)
    assert get_key(client, "rot")["rotation_period_seconds"] == DAY


def test_rotation_period_out_of_bounds_at_create_creates_nothing(
    client: TestClient,
) -> None:
    """A bad period at create is 422 and no key comes to be."""
    assert_error(
        client.post("/v1/keys", json={"name": "rot", "rotation_period_seconds": 60}),
        422,
        "ROTATION_PERIOD_OUT_OF_RANGE",
    )
    assert_error(
        client.post("/v1/keys", json={"name": "rot", "rotation_period_seconds": "1d"}),
        422,
        "INVALID_FIELD",
    )

    assert client.get("/v1/keys/rot").status_code == 404


def test_rebuild_reproduces_rotation_periods(
    client: TestClient, runtime: object
) -> None:
    """Rebuilt rotation periods equal the live ones, a cleared one included."""
    create(client, "a", rotation_period_seconds=DAY)
    create(client, "b", rotation_period_seconds=DAY)
    post_ok(client, "/v1/keys/b/config", {"rotation_period_seconds": None})
    before = get_key(client, "a"), get_key(client, "b")

    report = rebuild(runtime.service.app)  # type: ignore[attr-defined]

    assert report.matched_live, report.differences
    assert (get_key(client, "a"), get_key(client, "b")) == before
    assert [view["rotation_period_seconds"] for view in before] == [DAY, None]
