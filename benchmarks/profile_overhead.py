"""Where the engine's own time goes: a cProfile of a headless run on a tiny model.

On a model this small the bookkeeping around the maths (events, metrics.jsonl, commands,
RNG capture for exact resume, the LR schedule, the finite check) is visible; on the
seed's model it drowns in the matrix multiplies. The script prints, per optimizer step,
the time spent in the engine's Python (tui_trainer/, bar the model) and the standard
library it calls, next to the whole step, then the top functions.

With --ops it profiles the operators instead (torch.profiler): where a step of the given
preset spends its time, grouped into matrix multiplies, attention, dropout and the rest.

    python benchmarks/profile_overhead.py
    python benchmarks/profile_overhead.py --steps 2000 --top 25
    python benchmarks/profile_overhead.py --ops --preset seed --steps 2
    python benchmarks/profile_overhead.py --quick
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

import torch
from _common import PRESETS, machine_line, run_config, scratch_dir, table

from tui_trainer.control import Control
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.runtime import choose_threads
from tui_trainer.events import ListSink, StepEvent

# Standard-library modules the engine's bookkeeping calls into (not torch, not the model).
STDLIB_PARTS = ("/json/", "dataclasses.py", "random.py", "queue.py", "threading.py", "copy.py", "/enum.py")


def is_engine_python(filename: str) -> bool:
    if "tui_trainer" in filename:
        return not filename.endswith("model.py")
    return any(part in filename for part in STDLIB_PARTS) and "torch" not in filename


# Operator families for the --ops summary (aten names, self time).
OP_GROUPS = [
    ("matrix multiplies", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")),
    ("fused attention (SDPA flash)", ("flash_attention",)),
    ("dropout RNG and masks", ("aten::bernoulli_", "aten::div_", "aten::mul", "aten::native_dropout")),
    ("attention maths (SDPA math path)", ("aten::_softmax", "aten::tril", "aten::isneginf", "aten::where",
                                          "aten::all", "aten::_softmax_backward_data", "aten::cat")),
    ("copies", ("aten::copy_", "aten::clone", "aten::contiguous")),
    ("norms, GELU, loss", ("layer_norm", "gelu", "log_softmax", "nll_loss")),
    ("optimizer and clipping", ("_fused_adam", "_foreach", "aten::norm", "linalg_vector_norm")),
]


def operator_profile(args: argparse.Namespace, threads: int) -> int:
    from torch.profiler import ProfilerActivity, profile

    _, micro_batch, accum = PRESETS[args.preset]
    with scratch_dir("profile") as run_dir:
        cfg = run_config(args.preset, run_dir, train_batches=(args.steps + 1) * accum, threads=threads,
                         dropout=args.dropout)
        sink = ListSink()
        trainer = Trainer(cfg, sink, Control())
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.run()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    print("Operators of an engine run (torch.profiler, self CPU time; one warm-up step, validation of one batch "
          "and the epoch-end checkpoint included)")
    print(machine_line())
    model = cfg.model
    print(f"model {args.preset}: {model.n_layer} layers, d_model {model.n_embd}, dropout {model.dropout}, "
          f"micro-batch {micro_batch} x accum {accum}, {len(sink.of(StepEvent))} steps")
    grouped = {name: 0.0 for name, _ in OP_GROUPS}
    grouped["other"] = 0.0
    for event in events:
        group = next((name for name, keys in OP_GROUPS if any(k in event.key for k in keys)), "other")
        grouped[group] += event.self_cpu_time_total
    print(table(["operator family", "share of self CPU time"],
                [[name, f"{t / total:.1%}"] for name, t in sorted(grouped.items(), key=lambda x: -x[1])]))
    rows = [[e.key[:60], str(e.count), f"{e.self_cpu_time_total / total:.1%}"]
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]]
    print(table(["operator", "calls", "self CPU"], rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--ops", action="store_true", help="profile operators (torch.profiler) instead")
    parser.add_argument("--dropout", type=float, default=None, help="override the model's dropout (with --ops)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.top = 20, 5
    threads = choose_threads(None, for_ui=False)
    if args.ops:
        return operator_profile(args, threads)
    _, micro_batch, accum = PRESETS[args.preset]
    with scratch_dir("profile") as run_dir:
        cfg = run_config(args.preset, run_dir, train_batches=args.steps * accum, threads=threads)
        sink = ListSink()
        trainer = Trainer(cfg, sink, Control())
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        trainer.run()
        profile.disable()
        wall = time.perf_counter() - started
    steps = len(sink.of(StepEvent))
    stats = pstats.Stats(profile)
    total = stats.total_tt
    own = [(fn, entry[2]) for fn, entry in stats.stats.items() if is_engine_python(fn[0])]  # entry[2] = tottime
    own_total = sum(t for _, t in own)
    print("Engine bookkeeping per optimizer step (cProfile; it inflates Python time, so read it as an upper bound)")
    print(machine_line())
    print(f"model {args.preset}, micro-batch {micro_batch} x accum {accum}, {steps} steps, {torch.get_num_threads()} "
          f"threads; wall {wall:.2f} s under the profiler")
    print(f"whole step {total / steps * 1e6:,.0f} us; engine's own Python + stdlib {own_total / steps * 1e6:,.0f} us "
          f"({own_total / total:.1%})")
    rows = []
    for (filename, line, name), tottime in sorted(own, key=lambda x: -x[1])[: args.top]:
        short = filename.split("tui_trainer/")[-1] if "tui_trainer" in filename else filename.rsplit("/", 1)[-1]
        rows.append([f"{short}:{line} {name}", f"{tottime / steps * 1e6:,.1f}"])
    print(table(["function (self time)", "us per step"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
