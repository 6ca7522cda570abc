"""Benchmark 2: the memory wall. Micro-batch 8 x accum 16 against one batch of 128.

Each configuration trains the same model for the same optimizer steps through the engine
(headless), in a fresh process so that peaks do not mix. A sink reads the peak memory at
each step event: peak RSS on CPU (the kernel's high-water mark, reset after set-up), or
``torch.cuda.max_memory_allocated`` on CUDA; set-up, validation and checkpoints are left
out. Both runs see the same 128 examples per step with dropout 0, so they make the same
update; the script checks that too (exit code 1 when the weight changes differ by more than
``--tolerance``). Beside the measurements it prints a back-of-envelope
activation estimate and the bytes autograd actually saves for backward (counted with
``torch.autograd.graph.saved_tensors_hooks``).

    python benchmarks/memory.py                   # seed model, 2 steps each (~1 min on 2 cores)
    python benchmarks/memory.py --device cuda
    python benchmarks/memory.py --precision bf16  # the floor's 2-byte activations against bf16's peak
    python benchmarks/memory.py --quick           # tiny model (CI smoke)
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
from _common import PRESETS, machine_line, run_config, scratch_dir, table

from tui_trainer.config import DataConfig, RunConfig, TrainConfig
from tui_trainer.control import Control
from tui_trainer.data.dataset import WindowDataset, load_corpus
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.memory import activation_estimate_bytes, saved_for_backward_bytes, training_bytes_floor
from tui_trainer.engine.precision import choose_precision
from tui_trainer.events import StepEvent
from tui_trainer.model.gpt import GPT

MIB = 2**20
SPLITS = [(8, 16), (128, 1)]  # (micro_batch, accum): 128 sequences per step either way
QUICK_SPLITS = [(2, 4), (8, 1)]
# Largest relative difference of the weight change that still counts as "the same update": fp32
# sums in another order differ by ~1e-5 after 2 steps (benchmarks/README.md); a wrong scaling of
# the accumulated loss is off by 1e-2 or more.
SAME_UPDATE_TOLERANCE = 1e-3


# -- measuring in the child process ---------------------------------------------------------

def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> bool:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakProbe:
    """A sink that records the peak memory so far at every optimizer step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps: list[dict] = []

    def emit(self, event: object) -> None:
        if isinstance(event, StepEvent):
            peak = (torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda"
                    else peak_rss_bytes())
            self.steps.append({"step": event.step, "loss": event.loss, "grad_norm": event.grad_norm, "peak": peak})


def child(args: argparse.Namespace) -> int:
    with scratch_dir("memory") as run_dir:
        cfg = run_config(args.preset, run_dir, train_batches=args.steps * args.accum, val_batches=1,
                         dropout=0.0, micro_batch=args.micro_batch, accum=args.accum, device=args.device,
                         threads=args.threads, precision=args.precision)
        probe = PeakProbe(torch.device(args.device))
        trainer = Trainer(cfg, probe, Control())
        gc.collect()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(trainer.device)
            baseline = torch.cuda.memory_allocated(trainer.device)
        else:
            if not reset_peak_rss():
                raise SystemExit("cannot reset the peak RSS here (/proc/self/clear_refs); Linux is needed")
            baseline = rss_bytes()
        end = trainer.run()
        if end.reason != "completed":
            raise SystemExit(f"run ended with {end.reason}: {end.message}")
        torch.save({k: v.cpu() for k, v in trainer.model.state_dict().items()}, args.out + ".pt")
        Path(args.out).write_text(json.dumps({"baseline": baseline, "steps": probe.steps}))
    return 0


