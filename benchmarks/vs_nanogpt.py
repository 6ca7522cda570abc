"""tui-trainer against nanoGPT's own ``train.py``: tokens/s on nanoGPT's small config, same tokens.

The config (issue 29): 4 layers, 8 heads, width 128, context 128, micro-batch 8 x accumulation 4
(4,096 tokens a step), lr 1e-3, dropout 0, tiny-shakespeare by characters, on the CPU. nanoGPT runs
from a checkout you give (``--nanogpt PATH``: its files are copied to a scratch folder and prepared
there with this repo's corpus; the checkout is not touched) with ``--compile=False --bias=True``
(our GPT has GPT-2's biases); tui-trainer with ``--precision auto`` (its default) and, as a second
row, ``--precision fp32`` (nanoGPT on a CPU trains in fp32: it autocasts on CUDA only).

Runs alternate (nanoGPT, tui-trainer auto, tui-trainer fp32, and again ``--repeats`` times) in one
sitting. The pace is steady state: the tokens between the progress line at step ``--skip`` and the
last one, over the wall time between the two lines as they arrive (start-up, the first steps and
the validation passes left out, for both alike). The val loss is each run's own estimate after the
same tokens (nanoGPT: 20 random batches; tui-trainer: its first 20 validation micro-batches), so
read it as "the same quality", not to the third decimal. Goal (issue 29): auto >= 1.25x nanoGPT.

Whole runs a minute apart see the machine's pace move (on a shared 2-core VM, 15-20% between two
runs of the same command), so a second table measures in lockstep in one process: tui-trainer's
engine (``Trainer``, ``--precision auto``) and, each time it reports an optimizer step, one step of
nanoGPT's own loop body (its ``model.py`` GPT and ``configure_optimizers``; micro-steps of
``loss / accum`` backward, clip 1.0, step, zero) on batches drawn from the same tokens, so each pair
of steps is measured seconds apart. The figure is the median over pairs of the two step times.

    python benchmarks/vs_nanogpt.py --nanogpt ~/src/nanoGPT
    python benchmarks/vs_nanogpt.py --nanogpt ~/src/nanoGPT --quick    # a few steps (smoke test)
    python benchmarks/vs_nanogpt.py --nanogpt ~/src/nanoGPT --repeats 0   # the lockstep table only
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import NOTHING_MEASURED, machine_line, run_config, scratch_dir, table
from throughput import Interleave
from time_to_loss import CORPUS, prepare_nanogpt, timed_lines

from tui_trainer.config import ModelConfig
from tui_trainer.control import Control
from tui_trainer.data.dataset import load_corpus
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.precision import choose_precision

SHAPE = {"n_layer": 4, "n_head": 8, "n_embd": 128, "block_size": 128, "micro_batch": 8, "accum": 4, "lr": 1e-3}
NANOGPT_ITER = re.compile(r"^iter (\d+): loss")
NANOGPT_VAL = re.compile(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)")
TUI_STEP = re.compile(r"\(optimizer step (\d+)\)")
TUI_VAL = re.compile(r"^epoch \d+/\d+ .*val_loss=([\d.]+)")


def steady_pace(lines: list[tuple[float, str]], pattern: re.Pattern, skip: int, tokens_per_step: int) -> float | None:
    marks = [(int(m.group(1)), t) for t, line in lines if (m := pattern.search(line))]
    marks = [(step, t) for step, t in marks if step >= skip]
    if len(marks) < 2 or marks[-1][1] <= marks[0][1]:
        return None
    (s0, t0), (s1, t1) = marks[0], marks[-1]
    return (s1 - s0) * tokens_per_step / (t1 - t0)


def run_nanogpt(work: Path, steps: int, log_every: int, timeout: float) -> tuple[float | None, float | None]:
    s = SHAPE
    command = [sys.executable, "train.py", "--dataset=shakespeare_char", "--device=cpu", "--compile=False",
               "--bias=True", "--dropout=0.0", f"--n_layer={s['n_layer']}", f"--n_head={s['n_head']}",
               f"--n_embd={s['n_embd']}", f"--block_size={s['block_size']}", f"--batch_size={s['micro_batch']}",
               f"--gradient_accumulation_steps={s['accum']}", f"--learning_rate={s['lr']}",
               f"--min_lr={s['lr'] / 10}", f"--max_iters={steps}", f"--lr_decay_iters={steps}",
               f"--warmup_iters={max(1, steps // 20)}", f"--eval_interval={steps}", "--eval_iters=20",
               f"--log_interval={log_every}", "--always_save_checkpoint=False", f"--out_dir={work / 'out'}",
               "--wandb_log=False", "--beta2=0.99"]
    lines, code = timed_lines(command, work, timeout)
    if code != 0:
        print(f"note: nanoGPT's train.py exited {code}: " + " | ".join(line for _, line in lines[-3:]))
    vals = [float(m.group(2)) for _, line in lines if (m := NANOGPT_VAL.search(line)) and int(m.group(1)) == steps]
    return steady_pace(lines, NANOGPT_ITER, SKIP, TOKENS_PER_STEP), (vals[-1] if vals else None)


def run_tui(work: Path, corpus: Path, steps: int, log_every: int, timeout: float,
            precision: str) -> tuple[float | None, float | None]:
    s = SHAPE
    command = [sys.executable, "-m", "tui_trainer", "train", "--no-ui", "--data", str(corpus), "--run-dir",
               str(work / f"tui-{precision}"), "--overwrite", "--n-layer", str(s["n_layer"]), "--n-head",
               str(s["n_head"]), "--n-embd", str(s["n_embd"]), "--block-size", str(s["block_size"]),
               "--dropout", "0", "--micro-batch", str(s["micro_batch"]), "--accum", str(s["accum"]), "--lr",
               str(s["lr"]), "--epochs", "1", "--limit-train-batches", str(steps * s["accum"]),
               "--limit-val-batches", "20", "--warmup-tokens", str(max(1, steps // 20) * TOKENS_PER_STEP),
               "--precision", precision, "--sample-tokens", "0", "--patience", "0", "--log-every", str(log_every)]
    lines, code = timed_lines(command, work, timeout)
    if code != 0:
        print(f"note: tui-trainer exited {code}: " + " | ".join(line for _, line in lines[-3:]))
    vals = [float(m.group(1)) for _, line in lines if (m := TUI_VAL.search(line))]
    return steady_pace(lines, TUI_STEP, SKIP, TOKENS_PER_STEP), (vals[-1] if vals else None)


TOKENS_PER_STEP = SHAPE["micro_batch"] * SHAPE["accum"] * SHAPE["block_size"]
SKIP = 10  # the first steps pay one-time costs


class NanoGptStep:
    """One optimizer step of nanoGPT's train.py loop body, with its own model.py (fp32 on a CPU)."""

    def __init__(self, work: Path, tokens: torch.Tensor, vocab_size: int) -> None:
        spec = importlib.util.spec_from_file_location("nanogpt_model", work / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        s = SHAPE
        torch.manual_seed(1337)
        config = module.GPTConfig(block_size=s["block_size"], vocab_size=vocab_size, n_layer=s["n_layer"],
                                  n_head=s["n_head"], n_embd=s["n_embd"], dropout=0.0, bias=True)
        self.model = module.GPT(config)
        self.model.train()
        self.optimizer = self.model.configure_optimizers(0.1, s["lr"], (0.9, 0.99), "cpu")
        self.tokens, self.generator = tokens, torch.Generator().manual_seed(1337)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        block, micro = SHAPE["block_size"], SHAPE["micro_batch"]
        starts = torch.randint(len(self.tokens) - block - 1, (micro,), generator=self.generator)
        x = torch.stack([self.tokens[i : i + block] for i in starts])
        y = torch.stack([self.tokens[i + 1 : i + 1 + block] for i in starts])
        return x, y

    def step(self) -> tuple[float, float]:
        """One optimizer step; its (wall-clock, process CPU) seconds, as throughput.py's PlainLoop."""
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(SHAPE["accum"]):
            x, y = self.batch()
            _, loss = self.model(x, y)
            (loss / SHAPE["accum"]).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()
        return time.perf_counter() - started, time.process_time() - cpu_started


def lockstep(work: Path, steps: int) -> tuple[list[tuple[float, float]], str]:
    """(engine seconds, nanoGPT seconds) per measured pair of optimizer steps, and the engine's precision."""
    s = SHAPE
    model = ModelConfig(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"], block_size=s["block_size"],
                        dropout=0.0)
    cfg = run_config("small", work / "lockstep", train_batches=(SKIP + steps) * s["accum"], val_batches=1,
                     micro_batch=s["micro_batch"], accum=s["accum"], lr=s["lr"], precision="auto", data=str(CORPUS))
    cfg = replace(cfg, model=model)
    corpus = load_corpus(cfg.data, s["block_size"])
    tokens = torch.from_numpy(np.asarray(corpus.train_tokens, dtype=np.int64))
    sink = Interleave(NanoGptStep(work, tokens, corpus.vocab.size))  # (each engine step, then one of nanoGPT's)
    end = Trainer(cfg, sink, Control()).run()
    if end.reason != "completed":
        raise RuntimeError(f"the engine's run ended early: {end}")
    precision = choose_precision("auto", torch.device("cpu"), model=model)[0]
    pairs = [(engine, other) for (engine, _), (other, _) in zip(sink.engine_seconds, sink.plain_seconds)]
    return pairs[SKIP:], precision


def main(argv: list[str] | None = None) -> int:
    global SKIP
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout (its train.py is run)")
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps per run (default 250)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds of whole runs (default 2; 0: "
                                                               "the lockstep table only)")
    parser.add_argument("--quick", action="store_true", help="20 steps, one round (smoke test)")
    args = parser.parse_args(argv)
    steps, repeats, log_every = (20, 1, 2) if args.quick else (args.steps, args.repeats, 10)
    SKIP = 4 if args.quick else SKIP
    print(machine_line())
    with scratch_dir("vs-nanogpt") as scratch:
        work = Path(scratch)
        if not prepare_nanogpt(args.nanogpt.expanduser(), CORPUS, work):
            print("nothing measured: no nanoGPT to compare with")
            return NOTHING_MEASURED
        pairs, precision = lockstep(work, max(steps // 2, 4))
        engine_s, other_s = [e for e, _ in pairs], [o for _, o in pairs]
        ratios = sorted(o / e for e, o in pairs)
        print(f"lockstep in one process, {len(pairs)} pairs of optimizer steps ({TOKENS_PER_STEP:,} tokens each):")
        print(table(["side", "tokens/s (median step)", "vs nanoGPT"], [
            ["nanoGPT's model.py + loop (fp32)", f"{TOKENS_PER_STEP / statistics.median(other_s):,.0f}", "1.00x"],
            [f"tui-trainer engine, auto ({precision})", f"{TOKENS_PER_STEP / statistics.median(engine_s):,.0f}",
             f"{statistics.median(other_s) / statistics.median(engine_s):.2f}x"]]))
        print(f"lockstep: auto vs nanoGPT {statistics.median(ratios):.2f}x per pair (median; min {ratios[0]:.2f}, "
              f"max {ratios[-1]:.2f}); {statistics.median(other_s) / statistics.median(engine_s):.2f}x of medians")
        if not repeats:
            return 0
        print()
        runs: dict[str, list[tuple[float | None, float | None]]] = {"nanoGPT": [], "auto": [], "fp32": []}
        for _ in range(repeats):
            runs["nanoGPT"].append(run_nanogpt(work, steps, log_every, timeout=1800))
            runs["auto"].append(run_tui(work, CORPUS, steps, log_every, 1800, "auto"))
            runs["fp32"].append(run_tui(work, CORPUS, steps, log_every, 1800, "fp32"))
        paces = {name: [p for p, _ in results if p] for name, results in runs.items()}
        if not paces["nanoGPT"] or not (paces["auto"] or paces["fp32"]):
            print("nothing measured: a run reported no steady pace")
            return NOTHING_MEASURED
        base = statistics.median(paces["nanoGPT"])
        rows = []
        labels = {"nanoGPT": "nanoGPT train.py (fp32)", "auto": "tui-trainer --precision auto",
                  "fp32": "tui-trainer --precision fp32"}
        for name, results in runs.items():
            pace = statistics.median(paces[name]) if paces[name] else float("nan")
            vals = [v for _, v in results if v is not None]
            rows.append([labels[name], " / ".join(f"{p:,.0f}" for p in paces[name]), f"{pace:,.0f}",
                         f"{pace / base:.2f}x", " / ".join(f"{v:.3f}" for v in vals) or "—"])
        print(f"{steps} steps of {TOKENS_PER_STEP:,} tokens ({SHAPE['micro_batch']}x{SHAPE['accum']} x context "
              f"{SHAPE['block_size']}), steady pace from step {SKIP}; {repeats} alternating round(s)")
        print(table(["run", "tokens/s each", "median", "vs nanoGPT", f"val after {steps} steps"], rows))
        auto = statistics.median(paces["auto"]) / base if paces["auto"] else float("nan")
        print(f"auto vs nanoGPT: {auto:.2f}x ({'meets' if auto >= 1.25 else 'misses'} the 1.25x goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
