"""Does ``--compile`` pay off? The engine eager vs the engine under torch.compile.

Same model, data and threads, alternating which runs first. Prints the first optimizer
step's time (which holds the compilation), the steady-state tokens/s after the warm-up
steps, their ratio, and how many steps it takes to earn the compile time back (if ever).

    python benchmarks/compile_payoff.py                   # small configuration, CPU
    python benchmarks/compile_payoff.py --presets seed,small --reps 3
    python benchmarks/compile_payoff.py --device cuda
    python benchmarks/compile_payoff.py --quick           # tiny model (slow-ish: it compiles)
    python benchmarks/compile_payoff.py --precisions fp32,bf16   # compile x precision, four runs in lockstep

With ``--precisions``, eager and compiled runs in each precision go in lockstep (one optimizer
step of each in turn, see precision.py), so every ratio in the table is measured step by step
side by side; the first step of a compiled run holds its compilation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _common import PRESETS, fmt_spread, machine_line, run_config, scratch_dir, spread, table
from throughput import StepClock, steady_rate

from tui_trainer.control import Control
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.runtime import choose_threads

DEFAULT_RUNS = {"seed": (2, 3, 1), "small": (3, 12, 2), "tiny": (2, 3, 1)}  # warm-up, measured, reps


def engine_run(preset: str, args: argparse.Namespace, compiled: bool, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the first optimizer step, steady-state tokens/s by the median step)."""
    accum = PRESETS[preset][2]
    with scratch_dir("compile") as run_dir:
        cfg = run_config(preset, run_dir, train_batches=(warmup + steps) * accum, threads=args.threads,
                         device=args.device, dropout=args.dropout, compile=compiled)
        clock = StepClock()
        trainer = Trainer(cfg, clock, Control())
        started = time.perf_counter()
        end = trainer.run()
        if end.reason != "completed":
            raise RuntimeError(f"run ended with {end.reason}: {end.message}")
    return clock.stamps[0][0] - started, steady_rate(clock.stamps, warmup)[0]


def lockstep_table(preset: str, args: argparse.Namespace, warmup: int, steps: int) -> None:
    """Eager and compiled, in each of ``args.precisions``, in lockstep: tokens/s and first-step time."""
    from precision import lockstep  # the lockstep runner lives with the precision benchmark

    accum = PRESETS[preset][2]
    variants = [(precision, compiled) for precision in args.precisions.split(",") for compiled in (False, True)]
    with scratch_dir("compile") as scratch:
        configs = [run_config(preset, f"{scratch}/{p}-{c}", train_batches=(warmup + steps) * accum,
                              threads=args.threads, device=args.device, dropout=args.dropout, compile=c, precision=p)
                   for p, c in variants]
        sinks = dict(zip(variants, lockstep(configs)))
    rates = {v: [t / s for t, s in zip(k.step_tokens[warmup:], k.step_seconds[warmup:])] for v, k in sinks.items()}
    base = statistics.median(rates[variants[0]])
    rows = []
    for (precision, compiled), sink in sinks.items():
        mine = rates[(precision, compiled)]
        eager = rates[(precision, False)]
        per_pair = [c / e for c, e in zip(mine, eager)]
        rows.append([precision, "compiled" if compiled else "eager", f"{sink.step_seconds[0]:.1f}",
                     fmt_spread(mine), f"{statistics.median(mine) / base:.2f}x",
                     f"{statistics.median(per_pair):.2f}x ({fmt_spread(per_pair, '.2f')})" if compiled else "—"])
    print(table(["precision", "mode", "first step s", "steady tok/s (min / median / max)",
                 f"vs {variants[0][0]} eager", "compiled/eager per step (min / median / max)"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small", help="comma-separated: seed, small, tiny")
    parser.add_argument("--reps", type=int, default=None, help="alternating repetitions")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per run")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None, help="override the model's dropout (default 0.1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated (fp32,bf16): eager and compiled in each, in lockstep")
    parser.add_argument("--quick", action="store_true", help="tiny model, one repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets = "tiny"
    args.threads = choose_threads(args.threads, for_ui=False)
    torch.set_num_threads(args.threads)
    print("torch.compile: engine eager vs engine compiled")
    print(machine_line(args.device))
    summary = []
    for preset in args.presets.split(","):
        warmup, steps, reps = DEFAULT_RUNS[preset]
        steps, reps = args.steps or steps, args.reps or reps
        model, micro_batch, accum = PRESETS[preset]
        print(f"\n[{preset}] {model.n_layer} layers, d_model {model.n_embd}, micro-batch {micro_batch} x accum {accum}; "
              f"{warmup} warm-up + {steps} measured steps, {reps if not args.precisions else 'one lockstep'} "
              f"repetitions", flush=True)
        if args.precisions:
            lockstep_table(preset, args, warmup, steps)
            continue
        rows, first, rate = [], {"eager": [], "compiled": []}, {"eager": [], "compiled": []}
        for rep in range(reps):
            for mode in (("eager", "compiled") if rep % 2 == 0 else ("compiled", "eager")):
                first_step, tokens_per_s = engine_run(preset, args, mode == "compiled", warmup, steps)
                first[mode].append(first_step)
                rate[mode].append(tokens_per_s)
                rows.append([str(rep + 1), mode, f"{first_step:.1f}", f"{tokens_per_s:,.0f}"])
                print(f"  rep {rep + 1} {mode}: first step {first_step:.1f} s, {tokens_per_s:,.0f} tok/s", flush=True)
        print(table(["rep", "mode", "first step s", "steady tok/s"], rows))
        ratios = [c / e for c, e in zip(rate["compiled"], rate["eager"])]
        tokens_per_step = micro_batch * accum * model.block_size
        step_eager = tokens_per_step / spread(rate["eager"])[1]
        step_compiled = tokens_per_step / spread(rate["compiled"])[1]
        extra = spread(first["compiled"])[1] - spread(first["eager"])[1]
        saving = step_eager - step_compiled
        payback = f"{extra / saving:,.0f} steps" if saving > 0 else "never (compiled steps are not faster)"
        summary.append([preset, fmt_spread(rate["eager"]), fmt_spread(rate["compiled"]), fmt_spread(ratios, ".3f"),
                        f"{extra:.0f}", payback])
    if not summary:
        return 0
    print("\nsummary (min / median / max)")
    print(table(["preset", "eager tok/s", "compiled tok/s", "compiled/eager", "compile s", "pays back after"],
                summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
