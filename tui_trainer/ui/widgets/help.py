"""The `?` screen: the keys, what gradient accumulation and the effective batch are, what each verdict means."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.geometry import Size
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Static

from tui_trainer.ui.commands import HelpKey

VERDICT_WIDTH = 12  # "underfitting"
MIN_TEXT_WIDTH = 8  # narrower than this, the words go under their label instead of beside it

ACCUMULATION = (
    "Each micro-batch (what fits in memory) adds its gradient to the ones before; after accum "
    "micro-batches the optimizer takes one step, exactly as if it had seen one big batch: "
    "effective batch = micro-batch x accum x processes sequences. Bigger means steadier steps "
    "(and fewer per epoch) for the same memory. A change applies at the next epoch boundary."
)

NOISE_SCALE = (
    "The noise scale (McCandlish et al., 2018) is the batch at which a step's gradient noise is as "
    "big as its signal, measured from each micro-batch's gradient and the window's. A batch much "
    "bigger wastes compute: more sequences barely improve a step. Much smaller wastes steps: each "
    "is mostly noise, so more are needed. It grows as the loss falls (early figures are small by "
    "nature), and ± is its own standard error: a suggestion shows only once that is within a third. "
    "The suggestion is the power-of-two accum whose effective batch is nearest; --auto-accum makes "
    "it the pending change each epoch (+/- overrides it)."
)

MEMORY = (
    "More memory -> larger micro-batches (faster); less memory -> more accumulation (the same quality, "
    "slower): exact accumulation makes 16 x 4 and 8 x 8 the same step. --batch N says the batch and "
    "--micro-batch auto measures which micro-batches fit --memory-budget and takes the largest, or on a "
    "CPU the smallest as fast within 5% (the run line says which fits and which was taken; the batch "
    "panel shows the last step's peak against it); an out-of-memory mid-run halves the micro-batch, doubles "
    "accum and redoes the window. --checkpoint-activations trades time for memory: the same losses."
)

# (verdict, theme colour, lines of meaning and remedy) — the colours of the diagnosis banner.
DIAGNOSES = [
    ("learning", "$secondary", ["the loss still falls, however high: keep training"]),
    ("healthy", "$success", ["both losses fall: keep training"]),
    ("converged", "$accent", ["flat, the lr in its tail: more data, a larger model, or stop"]),
    ("underfitting", "$primary-lighten-2", ["high and flat for epochs: a bigger model, more epochs;",
                                            "the lr only if flat from the start at its peak"]),
    ("overfitting", "$warning", ["val rises as train falls, or sits far above it: more data,",
                                   "dropout, weight decay; early stopping keeps the best weights"]),
    ("unstable", "$error", ["NaN/inf or loss spikes: lower the lr, check the clipping"]),
]


class HangingRows(Widget):
    """Labelled rows laid out for the width they get: a label, then its words, which wrap under
    themselves (a hanging indent), never back under the label; up to ``max_columns`` rows side by
    side where cells of ``cell_text`` columns fit (the keys: 3 at 80 columns)."""

    DEFAULT_CSS = "HangingRows { height: auto; }"

    def __init__(self, rows: Sequence[tuple[str, str, Sequence[str]]], *, label_width: int,
                 cell_text: int = 0, max_columns: int = 1, classes: str | None = None) -> None:
        """``rows``: (label, the label's style, lines of words); ``label_width`` counts the space after it."""
        super().__init__(classes=classes)
        self.rows, self.label_width = rows, label_width
        self.cell_text, self.max_columns = cell_text, max_columns

    def _lines(self, width: int) -> list[Content]:
        cell = self.label_width + self.cell_text
        columns = max(1, min(self.max_columns, (width + 2) // (cell + 2)))
        text_width = self.cell_text if columns > 1 else width - self.label_width
        cell_width = self.label_width + text_width
        lines: list[Content] = []
        for start in range(0, len(self.rows), columns):
            cells = [self._cell(row, text_width) for row in self.rows[start:start + columns]]
            height = max(map(len, cells))
            for i in range(height):  # side by side, each cell padded to its width
                parts = [cell[i] if i < len(cell) else Content("") for cell in cells]
                lines.append(Content("  ").join(part.pad_right(max(0, cell_width - part.cell_length))
                                                for part in parts).rstrip())
        return lines

    def _cell(self, row: tuple[str, str, Sequence[str]], text_width: int) -> list[Content]:
        label, style, texts = row
        if text_width < MIN_TEXT_WIDTH:  # (a terminal a few dozen columns wide)
            indent = Content("  ")
            width = max(1, text_width + self.label_width - len(indent))
            return [Content.styled(label, style),
                    *(indent + part for text in texts for part in Content(text).wrap(width))]
        wrapped = [part for text in texts for part in Content(text).wrap(text_width)]
        hang = Content(" " * self.label_width)
        return [Content.assemble((label.ljust(self.label_width - 1), style), " ", wrapped[0]),
                *(hang + part for part in wrapped[1:])]

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines(width))

    def render(self) -> Content:
        return Content("\n").join(self._lines(self.size.width))


def key_rows(keys: Sequence[HelpKey]) -> HangingRows:
    return HangingRows([(key.key, "bold $accent", [key.words]) for key in keys],
                       label_width=1 + max(len(key.key) for key in keys),  # "+ ]" and a space
                       cell_text=max(len(key.words) for key in keys), max_columns=3, classes="help-body")


def diagnosis_rows() -> HangingRows:
    return HangingRows([(name, f"bold {colour}", meaning) for name, colour, meaning in DIAGNOSES],
                       label_width=VERDICT_WIDTH + 1, classes="help-body")


class HelpScreen(ModalScreen[None]):
    """``keys``: what the app's keys do now (``CommandTable.help_keys``); ``notes``: the run line's
    notes (RunStarted), which the banner shows only until the first diagnosis."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "close help")]

    # (here, not in app.tcss: the compare view, an app of its own, opens it too)
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help-box {
        width: 100%; max-width: 100; height: auto; max-height: 100%;
        border: round $accent; border-title-color: $accent; background: $surface; padding: 0 1;
    }
    #help-box .help-title { margin-top: 1; }
    #help-box .help-title.-first { margin-top: 0; }
    #help-box .help-body { padding-left: 1; }
    """

    def __init__(self, keys: Sequence[HelpKey], notes: Sequence[str] = ()) -> None:
        super().__init__()
        self.keys = keys
        self.notes = tuple(notes)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = "help"
            box.border_subtitle = "run notes at the end · esc closes" if self.notes else "esc closes"
            yield Static(Content.from_markup("[b]Keys[/b]"), classes="help-title -first")
            yield key_rows(self.keys)
            yield Static(Content.from_markup("[b]Gradient accumulation and the effective batch[/b]"),
                         classes="help-title")
            yield Static(ACCUMULATION, classes="help-body", markup=False)
            yield Static(Content.from_markup("[b]Diagnosis[/b] (after each epoch's validation)"),
                         classes="help-title")
            yield diagnosis_rows()
            # last: at 80x24 the sections above fill the box; this one is a scroll away
            yield Static(Content.from_markup("[b]The noise scale: which accum to use[/b]"), classes="help-title")
            yield Static(NOISE_SCALE, classes="help-body", markup=False)
            yield Static(Content.from_markup("[b]Memory: the micro-batch and the accumulation[/b]"),
                         classes="help-title")
            yield Static(MEMORY, classes="help-body", markup=False)
            if self.notes:  # (last, as the run's own: the sections above fill the box at 80x24 already)
                yield Static(Content.from_markup("[b]Notes on this run[/b] (from its start)"), classes="help-title")
                yield Static("\n".join(f"• {note}" for note in self.notes), classes="help-body", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
