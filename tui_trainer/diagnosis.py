"""Reading the loss curves: a pure function of the history → Diagnosis(kind, reason, remedy).

The rules, in the order they are checked (thresholds live in ``DiagnosisConfig``):

1. **unstable** — a non-finite train/val/step loss, at once; a loss above ``spike_factor`` ×
   ln(vocab) (far worse than guessing uniformly: diverged); or, in the latest epoch, a step
   loss above ``spike_factor`` × the median of the up to ``spike_window`` steps before it in
   the same epoch (at least 5 are needed for a median) and at least ``spike_min_rise`` nats above
   it (late in a run, 0.13 -> 0.26 is 2x but noise).
2. **overfitting (trend)** — train falls while val rises: the best val loss is at least
   ``trend_epochs - 1`` epochs old, val is now above it, and train is below its value at
   that epoch (robust to a noisy val curve; "rose 3 epochs in a row" when it strictly did).
3. **overfitting (gap)** — from epoch 2 on, train far below val: ``val / train - 1 > overfit_gap``
   (epoch 1's train loss is an average over a model that was still learning, so it is not compared).
4. **underfitting** — after at least ``trend_epochs`` epochs, both losses are still *high*
   (at or above ``underfit_ratio`` × ln(vocab), the loss of guessing uniformly) and
   *barely move* (mean relative improvement per epoch over the last ``trend_epochs``
   epochs below ``plateau_improvement``), or are still within 10% of ln(vocab).
5. **healthy** — anything else (both losses falling, or a trend not yet established).

Separately, ``val_rise_warning`` fires when val loss rises *more than* ``val_rise_warning``
(5%) over the previous epoch; exactly 5% does not warn.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .config import DiagnosisConfig

REMEDIES = {
    "healthy": "keep training",
    "underfitting": "a larger model, more epochs, or a higher learning rate",
    "overfitting": "more data or regularization (dropout, weight decay); early stopping",
    "unstable": "lower the learning rate; check gradient clipping",
}

MIN_STEPS_FOR_MEDIAN = 5


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # healthy | underfitting | overfitting | unstable
    reason: str

    @property
    def remedy(self) -> str:
        return REMEDIES[self.kind]


def _fmt(values: Sequence[float]) -> str:
    return " -> ".join(f"{v:.2f}" for v in values)


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
             min_rise: float = 0.0) -> str | None:
    """Why step ``i`` is a spike (above ``factor`` × the median of the ``window`` steps before it,
    and at least ``min_rise`` above it), or None."""
    recent = [v for v in step_losses[max(0, i - window):i] if math.isfinite(v)]
    if len(recent) < MIN_STEPS_FOR_MEDIAN:
        return None
    median = statistics.median(recent)
    if median > 0 and step_losses[i] > factor * median and step_losses[i] - median >= min_rise:
        return (f"step {step_number} loss {step_losses[i]:.2f} is {step_losses[i] / median:.1f}x "
                f"the median {median:.2f} of the {len(recent)} steps before it")
    return None


def find_spike(step_losses: Sequence[float], factor: float, window: int,
               first_step: int = 1, min_rise: float = 0.0) -> str | None:
    """The first spike among ``step_losses`` (see ``spike_at``)."""
    for i in range(MIN_STEPS_FOR_MEDIAN, len(step_losses)):
        reason = spike_at(step_losses, i, factor, window, first_step + i, min_rise)
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
    reason = spike_at(step_losses, i, cfg.spike_factor, cfg.spike_window, step, cfg.spike_min_rise)
    return Diagnosis("unstable", f"loss spike: {reason}") if reason else None


def diagnose(train_losses: Sequence[float], val_losses: Sequence[float], vocab_size: int,
             cfg: DiagnosisConfig = DiagnosisConfig(), step_losses: Sequence[float] = (),
             first_step: int = 1) -> Diagnosis:
    """Diagnose per-epoch train/val losses (oldest first) and the latest epoch's step losses.

    ``first_step`` is the global number of ``step_losses[0]`` (for the reason string).
    """
    if not train_losses or not val_losses:
        return Diagnosis("healthy", "no epoch finished yet")
    epoch = len(val_losses)
    train, val = train_losses[-1], val_losses[-1]
    for i, value in enumerate(step_losses):
        if not math.isfinite(value):
            return Diagnosis("unstable", f"step {first_step + i} loss is {value}: training diverged")
    if not (math.isfinite(train) and math.isfinite(val)):
        return Diagnosis("unstable", f"epoch {epoch} loss is not finite (train {train}, val {val})")
    chance = math.log(vocab_size) if vocab_size > 1 else 1.0
    worst = max([train, val, *step_losses])
    if worst > cfg.spike_factor * chance:
        return Diagnosis("unstable", f"loss {worst:.2f} is far above {chance:.2f}, the loss of guessing "
                                     f"uniformly: training diverged (epoch {epoch}: train {train:.2f}, val {val:.2f})")
    spike = find_spike(step_losses, cfg.spike_factor, cfg.spike_window, first_step, cfg.spike_min_rise)
    if spike:
        return Diagnosis("unstable", f"loss spike: {spike}")

    k = cfg.trend_epochs
    best = min(range(len(val_losses)), key=lambda i: val_losses[i])
    since_best = len(val_losses) - 1 - best
    if since_best >= k - 1 and train < train_losses[best] and val > val_losses[best]:
        recent_val, recent_train = list(val_losses[-k:]), list(train_losses[-k:])
        if all(b > a for a, b in zip(recent_val, recent_val[1:])) and all(b < a for a, b in zip(recent_train, recent_train[1:])):
            return Diagnosis("overfitting", f"val loss rose {k} epochs in a row: {_fmt(recent_val)} "
                                            f"while train fell {_fmt(recent_train)}")
        return Diagnosis("overfitting", f"val loss has not improved for {since_best} epochs (best {val_losses[best]:.2f} "
                                        f"at epoch {best + 1}, now {val:.2f}) while train fell "
                                        f"{_fmt([train_losses[best], train])}")
    if len(val_losses) >= 2 and train > 0 and val / train - 1 > cfg.overfit_gap:
        return Diagnosis("overfitting", f"train loss {train:.2f} is far below val loss {val:.2f} "
                                        f"(gap {val / train - 1:.0%} > {cfg.overfit_gap:.0%})")

    if len(val_losses) >= k and len(train_losses) >= k:
        recent_val, recent_train = val_losses[-k:], train_losses[-k:]

        def improvement(values: Sequence[float]) -> float:
            return (values[0] - values[-1]) / values[0] / (len(values) - 1) if values[0] > 0 else 0.0

        high = min(train, val) >= cfg.underfit_ratio * chance
        flat = improvement(recent_train) < cfg.plateau_improvement and improvement(recent_val) < cfg.plateau_improvement
        near_chance = min(train, val) >= 0.9 * chance
        if (high and flat) or near_chance:
            why = "barely better than guessing" if near_chance else "barely moving"
            return Diagnosis("underfitting", f"losses stay high and {why} over {k} epochs: "
                                             f"train {_fmt(recent_train)}, val {_fmt(recent_val)} "
                                             f"(uniform guess = {chance:.2f})")

    if len(val_losses) >= 2:
        return Diagnosis("healthy", f"train {_fmt(train_losses[-2:])}, val {_fmt(val_losses[-2:])}")
    return Diagnosis("healthy", f"epoch 1: train {train:.2f}, val {val:.2f}; a trend needs {k} epochs")
