"""Admin routes: principals, their roles, and the tokens they authenticate with.

Every change is an event on the principal's stream. A new token is in the
response to the request that issued it and nowhere else: the ledger keeps only
its SHA-256 digest.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response

from api.body import validate
from api.deps import (
    BodyDep,
    IdempotencyKeyDep,
    RequestIdDep,
    RuntimeDep,
    command_context,
    require,
)
from api.errors import error_body
from api.schemas import (
    GrantRemove,
    GrantSet,
    PrincipalCreate,
    PrincipalRolesUpdate,
    TokenCreate,
    TokenRevoke,
)
from domain.access import Permission
from domain.principals import (
    parse_grant_permissions,
    parse_roles,
    validate_key_pattern,
)
from ledger.service import CommandContext
from ledger.store import Actor, Receipt

router = APIRouter(tags=["access"])

AdminDep = Annotated[Actor, require(Permission.ADMIN)]


def _body(result: tuple[dict[str, Any], list[Receipt]]) -> dict[str, Any]:
    principal, receipts = result
    return {
        "principal": principal,
        "receipts": [receipt.as_json() for receipt in receipts],
    }


def _respond(
    response: Response, principal: dict[str, Any], receipts: list[Receipt]
) -> dict[str, Any]:
    response.headers["Ledger-Position"] = str(receipts[-1].position)
    return _body((principal, receipts))


def _context(
    request: Request,
    actor: Actor,
    request_id: str,
    idempotency_key: str | None,
    status: int = 200,
) -> CommandContext:
    return command_context(
        request, actor, request_id, None, idempotency_key, status, _body
    )


def _token_shown_once(_: Any) -> dict[str, Any]:
    # What a retry of an issued token gets: the token is never shown twice.
    return error_body(
        "IDEMPOTENCY_KEY_ALREADY_USED",
        "A token was already issued under this Idempotency-Key; a token is "
        "shown only once, so it is not shown again and no second one is issued.",
    )


@router.post("/v1/principals", status_code=201, operation_id="create_principal")
def create_principal(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Create a principal with one or more roles."""
    command = validate(PrincipalCreate, body)
    principal, receipts = runtime.access.create_principal(
        _context(request, actor, request_id, idempotency_key, 201),
        name=command.name,
        roles=parse_roles(command.roles),
        description=command.description,
    )
    return _respond(response, principal, receipts)


@router.get("/v1/principals", operation_id="list_principals")
def list_principals(runtime: RuntimeDep, actor: AdminDep) -> dict[str, Any]:
    """Every principal with its roles."""
    return {"principals": runtime.access.list_principals()}


@router.get("/v1/principals/{name}", operation_id="get_principal")
def get_principal(name: str, runtime: RuntimeDep, actor: AdminDep) -> dict[str, Any]:
    """A principal, its roles and its tokens (ids, expiry, revocation; no secrets)."""
    return runtime.access.get_principal(name)


@router.post("/v1/principals/{name}/roles", operation_id="change_principal_roles")
def change_roles(
    name: str,
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Replace the principal's roles; they apply to its next request."""
    command = validate(PrincipalRolesUpdate, body)
    principal, receipts = runtime.access.change_roles(
        _context(request, actor, request_id, idempotency_key),
        name,
        parse_roles(command.roles),
    )
    return _respond(response, principal, receipts)


@router.post("/v1/principals/{name}/grants", operation_id="set_key_grant")
def set_grant(
    name: str,
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Narrow the principal on matching keys; with any grant, unmatched keys are 403."""
    command = validate(GrantSet, body)
    principal, receipts = runtime.access.set_grant(
        _context(request, actor, request_id, idempotency_key),
        name,
        keys=validate_key_pattern(command.keys),
        permissions=parse_grant_permissions(command.permissions),
    )
    return _respond(response, principal, receipts)


@router.post("/v1/principals/{name}/grants/remove", operation_id="remove_key_grant")
def remove_grant(
    name: str,
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Remove the grant on ``keys``."""
    command = validate(GrantRemove, body)
    principal, receipts = runtime.access.remove_grant(
        _context(request, actor, request_id, idempotency_key), name, keys=command.keys
    )
    return _respond(response, principal, receipts)


@router.post(
    "/v1/principals/{name}/tokens", status_code=201, operation_id="issue_token"
)
def issue_token(
    name: str,
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Issue a token to the principal. The token is in this response only.

    A retry under the same ``Idempotency-Key`` answers 409
    ``IDEMPOTENCY_KEY_ALREADY_USED``: no second token, and the first not again.
    """
    command = validate(TokenCreate, body)
    context = command_context(
        request, actor, request_id, None, idempotency_key, 409, _token_shown_once
    )
    issued = runtime.access.issue_token(
        context,
        name,
        expires_in_seconds=command.expires_in_seconds,
        label=command.label,
    )
    response.headers["Ledger-Position"] = str(issued.receipts[-1].position)
    response.headers["Cache-Control"] = "no-store"
    return {
        "token": issued.token,
        "token_id": issued.token_id,
        "principal": name,
        "expires_at": issued.expires_at,
        "receipts": [receipt.as_json() for receipt in issued.receipts],
    }


@router.post("/v1/tokens/{token_id}/revoke", operation_id="revoke_token")
def revoke_token(
    token_id: str,
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> dict[str, Any]:
    """Revoke a token now; requests with it are then 401 TOKEN_REVOKED."""
    command = validate(TokenRevoke, body)
    principal, receipts = runtime.access.revoke_token(
        _context(request, actor, request_id, idempotency_key),
        token_id,
        reason=command.reason,
    )
    return _respond(response, principal, receipts)
