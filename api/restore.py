"""Restores under dual control, shared by the native and the Vault restore routes.

A restore runs at once only for a caller who may manage the key restored into
(a custodian) and when no key policy puts ``restore`` under dual control;
otherwise it is recorded as a pending ``restore`` request, which names the
bundle by its backup id and digest (never its bytes: they hold wrapped
material), and runs when a custodian approves it (``approved_restore``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from api.deps import permissions_on_key, require_on_key
from api.errors import ApiError
from api.runtime import Runtime
from backup.bundle import digest_of
from backup.service import decode_bundle_upload
from domain.access import Permission
from domain.dual_control import ApprovalRequest
from domain.errors import BackupNotFoundError, BackupRefusedError
from domain.keys import validate_key_name
from ledger.service import CommandContext, CommandResult
from ledger.signing import key_id, load_public_key


def source_keys_of(pem: str | None) -> dict[str, Ed25519PublicKey] | None:
    """The source ledger's public key a restore names, by key id (422 if bad)."""
    if pem is None:
        return None
    try:
        public_key = load_public_key(pem)
    except ValueError:
        raise ApiError(
            422,
            "INVALID_PUBLIC_KEY",
            "source_public_key must be an Ed25519 public key in PEM.",
        ) from None
    return {key_id(public_key): public_key}


def restore_or_request(
    runtime: Runtime,
    context: CommandContext,
    data: bytes,
    *,
    into: str | None,
    source_public_key: str | None,
    expected_key: str | None,
) -> CommandResult | ApprovalRequest:
    """Restore ``data`` now, or record the request that waits for a custodian.

    The caller needs ``backup:restore`` on the key the bundle holds and on the
    key restored into (403 ``KEY_NOT_GRANTED`` otherwise). A bundle that does
    not verify is refused before anything is recorded.
    """
    if into is not None:
        validate_key_name(into)
    source_keys = source_keys_of(source_public_key)
    bundle = runtime.backups.describe_bundle(
        data, source_public_keys=source_keys, expected_key=expected_key
    )
    target = into or bundle["key"]
    actor = context.actor
    for key in sorted({bundle["key"], target}):
        require_on_key(runtime, actor, key, Permission.BACKUP_RESTORE)

    arguments: dict[str, Any] = {
        **bundle,
        "into": into,
        "source_public_key": source_public_key,
        "expected_version": context.expected_version,
    }
    pending = runtime.dual_control.guard_restore(
        CommandContext(actor, context.request_id),
        target=target,
        source=bundle["key"],
        arguments=arguments,
        always=Permission.KEY_MANAGE not in permissions_on_key(runtime, actor, target),
    )
    if pending is not None:
        return pending
    return runtime.backups.restore(
        context,
        data,
        into=into,
        source_public_keys=source_keys,
        expected_key=expected_key,
    )


def bundle_for(runtime: Runtime, pending: ApprovalRequest, upload: str | None) -> bytes:
    """The bundle an approved restore runs on: the upload, else this ledger's copy.

    Raises:
        ApiError: 409 ``RESTORE_BUNDLE_MISMATCH`` when it is not the bundle
            that was requested; 409 ``RESTORE_BUNDLE_NEEDED`` when this ledger
            holds no whole copy and none was sent.
    """
    arguments = pending.arguments
    if upload is not None:
        data = decode_bundle_upload(upload)
    else:
        try:
            data = runtime.backups.read_bundle(arguments["backup_id"])
        except (BackupNotFoundError, BackupRefusedError):
            raise ApiError(
                409,
                "RESTORE_BUNDLE_NEEDED",
                "This ledger holds no whole copy of the bundle to restore; "
                "send it as bundle with the approval.",
                backup_id=arguments["backup_id"],
            ) from None
    if digest_of(data) != arguments["digest"]:
        raise ApiError(
            409,
            "RESTORE_BUNDLE_MISMATCH",
            "The bundle is not the one the request names.",
            digest=arguments["digest"],
        )
    return data


def approved_restore(
    runtime: Runtime, context: CommandContext, pending: ApprovalRequest, data: bytes
) -> CommandResult:
    """Carry out an approved restore as the approver, exactly as it was requested."""
    arguments = pending.arguments
    return runtime.backups.restore(
        replace(context, expected_version=arguments["expected_version"]),
        data,
        into=arguments["into"],
        source_public_keys=source_keys_of(arguments["source_public_key"]),
        expected_key=arguments["key"],
    )
