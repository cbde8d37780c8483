"""Pruning fails closed: the ledger stops counting a copy before it is deleted.

Runs on SQLite and PostgreSQL. The ledger may say a copy is gone that a target
still holds (a deletion that failed), never that a target holds a copy it
deleted.
"""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError

from backup.key import BackupKey
from backup.service import BackupService
from backup.targets import DirTarget, TargetError, object_name
from domain.clock import AdjustableClock
from domain.errors import KeyledgerError
from ledger.service import CommandContext, KeyService
from tests.backup.conftest import add_dir_target
from tests.conftest import T0


@pytest.fixture
def backups(service: KeyService, tmp_path: Path, ctx: CommandContext) -> BackupService:
    """A backup service with two dir targets in two locations, and key ``k1``."""
    result = BackupService(service, BackupKey.load_or_create(tmp_path / "data"))
    for name in ("dc1", "dc2"):
        add_dir_target(result, ctx, tmp_path, name, f"site-{name}")
    service.create_key(ctx, name="k1")
    return result


def _topics(service: KeyService, after: int) -> list[str]:
    table = service.ledger.events_table_name
    rows = service.ledger.query(
        f"SELECT topic FROM {table} WHERE notification_id > %s "
        "ORDER BY notification_id",
        (after,),
    )
    return [row["topic"] for row in rows]


def _taken(backups: BackupService, ctx: CommandContext) -> tuple[str, str]:
    outcome = backups.take_backup(ctx, "k1", retain_until=T0 + timedelta(days=1))
    assert outcome.record is not None
    return outcome.backup_id, outcome.record.copies[0]["object"]


def _status(backups: BackupService) -> dict[str, Any]:
    return backups.key_backups("k1", after=None, limit=10)


def test_a_prune_is_recorded_before_the_copy_is_deleted(
    backups: BackupService,
    ctx: CommandContext,
    clock: AdjustableClock,
    tmp_path: Path,
) -> None:
    """When the target deletes the copy, ``ObjectPruned`` was already on the ledger."""
    backup_id, name = _taken(backups, ctx)
    clock.advance(timedelta(days=2))
    seen: list[tuple[bool, list[str]]] = []
    target = backups._target("dc1")
    delete = target.delete

    def observed_delete(object_name: str, *, now: Any) -> None:
        recorded = backups.get_backup(backup_id)["pruned"]
        seen.append(((tmp_path / "dc1" / object_name).exists(), recorded))
        delete(object_name, now=now)

    target.delete = observed_delete  # type: ignore[method-assign]
    head = backups.keys.head_position()

    outcome = backups.prune(ctx, backup_id, "dc1")

    assert seen == [(True, ["dc1"])]
    assert outcome.failure is None
    assert not (tmp_path / "dc1" / name).exists()
    assert _topics(backups.keys, head) == ["keyledger.backup.ObjectPruned"]
    assert _status(backups)["copies_by_location"] == {"site-dc2": 1}


def test_a_delete_the_target_refuses_is_recorded_and_the_copy_stays_uncounted(
    backups: BackupService,
    ctx: CommandContext,
    clock: AdjustableClock,
    tmp_path: Path,
) -> None:
    """A read-only target keeps the object; the ledger records the prune and its
    failure, counts the copy no more, and a retry once writable deletes it."""
    backup_id, name = _taken(backups, ctx)
    clock.advance(timedelta(days=2))
    folder = tmp_path / "dc1"
    folder.chmod(0o555)
    head = backups.keys.head_position()
    try:
        outcome = backups.prune(ctx, backup_id, "dc1")
    finally:
        folder.chmod(0o755)

    assert outcome.failure is not None and outcome.failure["code"] == "READ_ONLY"
    assert (folder / name).exists()
    assert _topics(backups.keys, head) == [
        "keyledger.backup.ObjectPruned",
        "keyledger.backup.PruneFailed",
    ]
    record = backups.get_backup(backup_id)
    assert record["pruned"] == ["dc1"]
    assert [f["code"] for f in record["prune_failures"]] == ["READ_ONLY"]
    assert _status(backups)["copies_by_location"] == {"site-dc2": 1}

    retried = backups.prune(ctx, backup_id, "dc1")

    assert retried.failure is None
    assert not (folder / name).exists()
    record = backups.get_backup(backup_id)
    assert record["pruned"] == ["dc1"] and record["prune_failures"] == []
    with pytest.raises(KeyledgerError) as again:
        backups.prune(ctx, backup_id, "dc1")
    assert again.value.code == "ALREADY_PRUNED"


