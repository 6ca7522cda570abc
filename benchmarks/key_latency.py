"""Key latency under training load: time from a key press to the screen showing its effect;
target under 100 ms at p95.

Measured as a user over SSH would feel it: the real app (``python -m tui_trainer.cli.main``, not
--no-ui) runs in a detached 80x24 tmux pane (its own tmux server, TERM=xterm-256color) while
it trains. Each sample sends a key with ``tmux send-keys`` and polls ``tmux capture-pane``
every few milliseconds until the screen shows the key's effect:

- ``+``: the batch panel shows ``accum A -> 2A at next epoch`` (the change waits for the epoch);
- ``-``: that line is gone again (the target is back at the current accumulation);
- ``p``: the status bar shows ``pausing…`` or ``paused``;
- ``p`` again: it shows ``resuming…`` or ``running`` (pressed while training is paused).

Keys are spaced by a random 100-300 ms so they land at random points of the training steps.
The clock starts before the send-keys call and stops after the capture that shows the effect,
so each figure includes one send-keys and up to one poll interval: the method's own floor
(one capture-pane call, one send-keys call) is printed beside the figures. A sample whose
+/- straddles an epoch boundary (the change applied) is left out and the screen put back.

    python benchmarks/key_latency.py                  # small model, 30 samples per key
    python benchmarks/key_latency.py --preset seed --samples 50
    python benchmarks/key_latency.py --quick          # tiny model, 8 samples (smoke)

Exit code 0 when it measured (the target is reported as "meets"/"misses"), 1 when a key's
effect never showed, 3 when nothing was measured (no tmux, no sample taken).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import CHECK_FAILED, NOTHING_MEASURED, PRESETS, machine_line, scratch_dir, table
from ui_overhead import REPO, app_pid, cli_args

TARGET_MS = 100.0
EPOCHS = 1000  # never reached: the run is stopped with q once the samples are taken
POLL_S = 0.002  # sleep between two captures
KEY_TIMEOUT_S = 5.0  # a key whose effect never shows counts as this long
START_TIMEOUT_S = 180.0  # until the first optimizer step is in metrics.jsonl
PENDING = "at next epoch"
ACCUM = re.compile(r"x (?:accum )?(\d+) \(x")  # "micro-batch 8 x accum 4 (x 1 process)" or "batch 8 x 4 (x1)"
PENDING_LINE = re.compile(r"accum (\d+) -> (\d+) at next epoch")
EPOCH = re.compile(r"epoch\s+(\d+)/\d+")
THREADS = re.compile(r"cpux(\d+)")


class AppGone(RuntimeError):
    """The app's tmux session has ended (the app exited or crashed)."""


