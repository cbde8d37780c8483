"""Human-readable reports built from the ledger: the compliance report.

A package of its own rather than a module of ``ledger/``: a report is a
collector (``reports.compliance``, plain data from the ledger and its read
side), chart definitions shared by two renderers (``reports.charts``), an HTML
renderer with its template (``reports.html``) and a PDF renderer with its font
(``reports.pdf``). The renderers need Jinja2 and reportlab, which nothing in
the ledger core imports.
"""

from __future__ import annotations

from typing import Any, Literal

Format = Literal["html", "pdf"]
MEDIA_TYPES: dict[str, str] = {
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}


def render(report: dict[str, Any], format: str) -> bytes:
    """The collected ``report`` in ``format``: ``html`` or ``pdf``."""
    if format == "pdf":
        from reports.pdf import render_pdf

        return render_pdf(report)
    if format == "html":
        from reports.html import render_html

        return render_html(report)
    raise ValueError(f"A report format is html or pdf, not {format!r}.")


def covered(report: dict[str, Any]) -> dict[str, Any]:
    """What an export record says a report covered: entries and their positions."""
    period = report["ledger"]["period"]
    return {
        "counts": {"entries": period["entries"] if period else 0},
        "covered": {
            "first_position": period["first_position"],
            "last_position": period["last_position"],
        }
        if period
        else None,
    }
