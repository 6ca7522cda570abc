"""Benchmark 1: engine throughput vs the plainest inline training loop.

Trains the same GPT on the same data tensor, sampled the same way, with the same threads,
(a) through the engine headless (``Trainer(cfg, sink, control).run()``) and (b) with the
inline forward/backward/step loop written below (``PlainLoop``), and prints tokens/s of
each and their ratio in steady state (warm-up steps skipped).

Two ways to alternate them (--mode):

- ``interleaved`` (default): one engine step, one plain step, one engine step, ... in one
  process: the engine's sink runs a plain-loop step each time the engine reports a step.
  Each pair of steps is measured seconds apart, so a neighbour's burst on a shared machine
  hits both sides alike. An engine step is timed from the moment its sink hands control
  back to the moment it reports the next step, so it holds everything the engine does per
  step (micro-step events, commands, RNG capture, metrics.jsonl, the live diagnosis).
- ``runs``: whole runs alternate (engine, plain, plain, engine, ...), each alone in the
  process; a step's time is the wall clock between consecutive step reports.

Validation and the epoch-end checkpoints are outside the timed steps (the plain loop does
neither). Set-up (data, model) is outside too.

    python benchmarks/throughput.py                         # seed and small configurations
    python benchmarks/throughput.py --presets small --steps 60 --reps 3
    python benchmarks/throughput.py --mode runs             # whole runs alternate
    python benchmarks/throughput.py --compile               # both sides under torch.compile
    python benchmarks/throughput.py --dropout 0             # what dropout costs on CPU
    python benchmarks/throughput.py --precision auto --plain-precision fp32   # what users get vs fp32
    python benchmarks/throughput.py --quick                 # seconds: a tiny model (CI smoke)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from _common import PRESETS, fmt_spread, machine_line, run_config, scratch_dir, spread, table

from tui_trainer.config import DataConfig
from tui_trainer.control import Control
from tui_trainer.data.dataset import load_corpus
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.precision import choose_precision
from tui_trainer.engine.runtime import choose_threads
from tui_trainer.events import StepEvent
from tui_trainer.model.gpt import GPT

TARGET_RATIO = 0.97  # engine vs plain loop in the same precision: the engine's own overhead
PRECISION_TARGET = 1.2  # engine at --precision auto vs the plain loop in fp32 (issue 20)
SEED = 1337

# (warm-up steps, measured steps, repetitions) per preset: ~2 minutes each on 2 quiet cores.
DEFAULT_RUNS = {"seed": (1, 5, 2), "small": (2, 25, 2), "tiny": (2, 10, 2)}


class PlainLoop:
    """The plainest loop, one optimizer step per ``step()``: forward, mean loss / accum,
    backward; then clip, step, zero; one ``.item()`` a step, as a loop that logs has."""

    def __init__(self, preset: str, args: argparse.Namespace, tokens: torch.Tensor, vocab_size: int) -> None:
        model_cfg, self.micro_batch, self.accum = PRESETS[preset]
        model_cfg = replace(model_cfg, vocab_size=vocab_size,
                            dropout=model_cfg.dropout if args.dropout is None else args.dropout)
        self.device = device = torch.device(args.device)
        self.block = block = model_cfg.block_size
        torch.manual_seed(SEED)
        self.model = GPT(model_cfg).to(device)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        # The engine's optimizer settings (fused AdamW, decay on matrices): the loops differ, not the maths.
        fused = device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=1e-3, betas=(0.9, 0.99), fused=fused, foreach=not fused)
        self.forward = torch.compile(self.model) if args.compile else self.model
        # Non-overlapping windows of one token tensor, visited in a (seed, epoch) permutation.
        data = tokens.to(device)
        n = (len(data) - 1) // block
        self.inputs, self.targets = data[: n * block].view(n, block), data[1 : n * block + 1].view(n, block)
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED * 1_000_003 + 1)).to(device)
        self.autocast_dtype = choose_precision(args.plain_precision, device, model=model_cfg)[1]
        self.cursor = 0
        self.model.train()

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.accum * self.block

    def step(self) -> tuple[float, float]:
        """One optimizer step; returns its (wall-clock, process CPU) seconds."""
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(self.accum):
            if self.cursor + self.micro_batch > len(self.order):
                self.cursor = 0
            index = self.order[self.cursor : self.cursor + self.micro_batch]
            self.cursor += self.micro_batch
            x, y = self.inputs[index], self.targets[index]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_dtype is not None):
                logits = self.forward(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1)) / self.accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()  # the one host sync a step
        return time.perf_counter() - started, time.process_time() - cpu_started


class Interleave:
    """The engine's sink: at each engine step, time it and run one plain-loop step."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        # Step k of the engine: from the hand-back after step k-1 to step k's report; (wall, CPU) seconds.
        self.engine_seconds: list[tuple[float, float]] = []
        self.plain_seconds: list[tuple[float, float]] = []
        self.tokens: list[int] = []
        self._handed_back: tuple[float, float] | None = None

    def emit(self, event: object) -> None:
        if not isinstance(event, StepEvent):
            return
        now = (time.perf_counter(), time.process_time())
        back = self._handed_back
        self.engine_seconds.append((now[0] - back[0], now[1] - back[1]) if back else (math.nan, math.nan))
        self.tokens.append(event.tokens)
        self.plain_seconds.append(self.plain.step())
        self._handed_back = (time.perf_counter(), time.process_time())


