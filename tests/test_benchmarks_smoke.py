"""The benchmark scripts still run: each one with --quick (a tiny model), as a user would run it.

These check that the scripts work and print their tables, not the figures themselves:
figures are ratios measured on a quiet machine (benchmarks/README.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


CHECK_FAILED, NOTHING_MEASURED = 1, 3  # benchmarks/_common.py


def run_script(script: str, tmp_path: Path, timeout: float, *extra: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", *extra], capture_output=True,
                          text=True, timeout=timeout, env=env,
                          cwd=tmp_path)  # anywhere: the scripts must not depend on the working directory


def run_quick(script: str, tmp_path: Path, timeout: float, *extra: str) -> str:
    done = run_script(script, tmp_path, timeout, *extra)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


# Each expected text is printed only when the script measured (and, where it checks something,
# when the check passed): a label printed whatever the result would prove nothing.
@pytest.mark.parametrize("script, expected", [
    ("throughput.py", "engine/plain"),
    pytest.param("memory.py", "same update: max relative difference of the weight change after 1 steps", marks=pytest.mark.slow),  # (~20-50 s: the slow step runs it)
    ("memory_fit.py", "every chosen micro-batch measured under its budget"),
    ("equivalence.py", "every split is within it"),
    pytest.param("accumulation_payoff.py", "mean final val loss", marks=pytest.mark.slow),  # (~20-50 s: the slow step runs it)
    ("optimizer_step.py", "median vs fused"),
    ("profile_overhead.py", "us per step"),
    # The two tmux benchmarks run a real app for minutes: in the slow step (`pytest -m slow`).
    pytest.param("key_latency.py", "all keys: p95 ", marks=pytest.mark.slow),
    pytest.param("ui_overhead.py", "vs no-ui per round", marks=pytest.mark.slow),
    ("threads.py", "threads + UI load"),
    ("diagnosis.py", "goals met"),
    ("sampling.py", "speed-up"),
    ("noise_scale.py", "time inside the hook"),
    ("noise_scale_payoff.py", "to auto's final"),
    ("precision.py", "bf16 qualifies"),
    ("precision_crossover.py", "rule agrees with the measurement on"),
    ("cpu_attention.py", "attention in fp32 under bf16 autocast"),
    ("autocast_cache.py", "cast once per window: the same gradients bit for bit"),
    pytest.param("scaling.py", "one all-reduce round per step", marks=pytest.mark.slow),  # (~20-50 s: the slow step runs it)
    pytest.param("sum_after_window.py", "after/ddp: what summing after the window", marks=pytest.mark.slow),  # (~20 s)
    ("hf_export.py", "exported: every folder written"),
    pytest.param("hf_finetune.py", "fine-tuned and exported back", marks=pytest.mark.slow),  # (~20-50 s: the slow step runs it)
    pytest.param("time_to_loss.py", "(its defaults): wall", marks=pytest.mark.slow),  # (~20-50 s: the slow step runs it)
])
def test_benchmark_script_runs_quick_and_prints_its_figures(script, expected, tmp_path):
    if script in ("key_latency.py", "ui_overhead.py") and shutil.which("tmux") is None:
        pytest.skip("needs tmux (the no-tmux path has its own test)")
    out = run_quick(script, tmp_path, timeout=600 if script in ("key_latency.py", "ui_overhead.py") else 240)
    assert expected in out
    assert "nothing measured" not in out and "FAILED" not in out


@pytest.mark.slow  # (~9 s: the slow step runs it, beside the benchmark's own smoke run)
def test_memory_benchmark_exits_1_when_the_same_update_check_fails(tmp_path):
    # A tolerance no fp32 pair of runs in another summation order meets: the check must fail loudly.
    done = run_script("memory.py", tmp_path, 120, "--tolerance", "1e-12")
    assert done.returncode == CHECK_FAILED, done.stdout[-2000:] + done.stderr[-2000:]
    assert "FAILED: above the tolerance" in done.stdout


@pytest.mark.slow  # (~7 s: the slow step runs it)
def test_scaling_benchmark_exits_1_when_a_step_all_reduces_more_than_once(tmp_path):
    # Its workers sum the gradients twice a step, as a loop that summed inside the window would: the check must fail.
    done = run_script("scaling.py", tmp_path, 240, "--configs", "b", "--break-one-round")
    assert done.returncode == CHECK_FAILED, done.stdout[-2000:] + done.stderr[-2000:]
    assert "FAILED: not one all-reduce round per optimizer step" in done.stdout
    assert "one all-reduce round per step:" not in done.stdout


def _path_without_tmux(tmp_path: Path) -> dict[str, str]:
    """PATH with only a folder holding this Python: tmux cannot be found."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    return {**os.environ, "PATH": str(bin_dir)}


@pytest.mark.parametrize("script", ["key_latency.py", "ui_overhead.py"])
def test_a_tmux_benchmark_without_tmux_says_it_measured_nothing_and_exits_3(script, tmp_path):
    done = run_script(script, tmp_path, 60, env=_path_without_tmux(tmp_path))
    assert done.returncode == NOTHING_MEASURED, done.stdout[-2000:] + done.stderr[-2000:]
    assert "nothing measured: tmux not found" in done.stdout
    assert "all keys: p95 " not in done.stdout and "throughput ratio" not in done.stdout  # no figure


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA machine runs the check itself")
def test_the_gpu_check_without_cuda_says_it_measured_nothing_and_exits_3(tmp_path):
    done = run_script("gpu_check.py", tmp_path, 120)
    assert done.returncode == NOTHING_MEASURED, done.stdout[-2000:] + done.stderr[-2000:]
    assert "nothing measured: no CUDA device here" in done.stdout
    assert "tokens/s" not in done.stdout and "check" not in done.stdout.split("\n", 1)[-1]  # no table, no figure


@pytest.mark.slow
def test_compile_benchmark_runs_quick(tmp_path):
    assert "compiled/eager" in run_quick("compile_payoff.py", tmp_path, timeout=600)


@pytest.mark.slow
def test_data_scale_benchmark_runs_quick(tmp_path):
    # Four fresh processes (two tokenizers, a first and a cached start each): a minute, more on a busy box.
    out = run_quick("data_scale.py", tmp_path, timeout=600)
    assert "cached start" in out and "encode_batch alone" in out


def test_the_nanogpt_comparison_without_a_checkout_says_it_measured_nothing_and_exits_3(tmp_path):
    # (nanoGPT is the user's checkout, never fetched: without one there is nothing to compare)
    done = run_script("vs_nanogpt.py", tmp_path, 120, "--nanogpt", str(tmp_path / "no-such-checkout"))
    assert done.returncode == NOTHING_MEASURED, done.stdout + done.stderr
    assert "is not a nanoGPT checkout" in done.stdout and "nothing measured" in done.stdout
