"""Text a model wrote, made safe to show on a terminal: ``escaped_controls(text)``.

A byte-level BPE can write any code point: ESC, C1 controls (U+009B is CSI to some terminals), bidi
overrides, unassigned ones. Shown raw they can drive the terminal or break a layout's widths (a
cold trial saw a sample panel's border doubled), so they are shown escaped (``\\x9e``, ``\\u202e``),
as the headless log does; newlines and tabs stay. Used by ``tui-trainer sample`` on a terminal and
by the app's sample panel. No dependencies.
"""

from __future__ import annotations

import unicodedata


def escaped_controls(text: str) -> str:
    """``text`` with every control, format, unassigned, private-use or surrogate code point (Unicode
    category C*) but newline, tab and U+FFFD written as its Python escape."""
    return "".join(c if c in "\n\t\ufffd" or not unicodedata.category(c).startswith("C") else repr(c)[1:-1]
                   for c in text)
