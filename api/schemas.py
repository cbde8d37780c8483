"""Request bodies of the v1 API. Unknown fields are refused; integers are strict."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from domain.keys import MAX_VERSION

Version = Annotated[StrictInt, Field(ge=1, le=MAX_VERSION)]
ROTATION_PERIOD_HELP = (
    "Seconds between rotations (3600 to 316224000, one hour to ten years); the "
    "compliance report shows the key due once its primary is older; null for none."
)


class Command(BaseModel):
    """Fields every command accepts."""

    model_config = ConfigDict(extra="forbid")

    expected_version: Version | None = Field(
        None, description="The key's stream version the caller expects; 409 otherwise."
    )


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(
        description="1-64 of A-Z a-z 0-9 . _ -, starting alphanumeric."
    )
    algorithm: Literal["aes-256-gcm"] = "aes-256-gcm"
    description: Annotated[StrictStr, Field(max_length=1000)] = ""
    rotation_period_seconds: StrictInt | None = Field(
        None, description=ROTATION_PERIOD_HELP
    )


class KeyRollback(Command):
    """Exactly one of ``version``, ``to_stream_version`` or ``to_time``."""

    version: Version | None = Field(
        None, description="Make this version primary again."
    )
    to_stream_version: Version | None = Field(
        None, description="Return the key to its state at this stream version."
    )
    to_time: StrictStr | None = Field(
        None, description="Return the key to its state at this time (with offset)."
    )


class VersionCompromise(Command):
    reason: Annotated[StrictStr, Field(min_length=1, max_length=1000)]


class VersionScheduleDestruction(Command):
    days: StrictInt | None = Field(
        None, description="Waiting period in days; the deployment's default if absent."
    )


class ClockAdvance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: Annotated[StrictInt, Field(ge=1, le=10 * 365 * 86400)]


class KeyConfigUpdate(Command):
    """Minimum versions and the rotation period; ``null`` resets either optional one."""

    min_decryption_version: Version | None = Field(
        None, description="The lowest version that may decrypt (1 to the primary)."
    )
    min_encryption_version: Version | None = Field(
        None,
        description="The lowest version that may encrypt when asked for explicitly; "
        "null means only the primary encrypts.",
    )
    rotation_period_seconds: StrictInt | None = Field(
        None, description=ROTATION_PERIOD_HELP
    )


class KeyTrim(Command):
    """Trim every version below ``min_available_version``."""

    min_available_version: Version = Field(
        description="The lowest version kept; at most min_decryption_version."
    )


MAX_BATCH_ITEMS = 10_000

Base64 = Annotated[StrictStr, Field(description="Standard base64 with padding.")]
Context = Annotated[
    StrictStr | None,
    Field(description="Base64; bound as associated data, needed again to decrypt."),
]


class _UseItem(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncryptItem(_UseItem):
    """One plaintext to encrypt, under the primary unless a version is named."""

    plaintext: Base64
    context: Context = None
    version: Version | None = Field(
        None, description="Encrypt under this version (min_encryption_version)."
    )


class DecryptItem(_UseItem):
    """One ciphertext to decrypt with the version it names."""

    ciphertext: StrictStr = Field(description="keyledger:v<N>:<base64>")
    context: Context = None
    compromised_ok: StrictBool = Field(
        False, description="Decrypt even with a compromised version (flagged)."
    )


class RewrapItem(DecryptItem):
    """One ciphertext to decrypt and encrypt again, by default under the primary."""

    version: Version | None = Field(
        None, description="Encrypt under this version (min_encryption_version)."
    )


class DataKeyItem(_UseItem):
    """One fresh 256-bit data key, wrapped under the key."""

    plaintext: StrictBool = Field(
        False, description="Also return the data key itself (base64)."
    )
    context: Context = None
    version: Version | None = Field(
        None, description="Wrap under this version (min_encryption_version)."
    )


# Backups ---------------------------------------------------------------------

TargetName = Annotated[StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class BackupCreate(BaseModel):
    """Back a key up now; every field is optional."""

    model_config = ConfigDict(extra="forbid")

    targets: list[TargetName] | None = Field(
        None, description="Targets to write to (default: the policy's, or all)."
    )
    retain_until: StrictStr | None = Field(
        None, description="Keep the copies until this time (default: the policy's)."
    )


class BackupPolicyUpdate(BaseModel):
    """A backup policy; for a key, ``use_default`` (given alone) drops its own policy.

    ``locations`` is at most ``copies``; ``targets`` name configured targets
    (empty: every target). Fields left out take the defaults shown.
    """

    model_config = ConfigDict(extra="forbid")

    use_default: StrictBool = False
    copies: StrictInt = 2
    locations: StrictInt = 2
    interval_hours: StrictInt = 24
    retention_days: StrictInt = 30
    targets: list[TargetName] = Field(default_factory=list)


class BackupTargetConfig(BaseModel):
    """A target: its kind, its location label, and its kind's options."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dir", "s3"]
    location: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    options: dict[str, StrictStr] = Field(
        description="dir: path, prefix. s3: bucket, prefix, endpoint_url, region."
    )


