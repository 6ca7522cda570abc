"""What the engine tells its sinks: small frozen dataclasses, one per kind of moment.

The engine emits them in order; sinks (the headless logger, the Textual app, the
metrics file) decide what to draw or write. Nothing here imports Textual.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


def effective_batch(micro_batch: int, accum: int, processes: int) -> int:
    """Sequences in one optimizer step: micro-batch x accum x processes (an epoch's last step may
    hold fewer). The one spelling of it; the events carry its value, consumers read it there."""
    return micro_batch * accum * processes


BUSY_NOTE = "the machine is busy"  # a run-line note's first words: the app keeps a mark on the status line


@dataclass(frozen=True, kw_only=True)
class RunStarted:
    run_dir: str
    device: str
    threads: int
    parameters: int
    vocab_size: int
    train_examples: int
    val_examples: int
    epochs: int
    micro_batch: int
    accum: int
    processes: int  # the ranks that train together (torchrun's world size; 1 without it)
    block_size: int
    planned_tokens: int  # tokens the whole run will train on (drives the LR schedule and ETA)
    resumed_from_step: int = 0  # 0 = fresh run
    start_epoch: int = 1
    tokens_seen: int = 0
    notes: tuple[str, ...] = ()
    elapsed_before: float = 0.0  # wall time of the run's earlier sessions (a resumed run goes on counting)
    sample_tokens: int = 0  # tokens of the text sample after each epoch (0 = none)
    noise_scale: bool = False  # the run estimates the gradient noise scale (StepEvent.noise_scale)
    auto_accum: bool = False  # ... and follows its suggestion at each epoch boundary
    precision: str = ""  # "fp32", "bf16" or "fp16" (autocast forward), as tui_trainer/engine/precision.py chose it
    val_batches: int = 0  # micro-batches in one validation pass, this process's share (0 = not known)
    init_from: str = ""  # the weights a new run started from (--init-from's folder); "" = random, or a resume
    time_budget: float | None = None  # --time-budget in seconds (None = the run trains for its epochs)
    budget_left: float | None = None  # ... of it, after the start-up (a resumed run: its earlier sessions too)
    split: str = ""  # how micro-batch x accum was chosen (--batch: given, or auto: memory_fit.Fit.describe)
    memory_budget: int = 0  # bytes --micro-batch auto fitted into (0 = none set)
    checkpoint_activations: bool = False  # each block's activations recomputed in the backward

    @property
    def effective_batch(self) -> int:
        """Sequences in each full optimizer step at the run's start (micro_batch x accum x processes)."""
        return effective_batch(self.micro_batch, self.accum, self.processes)

    @property
    def world_size(self) -> int:
        """torchrun's word for ``processes``: the ranks that train this run together."""
        return self.processes


@dataclass(frozen=True, kw_only=True)
class SplitChanged:
    """An out-of-memory mid-window: the window was redone at half the micro-batch and twice the
    accumulation (the same examples, the same step); or (``phase`` "validation") mid-pass: the pass
    was redone at half its micro-batch (the same val loss)."""

    old_micro_batch: int
    new_micro_batch: int
    old_accum: int
    new_accum: int
    step: int  # the optimizer step whose window ran out of memory (validation: the last step taken)
    epoch: int
    ranks: tuple[int, ...] = ()  # several processes: the ranks that ran out (every rank took the new split)
    phase: str = "training"  # or "validation": the pass's own micro-batch (no accumulation there)

    def describe(self) -> str:
        where = f" on rank {', '.join(map(str, self.ranks))}" if self.ranks else ""
        if self.phase == "validation":
            return (f"memory: validation micro-batch {self.old_micro_batch} -> {self.new_micro_batch} after an "
                    f"out-of-memory{where} in the validation after step {self.step}")
        return (f"memory: micro-batch {self.old_micro_batch} -> {self.new_micro_batch}, accum {self.old_accum} -> "
                f"{self.new_accum} after an out-of-memory{where} at step {self.step}")


