"""What the loop carries from step to step, and what a checkpoint saves to resume exactly."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoopPosition:
    """Where a run stands: the epoch in progress, the examples of it consumed, the optimizer steps
    taken. A checkpoint saved here resumes here; two equal positions are the same training state."""

    epoch: int
    example_cursor: int
    step: int


@dataclass
class LoopState:
    epoch: int = 1  # the epoch in progress (1-based)
    example_cursor: int = 0  # examples of this epoch already consumed (always at a window boundary)
    step: int = 0  # optimizer steps done in the whole run
    tokens_seen: int = 0  # every token the data fed the steps (the epochs, the ETA)
    tokens_skipped: int = 0  # of those, the steps the fp16 loss scaler skipped: the LR schedule reads the rest
    accum: int = 8
    pending_accum: int | None = None  # applied at the start of the next epoch
    pending_accum_epoch: int | None = None  # that epoch (a stop in this epoch's first window must not apply it early)
    epoch_loss_sum: float = 0.0  # token-weighted train loss of the epoch so far
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    epoch_step_losses: list = field(default_factory=list)
    epoch_first_step: int = 1
    train_history: list = field(default_factory=list)
    val_history: list = field(default_factory=list)
    bad_steps_in_row: int = 0
    bad_steps_total: int = 0
    finished: str | None = None  # end reason once the run is over
    elapsed_seconds: float = 0.0  # wall time of the run at its last save, earlier sessions included
    last_verdict: dict | list | None = None  # the latest Diagnosis.to_state() (hysteresis); [kind, reason] before issue 17
    noise_scale_state: dict | None = None  # the noise-scale EMAs (NoiseScaleEstimator.state_dict)
    accum_decided_epoch: int = 0  # the epoch whose next accum a key or --auto-accum already chose
    lr_anchor: list | None = None  # [tokens, lr]: the schedule runs on from here to its end (a resume moved the end)
    time_budget: dict | None = None  # --time-budget: its plan and the seconds used (engine/budget.py)
    micro_split: int = 1  # each planned micro-batch is cut in this many (an out-of-memory halved it: engine/oom.py)
    val_micro_split: int = 1  # the same for the validation pass's micro-batches (oom.ValidationSplit)

    @property
    def position(self) -> LoopPosition:
        return LoopPosition(self.epoch, self.example_cursor, self.step)
