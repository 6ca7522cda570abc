"""What the gradient sum after the window costs (issue 26): the overlap of communication and backward it gives up.

Several processes used to sum the gradients with DDP, whose all-reduce runs bucket by bucket inside
the window's *last* backward (overlapped with it). The engine now keeps every backward local, lets
the ranks agree that none ran out of memory (a small all-reduce on gloo), and then sums
(``SummedGradients.sum_``, gradient_sum.py): nothing overlaps. This script times one window both
ways on the same model, in the same 2 gloo processes (1 torch thread each), alternating window by
window so a neighbour's burst lands on both:

  (ddp)    DDP with the sum hook: ``no_sync`` on every micro-step but the last (the old path)
  (after)  every backward local, then the agreement, then the bucketed sum (the engine's path)

Each window: zero the gradients, accumulate ``accum`` micro-batches, the gradients summed (no
optimizer step: that is the same both ways). Both paths' summed gradients are compared once
(they must agree within 1e-5 relative: exit 1 if not). Printed: the median window time of each, the
ratio after/ddp, and the cost in ms per window, for accum 1 (the whole backward is the last one:
the most overlap to lose) and the preset's accum.

    python benchmarks/sum_after_window.py                  # small preset, 30 windows a path a setting
    python benchmarks/sum_after_window.py --preset seed --windows 12
    python benchmarks/sum_after_window.py --quick          # tiny model, 6 windows (smoke test)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import CHECK_FAILED, PRESETS, machine_line, table

TOLERANCE = 1e-5


def _summed_allreduce_hook(state, bucket):
    """The old path's hook: DDP's default all-reduce without its division by the world size."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, results) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from tui_trainer.engine.accumulation import accumulate_window
    from tui_trainer.engine.gradient_sum import SummedGradients
    from tui_trainer.model.gpt import GPT

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model_cfg, micro_batch, preset_accum = PRESETS[args.preset]
    model_cfg = replace(model_cfg, vocab_size=65, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(model_cfg)
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(None, _summed_allreduce_hook)
    summed = SummedGradients(model.parameters())
    block = model_cfg.block_size
    generator = torch.Generator().manual_seed(1 + rank)
    tokens = torch.randint(0, 65, (micro_batch * preset_accum, block + 1), generator=generator)

    class Data:  # the WindowDataset interface accumulate_window reads: batch(indices) and block_size
        block_size, device = block, torch.device("cpu")

        def batch(self, indices):
            rows = tokens[indices]
            return rows[:, :-1], rows[:, 1:]

    data, indices = Data(), torch.arange(len(tokens))

    def window(path: str, accum: int) -> float:
        micro = [(i * micro_batch, (i + 1) * micro_batch) for i in range(accum)]
        total = accum * micro_batch * block * world
        model.zero_grad(set_to_none=True)
        dist.barrier()
        started = time.perf_counter()
        if path == "ddp":
            if accum > 1:
                with ddp.no_sync():
                    accumulate_window(ddp, data, indices, micro[:-1], total_tokens=total)
            accumulate_window(ddp, data, indices, micro[-1:], total_tokens=total)  # its backward all-reduces
        else:
            accumulate_window(model, data, indices, micro, total_tokens=total)
            flags = torch.zeros(world, dtype=torch.float64)
            dist.all_reduce(flags)  # the agreement: did any rank run out of memory?
            summed.sum_()
        return time.perf_counter() - started

    out = {}
    for accum in sorted({1, preset_accum}):
        for path in ("ddp", "after", "ddp", "after"):  # warm-up (DDP builds, then rebuilds, its buckets)
            window(path, accum)
        window("ddp", accum)
        by_ddp = [p.grad.clone() for p in model.parameters()]
        window("after", accum)
        worst = max(((p.grad - g).norm() / g.norm().clamp_min(1e-30)).item()
                    for p, g in zip(model.parameters(), by_ddp))
        times = {"ddp": [], "after": []}
        for i in range(args.windows):
            for path in (("ddp", "after") if i % 2 == 0 else ("after", "ddp")):
                times[path].append(window(path, accum))
        out[accum] = {"times": times, "worst": worst}
    if rank == 0:
        results.put(out)
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="seed, small or tiny (default small)")
    parser.add_argument("--windows", type=int, default=30, help="timed windows per path and setting")
    parser.add_argument("--quick", action="store_true", help="tiny model, 6 windows (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.windows = "tiny", 6
    print(machine_line())
    model_cfg, micro_batch, accum = PRESETS[args.preset]
    print(f"preset {args.preset}: {model_cfg.n_layer} layers x {model_cfg.n_embd}, context {model_cfg.block_size}, "
          f"micro-batch {micro_batch}; 2 processes x 1 thread, gloo; {args.windows} windows a path a setting")
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    started = time.perf_counter()
    loads = [os.getloadavg()[0]]
    mp.start_processes(_rank, args=(2, _free_port(), args, results), nprocs=2, join=True, start_method="spawn")
    loads.append(os.getloadavg()[0])
    out = results.get()
    rows, failed = [], False
    for accum, measured in sorted(out.items()):
        ddp, after = (statistics.median(measured["times"][p]) for p in ("ddp", "after"))
        failed |= measured["worst"] > TOLERANCE
        rows.append([f"accum {accum}", f"{1000 * ddp:,.1f}", f"{1000 * after:,.1f}", f"{after / ddp:.3f}",
                     f"{1000 * (after - ddp):+,.1f}", f"{measured['worst']:.1e}"])
    print(f"{time.perf_counter() - started:.0f} s; load average (1 min) {min(loads):.1f}-{max(loads):.1f} while measuring")
    print(table(["window", "ddp ms (median)", "after ms (median)", "after/ddp", "cost ms a window",
                 "max rel grad diff"], rows))
    if failed:
        print(f"FAILED: the two paths' summed gradients differ by more than {TOLERANCE:g}")
        return CHECK_FAILED
    print("after/ddp: what summing after the window (the out-of-memory agreement first) costs against DDP's "
          "overlapped all-reduce")
    return 0


if __name__ == "__main__":
    sys.exit(main())
