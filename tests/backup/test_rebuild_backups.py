"""The backup read side is rebuilt from the backup events like the key view."""

from __future__ import annotations

from pathlib import Path

from backup.key import BackupKey
from backup.service import BackupService
from ledger.service import CommandContext, KeyService
from projections import backup_status
from projections.rebuild import rebuild
from tests.backup.conftest import add_dir_target


def test_backup_tables_rebuild_equal_and_repair(
    service: KeyService, ctx: CommandContext, tmp_path: Path
) -> None:
    """After backups, verifications, a policy and a failure, a rebuild matches the
    live tables; a damaged table is reported and repaired from the events."""
    backups = BackupService(service, BackupKey.load_or_create(tmp_path / "data"))
    add_dir_target(backups, ctx, tmp_path, "dc1")
    service.create_key(ctx, name="a")
    service.create_key(ctx, name="b")
    first = backups.take_backup(ctx, "a")
    backups.verify_backup(ctx, first.backup_id)
    backups.change_key_policy(ctx, "b", None)
    backups.take_backup(ctx, "b")
    (tmp_path / "dc1").rename(tmp_path / "gone")
    backups.take_backup(ctx, "a")  # fails: a BackupFailed on the record
    live = backup_status.snapshot_tables(service.ledger)

    assert rebuild(service.app, apply=False).matched_live

    service.ledger.execute([("DELETE FROM backup_records", ())])
    report = rebuild(service.app)
    assert not report.matched_live
    assert any("backup_records" in line for line in report.differences)
    assert backup_status.snapshot_tables(service.ledger) == live


def test_a_backup_taken_before_trimmed_was_recorded_reads_as_none_trimmed(
    service: KeyService, ctx: CommandContext, tmp_path: Path
) -> None:
    """A BackupTaken stored in its first shape (no ``trimmed``) is upcast to []."""
    import json

    from eventsourcing.persistence import StoredEvent

    from domain.backups import KeyBackups

    backups = BackupService(service, BackupKey.load_or_create(tmp_path / "data"))
    add_dir_target(backups, ctx, tmp_path, "dc1")
    service.create_key(ctx, name="a")
    backups.take_backup(ctx, "a")
    [row] = service.ledger.query(
        "SELECT originator_id, originator_version, topic, state FROM "
        f"{service.ledger.events_table_name} WHERE topic = %s",
        ("keyledger.backup.BackupTaken",),
    )
    entry = json.loads(bytes(row["state"]))
    assert entry["payload"].pop("class_version") == 2
    assert entry["payload"].pop("trimmed") == []
    stored = StoredEvent(
        row["originator_id"],
        row["originator_version"],
        row["topic"],
        json.dumps(entry).encode(),
    )

    event = service.app.mapper.to_domain_event(stored)

    assert isinstance(event, KeyBackups.BackupTaken)
    assert event.trimmed == []
