"""Scaling (issue 13): tokens/s, peak memory per rank and the gradient all-reduce, 1 vs N processes.

Every configuration trains the same model on the same global windows (the same effective batch:
one process accumulates ``N x accum`` micro-batches where N processes accumulate ``accum`` each)
for a fixed number of optimizer steps, each run in a fresh process so that its peak memory is its
own. The multi-process runs are launched by torchrun itself
(``python -m torch.distributed.run --standalone --nproc-per-node N benchmarks/_scaling_worker.py
SPEC``); every worker builds ``Trainer`` from tui_trainer.engine.loop and writes its figures to a JSON
file. The configurations alternate, repetition after repetition, so a neighbour's burst on a
shared machine hits them alike; each figure is a median.

On the CPU (the fair comparison on N cores: the same cores, shared out differently):
  (a) 1 process x N torch threads   (b) N processes x 1 thread (gloo)   (c) 1 process x 1 thread
With CUDA available, also 1 GPU vs every GPU (one process each, nccl); with one GPU, only 1 GPU.

What each run measures: tokens/s (the global rate: tokens per step over rank 0's median step time,
warm-up steps skipped); each rank's peak RSS (``VmHWM``) and, on CUDA, peak allocated GPU
memory; in a multi-process run, the all-reduce of one flat float32 buffer the size of the model's
gradients (median of 20, timed on every rank after the last step) and the
gradient all-reduces made in each step (``SummedGradients.allreduces``, read at each step).
The check: exactly one all-reduce round per optimizer step, i.e. no sum inside the window: the
all-reduces of each step equal the number of buckets the gradient sum has (``SummedGradients.bucket_bytes``: one fixed layout, ~25 MB buckets); the script exits 1 if any step
made more or fewer. ``--break-one-round`` sums twice a step (the check must fail).

    python benchmarks/scaling.py                        # small model, 3 repetitions (4.5 min on 2 cores at load ~2)
    python benchmarks/scaling.py --preset seed --steps 4 --reps 2
    python benchmarks/scaling.py --devices cuda         # on a CUDA machine: 1 GPU vs all of them
    python benchmarks/scaling.py --quick                # tiny model, 1 repetition (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import CHECK_FAILED, NOTHING_MEASURED, PRESETS, cores, fmt_spread, machine_line, scratch_dir, table

import tui_trainer

WORKER = Path(__file__).resolve().with_name("_scaling_worker.py")  # one rank of one configuration
RETRIES = 1  # a run that fails is run once more (and the summary says so); a second failure ends the benchmark
WORKER_TIMEOUT_S = 900  # one configuration's run, start-up included (a busy box is slow, not stuck)
# (warm-up steps, measured steps, repetitions) per preset: the small run took 4.5 minutes on 2 cores at load ~2.
DEFAULT_RUNS = {"seed": (1, 4, 2), "small": (2, 10, 3), "tiny": (1, 4, 1)}


# -- the parent: configurations, repetitions, the table -----------------------------------------------

@dataclass(frozen=True)
class Configuration:
    key: str  # a, b, c (CPU); g1, gN (CUDA)
    label: str
    device: str
    processes: int
    threads: int
    widest: int  # the most processes of its device's comparison: every run of it takes the same global step

    def accum_per_rank(self, accum: int) -> int:
        """``accum`` micro-batches a rank at the widest; one process accumulates ``widest`` times as many."""
        return accum * self.widest // self.processes


def configurations(devices: list[str], nproc: int, keys: set[str] | None) -> list[Configuration]:
    found = []
    if "cpu" in devices:
        found += [Configuration("a", f"1 process x {nproc} threads", "cpu", 1, nproc, nproc),
                  Configuration("b", f"{nproc} processes x 1 thread", "cpu", nproc, 1, nproc),
                  Configuration("c", "1 process x 1 thread", "cpu", 1, 1, nproc)]
    if "cuda" in devices:
        gpus = torch.cuda.device_count()
        found.append(Configuration("g1", "1 GPU", "cuda", 1, 1, max(1, gpus)))
        if gpus >= 2:  # (one process per GPU; its CPU threads hardly matter)
            found.append(Configuration("gN", f"{gpus} GPUs", "cuda", gpus, 1, gpus))
        else:
            print("(one GPU here: the 1 vs N GPU comparison needs 2 or more; measuring 1 GPU only)")
    return [c for c in found if keys is None or c.key in keys]


def run_configuration(config: Configuration, args: argparse.Namespace, scratch: Path, rep: int,
                      attempt: int = 0) -> list[dict]:
    """One run of ``config`` in fresh process(es); every rank's result, rank 0 first."""
    out_dir = scratch / f"{config.key}-rep{rep}-{attempt}"
    out_dir.mkdir()
    spec = {"preset": args.preset, "device": config.device, "threads": config.threads,
            "processes": config.processes, "accum": config.accum_per_rank(args.accum), "warmup": args.warmup,
            "steps": args.steps, "run_dir": str(out_dir / "run"), "out_dir": str(out_dir),
            "break_one_round": args.break_one_round}
    spec_path = out_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    # The workers import the same tui_trainer as this process, from wherever it is run.
    source_root = str(Path(tui_trainer.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(config.threads)}
    if config.processes == 1:  # one process, no launcher: what `tui-trainer train` runs
        command = [sys.executable, str(WORKER), str(spec_path)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={config.processes}", str(WORKER), str(spec_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT_S)
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]
    if done.returncode != 0 or len(results) != config.processes or any(r["end"] != "completed" for r in results):
        reported = ", ".join(f"rank {r['rank']} ({r['end']})" for r in results) or "none"
        raise WorkerFailed(f"{config.label}: exit code {done.returncode}; ranks that reported: {reported}"
                           f"\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}")
    return sorted(results, key=lambda r: r["rank"])


class WorkerFailed(RuntimeError):
    pass


@dataclass
class Measured:
    """One run of one configuration."""

    step_seconds: float  # rank 0's median step
    tokens_per_s: float
    peak_rss_mib: list[float]  # by rank
    rss_at_start_mib: list[float]
    peak_gpu_mib: list[float | None]
    allreduce_ms: float | None  # rank 0's median
    allreduces_per_step: list[int]  # rank 0's, every step (warm-up included)
    allreduces_agree: bool  # every rank counted the same all-reduces in every step
    buckets_per_step: list[int]  # the gradient sum's buckets in each step (one all-reduce each makes one round)
    bucket_bytes: str  # its layout, for the record


def measure(results: list[dict], warmup: int) -> Measured:
    main = results[0]
    stamps, tokens = main["stamps"], main["step_tokens"]
    durations = [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]
    if len(set(tokens)) != 1:
        raise WorkerFailed(f"steps of different sizes: {tokens}")
    rounds = main["allreduces_per_step"]
    step_seconds = statistics.median(durations)
    return Measured(step_seconds=step_seconds, tokens_per_s=tokens[0] / step_seconds,
                    peak_rss_mib=[r["peak_rss_mib"] for r in results],
                    rss_at_start_mib=[r["rss_at_start_mib"] for r in results],
                    peak_gpu_mib=[r["peak_gpu_mib"] for r in results],
                    allreduce_ms=1000 * statistics.median(main["allreduce_seconds"]) if main["allreduce_seconds"] else None,
                    allreduces_per_step=rounds,
                    allreduces_agree=all(r["allreduces_per_step"] == rounds for r in results), **expected_buckets(main, len(rounds)))


def expected_buckets(result: dict, steps: int) -> dict:
    """The buckets the gradient sum has in every step (one layout for the run: SummedGradients.bucket_bytes)."""
    layout = result["bucket_bytes"]
    return {"buckets_per_step": [len(layout)] * steps,
            "bucket_bytes": " + ".join(f"{b:,}" for b in layout) + " bytes" if layout else "none"}


def one_round_per_step(runs: list[Measured]) -> tuple[bool, str]:
    """Every step of every multi-process run made exactly one all-reduce of each bucket."""
    bad = [m for m in runs if min(m.buckets_per_step) < 1 or m.allreduces_per_step != m.buckets_per_step
           or not m.allreduces_agree]
    steps = sum(len(m.allreduces_per_step) for m in runs)
    total = sum(sum(m.allreduces_per_step) for m in runs)
    rounds = sum(sum(m.buckets_per_step) for m in runs)
    layouts = sorted({m.bucket_bytes for m in runs})
    summary = (f"{total} gradient all-reduces in {steps} optimizer steps of {len(runs)} runs, for {rounds} "
               f"buckets (the gradient sum's buckets: {'; '.join(layouts)})")
    if bad:
        return False, (f"{summary}; a run made {bad[0].allreduces_per_step} all-reduces in its steps where "
                       f"the sum had {bad[0].buckets_per_step} buckets"
                       f"{'' if bad[0].allreduces_agree else ', and its ranks counted different all-reduces'}")
    return True, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="seed, small or tiny (default small)")
    parser.add_argument("--nproc", type=int, default=None, help="processes on the CPU (default: min(2, cores))")
    parser.add_argument("--accum", type=int, default=None,
                        help="micro-batches per step per process in the N-process run (default: the preset's); "
                             "one process accumulates N times as many")
    parser.add_argument("--steps", type=int, default=None, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=None, help="optimizer steps skipped at the start (>= 1)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of every configuration")
    parser.add_argument("--devices", default=None,
                        help="comma-separated: cpu, cuda (default: cpu, and cuda too when available)")
    parser.add_argument("--configs", default=None, help="comma-separated keys to run: a, b, c, g1, gN (default all)")
    parser.add_argument("--break-one-round", action="store_true",
                        help="sum the gradients twice a step, as a loop that summed inside the window would "
                             "(the check must fail)")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps, 1 repetition (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset = "tiny"
    warmup, steps, reps = DEFAULT_RUNS[args.preset]
    args.warmup = max(1, args.warmup if args.warmup is not None else warmup)
    args.steps, args.reps = args.steps or steps, args.reps or reps
    nproc = args.nproc or min(2, cores())
    devices = ([d.strip() for d in args.devices.split(",")] if args.devices
               else ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cpu" in devices and not 2 <= nproc <= cores():
        if args.nproc:
            parser.error(f"--nproc {nproc}: the CPU comparison needs 2 to {cores()} processes on this machine")
        print("(one CPU core: no CPU comparison)")
        devices.remove("cpu")
    if "cuda" in devices and not torch.cuda.is_available():
        print("nothing measured: --devices cuda, but CUDA is not available here")
        return NOTHING_MEASURED
    configs = configurations(devices, nproc, set(args.configs.split(",")) if args.configs else None)
    model_cfg, micro_batch, preset_accum = PRESETS[args.preset]
    args.accum = args.accum or preset_accum
    if not configs:
        print("nothing measured: no configuration to run (--configs names a, b, c, g1 or gN)")
        return NOTHING_MEASURED
    print("Scaling: tokens/s, peak memory per rank and the gradient all-reduce, 1 vs N processes")
    print(machine_line("cuda" if "cuda" in devices else "cpu"))
    print(f"preset {args.preset} ({model_cfg.n_layer} layers, d_model {model_cfg.n_embd}, context "
          f"{model_cfg.block_size}), micro-batch {micro_batch}; {args.reps} repetitions of {args.warmup} warm-up + "
          f"{args.steps} measured steps, configurations alternating, each run in fresh processes (torchrun for "
          f"N > 1); the same global step in every run of a device:")
    for c in configs:
        global_accum = c.accum_per_rank(args.accum) * c.processes
        print(f"  ({c.key}) {c.label} on {c.device}: {c.processes} x accum {c.accum_per_rank(args.accum)} = "
              f"{global_accum} micro-batches = {micro_batch * global_accum * model_cfg.block_size:,} tokens a step",
              flush=True)
    loads = [os.getloadavg()[0]]
    runs: dict[str, list[Measured]] = {c.key: [] for c in configs}
    failures: list[str] = []  # runs that failed and were run again (said in the summary)
    started = time.perf_counter()
    with scratch_dir("scaling") as scratch:
        for rep in range(args.reps):
            for config in (configs if rep % 2 == 0 else configs[::-1]):
                for attempt in range(1 + RETRIES):
                    try:
                        measured = measure(run_configuration(config, args, Path(scratch), rep, attempt), args.warmup)
                        break
                    except (WorkerFailed, subprocess.TimeoutExpired) as exc:
                        if attempt == RETRIES:
                            print(f"nothing measured: a run failed: {exc}")
                            return NOTHING_MEASURED
                        failures.append(str(exc).splitlines()[0])
                        print(f"  rep {rep + 1}: {config.label}: the run failed ({failures[-1]}): once more", flush=True)
                runs[config.key].append(measured)
                loads.append(os.getloadavg()[0])
                comm = (f", flat all-reduce {measured.allreduce_ms:.2f} ms, all-reduces by step "
                        f"{compact(measured.allreduces_per_step)} (buckets {compact(measured.buckets_per_step)})"
                        if config.processes > 1 else "")
                print(f"  rep {rep + 1}: {config.label}: {measured.tokens_per_s:,.0f} tok/s, peak RSS "
                      f"{' / '.join(f'{m:,.0f}' for m in measured.peak_rss_mib)} MiB{comm}; load {loads[-1]:.1f}",
                      flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s for {args.reps} x {len(configs)} runs; load average (1 min) "
          f"{min(loads):.1f}-{max(loads):.1f} while measuring")
    if failures:
        print(f"{len(failures)} run{'s' if len(failures) != 1 else ''} failed and ran again: {'; '.join(failures)}")
    print_table(configs, runs)
    return verdicts(configs, runs, nproc)


def print_table(configs: list[Configuration], runs: dict[str, list[Measured]]) -> None:
    rows = []
    for c in configs:
        ms = runs[c.key]
        rss = [statistics.median(m.peak_rss_mib[r] for m in ms) for r in range(c.processes)]
        base = [statistics.median(m.rss_at_start_mib[r] for m in ms) for r in range(c.processes)]
        gpu = [m.peak_gpu_mib[0] for m in ms if m.peak_gpu_mib[0] is not None]
        allreduce = [m.allreduce_ms for m in ms if m.allreduce_ms is not None]
        rates = [m.tokens_per_s for m in ms]
        rows.append([c.label, " / ".join(f"{r:,.0f}" for r in rates), f"{statistics.median(rates):,.0f}",
                     " / ".join(f"{r:,.0f}" for r in rss), " / ".join(f"{b:,.0f}" for b in base),
                     f"{statistics.median(gpu):,.0f}" if gpu else "-",
                     fmt_spread(allreduce, ".2f") if allreduce else "-",
                     compact(ms[0].allreduces_per_step) if c.processes > 1 else "-"])
    print(table(["configuration", "tok/s per rep", "median tok/s", "peak RSS MiB by rank", "RSS after imports",
                 "peak GPU MiB (rank 0)", "all-reduce ms (min / median / max)", "all-reduces by step (rep 1)"], rows))


def compact(counts: list[int]) -> str:
    """[1, 2, 2, 2] -> '1, 2 x3'."""
    parts: list[list[int]] = []
    for n in counts:
        if parts and parts[-1][0] == n:
            parts[-1][1] += 1
        else:
            parts.append([n, 1])
    return ", ".join(f"{n}" if times == 1 else f"{n} x{times}" for n, times in parts)


def ratio(runs: dict[str, list[Measured]], top: str, bottom: str) -> tuple[float, list[float]]:
    """Median tok/s of ``top`` over ``bottom``, and the same per repetition (runs seconds apart)."""
    a, b = runs[top], runs[bottom]
    medians = statistics.median(m.tokens_per_s for m in a) / statistics.median(m.tokens_per_s for m in b)
    return medians, [x.tokens_per_s / y.tokens_per_s for x, y in zip(a, b)]


def verdicts(configs: list[Configuration], runs: dict[str, list[Measured]], nproc: int) -> int:
    by_key = {c.key: c for c in configs}
    comparisons = [("b", "a", f"{nproc} processes x 1 thread vs 1 process x {nproc} threads (the same cores)"),
                   ("b", "c", f"{nproc} processes x 1 thread vs 1 process x 1 thread (ideal: {nproc}x)"),
                   ("a", "c", f"1 process x {nproc} threads vs 1 process x 1 thread"),
                   ("gN", "g1", f"{by_key['gN'].label if 'gN' in by_key else 'N GPUs'} vs 1 GPU")]
    for top, bottom, what in comparisons:
        if top in by_key and bottom in by_key:
            value, per_rep = ratio(runs, top, bottom)
            print(f"({top})/({bottom}) {value:.3f}: {what}; per repetition {' / '.join(f'{r:.3f}' for r in per_rep)}")
    for key in ("b", "gN"):
        if key in by_key and runs[key] and runs[key][0].allreduce_ms is not None:
            step_ms = 1000 * statistics.median(m.step_seconds for m in runs[key])
            share = statistics.median(m.allreduce_ms for m in runs[key]) / step_ms
            print(f"({key}) the flat gradient all-reduce takes {share:.1%} of a median step ({step_ms:,.0f} ms)")
    distributed = [m for c in configs if c.processes > 1 for m in runs[c.key]]
    if not distributed:
        return 0
    ok, summary = one_round_per_step(distributed)
    if not ok:
        print(f"FAILED: not one all-reduce round per optimizer step: {summary}")
        return CHECK_FAILED
    print(f"one all-reduce round per step: {summary} (every bucket once a step: one sum after each window)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
