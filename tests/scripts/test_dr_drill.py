"""``keyledger dr-drill``: a real primary killed mid-write, its replica promoted."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.scripts.test_end_to_end import _cli

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def drill_store(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "sqlite":
        return []
    return ["--database-url", str(request.getfixturevalue("pg_database"))]


def _drill(drill_store: list[str], *extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    result = _cli(
        env,
        "dr-drill",
        "--seconds",
        "2",
        "--after-seconds",
        "1",
        "--json",
        *drill_store,
        *extra,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_dr_drill_measures_recovery_point_and_time(drill_store: list[str]) -> None:
    report = _drill(drill_store)
    assert report["cut"] == "mid-write"
    assert report["verified"]
    assert report["acknowledged_before_cut"] > 0
    assert report["acknowledged_after_promotion"] > 0
    assert report["promotion"]["epoch"] == 2
    # what is lost is exactly what the replica had not applied when promoted
    held = report["promotion"]["applied_position"]
    assert all(
        position > held for position in report["recovery_point"]["positions_lost"]
    )
    point = report["recovery_point"]
    assert point["replica_had_caught_up"] == (
        held >= report["last_acknowledged_position"]
    )
    times = report["recovery_time_seconds"]
    assert 0 < times["to_promoted"] <= times["to_first_write"]
    assert report["head"]["position"] > held


def test_a_drill_cut_after_the_replica_caught_up_loses_nothing(
    drill_store: list[str],
) -> None:
    """--settle: the replica holds the primary's head at the cut, so 0 events lost."""
    report = _drill(drill_store, "--settle")
    assert report["cut"] == "settled"
    assert report["verified"]
    assert report["acknowledged_before_cut"] > 0
    at_cut = report["replica_at_cut"]
    assert at_cut["lag_events"] == 0
    assert at_cut["applied"] >= report["last_acknowledged_position"]
    assert report["recovery_point"] == {
        "replica_had_caught_up": True,
        "events_lost": 0,
        "positions_lost": [],
    }
    assert report["promotion"]["forced"] is False
    assert report["promotion"]["possibly_lost"] is None
    assert report["acknowledged_after_promotion"] > 0
