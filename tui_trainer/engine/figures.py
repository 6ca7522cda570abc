"""The run's sizes, derived once from the config and the data: what an epoch and a validation pass
hold, the tokens the run plans, its warm-up, and the learning rate at any point (schedule.py's
``lr_at`` over them). Pure arithmetic: no torch, no state of its own (under --time-budget the
planned tokens are the budget's plan: engine/budget.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tui_trainer.analysis.schedule import lr_at
from tui_trainer.config import RunConfig
from tui_trainer.data.dataset import val_batch_limit

if TYPE_CHECKING:
    from tui_trainer.engine.budget import RunBudget

NOT_PLANNED_YET = 2**62  # the decay's end while a budget measures the pace: the LR holds its peak


@dataclass(frozen=True)
class RunFigures:
    cfg: RunConfig
    train_windows: int  # sequences the training split holds (before --limit-train-batches)
    val_windows: int  # and the validation split (before --limit-val-batches)
    world_size: int = 1  # processes: the effective batch is micro-batch x accum x this
    budget: RunBudget | None = None  # --time-budget: the run's length is its plan, not the epochs
    lr_anchor: tuple[int, float] | None = None  # (tokens, lr) the schedule goes on from (a resume moved its end)

    def _capped(self, examples: int, limit_batches: int | None) -> int:
        return min(examples, limit_batches * self.cfg.train.micro_batch) if limit_batches else examples

    def examples_per_epoch(self) -> int:
        return self._capped(self.train_windows, self.cfg.data.limit_train_batches)

    def val_examples(self) -> int:
        """Examples one validation pass reads (``--limit-val-batches`` caps it)."""
        return self._capped(self.val_windows, val_batch_limit(self.cfg.data))

    def planned_tokens(self) -> int:
        if self.budget is not None:  # the plan (until it is made: the start-up's guess)
            return self.budget.total_tokens()
        return self.cfg.train.epochs * self.examples_per_epoch() * self.cfg.model.block_size

    def epochs(self) -> int:
        """The epochs the run trains: --epochs, or the ones the budget's plan reaches (the last may be partial)."""
        if self.budget is None:
            return self.cfg.train.epochs
        return max(1, math.ceil(self.planned_tokens() / (self.examples_per_epoch() * self.cfg.model.block_size)))

    def warmup_tokens(self) -> int:
        """--warmup-tokens, or 5% of the run but at least 10 steps' worth (at most 20% of the run).
        Under a budget: --warmup-tokens or 10 steps' worth, fixed before training, stretched to the
        plan's point when the plan comes later (the LR holds its peak while the pace is measured)."""
        explicit = self.cfg.optim.warmup_tokens
        ten_steps = (10 * self.cfg.train.micro_batch * self.cfg.train.accum * self.world_size
                     * self.cfg.model.block_size)
        if self.budget is not None:
            ramp = explicit if explicit is not None else ten_steps
            return max(ramp, self.budget.warmup_tokens or 0)
        if explicit is not None:
            return explicit
        planned = self.planned_tokens()
        return int(min(max(0.05 * planned, ten_steps), 0.2 * planned))

    def decay_end(self) -> int:
        """Where the LR reaches its floor: the planned tokens (far away while a budget measures its pace)."""
        return NOT_PLANNED_YET if self.budget is not None and not self.budget.planned else self.planned_tokens()

    def lr_for(self, tokens_seen: int) -> float:
        o = self.cfg.optim
        total = self.decay_end()
        if self.budget is not None and tokens_seen >= total:  # (a plan shorter than the warm-up ends there too)
            return o.lr * o.min_lr_ratio
        return lr_at(tokens_seen, o.lr, o.lr * o.min_lr_ratio, self.warmup_tokens(), total, self.lr_anchor,
                     o.lr_hold)


def carried_schedule(now: RunFigures, saved: RunConfig, tokens_seen: int) -> tuple[tuple[int, float] | None, str]:
    """A resume that moves the schedule's end (--epochs, --limit-train-batches): the learning rate
    decays on from the rate it had (or restarts at the peak: --resume-schedule restart) to the floor
    at the new end — never the silent jump to where a schedule planned for the new end would stand.
    Returns the new anchor (None: nothing moved) and the note that says it with numbers."""
    before = replace(now, cfg=saved)
    if before.planned_tokens() == now.planned_tokens():
        return None, ""
    moves = f"the schedule's end moves from {before.planned_tokens():,} to {now.planned_tokens():,} tokens"
    lr_before = before.lr_for(tokens_seen)
    if tokens_seen < before.warmup_tokens():
        return None, (f"{moves} during the warm-up: the learning rate goes from {lr_before:.2e} to "
                      f"{now.lr_for(tokens_seen):.2e}")
    o = now.cfg.optim
    peak, floor = o.lr, o.lr * o.min_lr_ratio
    go_on = o.resume_schedule == "continue"
    anchor = (tokens_seen, float(lr_before if go_on else peak))
    jump = replace(now, lr_anchor=None).lr_for(tokens_seen)
    if go_on and lr_before <= floor * (1 + 1e-9):  # (it had finished its decay: nothing left to decay)
        return anchor, (f"{moves}: the learning rate stays at its floor {floor:.2e} for the new epochs "
                        f"(--resume-schedule restart climbs back to the peak {peak:.2e} and decays again)")
    how = (f"decays on from {lr_before:.2e} (a schedule planned for the new end would stand at {jump:.2e})"
           if go_on else f"restarts at the peak {peak:.2e} (it was {lr_before:.2e})")
    other = "restart to start again from the peak" if go_on else "continue to decay on from where it was"
    return anchor, f"{moves}: the learning rate {how}, reaching {floor:.2e} at the new end (--resume-schedule {other})"