@dataclass(frozen=True, kw_only=True)
class MicroStep:
    epoch: int
    step: int  # the optimizer step this micro-step belongs to (1-based, global)
    micro_step: int  # 1..micro_steps within that step
    micro_steps: int  # micro-batches in this step's window (== accum except at an epoch's end)
    step_in_epoch: int  # 1-based
    steps_in_epoch: int


@dataclass(frozen=True, kw_only=True)
class StepEvent:
    epoch: int
    step: int
    step_in_epoch: int
    steps_in_epoch: int
    micro_steps: int
    accum: int
    micro_batch: int
    effective_batch: int  # sequences in this step (micro_batch x accum x processes, less at an epoch's end)
    tokens: int
    loss: float
    lr: float
    grad_norm: float
    tokens_seen: int
    tokens_per_s: float
    skipped: bool = False  # non-finite loss or gradient: the update was not applied
    noise_scale: float | None = None  # smoothed B_simple in sequences (noise_scale.py); None until settled
    suggested_accum: int | None = None  # the accum whose effective batch is nearest the noise scale
    noise_scale_error: float | None = None  # its standard error as a share of it (0.2: ±20%)
    world_size: int = 1  # processes that took this step together (torchrun); tokens and tokens/s are all of theirs
    budget_left: float | None = None  # --time-budget: active seconds left of it (pauses do not count)
    planned_tokens: int | None = None  # --time-budget: the run's tokens as planned now (the plan may change)
    peak_memory: int = 0  # bytes at the step's peak: CUDA's allocator, or the process's RSS (0 = not measured)
    flops_per_s: float | None = None  # the model's training FLOP/s at tokens_per_s (analysis/mfu.py)
    mfu: float | None = None  # flops_per_s over the GPU's peak for the precision; None on a CPU or an unknown GPU
    # The run's wall time at this step, earlier sessions and pauses included (what its clock shows), and
    # when that was (Unix seconds): a viewer opened later shows the run's clock, not its own. None: older.
    elapsed: float | None = None
    unix_time: float | None = None


@dataclass(frozen=True, kw_only=True)
class ValidationProgress:
    """The epoch's validation pass: ``batch`` of ``batches`` micro-batches done (0 = it starts).
    Emitted at the start, at the end, and at most every ``VALIDATION_PROGRESS_S`` in between."""

    epoch: int
    batch: int
    batches: int
    seconds: float  # wall time of this pass so far


@dataclass(frozen=True, kw_only=True)
class EpochEvent:
    """An epoch's end: its losses, the verdict, early stopping's standing. Epoch 0 is the validation
    pass before any step of a run started ``--init-from`` a model (``before_training``): its val loss
    is where fine-tuning starts from; it has no train loss (NaN, as JSON's "nan": every reader of
    the float field takes it) and no verdict, and it is no training epoch (the diagnosis never sees it)."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_bpb: float | None = None  # bits per byte of the same pass (data/bits_per_byte.py); None in older records
    accum: int
    effective_batch: int  # sequences in each full step of this epoch (micro_batch x accum x processes)
    micro_batch: int = 0  # sequences per forward/backward (0 in records written before it was carried)
    tokens_seen: int
    seconds: float
    diagnosis: str = "healthy"
    diagnosis_reason: str = ""
    remedy: str = ""
    val_rise_warning: str | None = None
    best_val_loss: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    tokens_per_s: float = 0.0  # training tokens of this epoch over its training time
    sample: str | None = None  # text generated from the weights after validation (None: --sample-tokens 0)
    noise_scale: float | None = None  # at the epoch's last step (None: no estimate, e.g. accum 1)
    suggested_accum: int | None = None
    noise_scale_error: float | None = None

    @property
    def before_training(self) -> bool:
        """Epoch 0: the starting weights' validation, before any step (--init-from)."""
        return self.epoch == 0


@dataclass(frozen=True, kw_only=True)
class SampleEvent:
    """A text sample asked for during the run (`g`), from the weights after ``step``."""

    epoch: int
    step: int
    text: str
    seconds: float  # how long generating it held up training


@dataclass(frozen=True, kw_only=True)
class DiagnosisEvent:
    """A verdict between epochs (a non-finite step, a spike, divergence): shown at once."""

    kind: str
    reason: str
    remedy: str
    epoch: int
    step: int


