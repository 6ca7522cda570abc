"""How a run ends: the `end` record (``RunEnded``) with its reason and message, a finished run
that must not end with its final weights only in memory, and a stop that says what a resume
continues from.

``Endings`` is the part of ``TrainingSession`` (session.py) the loop ends a run through; it works on
the session's ``state``, ``sink``, ``control``, ``early_stopping``, ``last_diagnosis``, ``save`` and
the record of the last `latest` checkpoint (``_latest_saved``, ``_save_error``). No Textual import.
"""

from __future__ import annotations

from typing import Callable

from tui_trainer.control import SaveCheckpoint
from tui_trainer.events import Notice, RunEnded


class Endings:
    """The ways a run ends (see the module's docstring)."""

    def _stop_point(self) -> str:
        """Where a mid-epoch stop leaves the run, in the run's own count of optimizer steps (a bare
        "epoch 2, step 14" reads as the 14th step of epoch 2)."""
        st = self.state
        if st.step == 0:
            return f"before the first optimizer step (epoch {st.epoch})"
        return f"after optimizer step {st.step} (epoch {st.epoch})"

    def _end(self, reason: str, message: str = "") -> RunEnded:
        self.state.finished = reason
        verdict = self.last_diagnosis
        event = RunEnded(reason=reason, epochs=len(self.state.val_history), steps=self.state.step,
                         tokens_seen=self.state.tokens_seen,
                         best_val_loss=self.early_stopping.best if self.early_stopping.best_epoch else None,
                         best_epoch=self.early_stopping.best_epoch, message=message,
                         exit_signal=self.control.stop_signal if reason == "interrupted" else None,
                         diagnosis=verdict.kind if verdict else None,
                         diagnosis_reason=verdict.reason if verdict else None)
        self.sink.emit(event)
        return event

    def _end_with_the_run_saved(self, reason: str, message: str = "",
                                then: Callable[[], None] | None = None) -> RunEnded:
        """End a finished run, but not with its final weights only in memory: when the last save
        failed (a full disk), the app can retry it with `s` (the engine waits for it here); a run
        whose final checkpoint is still not on disk ends as an error, so a script notices."""
        st = self.state
        saved = self._latest_saved == (st.epoch, st.example_cursor, st.step)
        if not saved and self.for_ui and not self.ranks.distributed:  # (the other ranks have ended)
            self.sink.emit(Notice(message=f"the final checkpoint could not be saved ({self._save_error}): "
                                          "free some space and press s to retry, or q to leave without it",
                                  level="error"))
            while not saved and not self.control.stop_requested:
                commands = self.control.drain(timeout=0.25)
                saved = any(isinstance(c, SaveCheckpoint) for c in commands) and self.save("latest")
        if saved:
            if then is not None:
                then()
            return self._end(reason, message)
        previous = (f"the last checkpoint on disk is from step {self._latest_saved[2]}" if self._latest_saved
                    else "no checkpoint is on disk")
        done = "finished" if reason == "completed" else "stopped early"
        return self._end("error", f"training {done} at step {st.step}, but its final checkpoint could not be saved "
                                  f"({self._save_error}); {previous}")

    def _interrupted(self, saved: bool, where: str) -> RunEnded:
        """End after a stop; the message says what a resume continues from. ``where`` carries its
        preposition ("after optimizer step 14 (epoch 2)", "at the end of epoch 2")."""
        if saved:
            return self._end("interrupted", f"stopped {where}; continue with --resume {self.run_dir}")
        previous = ("no earlier checkpoint exists" if self._latest_saved is None else
                    f"the previous checkpoint (step {self._latest_saved[2]}) is intact")
        return self._end("interrupted", f"stopped {where}, but the checkpoint could not be saved "
                                        f"({self._save_error}); {previous}")
