"""The report's building blocks: visible escapes, rotation status, chart labels."""

from __future__ import annotations

from datetime import timedelta

import pytest

from domain.clock import format_time
from reports.charts import _bars, svg
from reports.compliance import rotation_status
from reports.fonts import printable
from reports.text import visible
from tests.conftest import T0

DAY = 86400


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("plain é ü", "plain é ü", id="latin kept"),
        pytest.param("a\u202eb", "a\\u202eb", id="rtl override"),
        pytest.param("a\u2066b\u2069", "a\\u2066b\\u2069", id="bidi isolates"),
        pytest.param("a\x1b[31m\x07", "a\\x1b[31m\\x07", id="controls"),
        pytest.param("tab\tline\n", "tab\\x09line\\x0a", id="tab and newline"),
        pytest.param("zero\u200bwidth", "zero\\u200bwidth", id="zero width"),
        pytest.param("a\x85b", "a\\x85b", id="C1 control"),
    ],
)
def test_hidden_characters_are_shown_as_escapes(text: str, shown: str) -> None:
    """Control, bidi and zero-width characters become visible escapes."""
    assert visible(text) == shown


def test_printable_escapes_what_the_font_cannot_draw() -> None:
    """Emoji and CJK are not in the PDF's font, so they are escaped there."""
    assert printable("ok 😀 漢 é") == "ok \\U0001f600 \\u6f22 é"
    assert visible("ok 😀 漢") == "ok 😀 漢"


@pytest.mark.parametrize(
    ("age_days", "period_days", "status"),
    [
        pytest.param(31, 30, "overdue", id="past its period"),
        pytest.param(30, 30, "overdue", id="exactly at its period"),
        pytest.param(80, 90, "due", id="inside the notice window"),
        pytest.param(60, 90, "ok", id="before the notice window"),
        pytest.param(371, 400, "due", id="29 days before: inside a 30 day window"),
        pytest.param(369, 400, "ok", id="31 days before: the window is at most 30"),
    ],
)
def test_rotation_status_against_the_period_end(
    age_days: int, period_days: int, status: str
) -> None:
    """Due at = last rotation + period; overdue at the end, due within notice."""
    rotated = format_time(T0 - timedelta(days=age_days))

    found = rotation_status(period_days * DAY, rotated, T0)

    assert found["status"] == status
    assert found["due_at"] == format_time(
        T0 - timedelta(days=age_days) + timedelta(days=period_days)
    )


def test_rotation_status_without_a_period() -> None:
    """A key without a rotation period is never due."""
    assert rotation_status(None, format_time(T0), T0) == {
        "status": "no_period",
        "due_at": None,
    }


def test_chart_labels_cannot_inject_markup_into_the_svg() -> None:
    """A location named like markup is text in the SVG, with bidi shown escaped."""
    drawing = _bars("t", {"<script>alert(1)</script>": 2, "a\u202eb": 1})

    shown = svg(drawing)

    assert shown.startswith("<svg") and "<script>" not in shown
    assert "&lt;script&gt;" in shown and "a\\u202eb" in shown
