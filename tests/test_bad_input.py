"""Bad input of every kind is one line on stderr and exit code 2, with nothing created or left behind.

Grouped by class (issue 18): numbers with no sane upper bound, numbers a library rejects, OS errors
on the paths a user gives, empty strings, flags that contradict a resume, checkpoints whose CRC is
fine but whose contents do not fit. Each case runs the real CLI entry point (``main``) in-process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tui_trainer.cli import main
from tui_trainer.config import LIMITS, SEED_MAX, THREADS_PER_CORE_MAX, usable_cores

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--micro-batch", "4",
        "--accum", "2", "--threads", "1", "--limit-train-batches", "2", "--limit-val-batches", "1", "--epochs", "1"]


def left_behind(root: Path, keep: set[Path]) -> list[str]:
    """Every file or folder under ``root`` that the test did not put there itself."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p not in keep)


def run_bad(args: list[str], capsys, tmp_path: Path, keep: set[Path] = frozenset()) -> str:
    """Run the CLI; assert exit 2, one line on stderr, no traceback, nothing new under tmp_path."""
    before = set(tmp_path.rglob("*")) | set(keep)
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    assert left_behind(tmp_path, before) == []
    return lines[0]


# -- numbers with no sane upper bound, and numbers a library rejects ---------------------------

FLAG_OF = {"n_layer": "--n-layer", "n_embd": "--n-embd", "block_size": "--block-size", "micro_batch": "--micro-batch",
           "epochs": "--epochs", "checkpoint_every": "--checkpoint-every",
           "limit_train_batches": "--limit-train-batches", "limit_val_batches": "--limit-val-batches",
           "warmup_tokens": "--warmup-tokens", "max_bad_steps": "--max-bad-steps"}

TOO_BIG = {
    **{name: ([FLAG_OF[name], str(limit + 1)] + (["--n-head", "1"] if name == "n_embd" else []), FLAG_OF[name])
       for name, limit in LIMITS.items()},
    "threads 100000000 (segfaulted)": (["--threads", "100000000"], "--threads"),
    "threads a few times the cores": (["--threads", str(THREADS_PER_CORE_MAX * usable_cores() + 1)], "core"),
    "seed beyond torch.manual_seed": (["--seed", str(2**64)], "--seed"),
    "seed whose data-order seed overflows": (["--seed", str(2**63 - 1)], "--seed"),
    "seed just above the range": (["--seed", str(SEED_MAX + 1)], "--seed"),
    "negative seed": (["--seed", "-5"], "--seed"),
    "val split whose hint overflowed": (["--val-split", "5e-324"], "--val-split"),
    "val split too small for any file": (["--val-split", "1e-9"], "--val-split"),
}


@pytest.mark.parametrize("case", sorted(TOO_BIG))
def test_a_number_beyond_any_machine_is_refused_before_anything_is_created(case, small_corpus, tmp_path, capsys):
    extra, expected = TOO_BIG[case]
    line = run_bad(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"), *TINY, *extra],
                   capsys, tmp_path)
    assert expected in line


def test_the_largest_seed_in_range_trains(small_corpus, tmp_path, capsys):
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"), *TINY,
                 "--seed", str(SEED_MAX)]) == 0
