"""How a run ends: the `end` record (``RunEnded``) with its reason and message, a finished run
that must not end with its final weights only in memory, a stop that says what a resume
continues from, too many non-finite steps in a row, and a crash (its traceback to error.log).

``Endings(state, sink, control, checkpoints, early_stopping, run_dir, verdict=…, can_retry_save=…)``;
the loop ends every run through it. No Textual import.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

from tui_trainer.analysis.diagnosis import Diagnosis
from tui_trainer.analysis.early_stopping import EarlyStopping
from tui_trainer.control import Control, SaveCheckpoint
from tui_trainer.engine.saving import Checkpoints
from tui_trainer.events import Notice, RunEnded, Sink
from tui_trainer.rundir.loop_state import LoopState


class Endings:
    """The ways a run ends. ``verdict()``: the run's latest diagnosis (for the `end` record);
    ``can_retry_save``: someone can press `s` to retry a failed final save (the app, one process)."""

    def __init__(self, state: LoopState, sink: Sink, control: Control, checkpoints: Checkpoints,
                 early_stopping: EarlyStopping, run_dir: Path, *, verdict: Callable[[], Diagnosis | None],
                 can_retry_save: bool, elapsed: Callable[[], float] | None = None) -> None:
        self.state, self.sink, self.control, self.checkpoints = state, sink, control, checkpoints
        self.early_stopping, self.run_dir = early_stopping, run_dir
        self._elapsed = elapsed  # the run's wall time so far (TrainingSession.elapsed_seconds)
        self._verdict, self.can_retry_save = verdict, can_retry_save

    def stop_point(self) -> str:
        """Where a mid-epoch stop leaves the run, in the run's own count of optimizer steps (a bare
        "epoch 2, step 14" reads as the 14th step of epoch 2)."""
        st = self.state
        if st.step == 0:
            return f"before the first optimizer step (epoch {st.epoch})"
        return f"after optimizer step {st.step} (epoch {st.epoch})"

    def end(self, reason: str, message: str = "", last_epoch_share: float | None = None) -> RunEnded:
        self.state.finished = reason
        verdict = self._verdict()
        best = self.early_stopping
        event = RunEnded(reason=reason, epochs=len(self.state.val_history), steps=self.state.step,
                         tokens_seen=self.state.tokens_seen,
                         best_val_loss=best.best if best.best_epoch is not None else None,
                         best_epoch=best.best_epoch, message=message,
                         exit_signal=self.control.stop_signal if reason == "interrupted" else None,
                         diagnosis=verdict.kind if verdict else None,
                         diagnosis_reason=verdict.reason if verdict else None, last_epoch_share=last_epoch_share,
                         elapsed_seconds=self._elapsed() if self._elapsed is not None else None)
        self.sink.emit(event)
        return event

    def end_with_the_run_saved(self, reason: str, message: str = "", then: Callable[[], None] | None = None,
                               last_epoch_share: float | None = None) -> RunEnded:
        """End a finished run, but not with its final weights only in memory: when the last save
        failed (a full disk), the app can retry it with `s` (the engine waits for it here); a run
        whose final checkpoint is still not on disk ends as an error, so a script notices."""
        st, checkpoints = self.state, self.checkpoints
        saved = checkpoints.holds_now()
        if not saved and checkpoints.lost_run_dir:  # no retry can save into a folder no longer ours
            done = "finished" if reason == "completed" else "stopped early"
            return self.end("error", f"training {done} at step {st.step}, but {checkpoints.lost_run_dir_message()}")
        if not saved and self.can_retry_save:
            self.sink.emit(Notice(message=f"the final checkpoint could not be saved ({checkpoints.error}): "
                                          "free some space and press s to retry, or q to leave without it",
                                  level="error"))
            while not saved and not self.control.stop_requested:
                commands = self.control.drain(timeout=0.25)
                if any(isinstance(c, SaveCheckpoint) for c in commands):
                    saved = checkpoints.save("latest", requested=True)
        if saved:
            if then is not None:
                then()
            return self.end(reason, message, last_epoch_share)
        previous = (f"the last checkpoint on disk is from step {checkpoints.latest.step}" if checkpoints.latest
                    else "no checkpoint is on disk")
        done = "finished" if reason == "completed" else "stopped early"
        return self.end("error", f"training {done} at step {st.step}, but its final checkpoint could not be saved "
                                 f"({checkpoints.error}); {previous}")

    def interrupted(self, saved: bool, where: str | None = None) -> RunEnded:
        """End after a stop; the message says what a resume continues from. ``where`` carries its
        preposition ("at the end of epoch 2"); None = ``stop_point()`` ("after optimizer step 14 …")."""
        where = where if where is not None else self.stop_point()
        if saved:
            return self.end("interrupted", f"stopped {where}; continue with --resume {self.run_dir}")
        if self.checkpoints.lost_run_dir:
            return self.end("error", f"stopped {where}, but {self.checkpoints.lost_run_dir_message()}")
        latest = self.checkpoints.latest
        previous = ("no earlier checkpoint exists" if latest is None else
                    f"the previous checkpoint (step {latest.step}) is intact")
        return self.end("interrupted", f"stopped {where}, but the checkpoint could not be saved "
                                       f"({self.checkpoints.error}); {previous}")

    def crashed(self, exc: BaseException, *, log: bool) -> RunEnded:
        """A bug or OOM ends the run as an error, in one line; with ``log`` its traceback goes to the
        run dir's error.log (call it while handling ``exc``)."""
        if log:
            try:
                (self.run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8", errors="replace")
            except OSError:
                pass  # a full disk must not hide the error itself
        return self.end("error", f"{type(exc).__name__}: {exc}")

    def diverged(self, val_loss: float, epoch: int, *, lr: float) -> RunEnded:
        """An epoch whose validation loss is not finite (fewer non-finite steps than
        --max-bad-steps got there): its weights are not saved, and the run is no success."""
        return self.end("error", f"validation loss is {val_loss} after epoch {epoch}: the weights diverged — "
                                 f"{self._start_again_lower(lr, before='it')}")

    def after_a_non_finite_step(self, loss: float, norm: float, *, max_bad_steps: int,
                                lr: float) -> RunEnded | None:
        """A skipped update is a warning; ``max_bad_steps`` of them in a row end the run (``lr``:
        the configured peak, for the hint)."""
        st = self.state
        self.sink.emit(Notice(message=f"step {st.step}: non-finite loss or gradient ({loss:.4g}, norm {norm:.4g}); "
                                      f"update skipped ({st.bad_steps_in_row} in a row)", level="warning"))
        if st.bad_steps_in_row < max_bad_steps:
            return None
        return self.end("error", f"{st.bad_steps_in_row} non-finite steps in a row at step {st.step}: "
                                 f"{self._start_again_lower(lr, before='them')}")

    def _start_again_lower(self, lr: float, *, before: str) -> str:
        """The hint after a divergence: a new start at a tenth of the lr, and what is kept. Not
        "--resume": it would replay the same steps into the same divergence."""
        latest = self.checkpoints.latest
        good = (f"no checkpoint was saved before {before}" if latest is None
                else f"the last good checkpoint (step {latest.step}) is intact")
        return (f"lower the learning rate — start again with --lr {lr / 10:g} (and --overwrite, or another "
                f"--run-dir); {good}")
