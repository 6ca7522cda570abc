"""The effective batch, and an accumulation change waiting for the next epoch."""

from __future__ import annotations

from rich.text import Text

from ..view import RunView
from .base import Panel


class BatchPanel(Panel):
    """`micro-batch 16 x accum 8 (x 1 process) = 128 sequences = 16,384 tokens per step`
    then `accum 8 -> 16 at next epoch` while a change is pending."""

    AUTO_HEIGHT = True
    COMPONENT_CLASSES = {"batch--value", "batch--dim", "batch--pending"}

    DEFAULT_CSS = """
    BatchPanel { height: auto; }
    """

    def key(self, view: RunView, now: float):
        return (view.micro_batch, view.accum, view.processes, view.block_size, view.pending_accum,
                view.requested_accum, view.epoch, view.epochs, view.ended)

    def build(self, view: RunView, now: float) -> Text:
        value = self.get_component_rich_style("batch--value")
        dim = self.get_component_rich_style("batch--dim")
        text = Text(end="")
        if not view.started:
            text.append("loading torch, reading the data, building the model…", dim)
            return text
        mb, accum, eff, tokens = (str(view.micro_batch), str(view.accum), f"{view.effective_batch:,}",
                                  f"{view.tokens_per_step:,}")
        processes = f"{view.processes} process" + ("es" if view.processes != 1 else "")
        # (text, is a number) pieces: the long form on one line if it fits, then the same with
        # "tokens/step", then two lines, then the short form.
        long = [("micro-batch ", 0), (mb, 1), (" x accum ", 0), (accum, 1), (f" (x {processes})", 0),
                (" = ", 0), (eff, 1), (" sequences = ", 0), (tokens, 1), (" tokens per step", 0)]
        medium = long[:-1] + [(" tokens/step", 0)]
        two_lines = long[:5] + [("\n= ", 0)] + long[6:]
        short = [("batch ", 0), (mb, 1), (" x ", 0), (accum, 1), (f" (x{view.processes}) = ", 0), (eff, 1),
                 (" seq = ", 0), (tokens, 1), (" tokens/step", 0)]
        room = self.size.width or 10_000  # (size is the content area, padding excluded)
        target = view.target_accum
        if self.screen.has_class("-tiny") and target != view.accum and not view.ended:
            # A short terminal: the pending change joins the batch on its one line, so the plot keeps its rows.
            line = f"batch {mb} x {accum} = {eff} seq · accum {accum} -> {target} at next epoch"
            if len(line) > room:
                line = f"batch {mb}x{accum} = {eff} · accum -> {target} next epoch"
            text.append(line, self.get_component_rich_style("batch--pending"))
            return text
        forms = (long, medium, two_lines) if self.app.size.height >= 30 else (long, medium)  # rows are dear
        pieces = next((form for form in forms
                       if max(len(line) for line in "".join(p for p, _ in form).split("\n")) <= room), short)
        for piece, is_number in pieces:
            text.append(piece, value if is_number else dim)
        self._pending_line(view, text, dim)
        return text

    def _pending_line(self, view: RunView, text: Text, dim) -> None:
        target = view.target_accum
        if target != view.accum and not view.ended:
            text.append("\n")
            pending = self.get_component_rich_style("batch--pending")
            text.append(f"accum {view.accum} -> {target} at next epoch", pending)
            effective = view.micro_batch * target * view.processes
            text.append(f" (= {effective:,} sequences)", dim)
            if view.requested_accum is None and view.epoch >= view.epochs:
                text.append(" · this is the last epoch", dim)
