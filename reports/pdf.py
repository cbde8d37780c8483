"""The compliance report as a PDF, laid out with reportlab's platypus.

Every string is made ``printable`` (hidden and undrawable characters escaped)
and then XML-escaped, because platypus paragraphs parse a small markup of
their own. Charts are the drawings of ``reports.charts``, embedded as vectors.
"""

from __future__ import annotations

import io
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Table,
    TableStyle,
)

from reports.charts import charts
from reports.fonts import FONT, FONT_BOLD, printable, register
from reports.html import STATUS_LABELS, duration

PAGE_WIDTH = landscape(A4)[0] - 24 * mm
# The most characters of one value the PDF shows; the signed entry keeps it whole.
MAX_SHOWN = 600
_BODY = ParagraphStyle("body", fontName=FONT, fontSize=9, leading=11)
_CELL = ParagraphStyle("cell", fontName=FONT, fontSize=7, leading=8.5)
_HEAD = ParagraphStyle("head", fontName=FONT_BOLD, fontSize=7, leading=8.5)
_H1 = ParagraphStyle("h1", fontName=FONT_BOLD, fontSize=16, leading=20, spaceAfter=6)
_H3 = ParagraphStyle(
    "h3", fontName=FONT_BOLD, fontSize=10, leading=13, spaceBefore=6, spaceAfter=3
)
_H2 = ParagraphStyle(
    "h2", fontName=FONT_BOLD, fontSize=12, leading=15, spaceBefore=10, spaceAfter=4
)


def render_pdf(report: dict[str, Any]) -> bytes:
    """The report (from ``reports.compliance.collect``) as PDF bytes."""
    register()
    out = io.BytesIO()
    document = SimpleDocTemplate(
        out,
        pagesize=landscape(A4),
        leftMargin=12 * mm,
        rightMargin=12 * mm,  # PAGE_WIDTH is what these margins leave
        topMargin=12 * mm,
        bottomMargin=12 * mm,
        title="keyledger compliance report",
        author="keyledger",
        invariant=1,
    )
    drawings = charts(report)
    story: list[Flowable] = [_p("Compliance report", _H1), *_summary(report)]
    story += _inventory(report, drawings)
    story += _rotations(report, drawings)
    story += _backups(report, drawings)
    story += _verification(report)
    story += _destructions(report)
    story += _refusals(report, drawings)
    story += _dual_control(report)
    document.build(story)
    return out.getvalue()


def _p(text: Any, style: ParagraphStyle = _BODY) -> Paragraph:
    shown = printable("" if text is None else str(text))
    if len(shown) > MAX_SHOWN:
        # A table row taller than a page cannot be laid out at all.
        shown = shown[:MAX_SHOWN] + f"… ({len(shown) - MAX_SHOWN} more characters)"
    return Paragraph(escape(shown), style)


def _table(header: list[str], rows: list[list[Any]]) -> Table:
    data = [[_p(cell, _HEAD) for cell in header]]
    data += [[_p(cell, _CELL) for cell in row] for row in rows]
    table = Table(data, colWidths=_widths(header, rows), repeatRows=1, hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#bbbbbb")),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return table


def _widths(header: list[str], rows: list[list[Any]]) -> list[float]:
    """Column widths that share the page by content, none too narrow or too wide.

    Left to itself platypus may give one long text all of the page and the
    other columns a negative width.
    """
    wanted = [
        min(60, max(8, len(name) + 2, *(len(str(row[i])) for row in rows)))
        for i, name in enumerate(header)
    ]
    return [PAGE_WIDTH * share / sum(wanted) for share in wanted]


def _summary(r: dict[str, Any]) -> list[Flowable]:
    ledger = r["ledger"]
    checkpoint = ledger["latest_checkpoint"]
    verification = ledger["verification"]
    failure = verification["first_failure"]
    period = ledger["period"]
    rows = [
        ["Period", f"{r['period']['from']} to {r['period']['to']} (to excluded)"],
        ["Generated", r["generated_at"]],
        [
            "Ledger head",
            f"position {ledger['head']['position']}, hash {ledger['head']['hash']}",
        ],
        [
            "Latest signed checkpoint",
            f"position {checkpoint['position']}, hash {checkpoint['hash']}, "
            f"{checkpoint['recorded_at']}, signed by {checkpoint['kid']}"
            if checkpoint
            else "none yet",
        ],
        [
            "Ledger verified",
            f"yes: {verification['checked']} entries, "
            f"{verification['checkpoints_checked']} checkpoints"
            if ledger["verified"]
            else f"NO: broken at position {failure['position']} ({failure['reason']})",
        ],
        [
            "Entries in the period",
            "none"
            if period is None
            else f"{period['entries']} (positions {period['first_position']} to "
            f"{period['last_position']}), "
            + (
                "verified"
                if period["ok"]
                else f"NOT verified at position {period['first_failure']['position']}"
                f" ({period['first_failure']['reason']})"
            ),
        ],
    ]
    table = Table(
        [[_p(a, _HEAD), _p(b, _CELL)] for a, b in rows],
        colWidths=[45 * mm, 210 * mm],
        hAlign="LEFT",
    )
    table.setStyle(
        TableStyle([("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#bbbbbb"))])
    )
    return [table]


