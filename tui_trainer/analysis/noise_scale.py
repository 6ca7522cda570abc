"""The gradient noise scale: how big a batch is worth its cost, estimated from gradient norms.

McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training" (2018): the simple
noise scale B_simple = tr(Σ) / |G|² (Σ: the per-example gradient covariance, G: the true gradient)
predicts the critical batch size. Far below it each step is mostly noise (more steps than needed);
far above it extra examples barely improve a step (compute wasted).

Their Appendix A estimates both terms without bias from the squared norms of gradients at two
batch sizes, and accumulation gives both for free: each micro-batch's own gradient (B_small) and
the window's (B_big). E|G_B|² = |G|² + tr(Σ)/B, so

    |G|²  ≈ (B_big |G_big|² - B_small |G_small|²) / (B_big - B_small)
    tr(Σ) ≈ (|G_small|² - |G_big|²) / (1/B_small - 1/B_big)

Each window's estimates are noisy (|G|² may even come out negative), so both are smoothed over
steps (a bias-corrected EMA) and B_simple is the ratio of the smoothed values, not a mean of
per-step ratios (a ratio of noisy values is biased and heavy-tailed).

Units: an example is one *sequence* of block_size tokens (the data's unit; tokens within a sequence
are correlated, sequences are drawn independently), so B_simple is in sequences and the suggestion
is in accumulation steps: accum = B_simple / (micro_batch x processes), to a power of two.
A window of one micro-batch has no second batch size: it gives no estimate.

Pure functions over norms; the engine measures the norms (accumulation.py, GradientIncrements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from tui_trainer.analysis.ema import BiasCorrectedEMA
from tui_trainer.config import ACCUM_MAX

# Smoothing of the per-window estimates: a memory of ~50 optimizer steps (about an epoch of the
# default run). At 0.95 the smoothed ratio was off by more than 30% in a third of the regression
# runs whose effective batch was a fifth of the noise scale (tests/test_noise_scale.py); at 0.98,
# in a fifteenth.
EMA_BETA = 0.98
SETTLE_ESTIMATES = 20  # windows folded in before the estimate is shown (the first ones are noisy)
# A suggestion is shown only once the estimate's own standard error is within this share of it:
# with a third either way, the nearest power of two of the suggested accumulation is at most one off.
ACTIONABLE_ERROR = 0.33


@dataclass(frozen=True)
class WindowNorms:
    """What one optimizer window measured: every micro-batch's gradient and the window's."""

    micro_sizes: tuple[int, ...]  # sequences in each micro-batch (the last may be short)
    micro_sq_norms: tuple[float, ...]  # |g_i|² of each micro-batch's mean-loss gradient
    window_sq_norm: float  # |G|² of the window's mean-loss gradient, before clipping

    @property
    def window_size(self) -> int:
        return sum(self.micro_sizes)

    @classmethod
    def from_increments(cls, micro_sizes: Sequence[int], increment_sq_norms: Sequence[float],
                        window_sq_norm: float) -> "WindowNorms":
        """From what the engine measures: each micro-step's increment to the accumulated gradient
        (accumulation.GradientIncrements) and the window's gradient norm, squared. Every sequence
        has the same number of tokens, so the token shares are the sequence shares."""
        window = sum(micro_sizes)
        return cls(tuple(micro_sizes), tuple(micro_sq_norm(sq, window, size)
                                             for sq, size in zip(increment_sq_norms, micro_sizes)), window_sq_norm)


def micro_sq_norm(increment_sq_norm: float, window_tokens: int, micro_tokens: int) -> float:
    """The squared norm of a micro-batch's mean-loss gradient, from the increment it added to the
    accumulated gradient: that increment is its summed loss over the *window's* tokens
    (accumulation.py), i.e. its mean-loss gradient x micro_tokens / window_tokens."""
    return increment_sq_norm * (window_tokens / micro_tokens) ** 2


def small_batch_size(micro_sizes: Sequence[int]) -> float:
    """The B_small that makes the mean of the micro-batches' squared norms unbiased when they
    differ in size (a short last micro-batch): E mean_i |g_i|² = |G|² + tr(Σ) mean_i(1/b_i),
    so B_small is the harmonic mean. Equal sizes give the micro-batch itself."""
    return len(micro_sizes) / sum(1.0 / b for b in micro_sizes)


def unbiased_estimates(b_small: float, b_big: float, small_sq_norm: float,
                       big_sq_norm: float) -> tuple[float, float]:
    """(|G|², tr(Σ)) from the mean squared norm at B_small and the squared norm at B_big
    (Appendix A of McCandlish et al.). Needs b_big > b_small."""
    grad_sq = (b_big * big_sq_norm - b_small * small_sq_norm) / (b_big - b_small)
    trace = (small_sq_norm - big_sq_norm) / (1.0 / b_small - 1.0 / b_big)
    return grad_sq, trace


def window_estimates(norms: WindowNorms) -> tuple[float, float] | None:
    """One window's (|G|², tr(Σ)), or None: a window of one micro-batch has no second batch size,
    and non-finite norms (a skipped step) say nothing."""
    if len(norms.micro_sizes) < 2:
        return None
    values = (*norms.micro_sq_norms, norms.window_sq_norm)
    if not all(math.isfinite(v) for v in values):
        return None
    b_small = small_batch_size(norms.micro_sizes)
    small = sum(norms.micro_sq_norms) / len(norms.micro_sq_norms)
    return unbiased_estimates(b_small, float(norms.window_size), small, norms.window_sq_norm)


def estimating_windows(examples_per_epoch: int, micro_batch: int, accum: int) -> int:
    """Windows in an epoch that give an estimate: those of two or more micro-batches (an epoch's
    micro-batches fill windows of ``accum`` in turn; its last window holds the rest). 0: the
    estimate can never settle at these sizes (accum 1, or an epoch of one micro-batch)."""
    if accum < 2 or micro_batch < 1 or examples_per_epoch < 1:
        return 0
    full, rest = divmod(-(-examples_per_epoch // micro_batch), accum)
    return full + (1 if rest >= 2 else 0)


def noise_scale_words(scale: float) -> str:
    """The estimate in words, on every screen and in the log alike. Two significant figures: the estimate is not better than that (310, 1,200, 45)."""
    rounded = float(f"{scale:.2g}")
    return f"{rounded:,.0f}" if rounded >= 10 else f"{rounded:.2g}"


def noise_error_words(error: float | None) -> str:
    """±20% (to 5%: the error of an error is large); "" when the records carry none (older runs)."""
    return "" if error is None else f" ±{5 * round(100 * error / 5):.0f}%"


def actionable(relative_error: float | None) -> bool:
    """A suggestion worth acting on: the estimate's standard error within ``ACTIONABLE_ERROR`` of it."""
    return relative_error is not None and relative_error <= ACTIONABLE_ERROR


