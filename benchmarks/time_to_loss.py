"""Time to loss: nanoGPT's CPU "baby GPT" recipe against tui-trainer, and `--time-budget`.

nanoGPT's README gives the CPU reference on tiny-shakespeare (characters): 4 layers, 4 heads,
d 128, context 64, batch 12, lr 1e-3, 2,000 iterations, dropout 0, reaching val loss ~1.88. This
script runs, on the same machine in one sitting, one after the other:

  nanogpt      nanoGPT's own ``train.py`` with that recipe (``--compile=False``, eval every
               ``--eval-every`` iterations on 20 batches), from a checkout you give
               (``--nanogpt PATH``); without one it is skipped with a note. The checkout is not
               touched: its four files are copied to a scratch folder with this repo's corpus.
  tui-trainer  the same shape, lr, batch and tokens through tui-trainer (``--accum 1``; an "epoch"
               of ``--eval-every`` steps, so it validates as often, on 20 batches as well).
  budget       tui-trainer with ``--time-budget`` (default 55s) and its own defaults (the same
               model shape; batch, accumulation, precision and warm-up left to the tool).

For each: the wall time (from the process's start, start-up included) until a validation first
reports val loss <= ``--target`` (1.89), and the val loss last reported by 50 s and by 100 s; for
the budget run its wall time and final val loss. Val losses are estimates on 20 batches of 12
(nanoGPT's ``eval_iters=20``), the budget run's its full validation pass; compare the rows with
that in mind. Absolute times mean nothing on a loaded machine: take them on a quiet one
(``load`` in the first line).

    python benchmarks/time_to_loss.py --nanogpt ~/src/nanoGPT
    python benchmarks/time_to_loss.py                  # tui-trainer's rows only
    python benchmarks/time_to_loss.py --quick          # a tiny model, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import NOTHING_MEASURED, machine_line, scratch_dir, table

CORPUS = Path(__file__).resolve().parent.parent / "datasets" / "tinyshakespeare.txt"
RECIPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12, "lr": 1e-3, "iters": 2000,
          "eval_batches": 20}
QUICK = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 4, "lr": 3e-3, "iters": 60,
         "eval_batches": 4, "extra": ("--threads", "1"), "budget_extra": ("--micro-batch", "4", "--accum", "2")}
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "data/shakespeare_char/prepare.py")
NANOGPT_EVAL = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
# The budget's defaults, each turned back to the plain run's (analysis/time_budget.py: budget_defaults).
LEVERS = (("batch: accum 8 (x16 = 128 sequences)", ("--accum", "8")), ("lr: 1e-3", ("--lr", "1e-3")),
          ("precision: fp32", ("--precision", "fp32")))
TUI_EVAL = re.compile(r"^epoch (\d+)/\d+ .*val_loss=([\d.]+)")


def timed_lines(command: list[str], cwd: Path, timeout: float) -> tuple[list[tuple[float, str]], int]:
    """Run ``command``; every line of its output with the seconds since its start."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    begun = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as process:
        for line in process.stdout:
            lines.append((time.monotonic() - begun, line.rstrip("\n")))
            if time.monotonic() - begun > timeout:
                process.kill()
                break
        code = process.wait()
    return lines, code


def evals(lines: list[tuple[float, str]], pattern: re.Pattern, group: int) -> list[tuple[float, float]]:
    """(seconds, val loss) of every validation the output reports."""
    return [(t, float(m.group(group))) for t, line in lines if (m := pattern.search(line))]


def summary(points: list[tuple[float, float]], target: float, marks: tuple[float, ...]) -> list[str]:
    reached = next((f"{t:.0f} s" for t, loss in points if loss <= target), "not reached")
    at = [next((f"{loss:.3f}" for t, loss in reversed(points) if t <= mark), "—") for mark in marks]
    return [reached, *at]


