"""The arithmetic of gpu_check.py's `memory wall` rows (benchmarks/_memory_wall.py), which only a CUDA card
runs: the budget from the first probe, where the memory cap goes, the losses' comparison. Pure, so
tested here; and without CUDA the rows measure nothing (exit 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tui_trainer.engine.memory_fit import MARGIN, candidates

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
GB = 10 ** 9


@pytest.fixture(scope="module")
def wall():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))  # (the benchmarks import their helpers from their own folder)
        import _memory_wall

        yield _memory_wall


def _engine_choice(need, batch: int, budget: int) -> int:
    """What memory_fit.fit_micro_batch takes on a card: the largest candidate whose projection is
    under the budget less the margin (``need(micro_batch)``: the projection)."""
    return next(m for m in candidates(batch, 1) if need(m) <= budget * (1 - MARGIN))


def test_the_need_at_64_is_the_probe_plus_the_optimizer_state_scaled_from_a_smaller_probe(wall):
    assert wall.need_at(64, 64, 6 * GB, GB // 10) == 6 * GB + GB // 10
    assert wall.need_at(64, 16, 2 * GB, 0) == 8 * GB  # a card that could not hold 64: four times 16's
    with pytest.raises(ValueError):
        wall.need_at(64, 0, GB, 0)


@pytest.mark.parametrize("state_sequences", [0.0, 1.5, 10.9])
def test_the_budget_leaves_micro_batch_64_out_and_lets_auto_choose_16(wall, state_sequences):
    """Activations linear in the micro-batch (the probe's peak), the optimizer state fixed: at 40% of
    64's need, 32 never fits under the engine's margin and 16 does while the state is under ~11
    sequences' activations (the wall's model: ~1.5)."""
    per_sequence = 90 * 10 ** 6  # the wall model's, measured on the CPU (dropout 0)
    state = int(state_sequences * per_sequence)

    def need(micro_batch):
        return wall.need_at(micro_batch, 64, 64 * per_sequence, state)

    budget = wall.budget_from_probe(need(64))
    assert need(64) > budget and _engine_choice(need, 64, budget) == 16


def test_a_state_larger_than_eleven_sequences_would_push_auto_below_16(wall):
    per_sequence = 90 * 10 ** 6

    def need(micro_batch):
        return wall.need_at(micro_batch, 64, 64 * per_sequence, 12 * per_sequence)

    assert _engine_choice(need, 64, wall.budget_from_probe(need(64))) == 8  # (the row still passes: < 64)


def test_the_budget_share_is_a_share(wall):
    assert wall.budget_from_probe(10 * GB, 0.4) == 4 * GB
    for share in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            wall.budget_from_probe(10 * GB, share)


def test_the_cap_goes_between_what_the_half_and_the_whole_micro_batch_need(wall):
    cap = wall.cap_between(base=GB, need_small=GB, need_large=2 * GB, total=80 * GB)
    assert 2 * GB < cap.bytes < 3 * GB and cap.bytes == int(2.5 * GB)
    assert cap.fraction == pytest.approx(cap.bytes / (80 * GB))
    nearer = wall.cap_between(base=0, need_small=GB, need_large=2 * GB, total=80 * GB, at=0.25)
    assert nearer.bytes == int(1.25 * GB)


def test_no_cap_when_the_needs_are_too_close_or_the_card_too_small(wall):
    with pytest.raises(ValueError, match="no cap tells them apart"):
        wall.cap_between(base=0, need_small=int(1.95 * GB), need_large=2 * GB, total=80 * GB)
    with pytest.raises(ValueError, match="not under the card"):
        wall.cap_between(base=GB, need_small=GB, need_large=4 * GB, total=3 * GB)
    with pytest.raises(ValueError):
        wall.cap_between(base=0, need_small=GB, need_large=2 * GB, total=80 * GB, at=1.0)


def test_losses_match_within_the_tolerance_step_by_step(wall):
    assert wall.losses_match([4.0, 3.5], [4.0, 3.5]) == (True, 0.0)
    ok, worst = wall.losses_match([4.0, 3.5], [4.0, 3.5 * (1 + 5e-6)])
    assert ok and worst == pytest.approx(5e-6, rel=1e-3)
    assert not wall.losses_match([4.0, 3.5], [4.0, 3.5 * (1 + 2e-5)])[0]
    assert wall.losses_match([4.0], [4.0, 3.5]) == (False, float("inf"))  # a step missing is a failure
    assert not wall.losses_match([], [])[0]


def test_the_splits_are_told_as_runs(wall):
    assert wall._runs([(16, 4), (16, 4), (8, 8), (8, 8)]) == "16x4 x2, 8x8 x2"


def test_the_memory_wall_alone_without_cuda_measures_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--only", "memory wall"],
                          check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert "nothing measured: no CUDA device here" in done.stdout and "memory wall" not in done.stdout
