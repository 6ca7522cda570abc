"""Reading the loss curves: pure functions of the history → Diagnosis(kind, reason, remedy, since_epoch).

Each epoch is first read on its own (the *pattern*), then a verdict is kept or changed with
hysteresis, so that a noisy curve does not make the banner flip-flop. Thresholds live in
``DiagnosisConfig``; ``ln(vocab)`` is the loss of guessing uniformly ("chance").

Patterns, in the order they are checked:

1. **unstable** — a non-finite loss; a loss above ``spike_factor`` × chance (diverged); or, in
   the latest epoch, a step loss at least ``spike_jump`` nats above the median of the steps
   before it (2 or more, up to ``spike_window``, same epoch), or above ``spike_factor`` × that
   median and ``spike_min_rise`` nats above it (5 or more steps: late in a run 0.13 -> 0.26 is noise).
2. **overfitting** — val has risen away from its best: the best val is at least
   ``trend_epochs - 1`` epochs old, val is now more than ``val_margin`` above it, and train is
   below its value at that epoch; or, from epoch 2, a large gap: ``val / train - 1 > overfit_gap``.
3. **underfitting** — high (min(train, val) ≥ ``underfit_ratio`` × chance) and *flat*: train and
   val fell less than ``plateau_improvement`` (relative) in every epoch of the last
   ``trend_epochs``. Not while the lr is still warming up.
4. **learning** — high, but not flat (or too few epochs for a trend): still learning.
5. **converged** — below the high line but flat (train and val fell less than
   ``plateau_improvement`` in every epoch of the last ``trend_epochs``) while the schedule is in
   its tail (the lr has come ``schedule_tail`` of the way to its floor): the lr only falls from
   here, so the run has done what it can at this size and lr. Never without a known schedule.
6. **healthy** — anything else (below the high line, val not running away).

Hysteresis (``diagnose(..., previous=...)``): a verdict changes when

- the new pattern is **unstable** (at once), or is one whose own rule already spans the trend
  window: overfitting by trend, underfitting while the schedule is in its tail, converged (the lr
  only falls from there, so the plateau will not lift by itself);
- the current verdict no longer holds: overfitting stays while val is above its best and the
  gap has not closed; underfitting and converged stay while train falls less than
  ``plateau_improvement`` in the latest epoch (they never outlive a clearly falling loss);
- or the new pattern has held for ``confirm_epochs`` consecutive epochs.

An unstable verdict stays until another pattern is confirmed. Remedies depend on the state of
the run: the lr is suggested for an underfitting run only when it can plausibly be the cause
(peak reached, no instability so far, flat from the start); a schedule in its tail is named.

Separately, ``val_rise_warning`` fires when val loss rises *more than* ``val_rise_warning``
(5%) over the previous epoch; exactly 5% does not warn.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from tui_trainer.analysis.schedule import lr_at
from tui_trainer.config import DiagnosisConfig

KINDS = ("learning", "healthy", "converged", "underfitting", "overfitting", "unstable")

REMEDIES = {
    "learning": "keep training: the loss is still falling",
    "healthy": "keep training",
    "converged": "done at this size and lr: more data or a larger model, or stop",
    "underfitting": "a larger model (more layers or width), or more epochs",
    "overfitting": "more data or regularization (dropout, weight decay)",
    "unstable": "lower the learning rate; check gradient clipping",
}

PROBLEMS = ("converged", "underfitting", "overfitting", "unstable")  # verdicts whose reason says since when

MIN_STEPS_FOR_MEDIAN = 5  # the ratio test needs a steady median
MIN_STEPS_FOR_JUMP = 2  # a jump of a whole nat is clear against any two steps


@dataclass(frozen=True)
class SchedulePosition:
    """Where the learning-rate schedule stands when an epoch ends."""

    lr: float  # the learning rate now
    peak_lr: float  # the schedule's peak (--lr)
    min_lr: float  # its floor (--lr x min_lr_ratio)
    peak_reached: bool  # the warm-up is over (or the schedule ended inside it: a short budget plan)
    progress: float  # fraction of the run's planned tokens seen (0..1)

    @classmethod
    def at(cls, tokens_seen: int, peak_lr: float, min_lr: float, warmup_tokens: int,
           total_tokens: int, hold: float = 0.0, lr: float | None = None) -> "SchedulePosition":
        """``lr``: the rate the run trains at there, when it knows better than the plain schedule (a
        resume's anchor, a budget's plan: the run's own figure, so the remedy says what the run shows)."""
        lr = lr if lr is not None else lr_at(tokens_seen, peak_lr, min_lr, warmup_tokens, total_tokens, hold=hold)
        # A schedule that has ended is past its warm-up, even one that ended inside it (a --time-budget
        # plan shorter than the warm-up: the lr is at its floor there, not still rising).
        over = tokens_seen >= min(warmup_tokens, total_tokens)
        return cls(lr, peak_lr, min_lr, over, tokens_seen / max(1, total_tokens))

    def decayed(self) -> float:
        """How far the lr has come down from its peak towards its floor: 0 at the peak, 1 at the floor."""
        span = self.peak_lr - self.min_lr
        if not self.peak_reached or span <= 0:
            return 0.0
        return min(1.0, max(0.0, (self.peak_lr - self.lr) / span))

    def in_tail(self, tail: float) -> bool:
        return self.peak_reached and self.decayed() >= tail


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # learning | healthy | underfitting | overfitting | unstable
    reason: str
    remedy: str = ""  # "" = the kind's general remedy
    since_epoch: int | None = None  # the epoch this verdict's pattern began
    epoch: int | None = None  # the epoch it was made at (None: a live verdict within an epoch)
    pattern: str | None = None  # what the latest epoch alone showed (may differ: hysteresis)
    pattern_since: int | None = None  # the first of the consecutive epochs showing that pattern
    unstable_epoch: int | None = None  # the latest epoch that was unstable, if any

    def __post_init__(self) -> None:
        if not self.remedy:
            object.__setattr__(self, "remedy", REMEDIES.get(self.kind, REMEDIES["unstable"]))

    def to_state(self) -> dict[str, Any]:
        """For the checkpoint: a resumed run continues with the same verdict state."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: Any) -> "Diagnosis | None":
        """From ``to_state`` — or the ``[kind, reason]`` pair older checkpoints hold."""
        if not state:
            return None
        if isinstance(state, (list, tuple)):
            return cls(*state[:2])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in known})


@dataclass(frozen=True)
class _Pattern:
    """What one epoch shows on its own."""

    kind: str
    reason: str
    since: int  # the epoch this pattern began
    established: bool = False  # its rule already spans the evidence a change needs


def _fmt(values: Sequence[float]) -> str:
    return " -> ".join(f"{v:.2f}" for v in values)


def _falls(values: Sequence[float]) -> list[float]:
    """Relative fall of each epoch over the one before it (positive = better)."""
    return [(a - b) / a if a > 0 else 0.0 for a, b in zip(values, values[1:])]


def val_rise_warning(val_losses: Sequence[float], threshold: float = 0.05) -> str | None:
    """A warning when the last val loss is more than ``threshold`` above the previous one."""
    if len(val_losses) < 2:
        return None
    previous, current = val_losses[-2], val_losses[-1]
    if not (math.isfinite(previous) and math.isfinite(current)) or previous <= 0:
        return None
    # Rounded so that a rise of exactly 5% is not pushed over by float noise.
    rise = round((current - previous) / previous, 9)
    if rise > threshold:
        # One line of the banner at 80 columns (the verdict above it says what it means).
        return f"val loss rose {rise:.1%} in one epoch ({previous:.4f} -> {current:.4f}), more than {threshold:.0%}"
    return None


def spike_at(step_losses: Sequence[float], i: int, factor: float, window: int, step_number: int,
             min_rise: float = 0.0, jump: float = math.inf) -> str | None:
    """Why step ``i`` is a spike, or None: at least ``jump`` nats above the median of the (up to)
    ``window`` steps before it, or above ``factor`` × that median and ``min_rise`` above it."""
    recent = [v for v in step_losses[max(0, i - window):i] if math.isfinite(v)]
    if len(recent) < MIN_STEPS_FOR_JUMP:
        return None
    median = statistics.median(recent)
    loss = step_losses[i]
    rise = loss - median
    by_ratio = len(recent) >= MIN_STEPS_FOR_MEDIAN and median > 0 and loss > factor * median and rise >= min_rise
    if by_ratio or rise >= jump:
        ratio = f"{loss / median:.1f}x" if median > 0 else f"{rise:.2f} above"
        return f"step {step_number} loss {loss:.2f} is {ratio} the median {median:.2f} of the {len(recent)} steps before it"
    return None


def find_spike(step_losses: Sequence[float], factor: float, window: int, first_step: int = 1,
               min_rise: float = 0.0, jump: float = math.inf) -> str | None:
    """The first spike among ``step_losses`` (see ``spike_at``)."""
    for i in range(MIN_STEPS_FOR_JUMP, len(step_losses)):
        reason = spike_at(step_losses, i, factor, window, first_step + i, min_rise, jump)
        if reason:
            return reason
    return None


def step_verdict(step_losses: Sequence[float], vocab_size: int, cfg: DiagnosisConfig, first_step: int = 1) -> Diagnosis | None:
    """The live check after each optimizer step: is the newest step unstable? (None = nothing to say)."""
    if not step_losses:
        return None
    i, loss = len(step_losses) - 1, step_losses[-1]
    step = first_step + i
    if not math.isfinite(loss):
        return Diagnosis("unstable", f"step {step} loss is {loss}: update skipped")
    chance = math.log(vocab_size) if vocab_size > 1 else 1.0
    if loss > cfg.spike_factor * chance:
        return Diagnosis("unstable", f"step {step} loss {loss:.2f} is far above {chance:.2f}, the loss of "
                                     "guessing uniformly: training diverged")
    reason = spike_at(step_losses, i, cfg.spike_factor, cfg.spike_window, step, cfg.spike_min_rise, cfg.spike_jump)
    return Diagnosis("unstable", f"loss spike: {reason}") if reason else None


def _unstable(train: float, val: float, epoch: int, chance: float, cfg: DiagnosisConfig,
              step_losses: Sequence[float], first_step: int) -> str | None:
    for i, value in enumerate(step_losses):
        if not math.isfinite(value):
            return f"step {first_step + i} loss is {value}: training diverged"
    if not (math.isfinite(train) and math.isfinite(val)):
        return f"epoch {epoch} loss is not finite (train {train}, val {val})"
    worst = max([train, val, *step_losses])
    if worst > cfg.spike_factor * chance:
        return (f"loss {worst:.2f} is far above {chance:.2f}, the loss of guessing uniformly: training "
                f"diverged (epoch {epoch}: train {train:.2f}, val {val:.2f})")
    spike = find_spike(step_losses, cfg.spike_factor, cfg.spike_window, first_step, cfg.spike_min_rise, cfg.spike_jump)
    return f"loss spike: {spike}" if spike else None


def _pattern(train_losses: Sequence[float], val_losses: Sequence[float], chance: float, cfg: DiagnosisConfig,
             step_losses: Sequence[float], first_step: int, schedule: SchedulePosition | None) -> _Pattern:
    """What the latest epoch shows on its own (no memory of earlier verdicts)."""
    epoch = len(val_losses)
    train, val = train_losses[-1], val_losses[-1]
    unstable = _unstable(train, val, epoch, chance, cfg, step_losses, first_step)
    if unstable:
        return _Pattern("unstable", unstable, epoch, established=True)

    k = cfg.trend_epochs
    best = min(range(epoch), key=lambda i: val_losses[i])
    since_best = epoch - 1 - best
    if since_best >= k - 1 and val > val_losses[best] * (1 + cfg.val_margin) and train < train_losses[best]:
        return _Pattern("overfitting", f"val {_fmt([val_losses[best], val])} while train "
                                       f"{_fmt([train_losses[best], train])} (best val at epoch {best + 1})",
                        best + 2, established=True)
    if epoch >= 2 and train > 0 and val / train - 1 > cfg.overfit_gap:
        return _Pattern("overfitting", f"train {train:.2f} is far below val {val:.2f} "
                                       f"(gap {val / train - 1:.0%} > {cfg.overfit_gap:.0%})", epoch)

    high = min(train, val) >= cfg.underfit_ratio * chance
    if epoch < k:
        kind = "learning" if high else "healthy"
        if epoch == 1:
            return _Pattern(kind, f"epoch 1: train {train:.2f}, val {val:.2f}; a trend needs {k} epochs", 1)
        return _Pattern(kind, f"train {_fmt(train_losses)}, val {_fmt(val_losses)}", 1)
    recent_train, recent_val = train_losses[-k:], val_losses[-k:]
    train_falls, val_falls = _falls(recent_train), _falls(recent_val)
    flat = max(train_falls) < cfg.plateau_improvement and max(val_falls) < cfg.plateau_improvement
    warming_up = schedule is not None and not schedule.peak_reached
    if high and flat and not warming_up:
        tail = schedule is not None and schedule.in_tail(cfg.schedule_tail)
        return _Pattern("underfitting", f"high and flat over {k} epochs: train {_fmt(recent_train)}, "
                                        f"val {_fmt(recent_val)} (uniform guess = {chance:.2f})",
                        epoch - k + 2, established=tail)
    if flat and schedule is not None and schedule.in_tail(cfg.schedule_tail):  # (not high: underfitting is above)
        return _Pattern("converged", f"flat over {k} epochs with the lr in its tail ({schedule.lr:.1e}): "
                                     f"train {_fmt(recent_train)}, val {_fmt(recent_val)}",
                        epoch - k + 2, established=True)
    per_epoch = (recent_train[0] - recent_train[-1]) / recent_train[0] / (k - 1) if recent_train[0] > 0 else 0.0
    trend = f"train {_fmt(recent_train)} ({per_epoch:.1%}/epoch), val {_fmt(recent_val)}"
    return _Pattern("learning" if high else "healthy", trend, epoch)


def _still_holds(previous: Diagnosis, train_losses: Sequence[float], val_losses: Sequence[float],
                 cfg: DiagnosisConfig) -> bool:
    """Whether the previous verdict's own condition still holds at the latest epoch."""
    train, val = train_losses[-1], val_losses[-1]
    if previous.kind == "overfitting":
        new_best = val <= min(val_losses[:-1], default=math.inf)
        gap = train > 0 and val / train - 1 > cfg.overfit_gap
        return not new_best or gap
    if previous.kind in ("underfitting", "converged"):
        falls = _falls(train_losses[-2:])
        return not falls or falls[-1] < cfg.plateau_improvement
    return True


def _remedy(kind: str, train_losses: Sequence[float], val_losses: Sequence[float], cfg: DiagnosisConfig,
            schedule: SchedulePosition | None, unstable_epoch: int | None) -> str:
    """The remedy for the state of the run; one banner line at 80 columns (the budget is 68)."""
    epoch = len(val_losses)
    tail = schedule is not None and schedule.in_tail(cfg.schedule_tail)
    if kind == "overfitting":
        train, val = train_losses[-1], val_losses[-1]
        best = min(range(epoch), key=lambda i: val_losses[i])
        gap = f"{val / train - 1:.0%}" if train > 0 else "large"
        return f"more data or regularization ({epoch - 1 - best} epochs past the best val, gap {gap})"
    if kind == "underfitting":
        if unstable_epoch is not None:  # a plateau after a blow-up: the lr is too high, not too low
            return f"stuck since the instability at epoch {unstable_epoch}: lower the learning rate"
        if tail:  # the lr only falls from here: the plateau is the schedule's, the loss is the model's
            return f"schedule in its tail (lr {schedule.lr:.1e}): a larger model or a longer run"
        flat_from_start = (len(train_losses) >= 2 and train_losses[0] > 0 and
                           (train_losses[0] - train_losses[-1]) / train_losses[0] / (len(train_losses) - 1)
                           < cfg.plateau_improvement)
        if flat_from_start:  # at the peak lr (warm-up is never underfitting) and never unstable
            return "flat from epoch 1: a higher learning rate (--lr) or a larger model"
        return REMEDIES["underfitting"]
    if kind == "learning":
        if schedule is not None and not schedule.peak_reached:
            return f"keep training: the lr is still warming up ({schedule.lr:.1e} of {schedule.peak_lr:.1e})"
        if tail:
            return f"schedule in its tail (lr {schedule.lr:.1e}): a longer run would go further"
    if kind == "healthy" and tail:  # (both still fall at the floor: a longer run, not "keep training", is the word)
        return f"schedule in its tail (lr {schedule.lr:.1e}): a longer run would go further"
    return REMEDIES[kind]


def diagnose(train_losses: Sequence[float], val_losses: Sequence[float], vocab_size: int,
             cfg: DiagnosisConfig = DiagnosisConfig(), step_losses: Sequence[float] = (),
             first_step: int = 1, previous: Diagnosis | None = None,
             schedule: SchedulePosition | None = None) -> Diagnosis:
    """The verdict after the latest epoch of per-epoch train/val losses (oldest first).

    ``step_losses`` are the latest epoch's step losses, ``first_step`` the global number of the
    first of them. ``previous`` is the verdict after the epoch before (None: none yet), for the
    hysteresis; ``schedule`` where the lr schedule stands now (None: unknown).
    """
    if not train_losses or not val_losses:
        return Diagnosis("learning", "no epoch finished yet")
    epoch = len(val_losses)
    chance = math.log(vocab_size) if vocab_size > 1 else 1.0
    found = _pattern(train_losses, val_losses, chance, cfg, step_losses, first_step, schedule)
    continued = previous is not None and previous.pattern == found.kind and previous.pattern_since is not None
    pattern_since = previous.pattern_since if continued else epoch
    unstable_epoch = epoch if found.kind == "unstable" else (previous.unstable_epoch if previous else None)

    if previous is None or previous.kind == found.kind:
        kind = found.kind
        since = previous.since_epoch if previous is not None and previous.since_epoch else found.since
        changed_from = None
    elif (found.established or epoch - pattern_since + 1 >= cfg.confirm_epochs
          or not _still_holds(previous, train_losses, val_losses, cfg)):
        kind, since, changed_from = found.kind, (found.since if found.established else pattern_since), previous.kind
    else:
        kind, since, changed_from = previous.kind, previous.since_epoch, None

    if kind == found.kind:
        reason = found.reason
    else:  # held by hysteresis: say what this epoch showed
        reason = (f"train {_fmt(train_losses[-2:])}, val {_fmt(val_losses[-2:])}; "
                  f"{found.kind} if the next epoch agrees")
    if since is not None and since < epoch and (changed_from or kind in PROBLEMS):
        reason = f"since epoch {since}: {reason}"
    if changed_from is not None:
        reason = f"{reason} (was {changed_from})"
    return Diagnosis(kind, reason, _remedy(kind, train_losses, val_losses, cfg, schedule, unstable_epoch),
                     since, epoch, found.kind, pattern_since, unstable_epoch)


def verdicts_over(train_losses: Sequence[float], val_losses: Sequence[float], vocab_size: int,
                  cfg: DiagnosisConfig = DiagnosisConfig(), step_losses: Sequence[Sequence[float]] | None = None,
                  first_steps: Sequence[int] | None = None,
                  schedules: Sequence[SchedulePosition | None] | None = None) -> list[Diagnosis]:
    """The verdict after each epoch of a recorded run, as the engine makes them one by one."""
    verdicts: list[Diagnosis] = []
    previous = None
    for e in range(len(val_losses)):
        previous = diagnose(train_losses[: e + 1], val_losses[: e + 1], vocab_size, cfg,
                            step_losses[e] if step_losses else (), first_steps[e] if first_steps else 1,
                            previous, schedules[e] if schedules else None)
        verdicts.append(previous)
    return verdicts
