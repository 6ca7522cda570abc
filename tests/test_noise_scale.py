"""The gradient-noise-scale estimator against a problem whose answer is known in closed form.

Linear regression y = w*·x + e with x ~ N(0, I_d), e ~ N(0, s²) and the per-example loss
(w·x - y)²/2. At weights w (d = w - w*) the per-example gradient is (d·x - e) x, so
G = d, and E[g gᵀ] = (|d|² + s²) I + 2 d dᵀ, hence Σ = (|d|² + s²) I + d dᵀ:
|G|² = |d|², tr(Σ) = D (|d|² + s²) + |d|², B_simple = tr(Σ) / |G|².
"""

from __future__ import annotations

import math

import pytest
import torch

from tui_trainer.analysis.ema import BiasCorrectedEMA, smoothed
from tui_trainer.analysis.noise_scale import (
    NoiseScaleEstimator,
    WindowNorms,
    micro_sq_norm,
    small_batch_size,
    suggested_accum,
    window_estimates,
)

DIM, NOISE_STD = 16, 1.0


def regression_truth(delta: torch.Tensor) -> tuple[float, float]:
    grad_sq = float(delta.square().sum())
    return grad_sq, DIM * (grad_sq + NOISE_STD ** 2) + grad_sq


def regression_windows(delta: torch.Tensor, micro_sizes: list[int], windows: int,
                       seed: int) -> list[WindowNorms]:
    """``windows`` windows of fresh examples at fixed weights, split into micro-batches of
    ``micro_sizes``; each micro-batch's gradient is the mean of its per-example gradients."""
    gen = torch.Generator().manual_seed(seed)
    size = sum(micro_sizes)
    x = torch.randn(windows, size, DIM, generator=gen, dtype=torch.float64)
    e = NOISE_STD * torch.randn(windows, size, generator=gen, dtype=torch.float64)
    per_example = ((x @ delta) - e).unsqueeze(-1) * x  # (windows, size, DIM)
    micro = [chunk.mean(dim=1) for chunk in per_example.split(micro_sizes, dim=1)]
    micro_sq = torch.stack([m.square().sum(-1) for m in micro], dim=1)  # (windows, micro-batches)
    window_sq = per_example.mean(dim=1).square().sum(-1)
    return [WindowNorms(tuple(micro_sizes), tuple(micro_sq[w].tolist()), float(window_sq[w]))
            for w in range(windows)]


def delta_of(grad_sq: float) -> torch.Tensor:
    direction = torch.ones(DIM, dtype=torch.float64) / math.sqrt(DIM)
    return direction * math.sqrt(grad_sq)


@pytest.mark.parametrize("grad_sq, accum", [(0.5, 8), (0.05, 16)])
def test_smoothed_noise_scale_is_within_30_percent_of_the_truth(grad_sq, accum):
    """B_simple 49 with an effective batch of 64, and 337 with 128 (the estimate is noisier the
    further the effective batch is below the noise scale)."""
    delta = delta_of(grad_sq)
    true_grad_sq, true_trace = regression_truth(delta)
    truth = true_trace / true_grad_sq
    estimator = NoiseScaleEstimator()
    for norms in regression_windows(delta, [8] * accum, windows=400, seed=1):
        estimator.update(norms)
    assert estimator.noise_scale == pytest.approx(truth, rel=0.30)
    # and the suggestion is the power of two nearest truth / micro-batch
    assert estimator.suggestion(8) == suggested_accum(truth, 8)


def test_estimates_are_unbiased_over_many_windows():
    delta = delta_of(0.2)
    true_grad_sq, true_trace = regression_truth(delta)
    estimates = torch.tensor([window_estimates(n) for n in regression_windows(delta, [4] * 8, 4000, seed=7)])
    mean, stderr = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    assert abs(float(mean[0]) - true_grad_sq) < 4 * float(stderr[0])
    assert abs(float(mean[1]) - true_trace) < 4 * float(stderr[1])
    # A biased estimator would fail: the naive |G_big|² overshoots |G|² by tr(Σ)/B_big.
    naive = torch.tensor([n.window_sq_norm for n in regression_windows(delta, [4] * 8, 4000, seed=7)])
    assert float(naive.mean()) - true_grad_sq > 4 * float(naive.std() / math.sqrt(len(naive)))


@pytest.mark.parametrize("micro_sizes", [[2] * 16, [8] * 4, [16] * 2, [10, 10, 10, 2]])
def test_estimates_do_not_depend_on_how_the_window_is_split(micro_sizes):
    """The same effective batch of 32, cut into micro-batches four ways (one with a short last
    micro-batch): each split's mean estimates match the truth; the window's norm is the same."""
    delta = delta_of(0.2)
    true_grad_sq, true_trace = regression_truth(delta)
    windows = regression_windows(delta, micro_sizes, 4000, seed=3)
    estimates = torch.tensor([window_estimates(n) for n in windows])
    mean, stderr = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    assert abs(float(mean[0]) - true_grad_sq) < 4 * float(stderr[0])
    assert abs(float(mean[1]) - true_trace) < 4 * float(stderr[1])
    one_piece = regression_windows(delta, [32], 4000, seed=3)
    assert [n.window_sq_norm for n in windows] == pytest.approx([n.window_sq_norm for n in one_piece], rel=1e-9)


def test_a_window_of_one_micro_batch_gives_no_estimate():
    estimator = NoiseScaleEstimator(settle=1)
    assert not estimator.update(WindowNorms((16,), (1.0,), 1.0))
    assert estimator.noise_scale is None and estimator.suggestion(16) is None
    assert not estimator.update(WindowNorms((8, 8), (1.0, float("nan")), 1.0))  # a skipped step
    assert estimator.estimates == 0


