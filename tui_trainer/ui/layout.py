"""The main screen's layout: its panels, and the size classes app.tcss lays them out by.

``compose_panels`` is the widget tree (``TrainerApp.compose`` yields it); ``apply_size_classes``
sets the screen's classes for the terminal's size (app.tcss reads them) and the two things CSS
cannot say: the plot's x-axis label and the footer's palette hint.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Container, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from tui_trainer.ui.widgets import (
    BatchPanel,
    DiagnosisBanner,
    EpochTable,
    ErrorPanel,
    LossPlot,
    ProgressPanel,
    StatsPanel,
    StatusBar,
)
from tui_trainer.ui.widgets.samples import SamplePanel

WIDE_COLUMNS = 120  # from here on the panels move to a column right of the plot
TALL_ROWS = 40  # from here on (or when wide) the epoch table is shown
COMPACT_ROWS = 26  # below this the progress and stats panels lose their borders
TINY_ROWS = 22  # below this the plot keeps only its top border (the legend), the stats one line
AXIS_LABEL_ROWS = 16  # below this the plot loses its x-axis label
NARROW_COLUMNS = 70  # below this the panels stack in one column

BORDER_TITLES = (("#progress", "progress"), ("#stats", "stats"), ("#epochs", "epochs"), ("#samples", "sample"))


def compose_panels() -> ComposeResult:
    yield StatusBar(id="status")
    with Container(id="body"):
        with Vertical(id="side"):
            yield ProgressPanel(id="progress", classes="panel")
            yield StatsPanel(id="stats", classes="panel")
            yield BatchPanel(id="batch")
            yield EpochTable(id="epochs", classes="panel")
            yield SamplePanel(id="samples", classes="panel")
        with Vertical(id="main"):
            yield LossPlot(id="plot", classes="panel")
            yield ErrorPanel(id="error")
            yield DiagnosisBanner(id="diagnosis")
    yield Footer()


def apply_size_classes(screen: Screen, width: int, height: int, footer_columns: tuple[int, int] = (
        NARROW_COLUMNS, NARROW_COLUMNS)) -> None:
    """``footer_columns``: (from this width the footer's keys keep their full spacing, from this one
    it ends in the `^p palette` hint) — an app with more keys (a live viewer's) needs more room for both."""
    full_footer, palette_hint_columns = footer_columns
    screen.set_class(width >= WIDE_COLUMNS, "-wide")
    screen.set_class(height >= TALL_ROWS, "-tall")
    screen.set_class(height < COMPACT_ROWS, "-compact")
    screen.set_class(height < TINY_ROWS, "-tiny")
    screen.set_class(width < NARROW_COLUMNS, "-narrow")
    screen.query_one(LossPlot).show_axis_label = height >= AXIS_LABEL_ROWS
    footer = screen.query_one(Footer)
    footer.compact = width < full_footer  # (less space between the keys: the trainer's every key still fits at 60)
    palette_hint = width >= palette_hint_columns  # ctrl+p still works; help lists it
    if footer.show_command_palette != palette_hint:
        footer.show_command_palette = palette_hint
        footer.refresh(recompose=True)  # (the footer reads it only when it composes)
