"""Helpers shared by the benchmark scripts: the machine line, model presets, stats and tables.

Each script in this folder runs on its own (`python benchmarks/NAME.py`); this module sits
beside them and is found through the script's own folder on ``sys.path``.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch

from tui_trainer.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig

# Exit codes every benchmark uses: 0 measured (a performance target is a figure, reported as
# "meets"/"misses"), 1 a check failed (the same update, gradient equivalence, a key whose effect
# never showed), 3 nothing was measured (a tool it needs is missing, no sample could be taken).
CHECK_FAILED = 1
NOTHING_MEASURED = 3

# Named sizes the benchmarks share: the seed's configuration and a small one (issue 7), and
# a tiny one for --quick smoke runs.
PRESETS: dict[str, tuple[ModelConfig, int, int]] = {
    # name: (model, micro_batch, accum)
    "seed": (ModelConfig(n_layer=6, n_head=8, n_embd=256, block_size=128), 16, 8),
    "small": (ModelConfig(n_layer=4, n_head=8, n_embd=128, block_size=128), 8, 4),
    "tiny": (ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32), 4, 2),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_line(device: str = "cpu") -> str:
    """One line that says when and where the figures were taken."""
    where = f"{cpu_name()}, {cores()} cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name()} + {where}"
    load = f" | load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""  # others' work on a shared box
    return (f"{datetime.now():%Y-%m-%d %H:%M} | {where} | torch {torch.__version__} | "
            f"python {platform.python_version()} | {torch.get_num_threads()} torch threads{load}")


def run_config(preset: str, run_dir: str | Path, *, epochs: int = 1, train_batches: int | None = None,
               val_batches: int | None = 1, seed: int = 1337, threads: int | None = None, device: str = "cpu",
               dropout: float | None = None, micro_batch: int | None = None, accum: int | None = None,
               lr: float = 1e-3, compile: bool = False, data: str | None = None,
               precision: str = "fp32") -> RunConfig:
    """A RunConfig for the engine that does no early stopping, no mid-run checkpoints and no text
    samples after an epoch (the figures are of training; benchmarks/sampling.py measures generation),
    in fp32 unless told (the figures before --precision were fp32, and a benchmark says what it compares)."""
    model, preset_micro, preset_accum = PRESETS[preset]
    if dropout is not None:
        model = replace(model, dropout=dropout)
    train = TrainConfig(epochs=epochs, micro_batch=micro_batch or preset_micro, accum=accum or preset_accum,
                        seed=seed, device=device, threads=threads, patience=0, checkpoint_every=10**9,
                        compile=compile, sample_tokens=0, precision=precision)
    return RunConfig(model=model, data=DataConfig(path=data, limit_train_batches=train_batches,
                                                  limit_val_batches=val_batches),
                     optim=OptimConfig(lr=lr), train=train, run_dir=str(run_dir))


def scratch_dir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"tui-trainer-bench-{prefix}-")


def spread(values: list[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    return min(values), statistics.median(values), max(values)


def fmt_spread(values: list[float], spec: str = ",.0f") -> str:
    low, mid, high = spread(values)
    return f"{low:{spec}} / {mid:{spec}} / {high:{spec}}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with right-aligned columns (the first one left-aligned)."""
    cells = [header] + rows
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(row) for row in rows])
