"""Auditor routes: filtered history, a key's state at any point, range verification.

All need ``audit:read``; each read is recorded (``AuditTrailRead``, coalesced).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.deps import RuntimeDep, audit_scope, require
from domain.access import Permission
from ledger.audit import AuditFilter, key_state, search, verify_range
from ledger.service import parse_optional_time
from ledger.store import Actor

router = APIRouter(prefix="/v1/audit", tags=["audit"])

AuditorDep = Annotated[Actor, require(Permission.AUDIT_READ, audited=True)]
Cursor = Annotated[int, Query(ge=0, le=2**63 - 1, description="Entries after this.")]
Limit = Annotated[int, Query(ge=1, le=1000)]


def _page(
    response: Response,
    runtime: Any,
    query: AuditFilter,
    after: int,
    limit: int,
) -> dict[str, Any]:
    events, cursor = search(runtime.service, query, after=after, limit=limit)
    response.headers["Ledger-Position"] = str(runtime.service.head_position())
    return {"events": events, "next_after": cursor}


@router.get("/events", operation_id="audit_events")
def audit_events(
    response: Response,
    runtime: RuntimeDep,
    actor: AuditorDep,
    *,
    key: str | None = None,
    principal: Annotated[
        str | None, Query(description="The actor's principal.")
    ] = None,
    types: Annotated[
        str | None,
        Query(alias="type", description="Event types, separated by commas."),
    ] = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    outcome: Annotated[str | None, Query(description="success or refused.")] = None,
    after: Cursor = 0,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Entries matching every filter given, in position order, paged by position."""
    query = AuditFilter(
        key=key,
        principal=principal,
        types=tuple(t.strip() for t in (types or "").split(",") if t.strip()),
        recorded_from=parse_optional_time(from_),
        recorded_to=parse_optional_time(to),
        outcome=outcome,
        keys_within=audit_scope(runtime, actor),
    )
    return _page(response, runtime, query, after, limit)


@router.get("/principals/{principal}/activity", operation_id="audit_activity")
def principal_activity(
    principal: str,
    response: Response,
    runtime: RuntimeDep,
    actor: AuditorDep,
    *,
    after: Cursor = 0,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Everything one principal did or was refused, in position order."""
    query = AuditFilter(principal=principal, keys_within=audit_scope(runtime, actor))
    return _page(response, runtime, query, after, limit)


@router.get("/keys/{name}/state", operation_id="audit_key_state")
def audit_key_state(
    name: str,
    runtime: RuntimeDep,
    actor: AuditorDep,
    *,
    at: Annotated[str | None, Query(description="A time with offset.")] = None,
    position: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> dict[str, Any]:
    """The key as recorded at a time or at a ledger position (exactly one)."""
    return key_state(
        runtime.service, name, at=parse_optional_time(at), position=position
    )


@router.get("/verify", operation_id="audit_verify_range")
def audit_verify(
    runtime: RuntimeDep,
    actor: AuditorDep,
    *,
    from_position: Annotated[int, Query(ge=1, le=2**63 - 1)],
    to_position: Annotated[int, Query(ge=1, le=2**63 - 1)],
) -> dict[str, Any]:
    """Verify the entries from ``from_position`` to ``to_position`` inclusive."""
    return verify_range(runtime.service, from_position, to_position)
