"""Precision: does bf16 autocast train as well as fp32, and how much faster is it?

For each model size, the engine trains the same tokens (same seed, same data order) in fp32
and in bf16, plus fp32 with two more seeds for the seed-to-seed spread, and reports the val
loss after those tokens and the tokens/s of each. The runs go in lockstep — one optimizer step
of each in turn (A B C D A B C D ...), each on its own thread but only one computing at a time —
so a neighbour's burst on a shared machine hits every variant alike; each run keeps its own RNG
state across the turns, so its losses are those of a run on its own (``--quick`` checks that).

The verdict for ``auto`` (tui_trainer/engine/precision.py): bf16 qualifies if its val loss is within
1% of fp32's at the same seed, or within fp32's seed-to-seed spread (max - min of 3 seeds).
The script exits 1 when bf16 does not qualify on a size, or when the lockstep check fails.

    python benchmarks/precision.py                   # seed model (6 x 256) and small (4 x 128)
    python benchmarks/precision.py --presets small --steps 100
    python benchmarks/precision.py --quick           # tiny model, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time

import torch
from _common import PRESETS, fmt_spread, machine_line, run_config, scratch_dir, spread, table

from tui_trainer.control import Control
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.precision import bf16_support
from tui_trainer.engine.runtime import choose_threads
from tui_trainer.events import EpochEvent, RunEnded, StepEvent

QUALITY_TOLERANCE = 0.01  # bf16's val loss within 1% of fp32's (or within the fp32 seed spread)
SEEDS = (1337, 1338, 1339)
# Optimizer steps per run (4 runs a size: ~10-20 minutes a size on 2 busy shared cores), and the
# validation micro-batches: 40,960 tokens for both real sizes.
DEFAULT_STEPS = {"seed": 16, "small": 100, "tiny": 12}
DEFAULT_VAL_BATCHES = {"seed": 20, "small": 40, "tiny": 4}
WARMUP_STEPS = 2  # left out of tokens/s (first-step allocations)


class Baton:
    """Whose turn it is: the runs take one optimizer step each, in a fixed order."""

    def __init__(self, count: int) -> None:
        self.turn = 0
        self.finished = [False] * count
        self.condition = threading.Condition()

    def wait(self, index: int) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.turn == index)

    def pass_on(self, index: int, finished: bool = False) -> None:
        with self.condition:
            self.finished[index] = self.finished[index] or finished
            count = len(self.finished)
            following = [(index + k) % count for k in range(1, count + 1)]
            self.turn = next((j for j in following if not self.finished[j]), -1)
            self.condition.notify_all()


class TurnSink:
    """One run's sink: times its steps, then hands the turn on (keeping its own RNG state)."""

    def __init__(self, baton: Baton, index: int) -> None:
        self.baton, self.index = baton, index
        self.step_seconds: list[float] = []
        self.step_tokens: list[int] = []
        self.val_loss: float | None = None
        self.end: RunEnded | None = None
        self.rng: tuple | None = None  # (torch, python) RNG state while another run computes
        self._turn_started = 0.0

    def take_turn(self) -> None:
        self.baton.wait(self.index)
        torch.set_rng_state(self.rng[0])
        random.setstate(self.rng[1])
        self._turn_started = time.perf_counter()

    def emit(self, event: object) -> None:
        if isinstance(event, StepEvent):
            self.step_seconds.append(time.perf_counter() - self._turn_started)
            self.step_tokens.append(event.tokens)
            self.rng = (torch.get_rng_state(), random.getstate())
            self.baton.pass_on(self.index)
            self.take_turn()
        elif isinstance(event, EpochEvent):
            self.val_loss = event.val_loss
        elif isinstance(event, RunEnded):
            self.end = event
            self.baton.pass_on(self.index, finished=True)


