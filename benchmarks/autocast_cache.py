"""Cast once per window? What bf16 autocast's weight casts cost inside an accumulation window.

Inside a window the weights do not change, yet each micro-step's forward runs under its own
``torch.autocast`` context, and autocast clears its cast cache when the outermost context exits:
so every micro-step casts every Linear weight to bf16 again. Two measurements:

1. the bound: the time to cast every weight autocast casts (each Linear's weight and bias, the
   tied head included) against one micro-step's forward + backward in bf16 — the most that
   keeping one bf16 copy per window could save is (accum - 1) such casts a window;
2. the window end to end: today's window (one autocast context per micro-step) against the same
   window under one outer autocast context that keeps the cache alive across the micro-steps
   (the micro-steps' own contexts nested, each backward under a nested ``autocast(enabled=False)``
   so it runs as today's does), alternated A/B/B/A in one process; and whether the two give the
   same gradients bit for bit. A third variant, the backward left under the outer context, is
   checked too: it does not (autocast then recasts the backward's own matmuls).

    python benchmarks/autocast_cache.py                      # small and seed configs, accum 4 and 16
    python benchmarks/autocast_cache.py --presets small --accums 4,8,16 --reps 6
    python benchmarks/autocast_cache.py --quick              # tiny model (smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import replace

import torch
from _common import CHECK_FAILED, NOTHING_MEASURED, PRESETS, fmt_spread, machine_line, table

from tui_trainer.engine.precision import bf16_support
from tui_trainer.engine.runtime import choose_threads
from tui_trainer.model.gpt import GPT

VOCAB = 65  # the bundled corpus's characters


def cast_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """What autocast casts to bf16 in the forward: every Linear's parameters."""
    return [p for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()]


def window(model: torch.nn.Module, batches: list[torch.Tensor], outer: bool, backward_in_autocast: bool = False) -> None:
    """One window's forwards and backwards in bf16; ``outer``: one autocast context around it all
    (nesting keeps the cast cache alive); the backward under it only if ``backward_in_autocast``."""
    with torch.autocast("cpu", dtype=torch.bfloat16) if outer else contextlib.nullcontext():
        for batch in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(batch, batch)
            # (a nested disabled context: the cache survives it, the backward runs as today's)
            with torch.autocast("cpu", enabled=False) if outer and not backward_in_autocast \
                    else contextlib.nullcontext():
                (loss / (len(batches) * batch.numel())).backward()


def grads_after(model: torch.nn.Module, batches: list[torch.Tensor], outer: bool,
                backward_in_autocast: bool = False) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout masks in both
    window(model, batches, outer, backward_in_autocast)
    return [p.grad.clone() for p in model.parameters()]


def bench(preset: str, accums: list[int], reps: int) -> tuple[list[list[str]], bool]:
    cfg, micro_batch, _ = PRESETS[preset]
    torch.manual_seed(0)
    model = GPT(replace(cfg, vocab_size=VOCAB))
    weights = cast_weights(model)
    casts, steps = [], []
    for _ in range(reps * 3):
        started = time.perf_counter()
        [w.detach().to(torch.bfloat16) for w in weights]
        casts.append(time.perf_counter() - started)
    batch = torch.randint(0, VOCAB, (micro_batch, cfg.block_size))
    for _ in range(reps):
        started = time.perf_counter()
        window(model, [batch], outer=False)
        steps.append(time.perf_counter() - started)
    cast, step = statistics.median(casts), statistics.median(steps)
    rows, identical = [], True
    for accum in accums:
        batches = [torch.randint(0, VOCAB, (micro_batch, cfg.block_size)) for _ in range(accum)]
        today = grads_after(model, batches, False)
        same = all(torch.equal(a, b) for a, b in zip(today, grads_after(model, batches, True)))
        loose = all(torch.equal(a, b) for a, b in zip(today, grads_after(model, batches, True, True)))
        identical &= same
        times: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(reps):
            for outer in ((False, True) if rep % 2 == 0 else (True, False)):
                model.zero_grad(set_to_none=True)
                started = time.perf_counter()
                window(model, batches, outer)
                times[outer].append(time.perf_counter() - started)
        saved = [(a - b) / a for a, b in zip(times[False], times[True])]
        rows.append([preset, str(accum), f"{sum(w.numel() for w in weights) / 1e6:.2f} M", f"{1e3 * cast:.2f}",
                     f"{1e3 * step:.0f}", f"{100 * (accum - 1) * cast / (accum * step):.2f}%",
                     f"{1e3 * statistics.median(times[False]):.0f}", f"{1e3 * statistics.median(times[True]):.0f}",
                     fmt_spread([100 * s for s in saved], "+.1f") + " %", "yes" if same else "NO",
                     "yes" if loose else "no"])
        print(f"  {preset} accum {accum}: done; load {os.getloadavg()[0]:.1f}", flush=True)
    return rows, identical


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small,seed", help="comma-separated: seed, small, tiny")
    parser.add_argument("--accums", default="4,16", help="window lengths, comma-separated")
    parser.add_argument("--reps", type=int, default=4, help="A/B repetitions per window length")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the engine's choice)")
    parser.add_argument("--quick", action="store_true", help="tiny model, accum 4, 2 repetitions (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.accums, args.reps = "tiny", "4", 2
    torch.set_num_threads(choose_threads(args.threads, for_ui=False))
    print("autocast's cast cache: one bf16 cast of the weights per micro-step vs one per window")
    print(machine_line("cpu"))
    if not bf16_support(torch.device("cpu")).works:
        print("nothing measured: this CPU cannot run bf16 autocast")
        return NOTHING_MEASURED
    rows, identical = [], True
    for preset in args.presets.split(","):
        more, same = bench(preset.strip(), [int(a) for a in args.accums.split(",")], args.reps)
        rows += more
        identical &= same
    print(table(["preset", "accum", "cast weights", "cast ms", "micro-step ms", "most saved (bound)",
                 "window ms today", "window ms outer", "saved per rep (min / median / max)", "same grads",
                 "same with backward in autocast"], rows))
    if not identical:
        print("FAILED: one outer autocast context (backward outside autocast) changes the gradients")
        return CHECK_FAILED
    print("cast once per window: the same gradients bit for bit; the bound is the saving's ceiling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
