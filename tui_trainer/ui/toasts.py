"""Which engine events the app pops up as a toast, and in what words: a pure function of the event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tui_trainer.events import AccumChangeApplied, CheckpointFailed, CheckpointSaved, Notice, RunStarted


@dataclass(frozen=True)
class Toast:
    message: str
    title: str = ""
    severity: str = "information"  # Textual's: information, warning, error
    seconds: float = 4.0
    until_first_epoch: bool = False  # also taken down at the first epoch's end (or the run's end)


def toasts_for(event: Any, saved_by_key: bool = False) -> list[Toast]:
    """The toasts ``event`` calls for (``saved_by_key``: a checkpoint `s` asked for has been written)."""
    match event:
        case RunStarted() if event.notes:  # the run line's notes: a busy machine, a capped epoch, a resume's
            # One toast for all, not one each: three stacked covered half an 80x24 screen for 12 s
            # (a cold trial). The run line keeps them (headless, metrics.jsonl's run record).
            notes = event.notes
            return [Toast("\n".join(f"• {note}" for note in notes) if len(notes) > 1 else notes[0],
                          title="notes" if len(notes) > 1 else "note", seconds=min(12.0, 4.0 + 3.0 * len(notes)),
                          # ... and no longer than the first epoch: a toast sits over the stats at 80x24,
                          # and a run of a second or two ended behind it (a cold trial)
                          until_first_epoch=True)]
        case CheckpointSaved() if saved_by_key:
            return [Toast(f"saved {event.kind} checkpoint at step {event.step} ({event.seconds:.1f}s)",
                          title="checkpoint")]
        case CheckpointFailed():
            return [Toast(f"{event.message}; training continues, the previous checkpoint is intact",
                          title="checkpoint failed", severity="error", seconds=10)]
        case Notice() if event.level != "info":
            return [Toast(event.message, severity="error" if event.level == "error" else "warning", seconds=8)]
        case AccumChangeApplied():
            return [Toast(f"accum {event.old} -> {event.new} from epoch {event.epoch}")]
    return []
