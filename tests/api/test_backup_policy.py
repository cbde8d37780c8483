"""Backup policies through the API: the default and a key's own, with every refusal.

A policy change is an event on the ledger; the new policy governs the status and
the scheduler at once. A bad policy is a 422 that records nothing.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from tests.api._support import all_events, assert_error, create, head_position
from tests.api.test_backups import configure_targets, status_of, take

DEFAULT = "/v1/backup-policy"


def key_route(name: str) -> str:
    return f"/v1/keys/{name}/backup-policy"


@pytest.fixture
def folders(client: TestClient, tmp_path: Path) -> dict[str, Path]:
    return configure_targets(client, tmp_path / "targets")


def set_policy(client: TestClient, path: str, **body: Any) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def default_policy(client: TestClient) -> dict[str, Any]:
    response = client.get("/v1/backup-targets")
    assert response.status_code == 200, response.text
    policy: dict[str, Any] = response.json()["default_policy"]
    return policy


def run_scheduler(client: TestClient) -> list[str]:
    response = client.post("/v1/backup-scheduler/run")
    assert response.status_code == 200, response.text
    return sorted(item["key"] for item in response.json()["taken"])


def test_default_policy_change_is_recorded_and_governs_status_and_scheduler(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """A new default (one copy on dc1, every 6 hours) applies to every key at once."""
    create(client, "k1")

    result = set_policy(
        client,
        DEFAULT,
        copies=1,
        locations=1,
        interval_hours=6,
        retention_days=3,
        targets=["dc1"],
    )

    wanted = {
        "copies": 1,
        "locations": 1,
        "interval_hours": 6,
        "retention_days": 3,
        "targets": ["dc1"],
    }
    assert result["policy"] == wanted
    assert [r["type"] for r in result["receipts"]] == [
        "keyledger.backup.DefaultPolicyChanged"
    ]
    [event] = [
        e
        for e in all_events(client)
        if e["type"] == "keyledger.backup.DefaultPolicyChanged"
    ]
    assert event["position"] == result["receipts"][0]["position"]
    assert default_policy(client) == wanted
    status = status_of(client, "k1")
    assert (status["policy"], status["policy_source"]) == (wanted, "default")

    assert run_scheduler(client) == ["k1"]
    backup = status_of(client, "k1")["backups"][0]
    assert [c["target"] for c in backup["copies"]] == ["dc1"]
    assert backup["retain_until"] == "2026-03-04T12:00:00.000000Z"
    assert status_of(client, "k1")["status"] == "ok"  # one copy, one place is enough
    runtime.clock.advance(timedelta(hours=5))  # type: ignore[attr-defined]
    assert run_scheduler(client) == []
    runtime.clock.advance(timedelta(hours=1))  # type: ignore[attr-defined]
    assert status_of(client, "k1")["status"] == "due"
    assert run_scheduler(client) == ["k1"]


def test_a_key_policy_overrides_the_default_until_use_default(
    client: TestClient, runtime: Runtime, folders: dict[str, Path]
) -> None:
    """A key's own policy governs its status and schedule; use_default drops it."""
    create(client, "k1")
    create(client, "k2")
    assert run_scheduler(client) == ["k1", "k2"]

    own = set_policy(client, key_route("k1"), interval_hours=48, copies=3, locations=2)

    assert own["policy"]["interval_hours"] == 48
    assert [r["type"] for r in own["receipts"]] == ["keyledger.backup.PolicyChanged"]
    status = status_of(client, "k1")
    assert status["policy_source"] == "key"
    assert status["status"] == "at_risk"  # two copies where three are asked for
    assert status_of(client, "k2")["status"] == "ok"
    set_policy(client, key_route("k1"), interval_hours=48)
    assert status_of(client, "k1")["status"] == "ok"
    runtime.clock.advance(timedelta(hours=25))  # type: ignore[attr-defined]
    assert run_scheduler(client) == ["k2"]

    back = set_policy(client, key_route("k1"), use_default=True)

    assert back["policy"] == default_policy(client)
    assert [r["type"] for r in back["receipts"]] == ["keyledger.backup.PolicyChanged"]
    status = status_of(client, "k1")
    assert (status["policy_source"], status["status"]) == ("default", "due")
    assert run_scheduler(client) == ["k1"]
    types = [
        e["type"] for e in all_events(client) if e["type"].endswith("PolicyChanged")
    ]
    assert types == ["keyledger.backup.PolicyChanged"] * 3


