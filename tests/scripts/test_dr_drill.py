"""``keyledger dr-drill``: a real primary killed mid-write, its replica promoted."""

from __future__ import annotations

import json
import os

import pytest

from tests.scripts.test_end_to_end import _cli

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def drill_store(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "sqlite":
        return []
    return ["--database-url", str(request.getfixturevalue("pg_database"))]


def test_dr_drill_measures_recovery_point_and_time(drill_store: list[str]) -> None:
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
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["verified"]
    assert report["acknowledged_before_cut"] > 0
    assert report["acknowledged_after_promotion"] > 0
    assert report["promotion"]["epoch"] == 2
    # what is lost is exactly what the replica had not applied when promoted
    held = report["promotion"]["applied_position"]
    assert all(
        position > held for position in report["recovery_point"]["positions_lost"]
    )
    times = report["recovery_time_seconds"]
    assert 0 < times["to_promoted"] <= times["to_first_write"]
    assert report["head"]["position"] > held
