"""Benchmark: does the noise scale's suggestion pay? B_simple over a run, and accum 1 vs 64 vs --auto-accum.

McCandlish et al. (2018): training at a batch B takes S = S_min (1 + B_noise/B) steps and
E = E_min (1 + B/B_noise) examples, so far below the noise scale a run wastes steps, far above
it wastes examples (compute), and near it pays about 2x of each minimum. This trains the same
small model (2 layers, d_model 64, context 64, dropout 0) on the bundled corpus for the same token
budget at micro-batch 8 x accum 1, x accum 64, and with --auto-accum from accum 8 (the suggestion becomes the accum at each epoch
boundary), validating after every "epoch" (a slice of the budget, --epochs of them). It prints
how B_simple evolves in each run that measures it, and, taking each run's final val loss as a
target, the optimizer steps, tokens and seconds each run needed to reach it.

One seed, one learning rate for all (the best of both batch sizes in accumulation_payoff.py);
the seconds are wall time on whatever machine this runs on (a shared one: read them loosely;
steps and tokens are exact).

    python benchmarks/noise_scale_payoff.py
    python benchmarks/noise_scale_payoff.py --quick        # seconds (CI smoke)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from _common import PRESETS, machine_line, run_config, scratch_dir, table

from tui_trainer.config import ModelConfig
from tui_trainer.control import Control
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import AccumChangeApplied, EpochEvent, ListSink, StepEvent

MICRO_BATCH = 8
# A model small enough for a shared 2-core machine (the presets' "small" is 4x the work per token).
MODELS = {**{name: model for name, (model, _, _) in PRESETS.items()},
          "mini": ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=64)}


class TimedSink(ListSink):
    """Every event with the wall time it arrived at (seconds since the run started)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.perf_counter()
        self.times: list[float] = []

    def emit(self, event) -> None:
        super().emit(event)
        self.times.append(time.perf_counter() - self.started)


def train(args: argparse.Namespace, name: str, accum: int, auto: bool) -> dict:
    model = replace(MODELS[args.preset], dropout=0.0)
    per_epoch = args.budget_tokens // (args.epochs * MICRO_BATCH * model.block_size)  # micro-batches per "epoch"
    with scratch_dir("noise") as run_dir:
        cfg = run_config("tiny", run_dir, epochs=args.epochs, train_batches=per_epoch,
                         val_batches=args.val_batches, threads=args.threads, dropout=0.0,
                         micro_batch=MICRO_BATCH, accum=accum, lr=args.lr)
        cfg = cfg.replace(model=model, train=replace(cfg.train, auto_accum=auto))
        sink = TimedSink()
        Trainer(cfg, sink, Control()).run()
    points, steps = [], 0
    for event, seconds in zip(sink.events, sink.times):
        if isinstance(event, StepEvent):
            steps = event.step
        elif isinstance(event, EpochEvent):
            points.append({"epoch": event.epoch, "val": event.val_loss, "steps": steps, "tokens": event.tokens_seen,
                           "seconds": seconds, "accum": event.accum, "noise": event.noise_scale,
                           "suggested": event.suggested_accum})
    changes = [(e.epoch, e.new) for e in sink.of(AccumChangeApplied)]
    return {"name": name, "points": points, "changes": changes}


def reached(run: dict, target: float) -> dict | None:
    return next((p for p in run["points"] if p["val"] <= target), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mini", help=f"model size: {', '.join(MODELS)} (default mini)")
    parser.add_argument("--budget-tokens", type=int, default=786_432, help="training tokens per run")
    parser.add_argument("--big-accum", type=int, default=64, help="the large accumulation compared")
    parser.add_argument("--epochs", type=int, default=12, help="validations per run (the budget in slices)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--val-batches", type=int, default=40, help="validation micro-batches (same for all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="tiny model and budget (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.epochs, args.val_batches, args.big_accum = "tiny", 3, 1, 16
        args.budget_tokens = args.epochs * 32 * MICRO_BATCH * 32
    model = MODELS[args.preset]
    print("Benchmark: the gradient noise scale over a run, and whether its suggestion pays")
    print(machine_line())
    print(f"model {args.preset}: {model.n_layer} layers, d_model {model.n_embd}, context {model.block_size}, "
          f"dropout 0; {args.budget_tokens:,} tokens per run in {args.epochs} epochs (a validation each); "
          f"micro-batch {MICRO_BATCH}; lr {args.lr:g}; seed 1337", flush=True)
    runs = []
    for name, accum, auto in [("accum 1", 1, False), (f"accum {args.big_accum}", args.big_accum, False),
                              ("auto from 8", 8, True)]:
        started = time.perf_counter()
        run = train(args, name, accum, auto)
        runs.append(run)
        last = run["points"][-1] if run["points"] else None
        print(f"  {name}: final val {last['val']:.4f} after {last['steps']} steps, {time.perf_counter() - started:.0f} s"
              if last else f"  {name}: no epoch finished", flush=True)
    if not all(run["points"] for run in runs):
        print("measured nothing: a run finished no epoch")
        return 1

    print("\nB_simple (sequences) and the suggested accum at each epoch's end (- = not settled / accum 1)")
    epochs = range(1, args.epochs + 1)
    rows = []
    for run in runs:
        by_epoch = {p["epoch"]: p for p in run["points"]}
        rows.append([run["name"]] + [f"{by_epoch[e]['noise']:,.0f}->{by_epoch[e]['suggested']}"
                                     if e in by_epoch and by_epoch[e]["noise"] is not None else "-" for e in epochs])
    print(table(["run"] + [f"ep {e}" for e in epochs], rows))
    print("\nval loss and accum at each epoch's end")
    rows = [[run["name"]] + [f"{p['val']:.3f}/{p['accum']}" for p in run["points"]] for run in runs]
    print(table(["run"] + [f"ep {e}" for e in epochs], rows))
    for run in runs:
        if run["changes"]:
            print(f"  {run['name']}: accum changed " + ", ".join(f"to {new} at epoch {e}" for e, new in run["changes"]))

    # Each run's final val loss as a target: what each run needed to reach it (val is read once an epoch).
    print("\nsteps / tokens / seconds each run needed to reach each run's final val loss (- = never)")
    rows = []
    for target_run in runs:
        target = target_run["points"][-1]["val"]
        row = [f"{target:.4f} ({target_run['name']})"]
        for run in runs:
            point = reached(run, target)
            row.append(f"{point['steps']:,} / {point['tokens'] / 1e3:,.0f}K / {point['seconds']:.0f}s" if point else "-")
        rows.append(row)
    print(table(["target val loss"] + [run["name"] for run in runs], rows))
    small, big, auto = runs
    own = auto["points"][-1]["val"]
    at_small, at_auto = reached(small, own), reached(auto, own)
    print(f"\nto auto's final {own:.4f}: accum 1 took "
          + (f"{at_small['steps']:,} steps and {at_small['tokens']:,} tokens ({at_small['seconds']:.0f} s)"
             if at_small else "never got there")
          + f", auto {at_auto['steps']:,} steps and {at_auto['tokens']:,} tokens ({at_auto['seconds']:.0f} s); "
          + f"accum {args.big_accum} " + ("got there too" if reached(big, own) else "never got there"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
