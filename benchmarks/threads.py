"""How many torch threads? Engine tokens/s by thread count, with and without a UI-like load.

The app draws on the same process's main thread while the engine trains in a worker
thread. This runs the engine headless at each thread count, alone and beside a thread
that mimics a redraw (pure-Python work holding the GIL for --ui-ms every 1/--ui-hz s),
alternating the configurations, and prints the median-step tokens/s of each relative to
all cores without the UI load. It is the evidence behind ``choose_threads`` in runtime.py.

    python benchmarks/threads.py                       # small configuration
    python benchmarks/threads.py --preset seed --reps 2
    python benchmarks/threads.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time

import torch
from _common import PRESETS, cores, machine_line, run_config, scratch_dir, table
from throughput import StepClock

from tui_trainer.control import Control
from tui_trainer.engine.loop import Trainer

DEFAULT_RUNS = {"seed": (1, 4, 2), "small": (2, 12, 3), "tiny": (1, 5, 1)}  # warm-up, measured, reps


class FakeRedraw:
    """A thread that holds the GIL for ``busy_ms`` every ``1 / hz`` seconds, like a UI redrawing."""

    def __init__(self, hz: float, busy_ms: float) -> None:
        self.period, self.busy = 1.0 / hz, busy_ms / 1000.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            until = time.perf_counter() + self.busy
            while time.perf_counter() < until:
                sum(i * i for i in range(200))

    def __enter__(self) -> "FakeRedraw":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def median_rate(preset: str, threads: int, warmup: int, steps: int) -> float:
    accum = PRESETS[preset][2]
    with scratch_dir("threads") as run_dir:
        cfg = run_config(preset, run_dir, train_batches=(warmup + steps) * accum, threads=threads)
        clock = StepClock()
        Trainer(cfg, clock, Control()).run()
    stamps = [s for s, _ in clock.stamps]
    return clock.stamps[0][1] / statistics.median(b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts (default 1..cores)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--ui-hz", type=float, default=4.0, help="redraws per second of the fake UI")
    parser.add_argument("--ui-ms", type=float, default=25.0, help="GIL-holding milliseconds per redraw")
    parser.add_argument("--competitor", action="store_true",
                        help="also measure beside one busy process (a pure-Python loop on a core of its own): "
                             "what oversubscription costs, and what --threads would buy (issue 30)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset = "tiny"
    warmup, steps, reps = DEFAULT_RUNS[args.preset]
    steps, reps = args.steps or steps, args.reps or reps
    counts = [int(t) for t in args.threads.split(",")] if args.threads else list(range(1, cores() + 1))
    configs = [(t, ui) for ui in (False, True) for t in counts]
    print("Engine tokens/s by torch thread count, alone and beside a UI-like load")
    print(machine_line())
    print(f"preset {args.preset}; fake UI: {args.ui_ms:g} ms of GIL-holding Python {args.ui_hz:g} times a second; "
          f"{reps} repetitions of {warmup} warm-up + {steps} measured steps, configurations alternating", flush=True)
    rates: dict[tuple[int, bool], list[float]] = {c: [] for c in configs}
    for rep in range(reps):
        for threads, ui in (configs if rep % 2 == 0 else configs[::-1]):
            torch.set_num_threads(threads)
            if ui:
                with FakeRedraw(args.ui_hz, args.ui_ms):
                    rate = median_rate(args.preset, threads, warmup, steps)
            else:
                rate = median_rate(args.preset, threads, warmup, steps)
            rates[(threads, ui)].append(rate)
            print(f"  rep {rep + 1}: {threads} threads{' + UI load' if ui else ''}: {rate:,.0f} tok/s", flush=True)
    reference = statistics.median(rates[(max(counts), False)])
    rows = [[f"{t} threads{' + UI load' if ui else ''}", " / ".join(f"{r:,.0f}" for r in rates[(t, ui)]),
             f"{statistics.median(rates[(t, ui)]):,.0f}", f"{statistics.median(rates[(t, ui)]) / reference:.3f}"]
            for t, ui in configs]
    print(table(["configuration", "tok/s per rep", "median", f"vs {max(counts)} threads alone"], rows))
    if args.competitor:
        print(beside_a_busy_process(args.preset, counts, warmup, steps, reps, reference))
    return 0


def beside_a_busy_process(preset: str, counts: list[int], warmup: int, steps: int, reps: int,
                          reference: float) -> str:
    """Each thread count again while another process keeps one core busy: the table behind the busy-
    machine note (engine/runtime.py: busy_machine_note) and its --threads advice."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        measured = {t: [] for t in counts}
        for rep in range(reps):
            for threads in (counts if rep % 2 == 0 else counts[::-1]):
                torch.set_num_threads(threads)
                measured[threads].append(median_rate(preset, threads, warmup, steps))
    finally:
        spinner.kill()
        spinner.wait()
    best = max(statistics.median(r) for r in measured.values())
    rows = [[f"{t} threads + a busy process", " / ".join(f"{r:,.0f}" for r in measured[t]),
             f"{statistics.median(measured[t]):,.0f}", f"{statistics.median(measured[t]) / reference:.3f}",
             f"{statistics.median(measured[t]) / best:.3f}"] for t in counts]
    return ("beside a busy process (one core kept busy by a pure-Python loop):\n"
            + table(["configuration", "tok/s per rep", "median", f"vs {max(counts)} threads alone", "vs its best"],
                    rows))


if __name__ == "__main__":
    sys.exit(main())
