"""Say the batch, not the split: the micro-batch that fits the memory you have, measured.

``--batch N`` fixes the sequences of one optimizer step; ``--micro-batch auto`` picks how many of
them go through the model at once, and the accumulation covers the rest:
``accum = N / (micro_batch x processes)``. Exact accumulation makes every split the same step
(8 x 2 = 16 x 1 = 4 x 4), so the choice is about memory and speed only, never about the result.

The choice is measured, not guessed: a real forward + backward of the real model at the real
context and precision for each candidate (powers of two that divide the batch, largest first),
its peak memory read from the device (``torch.cuda.max_memory_allocated``; on CPU the process's
peak RSS, ``VmHWM``, reset between probes through ``/proc/self/clear_refs``). The largest candidate
whose projected peak (probe + the optimizer's state, which the first step allocates) stays under the
budget less a margin wins; on a CPU, where tokens/s stops growing past some size, the smallest one
within ``CPU_SPEED_SHARE`` of the fastest measured is taken instead. The probes run inside
``torch.random.fork_rng`` on random tokens of their own generator: the run's RNG (data order,
init, dropout) is untouched, so the losses are those of the hand-given split.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from tui_trainer.errors import UserError

MARGIN = 0.10  # the budget's share kept free: allocator fragmentation, the data, the app
DEFAULT_BUDGET_SHARE = 0.80  # of the memory free now, when --memory-budget is not given
CPU_SPEED_SHARE = 0.95  # on CPU: the smallest micro-batch within 5% of the fastest one measured
SLOWER = 0.90  # a probe this much slower than the fastest ends the descent
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_memory_budget(text: str, available: int, total: int) -> int:
    """``6GB``, ``512MiB``, ``80%`` (of the memory available now) → bytes. Above ``total``: refused."""
    given = text.strip().lower().replace(" ", "")
    hint = "use e.g. --memory-budget 6GB, 512MiB or 80% (of the memory free now)"
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)%", given):
        share = float(match.group(1))
        if not 0 < share <= 100:
            raise UserError(f"--memory-budget {text} is not a share between 0% and 100%", hint)
        return int(available * share / 100)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", given)
    if not match or match.group(2) not in _UNITS:
        raise UserError(f"--memory-budget '{text}' is not a size", hint)
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size <= 0:
        raise UserError(f"--memory-budget {text} is not positive", hint)
    if size > total:
        raise UserError(f"--memory-budget {text} is more than this machine has ({total / 1e9:,.1f} GB)",
                        "give a budget the device can hold, or a share such as 80%")
    return size


def candidates(batch: int, processes: int, at_most: int | None = None) -> list[int]:
    """Micro-batches that split ``batch`` evenly over ``processes``: powers of two, largest first
    (none above ``at_most``: the sequences the data holds)."""
    per_process = batch // processes
    return [2 ** k for k in range(per_process.bit_length(), -1, -1)
            if per_process % 2 ** k == 0 and (at_most is None or 2 ** k <= at_most)]


@dataclass(frozen=True)
class Probe:
    micro_batch: int
    peak_bytes: int  # projected peak of training at this micro-batch (probe + optimizer state)
    tokens_per_s: float


@dataclass(frozen=True)
class Fit:
    """What ``--micro-batch auto`` chose, and why (for the run line, RunStarted, config.json)."""

    micro_batch: int
    accum: int
    budget_bytes: int
    peak_bytes: int  # the chosen micro-batch's measured projection
    probes: tuple[Probe, ...]
    reason: str  # why this size (``choose``): the largest that fits, or the one picked for speed on a CPU
    seconds: float  # what the probing cost

    def describe(self) -> str:
        return (f"micro-batch {self.micro_batch} x accum {self.accum}: {self.reason}; peak "
                f"{self.peak_bytes / 1e9:,.2f} of {self.budget_bytes / 1e9:,.2f} GB budget "
                f"(probed {', '.join(str(p.micro_batch) for p in self.probes)} in {self.seconds:.1f} s)")


def choose(fitting: list[Probe], device_type: str) -> tuple[Probe, str]:
    """The probe taken of those under the budget, and the words that say why: on an accelerator the
    largest; on a CPU the smallest within ``CPU_SPEED_SHARE`` of the fastest, which says both
    facts — the largest that fits, and the one picked for speed (or that they are the same one)."""
    largest = max(fitting, key=lambda p: p.micro_batch)
    if device_type != "cpu":
        return largest, "the largest that fits the budget"
    fastest = max(p.tokens_per_s for p in fitting)
    chosen = min((p for p in fitting if p.tokens_per_s >= CPU_SPEED_SHARE * fastest), key=lambda p: p.micro_batch)
    share = f"{1 - CPU_SPEED_SHARE:.0%}"
    if chosen is largest:
        if len(fitting) == 1:
            return chosen, "the largest that fits the budget"
        return chosen, (f"the largest that fits the budget, and on this CPU the fastest too (the smaller ones "
                        f"probed were over {share} slower)")
    return chosen, (f"{largest.micro_batch} is the largest that fits the budget; {chosen.micro_batch} was picked "
                    f"for speed: on this CPU tokens/s stops growing past it (within {share} of the fastest)")


def _give_back_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``), so that memory a larger
    probe freed is not counted as this probe's baseline, nor hides its growth."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_high_water() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def measure_step_peak(model: torch.nn.Module, micro_batch: int, block_size: int, vocab_size: int,
                      device: torch.device, autocast_dtype: torch.dtype | None) -> tuple[int, float]:
    """(bytes above the weights that one forward + backward of ``micro_batch`` sequences takes at its
    peak, its tokens/s). Raises torch.OutOfMemoryError where the device runs out."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab_size, (micro_batch, block_size + 1), generator=generator).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _give_back_freed_memory()
        _rss_peak_reset()
        base = psutil.Process().memory_info().rss
    seconds = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(2):  # twice: the faster pass is the pace (the first pays for first-time allocations)
            started = time.perf_counter()
            with (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                  else contextlib.nullcontext()):
                loss = model(inputs, targets)
            loss.backward()
            del loss
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - started)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    elif device.type == "mps":
        torch.mps.synchronize()
        peak = max(0, torch.mps.driver_allocated_memory() - base)
    else:
        high = _rss_high_water()
        peak = max(0, (high if high is not None else psutil.Process().memory_info().rss) - base)
    model.zero_grad(set_to_none=True)
    return peak, micro_batch * block_size / max(min(seconds), 1e-9)


