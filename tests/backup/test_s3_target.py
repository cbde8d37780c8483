"""The ``s3`` target against a local S3-compatible server with Object Lock.

The server is moto's (``s3_endpoint`` in ``conftest.py``), standing in for AWS
S3, MinIO or Ceph. The service's clock is the real time here, since
the server judges retention dates by its own clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from backup.key import BackupKey
from backup.service import BackupService
from domain.clock import AdjustableClock
from domain.errors import BackupRefusedError
from ledger.service import CommandContext, KeyService
from tests.backup.conftest import add_dir_target, free_port, make_bucket


@pytest.fixture(autouse=True)
def credentials(s3_credentials: None) -> None:
    """Fake credentials for the local server; nothing here reaches AWS."""


@pytest.fixture
def now_service(open_service: Any, clock: AdjustableClock) -> KeyService:
    """A key service whose clock reads the real time."""
    clock.advance(datetime.now(UTC) - clock.now())
    service: KeyService = open_service()
    return service


@pytest.fixture
def backups(now_service: KeyService, tmp_path: Path) -> BackupService:
    return BackupService(now_service, BackupKey.load_or_create(tmp_path / "data"))


def _s3(name: str, endpoint: str, bucket: str, location: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "s3",
        "location": location,
        "options": {"bucket": bucket, "endpoint_url": endpoint, "prefix": "kl/"},
    }


def test_s3_copies_are_locked_in_compliance_mode_and_verify(
    backups: BackupService, ctx: CommandContext, s3_endpoint: str, tmp_path: Path
) -> None:
    """A backup to a locked bucket is retained in COMPLIANCE mode and verifies."""
    bucket = f"locked-{tmp_path.name[-12:].lower().replace('_', '-')}"
    client = make_bucket(s3_endpoint, bucket, lock=True)
    backups.configure_target(ctx, **_s3("cloud", s3_endpoint, bucket, "eu-west"))
    add_dir_target(backups, ctx, tmp_path, "dc1")
    backups.keys.create_key(ctx, name="k1")

    outcome = backups.take_backup(ctx, "k1")

    assert outcome.record is not None and outcome.failures == []
    copy = next(c for c in outcome.record.copies if c["target"] == "cloud")
    head = client.head_object(Bucket=bucket, Key="kl/" + copy["object"])
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=29)
    version = head["VersionId"]
    with pytest.raises(ClientError):
        client.delete_object(
            Bucket=bucket, Key="kl/" + copy["object"], VersionId=version
        )
    record, _ = backups.verify_backup(ctx, outcome.backup_id)
    assert record.verified_ok is True
    with pytest.raises(BackupRefusedError) as refused:
        backups.prune(ctx, outcome.backup_id, "cloud")
    assert refused.value.code == "RETAINED"


def test_a_bucket_without_object_lock_is_refused(
    backups: BackupService, ctx: CommandContext, s3_endpoint: str
) -> None:
    """Configuring a bucket without Object Lock is refused and records nothing."""
    make_bucket(s3_endpoint, "plain-bucket", lock=False)
    head = backups.keys.head_position()

    with pytest.raises(BackupRefusedError) as refused:
        backups.configure_target(
            ctx, **_s3("cloud", s3_endpoint, "plain-bucket", "eu-west")
        )

    assert refused.value.code == "TARGET_NO_OBJECT_LOCK"
    assert backups.keys.head_position() == head
    assert backups.targets() == {}


def test_an_unreachable_bucket_is_a_recorded_copy_failure(
    backups: BackupService, ctx: CommandContext, s3_endpoint: str, tmp_path: Path
) -> None:
    """A target that cannot be reached fails its copy; the dir copy still counts."""
    make_bucket(s3_endpoint, "soon-gone", lock=True)
    backups.configure_target(ctx, **_s3("cloud", s3_endpoint, "soon-gone", "eu"))
    add_dir_target(backups, ctx, tmp_path, "dc1")
    backups.keys.create_key(ctx, name="k1")
    dead = f"http://127.0.0.1:{free_port()}"
    settings = backups.settings()
    settings.configure_target(
        "cloud",
        "s3",
        "eu",
        {"bucket": "soon-gone", "endpoint_url": dead, "prefix": "kl/"},
        now=backups.keys.clock.now(),
    )
    backups._record(settings, ctx, "backup-settings", [])

    outcome = backups.take_backup(ctx, "k1")

    assert outcome.record is not None
    assert [c["target"] for c in outcome.record.copies] == ["dc1"]
    assert [(f["target"], f["code"]) for f in outcome.failures] == [
        ("cloud", "UNREACHABLE")
    ]


def test_the_s3_target_itself_refuses_a_past_retention_date(
    open_service: Any,
    ctx: CommandContext,
    s3_endpoint: str,
    tmp_path: Path,
) -> None:
    """A service whose clock runs behind the bucket's (a dev clock) would ask for
    a retention date already past: the s3 copy fails as RETENTION_IN_PAST, is
    recorded as a CopyFailed, and nothing reaches the bucket; the dir copy counts."""
    bucket = "past-retention"
    client = make_bucket(s3_endpoint, bucket, lock=True)
    behind: KeyService = open_service(
        clock=AdjustableClock(datetime.now(UTC) - timedelta(days=60))
    )
    backups = BackupService(behind, BackupKey.load_or_create(tmp_path / "data"))
    backups.configure_target(ctx, **_s3("cloud", s3_endpoint, bucket, "eu-west"))
    add_dir_target(backups, ctx, tmp_path, "dc1")
    behind.create_key(ctx, name="k1")

    outcome = backups.take_backup(ctx, "k1")

    assert outcome.record is not None
    assert [c["target"] for c in outcome.record.copies] == ["dc1"]
    assert [(f["target"], f["code"]) for f in outcome.failures] == [
        ("cloud", "RETENTION_IN_PAST")
    ]
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    record = backups.get_backup(outcome.backup_id)
    assert [f["code"] for f in record["failures"]] == ["RETENTION_IN_PAST"]
