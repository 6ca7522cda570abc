"""A failed run, in words: what broke, where the traceback is, what the run dir still holds."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from tui_trainer.rundir.checkpoints import checkpoint_path
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.base import Panel


class ErrorPanel(Panel):
    AUTO_HEIGHT = True
    COMPONENT_CLASSES = {"error--title", "error--dim"}

    DEFAULT_CSS = """
    ErrorPanel { height: auto; display: none; }
    ErrorPanel.-shown { display: block; }
    """

    def key(self, view: RunView, now: float):
        return (view.end_reason, view.end_message, view.error_text, view.run_dir)

    def show(self, view: RunView, now: float, **extra) -> None:
        self.set_class(view.end_reason == "error", "-shown")
        super().show(view, now, **extra)

    def build(self, view: RunView, now: float) -> Text:
        text = Text(end="")
        if view.end_reason != "error":
            return text
        text.append("training stopped with an error\n", self.get_component_rich_style("error--title"))
        text.append(view.error_text or view.end_message or "unknown error")
        dim = self.get_component_rich_style("error--dim")
        if view.run_dir:
            run_dir = Path(view.run_dir)
            if (run_dir / "error.log").exists():
                text.append(f"\ntraceback: {run_dir / 'error.log'}", dim)
            # A run stopped for non-finite steps would diverge again from its checkpoint: its
            # message says to start again instead.
            diverged = "non-finite steps in a row" in (view.end_message or "")
            resume = (f"; --resume {run_dir} continues from the last checkpoint"
                      if checkpoint_path(run_dir).exists() and not diverged else "")
            text.append(f"\nmetrics.jsonl is kept{resume}. q quits.", dim)
        return text