def _inventory(r: dict[str, Any], drawings: dict[str, Any]) -> list[Flowable]:
    states = "; ".join(f"{n} {state}" for state, n in sorted(r["key_states"].items()))
    rows = [
        [
            k["name"],
            k["state"],
            k["algorithm"],
            f"v{k['primary_version']}",
            k["versions_count"],
            k["created_at"],
            k["last_rotated_at"],
            duration(k["rotation_period_seconds"]),
            STATUS_LABELS[k["rotation"]["status"]],
            k["uses"],
        ]
        for k in r["keys"]
    ]
    story: list[Flowable] = [
        _p("Key inventory", _H2),
        _p(f"{len(r['keys'])} keys; {states}." if states else "No keys."),
        drawings["version_states"],
        _table(
            [
                "Key",
                "State",
                "Algorithm",
                "Primary",
                "Versions",
                "Created",
                "Last rotation",
                "Rotation period",
                "Rotation",
                "Uses",
            ],
            rows,
        ),
    ]
    if r["compromises"]:
        story += [
            _p("Versions marked compromised in the period", _H3),
            _table(
                [
                    "Position",
                    "Recorded",
                    "Key",
                    "Version",
                    "Reason",
                    "By",
                    "Entry hash",
                ],
                [
                    [
                        c["position"],
                        c["recorded_at"],
                        c["key"],
                        c["version"],
                        c["reason"],
                        c["actor"],
                        c["hash"],
                    ]
                    for c in r["compromises"]
                ],
            ),
        ]
    return story


def _rotations(r: dict[str, Any], drawings: dict[str, Any]) -> list[Flowable]:
    pending = sorted(
        (k for k in r["keys"] if k["rotation"]["status"] in ("overdue", "due")),
        key=lambda k: k["rotation"]["due_at"],
    )
    body: Flowable = (
        _table(
            ["Key", "Status", "Due at", "Last rotation", "Period"],
            [
                [
                    k["name"],
                    STATUS_LABELS[k["rotation"]["status"]],
                    k["rotation"]["due_at"],
                    k["last_rotated_at"],
                    duration(k["rotation_period_seconds"]),
                ]
                for k in pending
            ],
        )
        if pending
        else _p("No key is due or overdue for rotation at the end of the period.")
    )
    return [
        KeepTogether([_p("Rotations due and overdue", _H2), drawings["rotations"]]),
        body,
    ]


def _backups(r: dict[str, Any], drawings: dict[str, Any]) -> list[Flowable]:
    rows = [
        [
            b["key"],
            b["status"],
            b["last_backup_at"] or "never",
            ", ".join(
                f"{loc}: {n}" for loc, n in sorted(b["copies_by_location"].items())
            )
            or "none",
            b["last_successful_verification_at"] or "never",
        ]
        for b in r["backups"]["keys"]
    ]
    return [
        KeepTogether(
            [_p("Backup coverage by location", _H2), drawings["backup_coverage"]]
        ),
        _table(
            [
                "Key",
                "Status",
                "Last backup",
                "Whole copies by location",
                "Last successful verification",
            ],
            rows,
        ),
    ]


