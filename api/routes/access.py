"""Admin routes: principals, their roles, and the tokens they authenticate with.

Every change is an event on the principal's stream. A new token is in the
response to the request that issued it and nowhere else: the ledger keeps only
its SHA-256 digest.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response

from api.body import validate
from api.deps import BodyDep, RequestIdDep, RuntimeDep, require
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


def _respond(
    response: Response, principal: dict[str, Any], receipts: list[Receipt]
) -> dict[str, Any]:
    response.headers["Ledger-Position"] = str(receipts[-1].position)
    return {
        "principal": principal,
        "receipts": [receipt.as_json() for receipt in receipts],
    }


@router.post("/v1/principals", status_code=201, operation_id="create_principal")
def create_principal(
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Create a principal with one or more roles."""
    command = validate(PrincipalCreate, body)
    principal, receipts = runtime.access.create_principal(
        CommandContext(actor, request_id),
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
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Replace the principal's roles; they apply to its next request."""
    command = validate(PrincipalRolesUpdate, body)
    principal, receipts = runtime.access.change_roles(
        CommandContext(actor, request_id), name, parse_roles(command.roles)
    )
    return _respond(response, principal, receipts)


@router.post("/v1/principals/{name}/grants", operation_id="set_key_grant")
def set_grant(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Narrow the principal on matching keys; with any grant, unmatched keys are 403."""
    command = validate(GrantSet, body)
    principal, receipts = runtime.access.set_grant(
        CommandContext(actor, request_id),
        name,
        keys=validate_key_pattern(command.keys),
        permissions=parse_grant_permissions(command.permissions),
    )
    return _respond(response, principal, receipts)


@router.post("/v1/principals/{name}/grants/remove", operation_id="remove_key_grant")
def remove_grant(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Remove the grant on ``keys``."""
    command = validate(GrantRemove, body)
    principal, receipts = runtime.access.remove_grant(
        CommandContext(actor, request_id), name, keys=command.keys
    )
    return _respond(response, principal, receipts)


@router.post(
    "/v1/principals/{name}/tokens", status_code=201, operation_id="issue_token"
)
def issue_token(
    name: str,
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Issue a token to the principal. The token is in this response only."""
    command = validate(TokenCreate, body)
    issued = runtime.access.issue_token(
        CommandContext(actor, request_id),
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
    response: Response,
    runtime: RuntimeDep,
    actor: AdminDep,
    request_id: RequestIdDep,
    body: BodyDep,
) -> dict[str, Any]:
    """Revoke a token now; requests with it are then 401 TOKEN_REVOKED."""
    command = validate(TokenRevoke, body)
    principal, receipts = runtime.access.revoke_token(
        CommandContext(actor, request_id), token_id, reason=command.reason
    )
    return _respond(response, principal, receipts)
