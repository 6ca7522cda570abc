"""Which engine events the app pops up as a toast, and in what words: a pure function of the event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tui_trainer.events import AccumChangeApplied, CheckpointFailed, CheckpointSaved, Notice


@dataclass(frozen=True)
class Toast:
    message: str
    title: str = ""
    severity: str = "information"  # Textual's: information, warning, error
    seconds: float = 4.0


def toasts_for(event: Any) -> list[Toast]:
    """The toasts ``event`` calls for (a checkpoint is said when someone asked for it: `s`, a viewer;
    one saved while paused inside a step's window says a resume redoes that step). The run line's
    notes are no toast: one sat over the stats at 80x24 for seconds (a cold trial); the diagnosis
    banner shows them until the first diagnosis, and `?` keeps them."""
    match event:
        case CheckpointSaved(requested=True):
            redo = event.redone_words()
            return [Toast(event.saved_words() + (f"; {redo}" if redo else ""), title="checkpoint",
                          seconds=4.0 if redo else 3.0)]
        case CheckpointFailed():
            return [Toast(f"{event.message}; training continues, the previous checkpoint is intact",
                          title="checkpoint failed", severity="error", seconds=10)]
        case Notice() if event.level != "info":
            return [Toast(event.message, severity="error" if event.level == "error" else "warning", seconds=8)]
        case AccumChangeApplied():
            return [Toast(f"accum {event.old} -> {event.new} from epoch {event.epoch}")]
    return []