def test_a_first_key_policy_opens_the_key_backup_record(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """A policy set before any backup opens the key's record, then backups follow it."""
    create(client, "k1")

    result = set_policy(client, key_route("k1"), copies=1, locations=1)

    assert [r["type"] for r in result["receipts"]] == [
        "keyledger.backup.Opened",
        "keyledger.backup.PolicyChanged",
    ]
    taken = take(client, "k1")
    assert [r["type"] for r in taken["receipts"]] == [
        "keyledger.backup.Started",
        "keyledger.backup.BackupTaken",
    ]


_BAD = [
    pytest.param({"copies": 0, "locations": 0}, "INVALID_BACKUP_POLICY", id="0 copies"),
    pytest.param(
        {"copies": 2, "locations": 3}, "INVALID_BACKUP_POLICY", id="locations > copies"
    ),
    pytest.param({"interval_hours": -1}, "INVALID_BACKUP_POLICY", id="neg interval"),
    pytest.param({"interval_hours": 0}, "INVALID_BACKUP_POLICY", id="zero interval"),
    pytest.param({"retention_days": -5}, "INVALID_BACKUP_POLICY", id="neg retention"),
    pytest.param({"copies": 17, "locations": 2}, "INVALID_BACKUP_POLICY", id="17"),
    pytest.param({"copies": "2"}, "INVALID_FIELD", id="copies a string"),
    pytest.param({"copies": 2.0}, "INVALID_FIELD", id="copies a float"),
    pytest.param({"targets": "dc1"}, "INVALID_FIELD", id="targets not a list"),
    pytest.param({"targets": ["DC 1"]}, "INVALID_FIELD", id="bad target name"),
    pytest.param({"targets": ["nope"]}, "UNKNOWN_TARGET", id="unknown target"),
    pytest.param({"copys": 2}, "UNKNOWN_FIELD", id="unknown field"),
    pytest.param(
        {"use_default": True, "copies": 3, "locations": 1},
        "INVALID_BACKUP_POLICY",
        id="use_default with fields",
    ),
]


@pytest.mark.parametrize("path", [DEFAULT, key_route("k1")], ids=["default", "key"])
@pytest.mark.parametrize(("body", "code"), _BAD)
def test_a_bad_policy_is_refused_and_records_nothing(
    client: TestClient,
    folders: dict[str, Path],
    path: str,
    body: dict[str, Any],
    code: str,
) -> None:
    """Every bad policy is a 422 with its code; the head and both policies stay."""
    create(client, "k1")
    set_policy(client, key_route("k1"), interval_hours=12)
    before = (head_position(client), default_policy(client), status_of(client, "k1"))

    assert_error(client.post(path, json=body), 422, code)

    after = (head_position(client), default_policy(client), status_of(client, "k1"))
    assert after == before


def test_the_default_cannot_use_the_default_nor_a_key_be_unknown(
    client: TestClient, folders: dict[str, Path]
) -> None:
    """use_default on the default is 422; a policy for an unknown key is 404."""
    create(client, "k1")
    before = (head_position(client), default_policy(client))

    assert_error(
        client.post(DEFAULT, json={"use_default": True}), 422, "INVALID_BACKUP_POLICY"
    )
    assert_error(
        client.post(key_route("nope"), json={"copies": 1, "locations": 1}),
        404,
        "KEY_NOT_FOUND",
    )
    assert_error(client.post(key_route("Bad Name"), json={}), 422, "INVALID_KEY_NAME")

    assert (head_position(client), default_policy(client)) == before