class BackupPrune(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: TargetName


class KeyRestore(Command):
    """Exactly one of ``backup_id`` or ``bundle`` (base64 of a bundle file)."""

    backup_id: Annotated[StrictStr, Field(pattern=r"^bkp_[0-9a-f]{24}$")] | None = None
    bundle: StrictStr | None = Field(None, description="A bundle file, base64.")
    into: StrictStr | None = Field(
        None, description="Restore as a new key of this name (default: same key)."
    )
    source_public_key: StrictStr | None = Field(
        None, description="PEM of the source ledger's public key (disaster recovery)."
    )


class ApprovalDecision(BaseModel):
    """An approval; a restore of a bundle this ledger holds no copy of needs it."""

    model_config = ConfigDict(extra="forbid")

    bundle: StrictStr | None = Field(
        None, description="The bundle file the restore request names, base64."
    )


# Access control (admin) ------------------------------------------------------

RoleName = Literal[
    "admin", "custodian", "backup-operator", "service", "auditor", "replica"
]


class PrincipalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(
        description="1-64 of a-z 0-9 . _ @ -, starting with a letter or digit."
    )
    roles: list[RoleName] = Field(min_length=1, max_length=6)
    description: Annotated[StrictStr, Field(max_length=1000)] = ""


class PrincipalRolesUpdate(BaseModel):
    """The principal's new roles, replacing the old ones (may be empty)."""

    model_config = ConfigDict(extra="forbid")

    roles: list[RoleName] = Field(max_length=6)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The bounds are checked by the service (422 INVALID_EXPIRY); here they are
    # only shown in the OpenAPI document.
    expires_in_seconds: StrictInt = Field(
        90 * 24 * 3600,
        description="Lifetime of the token: 60 s to 400 days (default 90 days).",
        json_schema_extra={"minimum": 60, "maximum": 400 * 24 * 3600},
    )
    label: Annotated[StrictStr, Field(max_length=200)] = ""


GrantPermission = Literal[
    "key:read",
    "key:manage",
    "key:use",
    "backup:read",
    "backup:manage",
    "backup:restore",
]


class GrantSet(BaseModel):
    """Narrow the principal, on keys matching ``keys``, to ``permissions``."""

    model_config = ConfigDict(extra="forbid")

    keys: StrictStr = Field(
        description="A key name, a name prefix ending in '*', or '*' for all keys."
    )
    permissions: list[GrantPermission] = Field(min_length=1, max_length=6)


class GrantRemove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: StrictStr


class TokenRevoke(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[StrictStr, Field(min_length=1, max_length=1000)]


# Dual control -----------------------------------------------------------------

DualControlAction = Literal[
    "schedule-destruction", "rollback", "weaken-policy", "restore"
]


class DualControlUpdate(BaseModel):
    """The actions on this key that need a second principal's approval."""

    model_config = ConfigDict(extra="forbid")

    actions: list[DualControlAction] = Field(max_length=4)
    ttl_seconds: StrictInt = Field(
        24 * 3600, description="How long a request waits for approval (60 s to 7 days)."
    )