class StepClock:
    """A sink that stamps the wall clock each time the engine reports an optimizer step."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, int]] = []  # (perf_counter, tokens of the step)
        self.cpu_stamps: list[float] = []  # process_time at the same moments

    def emit(self, event: object) -> None:
        if isinstance(event, StepEvent):
            self.stamps.append((time.perf_counter(), event.tokens))
            self.cpu_stamps.append(time.process_time())


def steady_rate(stamps: list[tuple[float, int]], warmup: int) -> tuple[float, float]:
    """Steady-state tokens/s after ``warmup`` steps: (tokens per step over the *median* step
    time, all measured tokens over the whole measured time). A step's time is the wall clock
    between two consecutive step stamps, so it holds everything done per step."""
    measured = stamps[warmup:]
    durations = [b[0] - a[0] for a, b in zip(stamps[warmup - 1:], measured)]
    per_step = statistics.median(t / d for (_, t), d in zip(measured, durations))
    overall = sum(t for _, t in measured) / (measured[-1][0] - stamps[warmup - 1][0])
    return per_step, overall


def engine_config(preset: str, args: argparse.Namespace, run_dir: str, steps: int):
    accum = PRESETS[preset][2]
    return run_config(preset, run_dir, train_batches=steps * accum, threads=args.threads, device=args.device,
                      dropout=args.dropout, compile=args.compile, precision=args.precision)


Seconds = list[tuple[float, float]]  # per measured step: (wall-clock, process CPU) seconds


def interleaved_rep(preset: str, args: argparse.Namespace, warmup: int, steps: int, tokens: torch.Tensor,
                    vocab_size: int) -> tuple[Seconds, Seconds]:
    """Per measured pair of steps: the engine's seconds and the plain loop's."""
    sink = Interleave(PlainLoop(preset, args, tokens, vocab_size))
    with scratch_dir("throughput") as run_dir:
        end = Trainer(engine_config(preset, args, run_dir, warmup + steps), sink, Control()).run()
    if end.reason != "completed" or len(sink.tokens) != warmup + steps:
        raise RuntimeError(f"engine run ended early: {end}")
    if len(set(sink.tokens)) != 1 or sink.tokens[0] != sink.plain.tokens_per_step:
        raise RuntimeError("engine and plain loop steps hold different token counts")
    return sink.engine_seconds[warmup:], sink.plain_seconds[warmup:]


def whole_runs_rep(preset: str, args: argparse.Namespace, warmup: int, steps: int, tokens: torch.Tensor,
                   vocab_size: int, engine_first: bool) -> tuple[Seconds, Seconds]:
    """One engine run and one plain run, each alone; per measured step: seconds of each."""
    seconds = {}
    for side in (("engine", "plain") if engine_first else ("plain", "engine")):
        torch.set_num_threads(args.threads)
        if side == "engine":
            clock = StepClock()
            with scratch_dir("throughput") as run_dir:
                Trainer(engine_config(preset, args, run_dir, warmup + steps), clock, Control()).run()
            stamps = list(zip((s for s, _ in clock.stamps), clock.cpu_stamps))
            seconds[side] = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]
        else:
            plain = PlainLoop(preset, args, tokens, vocab_size)
            seconds[side] = [plain.step() for _ in range(warmup + steps)][warmup:]
    return seconds["engine"], seconds["plain"]


def bench_preset(preset: str, args: argparse.Namespace, tokens: torch.Tensor, vocab_size: int) -> dict:
    warmup, steps, reps = DEFAULT_RUNS[preset]
    warmup = max(1, args.warmup if args.warmup is not None else warmup)
    steps, reps = args.steps or steps, args.reps or reps
    model_cfg, micro_batch, accum = PRESETS[preset]
    dropout = model_cfg.dropout if args.dropout is None else args.dropout
    tokens_per_step = micro_batch * accum * model_cfg.block_size
    params = GPT(replace(model_cfg, vocab_size=vocab_size)).num_parameters()
    device = torch.device(args.device)  # (auto is chosen per model shape, as the engine does)
    engine_name = choose_precision(args.precision, device, model=model_cfg)[0]
    plain_name = choose_precision(args.plain_precision, device, model=model_cfg)[0]
    print(f"\n[{preset}] {model_cfg.n_layer} layers, d_model {model_cfg.n_embd}, {model_cfg.n_head} heads, "
          f"context {model_cfg.block_size}, micro-batch {micro_batch} x accum {accum} = {tokens_per_step:,} "
          f"tokens/step, {params:,} parameters, dropout {dropout}, {'compiled' if args.compile else 'eager'}, "
          f"engine {engine_name} (--precision {args.precision}), plain loop {plain_name}, "
          f"{args.threads} threads; {args.mode}: {reps} repetitions of {warmup} warm-up + {steps} measured steps",
          flush=True)
    engine_all, plain_all, rows = [], [], []
    for rep in range(reps):
        if args.mode == "interleaved":
            engine_s, plain_s = interleaved_rep(preset, args, warmup, steps, tokens, vocab_size)
            order = "interleaved"
        else:
            engine_s, plain_s = whole_runs_rep(preset, args, warmup, steps, tokens, vocab_size, rep % 2 == 0)
            order = "engine first" if rep % 2 == 0 else "plain first"
        engine_all += engine_s
        plain_all += plain_s
        engine_rate = tokens_per_step / statistics.median(w for w, _ in engine_s)
        plain_rate = tokens_per_step / statistics.median(w for w, _ in plain_s)
        cpu_ratio = statistics.median(c for _, c in plain_s) / statistics.median(c for _, c in engine_s)
        rows.append([str(rep + 1), order, f"{engine_rate:,.0f}", f"{plain_rate:,.0f}",
                     f"{engine_rate / plain_rate:.3f}", f"{cpu_ratio:.3f}"])
        print(f"  rep {rep + 1}: engine {engine_rate:,.0f} tok/s, plain {plain_rate:,.0f} tok/s (median step), "
              f"ratio {engine_rate / plain_rate:.3f}, by CPU time {cpu_ratio:.3f}", flush=True)
    print(table(["rep", "order", "engine tok/s", "plain tok/s", "engine/plain", "by CPU time"], rows))
    engine_wall, engine_cpu = zip(*engine_all)
    plain_wall, plain_cpu = zip(*plain_all)
    return {"preset": preset, "steps": len(engine_all), "engine_precision": engine_name, "plain_name": plain_name,
            "engine": [tokens_per_step / s for s in engine_wall], "plain": [tokens_per_step / s for s in plain_wall],
            # A pair is the engine's k-th and the plain loop's k-th measured step.
            "ratios": [p / e for e, p in zip(engine_wall, plain_wall)],
            "median_ratio": statistics.median(plain_wall) / statistics.median(engine_wall),
            "total_ratio": sum(plain_wall) / sum(engine_wall),
            "cpu_ratio": statistics.median(plain_cpu) / statistics.median(engine_cpu)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="seed,small", help="comma-separated: seed, small, tiny")
    parser.add_argument("--mode", choices=("interleaved", "runs"), default="interleaved",
                        help="alternate step by step in one process (default) or whole runs")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (fresh engine and plain loop each)")
    parser.add_argument("--steps", type=int, default=None, help="measured optimizer steps per repetition")
    parser.add_argument("--warmup", type=int, default=None, help="optimizer steps skipped at the start (>= 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: the engine's choice)")
    parser.add_argument("--dropout", type=float, default=None, help="override the model's dropout (default 0.1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile on both sides")
    parser.add_argument("--precision", default="auto", help="the engine's --precision: auto, fp32 or bf16")
    parser.add_argument("--plain-precision", default=None,
                        help="the plain loop's precision: auto, fp32 or bf16 (default: the engine's)")
    parser.add_argument("--quick", action="store_true", help="tiny model, short repetitions (smoke test)")
    args = parser.parse_args(argv)
    args.plain_precision = args.plain_precision or args.precision
    if args.quick:
        args.presets = "tiny"
    args.threads = choose_threads(args.threads, for_ui=False)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")
    presets = [p.strip() for p in args.presets.split(",")]
    print("Benchmark 1: engine (headless) vs a plain inline loop, tokens/s in steady state")
    print(machine_line(args.device))
    corpus = load_corpus(DataConfig(), max(PRESETS[p][0].block_size for p in presets))
    tokens = torch.from_numpy(np.asarray(corpus.train_tokens, dtype=np.int64))  # the plain loop holds them all
    results = [bench_preset(p, args, tokens, corpus.vocab.size) for p in presets]
    print("\nsummary: tok/s per measured step (min / median / max); engine/plain per pair of steps, then as the "
          "ratio of median step times, of total times, and of median CPU times per step")
    rows = [[r["preset"], str(r["steps"]), fmt_spread(r["engine"]), fmt_spread(r["plain"]),
             fmt_spread(r["ratios"], ".3f"), f"{r['median_ratio']:.3f}", f"{r['total_ratio']:.3f}",
             f"{r['cpu_ratio']:.3f}"] for r in results]
    print(table(["preset", "pairs", "engine tok/s", "plain tok/s", "engine/plain per pair", "of medians",
                 "of totals", "of CPU"], rows))
    # Like for like, the engine's overhead; engine in bf16 vs plain fp32, what --precision buys.
    for r in results:
        target = PRECISION_TARGET if (r["engine_precision"], r["plain_name"]) == ("bf16", "fp32") else TARGET_RATIO
        low, mid, high = spread(r["ratios"])
        verdict = "meets" if r["median_ratio"] >= target else "misses"
        print(f"{r['preset']}: engine ({r['engine_precision']}) / plain ({r['plain_name']}) {r['median_ratio']:.3f} "
              f"(median step times; per pair {low:.3f} / {mid:.3f} / {high:.3f}) {verdict} the {target} target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
