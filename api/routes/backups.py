"""Backup routes: take, list, verify, prune, restore; policies and targets."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from api.body import validate
from api.deps import (
    BodyDep,
    IdempotencyKeyDep,
    RequestIdDep,
    RuntimeDep,
    command_context,
    render_command,
    require,
)
from api.errors import ApiError
from api.restore import restore_or_request
from api.schemas import (
    BackupCreate,
    BackupPolicyUpdate,
    BackupPrune,
    BackupTargetConfig,
    KeyRestore,
)
from backup.service import decode_bundle_upload, parse_retain_until
from domain.access import Permission
from domain.backups import STATUSES, BackupPolicy
from domain.dual_control import ApprovalRequest
from domain.keys import validate_key_name
from ledger.service import CommandContext
from ledger.store import Actor, Receipt

router = APIRouter(tags=["backups"])

_BACKUP_ID = r"^bkp_[0-9a-f]{24}$"
_CURSOR = r"^[0-9A-Za-z:._+-]{1,128}$"


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "content": {"application/json": {"schema": model.model_json_schema()}},
            "required": True,
        }
    }


def _context(actor: Actor, request_id: str) -> CommandContext:
    return CommandContext(actor, request_id)


def _receipts(response: Response, receipts: list[Receipt]) -> list[dict[str, Any]]:
    if receipts:
        response.headers["Ledger-Position"] = str(receipts[-1].position)
    return [receipt.as_json() for receipt in receipts]


@router.post(
    "/v1/keys/{name}/backups",
    status_code=201,
    operation_id="take_backup",
    openapi_extra=_schema(BackupCreate),
)
def take_backup(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.BACKUP_MANAGE)],
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Back the key up now to its policy's targets (or the ones named)."""
    command = validate(BackupCreate, body)
    outcome = runtime.backups.take_backup(
        _context(actor, request_id),
        name,
        target_names=command.targets,
        retain_until=parse_retain_until(command.retain_until),
    )
    if outcome.record is None:
        raise ApiError(
            502,
            "BACKUP_FAILED",
            "No copy could be written whole; the failure is recorded.",
            backup_id=outcome.backup_id,
            failures=outcome.failures,
            position=outcome.receipts[-1].position,
        )
    result = outcome.as_json()
    result["receipts"] = _receipts(response, outcome.receipts)
    return result


@router.get("/v1/keys/{name}/backups", operation_id="list_key_backups")
def list_key_backups(
    name: str,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.BACKUP_READ)],
    *,
    after: Annotated[str | None, Query(pattern=_CURSOR)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The key's backup status and its backups, newest first, paged."""
    validate_key_name(name)
    return runtime.backups.key_backups(name, after=after, limit=limit)


@router.get("/v1/backup-status", operation_id="backup_status")
def backup_status(
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.BACKUP_READ)],
    *,
    after: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Annotated[
        str | None, Query(pattern="^(" + "|".join(STATUSES) + ")$")
    ] = None,
) -> dict[str, Any]:
    """Every key's backup status in name order, paged and filterable by status."""
    items, cursor = runtime.backups.status(after=after, limit=limit, status=status)
    return {"keys": items, "next_cursor": cursor}


@router.get("/v1/backups/{backup_id}", operation_id="get_backup")
def get_backup(
    backup_id: str,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.BACKUP_READ)],
) -> dict[str, Any]:
    """One backup: its copies, versions, retention and verification."""
    return runtime.backups.get_backup(_backup_id(backup_id))


@router.post("/v1/backups/{backup_id}/verify", operation_id="verify_backup")
def verify_backup(
    backup_id: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.BACKUP_MANAGE)],
    request_id: RequestIdDep,
) -> dict[str, Any]:
    """Read every copy back, check it against the ledger, record the result."""
    record, receipts = runtime.backups.verify_backup(
        _context(actor, request_id), _backup_id(backup_id)
    )
    return {"backup": record.as_json(), "receipts": _receipts(response, receipts)}


