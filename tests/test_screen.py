"""tests/screen.py: the screen's text read back from Textual's own screenshot, cell for cell."""

from __future__ import annotations

from screen import screen_text
from textual.app import App, ComposeResult
from textual.widgets import Static


class Board(App[None]):
    CSS = "Screen { background: black; } #b { margin-left: 3; }"

    def compose(self) -> ComposeResult:
        yield Static("a <b> & 'c'", id="a", markup=False)
        yield Static("字x  y\u00a0z", id="b")  # a wide character, two spaces, a no-break space


async def test_screen_text_puts_every_run_of_text_in_its_row_and_column():
    app = Board()
    async with app.run_test(size=(20, 4)) as pilot:
        await pilot.pause()
        rows = screen_text(app).split("\n")
    assert rows == ["a <b> & 'c'" + " " * 9,
                    "   字x  y\u00a0z" + " " * 9,  # 字 is two cells wide: 20 cells in 19 characters
                    " " * 20, " " * 20]
