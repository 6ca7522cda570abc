"""Where and how the run executes: the device, torch's CPU threads, and the RNG state a
checkpoint carries so a resumed run draws the same random numbers as an unbroken one."""

from __future__ import annotations

import os
import random
import time
from typing import Any

import torch

from tui_trainer.config_checks import usable_cores
from tui_trainer.errors import UserError
from tui_trainer.events import BUSY_NOTE

# -- devices and threads --------------------------------------------------------------------

def pick_device(name: str) -> torch.device:
    """``auto`` = cuda, then mps, then cpu; an explicit name must exist on this machine."""
    name = (name or "auto").strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device '{name}'", "use --device auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but CUDA is not available here",
                            "use --device auto or --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices",
                            "use --device cuda:0")
        return device
    if device.type == "mps":
        if not mps_ok:
            raise UserError("--device mps was asked for but MPS is not available here", "use --device auto or cpu")
        return device
    raise UserError(f"unsupported device '{name}'", "use --device auto, cpu, cuda, cuda:N or mps")


def compile_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``--compile``: torch.compile the model the steps call. On a CPU the graph's random ops (dropout)
    run as eager's: inductor's own CPU random numbers made the compiled forward 0.57x eager's and the
    micro-step 0.79x; with eager's RNG ops in the graph it is 1.12x (benchmarks/README.md, section 10)."""
    if device.type == "cpu":
        import torch._inductor.config as inductor_config  # (only when compiling: inductor is slow to import)

        inductor_config.fallback_random = True  # (process-wide; the GPU keeps inductor's fast RNG)
    return torch.compile(model)


def choose_threads(requested: int | None, for_ui: bool, processes_here: int = 1) -> int:
    """CPU threads for torch: all cores headless; with the app on a machine of 4+ cores,
    one core is left for the UI (on 2 cores the UI's share is too small to pay for a core).
    ``processes_here`` ranks on this machine share its cores evenly."""
    if requested:
        return requested
    cores = max(1, usable_cores() // max(1, processes_here))
    return max(1, cores - 1) if for_ui and cores >= 4 else max(1, cores)


def cores_busy_elsewhere(window_seconds: float = 0.25) -> float | None:
    """Cores kept busy by other processes right now: the machine's busy time over a short window
    (/proc/stat) less this process's own. None where /proc/stat is not there (not Linux)."""
    def machine() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = [int(x) for x in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])
    before, own_before = machine(), os.times()
    time.sleep(window_seconds)
    after, own_after = machine(), os.times()
    if before is None or after is None or after[1] <= before[1]:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    wall_ticks = (after[1] - before[1]) / (os.cpu_count() or 1)  # the window, in ticks of one core
    own = (own_after.user + own_after.system - own_before.user - own_before.system) * ticks
    return max(0.0, (after[0] - before[0] - own) / wall_ticks)


def busy_machine_note(threads: int, cores: int, busy_elsewhere: float | None) -> str | None:
    """A line for the run when other processes already use cores this run's threads count on.
    The thread count is not changed for them: it changes the order of float sums, and the same
    command must give the same losses bit for bit whatever else the machine is doing."""
    if busy_elsewhere is None or busy_elsewhere < 0.5 or threads + busy_elsewhere <= cores + 0.25:
        return None
    free = max(1, round(cores - busy_elsewhere))
    advice = (f"--threads {free} leaves them their cores (several times faster when cores are shared)"
              if free < threads else "it will run slower until they finish")
    return (f"{BUSY_NOTE}: other processes use ~{busy_elsewhere:.1f} of its {cores} cores while this run "
            f"starts {threads} threads; {advice}")


# -- RNG state ----------------------------------------------------------------------------------

def capture_rng(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def restore_rank_rng(state: dict[str, Any], rank: int, world_size: int, device: torch.device) -> str | None:
    """A resume's RNG state: each rank's own when the world size is the one the checkpoint was saved
    with (bit-exact); otherwise rank 0 takes the saved one and the others keep their fresh seeds.
    Returns the note for the run's start when the resume is no longer bit-exact (None when it is)."""
    saved_world = int(state.get("world_size", 1))
    if saved_world == world_size and not state.get("rng_ranks_lost"):
        restore_rng(state["rng_ranks"][rank] if world_size > 1 else state["rng"], device)
        return None
    if rank == 0:
        restore_rng(state["rng"], device)
    if saved_world == world_size:
        return ("saved after a process was lost (only rank 0's random state was kept): "
                "the same position and data order, no longer bit-exact with an unbroken run")
    return (f"saved with {_processes(saved_world)}, resumed with {_processes(world_size)}: the same "
            f"position and data order, the effective batch now micro-batch x accum x {world_size}; "
            f"no longer bit-exact with an unbroken run")


def _processes(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")
