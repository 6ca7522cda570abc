"""The `?` screen: the keys, what gradient accumulation and the effective batch are, what each verdict means."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

# (key, what it does), laid out in as many columns as the terminal's width holds (3 at 80).
KEYS = [
    ("+ ]", "accum x2 next epoch"), ("p", "pause / resume"), ("q", "stop: save, exit"),
    ("- [", "accum /2 next epoch"), ("s", "save checkpoint now"), ("q q", "close at once"),
    ("m", "smooth / raw loss"), ("^p", "command palette"), ("^c", "stop, exit code 130"),
    ("g", "text sample now"), ("?", "this help"), ("esc", "close this help"),
]
WHAT_WIDTH = max(len(what) for _, what in KEYS)
KEY_CELL = 4 + WHAT_WIDTH  # "+ ]" and a space, then the description
# Columns the help box takes from the screen around the key grid: its border (2) and padding (2),
# the body's padding (1), and a vertical scrollbar (2) when the help is taller than the screen.
HELP_CHROME = 7

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
    "is mostly noise, so more are needed. The suggestion is the power-of-two accum whose effective "
    "batch is nearest; --auto-accum makes it the pending change each epoch (+/- overrides it)."
)

# (verdict, theme colour, lines of meaning and remedy) — the colours of the diagnosis banner.
DIAGNOSES = [
    ("learning", "$secondary", ["the loss still falls, however high: keep training"]),
    ("healthy", "$success", ["both losses fall: keep training"]),
    ("underfitting", "$primary-lighten-2", ["high and flat for epochs: a bigger model, more epochs;",
                                            "the lr only if flat from the start at its peak"]),
    ("overfitting", "$warning", ["val rises as train falls, or sits far above it: more data,",
                                   "dropout, weight decay; early stopping keeps the best weights"]),
    ("unstable", "$error", ["NaN/inf or loss spikes: lower the lr, check gradient clipping"]),
]


def _keys(width: int) -> Content:
    columns = max(1, min(3, (width + 2) // (KEY_CELL + 2)))
    lines = []
    for start in range(0, len(KEYS), columns):
        cells = [Content.assemble((key.ljust(3), "bold $accent"), " ", what.ljust(WHAT_WIDTH))
                 for key, what in KEYS[start:start + columns]]
        lines.append(Content("  ").join(cells).rstrip())
    return Content("\n").join(lines)


def _diagnoses() -> Content:
    lines = []
    for name, colour, meaning in DIAGNOSES:
        for i, line in enumerate(meaning):
            lines.append(Content.assemble(((name if i == 0 else "").ljust(13), f"bold {colour}"), line))
    return Content("\n").join(lines)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "close help")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = "help"
            box.border_subtitle = "esc closes"
            yield Static(Content.from_markup("[b]Keys[/b]"), classes="help-title -first")
            yield Static(_keys(min(self.app.size.width, 100) - HELP_CHROME), classes="help-body")
            yield Static(Content.from_markup("[b]Gradient accumulation and the effective batch[/b]"),
                         classes="help-title")
            yield Static(ACCUMULATION, classes="help-body", markup=False)
            yield Static(Content.from_markup("[b]Diagnosis[/b] (after each epoch's validation)"),
                         classes="help-title")
            yield Static(_diagnoses(), classes="help-body")
            # last: at 80x24 the sections above fill the box; this one is a scroll away
            yield Static(Content.from_markup("[b]The noise scale: which accum to use[/b]"), classes="help-title")
            yield Static(NOISE_SCALE, classes="help-body", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
