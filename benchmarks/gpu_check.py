"""The GPU check: what the CPU suite cannot prove, on one CUDA card, in at most ~8 minutes, one table.

    accumulation      the accumulated gradient against the full batch on CUDA in fp32 (TF32 off), even
                      splits and remainder windows; tolerance TOLERANCE (relative, per parameter)
    quality           bf16 and fp16 (loss scaling) against fp32: val loss after the same tokens, same
                      seed; within QUALITY_TOLERANCE of fp32 (bf16 only on a card with bf16 units)
    speed             the engine's tokens/s and MFU per precision, compile off and on; with
                      --nanogpt PATH, karpathy/nanoGPT's train.py on the same model and batch too
    host syncs        synchronizing calls per optimizer step (torch.cuda.set_sync_debug_mode): exactly 1
    resume            stop at a step, resume: every later step's loss bit-identical, fp32 on CUDA
    nccl              a 1-process NCCL group: accumulate_window then the gradient sum (gradient_sum.py), the gradient
                      equal to the plain one
    memory wall       (issue 26, _memory_wall.py; last, as it caps the process's memory) a model whose micro-batch
                      64 needs more than the --memory-budget given (40% of what a first probe measured): auto
                      chooses less, its peak under the budget, its losses the hand-given split's; then a real
                      torch.OutOfMemoryError mid-window under a memory cap, the run going on at half the
                      micro-batch on the losses of an uninterrupted run at that split (1e-5, fp32)

    python benchmarks/gpu_check.py                        # on a machine with one NVIDIA GPU
    python benchmarks/gpu_check.py --nanogpt ~/nanoGPT    # + nanoGPT's train.py (its shakespeare_char
                                                          #   data prepared: data/shakespeare_char/prepare.py)
    python benchmarks/gpu_check.py --quick                # tiny model, fewer steps (the memory wall's
                                                          #   model is its own, the same)
    python benchmarks/gpu_check.py --only "memory wall"   # one group of rows (a name from the list above)

Without CUDA it says so and exits 3 (nothing measured): the CPU suite (tests/test_fp16.py and the
others) covers the same code paths there. Never estimate its figures: run it on the card.
Exit codes: 0 every check passed, 1 a check failed, 3 nothing measured.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from _common import CHECK_FAILED, NOTHING_MEASURED, PRESETS, machine_line, run_config, scratch_dir, table
from _memory_wall import check_auto_fits, check_recovered_oom, with_matmul_precision_kept

from tui_trainer.data.dataset import WindowDataset, load_corpus, plan_windows
from tui_trainer.engine.accumulation import accumulate_window
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.precision import bf16_support
from tui_trainer.events import EpochEvent, ListSink, StepEvent
from tui_trainer.model.gpt import GPT

CORPUS = Path(__file__).resolve().parent.parent / "datasets" / "tinyshakespeare.txt"
TOLERANCE = 1e-4  # fp32, TF32 off: the CPU suite's bar (tests/test_accumulation.py)
QUALITY_TOLERANCE = 0.01  # bf16/fp16 val loss within 1% of fp32's after the same tokens
SPLITS = [(16, 3), (12, 4), (8, 6), (20, 3), (10, 5), (7, 7)]  # of 48 examples; the last three leave a remainder
WARMUP_STEPS = 3  # left out of tokens/s (allocations, compilation)

GROUPS = ("accumulation", "speed", "host syncs", "resume", "nccl", "memory wall")  # --only (speed: quality too)

Row = list[str]


def verdict(ok: bool) -> str:
    return "ok" if ok else "FAILED"


# -- accumulation on CUDA --------------------------------------------------------------------------

def check_accumulation(preset: str) -> list[Row]:
    torch.backends.cuda.matmul.allow_tf32 = False  # the exactness bar is fp32's
    model_cfg = replace(PRESETS[preset][0], dropout=0.0)
    corpus = load_corpus(run_config(preset, "unused", data=str(CORPUS)).data, model_cfg.block_size)
    data = WindowDataset(corpus.train_tokens, model_cfg.block_size, "cuda")
    torch.manual_seed(0)
    model = GPT(replace(model_cfg, vocab_size=corpus.vocab.size)).cuda()
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[:48]
    model.zero_grad(set_to_none=True)
    inputs, targets = data.batch(indices)
    (model(inputs, targets) / targets.numel()).backward()
    full = [p.grad.clone() for p in model.parameters()]
    rows = []
    for micro_batch, accum in SPLITS:
        window = plan_windows(48, micro_batch=micro_batch, accum=accum)[0]
        model.zero_grad(set_to_none=True)
        accumulate_window(model, data, indices, window)
        worst = max(((p.grad - g).norm() / g.norm().clamp_min(1e-30)).item() for p, g in zip(model.parameters(), full))
        remainder = " (remainder)" if 48 % micro_batch else ""
        rows.append([f"accumulation {micro_batch}x{accum}{remainder}", f"max rel diff {worst:.1e}",
                     f"tolerance {TOLERANCE:g}", verdict(worst <= TOLERANCE)])
    torch.backends.cuda.matmul.allow_tf32 = True
    return rows


# -- engine runs -------------------------------------------------------------------------------------

def engine_run(preset: str, steps: int, precision: str, *, compile: bool = False, val_batches: int = 20,
               sink: ListSink | None = None, run_dir: Path, resume: Path | None = None,
               stop_at: int | None = None) -> tuple[ListSink, Trainer]:
    accum = PRESETS[preset][2]
    cfg = run_config(preset, run_dir, train_batches=steps * accum, val_batches=val_batches, device="cuda",
                     precision=precision, compile=compile, data=str(CORPUS), dropout=0.0)
    sink = sink or ListSink()
    trainer = Trainer(cfg, sink, resume=resume) if resume else Trainer(cfg, sink)
    if stop_at is not None:
        emit = sink.emit

        def stopping(event, emit=emit):
            emit(event)
            if isinstance(event, StepEvent) and event.step == stop_at:
                trainer.control.stop("interrupted")

        sink.emit = stopping
    trainer.run()
    return sink, trainer


def throughput(sink: ListSink) -> tuple[float, float | None]:
    steps = sink.of(StepEvent)[WARMUP_STEPS:]
    tokens_per_s = statistics.median(s.tokens_per_s for s in steps) if steps else 0.0
    mfus = [s.mfu for s in steps if s.mfu is not None]
    return tokens_per_s, (statistics.median(mfus) if mfus else None)


def check_quality_and_speed(preset: str, steps: int, scratch: Path) -> list[Row]:
    precisions = ["fp32", "fp16"] + (["bf16"] if bf16_support(torch.device("cuda")).native else [])
    rows, losses = [], {}
    for precision in precisions:
        for compile in (False, True):
            sink, _ = engine_run(preset, steps, precision, compile=compile, run_dir=scratch / f"{precision}-{compile}")
            tokens_per_s, mfu = throughput(sink)
            epoch = sink.of(EpochEvent)[-1]
            skipped = sum(s.skipped for s in sink.of(StepEvent))
            if not compile:
                losses[precision] = epoch.val_loss
            mfu_text = f"MFU {mfu:.1%}" if mfu is not None else "MFU — (card not in the table)"
            rows.append([f"engine {precision}{' compiled' if compile else ''}",
                         f"{tokens_per_s:,.0f} tokens/s", f"{mfu_text}; val {epoch.val_loss:.4f}"
                         + (f"; {skipped} skipped" if skipped else ""), "measured"])
    for precision in precisions[1:]:
        off = losses[precision] / losses["fp32"] - 1
        rows.append([f"quality {precision} vs fp32", f"val {losses[precision]:.4f} vs {losses['fp32']:.4f}",
                     f"{off:+.2%} (bar {QUALITY_TOLERANCE:.0%})", verdict(abs(off) <= QUALITY_TOLERANCE)])
    return rows


def check_host_syncs(preset: str, scratch: Path) -> list[Row]:
    """Synchronizing calls (torch's sync debug mode warns at each) between two step records."""
    counts: list[int] = []
    sink = ListSink()
    emit = sink.emit
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")

            def counting(event, emit=emit):
                emit(event)
                if isinstance(event, StepEvent):
                    counts.append(len(seen))
                    seen.clear()

            sink.emit = counting
            engine_run(preset, 8, "fp16", run_dir=scratch / "syncs", sink=sink, val_batches=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    inner = counts[1:]  # the first step follows the set-up
    ok = bool(inner) and all(c == 1 for c in inner)
    return [["host syncs per step (fp16)", f"{inner}", "want 1 each", verdict(ok)]]


def check_resume(preset: str, steps: int, scratch: Path) -> list[Row]:
    whole, _ = engine_run(preset, steps, "fp32", run_dir=scratch / "whole", val_batches=2)
    want = [(s.step, s.loss) for s in whole.of(StepEvent)]
    run_dir = scratch / "resumed"
    first, _ = engine_run(preset, steps, "fp32", run_dir=run_dir, val_batches=2, stop_at=steps // 2)
    second, _ = engine_run(preset, steps, "fp32", run_dir=scratch / "unused", val_batches=2, resume=run_dir)
    got = [(s.step, s.loss) for s in first.of(StepEvent) + second.of(StepEvent)]
    same = sum(a == b for a, b in zip(got, want))
    return [["resume fp32 on CUDA", f"{same}/{len(want)} step losses ==", f"stopped at step {steps // 2}",
             verdict(got == want)]]


def check_nccl(preset: str) -> list[Row]:
    """One process, NCCL: the gradients' sum after the window (gradient_sum.py) leaves the plain gradient."""
    import torch.distributed as dist

    from tui_trainer.engine.gradient_sum import SummedGradients

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        model_cfg = replace(PRESETS[preset][0], dropout=0.0)
        corpus = load_corpus(run_config(preset, "unused", data=str(CORPUS)).data, model_cfg.block_size)
        data = WindowDataset(corpus.train_tokens, model_cfg.block_size, "cuda")
        torch.manual_seed(0)
        model = GPT(replace(model_cfg, vocab_size=corpus.vocab.size)).cuda()
        window = plan_windows(24, micro_batch=8, accum=3)[0]
        indices = torch.arange(24)
        accumulate_window(model, data, indices, window)
        plain = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        accumulate_window(model, data, indices, window)
        SummedGradients(model.parameters()).sum_()
        worst = max(((p.grad - g).norm() / g.norm().clamp_min(1e-30)).item() for p, g in zip(model.parameters(), plain))
    finally:
        dist.destroy_process_group()
    return [["nccl, 1 process (gradient sum)", f"max rel diff {worst:.1e}", f"tolerance {TOLERANCE:g}",
             verdict(worst <= TOLERANCE)]]


# -- nanoGPT ---------------------------------------------------------------------------------------

NANOGPT_ITER = re.compile(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def check_nanogpt(checkout: Path, preset: str, steps: int) -> list[Row]:
    """karpathy/nanoGPT's train.py, the same model and batch, compile off and on: its own step times."""
    model, micro_batch, accum = PRESETS[preset]
    if not (checkout / "data" / "shakespeare_char" / "train.bin").exists():
        return [["nanoGPT train.py", "not run", "run data/shakespeare_char/prepare.py in the checkout first",
                 "skipped"]]
    dtype = "bfloat16" if bf16_support(torch.device("cuda")).native else "float16"
    rows = []
    for compile in (False, True):
        command = [sys.executable, "train.py", "config/train_shakespeare_char.py", f"--compile={compile}",
                   f"--n_layer={model.n_layer}", f"--n_head={model.n_head}", f"--n_embd={model.n_embd}",
                   f"--block_size={model.block_size}", f"--batch_size={micro_batch}",
                   f"--gradient_accumulation_steps={accum}", f"--max_iters={steps}", "--eval_interval=100000",
                   "--eval_iters=1", "--log_interval=1", f"--dtype={dtype}", "--dropout=0.0", "--device=cuda",
                   "--always_save_checkpoint=False", "--out_dir=/tmp/nanogpt-gpu-check"]
        done = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=300)
        times = [float(ms) for it, ms in NANOGPT_ITER.findall(done.stdout) if int(it) >= WARMUP_STEPS]
        if done.returncode != 0 or not times:
            rows.append([f"nanoGPT {dtype}{' compiled' if compile else ''}", "failed", done.stderr[-80:].strip(),
                         "FAILED"])
            continue
        tokens_per_s = micro_batch * accum * model.block_size / (statistics.median(times) / 1000)
        rows.append([f"nanoGPT {dtype}{' compiled' if compile else ''}", f"{tokens_per_s:,.0f} tokens/s",
                     "its step time, same model and batch", "measured"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="seed, small or tiny")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of each engine run")
    parser.add_argument("--nanogpt", type=Path, help="a karpathy/nanoGPT checkout: its train.py is timed too")
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 steps")
    parser.add_argument("--only", choices=GROUPS, help="run this group of rows alone")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("nothing measured: no CUDA device here (gpu_check.py needs one NVIDIA GPU); the CPU suite "
              "tests the same code paths (tests/test_fp16.py)")
        return NOTHING_MEASURED
    preset, steps = ("tiny", 8) if args.quick else (args.preset, args.steps)
    started = time.monotonic()
    print(machine_line("cuda"))
    print(f"preset {preset}, {steps} optimizer steps a run, tinyshakespeare")
    rows: list[Row] = []
    seconds: dict[str, float] = {}  # each group's (what a later call on a card can afford)
    with scratch_dir("gpu-check") as scratch_name:
        scratch = Path(scratch_name)
        checks = (("accumulation", "accumulation", lambda: check_accumulation(preset)),
                  ("quality/speed", "speed", lambda: check_quality_and_speed(preset, steps, scratch)),
                  ("host syncs", "host syncs", lambda: check_host_syncs(preset, scratch)),
                  ("resume", "resume", lambda: check_resume(preset, max(steps // 3, 6), scratch)),
                  ("nccl", "nccl", lambda: check_nccl(preset)),
                  ("memory wall: auto", "memory wall",
                   lambda: with_matmul_precision_kept(lambda: check_auto_fits(scratch))),
                  # (last: it caps the process's memory, released afterwards whatever happens)
                  ("memory wall: oom", "memory wall",
                   lambda: with_matmul_precision_kept(lambda: check_recovered_oom(scratch))))
        for name, group, check in checks:
            if args.only is not None and group != args.only:
                continue
            check_started = time.monotonic()
            try:
                rows += check()
            except Exception as exc:  # one check's failure must not hide the others' figures
                rows.append([name, "raised", f"{type(exc).__name__}: {str(exc)[:80]}", "FAILED"])
            seconds[name] = time.monotonic() - check_started
        if args.nanogpt is not None and args.only in (None, "speed"):
            rows += check_nanogpt(args.nanogpt.expanduser(), preset, steps)
    print(table(["check", "result", "detail", "verdict"], rows))
    print(f"{time.monotonic() - started:.0f} s in all: " + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()))
    return CHECK_FAILED if any(row[-1] == "FAILED" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
