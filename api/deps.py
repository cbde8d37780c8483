"""Request dependencies: the runtime, the caller, the request id, strict bodies."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.routing import APIRoute, iter_route_contexts

from api import audit
from api.body import parse_json, read_body
from api.errors import ApiError
from api.runtime import BOOTSTRAP_PRINCIPAL, Runtime
from domain.access import Permission, permissions_of
from domain.keys import MAX_VERSION, validate_key_name
from domain.principals import KEY_SCOPED, key_matches
from domain.principals import permissions_on_key as on_key
from ledger.service import CommandContext, CommandResult, IdempotencyRecord
from ledger.store import Actor

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_actor(request: Request, runtime: RuntimeDep) -> Actor:
    """The caller; 401 for a missing, unknown, expired or revoked token."""
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(401, "MISSING_TOKEN", "Send Authorization: Bearer <token>.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "MALFORMED_TOKEN", "Use the Bearer authorization scheme.")
    actor = runtime.authenticate(token.strip())
    if actor is None:
        raise ApiError(401, "INVALID_TOKEN", "The token is not valid.")
    actor = replace(
        actor, client=audit.client_of(request), user_agent=audit.user_agent_of(request)
    )
    request.state.actor = actor
    return actor


ActorDep = Annotated[Actor, Depends(get_actor)]


class Requirement:
    """The dependency ``require`` builds; it keeps its permissions visible.

    Keeping them on the dependency lets the route matrix test (and anything
    else) read what each route needs from the app itself: see
    ``required_permissions``.
    """

    def __init__(self, permissions: tuple[Permission, ...], *, audited: bool) -> None:
        self.permissions = frozenset(permissions)
        self.names = [permission.value for permission in permissions]
        self.audited = audited

    def __call__(self, request: Request, runtime: RuntimeDep, actor: ActorDep) -> Actor:
        names = self.names
        allowed = permissions_of(actor.roles) & self.permissions
        if not allowed:
            raise ApiError(
                403,
                "FORBIDDEN",
                f"This action needs the {' or '.join(names)} permission.",
                permission=names[0] if len(names) == 1 else names,
            )
        key = audit.key_of(request)
        if key is not None and allowed & KEY_SCOPED:
            require_on_key(runtime, actor, key, *self.permissions)
        if Permission.AUDIT_READ in allowed:
            # Before the read is recorded: a refused read is only a refusal.
            require_audit_keys(runtime, actor, audit.keys_asked_for(request))
        if request.method not in _READS:
            fenced = runtime.fenced_error()
            if fenced is not None:
                raise fenced
        if self.audited:
            audit.record_audit_read(request, actor)
        return actor


def permissions_on_key(
    runtime: Runtime, actor: Actor, key: str
) -> frozenset[Permission]:
    """What the actor may do on ``key``: its roles, narrowed by its grants.

    See ``domain.principals.permissions_on_key`` (key use needs a grant). The
    bootstrap token is not narrowed: it holds every role, to set things up.
    """
    held = permissions_of(actor.roles)
    if actor.principal == BOOTSTRAP_PRINCIPAL:
        return held
    return on_key(held, runtime.access.grants(actor.principal), key)


def require_on_key(
    runtime: Runtime, actor: Actor, key: str, *permissions: Permission
) -> None:
    """Go on if the actor may do one of ``permissions`` on ``key``, else 403.

    Call it where a route acts on a key its path does not name (a restore into
    another name, a bundle's own key, an approval's key); ``require`` already
    checks the key a ``/v1/keys/{name}`` or ``/v1/transit/.../{name}`` path names.
    """
    if permissions_on_key(runtime, actor, key) & frozenset(permissions):
        return
    names = sorted(permission.value for permission in permissions)
    raise ApiError(
        403,
        "KEY_NOT_GRANTED",
        f"This principal's grants do not allow {' or '.join(names)} on key {key!r}.",
        permission=names[0] if len(names) == 1 else names,
        key=key,
    )


def key_filter(
    runtime: Runtime, actor: Actor, permission: Permission
) -> Callable[[str], bool] | None:
    """Which keys a listing shows the actor: None for all of them.

    A principal with grants sees only the keys its grants let it ``permission``.
    """
    if actor.principal == BOOTSTRAP_PRINCIPAL:
        return None
    grants = runtime.access.grants(actor.principal)
    if not grants:
        return None
    held = permissions_of(actor.roles)
    return lambda key: permission in on_key(held, grants, key)


def audit_scope(runtime: Runtime, actor: Actor) -> tuple[str, ...] | None:
    """The key patterns the actor's audit reads and exports are narrowed to.

    None for every key: the bootstrap token, a principal without grants, or one
    whose grants give ``key:read`` on ``*``. Otherwise the patterns of its grants
    that give ``key:read`` (none if its roles do not carry it): it sees only the
    entries of keys they cover.
    """
    if actor.principal == BOOTSTRAP_PRINCIPAL:
        return None
    grants = runtime.access.grants(actor.principal)
    if not grants:
        return None
    if Permission.KEY_READ not in permissions_of(actor.roles):
        return ()
    patterns = sorted(p for p, held in grants.items() if Permission.KEY_READ in held)
    return None if "*" in patterns else tuple(patterns)


def require_audit_keys(runtime: Runtime, actor: Actor, keys: list[str]) -> None:
    """Go on if the actor's audit scope covers every one of ``keys``, else 403
    KEY_NOT_GRANTED naming the first it does not (422 INVALID_KEY_NAME first for
    a name no key can have)."""
    if not keys:
        return
    for key in keys:
        validate_key_name(key)
    scope = audit_scope(runtime, actor)
    if scope is None:
        return
    for key in keys:
        if not any(key_matches(pattern, key) for pattern in scope):
            raise ApiError(
                403,
                "KEY_NOT_GRANTED",
                f"This principal's grants do not allow key:read on key {key!r}.",
                permission=Permission.KEY_READ.value,
                key=key,
            )


def require_whole_ledger(runtime: Runtime, actor: Actor) -> None:
    """Go on if the actor may read every key's entries, else 403 LEDGER_NOT_GRANTED.

    For what cannot be narrowed to some keys and stay what it claims to be: a
    time-range export (a contiguous, linked stretch of the chain), the
    compliance report, the feed.
    """
    if audit_scope(runtime, actor) is None:
        return
    raise ApiError(
        403,
        "LEDGER_NOT_GRANTED",
        "This principal's grants cover only some keys; ask for those keys by name.",
        permission=Permission.KEY_READ.value,
    )


def require(*permissions: Permission, audited: bool = False) -> Any:
    """A dependency: the caller, if its roles carry one of ``permissions``, else 403.

    Use it as ``actor: Annotated[Actor, require(Permission.KEY_READ)]``. With
    ``audited`` the read is recorded as ``AuditTrailRead`` before it is answered.
    """
    return Depends(Requirement(permissions, audited=audited))


def required_permissions(route: APIRoute) -> frozenset[Permission] | None:
    """The permissions a route's ``require`` accepts (any one of them suffices).

    None for a route without ``require``: it needs no token at all.
    """
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if isinstance(dependency.call, Requirement):
            return dependency.call.permissions
        pending += dependency.dependencies
    return None


def api_routes(app: FastAPI) -> list[tuple[str, str, APIRoute]]:
    """Every (method, path, route) the app serves, included routers flattened."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            path = context.path or route.path
            found += [(method, path, route) for method in sorted(route.methods or ())]
    return found


