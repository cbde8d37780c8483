"""An ``s3`` target through the HTTP API: configure, back up, verify, refuse.

The bucket lives on the local S3-compatible server of ``tests/backup/conftest.py``
(moto, standing in for AWS S3, MinIO or Ceph). The service's clock is set to the
real time, since the server judges retention dates by its own clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from domain.clock import AdjustableClock, format_time
from tests.api._support import assert_error, create, head_position, post_ok
from tests.backup.conftest import (  # noqa: F401 (the fixtures s3_endpoint, s3_credentials)
    make_bucket,
    s3_credentials_fixture,
    s3_endpoint_fixture,
)


@pytest.fixture
def now(clock: AdjustableClock, s3_credentials: None) -> AdjustableClock:
    """The test clock, moved to the real time."""
    clock.advance(datetime.now(UTC) - clock.now())
    return clock


def _bucket_name(tmp_path: Path, kind: str) -> str:
    return f"{kind}-{tmp_path.name[-12:].lower().replace('_', '-')}"


def _s3_target(endpoint: str, bucket: str) -> dict[str, Any]:
    return {
        "kind": "s3",
        "location": "eu-west-b",
        "options": {"bucket": bucket, "endpoint_url": endpoint, "prefix": "kl/"},
    }


def _keys(client: Any, bucket: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_an_s3_target_configured_over_http_holds_locked_copies_that_verify(
    client: TestClient, now: AdjustableClock, s3_endpoint: str, tmp_path: Path
) -> None:
    """PUT /v1/backup-targets records the s3 target; a backup lands in the bucket
    under Object Lock in COMPLIANCE mode until its retention date, verifies,
    and cannot be pruned before that date."""
    bucket = _bucket_name(tmp_path, "api")
    s3 = make_bucket(s3_endpoint, bucket, lock=True)

    response = client.put(
        "/v1/backup-targets/cloud", json=_s3_target(s3_endpoint, bucket)
    )

    assert response.status_code == 200, response.text
    configured = response.json()
    assert [r["type"] for r in configured["receipts"]] == [
        "keyledger.backup.SettingsOpened",
        "keyledger.backup.TargetConfigured",
    ]
    assert configured["target"]["options"] == {
        "bucket": bucket,
        "endpoint_url": s3_endpoint,
        "prefix": "kl/",
    }
    listed = client.get("/v1/backup-targets").json()
    assert [t["name"] for t in listed["targets"]] == ["cloud"]

    create(client, "k1")
    taken = client.post("/v1/keys/k1/backups", json={})
    assert taken.status_code == 201, taken.text
    backup = taken.json()["backup"]
    assert backup["copies"] == [
        {
            "target": "cloud",
            "location": "eu-west-b",
            "object": backup["copies"][0]["object"],
        }
    ]
    key = "kl/" + backup["copies"][0]["object"]
    assert _keys(s3, bucket) == [key]
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert format_time(head["ObjectLockRetainUntilDate"]) <= backup["retain_until"]
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=29)
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])

    verified = post_ok(client, f"/v1/backups/{backup['backup_id']}/verify")

    assert verified["backup"]["verified_ok"] is True
    assert verified["backup"]["verification"][0]["code"] == "OK"
    status = client.get("/v1/keys/k1/backups").json()
    assert status["copies_by_location"] == {"eu-west-b": 1}
    before = head_position(client)
    assert_error(
        client.post(
            f"/v1/backups/{backup['backup_id']}/prune", json={"target": "cloud"}
        ),
        409,
        "RETAINED",
    )
    assert head_position(client) == before
    assert _keys(s3, bucket) == [key]


def test_a_past_retention_date_is_refused_with_an_s3_target(
    client: TestClient, now: AdjustableClock, s3_endpoint: str, tmp_path: Path
) -> None:
    """A retention date in the past is 422 RETENTION_IN_PAST over HTTP: nothing
    is recorded and nothing reaches the bucket."""
    bucket = _bucket_name(tmp_path, "past")
    s3 = make_bucket(s3_endpoint, bucket, lock=True)
    response = client.put(
        "/v1/backup-targets/cloud", json=_s3_target(s3_endpoint, bucket)
    )
    assert response.status_code == 200, response.text
    create(client, "k1")
    before = (head_position(client), client.get("/v1/keys/k1/backups").json())

    for moment in (now.now() - timedelta(days=1), now.now()):
        assert_error(
            client.post(
                "/v1/keys/k1/backups", json={"retain_until": format_time(moment)}
            ),
            422,
            "RETENTION_IN_PAST",
        )

    assert (head_position(client), client.get("/v1/keys/k1/backups").json()) == before
    assert _keys(s3, bucket) == []


def test_a_bucket_without_object_lock_is_refused_over_http(
    client: TestClient, now: AdjustableClock, s3_endpoint: str, tmp_path: Path
) -> None:
    """409 TARGET_NO_OBJECT_LOCK, and no target is recorded."""
    bucket = _bucket_name(tmp_path, "plain")
    make_bucket(s3_endpoint, bucket, lock=False)
    before = head_position(client)

    assert_error(
        client.put("/v1/backup-targets/cloud", json=_s3_target(s3_endpoint, bucket)),
        409,
        "TARGET_NO_OBJECT_LOCK",
    )

    assert head_position(client) == before
    assert client.get("/v1/backup-targets").json()["targets"] == []
