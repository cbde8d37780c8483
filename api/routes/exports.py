"""Export routes: evidence for auditors, as one signed archive they verify offline."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.audit import record_export
from api.deps import RuntimeDep, require, require_whole_ledger
from api.errors import ApiError
from domain.access import Permission
from ledger.export import ExportScope, build_export
from ledger.service import parse_optional_time
from ledger.store import Actor

router = APIRouter(tags=["exports"])

MAX_KEYS = 100


@router.get(
    "/v1/exports",
    operation_id="export_evidence",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}},
)
def export_evidence(
    request: Request,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.AUDIT_READ)],
    *,
    from_: Annotated[
        str | None, Query(alias="from", description="A time with offset.")
    ] = None,
    to: Annotated[str | None, Query(description="A time with offset.")] = None,
    keys: Annotated[
        str | None, Query(description="Key names separated by commas.")
    ] = None,
) -> Response:
    """A zip of the entries recorded in [from, to), or of whole keys' histories."""
    names: tuple[str, ...] = ()
    if keys is not None:
        names = tuple(name.strip() for name in keys.split(","))
        if len(names) > MAX_KEYS:
            raise ApiError(
                422, "INVALID_EXPORT_SCOPE", f"Export at most {MAX_KEYS} keys at once."
            )
    else:
        # A time range is a linked stretch of the whole chain: it cannot leave
        # out the keys a principal's grants do not cover and still verify.
        require_whole_ledger(runtime, actor)
    scope = ExportScope(parse_optional_time(from_), parse_optional_time(to), names)

    export = build_export(runtime.service, scope)
    record_export(
        request,
        actor,
        {"from": from_, "to": to, "keys": list(names)},
        export.data,
        export.manifest,
    )
    return Response(
        export.data,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{export.filename}"',
            "Ledger-Position": str(export.manifest["ledger_head"]["position"]),
        },
    )
