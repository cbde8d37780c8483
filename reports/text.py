"""Showing untrusted text safely: control and bidi characters made visible.

Actor names, reasons and user agents are chosen by callers. A right-to-left
override would reorder the rest of a line, a control character could break a
PDF line or a terminal; so every such character is shown as its escape
(``\\u202e``) instead, and so is any character the report's font cannot draw.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

# Categories never shown as themselves: controls, format (bidi, zero-width),
# surrogates, private use, unassigned, line and paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def escape_char(char: str) -> str:
    """The visible escape of one character: ``\\x1b``, ``\\u202e``, ``\\U0001f600``."""
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str, drawable: Callable[[str], bool] | None = None) -> str:
    """``text`` with hidden characters, and those ``drawable`` refuses, escaped.

    A backslash is left as it is: the escapes are for reading, not for parsing
    back, and the signed entry keeps the exact text.
    """
    out = []
    for char in text:
        if unicodedata.category(char) in _HIDDEN or (
            drawable is not None and not drawable(char)
        ):
            out.append(escape_char(char))
        else:
            out.append(char)
    return "".join(out)
