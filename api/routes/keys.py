"""Key lifecycle routes: create, read, list, rotate, disable, destroy, roll back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from api.body import validate
from api.deps import (
    ActorDep,
    BodyDep,
    IdempotencyKeyDep,
    RequestIdDep,
    RuntimeDep,
    command_context,
    key_filter,
    parse_version,
    render_command,
    require,
)
from api.errors import ApiError
from api.schemas import (
    Command,
    KeyConfigUpdate,
    KeyCreate,
    KeyRollback,
    KeyTrim,
    VersionCompromise,
    VersionScheduleDestruction,
)
from domain.access import Permission
from ledger.service import CommandContext, CommandResult, parse_optional_time
from ledger.store import Actor
from projections import usage_counts

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "content": {"application/json": {"schema": model.model_json_schema()}},
            "required": False,
        }
    }


def _respond(response: Response, result: CommandResult) -> dict[str, Any]:
    response.headers["Ledger-Position"] = str(result.position)
    return render_command(result)


def _run(
    request: Request,
    response: Response,
    *,
    actor: ActorDep,
    request_id: str,
    body: dict[str, Any],
    model: type[Command],
    idempotency_key: str | None,
    action: Callable[[CommandContext, Any], CommandResult],
    status: int = 200,
) -> dict[str, Any]:
    command = validate(model, body)
    context = command_context(
        request,
        actor,
        request_id,
        command.expected_version,
        idempotency_key,
        status,
        render_command,
    )
    return _respond(response, action(context, command))


@router.post(
    "", status_code=201, operation_id="create_key", openapi_extra=_schema(KeyCreate)
)
def create_key(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.KEY_MANAGE)],
    request_id: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Create a key; version 1 is generated, enabled and primary."""
    command = validate(KeyCreate, body)
    context = command_context(
        request, actor, request_id, None, idempotency_key, 201, render_command
    )
    result = runtime.service.create_key(
        context,
        name=command.name,
        algorithm=command.algorithm,
        description=command.description,
        rotation_period_seconds=command.rotation_period_seconds,
    )
    return _respond(response, result)


@router.get("", operation_id="list_keys")
def list_keys(
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.KEY_READ)],
    *,
    after: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    state: Annotated[str | None, Query(pattern="^(enabled|disabled)$")] = None,
    prefix: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None,
    algorithm: Annotated[str | None, Query(pattern=r"^[a-z0-9-]{1,32}$")] = None,
) -> dict[str, Any]:
    """List keys in name order, filtered and paged by name cursor.

    A principal with grants sees only the keys its grants let it read.
    """
    from projections import key_view

    shown = key_filter(runtime, actor, Permission.KEY_READ)
    items: list[dict[str, Any]] = []
    cursor = after
    while True:
        page, cursor = key_view.list_keys(
            runtime.service.ledger,
            after=cursor,
            limit=limit,
            state=state,
            prefix=prefix,
            algorithm=algorithm,
        )
        items += [item for item in page if shown is None or shown(item["name"])]
        if len(items) >= limit or cursor is None:
            break
    if len(items) > limit:
        items, cursor = items[:limit], items[limit - 1]["name"]
    response.headers["Ledger-Position"] = str(runtime.service.head_position())
    return {"keys": items, "next_cursor": cursor}


@router.get("/{name}", operation_id="get_key")
def get_key(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.KEY_READ)],
    *,
    at: Annotated[str | None, Query(description="A time with offset.")] = None,
    versions_after: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    versions_limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The key and a page of its versions, now or as recorded at time ``at``.

    Now (without ``at``) the view also holds ``usage``: the key's use counts by
    operation, and by version (see ``projections.usage_counts``).
    """
    view = runtime.service.get_key(
        name,
        at=parse_optional_time(at),
        versions_after=versions_after,
        versions_limit=versions_limit,
    )
    if at is None:
        view["usage"] = usage_counts.for_key(runtime.service.ledger, name)
    response.headers["Ledger-Position"] = str(runtime.service.head_position())
    return view


@router.get("/{name}/history", operation_id="get_key_history")
def get_history(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.KEY_READ, audited=True)],
    *,
    after: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The key's ledger entries in stream order, paged by stream version (audited)."""
    items, cursor = runtime.service.history(name, after=after, limit=limit)
    response.headers["Ledger-Position"] = str(runtime.service.head_position())
    return {"events": items, "next_cursor": cursor}