def suggested_accum(noise_scale: float, micro_batch: int, processes: int = 1) -> int:
    """The power of two nearest (in ratio) to the accumulation whose effective batch is the noise
    scale, in 1..ACCUM_MAX (the accumulation a run may use)."""
    wanted = noise_scale / (micro_batch * processes)
    if not wanted > 1.0:  # also NaN
        return 1
    return int(min(ACCUM_MAX, 2 ** round(math.log2(wanted))))


class NoiseScaleEstimator:
    """Feeds on ``WindowNorms``, one per optimizer step; smooths |G|² and tr(Σ) separately."""

    def __init__(self, beta: float = EMA_BETA, settle: int = SETTLE_ESTIMATES) -> None:
        self.settle = settle
        self.grad_sq = BiasCorrectedEMA(beta)
        self.trace = BiasCorrectedEMA(beta)
        # second moments of the per-window estimates: the spread behind the smoothed values
        self.grad_sq_squared = BiasCorrectedEMA(beta)
        self.trace_squared = BiasCorrectedEMA(beta)

    @property
    def estimates(self) -> int:
        """Windows folded in so far."""
        return self.grad_sq.count

    def update(self, norms: WindowNorms) -> bool:
        """Fold in one window; False when it gave no estimate (one micro-batch, non-finite)."""
        estimate = window_estimates(norms)
        if estimate is None:
            return False
        self.grad_sq.update(estimate[0])
        self.trace.update(estimate[1])
        self.grad_sq_squared.update(estimate[0] ** 2)
        self.trace_squared.update(estimate[1] ** 2)
        return True

    def relative_error(self) -> float | None:
        """The standard error of the noise scale as a share of it (0.25: ±25%), from the spread of
        the per-window estimates behind each smoothed term (the delta method on the ratio:
        relative errors add in quadrature). None before two windows or without a scale."""
        n = self.grad_sq_squared.count
        if n < 2 or self.raw_noise_scale() is None:
            return None
        beta = self.grad_sq_squared.beta
        # windows the EMA's weights are worth: (sum w)^2 / sum w^2 of w_i = beta^(n-i)
        effective = (1 - beta ** n) ** 2 * (1 + beta) / ((1 - beta) * (1 - beta ** (2 * n)))
        squared_error = 0.0
        for mean, second in ((self.grad_sq, self.grad_sq_squared), (self.trace, self.trace_squared)):
            value, spread = mean.value, second.value
            if value is None or spread is None or value == 0:
                return None
            variance = max(0.0, spread - value * value)
            squared_error += variance / effective / (value * value)
        return math.sqrt(squared_error)

    def actionable(self) -> bool:
        """Settled, and known well enough to act on (``ACTIONABLE_ERROR``)."""
        return self.noise_scale is not None and actionable(self.relative_error())

    def raw_noise_scale(self) -> float | None:
        """tr(Σ)/|G|² of the smoothed values, settled or not; None while there is none or while
        the smoothed |G|² is not positive (the noise hides the gradient: no finite scale)."""
        grad_sq, trace = self.grad_sq.value, self.trace.value
        if grad_sq is None or trace is None or grad_sq <= 0 or trace < 0:
            return None
        return trace / grad_sq

    @property
    def noise_scale(self) -> float | None:
        """B_simple in sequences, once ``settle`` windows are in; None before (or none at all)."""
        return self.raw_noise_scale() if self.estimates >= self.settle else None

    def suggestion(self, micro_batch: int, processes: int = 1) -> int | None:
        scale = self.noise_scale
        return None if scale is None else suggested_accum(scale, micro_batch, processes)

    def state_dict(self) -> dict[str, Any]:
        return {"grad_sq": [self.grad_sq.raw, self.grad_sq.count], "trace": [self.trace.raw, self.trace.count],
                "grad_sq_squared": [self.grad_sq_squared.raw, self.grad_sq_squared.count],
                "trace_squared": [self.trace_squared.raw, self.trace_squared.count]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.grad_sq.raw, self.grad_sq.count = state["grad_sq"]
            self.trace.raw, self.trace.count = state["trace"]
            # (checkpoints from before the spread was kept: it is measured afresh from here)
            self.grad_sq_squared.raw, self.grad_sq_squared.count = state.get("grad_sq_squared", [0.0, 0])
            self.trace_squared.raw, self.trace_squared.count = state.get("trace_squared", [0.0, 0])
