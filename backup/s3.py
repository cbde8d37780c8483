"""The ``s3`` target: an S3-compatible bucket with Object Lock in compliance mode.

Every object is written with ``COMPLIANCE`` mode and its own retain-until date,
so not even the bucket's owner can delete or overwrite it before then; the
service refuses a bucket without Object Lock. Credentials come from boto3's
usual chain (environment, profile, instance role) and are never recorded:
options hold only the bucket, the prefix, the endpoint and the region.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from backup.targets import TargetError
from domain.clock import format_time

_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "InvalidRequest", "ObjectLocked"}
_NO_BUCKET = {"NoSuchBucket"}


@dataclass
class S3Target:
    """A bucket (and a key prefix in it) that keeps bundles under Object Lock."""

    name: str
    location: str
    bucket: str
    prefix: str
    client: Any
    kind: str = "s3"

    @classmethod
    def from_options(
        cls, name: str, location: str, options: dict[str, Any]
    ) -> S3Target:
        """Connect and check that the bucket has Object Lock enabled.

        Raises:
            TargetError: ``UNREACHABLE`` or ``NO_OBJECT_LOCK``.
        """
        client = boto3.client(
            "s3",
            endpoint_url=options.get("endpoint_url") or None,
            region_name=options.get("region") or "us-east-1",
            config=Config(
                connect_timeout=3,
                read_timeout=10,
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )
        target = cls(
            name, location, options["bucket"], options.get("prefix", ""), client
        )
        target.require_object_lock()
        return target

    def require_object_lock(self) -> None:
        try:
            found = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as error:
            code = _code(error)
            if code in _NO_BUCKET:
                raise TargetError(
                    "UNREACHABLE", f"Target {self.name!r}: no bucket {self.bucket!r}."
                ) from None
            raise TargetError(
                "NO_OBJECT_LOCK",
                f"Target {self.name!r}: bucket {self.bucket!r} has no Object Lock; "
                "create it with Object Lock enabled.",
            ) from None
        except BotoCoreError:
            raise self._unreachable() from None
        enabled = found.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        if enabled != "Enabled":
            raise TargetError(
                "NO_OBJECT_LOCK",
                f"Target {self.name!r}: bucket {self.bucket!r} has no Object Lock.",
            )

    def put(self, name: str, data: bytes, *, retain_until: datetime) -> str:
        """Write the object once, locked until ``retain_until``.

        A retention date not after the present is refused
        (``RETENTION_IN_PAST``) before anything is sent: S3 refuses it too, and
        a server that accepted it would keep nothing locked. The present is
        the real time, as the bucket judges it.
        """
        if retain_until <= datetime.now(UTC):
            raise TargetError(
                "RETENTION_IN_PAST",
                f"Target {self.name!r}: the retention date {format_time(retain_until)} "
                "is not in the future.",
            )
        key = self.prefix + name
        try:
            existing = self._get(key)
        except TargetError as error:
            if error.code != "MISSING":
                raise
            existing = None
        if existing is not None:
            if existing != data:
                raise TargetError(
                    "OBJECT_EXISTS",
                    f"Target {self.name!r} already holds another {name}.",
                )
            return f"s3://{self.bucket}/{key}"
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                # S3 requires an integrity header on Object Lock writes.
                ContentMD5=_b64(hashlib.md5(data).digest()),
                ChecksumSHA256=_b64(hashlib.sha256(data).digest()),
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=retain_until,
            )
        except ClientError as error:
            raise self._client_error(error, name) from None
        except BotoCoreError:
            raise self._unreachable() from None
        return f"s3://{self.bucket}/{key}"

    def get(self, name: str) -> bytes:
        return self._get(self.prefix + name)

    def delete(self, name: str, *, now: datetime) -> None:
        """Delete every version of the object; the bucket refuses a locked one."""
        key = self.prefix + name
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            until = head.get("ObjectLockRetainUntilDate")
            if until is not None and now < until:
                raise TargetError(
                    "RETAINED",
                    f"{name} on {self.name!r} is retained until {format_time(until)}.",
                )
            versions = self.client.list_object_versions(Bucket=self.bucket, Prefix=key)
            for version in versions.get("Versions", []):
                if version["Key"] == key:
                    self.client.delete_object(
                        Bucket=self.bucket, Key=key, VersionId=version["VersionId"]
                    )
        except ClientError as error:
            raise self._client_error(error, name) from None
        except BotoCoreError:
            raise self._unreachable() from None

    def _get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            data: bytes = response["Body"].read()
        except ClientError as error:
            raise self._client_error(error, key) from None
        except BotoCoreError:
            raise self._unreachable() from None
        return data

    def _client_error(self, error: ClientError, name: str) -> TargetError:
        code = _code(error)
        if code in _MISSING:
            return TargetError(
                "MISSING", f"Target {self.name!r} no longer holds {name}."
            )
        if code in _NO_BUCKET:
            return TargetError(
                "UNREACHABLE", f"Target {self.name!r}: no bucket {self.bucket!r}."
            )
        if code in _DENIED:
            return TargetError(
                "READ_ONLY", f"Target {self.name!r} refused the change ({code})."
            )
        if code in {"QuotaExceeded", "EntityTooLarge"}:
            return TargetError("FULL", f"Target {self.name!r} is full ({code}).")
        return TargetError("WRITE_FAILED", f"Target {self.name!r} failed ({code}).")

    def _unreachable(self) -> TargetError:
        return TargetError("UNREACHABLE", f"Target {self.name!r} cannot be reached.")


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
