"""The `?` screen: the keys, what gradient accumulation and the effective batch are, what each verdict means."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("+  ]", "double gradient accumulation (up to 1024), applied at the next epoch"),
    ("-  [", "halve it (down to 1), applied at the next epoch"),
    ("p", "pause / resume (the engine waits between micro-steps; the screen stays live)"),
    ("s", "save a checkpoint now"),
    ("m", "step loss: smoothed (EMA) or raw"),
    ("q", "stop cleanly: finish the micro-step, save, exit (press again: exit at once)"),
    ("ctrl+p", "command palette: the same actions by name"),
    ("?  esc", "open / close this help"),
]

ACCUMULATION = (
    "The model takes one micro-batch at a time (what fits in memory) and adds up the gradients "
    "of accum micro-batches before each optimizer step, so the step is the step of one big batch: "
    "effective batch = micro-batch x accum x processes sequences. A larger effective batch gives "
    "steadier, less noisy steps (and fewer per epoch) with the same memory. A change waits for the "
    "next epoch boundary, so all the steps of an epoch use one batch size."
)

# (verdict, theme colour, meaning and remedy) — the same colours as the diagnosis banner.
DIAGNOSES = [
    ("healthy", "$success", "train and val loss fall together: keep training"),
    ("underfitting", "$warning",
     "both losses stay high and flat: bigger model, longer training, higher learning rate"),
    ("overfitting", "$secondary",
     "val loss rises while train falls, or sits far above it: more data, dropout, weight decay; "
     "early stopping ends the run and keeps the best weights"),
    ("unstable", "$error", "NaN/inf or loss spikes: lower the learning rate, check gradient clipping"),
]


def _rows(rows: list[tuple[str, str]], width: int, styles: list[str] | None = None) -> Content:
    lines = []
    for i, (name, what) in enumerate(rows):
        style = styles[i] if styles else "bold"
        lines.append(Content.assemble((name.ljust(width), style), "  ", what))
    return Content("\n").join(lines)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "close help")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = "help"
            box.border_subtitle = "esc closes"
            yield Static(Content.from_markup("[b]Keys[/b]"), classes="help-title")
            yield Static(_rows(KEYS, 6), classes="help-body")
            yield Static(Content.from_markup("[b]Gradient accumulation and the effective batch[/b]"),
                         classes="help-title")
            yield Static(ACCUMULATION, classes="help-body", markup=False)
            yield Static(Content.from_markup("[b]Diagnosis[/b] (after each epoch's validation)"),
                         classes="help-title")
            yield Static(_rows([(n, w) for n, _, w in DIAGNOSES], 12, [f"bold {c}" for _, c, _ in DIAGNOSES]),
                         classes="help-body")

    def action_close(self) -> None:
        self.dismiss(None)
