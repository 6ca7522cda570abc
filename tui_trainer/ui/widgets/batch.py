"""The effective batch, the noise scale's suggestion, and an accumulation change waiting for the next epoch."""

from __future__ import annotations

from rich.text import Text

from tui_trainer.analysis.noise_scale import (
    SETTLE_ESTIMATES,
    actionable,
    estimating_windows,
    noise_error_words,
    noise_scale_words,
)
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.base import Panel


def memory_words(peak: int, budget: int) -> str | None:
    """`1.3 / 6.0 GB`, or None when there is no budget or no step measured yet."""
    if not budget or not peak:
        return None
    return f"{peak / 1e9:,.1f} / {budget / 1e9:,.1f} GB"


class BatchPanel(Panel):
    """`effective batch 128 = micro-batch 16 x accum 8 (x 1 process) = 16,384 tokens per step`,
    then `accum 8 -> 16 at next epoch` while a change is pending and `noise scale ~ 310 seq ->
    suggests accum 16` once the estimate has settled (on one line when both fit)."""

    AUTO_HEIGHT = True
    COMPONENT_CLASSES = {"batch--value", "batch--dim", "batch--pending"}

    DEFAULT_CSS = """
    BatchPanel { height: auto; }
    """

    def key(self, view: RunView, now: float):
        return (view.micro_batch, view.accum, view.processes, view.block_size, view.pending_accum,
                view.requested_accum, view.epoch, view.epochs, view.ended, view.noise_scale_on,
                # as shown (2 significant figures): the estimate moves every step, the text rarely,
                # and each new key costs this panel a re-layout
                None if view.noise_scale is None else noise_scale_words(view.noise_scale),
                view.suggested_accum, noise_error_words(view.noise_scale_error), view.pending_auto, view.started,
                view.data_progress, memory_words(view.peak_memory, view.memory_budget))

    def _room(self) -> int:
        return self.size.width - self.styles.gutter.width if self.size.width else 10_000

    def build(self, view: RunView, now: float) -> Text:
        value = self.get_component_rich_style("batch--value")
        dim = self.get_component_rich_style("batch--dim")
        text = Text(end="")
        if not view.started:
            text.append(view.data_progress or "loading torch, reading the data, building the model…", dim)
            return text
        mb, accum, eff, tokens = (str(view.micro_batch), str(view.accum), f"{view.effective_batch:,}",
                                  f"{view.tokens_per_step:,}")
        # One process keeps its old aside, "(x 1 process)"; several are a factor like the others.
        processes = (" (x 1 process)" if view.processes == 1 else f" x {view.processes} processes")
        # (text, is a number) pieces: the long form if it fits, then shorter ones; "effective batch"
        # stays in every form (it is the word the help and the seed use).
        product = [("effective batch ", 0), (eff, 1), (" = micro-batch ", 0), (mb, 1), (" x accum ", 0),
                   (accum, 1), (processes, 0)]
        two_lines = [("effective batch ", 0), (eff, 1), (" = ", 0), (tokens, 1), (" tokens per step", 0),
                     ("\n= micro-batch ", 0), (mb, 1), (" x accum ", 0), (accum, 1), (processes, 0)]
        short = [("effective batch ", 0), (eff, 1), (" = ", 0), (mb, 1), (" x ", 0), (accum, 1),
                 (" (x1)" if view.processes == 1 else f" x {view.processes}", 0)]
        forms = [product + [(" = ", 0), (tokens, 1), (" tokens per step", 0)],
                 product + [(" = ", 0), (tokens, 1), (" tokens/step", 0)], product]
        if self.app.size.height >= 30:  # rows are dear on a short terminal
            forms.append(two_lines)
        room = self._room()
        if view.window_cut:  # an epoch shorter than one window: say what a step really holds
            forms = self._cut_forms(view, eff, accum, tokens)
            short = forms[-1]
        target = view.target_accum
        if self.screen.has_class("-tiny") and target != view.accum and not view.ended:
            # A short terminal: the pending change joins the batch on its one line, so the plot keeps its rows.
            line = f"effective batch {eff} = {mb} x {accum} · accum {accum} -> {target} at next epoch"
            if len(line) > room:
                line = f"batch {eff} = {mb}x{accum} · accum {accum} -> {target} at next epoch"
            text.append(line, self.get_component_rich_style("batch--pending"))
            return text
        pieces = next((form for form in forms
                       if max(len(line) for line in "".join(p for p, _ in form).split("\n")) <= room), short)
        for piece, is_number in pieces:
            text.append(piece, value if is_number else dim)
        self._second_line(view, text, dim, value)
        self._memory_line(view, text, dim, value)
        return text

    def _cut_forms(self, view: RunView, eff: str, accum: str, tokens: str) -> list:
        """`effective batch 16 = the whole epoch: 1 micro-batch, fewer than accum 8`: each step holds the
        epoch's sequences (the engine's run-line note), not micro-batch x accum."""
        n = view.micro_batches_per_step
        count = [(str(n), 1), (" micro-batch" if n == 1 else " micro-batches", 0)]
        whole = [("effective batch ", 0), (eff, 1), (" = the whole epoch: ", 0), *count, (", fewer than accum ", 0),
                 (accum, 1)]
        two_lines = [("effective batch ", 0), (eff, 1), (" = whole epoch", 0), ("\n", 0), *count,
                     (", under accum ", 0), (accum, 1)]
        return [whole + [(" = ", 0), (tokens, 1), (" tokens per step", 0)], whole,
                *([two_lines] if self.app.size.height >= 30 else []),
                [("effective batch ", 0), (eff, 1), (" = 1 epoch (", 0), (str(n), 1), (" of accum ", 0),
                 (accum, 1), (")", 0)],
                [("effective batch ", 0), (eff, 1), (" = 1 epoch", 0)]]

    def _memory_line(self, view: RunView, text: Text, dim, value) -> None:
        """`memory 1.3 / 6.0 GB ▮▮▮▯▯▯▯▯▯▯`: the last step's measured peak against the budget
        --micro-batch auto fitted into (no budget, no line: the split was given by hand)."""
        words = memory_words(view.peak_memory, view.memory_budget)
        if words is None:
            return
        text.append("\nmemory ", dim)
        text.append(words, value)
        cells = min(10, self._room() - len(words) - 8)
        if cells >= 4:
            share = min(1.0, view.peak_memory / view.memory_budget)
            filled = round(share * cells)
            text.append(" " + "▮" * filled, value)
            text.append("▯" * (cells - filled), dim)

    def _second_line(self, view: RunView, text: Text, dim, value) -> None:
        """The pending change and the noise scale: on one line when they fit (rows are dear at 24),
        shortened if need be; on two lines when even the short forms do not fit."""
        pending_forms, noise_forms = self._pending(view) or [[]], self._noise(view) or [[]]
        if not pending_forms[0] and not noise_forms[0]:
            return
        styles = {"pending": self.get_component_rich_style("batch--pending"), "dim": dim, "value": value}
        room = self._room()

        def width(pieces: list) -> int:
            return sum(len(t) for t, _ in pieces)

        combos = [(p, n) for n in noise_forms for p in pending_forms]
        fitting = [(p, n) for p, n in combos if width(p) + width(n) + (3 if p and n else 0) <= room]
        if fitting:
            lines = [[part for part in fitting[0] if part]]
        else:  # two lines, each as long as fits (cropped text would say less than a row costs)
            lines = [[next((f for f in forms if width(f) <= room), forms[-1])]
                     for forms in (pending_forms, noise_forms) if forms[0]]
        for line in lines:
            text.append("\n")
            for i, part in enumerate(line):
                if i:
                    text.append(" · ", dim)
                for piece, style in part:
                    text.append(piece, styles[style])

    def _pending(self, view: RunView) -> list:
        """The long form, then the short one, each a list of (text, style); [] when nothing is pending."""
        target = view.target_accum
        if target == view.accum or view.ended:
            return []
        who = " (auto)" if view.pending_auto and view.requested_accum is None else ""
        short = [(f"accum {view.accum} -> {target} at next epoch{who}", "pending")]
        effective = view.step_holds(target)
        long = short + [(f" (= {effective:,} sequences)", "dim")]
        if view.requested_accum is None and view.epoch >= view.epochs:
            long = long + [(" · this is the last epoch", "dim")]
            short = short + [(" · last epoch", "dim")]
        return [long, short]

    @staticmethod
    def _unsettled(view: RunView) -> str:
        """Why there is no figure yet: measuring, or — where that never ends — why not."""
        if view.accum < 2:
            return "noise scale: needs accum 2 or more"
        # (one process: several give each window a part per process, so the sizes below say less)
        per_epoch = estimating_windows(view.train_examples, view.micro_batch, view.accum)
        if view.processes == 1 and view.train_examples and per_epoch == 0:
            return "noise scale: needs 2+ micro-batches a step (an epoch has 1)"
        whole_run = per_epoch * view.epochs  # (a budget's epochs follow its plan: no bound from them)
        if view.processes == 1 and view.time_budget is None and per_epoch and whole_run < SETTLE_ESTIMATES:
            return f"noise scale: needs {SETTLE_ESTIMATES} steps of 2+ micro-batches; this run has {whole_run}"
        if view.ended:
            return "noise scale: not settled when the run ended"
        return "noise scale: measuring…"

    def _noise(self, view: RunView) -> list:
        if not view.noise_scale_on:
            return []
        if view.noise_scale is None or view.suggested_accum is None:
            words = self._unsettled(view)
            return [[(words, "dim")], [(words.replace(" scale", ""), "dim")]]
        scale = noise_scale_words(view.noise_scale)
        error = noise_error_words(view.noise_scale_error)
        if view.noise_scale_error is not None and not actionable(view.noise_scale_error):
            # Not known well enough to act on: no suggestion yet. (It also grows as the loss falls, so
            # an early figure is small by nature, not a reason to stop accumulating.)
            if view.ended:  # a final figure: nothing is settling any more
                return [[("noise scale ~ ", "dim"), (scale, "value"), (f" seq{error} at the end", "dim")],
                        [("noise ~ ", "dim"), (scale, "value"), (f"{error} at the end", "dim")]]
            return [[("noise scale ~ ", "dim"), (scale, "value"), (f" seq{error}: settling (grows as loss falls)", "dim")],
                    [("noise ~ ", "dim"), (scale, "value"), (f"{error} settling", "dim")]]
        return [[("noise scale ~ ", "dim"), (scale, "value"), (f" seq{error} -> suggests accum ", "dim"),
                 (str(view.suggested_accum), "value")],
                # (the short form keeps the ± figure, in place of "seq": a wider screen, whose batch panel
                # beside the plot is narrower than at 80x24, must never show less)
                [("noise ~ ", "dim"), (scale, "value"), (f"{error or ' seq'} -> accum ", "dim"),
                 (str(view.suggested_accum), "value")]]
