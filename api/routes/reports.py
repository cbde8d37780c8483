"""Report routes: the compliance report of a period, as HTML or PDF, for auditors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.audit import record_export
from api.deps import RuntimeDep, require, require_whole_ledger
from domain.access import Permission
from ledger.store import Actor
from reports import MEDIA_TYPES, Format, covered, render
from reports.compliance import collect, parse_period

router = APIRouter(tags=["reports"])


@router.get(
    "/v1/reports/compliance",
    operation_id="compliance_report",
    response_class=Response,
    responses={
        200: {"content": {"text/html": {}, "application/pdf": {}}},
    },
)
def compliance_report(
    request: Request,
    runtime: RuntimeDep,
    actor: Annotated[Actor, require(Permission.AUDIT_READ)],
    *,
    from_: Annotated[
        str | None, Query(alias="from", description="A time with offset.")
    ] = None,
    to: Annotated[str | None, Query(description="A time with offset.")] = None,
    format: Annotated[Format, Query(description="html or pdf.")] = "html",
) -> Response:
    """The compliance report of [from, to) as HTML or PDF (recorded as an export)."""
    require_whole_ledger(runtime, actor)  # the report counts every key
    start, end = parse_period(from_, to)

    report = collect(
        runtime.service,
        start=start,
        end=end,
        default_policy=runtime.backups.default_policy(),
        now=runtime.clock.now(),
    )
    data = render(report, format)
    head = report["ledger"]["head"]["position"]
    scope = {"report": "compliance", "from": from_, "to": to, "format": format}
    record_export(request, actor, scope, data, covered(report))
    stamp = report["period"]["from"][:10] + "_" + report["period"]["to"][:10]
    return Response(
        data,
        media_type=MEDIA_TYPES[format],
        headers={
            "Content-Disposition": (
                f'inline; filename="keyledger-compliance-{stamp}.{format}"'
            ),
            "Ledger-Position": str(head),
        },
    )