def fit_micro_batch(model: torch.nn.Module, *, batch: int, processes: int, block_size: int, vocab_size: int,
                    device: torch.device, autocast_dtype: torch.dtype | None, budget_bytes: int,
                    state_bytes: int, at_most: int | None = None) -> Fit:
    """Probe the candidates, largest first; ``state_bytes`` is what the optimizer's first step adds
    (AdamW's two moments, the noise scale's copy of the gradients). UserError when even
    micro-batch 1 does not fit (naming the levers)."""
    started = time.perf_counter()
    limit = budget_bytes * (1 - MARGIN)
    was_training = model.training
    model.train()
    probes: list[Probe] = []
    fitting: list[Probe] = []
    try:
        measure_step_peak(model, 1, block_size, vocab_size, device, autocast_dtype)  # warm-up: one-time allocations
        for micro_batch in candidates(batch, processes, at_most):
            try:
                peak, speed = measure_step_peak(model, micro_batch, block_size, vocab_size, device, autocast_dtype)
            except torch.OutOfMemoryError:
                model.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            probe = Probe(micro_batch, peak + state_bytes, speed)
            probes.append(probe)
            if probe.peak_bytes > limit:
                continue
            fitting.append(probe)
            if device.type != "cpu":
                break  # the largest that fits is the fastest on an accelerator
            if speed < SLOWER * max(p.tokens_per_s for p in fitting):
                break  # clearly slower than a larger one: smaller ones only get slower
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    if not fitting:
        raise UserError(
            f"not even micro-batch 1 of {block_size} tokens fits the memory budget of {budget_bytes / 1e9:,.2f} GB "
            f"(it took {probes[-1].peak_bytes / 1e9:,.2f} GB)" if probes else
            f"not even micro-batch 1 of {block_size} tokens fits in the memory of {device.type}",
            "raise --memory-budget, add --checkpoint-activations, or use a smaller model or --block-size")
    chosen, reason = choose(fitting, device.type)
    return Fit(chosen.micro_batch, batch // (chosen.micro_batch * processes), budget_bytes, chosen.peak_bytes,
               tuple(probes), reason, seconds)