class Pane:
    """The app in a detached tmux session of a tmux server of its own."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.socket: Path | None = None

    def tmux(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.server, *args], capture_output=True, text=True)

    def start(self, command: str) -> None:
        subprocess.run(["tmux", "-L", self.server, "new-session", "-d", "-s", "bench", "-x", "80", "-y", "24",
                        "-c", str(REPO), command], check=True)
        socket = self.tmux("display", "-p", "#{socket_path}").stdout.strip()
        self.socket = Path(socket) if socket else None

    def capture(self) -> str:
        done = self.tmux("capture-pane", "-p", "-t", "bench")
        if done.returncode != 0:
            raise AppGone(done.stderr.strip() or "capture-pane failed")
        return done.stdout

    def send(self, key: str) -> None:
        self.tmux("send-keys", "-t", "bench", "--", key)

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "bench").returncode == 0


def status_line(screen: str) -> str:
    return screen.split("\n", 1)[0]


def number(pattern: re.Pattern, screen: str) -> int | None:
    found = pattern.search(screen)
    return int(found.group(1)) if found else None


def press(pane: Pane, key: str, shows: Callable[[str], bool], floors: dict[str, list[float]]) -> tuple[float, bool]:
    """Send ``key``; poll the pane until ``shows(screen)``. (milliseconds, whether it showed)."""
    started = time.perf_counter()
    pane.send(key)
    floors["send-keys"].append((time.perf_counter() - started) * 1000)
    while True:
        screen = pane.capture()
        elapsed = time.perf_counter() - started
        if shows(screen):
            return elapsed * 1000, True
        if elapsed > KEY_TIMEOUT_S:
            return KEY_TIMEOUT_S * 1000, False
        time.sleep(POLL_S)


def wait_for(pane: Pane, shows: Callable[[str], bool], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = pane.capture()
        if shows(screen):
            return screen
        if time.monotonic() > deadline:
            raise TimeoutError(f"the screen did not show what was expected within {timeout:.0f}s:\n{screen}")
        time.sleep(0.05)


def clear_pending(pane: Pane) -> None:
    """Put the screen back to no pending accumulation change (after an epoch boundary)."""
    for _ in range(4):
        screen = pane.capture()
        found = PENDING_LINE.search(screen)
        if found is None:
            return
        current, target = int(found.group(1)), int(found.group(2))
        pane.send("+" if target < current else "-")
        time.sleep(0.3)
    raise RuntimeError("could not clear the pending accumulation change:\n" + pane.capture())


def read_state(pane: Pane, timeout: float = 5.0) -> tuple[int, int] | None:
    """The accumulation and epoch the screen shows, polled for up to ``timeout`` seconds: a capture
    can land while a notice covers the batch line or mid-redraw. None when they never showed."""
    try:
        screen = wait_for(pane, lambda s: number(ACCUM, s) is not None and number(EPOCH, s) is not None, timeout)
    except TimeoutError:
        return None
    return number(ACCUM, screen), number(EPOCH, screen)


def step_records(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count('"type": "step"') if path.exists() else 0


def p95(values: list[float]) -> float:
    """Nearest rank: the smallest value with at least 95% of the samples at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def stop_app(pane: Pane, pid: int | None) -> None:
    """q (the app saves and exits, which ends the session), then make sure of it."""
    try:
        if pane.alive():
            pane.send("q")
            deadline = time.monotonic() + 15.0
            while pane.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        pane.tmux("kill-server")
        if pane.socket is not None:
            pane.socket.unlink(missing_ok=True)  # the server leaves its socket file behind
        if pid is not None:
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 2.0)):
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                    time.sleep(0.1)
                if not Path(f"/proc/{pid}").exists():
                    break
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--samples", type=int, default=30, help="presses of each key")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the app (default 0: the CLI's "
                                                               "own choice)")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="stop taking samples after this long (the figures use what was taken)")
    parser.add_argument("--seed", type=int, default=1337, help="for the gaps between keys")
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 samples (smoke)")
    opts = parser.parse_args()
    if opts.quick:
        opts.preset, opts.samples, opts.max_seconds = "tiny", 8, 60.0
    rng = random.Random(opts.seed)

    print(machine_line())
    if shutil.which("tmux") is None:
        print(f"nothing measured: tmux not found; key latency (target: p95 under {TARGET_MS:.0f} ms) is measured "
              "in a real tmux pane — install tmux")
        return NOTHING_MEASURED
    model, micro_batch, accum = PRESETS[opts.preset]
    server = f"tui-trainer-bench-keys-{os.getpid()}"
    pane = Pane(server)
    keys = ["+", "-", "p (pause)", "p (resume)"]
    shows = {"+": "accum A -> 2A at next epoch", "-": "that line gone", "p (pause)": "pausing… / paused",
             "p (resume)": "resuming… / running"}
    latencies: dict[str, list[float]] = {k: [] for k in keys}
    missed: dict[str, int] = {k: 0 for k in keys}
    floors: dict[str, list[float]] = {"send-keys": [], "capture-pane": []}
    left_out = hidden = 0
    pid = None
    with scratch_dir("key-latency") as scratch:
        run_dir = Path(scratch) / "run"
        args = cli_args(opts.preset, 10**6, run_dir, opts.threads or None)  # 10**6 steps: whole-corpus epochs
        args[args.index("--epochs") + 1] = str(EPOCHS)
        pane.start(" ".join([f"TERM=xterm-256color {sys.executable} -m tui_trainer.cli.main", *args]))
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while step_records(run_dir) == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the app did not start training in time:\n" + pane.capture())
                pane.capture()  # raises AppGone if the app has exited
                time.sleep(0.2)
            pid = app_pid(server)
            screen = wait_for(pane, lambda s: ACCUM.search(s) is not None, 30.0)
            threads = number(THREADS, status_line(screen))
            print(f"preset {opts.preset}: {model.n_layer} layers x {model.n_embd} wide, block {model.block_size}, "
                  f"micro-batch {micro_batch} x accum {accum}; the app in an 80x24 tmux pane, torch threads "
                  f"{threads or '?'} ({'--threads' if opts.threads else 'the CLI default'}); {opts.samples} "
                  f"samples per key, keys 100-300 ms apart")

            for _ in range(20):  # the method's floor: one capture of the pane
                started = time.perf_counter()
                pane.capture()
                floors["capture-pane"].append((time.perf_counter() - started) * 1000)

            steps_before = step_records(run_dir)
            sampling_ends = time.monotonic() + opts.max_seconds
            for _ in range(opts.samples):
                if time.monotonic() > sampling_ends:
                    print(f"note: --max-seconds {opts.max_seconds:.0f} reached; the figures use the samples taken")
                    break
                clear_pending(pane)
                state = read_state(pane)
                if state is None:  # the batch line stayed hidden (a notice over it, a redraw): skip this round
                    hidden += 1
                    continue
                current, epoch = state
                expected = f"accum {current} -> {current * 2} {PENDING}"
                time.sleep(rng.uniform(0.1, 0.3))
                up = press(pane, "+", lambda s: expected in s, floors)
                time.sleep(rng.uniform(0.1, 0.3))
                down = press(pane, "-", lambda s: PENDING not in s, floors)
                screen = pane.capture()
                if number(ACCUM, screen) != current or number(EPOCH, screen) != epoch:
                    left_out += 1  # an epoch boundary fell between the keys: the change may have applied
                else:
                    for key, (ms, showed) in (("+", up), ("-", down)):
                        latencies[key].append(ms)
                        missed[key] += not showed
                time.sleep(rng.uniform(0.1, 0.3))
                for key, words in (("p (pause)", ("pausing", " paused ")), ("p (resume)", ("resuming", "running"))):
                    ms, showed = press(pane, "p", lambda s: any(w in status_line(s) for w in words), floors)
                    latencies[key].append(ms)
                    missed[key] += not showed
                    time.sleep(rng.uniform(0.1, 0.3))
            steps_after = step_records(run_dir)
            final_epoch = number(EPOCH, pane.capture())
        finally:
            stop_app(pane, pid or app_pid(server))

    rows = []
    for key in keys:
        values = latencies[key]
        if not values:
            continue
        timed_out = f" ({missed[key]} never showed)" if missed[key] else ""
        rows.append([key, shows[key], f"{len(values)}{timed_out}", f"{min(values):.1f}",
                     f"{statistics.median(values):.1f}", f"{p95(values):.1f}", f"{max(values):.1f}"])
    print()
    print(table(["key", "the screen shows", "samples", "min ms", "median ms", "p95 ms", "max ms"], rows))
    capture_ms, send_ms = statistics.median(floors["capture-pane"]), statistics.median(floors["send-keys"] or [0.0])
    print(f"\nmethod floor: one capture-pane call {capture_ms:.1f} ms (median), one send-keys call {send_ms:.1f} ms; "
          f"each figure includes a send-keys and up to one poll interval (a capture + {POLL_S * 1000:.0f} ms)")
    print(f"training under way: {steps_after - steps_before} optimizer steps during the samples "
          f"(step {steps_before} -> {steps_after}, epoch {final_epoch}); `p (resume)` is pressed while paused"
          + (f"; {left_out} +/- pair(s) left out (an epoch boundary fell between them)" if left_out else "")
          + (f"; {hidden} round(s) skipped (the batch line did not show its accumulation for 5 s)" if hidden else ""))
    every = [ms for values in latencies.values() for ms in values]
    if not every:
        print(f"nothing measured: no samples taken (target: p95 under {TARGET_MS:.0f} ms)")
        return NOTHING_MEASURED
    overall = p95(every)
    verdict = "meets" if overall < TARGET_MS and not any(missed.values()) else "misses"
    print(f"all keys: p95 {overall:.1f} ms over {len(every)} presses — {verdict} the target "
          f"(p95 under {TARGET_MS:.0f} ms)")
    if steps_after <= steps_before:
        print("warning: no optimizer step was taken during the samples: these figures are not under training load")
    never = sum(missed.values())
    if never:
        print(f"check FAILED: {never} key press(es) never showed their effect within {KEY_TIMEOUT_S:.0f} s")
        return CHECK_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
