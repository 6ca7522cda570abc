"""The run's split of its batch: ``--batch N`` into micro-batch x accum x processes, checked at set-up
(``check_batch``: bad input before anything is written) and, for ``--micro-batch auto``, measured once
the model is built (``fit_split``: memory_fit.py's probes, which leave the run's RNG untouched).

Also what a step's peak memory was (``StepPeak``: CUDA's allocator peak, reset per step; on the CPU
the process's peak RSS, ``VmHWM``, reset at the step's start through ``/proc/self/clear_refs``).
No Textual import, ever.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import torch

from tui_trainer.config import ACCUM_MAX, RunConfig
from tui_trainer.engine.distributed import Ranks
from tui_trainer.engine.memory import free_bytes
from tui_trainer.engine.memory_fit import DEFAULT_BUDGET_SHARE, Fit, fit_micro_batch, parse_memory_budget
from tui_trainer.errors import UserError

BYTES_PER_FLOAT = 4


def device_total(device: torch.device) -> int:
    """All the memory the device has (a budget above it is refused)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return psutil.virtual_memory().total


def memory_budget(text: str | None, device: torch.device) -> int:
    """--memory-budget in bytes; not given: ``DEFAULT_BUDGET_SHARE`` of the memory free now."""
    available = free_bytes(device) or device_total(device)
    if text is None:
        return int(available * DEFAULT_BUDGET_SHARE)
    return parse_memory_budget(text, available, device_total(device))


def check_batch(cfg: RunConfig, world: int) -> RunConfig:
    """--batch against the processes (and a given micro-batch): UserError, or the config with its
    accum derived (micro-batch auto: accum is the fit's, later)."""
    t = cfg.train
    if t.batch is None:
        return cfg
    if t.batch % world:
        raise UserError(f"--batch {t.batch} does not divide over the {world} processes",
                        f"use a --batch that is a multiple of {world}, e.g. {world * max(1, t.batch // world)}")
    if t.micro_batch == "auto":
        return cfg
    if t.batch % (t.micro_batch * world):
        raise UserError(f"--batch {t.batch} is not a multiple of --micro-batch {t.micro_batch} x {world} processes",
                        "use --micro-batch auto, or a micro-batch that divides the batch's share of each process")
    accum = t.batch // (t.micro_batch * world)
    if accum > ACCUM_MAX:
        raise UserError(f"--batch {t.batch} at micro-batch {t.micro_batch} needs accum {accum}, more than {ACCUM_MAX}",
                        "use a larger --micro-batch (or auto), or a smaller --batch")
    return cfg.replace(train=replace(t, accum=accum))


def fit_split(model: torch.nn.Module, cfg: RunConfig, device: torch.device, autocast_dtype: torch.dtype | None,
              budget: int, ranks: Ranks, train_windows: int) -> tuple[RunConfig, Fit]:
    """Measure the micro-batch that fits ``budget`` (memory_fit.fit_micro_batch); several processes
    take the smallest any rank chose. When not even micro-batch 1 fits and activation checkpointing
    is off, it is tried and, if it fits, proposed in the error (never turned on silently)."""
    t, m = cfg.train, cfg.model
    # What the optimizer's first step adds: AdamW's two moments, the noise scale's copy of the gradients.
    copies = 2 + (1 if t.noise_scale and not ranks.distributed else 0)
    params = sum(p.numel() for p in model.parameters())
    kwargs = {"batch": t.batch, "processes": ranks.world_size, "block_size": m.block_size,
              "vocab_size": m.vocab_size, "device": device, "autocast_dtype": autocast_dtype, "budget_bytes": budget,
              "state_bytes": copies * params * BYTES_PER_FLOAT, "at_most": train_windows}
    try:
        fit = fit_micro_batch(model, **kwargs)
    except UserError as exc:
        if t.checkpoint_activations:
            raise
        model.checkpoint_activations = True
        try:
            with_checkpointing = fit_micro_batch(model, **kwargs)
        except UserError:
            raise exc from None
        finally:
            model.checkpoint_activations = False
        raise UserError(f"{exc.message}; with --checkpoint-activations micro-batch {with_checkpointing.micro_batch} "
                        f"fits", "add --checkpoint-activations (activations recomputed in the backward: the same "
                                 "losses, slower), or raise --memory-budget") from None
    if ranks.distributed:  # every rank the same split: the smallest any rank measured
        slots = [0.0] * ranks.world_size
        slots[ranks.rank] = float(fit.micro_batch)
        smallest = int(min(ranks.agree(slots)))
        if smallest != fit.micro_batch:
            fit = replace(fit, micro_batch=smallest, accum=t.batch // (smallest * ranks.world_size),
                          reason=f"{fit.reason}, then the smallest any process could take")
    return cfg.replace(train=replace(t, micro_batch=fit.micro_batch, accum=fit.accum)), fit


class StepPeak:
    """The peak memory of one optimizer step, measured cheaply: ``start()`` at the step's start,
    ``read()`` after it (bytes; 0 = not measurable here)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._clear_refs = Path("/proc/self/clear_refs")
        self._status = Path("/proc/self/status")
        self._rss = device.type == "cpu" and self._status.exists()

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._rss:
            try:
                self._clear_refs.write_text("5")
            except OSError:
                pass  # (the high-water mark then covers the run so far: still a true upper bound)

    def read(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self._rss:
            try:
                for line in self._status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
            except (OSError, ValueError, IndexError):
                return 0
        return 0


def split_choice(cfg: RunConfig, fit: Fit | None, world_size: int) -> str:
    """How the micro-batch was chosen, in words (the run line; RunStarted)."""
    t = cfg.train
    if fit is not None:
        return f"auto: {fit.describe()}"
    if t.batch is not None:
        return f"batch {t.batch} = micro-batch {t.micro_batch} x accum {t.accum} x {world_size}, as given"
    return ""


def memory_record(cfg: RunConfig, fit: Fit | None, budget: int | None, world_size: int) -> dict[str, Any]:
    """How the split was chosen, for config.json and the checkpoint."""
    return {"batch": cfg.train.batch, "choice": split_choice(cfg, fit, world_size), "budget_bytes": budget,
            "checkpoint_activations": cfg.train.checkpoint_activations}
