"""An out-of-memory in the middle of a window is not the end of the run.

``OutOfMemoryRecovery.after(window_rng)``: the window's partial gradients dropped, the micro-batch halved
and the accumulation doubled (``LoopState.micro_split``: each planned micro-batch cut in two more
pieces), the RNG set back to the window's start (its dropout masks are drawn again, the same), and
the window redone from its first micro-batch: the same examples, each token weighted by the
window's total as before, so the step taken equals the one that would have been. Said on screen
(a Notice) and in metrics.jsonl (a ``memory`` record). Below micro-batch 1 the run stops with a
checkpoint of its last step and one line naming the levers.

Several processes: no collective runs inside a window (every backward is local; the gradients are
summed after it, gradient_sum.py), so a rank that runs out skips the window's other micro-steps and
still reaches the agreement that precedes the sum (step.py: which ranks ran out). If any did, every
rank calls ``after`` with the same split, so all adopt the same new one at the same step and redo the
window from their own RNG state at its start; below micro-batch 1 all stop together, the checkpoint
taken by every rank (as any save). The validation pass has its own split (``ValidationSplit``,
loop.py). No Textual import, ever.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import torch

from tui_trainer.data.dataset import Window
from tui_trainer.engine.runtime import restore_rng
from tui_trainer.events import Notice, RunEnded, Sink, SplitChanged
from tui_trainer.rundir.loop_state import LoopState


def cut_window(window: Window, pieces: int) -> Window:
    """Each micro-batch of ``window`` cut into ``pieces`` near-equal consecutive parts (none empty)."""
    if pieces == 1:
        return window
    parts = []
    for start, stop in window.micro_batches:
        size = stop - start
        bounds = [start + (size * k + pieces - 1) // pieces for k in range(pieces + 1)]  # (ceil: 16/2 = 8+8)
        parts += [(a, b) for a, b in pairwise(bounds) if b > a]
    return Window(tuple(parts))


def split_sizes(planned_micro_batch: int, accum: int, pieces: int) -> tuple[int, int]:
    """(micro-batch, accum) in effect when each planned micro-batch is cut into ``pieces``."""
    return -(-planned_micro_batch // pieces), accum * pieces


class OutOfMemoryRecovery:
    """``after(window_rng, ranks)`` once an OutOfMemoryError left the window half done (on ``ranks``,
    by rank; several processes: every rank calls it): None = redo the window (the split halved), or
    the run's end (below micro-batch 1: ``stop`` saves and ends it)."""

    def __init__(self, state: LoopState, sink: Sink, device: torch.device, planned_micro_batch: int,
                 optimizer: torch.optim.Optimizer, stop: Callable[[str], RunEnded], processes: int = 1) -> None:
        self.state, self.sink, self.device, self.planned = state, sink, device, planned_micro_batch
        self.optimizer, self._stop, self.processes = optimizer, stop, processes

    def after(self, window_rng: dict[str, Any] | None, ranks: tuple[int, ...] = (0,)) -> RunEnded | None:
        st = self.state
        self.optimizer.zero_grad(set_to_none=True)  # the partial gradients of the window: dropped
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        step = st.step + 1
        micro_batch, accum = split_sizes(self.planned, st.accum, st.micro_split)
        if micro_batch <= 1:
            where = f" (on rank {', '.join(map(str, ranks))})" if self.processes > 1 else ""
            return self._stop(f"out of memory at step {step}{where} even at micro-batch 1: the run is saved at its last "
                              f"step; lower --memory-budget's claim elsewhere, add --checkpoint-activations, or "
                              f"use a smaller model or --block-size")
        st.micro_split *= 2
        if window_rng is not None:  # the redone window draws the same dropout masks
            restore_rng(window_rng, self.device)
        new_micro_batch, new_accum = split_sizes(self.planned, st.accum, st.micro_split)
        change = SplitChanged(old_micro_batch=micro_batch, new_micro_batch=new_micro_batch, old_accum=accum,
                              new_accum=new_accum, step=step, epoch=st.epoch,
                              ranks=ranks if self.processes > 1 else ())
        self.sink.emit(change)
        every = f" on every one of the {self.processes} processes" if self.processes > 1 else ""
        self.sink.emit(Notice(message=f"{change.describe()}: the window is redone{every}, the step is the same",
                              level="warning"))
        return None


class ValidationRanOutOfMemory(Exception):
    """Raised by the validation pass once the ranks (``ranks``, by rank) agreed that some ran out of
    memory in it (one process: this one): its sums are dropped, the pass is to be redone."""

    def __init__(self, ranks: tuple[int, ...]) -> None:
        super().__init__(f"out of memory in the validation pass (rank {', '.join(map(str, ranks))})")
        self.ranks = ranks


class NoSmallerSplit(Exception):
    """Out of memory at micro-batch 1 in the validation: the run is to stop (every rank, together),
    saved at its last step, with this message."""


class ValidationSplit:
    """The validation pass's own micro-batch: the planned one cut into ``pieces`` (each of this rank's
    batches cut as ``cut_window`` cuts a window's), halved by ``after`` once a pass ran out of memory.
    The pass is a token-weighted sum, so the redone pass gives the same val loss (float rounding
    aside). The cut is the loop state's ``val_micro_split``, so the checkpoint keeps it and a resume
    validates at the halved size from its first pass (a checkpoint from before it: the planned size)."""

    def __init__(self, sink: Sink, device: torch.device, planned_micro_batch: int, state: LoopState,
                 processes: int = 1) -> None:
        self.sink, self.device, self.planned, self.processes = sink, device, planned_micro_batch, processes
        self.state = state

    @property
    def pieces(self) -> int:
        return max(1, self.state.val_micro_split)

    def batches(self, mine: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """This rank's validation batches at the current split."""
        return list(cut_window(Window(tuple(mine)), self.pieces).micro_batches)

    def after(self, out_of_memory: ValidationRanOutOfMemory, state: LoopState) -> None:
        """Halve the validation micro-batch and say so; below 1, ``NoSmallerSplit``."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        micro_batch = -(-self.planned // self.pieces)
        ranks = out_of_memory.ranks if self.processes > 1 else ()
        if micro_batch <= 1:
            where = f" (on rank {', '.join(map(str, ranks))})" if ranks else ""
            raise NoSmallerSplit(f"out of memory in the validation after step {state.step}{where} even at "
                                 f"micro-batch 1: the run is saved at its last step; free memory held elsewhere, "
                                 f"or use a smaller model or --block-size")
        state.val_micro_split = self.pieces * 2
        change = SplitChanged(old_micro_batch=micro_batch, new_micro_batch=-(-self.planned // self.pieces),
                              old_accum=state.accum, new_accum=state.accum, step=state.step, epoch=state.epoch,
                              ranks=ranks, phase="validation")
        self.sink.emit(change)
        every = f" on every one of the {self.processes} processes" if self.processes > 1 else ""
        self.sink.emit(Notice(message=f"{change.describe()}: the pass is redone{every}, the same val loss",
                              level="warning"))
