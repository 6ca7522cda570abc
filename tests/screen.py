"""What a Textual app's screen shows, as plain text: for tests that read the screen as a user would.

Read from outside, through Textual's own API: ``App.export_screenshot()`` draws the screen as an
SVG in which each run of text is a ``<text>`` element clipped to its terminal line and placed at
its column (x = column x cell width). Those runs are put back on a grid of cells, a line per
terminal row padded to the screen's width, as the terminal shows them.
"""

from __future__ import annotations

import html
import re

from rich.cells import cell_len
from textual.app import App

# One run of text in the SVG: its x, its text length in pixels, the line it is clipped to, its text.
_RUN = re.compile(r'<text class="[^"]*" x="([^"]+)" y="[^"]+" textLength="([^"]+)" '
                  r'clip-path="url\(#[^)"]*-line-(\d+)\)">(.*?)</text>', re.DOTALL)


def screen_text(app: App) -> str:
    """The screen now, one line per terminal row, each as wide as the screen."""
    width, height = app.size
    runs = []
    for x, length, line, escaped in _RUN.findall(app.export_screenshot()):
        # Spaces were written as &#160; (a real no-break space stays itself), the rest HTML-escaped.
        text = html.unescape(escaped.replace("&#160;", " ")).replace("\n", "")  # (each row's end is a run too)
        runs.append((int(line), float(x), float(length), text))
    rows: list[list[tuple[int, str]]] = [[] for _ in range(height)]
    cell = next((length / len(text) for _, _, length, text in runs if text), 1.0)  # pixels per cell
    for line, x, _, text in runs:
        if line < height:
            rows[line].append((round(x / cell), text))
    lines = []
    for row in rows:
        shown = ""
        for column, text in sorted(row):
            shown += " " * max(0, column - cell_len(shown)) + text
        lines.append(shown + " " * max(0, width - cell_len(shown)))
    return "\n".join(lines)
