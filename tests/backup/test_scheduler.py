"""The backup scheduler takes every due backup, only those, and each exactly once.

Runs on SQLite and PostgreSQL; two schedulers in two services race on one store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backup.key import BackupKey
from backup.service import BackupService
from domain.backups import BackupPolicy
from domain.clock import AdjustableClock
from ledger.service import CommandContext, KeyService
from tests.backup.conftest import add_dir_target


@pytest.fixture
def backups(service: KeyService, tmp_path: Path, ctx: CommandContext) -> BackupService:
    """A backup service with two dir targets in two locations."""
    result = BackupService(service, BackupKey.load_or_create(tmp_path / "data"))
    for name in ("dc1", "dc2"):
        add_dir_target(result, ctx, tmp_path, name, f"site-{name}")
    return result


def _taken(service: KeyService) -> list[dict[str, Any]]:
    table = service.ledger.events_table_name
    return service.ledger.query(
        f"SELECT notification_id FROM {table} WHERE topic = %s",
        ("keyledger.backup.BackupTaken",),
    )


def test_scheduler_takes_only_due_backups_and_records_its_runs(
    service: KeyService,
    backups: BackupService,
    ctx: CommandContext,
    clock: AdjustableClock,
) -> None:
    """Keys never backed up or past their interval are taken; fresh ones are not."""
    for name in ("a", "b", "c"):
        service.create_key(ctx, name=name)
    backups.change_key_policy(ctx, "c", BackupPolicy(interval_hours=48))
    first = backups.run_scheduler()
    assert sorted(item["key"] for item in first["taken"]) == ["a", "b", "c"]
    assert [item["ok"] for item in first["verified"]] == [True, True, True]
    items, _ = backups.status(after=None, limit=10, status="ok")
    assert [item["key"] for item in items] == ["a", "b", "c"]

    clock.advance(timedelta(hours=25))
    second = backups.run_scheduler()

    assert sorted(item["key"] for item in second["taken"]) == ["a", "b"]
    assert backups.run_scheduler() == {
        "taken": [],
        "failed": [],
        "skipped": [],
        "verified": [],
    }
    table = service.ledger.events_table_name
    runs = service.ledger.query(
        f"SELECT count(*) AS n FROM {table} WHERE topic = %s",
        ("keyledger.backup.SchedulerRan",),
    )
    assert runs[0]["n"] == 3


def test_default_policy_change_is_recorded_and_applies(
    service: KeyService, backups: BackupService, ctx: CommandContext
) -> None:
    """A new default policy applies to keys without their own; a key's own wins."""
    service.create_key(ctx, name="a")
    service.create_key(ctx, name="b")
    backups.change_default_policy(ctx, BackupPolicy(copies=1, locations=1))
    backups.change_key_policy(ctx, "b", BackupPolicy(copies=3, locations=2))

    assert backups.policy_for("a").copies == 1
    assert backups.policy_for("b").copies == 3
    backups.take_backup(ctx, "a")
    backups.take_backup(ctx, "b")
    items, _ = backups.status(after=None, limit=10, status=None)
    statuses = {item["key"]: item["status"] for item in items}
    assert statuses == {"a": "unverified", "b": "at_risk"}
    backups.change_key_policy(ctx, "b", None)
    assert backups.policy_for("b").copies == 1


def test_two_racing_schedulers_take_each_due_backup_once(
    open_service: Callable[..., KeyService],
    backups: BackupService,
    ctx: CommandContext,
) -> None:
    """Two schedulers started together take each due backup exactly once."""
    first = backups.keys
    for name in ("r1", "r2", "r3", "r4"):
        first.create_key(ctx, name=name)
    second = BackupService(open_service(), backups.backup_key)
    start = threading.Barrier(2)
    reports: list[dict[str, Any]] = []

    def run(scheduler: BackupService) -> None:
        start.wait()
        reports.append(scheduler.run_scheduler())

    threads = [threading.Thread(target=run, args=(s,)) for s in (backups, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    taken = sorted(item["key"] for report in reports for item in report["taken"])
    assert taken == ["r1", "r2", "r3", "r4"]
    assert len(_taken(first)) == 4
    skipped = {item["code"] for report in reports for item in report["skipped"]}
    assert skipped <= {"BACKUP_IN_PROGRESS", "BACKUP_NOT_DUE"}


def test_invalid_policies_are_refused(backups: BackupService) -> None:
    """A policy out of bounds, or asking more places than copies, is refused."""
    from domain.errors import InvalidArgumentError

    for bad in (
        {"copies": 0},
        {"copies": 1, "locations": 2},
        {"interval_hours": 0},
        {"retention_days": 0},
        {"targets": ("Bad Name",)},
    ):
        with pytest.raises(InvalidArgumentError):
            BackupPolicy(**bad)  # type: ignore[arg-type]