def prepare_nanogpt(checkout: Path, corpus: Path, work: Path) -> bool:
    """nanoGPT's four files copied to ``work`` with ``corpus`` as its shakespeare_char data, prepared
    by its own prepare.py (the checkout is not touched). False, with a note, when it cannot be."""
    missing = [name for name in NANOGPT_FILES if not (checkout / name).is_file()]
    if missing:
        print(f"note: {checkout} is not a nanoGPT checkout (no {missing[0]}): nanoGPT skipped")
        return False
    for name in NANOGPT_FILES:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(checkout / name, work / name)
    data = work / "data" / "shakespeare_char"
    shutil.copy(corpus, data / "input.txt")  # (prepare.py downloads it only when absent)
    if importlib.util.find_spec("requests") is None:
        # prepare.py imports requests for the download it skips when input.txt is there: a stand-in
        # that can only refuse, so nothing is ever fetched.
        (data / "requests.py").write_text("def get(*args, **kwargs):\n    raise RuntimeError('no network')\n")
    prepared = subprocess.run([sys.executable, "prepare.py"], cwd=data, capture_output=True, text=True)
    if prepared.returncode != 0:
        print(f"note: nanoGPT's prepare.py exited {prepared.returncode}: {prepared.stderr.strip().splitlines()[-1:]}")
        return False
    return True


def run_nanogpt(checkout: Path, recipe: dict, corpus: Path, eval_every: int, work: Path,
                timeout: float) -> list[tuple[float, float]] | None:
    if not prepare_nanogpt(checkout, corpus, work):
        return None
    r = recipe
    command = [sys.executable, "train.py", "--dataset=shakespeare_char", "--device=cpu", "--compile=False",
               f"--eval_iters={r['eval_batches']}", "--log_interval=1000000", f"--block_size={r['block_size']}",
               f"--batch_size={r['batch_size']}", f"--n_layer={r['n_layer']}", f"--n_head={r['n_head']}",
               f"--n_embd={r['n_embd']}", f"--max_iters={r['iters']}", f"--lr_decay_iters={r['iters']}",
               "--dropout=0.0", f"--learning_rate={r['lr']}", f"--min_lr={r['lr'] / 10}", "--gradient_accumulation_steps=1",
               f"--eval_interval={eval_every}", f"--warmup_iters={max(1, r['iters'] // 20)}", "--always_save_checkpoint=False",
               f"--out_dir={work / 'out'}", "--wandb_log=False", "--beta2=0.99"]
    lines, code = timed_lines(command, work, timeout)
    if code != 0:
        print(f"note: nanoGPT's train.py exited {code}: " + " | ".join(line for _, line in lines[-3:]))
    return evals(lines, NANOGPT_EVAL, 3)


