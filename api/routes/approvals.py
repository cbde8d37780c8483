"""Dual control routes: a key's policy, and approving the requests it makes wait.

An action under dual control answers 202 with the pending request; another
principal with ``key:manage`` on the key (and ``backup:restore`` for a restore)
approves it with ``POST /v1/approvals/{id}/approve`` before it expires, and only
then does the action run, as the approver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response

from api.body import validate
from api.deps import (
    BodyDep,
    IdempotencyKeyDep,
    RequestIdDep,
    RuntimeDep,
    command_context,
    render_command,
    require,
    require_on_key,
)
from api.restore import approved_restore, bundle_for
from api.routes.keys import _rollback
from api.schemas import ApprovalDecision, DualControlUpdate, KeyRollback
from domain.access import Permission
from domain.dual_control import ApprovalRequest
from ledger.dual_control import PolicyChangePending
from ledger.service import CommandContext, CommandResult, replay_saved
from ledger.store import Actor

router = APIRouter(tags=["dual control"])

ManagerDep = Annotated[Actor, require(Permission.KEY_MANAGE)]
ReaderDep = Annotated[Actor, require(Permission.KEY_READ)]

# What runs when a request is approved, by action. A restore's entry is made
# per approval, once its bundle is found (see ``approve``).
EXECUTORS: dict[
    str, Callable[[Any, CommandContext, ApprovalRequest], CommandResult]
] = {
    "rollback": lambda runtime, context, pending: _rollback(
        runtime, context, pending.key, KeyRollback.model_validate(pending.arguments)
    ),
    "schedule-destruction": lambda runtime, context, pending: (
        runtime.service.schedule_destruction(
            context,
            pending.key,
            pending.arguments["version"],
            days=pending.arguments.get("days"),
        )
    ),
}


# What an approver needs on the request's key, by action (else key:manage): a
# custodian, with its grants, approves a restore (a backup-operator's included).
APPROVER_PERMISSIONS: dict[str, tuple[Permission, ...]] = {
    "restore": (Permission.KEY_MANAGE, Permission.BACKUP_RESTORE),
}


@router.get("/v1/keys/{name}/dual-control", operation_id="get_dual_control")
def get_policy(name: str, runtime: RuntimeDep, actor: ReaderDep) -> dict[str, Any]:
    """The key's dual-control policy (no actions when none is set)."""
    policy = runtime.dual_control.policy(name)
    if policy is None:
        return {"key": name, "actions": [], "ttl_seconds": None}
    view: dict[str, Any] = policy.view()
    return view


def _policy_body(result: tuple[dict[str, Any], list[Any]]) -> dict[str, Any]:
    policy, receipts = result
    return {**policy, "receipts": [receipt.as_json() for receipt in receipts]}


@router.post("/v1/keys/{name}/dual-control", operation_id="set_dual_control")
def set_policy(
    name: str,
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: ManagerDep,
    request_id: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Set the policy; weakening one that guards ``weaken-policy`` answers 202."""
    runtime.service.get_key(name)  # 404 for an unknown key
    command = validate(DualControlUpdate, body)
    context = command_context(
        request, actor, request_id, None, idempotency_key, 200, _policy_body
    )
    try:
        policy, receipts = runtime.dual_control.set_policy(
            context, name, list(command.actions), command.ttl_seconds
        )
    except PolicyChangePending as waiting:
        response.status_code = 202
        return {"approval": waiting.pending.view()}
    return _policy_body((policy, receipts))


@router.get("/v1/approvals/{request_id}", operation_id="get_approval")
def get_approval(
    request_id: str, runtime: RuntimeDep, actor: ReaderDep
) -> dict[str, Any]:
    """An approval request and where it stands."""
    view: dict[str, Any] = runtime.dual_control.get(request_id).view()
    return view


@router.post(
    "/v1/approvals/{request_id}/approve",
    operation_id="approve",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": ApprovalDecision.model_json_schema()}
            },
            "required": False,
        }
    },
)
def approve(
    request_id: str,
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: ManagerDep,
    request_id_header: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Approve another principal's request; its action runs now, as the approver.

    The approver needs the action's permissions on the request's key
    (``APPROVER_PERMISSIONS``; 403 otherwise, nothing recorded but the refusal).
    A restore of a bundle this ledger holds no copy of needs that ``bundle``.
    """
    decision = validate(ApprovalDecision, body)
    context = command_context(
        request, actor, request_id_header, None, idempotency_key, 200, render_command
    )
    replay_saved(runtime.service.ledger, context)
    waiting = runtime.dual_control.get(request_id)
    needed = APPROVER_PERMISSIONS.get(waiting.action, (Permission.KEY_MANAGE,))
    for permission in needed:
        require_on_key(runtime, actor, waiting.key, permission)
    executors = dict(EXECUTORS)
    if waiting.action == "restore" and waiting.status == "pending":
        data = bundle_for(runtime, waiting, decision.bundle)
        executors["restore"] = lambda runtime, context, pending: approved_restore(
            runtime, context, pending, data
        )

    def execute(context: CommandContext, pending: ApprovalRequest) -> Any:
        record = context.idempotency
        if record is not None:
            # What a retry replays is this route's answer, saved with the action.
            answer = replace(record, render=lambda result: _answer(pending, result))
            context = replace(context, idempotency=answer)
        if pending.action == "weaken-policy":
            return runtime.dual_control.apply_policy(context, pending)
        return executors[pending.action](runtime, context, pending)

    pending, result = runtime.dual_control.approve(context, request_id, execute)
    if isinstance(result, CommandResult):
        response.headers["Ledger-Position"] = str(result.position)
    return _answer(pending, result)


def _answer(pending: ApprovalRequest, result: Any) -> dict[str, Any]:
    """The approval and what its action did: a command's body, or the policy."""
    answer: dict[str, Any] = {"approval": pending.view()}
    if isinstance(result, CommandResult):
        answer["result"] = render_command(result)
    elif result is not None:
        answer["result"] = result[0]
    return answer
