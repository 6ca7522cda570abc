"""Benchmark: what the gradient-noise-scale estimate costs per optimizer step (target <= 3%).

The estimate (``--no-noise-scale`` turns it off) keeps one copy of the gradients and, per
micro-step, subtracts, takes a norm and copies (accumulation.GradientIncrements); its norms
ride on the step's one host sync. This times the engine's own step (``accumulate_window``,
clip, the one ``.tolist()``, AdamW) with the estimate off and on, interleaved in one process
for each preset asked (default: small, 4 layers x d_model 128, micro-batch 8 x accum 4; then
seed, the default configuration, 6 layers x d_model 256, 16 x 8; context 128 for both), one
after the other in one run: rounds alternate off-on / on-off so a neighbour's burst on a shared
machine hits both sides alike. It prints the per-round on/off ratios (median and spread), and as
a cross-check the time spent inside the hook itself as a fraction of the on steps. Exits 1 when
a preset's median ratio is over 1.03 (not with --quick, whose tiny model measures only the
machine's noise).

    python benchmarks/noise_scale.py
    python benchmarks/noise_scale.py --presets seed --rounds 12
    python benchmarks/noise_scale.py --quick        # seconds: a tiny model (CI smoke)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

import torch
from _common import PRESETS, machine_line, table

from tui_trainer.analysis.noise_scale import NoiseScaleEstimator, WindowNorms
from tui_trainer.config import DataConfig
from tui_trainer.data.dataset import WindowDataset, epoch_examples, load_corpus, plan_windows
from tui_trainer.engine.accumulation import GradientIncrements, accumulate_window
from tui_trainer.model.gpt import GPT, make_optimizer

TARGET = 1.03
SEED = 1337


class TimedIncrements(GradientIncrements):
    """The hook, with the wall time spent inside it (on CPU the work is synchronous)."""

    seconds = 0.0

    def after_backward(self, first: bool, last: bool) -> None:
        started = time.perf_counter()
        super().after_backward(first, last)
        self.seconds += time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small,seed",
                        help="comma-separated: seed (the default config), small or tiny (default: small,seed)")
    parser.add_argument("--rounds", type=int, default=8, help="pairs of steps (one off, one on) per preset")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="a tiny model, few rounds (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.rounds = "tiny", 4
    presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in presets if name not in PRESETS]
    if unknown or not presets:
        parser.error(f"--presets: unknown {unknown or 'none given'} (choose among {', '.join(sorted(PRESETS))})")
    if args.threads:
        torch.set_num_threads(args.threads)
    print("Benchmark: the noise-scale estimate's cost per optimizer step, off vs on, interleaved")
    print(machine_line())
    medians = {preset: measure(preset, args.rounds) for preset in presets}
    print()
    print(table(["preset", "on/off median per round", "overhead"],
                [[preset, f"{median:.3f}", f"{median - 1:+.1%}"] for preset, median in medians.items()]))
    if args.quick:  # a tiny model for a few rounds measures the machine's noise, not the hook
        print(f"--quick: not checked against the {TARGET - 1:.0%} target")
        return 0
    over = [preset for preset, median in medians.items() if median > TARGET]
    print(f"the {TARGET - 1:.0%} target: " + (f"OVER for {', '.join(over)}" if over else "within for every preset"))
    return 1 if over else 0


def measure(preset: str, rounds: int) -> float:
    """The median per-round on/off ratio of ``rounds`` interleaved pairs of steps on ``preset``."""
    model_cfg, micro_batch, accum = PRESETS[preset]
    corpus = load_corpus(DataConfig(), model_cfg.block_size)
    model_cfg = replace(model_cfg, vocab_size=corpus.vocab.size)
    torch.manual_seed(SEED)
    model = GPT(model_cfg)
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), "cpu")
    data = WindowDataset(corpus.train_tokens, model_cfg.block_size, torch.device("cpu"))
    order = epoch_examples(len(data), SEED, 1, micro_batch, None)
    windows = plan_windows(len(order), micro_batch, accum)
    increments = TimedIncrements(model.parameters())
    estimator = NoiseScaleEstimator()
    print(f"\npreset {preset}: {model_cfg.n_layer} layers, d_model {model_cfg.n_embd}, context "
          f"{model_cfg.block_size}, dropout {model_cfg.dropout}; micro-batch {micro_batch} x accum {accum}; "
          f"{rounds} rounds + 1 warm-up round", flush=True)
    next_window = iter(windows)

    def step(on: bool) -> float:
        ranges = next(next_window)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_total, tokens = accumulate_window(model, data, order, ranges, increments=increments if on else None)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        micro = increments.sq_norms if on else []
        loss_sum, grad_norm, *micro_sq = torch.stack([loss_total.float(), norm.float(),
                                                      *(n.float() for n in micro)]).tolist()
        optimizer.step()
        if micro_sq:
            estimator.update(WindowNorms.from_increments([b - a for a, b in ranges], micro_sq, grad_norm ** 2))
        return time.perf_counter() - started

    step(False), step(True)  # warm-up (the hook's copy is allocated here)
    increments.seconds = 0.0
    off, on, ratios = [], [], []
    for r in range(rounds):
        sides = (False, True) if r % 2 == 0 else (True, False)
        times = {side: step(side) for side in sides}
        off.append(times[False])
        on.append(times[True])
        ratios.append(times[True] / times[False])
        print(f"  round {r + 1}: off {times[False]:.3f} s, on {times[True]:.3f} s, on/off {ratios[-1]:.3f}", flush=True)
    median = statistics.median(ratios)
    hook_share = increments.seconds / sum(on)
    print(table(["", "median s/step", "min", "max"],
                [["off", f"{statistics.median(off):.3f}", f"{min(off):.3f}", f"{max(off):.3f}"],
                 ["on", f"{statistics.median(on):.3f}", f"{min(on):.3f}", f"{max(on):.3f}"]]))
    print(f"on/off per round: median {median:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); "
          f"total {sum(on) / sum(off):.3f}")
    print(f"time inside the hook: {hook_share:.2%} of the on steps "
          f"({increments.seconds / rounds * 1000:.1f} ms a step)")
    print(f"noise scale at the end: {estimator.raw_noise_scale() or float('nan'):,.0f} sequences "
          f"({estimator.estimates} windows; not settled, not the point here)")
    return median


if __name__ == "__main__":
    sys.exit(main())