def lockstep(configs: list) -> list[TurnSink]:
    """Run every config through the engine, one optimizer step of each in turn."""
    baton = Baton(len(configs))
    sinks, trainers = [], []
    for index, cfg in enumerate(configs):
        sink = TurnSink(baton, index)
        trainers.append(Trainer(cfg, sink, Control()))
        sink.rng = (torch.get_rng_state(), random.getstate())  # as the trainer left it after its set-up
        sinks.append(sink)
    errors: list[BaseException] = []

    threads_wanted = torch.get_num_threads()

    def work(trainer: Trainer, sink: TurnSink) -> None:
        torch.set_num_threads(threads_wanted)  # (OpenMP's thread count is set per calling thread)
        try:
            sink.take_turn()
            trainer.run()
            if trainer.error is not None:
                errors.append(trainer.error)
        finally:
            if sink.end is None:
                baton.pass_on(sink.index, finished=True)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(trainers, sinks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    for sink in sinks:
        if sink.end is None or sink.end.reason != "completed" or sink.val_loss is None:
            raise RuntimeError(f"a run did not complete: {sink.end}")
    return sinks


def solo_val_loss(cfg) -> float:
    sink = TurnSink(Baton(1), 0)
    trainer = Trainer(cfg, sink, Control())
    sink.rng = (torch.get_rng_state(), random.getstate())
    sink.take_turn()
    trainer.run()
    return sink.val_loss


def rates(sink: TurnSink) -> list[float]:
    return [t / s for t, s in zip(sink.step_tokens[WARMUP_STEPS:], sink.step_seconds[WARMUP_STEPS:])]


def bench_preset(preset: str, args: argparse.Namespace) -> dict:
    model, micro_batch, accum = PRESETS[preset]
    steps = args.steps or DEFAULT_STEPS[preset]
    tokens = steps * micro_batch * accum * model.block_size
    seeds = SEEDS[:args.seeds]
    val_batches = args.val_batches or DEFAULT_VAL_BATCHES[preset]
    variants = [("fp32", seeds[0]), ("bf16", seeds[0])] + [("fp32", s) for s in seeds[1:]]
    print(f"\n[{preset}] {model.n_layer} layers, d_model {model.n_embd}, context {model.block_size}, "
          f"dropout {model.dropout}, micro-batch {micro_batch} x accum {accum}: {steps} steps = {tokens:,} tokens "
          f"per run; val loss on {val_batches} micro-batches; "
          f"runs in lockstep: {', '.join(f'{p} seed {s}' for p, s in variants)}", flush=True)
    with scratch_dir("precision") as scratch:
        configs = [run_config(preset, f"{scratch}/{p}-{s}", train_batches=steps * accum, val_batches=val_batches,
                              seed=s, threads=args.threads, precision=p) for p, s in variants]
        started = time.perf_counter()
        sinks = lockstep(configs)
        seconds = time.perf_counter() - started
        solo = solo_val_loss(run_config(preset, f"{scratch}/solo", train_batches=steps * accum,
                                        val_batches=val_batches, seed=seeds[0], threads=args.threads,
                                        precision="bf16")) if args.check_lockstep else None
    by_variant = dict(zip(variants, sinks))
    fp32, bf16 = by_variant[("fp32", seeds[0])], by_variant[("bf16", seeds[0])]
    fp32_losses = [by_variant[("fp32", s)].val_loss for s in seeds]
    fp32_spread = max(fp32_losses) - min(fp32_losses)
    # tokens/s: the fp32 and bf16 runs of the same seed, step k of each taken seconds apart
    fp32_rates, bf16_rates = rates(fp32), rates(bf16)
    pair_ratios = [b / f for f, b in zip(fp32_rates, bf16_rates)]
    difference = bf16.val_loss - fp32.val_loss
    relative = difference / fp32.val_loss
    qualifies = abs(relative) <= QUALITY_TOLERANCE or (len(seeds) > 1 and abs(difference) <= fp32_spread)
    rows = [[f"{p} seed {s}", f"{by_variant[(p, s)].val_loss:.4f}", fmt_spread(rates(by_variant[(p, s)]))]
            for p, s in variants]
    print(table(["run", "val loss", "tok/s per step (min / median / max)"], rows))
    print(f"  {seconds:.0f} s for the {len(variants)} runs; load {open('/proc/loadavg').read().split()[0]}")
    return {"preset": preset, "tokens": tokens, "fp32": fp32.val_loss, "bf16": bf16.val_loss,
            "fp32_losses": fp32_losses, "spread": fp32_spread, "relative": relative, "qualifies": qualifies,
            "fp32_rate": statistics.median(fp32_rates), "bf16_rate": statistics.median(bf16_rates),
            "speedup": statistics.median(pair_ratios), "pair_ratios": pair_ratios, "solo": solo}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="seed,small", help="comma-separated: seed, small, tiny")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: per size)")
    parser.add_argument("--seeds", type=int, default=3, help="fp32 seeds for the spread (1-3)")
    parser.add_argument("--val-batches", type=int, default=None, help="validation micro-batches (default: per size)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the engine's choice)")
    parser.add_argument("--check-lockstep", action="store_true",
                        help="also run bf16 on its own and check it ends on the same val loss bit for bit")
    parser.add_argument("--quick", action="store_true", help="tiny model, a few steps (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.check_lockstep = "tiny", True
    args.seeds = max(1, min(3, args.seeds))
    args.threads = choose_threads(args.threads, for_ui=False)
    torch.set_num_threads(args.threads)
    support = bf16_support(torch.device("cpu"))
    print("Precision: fp32 vs bf16 autocast through the engine, val loss at equal tokens and tokens/s")
    print(machine_line("cpu"))
    print(f"bf16 on this CPU: {support.why} (works: {support.works}, bf16 units: {support.native})")
    if not support.works:
        print("measured nothing (bf16 qualifies: not measured): this CPU cannot run bf16 autocast, "
              "so auto stays on fp32 here whatever this would say")
        return 0
    results = [bench_preset(p.strip(), args) for p in args.presets.split(",")]
    print("\nsummary: val loss after equal tokens (same seed, same data order); fp32 spread = max - min over "
          f"{args.seeds} seeds; bf16/fp32 tokens/s per pair of steps (min / median / max)")
    rows = [[r["preset"], f"{r['tokens']:,}", f"{r['fp32']:.4f}", f"{r['bf16']:.4f}", f"{100 * r['relative']:+.2f}%",
             f"{r['spread']:.4f}", f"{r['fp32_rate']:,.0f}", f"{r['bf16_rate']:,.0f}",
             f"{r['speedup']:.2f}x ({fmt_spread(r['pair_ratios'], '.2f')})", "yes" if r["qualifies"] else "NO"]
            for r in results]
    print(table(["preset", "tokens", "fp32 val", "bf16 val", "bf16 - fp32", "fp32 seed spread", "fp32 tok/s",
                 "bf16 tok/s", "bf16/fp32 speed", "bf16 qualifies"], rows))
    failed = False
    for r in results:
        if r["solo"] is not None:
            same = r["solo"] == r["bf16"]
            print(f"{r['preset']}: bf16 on its own ends at val loss {r['solo']:.6f}, in lockstep {r['bf16']:.6f}: "
                  f"{'identical' if same else 'DIFFERENT: the lockstep runs do not keep their own RNG'}")
            failed |= not same
        if not r["qualifies"]:
            print(f"{r['preset']}: bf16 val loss is {100 * r['relative']:+.2f}% off fp32, more than "
                  f"{100 * QUALITY_TOLERANCE:.0f}% and more than the fp32 seed spread: auto should stay on fp32")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
