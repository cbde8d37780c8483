"""The ``s3`` target against a local S3-compatible server with Object Lock.

moto's server mode (``ThreadedMotoServer``) implements S3 Object Lock; it stands
in for AWS S3, MinIO or Ceph. The service's clock is the real time here, since
the server judges retention dates by its own clock.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from backup.key import BackupKey
from backup.service import BackupService
from domain.clock import AdjustableClock
from domain.errors import BackupRefusedError
from ledger.service import CommandContext, KeyService
from tests.backup.conftest import add_dir_target


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server for this module's tests."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for the local server; nothing here reaches AWS."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


def _bucket(endpoint: str, name: str, *, lock: bool) -> Any:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
    return client


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
    client = _bucket(s3_endpoint, bucket, lock=True)
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
    _bucket(s3_endpoint, "plain-bucket", lock=False)
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
    _bucket(s3_endpoint, "soon-gone", lock=True)
    backups.configure_target(ctx, **_s3("cloud", s3_endpoint, "soon-gone", "eu"))
    add_dir_target(backups, ctx, tmp_path, "dc1")
    backups.keys.create_key(ctx, name="k1")
    dead = f"http://127.0.0.1:{_free_port()}"
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