# -- the parent: run both, compare, estimate ------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="seed", help="seed, small or tiny (model size; dropout 0)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per configuration")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or auto (the engine's --precision)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 step (smoke test)")
    parser.add_argument("--tolerance", type=float, default=SAME_UPDATE_TOLERANCE,
                        help=f"largest relative difference of the weight change that passes the same-update "
                             f"check (default {SAME_UPDATE_TOLERANCE:g}); the script exits 1 above it")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--accum", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    splits = SPLITS
    if args.quick:
        args.preset, args.steps, splits = "tiny", 1, QUICK_SPLITS
    model_cfg = PRESETS[args.preset][0]
    precision, autocast_dtype = choose_precision(args.precision, torch.device(args.device), model=model_cfg)
    metric = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS"
    print(f"Benchmark 2: the memory wall ({metric}), micro-batch x accum vs one big batch")
    print(machine_line(args.device))
    print(f"model {args.preset}: {model_cfg.n_layer} layers, d_model {model_cfg.n_embd}, context "
          f"{model_cfg.block_size}, dropout 0, {precision}; {args.steps} optimizer steps per run, each in its own process",
          flush=True)
    results = {}
    with scratch_dir("memory-out") as out_dir:
        for micro_batch, accum in splits:
            out = str(Path(out_dir) / f"{micro_batch}x{accum}.json")
            command = [sys.executable, __file__, "--child", "--preset", args.preset, "--steps", str(args.steps),
                       "--device", args.device, "--micro-batch", str(micro_batch), "--accum", str(accum),
                       "--out", out, "--precision", precision] + (["--threads", str(args.threads)] if args.threads else [])
            subprocess.run(command, check=True)
            record = json.loads(Path(out).read_text())
            record["state"] = torch.load(out + ".pt", weights_only=True)
            results[(micro_batch, accum)] = record

    corpus = load_corpus(DataConfig(), model_cfg.block_size)
    model_cfg = replace(model_cfg, dropout=0.0, vocab_size=corpus.vocab.size)
    torch.manual_seed(1337)
    model = GPT(model_cfg)  # the engine's initial weights: same seed, same constructor
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    data = WindowDataset(corpus.train_tokens, model_cfg.block_size)

    rows, floors = [], []
    for micro_batch, accum in splits:
        record = results[(micro_batch, accum)]
        peak = max(s["peak"] for s in record["steps"])
        tokens = micro_batch * model_cfg.block_size
        inputs, targets = data.batch(torch.arange(micro_batch))
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=autocast_dtype is not None):
            saved = saved_for_backward_bytes(model, inputs, targets)
        estimate = activation_estimate_bytes(model_cfg.n_layer, model_cfg.n_embd, model_cfg.vocab_size, tokens,
                                             2 if autocast_dtype is not None else 4)
        record["peak_minus_baseline"] = peak - record["baseline"]
        floor = training_bytes_floor(RunConfig(model=model_cfg, train=TrainConfig(micro_batch=micro_batch, accum=accum)),
                                     args.device.split(":")[0], autocast_bf16=autocast_dtype is not None)
        floors.append(peak / floor)
        rows.append([f"{micro_batch} x {accum}", f"{micro_batch * accum}", f"{record['baseline'] / MIB:,.0f}",
                     f"{peak / MIB:,.0f}", f"{(peak - record['baseline']) / MIB:,.0f}",
                     f"{estimate / MIB:,.0f}", f"{saved / MIB:,.0f}", f"{floor / MIB:,.0f}",
                     " ".join(f"{s['loss']:.5f}" for s in record["steps"])])
    unit = "MiB"
    print(table(["micro x accum", "seqs/step", f"after set-up {unit}", f"peak {unit}", f"peak - set-up {unit}",
                 f"estimate {unit}", f"saved for backward {unit}",
                 f"pre-flight floor {unit}", "step losses"], rows))
    small, big = (results[s] for s in splits)
    ratio = small["peak_minus_baseline"] / big["peak_minus_baseline"]
    peak_ratio = max(s["peak"] for s in small["steps"]) / max(s["peak"] for s in big["steps"])
    print(f"peak ratio {splits[0][0]}x{splits[0][1]} / {splits[1][0]}x{splits[1][1]}: {peak_ratio:.3f} "
          f"(training memory above set-up: {ratio:.3f})")
    # The same update: compare each run's change of every weight from the shared initial weights.
    worst = 0.0
    for name, start in initial.items():
        delta_small = small["state"][name] - start
        delta_big = big["state"][name] - start
        worst = max(worst, ((delta_small - delta_big).norm() / delta_big.norm().clamp_min(1e-30)).item())
    grad_norms = [(a["grad_norm"], b["grad_norm"]) for a, b in zip(small["steps"], big["steps"])]
    print("gradient norms per step (accumulated vs one batch): "
          + ", ".join(f"{a:.6f} vs {b:.6f}" for a, b in grad_norms))
    same = worst <= args.tolerance
    print(f"same update: max relative difference of the weight change after {args.steps} steps = {worst:.1e} — "
          + (f"within the tolerance {args.tolerance:.0e}" if same else f"FAILED: above the tolerance {args.tolerance:.0e}"))
    print("estimate = 17 x d_model floats per token per layer + final LN and log-probs, at 4 bytes (2 under bf16) "
          "(the activations of ONE micro-batch); saved for backward = distinct tensors autograd keeps, counted")
    print("pre-flight floor = what tui-trainer checks against free memory before a run (tui_trainer/engine/memory.py); "
          f"peak / floor = {', '.join(f'{r:.2f}' for r in floors)} (>= 1: the check never refuses a run that fits)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
