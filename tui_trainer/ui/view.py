"""What the screen shows, folded from engine events: plain Python, no Textual.

``RunView.apply(event)`` is the only way the engine's story reaches the widgets. It runs
on the UI thread (the app drains the bridge, then applies), so nothing here needs a lock.
Keys change the view *optimistically* (``pause_requested``, ``requested_accum``) so the
screen answers at once; the engine's own event confirms a moment later.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from tui_trainer.analysis.eta import EtaModel, SmoothedEta
from tui_trainer.config import ACCUM_MAX, ACCUM_MIN
from tui_trainer.events import (
    BUSY_NOTE,
    effective_batch,
)
from tui_trainer.rundir.summary import run_pace

# Run states, in the words the status line uses.
STARTING, RUNNING, PAUSING, PAUSED, RESUMING, STOPPING = "starting", "running", "pausing", "paused", "resuming", "stopping"
VALIDATING = "validating"  # the epoch's validation pass (no micro-steps, no keys take effect until it ends)
FINISHED, EARLY_STOPPED, INTERRUPTED, FAILED = "finished", "early-stopped", "stopped", "error"
END_STATES = {"completed": FINISHED, "early_stop": EARLY_STOPPED, "interrupted": INTERRUPTED, "error": FAILED}

THROUGHPUT_WINDOW = 20  # steps in the rolling tokens/s


@dataclass
class EpochPoint:
    epoch: int  # 0: the validation before training (--init-from), at step 0 with no train loss (NaN)
    step: int  # the last optimizer step of the epoch (where it sits on the x-axis)
    train_loss: float
    val_loss: float


@dataclass(frozen=True)
class SampleShown:
    epoch: int
    step: int  # the optimizer step whose weights wrote it
    text: str
    asked: bool  # True: asked for with `g`; False: the one after an epoch
    # where the step sat in its epoch, as the progress panel counts ("step 12/480"); None: not known
    step_in_epoch: int | None = None
    steps_in_epoch: int | None = None


@dataclass
class RunView:
    # -- the run (RunStarted) --------------------------------------------------------------
    started: bool = False
    data_progress: str = ""  # while the data is prepared, before the run starts (DataPreparing)
    run_dir: str = ""
    device: str = ""
    threads: int = 0
    precision: str = ""  # "fp32"/"bf16" once the run started
    parameters: int = 0
    epochs: int = 0
    micro_batch: int = 0
    accum: int = 0
    memory_budget: int = 0  # bytes --micro-batch auto fitted into (0 = none: no memory bar)
    peak_memory: int = 0  # the last step's measured peak, bytes
    processes: int = 1
    block_size: int = 0
    planned_tokens: int = 0
    train_examples: int = 0
    time_budget: float | None = None  # --time-budget, seconds (None: the run trains for its epochs)
    budget_left: float | None = None  # ... left at the latest step, active seconds
    budget_left_at: float = 0.0  # this session's active seconds then
    tokens_at_start: int = 0
    resumed_from_step: int = 0
    resumed_at_epoch: int | None = None  # the epoch a resumed run went on in (None = a fresh run)
    notes: tuple[str, ...] = ()  # the run line's notes (RunStarted)
    # -- where it is -------------------------------------------------------------------------
    state: str = STARTING
    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    steps_in_epoch: int = 0
    micro_step: int = 0
    micro_steps: int = 0
    tokens_seen: int = 0
    lr: float | None = None
    grad_norm: float | None = None
    skipped_steps: int = 0
    flops_per_token: float | None = None  # the model's training FLOPs per token (from the steps' records)
    peak_flops: float | None = None  # the GPU's peak for the run's precision; None: a CPU or an unknown GPU
    val_batch: int | None = None  # the validation pass in progress: batches done (None = not validating)
    val_batches: int = 0  # micro-batches in one validation pass
    # -- accumulation changes ----------------------------------------------------------------
    pending_accum: int | None = None  # confirmed by the engine, applies at the next epoch
    requested_accum: int | None = None  # sent by a key, not yet confirmed (None = nothing in flight)
    pause_requested: bool | None = None  # sent by a key, not yet confirmed
    pending_auto: bool = False  # the pending change came from --auto-accum, not a key
    # -- the gradient noise scale (noise_scale.py) ---------------------------------------------
    noise_scale_on: bool = False  # the run estimates it (not --no-noise-scale)
    noise_scale: float | None = None  # smoothed B_simple in sequences; None until it settles
    suggested_accum: int | None = None
    noise_scale_error: float | None = None  # the estimate's standard error, as a share of it
    # -- losses ------------------------------------------------------------------------------
    step_numbers: list[int] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)  # finite losses only
    epoch_points: list[EpochPoint] = field(default_factory=list)
    epoch_rows: list = field(default_factory=list)  # the EpochEvents themselves, for the epoch table
    plot_version: int = 0  # bumped whenever the plot has something new
    # -- diagnosis ---------------------------------------------------------------------------
    diagnosis: str | None = None  # None until the first verdict
    diagnosis_reason: str = ""
    remedy: str = ""
    val_rise_warning: str | None = None
    best_val_loss: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    # -- text samples ------------------------------------------------------------------------
    sample_tokens: int = 0  # tokens of the sample after each epoch (0 = none)
    sample: SampleShown | None = None  # the latest
    asked_sample: SampleShown | None = None  # the latest asked with `g` (an epoch's may come after it)
    sample_version: int = 0  # bumped with each new sample
    sample_requested: bool = False  # `g` pressed, its sample not here yet
    # -- the end -----------------------------------------------------------------------------
    end_reason: str | None = None
    end_message: str = ""
    last_epoch_share: float | None = None  # a --time-budget run ended by its budget: its last epoch's share
    error_text: str | None = None  # the exception, when the engine failed
    # -- checkpoints and notices -------------------------------------------------------------
    last_checkpoint_step: int | None = None
    last_checkpoint_kind: str = ""
    last_checkpoint_at: float | None = None
    checkpoint_error: str | None = None
    # -- time (UI clock, seconds) ------------------------------------------------------------
    started_at: float | None = None
    elapsed_before: float = 0.0  # a resumed run's earlier sessions
    ended_at: float | None = None
    recorded_elapsed: float | None = None  # the run's own wall time at its end (RunEnded), when recorded
    paused_since: float | None = None
    paused_total: float = 0.0
    _throughput: deque = field(default_factory=lambda: deque(maxlen=THROUGHPUT_WINDOW))
    _eta: EtaModel | None = None  # from RunStarted on
    _shown_eta: SmoothedEta = field(default_factory=SmoothedEta)  # what the status line shows

    # -- folding events (view_events.py) ------------------------------------------------------

    def apply(self, event: object, now: float) -> None:
        from tui_trainer.ui.view_events import fold  # (it imports this module: the states, RunView)

        fold(self, event, now)

    def budget_seconds_left(self, now: float) -> float | None:
        """Active seconds left of the --time-budget (None without one), counted down between steps."""
        if self.budget_left is None:
            return None
        if self.ended:
            return self.budget_left
        return max(0.0, self.budget_left - (self.active_seconds(now) - self.budget_left_at))

    # -- what keys do (optimistic) -------------------------------------------------------------

    @property
    def epochs_done(self) -> int:
        """Training epochs finished (epoch 0, the validation before training, is none)."""
        return sum(1 for point in self.epoch_points if point.epoch > 0)

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    @property
    def target_accum(self) -> int:
        """The accumulation the next epoch will use, counting a key press still in flight."""
        if self.requested_accum is not None:
            return self.requested_accum
        return self.pending_accum if self.pending_accum is not None else self.accum

    def request_accum(self, double: bool) -> int | None:
        """Double/halve the target; the value to send to the engine, or None if unchanged."""
        current = self.target_accum or 1
        wanted = max(ACCUM_MIN, min(ACCUM_MAX, current * 2 if double else current // 2))
        if wanted == current or self.ended:
            return None
        self.requested_accum = wanted
        return wanted

    def request_pause_toggle(self) -> None:
        paused = self.state in (PAUSED, PAUSING) if self.pause_requested is None else self.pause_requested
        self.pause_requested = not paused
        if self.state not in (STOPPING, *END_STATES.values()):
            self.state = PAUSING if self.pause_requested else RESUMING

    def request_sample(self) -> bool:
        """`g`: True when the engine should be asked (once: a request in flight is not repeated)."""
        if self.ended or self.sample_requested:
            return False
        self.sample_requested = True
        return True

    def request_stop(self) -> None:
        if not self.ended:
            self.state = STOPPING

    # -- derived figures -----------------------------------------------------------------------

    @property
    def run_name(self) -> str:
        if not self.run_dir:
            return "—"
        path = Path(self.run_dir)
        if path.name in ("", ".", ".."):  # (`--run-dir .`, `--resume ..`: the folder's own name)
            return path.resolve().name or str(path)
        return path.name

    @property
    def effective_batch(self) -> int:
        """Sequences in each optimizer step at the accumulation in use now (an accum change since the
        run's start included) — or, where an epoch holds fewer (``--limit-train-batches``), the epoch's:
        the engine takes each such epoch as one step of all its sequences (its run-line note says so)."""
        return self.step_holds(self.accum)

    def step_holds(self, accum: int) -> int:
        """Sequences a full step holds at ``accum``: the window, or the whole epoch where that is shorter."""
        window = effective_batch(self.micro_batch, accum, self.processes)
        return min(window, self.train_examples) if self.train_examples else window

    @property
    def window_cut(self) -> bool:
        """An epoch is shorter than one accumulation window: each step is the whole epoch."""
        return self.effective_batch < effective_batch(self.micro_batch, self.accum, self.processes)

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches in a full step (``accum``; fewer where the window is cut by the epoch)."""
        return min(self.accum, -(-self.effective_batch // max(1, self.micro_batch * self.processes)))

    @property
    def tokens_per_step(self) -> int:
        return self.effective_batch * self.block_size

    @property
    def tokens_per_second(self) -> float | None:
        if not self._throughput:
            return None
        tokens = sum(t for t, _ in self._throughput)
        seconds = sum(s for _, s in self._throughput)
        return tokens / seconds if seconds > 0 else None

    @property
    def run_tokens_per_second(self) -> float | None:
        """Once the run has ended, its pace over every epoch (what `tui-trainer runs` says of it);
        None before, and for a run that ended inside its first epoch."""
        return run_pace(self.epoch_rows, None) if self.ended else None

    @property
    def shown_tokens_per_second(self) -> float | None:
        """The stats panel's figure: the last steps' pace, and the run's average once it has ended."""
        average = self.run_tokens_per_second
        return average if average is not None else self.tokens_per_second

    @property
    def flops_per_second(self) -> float | None:
        """The model's FLOP/s at the tokens/s shown."""
        tokens_per_s = self.shown_tokens_per_second
        return tokens_per_s * self.flops_per_token if tokens_per_s and self.flops_per_token else None

    @property
    def mfu(self) -> float | None:
        flops = self.flops_per_second
        return flops / self.peak_flops if flops and self.peak_flops else None

    def session_elapsed(self, now: float) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at if self.ended_at is not None else now) - self.started_at

    def elapsed(self, now: float) -> float:
        """The run's wall time, a resumed run's earlier sessions included; once ended, the run's own
        record of it where there is one (a viewer's clock never saw the run)."""
        if self.ended_at is not None and self.recorded_elapsed is not None:
            return self.recorded_elapsed
        return self.elapsed_before + self.session_elapsed(now)

    def active_seconds(self, now: float) -> float:
        """This session's time, pauses left out (the ETA's pace is this session's)."""
        paused = self.paused_total + (now - self.paused_since if self.paused_since is not None else 0.0)
        return max(0.0, self.session_elapsed(now) - paused)

    def eta(self, now: float) -> float | None:
        """Seconds left: training and validation at this session's measured paces, pauses left out,
        smoothed into a steady countdown; None while the pace is still being measured (eta.py)."""
        if self.ended or self._eta is None:
            return None
        return self._eta.shown(self._shown_eta, self.active_seconds(now))

    @property
    def busy_machine(self) -> bool:
        """The run started on a machine whose cores others were using (its note said what --threads fits)."""
        return any(note.startswith(BUSY_NOTE) for note in self.notes)

    @property
    def busy_advice(self) -> str:
        """What the busy machine's note advises (``--threads 1``), or "" where it has no advice."""
        for note in self.notes:
            if note.startswith(BUSY_NOTE):
                found = re.search(r"--threads \d+", note)
                return found.group(0) if found else ""
        return ""

    @property
    def eta_measuring(self) -> bool:
        """Running, but this session's pace is not measured yet: the screen says "ETA measuring…"."""
        return self.started and not self.ended and self._shown_eta.shown is None