def get_request_id(request: Request) -> str:
    """The caller's ``X-Request-Id`` if well-formed, else a fresh one.

    The same for every call during one request.
    """
    known = getattr(request.state, "request_id", None)
    if known is not None:
        return str(known)
    given = request.headers.get("x-request-id")
    request_id = given if given and _REQUEST_ID.fullmatch(given) else None
    request_id = request_id or f"req_{uuid.uuid4().hex}"
    request.state.request_id = request_id
    return request_id


RequestIdDep = Annotated[str, Depends(get_request_id)]


async def get_body(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """The request's JSON object body, read strictly (see ``api.body``)."""
    raw = await read_body(request, runtime.settings.max_body_bytes)
    body = parse_json(raw, request.headers.get("content-type"))
    request.state.body_digest = hashlib.sha256(
        request.method.encode() + b" " + request.url.path.encode() + b"\n" + raw
    ).hexdigest()
    return body


BodyDep = Annotated[dict[str, Any], Depends(get_body)]


def parse_version(text: str) -> int:
    """A version number from a path: a positive integer up to 2^31-1, else 422."""
    if not re.fullmatch(r"[1-9][0-9]{0,9}", text) or int(text) > MAX_VERSION:
        raise ApiError(
            422,
            "INVALID_VERSION",
            f"A version is a positive integer up to {MAX_VERSION}.",
        )
    return int(text)


def command_context(
    request: Request,
    actor: Actor,
    request_id: str,
    expected_version: int | None,
    idempotency_key: str | None,
    status: int,
    render: Any,
) -> CommandContext:
    """Build the context of a command, with its idempotency record if asked for.

    The record is scoped to the calling principal: a key another principal used
    never replays here. Within one principal the saved request hash covers the
    method, the path and the body, so a key reused for another request is 422.
    """
    record = None
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 255:
            raise ApiError(
                422,
                "INVALID_IDEMPOTENCY_KEY",
                "An Idempotency-Key is 1 to 255 characters.",
            )
        record = IdempotencyRecord(
            key=idempotency_key,
            request_hash=getattr(request.state, "body_digest", ""),
            status=status,
            render=render,
            scope=actor.principal,
        )
    return CommandContext(actor, request_id, expected_version, record)


IdempotencyKeyDep = Annotated[str | None, Header(alias="Idempotency-Key")]


def refuse_idempotency_key(idempotency_key: IdempotencyKeyDep = None) -> None:
    """For a command that cannot replay its answer: the header is refused, not ignored.

    Declare it after the actor, so a caller without a token is told that first.
    """
    if idempotency_key is not None:
        raise ApiError(
            422,
            "IDEMPOTENCY_KEY_NOT_SUPPORTED",
            "This route does not replay answers; send it without an Idempotency-Key.",
        )


NoReplayDep = Annotated[None, Depends(refuse_idempotency_key)]


def render_command(result: CommandResult) -> dict[str, Any]:
    """The response body of every command: the key, the receipts, any notes."""
    body: dict[str, Any] = {
        "key": result.key,
        "versions": result.versions,
        "receipts": [receipt.as_json() for receipt in result.receipts],
    }
    body.update(result.notes)
    return body