def _key_command(
    path: str,
    operation_id: str,
    doc: str,
    model: type[Command],
    call: Callable[[RuntimeDep, CommandContext, str, Any], CommandResult],
    *,
    dual_control: str | None = None,
) -> None:
    def handler(
        name: str,
        request: Request,
        response: Response,
        runtime: RuntimeDep,
        actor: Annotated[Actor, require(Permission.KEY_MANAGE)],
        request_id: RequestIdDep,
        body: BodyDep,
        idempotency_key: IdempotencyKeyDep = None,
    ) -> dict[str, Any]:
        if dual_control is not None:
            pending = _guard(
                request,
                runtime,
                actor,
                request_id,
                idempotency_key,
                body,
                model,
                dual_control,
                name,
                check=lambda context, command: call(runtime, context, name, command),
            )
            if pending is not None:
                response.status_code = 202
                return pending
        return _run(
            request,
            response,
            actor=actor,
            request_id=request_id,
            body=body,
            model=model,
            idempotency_key=idempotency_key,
            action=lambda context, command: call(runtime, context, name, command),
        )

    handler.__doc__ = doc
    router.add_api_route(
        path,
        handler,
        methods=["POST"],
        operation_id=operation_id,
        openapi_extra=_schema(model),
        description=doc,
    )


def _version_command(
    path: str,
    operation_id: str,
    doc: str,
    model: type[Command],
    call: Callable[[RuntimeDep, CommandContext, str, int, Any], CommandResult],
    *,
    dual_control: str | None = None,
) -> None:
    def handler(
        name: str,
        version: str,
        request: Request,
        response: Response,
        runtime: RuntimeDep,
        actor: Annotated[Actor, require(Permission.KEY_MANAGE)],
        request_id: RequestIdDep,
        body: BodyDep,
        idempotency_key: IdempotencyKeyDep = None,
    ) -> dict[str, Any]:
        number = parse_version(version)
        if dual_control is not None:
            pending = _guard(
                request,
                runtime,
                actor,
                request_id,
                idempotency_key,
                body,
                model,
                dual_control,
                name,
                {"version": number},
                check=lambda context, command: call(
                    runtime, context, name, number, command
                ),
            )
            if pending is not None:
                response.status_code = 202
                return pending
        return _run(
            request,
            response,
            actor=actor,
            request_id=request_id,
            body=body,
            model=model,
            idempotency_key=idempotency_key,
            action=lambda context, command: call(
                runtime, context, name, number, command
            ),
        )

    handler.__doc__ = doc
    router.add_api_route(
        path,
        handler,
        methods=["POST"],
        operation_id=operation_id,
        openapi_extra=_schema(model),
        description=doc,
    )


def _guard(
    request: Request,
    runtime: Any,
    actor: Actor,
    request_id: str,
    idempotency_key: str | None,
    body: dict[str, Any],
    model: type[Command],
    action: str,
    name: str,
    extra: dict[str, Any] | None = None,
    *,
    check: Callable[[CommandContext, Any], CommandResult],
) -> dict[str, Any] | None:
    """None if the action may run now; else the body of a 202: it waits for approval.

    Before a request is recorded the action is run dry against the key as it is
    now: a refusal it would meet at approval is the answer now, nothing recorded.
    """
    command = validate(model, body)
    arguments = {**command.model_dump(mode="json"), **(extra or {})}
    context = command_context(
        request, actor, request_id, None, idempotency_key, 202, render_command
    )
    dry = CommandContext(actor, request_id, command.expected_version, dry_run=True)
    pending = runtime.dual_control.guard(
        context, name, action, arguments, check=lambda: check(dry, command)
    )
    if pending is None:
        return None
    return {"approval": pending.view()}


