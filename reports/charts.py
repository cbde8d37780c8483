"""The report's charts, defined once as reportlab drawings.

The PDF embeds a drawing as it is; the HTML embeds the same drawing rendered
as inline SVG (``svg``), so both formats show the same chart. Labels pass
through ``reports.fonts.printable`` so they never hold what the font lacks.
"""

from __future__ import annotations

from typing import Any

from reportlab.graphics import renderSVG
from reportlab.graphics.charts.barcharts import HorizontalBarChart, VerticalBarChart
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors

from reports.fonts import FONT, FONT_BOLD, printable

WIDTH, HEIGHT = 460, 180
MAX_BARS = 40
_BAR = colors.HexColor("#3b6ea5")
_STATUS_COLOURS = {
    "overdue": colors.HexColor("#b3261e"),
    "due": colors.HexColor("#e0a100"),
    "ok": colors.HexColor("#2e7d32"),
    "no_period": colors.HexColor("#9e9e9e"),
}


def charts(report: dict[str, Any]) -> dict[str, Drawing]:
    """Every chart of ``report``, by name, in the order the report shows them."""
    rotations = report["rotation_counts"]
    backups = report["backups"]
    coverage = dict(backups["keys_by_location"])
    coverage["(no copy)"] = backups["keys_without_copies"]
    refusals = report["refusals"]["by_day"]
    return {
        "rotations": _bars(
            "Keys by rotation status",
            {status: rotations.get(status, 0) for status in _STATUS_COLOURS},
            colours=list(_STATUS_COLOURS.values()),
        ),
        "version_states": _bars(
            "Key versions by state", report["version_states"], horizontal=True
        ),
        "backup_coverage": _bars(
            "Keys with a whole copy, by backup location", coverage, horizontal=True
        ),
        "refusals": _bars("Refused requests per day", refusals, small_labels=True),
    }


def svg(drawing: Drawing) -> str:
    """The drawing as an inline ``<svg>`` element (no XML prolog or doctype)."""
    text: str = renderSVG.drawToString(drawing)
    # A browser knows the PDF's font by no name: let it pick its own sans-serif.
    text = text.replace(
        f"font-family: {FONT_BOLD};", "font-family: sans-serif; font-weight: bold;"
    ).replace(f"font-family: {FONT};", "font-family: sans-serif;")
    return text[text.index("<svg") :]


def _bars(
    title: str,
    values: dict[str, int],
    *,
    horizontal: bool = False,
    colours: list[Any] | None = None,
    small_labels: bool = False,
) -> Drawing:
    items = list(values.items())
    if len(items) > MAX_BARS:
        # Keep the chart readable: the last bars are the latest days.
        items = items[-MAX_BARS:]
        title += f" (last {MAX_BARS})"
    if not items or not any(value for _, value in items):
        empty = Drawing(WIDTH, 34)
        empty.add(String(0, 20, printable(title), fontName=FONT_BOLD))
        empty.add(String(0, 4, "nothing to show", fontName=FONT))
        return empty
    drawing = Drawing(WIDTH, HEIGHT)
    drawing.add(String(0, HEIGHT - 14, printable(title), fontName=FONT_BOLD))
    chart = HorizontalBarChart() if horizontal else VerticalBarChart()
    chart.x, chart.y = (150, 20) if horizontal else (40, 45)
    chart.width = WIDTH - chart.x - 10
    chart.height = HEIGHT - chart.y - 30
    chart.data = [[value for _, value in items]]
    chart.bars[0].fillColor = _BAR
    for index, colour in enumerate(colours or []):
        chart.bars[(0, index)].fillColor = colour
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontName = FONT
    chart.valueAxis.labelTextFormat = "%d"
    chart.valueAxis.valueStep = max(1, -(-max(v for _, v in items) // 5))
    labels = chart.categoryAxis.labels
    labels.fontName = FONT
    labels.fontSize = 6 if small_labels else 8
    if not horizontal and small_labels:
        labels.angle, labels.boxAnchor = 45, "ne"
    chart.categoryAxis.categoryNames = [printable(_short(name)) for name, _ in items]
    drawing.add(chart)
    return drawing


def _short(label: str, limit: int = 24) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
