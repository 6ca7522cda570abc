"""UI overhead: training throughput with the Textual app on screen vs headless (--no-ui).

The same command line (same model, data, seed, threads, steps) runs as separate processes:

- ``no-ui``: ``tui-trainer --no-ui ...`` (the headless face: log lines on stdout);
- ``tmux``:  ``tui-trainer ...`` in a real 80x24 tmux pane (the app draws on a terminal);
- ``pilot``: the app from ``create_app`` under ``App.run_test`` at 80x24 (headless Textual:
  the screen is composed and rendered, nothing is written to a terminal).

Runs alternate (no-ui, tmux, pilot, pilot, tmux, no-ui, ...) so a neighbour's burst on a
shared machine hits every mode alike. Tokens/s comes from each run's metrics.jsonl: the
training tokens of the measured steps over their training seconds (validation, set-up and
warm-up steps left out). The ratio is app / no-ui; the target is at most 3% slower.

Each round runs every mode once, back to back, so each round gives one app/no-ui ratio; the
spread of those ratios over the rounds is printed beside their median, and a verdict is given
only when the whole spread lies on one side of the target (else: "inconclusive", with the
rounds it would take). Runs as the CLI's defaults would (--precision auto: bf16 on a CPU with
bf16 units).

    python benchmarks/ui_overhead.py                      # small model, 40 steps, 4 rounds
    python benchmarks/ui_overhead.py --preset seed --steps 12 --rounds 3
    python benchmarks/ui_overhead.py --quick              # seconds: tiny model (smoke)

Exit code 0 when every mode was measured (the target is reported as "meets"/"misses"), 3 when
something was not (tmux missing while its mode is asked for, a run with no step to measure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import NOTHING_MEASURED, PRESETS, fmt_spread, machine_line, scratch_dir, table

TARGET_RATIO = 0.97
REPO = Path(__file__).resolve().parent.parent

PILOT_SNIPPET = """
import asyncio, sys, time
from tui_trainer.cli.main import config_from_args, parse_args
from tui_trainer.ui.factory import create_app
args = parse_args(sys.argv[1:])
cfg, given = config_from_args(args)
app = create_app(cfg, overrides=given)
async def main():
    async with app.run_test(size=(80, 24)) as pilot:
        while app.view.step == 0:
            await asyncio.sleep(0.25)  # the harness polls rarely: its wake-ups count as UI time
        wall, cpu = time.perf_counter(), time.thread_time()  # this thread is the UI's
        while app.engine.end_event is None:
            await asyncio.sleep(0.25)  # the harness polls rarely: its wake-ups count as UI time
        print("UI_CPU", (time.thread_time() - cpu) / (time.perf_counter() - wall))
