"""The heart of the method: an accumulated window's gradient equals the full batch's."""

from __future__ import annotations

import pytest
import torch

from tui_trainer.config import ModelConfig
from tui_trainer.data.dataset import WindowDataset, epoch_windows, plan_windows
from tui_trainer.engine.accumulation import GradientIncrements, WindowAborted, accumulate_window
from tui_trainer.model.gpt import GPT


def _setup(dtype: torch.dtype, dropout: float = 0.0):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=dropout, vocab_size=20)
    model = GPT(cfg).to(dtype)
    tokens = torch.randint(0, 20, (16 * 40 + 1,), generator=torch.Generator().manual_seed(1))
    return model, WindowDataset(tokens, 16)


def _full_batch_grads(model: GPT, data: WindowDataset, indices: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    inputs, targets = data.batch(indices)
    (model.loss_sum(inputs, targets) / targets.numel()).backward()
    return [p.grad.clone() for p in model.parameters()]


def _accumulated_grads(model: GPT, data: WindowDataset, indices: torch.Tensor, ranges) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    accumulate_window(model, data, indices, ranges)
    return [p.grad.clone() for p in model.parameters()]


def _max_relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).norm() / y.norm().clamp_min(1e-30)).item() for x, y in zip(a, b))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_full_window_gradient_matches_full_batch(dtype, tolerance):
    model, data = _setup(dtype)
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(2))[:32]
    ranges = plan_windows(32, micro_batch=8, accum=4)[0]
    assert len(ranges) == 4
    difference = _max_relative_difference(_accumulated_grads(model, data, indices, ranges),
                                           _full_batch_grads(model, data, indices))
    assert difference <= tolerance


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_remainder_window_with_uneven_micro_batches_matches_full_batch(dtype, tolerance):
    model, data = _setup(dtype)
    # Take 21 examples, micro 8 x accum 4: one window of three micro-batches (8, 8, 5).
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))[:21]
    ranges = plan_windows(21, micro_batch=8, accum=4)[0]
    assert [stop - start for start, stop in ranges] == [8, 8, 5]
    difference = _max_relative_difference(_accumulated_grads(model, data, indices, ranges),
                                           _full_batch_grads(model, data, indices))
    assert difference <= tolerance


def test_fixed_one_over_accum_scaling_would_be_wrong_for_a_remainder_window():
    """The check above can fail: the naive 1/accum scaling misses the full-batch gradient."""
    model, data = _setup(torch.float64)
    indices = torch.arange(21)
    ranges = plan_windows(21, micro_batch=8, accum=4)[0]
    model.zero_grad(set_to_none=True)
    for start, stop in ranges:
        inputs, targets = data.batch(indices[start:stop])
        (model.loss_sum(inputs, targets) / targets.numel() / len(ranges)).backward()
    naive = [p.grad.clone() for p in model.parameters()]
    assert _max_relative_difference(naive, _full_batch_grads(model, data, indices)) > 1e-3


def test_window_returns_summed_loss_and_token_count_without_syncing():
    model, data = _setup(torch.float32)
    indices = torch.arange(10)
    loss_total, tokens = accumulate_window(model, data, indices, [(0, 4), (4, 8), (8, 10)])
    assert tokens == 10 * 16
    assert isinstance(loss_total, torch.Tensor) and loss_total.requires_grad is False
    with torch.no_grad():
        inputs, targets = data.batch(indices)
        expected = model.loss_sum(inputs, targets)
    assert torch.allclose(loss_total, expected, rtol=1e-5)


def test_window_can_be_aborted_between_micro_steps():
    model, data = _setup(torch.float32)
    seen = []

    def between(i: int) -> bool:
        seen.append(i)
        return i < 1

    with pytest.raises(WindowAborted):
        accumulate_window(model, data, torch.arange(12), [(0, 4), (4, 8), (8, 12)], between_micro_steps=between)
    assert seen == [0, 1]


def test_plan_windows_covers_every_example_once_with_a_short_last_window():
    windows = plan_windows(45, micro_batch=4, accum=3)
    flat = [i for window in windows for start, stop in window for i in range(start, stop)]
    assert flat == list(range(45))
    assert all(len(w) == 3 for w in windows[:-1])
    assert [stop - start for start, stop in windows[-1]] == [4, 4, 1]  # 45 = 3 * 12 + 9


def test_a_window_names_its_examples():
    last = plan_windows(45, micro_batch=4, accum=3)[-1]
    assert (last.start, last.stop, last.examples, len(last)) == (36, 45, 9, 3)
    assert last.tokens(block_size=16) == 9 * 16


def test_epoch_windows_go_on_from_a_cursor_no_window_starts_at():
    """A resume with another world size: the cursor sits inside one of the new windows, so the
    windows from it are planned from the cursor (the steps before it keep their numbering)."""
    windows, first = epoch_windows(45, micro_batch=4, per_step=3, cursor=24)
    assert first == 2 and windows[first].start == 24  # on a window boundary: as planned
    windows, first = epoch_windows(45, micro_batch=4, per_step=3, cursor=28)
    assert [w.start for w in windows] == [0, 12, 24, 28, 40] and first == 3
    assert windows[-1].stop == 45
    assert epoch_windows(45, micro_batch=4, per_step=3, cursor=45)[1] == len(plan_windows(45, 4, 3))


@pytest.mark.parametrize("micro_batch, count", [(8, 32), (8, 21)])
def test_gradient_increments_are_each_micro_batch_own_gradient_and_change_nothing(micro_batch, count):
    """The noise-scale hook measures what each micro-step added (including a short last one) and
    leaves the accumulated gradient bit for bit as it was."""
    model, data = _setup(torch.float64)
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(4))[:count]
    ranges = plan_windows(count, micro_batch=micro_batch, accum=4)[0]
    window_tokens = count * data.block_size
    expected = []
    for start, stop in ranges:  # each micro-batch alone, with the window's 1/tokens scaling
        model.zero_grad(set_to_none=True)
        inputs, targets = data.batch(indices[start:stop])
        (model.loss_sum(inputs, targets) / window_tokens).backward()
        expected.append(sum(float(p.grad.square().sum()) for p in model.parameters()))
    plain = _accumulated_grads(model, data, indices, ranges)
    model.zero_grad(set_to_none=True)
    increments = GradientIncrements(model.parameters())
    accumulate_window(model, data, indices, ranges, increments=increments)
    assert [float(n) for n in increments.sq_norms] == pytest.approx(expected, rel=1e-9)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), plain))
    # a second window reuses the copy: still each micro-batch's own
    model.zero_grad(set_to_none=True)
    accumulate_window(model, data, indices, ranges, increments=increments)
    assert [float(n) for n in increments.sq_norms] == pytest.approx(expected, rel=1e-9)


def test_a_window_of_one_micro_batch_measures_no_increment():
    model, data = _setup(torch.float32)
    increments = GradientIncrements(model.parameters())
    accumulate_window(model, data, torch.arange(8), plan_windows(8, micro_batch=8, accum=1)[0],
                      increments=increments)
    assert increments.sq_norms == []