@dataclass(frozen=True, kw_only=True)
class AccumChangeRequested:
    old: int
    new: int
    epoch: int  # requested during this epoch
    step: int
    applies_at_epoch: int
    auto: bool = False  # asked for by --auto-accum (the noise scale's suggestion), not by a key


@dataclass(frozen=True, kw_only=True)
class AccumChangeApplied:
    old: int
    new: int
    epoch: int  # first epoch that uses the new value
    step: int  # last optimizer step before the change


@dataclass(frozen=True, kw_only=True)
class Paused:
    epoch: int
    step: int


@dataclass(frozen=True, kw_only=True)
class Resumed:
    epoch: int
    step: int


@dataclass(frozen=True, kw_only=True)
class CheckpointSaved:
    kind: str  # "latest" or "best"
    path: str
    step: int
    epoch: int
    seconds: float
    requested: bool = False  # asked for (`s`, a viewer, the control socket's "save"): the faces confirm it
    # saved while paused inside a step's window: the micro-steps of step + 1 done then, which a resume redoes
    redone_micro_steps: int = 0

    def saved_words(self) -> str:
        """``saved latest checkpoint at step 23 (0.03s)``, as the log and the app's toast say it."""
        return f"saved {self.kind} checkpoint at step {self.step} ({self.seconds:.2f}s)"

    def redone_words(self) -> str:
        """``a resume redoes step 24 (3 micro-steps in)`` (the app's toast, the log, a viewer); "" for
        a save at a step's end."""
        done = self.redone_micro_steps
        if not done:
            return ""
        return f"a resume redoes step {self.step + 1} ({done} micro-step{'s' if done != 1 else ''} in)"


@dataclass(frozen=True, kw_only=True)
class CheckpointFailed:
    kind: str
    message: str


@dataclass(frozen=True, kw_only=True)
class DataPreparing:
    """Before the run starts: the data is being prepared (text_source.Progress, as plain figures)."""

    phase: str  # "fingerprint", "checking", "vocabulary", "training tokenizer", "tokenizing", "verifying cache"
    fraction: float  # of this phase, 0..1
    total_bytes: int
    mb_per_s: float


@dataclass(frozen=True, kw_only=True)
class Notice:
    message: str
    level: str = "info"  # info | warning | error


@dataclass(frozen=True, kw_only=True)
class RunEnded:
    reason: str  # completed | early_stop | interrupted | error
    epochs: int  # epochs completed
    steps: int
    tokens_seen: int
    best_val_loss: float | None
    best_epoch: int | None
    message: str = ""
    exit_signal: int | None = None
    diagnosis: str | None = None  # the last verdict of the run
    diagnosis_reason: str | None = None
    # --time-budget: the share of the last epoch trained when the budget ended the run (1.0: it ended
    # on an epoch's end); None for a run of --epochs (or a budget run that ended otherwise)
    last_epoch_share: float | None = None
    # the run's wall time at its end, earlier sessions included (what the app's clock showed); None in
    # records written before it was recorded
    elapsed_seconds: float | None = None

    def next_step(self, run_dir: str) -> str | None:
        """What to do with the model a run leaves (said by both faces at its end), or None."""
        if self.best_epoch is None or self.reason == "error":
            return None
        return f"write text with its best model: tui-trainer sample {run_dir}"


Event = (RunStarted | MicroStep | StepEvent | ValidationProgress | EpochEvent | SampleEvent | DiagnosisEvent
         | AccumChangeRequested | AccumChangeApplied | Paused | Resumed | CheckpointSaved | CheckpointFailed | Notice
         | DataPreparing | SplitChanged | RunEnded)


class Sink(Protocol):
    def emit(self, event: Event) -> None: ...


@dataclass
class ListSink:
    """Collects every event (tests, benchmarks)."""

    events: list = field(default_factory=list)

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class FanOut:
    def __init__(self, *sinks: Sink) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)


def as_record(event: Any) -> dict[str, Any]:
    return asdict(event)
