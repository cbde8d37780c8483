"""What the API records about requests besides their commands: refusals and reads.

A refused request (401 and 403 on any route; 400, 409, 413, 415 and 422 on a
command) is recorded as ``keyledger.access.RequestRefused`` with its status,
reason code, route, key, who and from where, never the token or the body.
Reads of the audit trail are recorded as ``keyledger.access.AuditTrailRead``,
with the path and query parameters that say what was looked at.
Both are coalesced (see ``ledger.access.Coalescer``), so a flood of identical
requests costs two events per window, not one per request.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from fastapi import Request

from domain.access_audit import AuditTrailRead, EvidenceExport, RequestRefusal
from domain.errors import KeyledgerError
from ledger.store import Actor

logger = logging.getLogger(__name__)

ANONYMOUS = Actor("anonymous", "-")
REFUSED_ON_ANY_ROUTE = frozenset({401, 403})
REFUSED_COMMANDS = frozenset({400, 409, 413, 415, 422})
COMMAND_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_USER_AGENT = 200
MAX_QUERY_VALUE = 200
# A query parameter whose name holds one of these is recorded without its value.
SECRET_WORDS = ("token", "secret", "password", "authorization", "credential")
# Every route under these with a ``{name}`` path parameter names a key by it.
KEY_PATHS = ("/v1/keys/", "/v1/transit/", "/v1/audit/keys/")


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


def user_agent_of(request: Request) -> str | None:
    agent = request.headers.get("user-agent")
    return agent[:MAX_USER_AGENT] if agent is not None else None


def route_of(request: Request) -> str:
    """The route's path template (``/v1/keys/{name}``), not the path asked for."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else request.url.path


def key_of(request: Request) -> str | None:
    """The key a route's path names: ``{name}`` on the native and the Vault routes."""
    name = request.path_params.get("name")
    if isinstance(name, str) and request.url.path.startswith(KEY_PATHS):
        return name
    return None


def keys_asked_for(request: Request) -> list[str]:
    """Every key a request names: in its path, and in ``key`` or ``keys`` (names
    separated by commas) in its query."""
    names = [name for name in [key_of(request)] if name is not None]
    names += request.query_params.getlist("key")
    for value in request.query_params.getlist("keys"):
        names += [name.strip() for name in value.split(",")]
    return names


def is_recorded_refusal(method: str, status: int) -> bool:
    return status in REFUSED_ON_ANY_ROUTE or (
        status in REFUSED_COMMANDS and method in COMMAND_METHODS
    )


def record_refusal(
    request: Request, status: int, code: str, details: dict[str, Any]
) -> None:
    """Record a refused request, coalesced; a failure to record is only logged.

    The request is refused either way, so there is nothing to fail closed on.
    """
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.record_access:
        return
    if not is_recorded_refusal(request.method, status):
        return
    actor: Actor | None = getattr(request.state, "actor", None)
    token_id = actor.token_id if actor is not None else details.get("token_id")
    fields = {
        "status": status,
        "code": code,
        "method": request.method,
        "route": route_of(request),
        "key": key_of(request) or _named_key(details),
        "principal": actor.principal if actor is not None else None,
        "token_id": token_id if isinstance(token_id, str) else None,
        "client": client_of(request),
        "user_agent": user_agent_of(request),
    }
    # One window per caller (its principal, else its client), code and route: the
    # key, the token and the user agent are the caller's to vary, and must not
    # defeat coalescing. The count keeps the distinct keys named.
    caller = ("principal", fields["principal"])
    if fields["principal"] is None:
        caller = ("client", fields["client"])
    signature = ("refused", *caller, status, code, request.method, fields["route"])
    try:
        runtime.coalescer.occurred(
            signature,
            lambda now, seconds: RequestRefusal.record(
                fields=fields, window_seconds=seconds, now=now
            ),
            actor or ANONYMOUS,
            getattr(request.state, "request_id", None) or "unattributed",
            detail=fields["key"],
        )
    except KeyledgerError as error:
        logger.warning("refusal_not_recorded", extra={"code": error.code})


def _named_key(details: dict[str, Any]) -> str | None:
    """The key a refusal names in its details (a query's ungranted key), if any."""
    key = details.get("key")
    return key if isinstance(key, str) else None


def record_export(
    request: Request, actor: Actor, scope: dict[str, Any], data: bytes, manifest: Any
) -> None:
    """Record that an export was handed out, with its digest, before handing it out."""
    runtime = request.app.state.runtime
    if not runtime.record_access:
        return
    covered = manifest.get("covered") or {}
    fact = EvidenceExport.record(
        now=runtime.clock.now(),
        scope=scope,
        sha256=hashlib.sha256(data).hexdigest(),
        entries=manifest["counts"]["entries"],
        first_position=covered.get("first_position"),
        last_position=covered.get("last_position"),
    )
    request_id = getattr(request.state, "request_id", None) or "unattributed"
    runtime.record_fact(lambda: runtime.coalescer.record(fact, actor, request_id))


def query_of(request: Request) -> list[list[str]]:
    """The query's [name, value] pairs in order, for the record of a read.

    A parameter whose name suggests a secret is recorded with its value
    withheld, and values are cut to ``MAX_QUERY_VALUE`` characters.
    """
    return [
        [name[:MAX_QUERY_VALUE], _withheld(name, value)]
        for name, value in request.query_params.multi_items()
    ]


def _withheld(name: str, value: str) -> str:
    if any(word in name.lower() for word in SECRET_WORDS):
        return "(withheld)"
    return value[:MAX_QUERY_VALUE]


def record_audit_read(request: Request, actor: Actor) -> None:
    """Record a read of the audit trail before answering it (fail closed).

    The record says who looked at what: the route, the key, the path asked for
    and the query parameters (never a token, a header or a body).
    """
    runtime = request.app.state.runtime
    if not runtime.record_access:
        return
    query = query_of(request)
    fields = {
        "route": route_of(request),
        "key": key_of(request),
        "principal": actor.principal,
        "token_id": actor.token_id,
        "path": request.url.path,
        "query": query,
    }
    signature = (
        "read",
        *(value for name, value in fields.items() if name != "query"),
        *(tuple(pair) for pair in query),
    )
    runtime.record_fact(
        lambda: runtime.coalescer.occurred(
            signature,
            lambda now, seconds: AuditTrailRead.record(
                fields=fields, window_seconds=seconds, now=now
            ),
            actor,
            getattr(request.state, "request_id", None) or "unattributed",
        )
    )
