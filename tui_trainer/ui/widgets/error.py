"""A failed run, in words: what broke, where the traceback is, what the run dir still holds."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from ..view import RunView
from .base import Panel


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
            log = Path(view.run_dir) / "error.log"
            if log.exists():
                text.append(f"\ntraceback: {log}", dim)
            text.append(f"\n{view.run_dir} keeps metrics.jsonl and the last good checkpoint; "
                        f"continue with --resume {view.run_dir}. Press q to quit.", dim)
        return text