@router.post(
    "/v1/backups/{backup_id}/prune",
    operation_id="prune_backup_copy",
    openapi_extra=_schema(BackupPrune),
)
def prune_backup_copy(
    backup_id: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.BACKUP_MANAGE)],
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Delete one copy past its retention date; refused (409) before it.

    The prune is recorded before the target deletes the copy; a deletion the
    target then refuses is recorded too and answered 502 ``PRUNE_FAILED``.
    """
    command = validate(BackupPrune, body)
    outcome = runtime.backups.prune(
        _context(actor, request_id), _backup_id(backup_id), command.target
    )
    if outcome.failure is not None:
        raise ApiError(
            502,
            "PRUNE_FAILED",
            "The prune is recorded but the target did not delete the copy; "
            "the copy no longer counts, and pruning it can be retried.",
            backup_id=outcome.backup_id,
            failure=outcome.failure,
            position=outcome.receipts[-1].position,
        )
    return {"receipts": _receipts(response, outcome.receipts)}


@router.post(
    "/v1/keys/{name}/restore",
    operation_id="restore_key",
    openapi_extra=_schema(KeyRestore),
)
def restore_key(
    name: str,
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.BACKUP_RESTORE)],
    request_id: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Restore the key from a backup id or a bundle, in place or as a new key.

    Answers 202 with the pending approval when the restore needs a custodian's
    approval (see ``api.restore``): nothing is restored until then.
    """
    validate_key_name(name)
    command = validate(KeyRestore, body)
    if (command.backup_id is None) == (command.bundle is None):
        raise ApiError(
            422, "INVALID_RESTORE_SOURCE", "Give exactly one of backup_id or bundle."
        )
    if command.backup_id is not None:
        data = runtime.backups.read_bundle(command.backup_id)
    else:
        data = decode_bundle_upload(command.bundle or "")
    context = command_context(
        request,
        actor,
        request_id,
        command.expected_version,
        idempotency_key,
        200,
        render_command,
    )
    result = restore_or_request(
        runtime,
        context,
        data,
        into=command.into,
        source_public_key=command.source_public_key,
        expected_key=name,
    )
    if isinstance(result, ApprovalRequest):
        response.status_code = 202
        return {"approval": result.view()}
    response.headers["Ledger-Position"] = str(result.position)
    return render_command(result)


@router.post(
    "/v1/keys/{name}/backup-policy",
    operation_id="set_key_backup_policy",
    openapi_extra=_schema(BackupPolicyUpdate),
)
def set_key_backup_policy(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.BACKUP_MANAGE)],
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Give the key its own backup policy, or return it to the default."""
    validate_key_name(name)
    command = validate(BackupPolicyUpdate, body)
    if command.use_default and command.model_fields_set - {"use_default"}:
        raise ApiError(
            422,
            "INVALID_BACKUP_POLICY",
            "use_default drops the key's policy; give it alone.",
        )
    policy = None if command.use_default else _policy(command)
    receipts = runtime.backups.change_key_policy(
        _context(actor, request_id), name, policy
    )
    return {
        "policy": runtime.backups.policy_for(name).as_json(),
        "receipts": _receipts(response, receipts),
    }


@router.post(
    "/v1/backup-policy",
    operation_id="set_default_backup_policy",
    openapi_extra=_schema(BackupPolicyUpdate),
)
def set_default_backup_policy(
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.ADMIN)],
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Change the backup policy of every key without its own."""
    command = validate(BackupPolicyUpdate, body)
    if command.use_default:
        raise ApiError(
            422, "INVALID_BACKUP_POLICY", "The default policy cannot use the default."
        )
    receipts = runtime.backups.change_default_policy(
        _context(actor, request_id), _policy(command)
    )
    return {
        "policy": runtime.backups.default_policy().as_json(),
        "receipts": _receipts(response, receipts),
    }


@router.get("/v1/backup-targets", operation_id="list_backup_targets")
def list_backup_targets(
    runtime: RuntimeDep, actor: Annotated[Actor, require(Permission.BACKUP_READ)]
) -> dict[str, Any]:
    """The configured backup targets and the default policy."""
    return {
        "targets": [
            runtime.backups.targets()[n] for n in sorted(runtime.backups.targets())
        ],
        "default_policy": runtime.backups.default_policy().as_json(),
    }


@router.put(
    "/v1/backup-targets/{target}",
    operation_id="configure_backup_target",
    openapi_extra=_schema(BackupTargetConfig),
)
def configure_backup_target(
    target: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.ADMIN)],
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Add a backup target or replace its settings (recorded as an event)."""
    command = validate(BackupTargetConfig, body)
    receipts = runtime.backups.configure_target(
        _context(actor, request_id),
        name=target,
        kind=command.kind,
        location=command.location,
        options=dict(command.options),
    )
    return {
        "target": runtime.backups.targets()[target],
        "receipts": _receipts(response, receipts),
    }


@router.post("/v1/backup-scheduler/run", operation_id="run_backup_scheduler")
def run_backup_scheduler(
    runtime: RuntimeDep, actor: Annotated[Actor, require(Permission.ADMIN)]
) -> dict[str, Any]:
    """Take every backup that is due now, and only those."""
    return runtime.backups.run_scheduler()


def _policy(command: BackupPolicyUpdate) -> BackupPolicy:
    return BackupPolicy(
        copies=command.copies,
        locations=command.locations,
        interval_hours=command.interval_hours,
        retention_days=command.retention_days,
        targets=tuple(command.targets),
    )


def _backup_id(text: str) -> str:
    if not re.fullmatch(_BACKUP_ID, text):
        raise ApiError(
            422, "INVALID_BACKUP_ID", "A backup id is bkp_ and 24 hex digits."
        )
    return text
