"""One rank of one ``scaling.py`` configuration: ``python benchmarks/_scaling_worker.py SPEC``, or under
``python -m torch.distributed.run --standalone --nproc-per-node N benchmarks/_scaling_worker.py SPEC``.

SPEC is the JSON file scaling.py writes (preset, device, threads, processes, accum per rank, steps,
run dir, out dir). The worker builds ``Trainer`` from tui_trainer.engine.loop (it joins the other ranks
itself, from torchrun's environment), trains, and writes its figures to ``OUT_DIR/rank{R}.json``:
the wall clock at each optimizer step, the gradient all-reduces made in each step and the gradient
sum's buckets, the flat all-reduce's seconds, its peak RSS (and peak GPU memory).
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
from pathlib import Path

import torch
from _common import run_config

from tui_trainer.control import Control
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import StepEvent

ALLREDUCE_SAMPLES = 20
ALLREDUCE_WARMUP = 3


class StepRecorder:
    """The worker's sink: stamps each optimizer step and reads how many gradient all-reduces were made
    in it; after the last step, times the flat all-reduce (every rank reaches that step together)."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.trainer: Trainer | None = None  # set once built (no step is reported before run())
        self.stamps: list[float] = []
        self.step_tokens: list[int] = []
        self.allreduces_per_step: list[int] = []
        self.allreduce_seconds: list[float] = []
        self._allreduces_before = 0

    def emit(self, event: object) -> None:
        if not isinstance(event, StepEvent):
            return
        self.stamps.append(time.perf_counter())
        self.step_tokens.append(event.tokens)
        grad_sync = self.trainer.session.grad_sync
        if grad_sync is not None:
            self.allreduces_per_step.append(grad_sync.allreduces - self._allreduces_before)
            self._allreduces_before = grad_sync.allreduces
        if event.step == self.total_steps and self.trainer.ranks.distributed:
            # After the stamp: the last step's time is already taken.
            self.allreduce_seconds = time_flat_allreduce(self.trainer)


def time_flat_allreduce(trainer: Trainer) -> list[float]:
    """Seconds of ``dist.all_reduce`` of one flat float32 buffer as large as the model's gradients."""
    import torch.distributed as dist

    device = trainer.device
    size = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    buffer = torch.ones(size, dtype=torch.float32, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dist.barrier()
    seconds = []
    for i in range(ALLREDUCE_WARMUP + ALLREDUCE_SAMPLES):
        sync()
        started = time.perf_counter()
        dist.all_reduce(buffer)
        sync()
        if i >= ALLREDUCE_WARMUP:
            seconds.append(time.perf_counter() - started)
    return seconds


def rss_mib(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident set. Not ``ru_maxrss``: that starts
    from the launching process's size (it survives the fork and exec), and the launcher imported torch too."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (no /proc: the best there is)


def worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    rss_at_start = rss_mib("VmRSS")  # torch imported, nothing built: what every process pays
    total_steps = spec["warmup"] + spec["steps"]
    cfg = run_config(spec["preset"], spec["run_dir"], train_batches=total_steps * spec["accum"] * spec["processes"],
                     threads=spec["threads"], device=spec["device"], accum=spec["accum"])
    recorder = StepRecorder(total_steps)
    trainer = recorder.trainer = Trainer(cfg, recorder, Control())
    rank, grad_sync = trainer.ranks.rank, trainer.session.grad_sync
    if spec.get("break_one_round") and grad_sync is not None:
        # What the check exists for: a loop that summed the gradients more than once a window.
        sum_once = grad_sync.sum_
        grad_sync.sum_ = lambda: (sum_once(), sum_once())
    end = trainer.run()
    result = {
        "rank": rank, "world_size": trainer.ranks.world_size, "threads": trainer.session.threads, "end": end.reason,
        "message": getattr(end, "message", ""), "stamps": recorder.stamps, "step_tokens": recorder.step_tokens,
        "allreduces_per_step": recorder.allreduces_per_step, "buckets": grad_sync.buckets if grad_sync else 0,
        "bucket_bytes": grad_sync.bucket_bytes if grad_sync else [],
        "allreduce_seconds": recorder.allreduce_seconds,
        "peak_rss_mib": rss_mib(), "rss_at_start_mib": rss_at_start,
        "peak_gpu_mib": (torch.cuda.max_memory_allocated(trainer.device) / 2**20
                         if trainer.device.type == "cuda" else None),
    }
    Path(spec["out_dir"], f"rank{rank}.json").write_text(json.dumps(result))
    # The gradient sum still holds the gloo group (destroy_process_group only drops torch's own references):
    # let it go while the interpreter is whole, not at its teardown, where a gloo rank was seen to
    # abort once ("terminate called without an active exception", load ~3.7).
    del trainer, recorder.trainer, grad_sync
    gc.collect()
    return 0 if end.reason == "completed" else 1


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1]))