def test_noise_scale_waits_to_settle_and_survives_a_checkpoint():
    delta = delta_of(0.5)
    estimator = NoiseScaleEstimator(settle=10)
    windows = regression_windows(delta, [8] * 4, 12, seed=2)
    for norms in windows[:9]:
        estimator.update(norms)
    assert estimator.noise_scale is None and estimator.raw_noise_scale() is not None
    copy = NoiseScaleEstimator(settle=10)
    copy.load_state_dict(estimator.state_dict())
    for norms in windows[9:]:
        estimator.update(norms)
        copy.update(norms)
    assert estimator.noise_scale is not None and copy.noise_scale == estimator.noise_scale


def test_suggested_accum_is_the_nearest_power_of_two_in_range():
    assert suggested_accum(310, micro_batch=16) == 16  # 19.4 -> 16
    assert suggested_accum(400, micro_batch=16) == 32  # 25 -> 32 (nearer in ratio)
    assert suggested_accum(310, micro_batch=16, processes=2) == 8
    assert suggested_accum(3.0, micro_batch=16) == 1
    assert suggested_accum(1e9, micro_batch=1) == 1024
    assert suggested_accum(float("nan"), micro_batch=16) == 1


def test_micro_gradient_is_rescaled_from_the_windows_token_share():
    # a micro-batch of 100 tokens in a window of 400 added a quarter of its mean-loss gradient
    assert micro_sq_norm(increment_sq_norm=1.0, window_tokens=400, micro_tokens=100) == 16.0
    assert small_batch_size([8, 8, 8]) == 8 and small_batch_size([10, 10, 10, 2]) == pytest.approx(4 / 0.8)


def test_bias_corrected_ema_starts_at_the_first_value_and_follows_a_constant():
    assert smoothed([4.0, 4.0, 4.0], beta=0.9) == pytest.approx([4.0, 4.0, 4.0])
    values = smoothed([10.0, 2.0], beta=0.9)
    assert values[0] == pytest.approx(10.0)  # an uncorrected EMA from 0 would say 1.0
    assert values[1] == pytest.approx((0.9 * 0.1 * 10 + 0.1 * 2) / (1 - 0.81))
    ema = BiasCorrectedEMA(0.9)
    assert ema.value is None
    ema.update(3.0), ema.update(float("nan"))
    assert ema.value == pytest.approx(3.0)  # a NaN step is left out, not spread over later points


def test_window_norms_from_the_engines_increments():
    # micro-batches of 8, 8 and 4 sequences: each added (its size / 20) of its mean-loss gradient
    norms = WindowNorms.from_increments([8, 8, 4], [0.16, 0.64, 0.04], window_sq_norm=0.5)
    assert norms.micro_sq_norms == pytest.approx((1.0, 4.0, 1.0))
    assert norms.window_size == 20 and norms.window_sq_norm == 0.5


def test_the_stated_error_matches_the_spread_of_the_estimate():
    """Many independent runs of the same regression: the noise scales they end at spread as much as
    each one's own stated relative error says (the confidence behind 'suggests accum N')."""
    delta = delta_of(0.3)
    finals, stated = [], []
    for seed in range(40):
        estimator = NoiseScaleEstimator(settle=1)
        for norms in regression_windows(delta, [8] * 4, 60, seed=100 + seed):
            estimator.update(norms)
        finals.append(estimator.noise_scale)
        stated.append(estimator.relative_error())
    values = torch.tensor(finals)
    observed = float(values.std() / values.mean())
    claimed = sum(stated) / len(stated)
    assert 0.5 * observed < claimed < 2.0 * observed, (observed, claimed)


def test_the_error_shrinks_as_windows_come_in_and_gates_the_suggestion():
    delta = delta_of(0.3)
    estimator = NoiseScaleEstimator(settle=5)
    windows = regression_windows(delta, [8] * 4, 400, seed=7)
    errors = []
    for i, norms in enumerate(windows):
        estimator.update(norms)
        if i in (9, 99, 399):
            errors.append(estimator.relative_error())
    assert errors[0] > errors[1] > errors[2]
    assert estimator.actionable() == (errors[2] <= 0.33)
    copy = NoiseScaleEstimator(settle=5)
    copy.load_state_dict(estimator.state_dict())
    assert copy.relative_error() == estimator.relative_error()
    old = estimator.state_dict()
    del old["grad_sq_squared"], old["trace_squared"]  # a checkpoint from before the spread was kept
    older = NoiseScaleEstimator(settle=5)
    older.load_state_dict(old)
    assert older.relative_error() is None and not older.actionable()


def test_windows_that_can_estimate_are_those_of_two_or_more_micro_batches():
    from tui_trainer.analysis.noise_scale import estimating_windows

    # 9 micro-batches of 4, accum 2: windows 2,2,2,2,1 -> four estimate, the last (one micro-batch) not
    assert estimating_windows(36, 4, 2) == 4
    assert estimating_windows(33, 4, 2) == 4  # (a short last micro-batch still counts as one)
    assert estimating_windows(12, 4, 2) == 1  # windows 2,1
    assert estimating_windows(16, 4, 4) == 1  # one step an epoch, of four micro-batches: one estimate
    assert estimating_windows(4, 4, 2) == 0  # an epoch of one micro-batch: never
    assert estimating_windows(36, 4, 1) == 0  # accum 1: never
    assert estimating_windows(0, 4, 2) == 0
