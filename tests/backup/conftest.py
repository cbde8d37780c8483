"""Helpers of the backup tests, and a local S3-compatible server.

moto's server mode (``ThreadedMotoServer``) implements S3 Object Lock; it stands
in for AWS S3, MinIO or Ceph. Tests elsewhere (the API's) import the fixtures
``s3_endpoint`` and ``s3_credentials`` from here.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from backup.service import BackupService
from ledger.service import CommandContext


def add_dir_target(
    backups: BackupService,
    ctx: CommandContext,
    folder: Path,
    name: str,
    location: str | None = None,
) -> Path:
    """Configure a ``dir`` target in a new ``folder / name``; return that folder."""
    path = folder / name
    path.mkdir()
    backups.configure_target(
        ctx,
        name=name,
        kind="dir",
        location=location or name,
        options={"path": str(path)},
    )
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module", name="s3_endpoint")
def s3_endpoint_fixture() -> Iterator[str]:
    """A local S3-compatible server for the tests of one module."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(name="s3_credentials")
def s3_credentials_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for the local server; nothing here reaches AWS."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


def make_bucket(endpoint: str, name: str, *, lock: bool) -> Any:
    """Create a bucket on the local server (with Object Lock or not); its client."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
    return client