def tui_command(recipe: dict, corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    r = recipe
    return [sys.executable, "-m", "tui_trainer", "train", "--no-ui", "--data", str(corpus), "--run-dir", str(run_dir),
            "--n-layer", str(r["n_layer"]), "--n-head", str(r["n_head"]), "--n-embd", str(r["n_embd"]),
            "--block-size", str(r["block_size"]), "--dropout", "0", "--sample-tokens", "0", "--log-every", "off",
            "--patience", "0", *r.get("extra", ()), *extra]


def run_tui_same_recipe(recipe: dict, corpus: Path, eval_every: int, work: Path,
                        timeout: float) -> list[tuple[float, float]]:
    r = recipe
    epochs = max(1, r["iters"] // eval_every)
    command = tui_command(r, corpus, work / "same", "--micro-batch", str(r["batch_size"]), "--accum", "1",
                          "--lr", str(r["lr"]), "--epochs", str(epochs), "--limit-train-batches", str(eval_every),
                          "--limit-val-batches", str(r["eval_batches"]),
                          "--warmup-tokens", str(max(1, r["iters"] // 20) * r["batch_size"] * r["block_size"]))
    lines, code = timed_lines(command, work, timeout)
    if code != 0:
        print(f"note: tui-trainer exited {code}: " + " | ".join(line for _, line in lines[-3:]))
    return evals(lines, TUI_EVAL, 2)


def run_tui_budget(recipe: dict, corpus: Path, budget: str, work: Path, timeout: float, *flags: str,
                   name: str = "budget") -> tuple[float, list[tuple[float, float]], list[str]]:
    command = tui_command(recipe, corpus, work / name, "--time-budget", budget, *recipe.get("budget_extra", ()),
                          *flags)
    begun = time.monotonic()
    lines, code = timed_lines(command, work, timeout)
    wall = time.monotonic() - begun
    if code != 0:
        print(f"note: tui-trainer --time-budget exited {code}: " + " | ".join(line for _, line in lines[-3:]))
    said = [line for _, line in lines if line.startswith(("time budget:", "run ", "end "))]
    return wall, evals(lines, TUI_EVAL, 2), said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, default=None, help="a nanoGPT checkout (its train.py is run)")
    parser.add_argument("--data", type=Path, default=CORPUS, help="the corpus (default: tiny-shakespeare)")
    parser.add_argument("--target", type=float, default=1.89, help="the val loss to reach (default 1.89)")
    parser.add_argument("--budget", default="55s", help="the --time-budget of the last run (default 55s)")
    parser.add_argument("--eval-every", type=int, default=100, help="iterations between validations (default 100)")
    parser.add_argument("--quick", action="store_true", help="a tiny model on 50 KB of text: seconds (smoke test)")
    parser.add_argument("--levers", action="store_true",
                        help="then the budget run again with each of its defaults turned back, one at a time: "
                             "what each lever buys")
    args = parser.parse_args(argv)
    recipe, marks, target, budget = RECIPE, (50.0, 100.0), args.target, args.budget
    timeout = 900.0
    print(machine_line())
    with scratch_dir("time-to-loss") as scratch:
        work = Path(scratch)
        corpus = args.data
        if args.quick:
            recipe, marks, target, budget, timeout = QUICK, (10.0, 20.0), 3.3, "15s", 120.0
            corpus = work / "corpus.txt"
            corpus.write_text(args.data.read_text(encoding="utf-8")[:50_000], encoding="utf-8")
        eval_every = max(1, min(args.eval_every, recipe["iters"] // 4)) if args.quick else args.eval_every
        rows = []
        if args.nanogpt is None:
            print("note: no nanoGPT checkout given (--nanogpt PATH): its row is skipped")
        else:
            (work / "nanogpt").mkdir()
            points = run_nanogpt(args.nanogpt.expanduser(), recipe, corpus, eval_every, work / "nanogpt", timeout)
            if points is not None:
                rows.append(["nanoGPT train.py", *summary(points, target, marks)])
        same = run_tui_same_recipe(recipe, corpus, eval_every, work, timeout)
        rows.append(["tui-trainer, same recipe", *summary(same, target, marks)])
        wall, points, said = run_tui_budget(recipe, corpus, budget, work, timeout)
        if not same and not points:
            print("nothing measured: no run reported a validation")
            return NOTHING_MEASURED
        print(table(["run", f"to val {target:g}", *(f"val by {m:g} s" for m in marks)], rows))
        if points:
            print(f"tui-trainer --time-budget {budget} (its defaults): wall {wall:.1f} s from the process's start "
                  f"to its exit, final val loss {points[-1][1]:.3f} after {len(points)} validation(s)")
        for line in said:
            print(f"  {line}")
        if args.levers:
            rows = [["its defaults", "", f"{points[-1][1]:.3f}" if points else "—", f"{wall:.1f}"]]
            for name, flags in LEVERS:
                lever_wall, lever_points, _ = run_tui_budget(recipe, corpus, budget, work, timeout, *flags,
                                                             name=name.replace(" ", "-"))
                rows.append([name, " ".join(flags), f"{lever_points[-1][1]:.3f}" if lever_points else "—",
                             f"{lever_wall:.1f}"])
            print(f"the levers of --time-budget {budget} (each row turns one default back):")
            print(table(["budget run", "flags", "final val", "wall s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