asyncio.run(main())
app.engine.finish()
"""


def cli_args(preset: str, steps: int, run_dir: Path, threads: int | None) -> list[str]:
    model, micro_batch, accum = PRESETS[preset]
    args = ["--run-dir", str(run_dir), "--n-layer", str(model.n_layer), "--n-head", str(model.n_head),
            "--n-embd", str(model.n_embd), "--block-size", str(model.block_size), "--micro-batch", str(micro_batch),
            "--accum", str(accum), "--epochs", "1", "--limit-train-batches", str(steps * accum),
            "--limit-val-batches", "1", "--patience", "0", "--checkpoint-every", "1000000", "--seed", "1337",
            "--device", "cpu", "--sample-tokens", "0"]  # no text samples: the figures are of training
    return args + (["--threads", str(threads)] if threads else [])


def ended(run_dir: Path) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and '"type": "end"' in path.read_text()


def run_no_ui(args: list[str], timeout: float) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "tui_trainer.cli.main", "--no-ui", *args], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, timeout=timeout)
    return {}


def run_pilot(args: list[str], timeout: float) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", PILOT_SNIPPET, *args], cwd=REPO, check=True, timeout=timeout,
                          capture_output=True, text=True)
    shares = [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("UI_CPU")]
    return {"ui": shares[0]} if shares else {}


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or of one of its threads) from /proc."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def app_pid(server: str) -> int | None:
    pane = subprocess.run(["tmux", "-L", server, "display", "-p", "-t", "bench", "#{pane_pid}"],
                          capture_output=True, text=True).stdout.strip()
    if not pane:
        return None
    found = subprocess.run(["pgrep", "-f", "tui_trainer.cli.main"], capture_output=True, text=True).stdout.split()
    for pid in [pane, *found]:  # the pane's shell may have exec'd python, or started it as a child
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        if "tui_trainer.cli.main" in cmdline and (pid == pane or ppid == pane):
            return int(pid)
    return None


def start_tmux(command: str, attempts: int = 3) -> str:
    """A tmux server running ``command`` in an 80x24 pane; its socket name. ``new-session`` can fail
    on a busy machine (a stale socket, a server still exiting): retried on a fresh socket, and
    after the last attempt the error says what tmux said."""
    said = ""
    for attempt in range(attempts):
        server = f"tui-trainer-bench-{os.getpid()}-{attempt}-{time.monotonic_ns()}"
        done = subprocess.run(["tmux", "-L", server, "new-session", "-d", "-s", "bench", "-x", "80", "-y", "24",
                               "-c", str(REPO), command], capture_output=True, text=True)
        if done.returncode == 0:
            return server
        said = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        subprocess.run(["tmux", "-L", server, "kill-server"], check=False, capture_output=True)
        print(f"  note: tmux new-session failed ({said}); retrying", flush=True)
        time.sleep(1.0 + attempt)
    raise RuntimeError(f"tmux new-session failed {attempts} times; tmux said: {said}")


def run_tmux(args: list[str], run_dir: Path, timeout: float) -> dict[str, float]:
    """The app in a real 80x24 tmux pane. Returns the CPU shares, while training, of the app's
    main thread (the UI: the engine has its own thread) and of the tmux server."""
    command = " ".join([f"TERM=xterm-256color {sys.executable} -m tui_trainer.cli.main", *args])
    server = start_tmux(command)
    shares: dict[str, float] = {}
    try:
        server_pid = int(subprocess.run(["tmux", "-L", server, "display", "-p", "#{pid}"], capture_output=True,
                                        text=True).stdout.strip())
        deadline = time.monotonic() + timeout
        first = None
        while not ended(run_dir):
            if time.monotonic() > deadline:
                raise TimeoutError("the app in tmux did not finish")
            if first is None and '"type": "step"' in (run_dir / "metrics.jsonl").read_text() \
                    if (run_dir / "metrics.jsonl").exists() else False:
                pid = app_pid(server)
                if pid:
                    first = (pid, time.perf_counter(), cpu_seconds(pid, pid), cpu_seconds(server_pid))
            time.sleep(0.2)
        if first is not None:
            pid, wall, ui_cpu, tmux_cpu = first
            elapsed = time.perf_counter() - wall
            shares = {"ui": (cpu_seconds(pid, pid) - ui_cpu) / elapsed,
                      "tmux": (cpu_seconds(server_pid) - tmux_cpu) / elapsed}
        subprocess.run(["tmux", "-L", server, "send-keys", "-t", "bench", "q"], check=False)  # the app stays open
        time.sleep(1.0)
    finally:
        subprocess.run(["tmux", "-L", server, "kill-server"], check=False, stderr=subprocess.DEVNULL)
    return shares


def tokens_per_second(run_dir: Path, warmup: int) -> tuple[float, int]:
    """Training tokens over training seconds of the steps after the warm-up."""
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"type": "step"' in line][warmup:]
    if not steps:
        return float("nan"), 0  # nothing measured: the caller says so
    tokens = sum(s["tokens"] for s in steps)
    seconds = sum(s["tokens"] / s["tokens_per_s"] for s in steps)
    return tokens / seconds, len(steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the figure")
    parser.add_argument("--rounds", type=int, default=4, help="each round runs every mode once")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for every mode (default 0: the CLI's own choice, what a user gets)")
    parser.add_argument("--modes", default="no-ui,tmux,pilot")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps, one round")
    opts = parser.parse_args()
    if opts.quick:
        opts.preset, opts.steps, opts.warmup, opts.rounds = "tiny", 30, 3, 1
    modes = [m for m in opts.modes.split(",") if m]
    if "tmux" in modes and shutil.which("tmux") is None:
        # Not skipped quietly: the tmux mode is the figure a user gets (the app drawing on a terminal).
        print("nothing measured: tmux not found, and the tmux mode is asked for — install tmux, or pass "
              f"--modes {','.join(m for m in modes if m != 'tmux') or 'no-ui,pilot'} to measure without it")
        return NOTHING_MEASURED
    timeout = 60.0 + opts.steps * 20.0
    opts.threads = opts.threads or None

    print(machine_line())
    model, micro_batch, accum = PRESETS[opts.preset]
    print(f"preset {opts.preset}: {model.n_layer} layers x {model.n_embd} wide, block {model.block_size}, "
          f"micro-batch {micro_batch} x accum {accum}; {opts.steps} steps per run, first {opts.warmup} left out; "
          f"{opts.rounds} round(s); torch threads: {opts.threads or 'the CLI default'}")
    results: dict[str, list[float]] = {m: [] for m in modes}
    rows = []
    with scratch_dir("ui-overhead") as scratch:
        for round_index in range(opts.rounds):
            order = modes if round_index % 2 == 0 else list(reversed(modes))  # ABC CBA: drift cancels
            for mode in order:
                run_dir = Path(scratch) / f"{mode}-{round_index}"
                args = cli_args(opts.preset, opts.steps, run_dir, opts.threads)
                started = time.perf_counter()
                if mode == "no-ui":
                    shares = run_no_ui(args, timeout)
                elif mode == "tmux":
                    shares = run_tmux(args, run_dir, timeout)
                else:
                    shares = run_pilot(args, timeout)
                wall = time.perf_counter() - started
                rate, measured = tokens_per_second(run_dir, opts.warmup)
                results[mode].append(rate)
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                ui = f"{shares['ui']:.1%}" if "ui" in shares else "—"
                tmux = f"{shares['tmux']:.1%}" if "tmux" in shares else "—"
                rows.append([mode, str(round_index + 1), f"{rate:,.0f}", str(measured), f"{wall:.1f}", ui, tmux,
                             f"{load:.1f}"])
                print(f"  {mode:6s} round {round_index + 1}: {rate:,.0f} tokens/s ({measured} steps, "
                      f"{wall:.0f}s wall, UI thread {ui} of a core, tmux {tmux}, load {load:.1f})", flush=True)
    print()
    print(table(["mode", "round", "tokens/s", "steps", "wall s", "UI cpu", "tmux cpu", "load"], rows))
    empty = sorted({row[0] for row in rows if row[3] == "0"})
    if empty:
        print(f"nothing measured: no step after the {opts.warmup} warm-up steps in mode(s) {', '.join(empty)} "
              f"— pass more --steps")
        return NOTHING_MEASURED
    print("(UI cpu: the app's main thread while training, as a share of one core; tmux cpu: the tmux server)")
    print()
    base = statistics.median(results["no-ui"]) if results.get("no-ui") else None
    summary, verdicts = [], []
    for mode, rates in results.items():
        median = statistics.median(rates)
        # One ratio per round: the app's run against the no-ui run of the same round.
        per_round = [r / b for r, b in zip(rates, results["no-ui"])] if base else []
        summary.append([mode, fmt_spread(rates), f"{median:,.0f}",
                        f"{statistics.median(per_round):.3f} ({fmt_spread(per_round, '.3f')})" if base else "—"])
        if base and mode != "no-ui":
            verdicts.append(f"{mode}: {verdict(per_round)}")
    print(table(["mode", "tokens/s min / median / max", "median", "vs no-ui per round: median (min / median / max)"],
                summary))
    for line in verdicts:
        print(line)
    return 0


def verdict(ratios: list[float]) -> str:
    """Meets or misses the target only when every round's ratio says so; else the spread is the answer."""
    low, mid, high = min(ratios), statistics.median(ratios), max(ratios)
    where = f"app/no-ui {mid:.3f} over {len(ratios)} rounds, spread {low:.3f}-{high:.3f}"
    if len(ratios) < 3:
        return f"{where}: too few rounds for a verdict (3 or more; default 4)"
    if low >= TARGET_RATIO:
        return f"{where}: meets the target (>= {TARGET_RATIO}, at most 3% slower) in every round"
    if high < TARGET_RATIO:
        return f"{where}: misses the target (>= {TARGET_RATIO}) in every round"
    return (f"{where}: inconclusive — the spread straddles the {TARGET_RATIO} target; the difference from no-ui "
            f"({mid - 1:+.1%}) is not larger than the round-to-round noise ({high - low:.1%}): run more rounds "
            f"on a quieter machine")


if __name__ == "__main__":
    sys.exit(main())
