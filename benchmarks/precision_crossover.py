"""Where does bf16 start to pay on this CPU? bf16 vs fp32 tokens/s of the engine's training step
over model width (n_embd) and context (block_size): the data behind ``--precision auto``'s rule
by shape (``cpu_bf16_pays`` in tui_trainer/engine/precision.py).

For each shape the engine trains in fp32 and in bf16 in lockstep (one optimizer step of each in
turn, benchmarks/precision.py), so each pair of steps is measured seconds apart and a neighbour's
burst on a shared machine hits both alike. The figure per shape is the median over pairs of
(bf16 tok/s) / (fp32 tok/s), warm-up steps left out. Every shape has 4 layers, heads of 32
(n_head = n_embd / 32, at least 1), micro-batch 8 x accum 2, the character vocabulary of the
bundled corpus. The last table says where the rule in precision.py agrees with what was measured.

    python benchmarks/precision_crossover.py                           # 32..384 x 64..512 (minutes)
    python benchmarks/precision_crossover.py --widths 96,128,192 --contexts 128 --steps 8
    python benchmarks/precision_crossover.py --quick                   # two tiny shapes (smoke test)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace

import torch
from _common import NOTHING_MEASURED, machine_line, run_config, scratch_dir, table
from precision import lockstep

from tui_trainer.config import ModelConfig
from tui_trainer.engine.precision import bf16_support, cpu_bf16_pays
from tui_trainer.engine.runtime import choose_threads

WARMUP_STEPS = 2  # left out (first-step allocations, oneDNN's first bf16 kernels)
LAYERS, HEAD_DIM, MICRO_BATCH, ACCUM = 4, 32, 8, 2


def shape_config(width: int, context: int, run_dir: str, precision: str, args: argparse.Namespace):
    cfg = run_config("small", run_dir, train_batches=(WARMUP_STEPS + args.steps) * ACCUM, val_batches=1,
                     threads=args.threads, micro_batch=MICRO_BATCH, accum=ACCUM, precision=precision)
    model = ModelConfig(n_layer=LAYERS, n_head=max(1, width // args.head_dim), n_embd=width, block_size=context)
    return cfg.replace(model=replace(model, dropout=cfg.model.dropout))


def measure(width: int, context: int, args: argparse.Namespace) -> list[float]:
    """bf16/fp32 tokens/s per pair of lockstep steps at one shape."""
    with scratch_dir("crossover") as scratch:
        fp32, bf16 = lockstep([shape_config(width, context, f"{scratch}/{p}", p, args) for p in ("fp32", "bf16")])
    return [(bt / bs) / (ft / fs) for ft, fs, bt, bs in
            zip(fp32.step_tokens[WARMUP_STEPS:], fp32.step_seconds[WARMUP_STEPS:],
                bf16.step_tokens[WARMUP_STEPS:], bf16.step_seconds[WARMUP_STEPS:])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="32,64,96,128,192,256,384", help="n_embd values, comma-separated")
    parser.add_argument("--contexts", default="64,128,256,512", help="block sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=6, help="measured optimizer steps per shape and precision")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the engine's choice)")
    parser.add_argument("--head-dim", type=int, default=HEAD_DIM, help=f"width per head (default {HEAD_DIM})")
    parser.add_argument("--quick", action="store_true", help="two tiny shapes, a few steps (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.contexts, args.steps = "32", "32,64", 2
    args.threads = choose_threads(args.threads, for_ui=False)
    torch.set_num_threads(args.threads)
    support = bf16_support(torch.device("cpu"))
    print("bf16 vs fp32 crossover: engine training step, bf16/fp32 tokens/s per lockstep pair (median)")
    print(machine_line("cpu"))
    print(f"bf16 on this CPU: {support.why}; {LAYERS} layers, heads of {HEAD_DIM}, micro-batch {MICRO_BATCH} x "
          f"accum {ACCUM}, {WARMUP_STEPS} warm-up + {args.steps} measured steps per shape")
    if not support.works:
        print("nothing measured: this CPU cannot run bf16 autocast (auto stays on fp32 here)")
        return NOTHING_MEASURED
    widths = [int(w) for w in args.widths.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    ratios: dict[tuple[int, int], list[float]] = {}
    for width in widths:
        for context in contexts:
            ratios[width, context] = measure(width, context, args)
            r = ratios[width, context]
            print(f"  width {width:>4} context {context:>4}: bf16/fp32 {statistics.median(r):.2f}x "
                  f"(pairs {min(r):.2f} / {max(r):.2f}); load {os.getloadavg()[0]:.1f}", flush=True)
    print("\nbf16/fp32 tokens/s, median over pairs (rows: width; columns: context)")
    print(table(["width"] + [str(c) for c in contexts],
                [[str(w)] + [f"{statistics.median(ratios[w, c]):.2f}x" for c in contexts] for w in widths]))
    agree = sum((statistics.median(r) > 1) == cpu_bf16_pays(w, c) for (w, c), r in ratios.items())
    print("\nauto's rule (cpu_bf16_pays): bf16 where marked b, fp32 where f; * where the measurement disagrees")
    print(table(["width"] + [str(c) for c in contexts],
                [[str(w)] + [("b" if cpu_bf16_pays(w, c) else "f")
                             + ("" if (statistics.median(ratios[w, c]) > 1) == cpu_bf16_pays(w, c) else "*")
                             for c in contexts] for w in widths]))
    print(f"rule agrees with the measurement on {agree} of {len(ratios)} shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
