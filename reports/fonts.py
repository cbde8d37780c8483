"""The report's font: Bitstream Vera, as shipped inside the reportlab package.

No system font is looked for, so a fresh machine renders the same PDF. Text is
passed through ``printable`` first: what Vera cannot draw is shown escaped.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import reportlab
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont

from reports.text import visible

FONT = "KeyledgerVera"
FONT_BOLD = "KeyledgerVera-Bold"
_FILES = {FONT: "Vera.ttf", FONT_BOLD: "VeraBd.ttf"}


@cache
def register() -> frozenset[int]:
    """Register the fonts with reportlab once; the code points they can draw."""
    folder = Path(reportlab.__file__).parent / "fonts"
    drawable: set[int] | None = None
    for name, filename in _FILES.items():
        font = TTFont(name, str(folder / filename))
        pdfmetrics.registerFont(font)
        points = set(font.face.charToGlyph)
        drawable = points if drawable is None else drawable & points
    pdfmetrics.registerFontFamily(FONT, normal=FONT, bold=FONT_BOLD)
    return frozenset(drawable or ())


def printable(text: str) -> str:
    """``text`` as the PDF can show it: hidden and undrawable characters escaped."""
    drawable = register()
    return visible(text, lambda char: ord(char) in drawable)