def test_with_the_ledger_unavailable_nothing_is_deleted(
    backups: BackupService,
    ctx: CommandContext,
    clock: AdjustableClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the prune cannot be recorded the target is never asked to delete."""
    backup_id, name = _taken(backups, ctx)
    clock.advance(timedelta(days=2))
    head = backups.keys.head_position()
    before = _status(backups)

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("the database went away")

    with monkeypatch.context() as patch:
        patch.setattr(backups.keys.app, "save", unavailable)
        with pytest.raises(KeyledgerError) as refused:
            backups.prune(ctx, backup_id, "dc1")

    assert refused.value.code == "LEDGER_UNAVAILABLE"
    assert (tmp_path / "dc1" / name).exists()
    assert backups.keys.head_position() == head
    assert _status(backups) == before


def test_the_target_refusing_on_its_own_retention_date_is_recorded(
    backups: BackupService,
    ctx: CommandContext,
    clock: AdjustableClock,
    tmp_path: Path,
) -> None:
    """A target whose own retention file says later keeps the copy, whatever the
    ledger says; the ledger records the refusal and keeps the copy uncounted."""
    backup_id, name = _taken(backups, ctx)
    retain = tmp_path / "dc1" / (name + ".retain")
    retain.chmod(0o644)
    retain.write_text("2027-01-01T00:00:00Z")
    clock.advance(timedelta(days=2))

    outcome = backups.prune(ctx, backup_id, "dc1")

    assert outcome.failure is not None and outcome.failure["code"] == "RETAINED"
    assert (tmp_path / "dc1" / name).exists()
    assert backups.get_backup(backup_id)["pruned"] == ["dc1"]


def test_the_dir_target_refuses_to_delete_before_its_own_retention_date(
    tmp_path: Path,
) -> None:
    """``DirTarget.delete`` reads the object's ``.retain`` file itself: before that
    date, or when the file is missing or unreadable, the object is kept."""
    target = DirTarget(name="dc1", location="site-a", path=tmp_path)
    name = object_name("sha256:" + "cd" * 32)
    target.put(name, b"bundle", retain_until=T0 + timedelta(days=30))
    retain = tmp_path / (name + ".retain")

    for moment in (T0, T0 + timedelta(days=29)):
        with pytest.raises(TargetError) as refused:
            target.delete(name, now=moment)
        assert refused.value.code == "RETAINED"
        assert target.get(name) == b"bundle"

    retain.chmod(0o644)
    retain.write_text("not a date")
    with pytest.raises(TargetError) as unreadable:
        target.delete(name, now=T0 + timedelta(days=31))
    assert unreadable.value.code == "RETAINED"
    assert target.get(name) == b"bundle"

    os.unlink(retain)
    with pytest.raises(TargetError) as missing:
        target.delete(name, now=T0 + timedelta(days=31))
    assert missing.value.code == "RETAINED"
    assert target.get(name) == b"bundle"

    target2 = DirTarget(name="dc2", location="site-b", path=tmp_path / "b")
    (tmp_path / "b").mkdir()
    target2.put(name, b"bundle", retain_until=T0 + timedelta(days=30))
    target2.delete(name, now=T0 + timedelta(days=30))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == []
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) & 0o200