def _rollback(runtime: Any, context: CommandContext, name: str, command: Any) -> Any:
    return runtime.service.roll_back(
        context,
        name,
        version=command.version,
        to_stream_version=command.to_stream_version,
        to_time=parse_optional_time(command.to_time),
    )


_key_command(
    "/{name}/rotate",
    "rotate_key",
    "Add a new enabled version and make it primary.",
    Command,
    lambda rt, ctx, name, _: rt.service.rotate(ctx, name),
)
_key_command(
    "/{name}/disable",
    "disable_key",
    "Disable the key as a whole.",
    Command,
    lambda rt, ctx, name, _: rt.service.disable_key(ctx, name),
)
_key_command(
    "/{name}/enable",
    "enable_key",
    "Enable the key as a whole.",
    Command,
    lambda rt, ctx, name, _: rt.service.enable_key(ctx, name),
)
_key_command(
    "/{name}/rollback",
    "roll_back_key",
    "Make an earlier version primary, or return the key to an earlier point.",
    KeyRollback,
    _rollback,
    dual_control="rollback",
)


def _config(runtime: Any, context: CommandContext, name: str, command: Any) -> Any:
    if command.min_decryption_version is None and (
        "min_decryption_version" in command.model_fields_set
    ):
        raise ApiError(
            422,
            "INVALID_FIELD",
            "min_decryption_version cannot be null.",
            fields=[{"field": "min_decryption_version", "problem": "null"}],
        )
    given = command.model_fields_set
    return runtime.service.configure_key(
        context,
        name,
        min_decryption_version=command.min_decryption_version,
        min_encryption_version=command.min_encryption_version,
        set_min_encryption="min_encryption_version" in given,
        rotation_period_seconds=command.rotation_period_seconds,
        set_rotation_period="rotation_period_seconds" in given,
    )


_key_command(
    "/{name}/config",
    "configure_key",
    "Change the key's min_decryption_version, min_encryption_version and "
    "rotation_period_seconds (the period a compliance report checks rotations by).",
    KeyConfigUpdate,
    _config,
)
_key_command(
    "/{name}/trim",
    "trim_key",
    "Trim every version below min_available_version and erase its material.",
    KeyTrim,
    lambda rt, ctx, name, cmd: rt.service.trim_versions(
        ctx, name, min_available_version=cmd.min_available_version
    ),
)
_version_command(
    "/{name}/versions/{version}/disable",
    "disable_version",
    "Disable a version other than the primary.",
    Command,
    lambda rt, ctx, name, v, _: rt.service.disable_version(ctx, name, v),
)
_version_command(
    "/{name}/versions/{version}/enable",
    "enable_version",
    "Enable a disabled version.",
    Command,
    lambda rt, ctx, name, v, _: rt.service.enable_version(ctx, name, v),
)
_version_command(
    "/{name}/versions/{version}/compromise",
    "compromise_version",
    "Mark a version compromised; it can never be used again.",
    VersionCompromise,
    lambda rt, ctx, name, v, cmd: rt.service.mark_compromised(
        ctx, name, v, reason=cmd.reason
    ),
)
_version_command(
    "/{name}/versions/{version}/schedule-destruction",
    "schedule_version_destruction",
    "Schedule a non-primary version for destruction after a waiting period.",
    VersionScheduleDestruction,
    lambda rt, ctx, name, v, cmd: rt.service.schedule_destruction(
        ctx, name, v, days=cmd.days
    ),
    dual_control="schedule-destruction",
)
_version_command(
    "/{name}/versions/{version}/cancel-destruction",
    "cancel_version_destruction",
    "Cancel a scheduled destruction; the version returns to disabled.",
    Command,
    lambda rt, ctx, name, v, _: rt.service.cancel_destruction(ctx, name, v),
)
