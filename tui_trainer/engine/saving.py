"""The run's checkpoints as the loop takes them: ``Checkpoints(run_dir, ranks, sink, state, …)``.

Rank 0 writes (atomically: rundir/checkpoints.py); with several processes every rank calls
``save`` at the same point, sends its RNG state, and gets rank 0's outcome. It remembers where the
`latest` checkpoint on disk stands (``latest``, a ``LoopPosition``), why the last save failed, and
when the last one was written (the periodic save's clock). No Textual import.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tui_trainer.engine.distributed import Ranks
from tui_trainer.engine.runtime import capture_rng
from tui_trainer.events import CheckpointFailed, CheckpointSaved, Notice, Sink
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir.lock import LockLost, held_lock
from tui_trainer.rundir.loop_state import LoopPosition, LoopState

DEFAULT_CHECKPOINT_SECONDS = 300.0  # `latest` every ~5 minutes when --checkpoint-every is not given

# (this rank's RNG state to resume with, every rank's when several) -> everything a resume needs
Contents = Callable[[dict[str, Any] | None, list[dict[str, Any]] | None], dict[str, Any]]


class Checkpoints:
    """``contents(rng, rank_rngs)`` is what a checkpoint holds (session.checkpoint_of);
    ``latest``: where the `latest` on disk stands (a resumed run's own position), None = none yet."""

    def __init__(self, run_dir: Path, ranks: Ranks, sink: Sink, state: LoopState, *, contents: Contents,
                 latest: LoopPosition | None, device: torch.device, every_steps: int | None) -> None:
        self.run_dir, self.ranks, self.sink, self.state = run_dir, ranks, sink, state
        self._contents, self.device, self.every_steps = contents, device, every_steps
        self.latest = latest
        self.error = ""  # why the last save failed (for the end message)
        self.lost_run_dir = False  # a save was refused: the run dir is no longer this run's (lock.py)
        self._last_save_time = time.monotonic()

    def holds_now(self) -> bool:
        """Whether `latest` on disk holds the run as it stands (no second save needed)."""
        return self.latest == self.state.position

    def periodic_due(self) -> bool:
        """--checkpoint-every N steps, or every DEFAULT_CHECKPOINT_SECONDS (rank 0's clock)."""
        if self.every_steps:
            return self.state.step % self.every_steps == 0
        return time.monotonic() - self._last_save_time >= DEFAULT_CHECKPOINT_SECONDS

    def save(self, kind: str, rng: dict[str, Any] | None = None, requested: bool = False, redone: int = 0) -> bool:
        """Write a checkpoint (rank 0; with several processes every rank calls this at the same
        point, sends its RNG state, and gets rank 0's outcome). ``rng``: the state a resume starts
        from (None = now's; a stop mid-window passes the window's). ``redone``: the micro-steps of the
        window under way done when it saves (paused inside it), which a resume redoes: the event says so."""
        rank_rngs = self.ranks.gather(capture_rng(self.device)) if self.ranks.distributed else None
        saved = self._write(kind, rng, rank_rngs, requested, redone) if self.ranks.is_main else False
        saved = bool(self.ranks.broadcast(saved)) if self.ranks.distributed else saved
        if saved:
            self._last_save_time = time.monotonic()
            if kind == "latest":
                self.latest = self.state.position
        return saved

    def save_latest(self, rng: dict[str, Any] | None = None, requested: bool = False, redone: int = 0) -> bool:
        return self.save("latest", rng, requested, redone)

    def rescue(self) -> str:
        """Another process lost, or the data cut short under the run: rank 0 saves where the run stands (the last step
        taken; the caller dropped a partial window's gradient) unless `latest` holds it already.
        Returns what a resume can do, a clause for the end message ("" on the other ranks)."""
        st = self.state
        if not self.ranks.is_main:
            return ""
        if not self.holds_now():
            if not self._write("latest", None, None):
                if self.lost_run_dir:
                    return self.lost_run_dir_message()
                return (f"the previous checkpoint (step {self.latest.step}) is intact"
                        if self.latest else "no checkpoint could be saved")
            self.latest = st.position
        lost = ("the other ranks' random state was lost with them" if self.ranks.distributed
                else "its random state is the one of where it failed")
        return f"step {st.step} is saved: continue with --resume {self.run_dir} ({lost}: not bit-exact)"

    def lost_run_dir_message(self) -> str:
        """Why nothing more was saved when the run dir was moved, deleted or replaced under the run,
        and where its last good checkpoint is now, if anywhere (never "intact" in a deleted folder)."""
        lock = held_lock(self.run_dir)
        now = lock.where_now() if lock is not None else None
        if self.latest is None:
            last = "it had saved no checkpoint"
        elif now is None:
            last = f"its last checkpoint (step {self.latest.step}) went with it: where it is now is unknown"
        else:
            last = f"its last checkpoint (step {self.latest.step}) is in {ckpt.checkpoint_path(now, 'latest')}"
        return f"run dir {self.run_dir} was moved, deleted or replaced while this run trained in it, so nothing " \
               f"more was saved; {last}"

    def restore_best(self, model: torch.nn.Module) -> None:
        """The best epoch's weights back into ``model`` (rank 0's: the others end now)."""
        path = ckpt.checkpoint_path(self.run_dir, "best")
        if self.ranks.is_main and path.exists():
            state = torch.load(path, map_location=self.device, weights_only=True)
            model.load_state_dict(state["model"])

    def _write(self, kind: str, rng: dict[str, Any] | None, rank_rngs: list[dict[str, Any]] | None,
               requested: bool = False, redone: int = 0) -> bool:
        path = ckpt.checkpoint_path(self.run_dir, kind)
        try:
            seconds = ckpt.save_atomic(self._contents(rng, rank_rngs), path)
        except ckpt.CheckpointWriteError as exc:
            self.error = str(exc.__cause__.strerror if isinstance(exc.__cause__, OSError) else exc)
            if isinstance(exc.__cause__, LockLost):  # (not CheckpointFailed: the faces would add
                self.lost_run_dir = True             # "the previous checkpoint is intact", maybe deleted)
                self.sink.emit(Notice(message=f"{exc}: nothing more can be saved there", level="error"))
                return False
            self.sink.emit(CheckpointFailed(kind=kind, message=str(exc)))
            return False
        self.sink.emit(CheckpointSaved(kind=kind, path=str(path), step=self.state.step, epoch=self.state.epoch,
                                       seconds=seconds, requested=requested, redone_micro_steps=redone))
        return True
