"""The compliance report as one self-contained HTML page.

Jinja2 with autoescape on: every value is escaped, and before that every
string passes through ``reports.text.visible``, so no actor name or reason can
inject markup or reorder a line. Charts are inline SVG of the same drawings
the PDF embeds; the page loads nothing else (its CSP forbids it).
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from reports.charts import charts, svg
from reports.text import visible

STATUS_LABELS = {
    "overdue": "OVERDUE",
    "due": "due soon",
    "ok": "ok",
    "no_period": "no period set",
}
_STATUS_CLASSES = {"overdue": "bad", "due": "due", "ok": "good"}


def duration(seconds: int | None) -> str:
    """A rotation period for people: ``90 days``, ``36 hours``, or ``none``."""
    if seconds is None:
        return "none"
    if seconds % 86400 == 0:
        days = seconds // 86400
        return f"{days} day" if days == 1 else f"{days} days"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hours"
    return f"{seconds} seconds"


def _finalize(value: Any) -> Any:
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return visible(value)


_ENVIRONMENT = Environment(
    loader=PackageLoader("reports", "templates"),
    autoescape=select_autoescape(["html"], default=True),
    undefined=StrictUndefined,
    finalize=_finalize,
)
_ENVIRONMENT.filters["duration"] = duration
_ENVIRONMENT.filters["status_label"] = lambda status: STATUS_LABELS[status]
_ENVIRONMENT.filters["status_class"] = lambda status: _STATUS_CLASSES.get(status, "")


def render_html(report: dict[str, Any]) -> bytes:
    """The report (from ``reports.compliance.collect``) as UTF-8 HTML."""
    drawings = {name: Markup(svg(d)) for name, d in charts(report).items()}
    page = _ENVIRONMENT.get_template("compliance.html").render(
        r=report, charts=drawings
    )
    return page.encode("utf-8")
