"""The benchmark scripts still run: each one with --quick (a tiny model), as a user would run it.

These check that the scripts work and print their tables, not the figures themselves:
figures are ratios measured on a quiet machine (benchmarks/README.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_quick(script: str, tmp_path: Path, timeout: float) -> str:
    path = BENCHMARKS / script
    done = subprocess.run([sys.executable, str(path), "--quick"], capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)  # anywhere: the scripts must not depend on the working directory
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.parametrize("script, expected", [
    ("throughput.py", "engine/plain"),
    ("memory.py", "same update"),
    ("equivalence.py", "every split is within it"),
    ("accumulation_payoff.py", "mean final val loss"),
    ("optimizer_step.py", "median vs fused"),
    ("profile_overhead.py", "us per step"),
    ("key_latency.py", "p95"),
    ("ui_overhead.py", "vs no-ui"),
    ("threads.py", "threads + UI load"),
    ("precision.py", "bf16 qualifies"),
])
def test_benchmark_script_runs_quick_and_prints_its_figures(script, expected, tmp_path):
    assert expected in run_quick(script, tmp_path, timeout=120)


@pytest.mark.slow
def test_compile_benchmark_runs_quick(tmp_path):
    assert "compiled/eager" in run_quick("compile_payoff.py", tmp_path, timeout=600)