def _verification(r: dict[str, Any]) -> list[Flowable]:
    ledger = r["ledger"]
    failure = ledger["verification"]["first_failure"]
    checks = r["backup_verifications"]
    failed = sum(1 for v in checks if not v["ok"])
    story: list[Flowable] = [
        _p("Verification results", _H2),
        _p(
            "Ledger: "
            + (
                "verified"
                if ledger["verified"]
                else f"broken at position {failure['position']} ({failure['reason']})"
            )
            + f". Backup verifications in the period: {len(checks)}, {failed} failed."
        ),
    ]
    if checks:
        story.append(
            _table(
                ["Position", "Recorded", "Key", "Backup", "Result", "Copies", "By"],
                [
                    [
                        v["position"],
                        v["recorded_at"],
                        v["key"],
                        v["backup_id"],
                        "ok" if v["ok"] else "FAILED",
                        ", ".join(
                            f"{c['target']}"
                            + (f" ({c['location']})" if c["location"] else "")
                            + f": {c['code']}"
                            for c in v["results"]
                        ),
                        v["actor"],
                    ]
                    for v in checks
                ],
            )
        )
    return story


def _destructions(r: dict[str, Any]) -> list[Flowable]:
    destroyed = ", ".join(
        f"{d['key_name']} v{d['version']} ({d['destroyed_at'] or 'trimmed'})"
        for d in r["destroyed_versions"]
    )
    story: list[Flowable] = [
        _p("Destroyed versions and their evidence", _H2),
        _p(f"Versions destroyed now: {destroyed or 'none'}."),
    ]
    if r["destructions"]:
        story.append(
            _table(
                [
                    "Position",
                    "Recorded",
                    "Event",
                    "Key",
                    "Versions",
                    "By",
                    "Entry hash",
                    "Signed by",
                ],
                [
                    [
                        d["position"],
                        d["recorded_at"],
                        d["event"],
                        d["key"],
                        ", ".join(str(v) for v in d["versions"]),
                        d["actor"],
                        d["hash"],
                        d["kid"],
                    ]
                    for d in r["destructions"]
                ],
            )
        )
    else:
        story.append(_p("No destruction was scheduled or carried out in the period."))
    return story


def _refusals(r: dict[str, Any], drawings: dict[str, Any]) -> list[Flowable]:
    refusals = r["refusals"]
    codes = "".join(f"; {n} {code}" for code, n in sorted(refusals["by_code"].items()))
    story: list[Flowable] = [
        KeepTogether(
            [
                _p("Access refusals", _H2),
                _p(f"{refusals['total']} refused requests in the period{codes}."),
                drawings["refusals"],
            ]
        )
    ]
    if refusals["entries"]:
        story.append(
            _table(
                [
                    "Position",
                    "Recorded",
                    "Count",
                    "Status",
                    "Code",
                    "Route",
                    "Key",
                    "Principal",
                    "Client",
                    "User agent",
                ],
                [
                    [
                        f["position"],
                        f["recorded_at"],
                        f"{f['count']}" + (" (repeats)" if f["repeats"] else ""),
                        f["status"],
                        f["code"],
                        f"{f['method']} {f['route']}",
                        f["key"] or "",
                        f["principal"] or "(none)",
                        f["client"] or "",
                        f["user_agent"] or "",
                    ]
                    for f in refusals["entries"]
                ],
            )
        )
    if refusals["omitted"]:
        story.append(
            _p(
                f"{refusals['omitted']} more refusal entries are not listed; "
                "export the period to see them all."
            )
        )
    return story


def _dual_control(r: dict[str, Any]) -> list[Flowable]:
    story: list[Flowable] = [_p("Dual-control decisions", _H2)]
    if not r["dual_control"]:
        story.append(_p("No dual-control request, approval or expiry in the period."))
        return story
    story.append(
        _table(
            [
                "Position",
                "Recorded",
                "Event",
                "Key",
                "Action",
                "Requested by",
                "Approved by",
                "Recorded by",
                "Detail",
            ],
            [
                [
                    d["position"],
                    d["recorded_at"],
                    d["event"],
                    d["key"] or "",
                    d["action"] or ", ".join(d["actions"] or []),
                    d["requester"] or "",
                    d["approver"] or "",
                    d["actor"],
                    d["code"] or "",
                ]
                for d in r["dual_control"]
            ],
        )
    )
    return story
