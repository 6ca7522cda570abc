"""Generation speed with and without the KV cache (tui_trainer/model/sampling.py).

The seed's model (6 layers, d_model 256, 8 heads), **randomly initialised** — speed does not
depend on the weights — with the bundled corpus's 65-character vocabulary, generates greedily
from the same prompt with the cache and without it (the same sliding window recomputed for
every token), the two alternating in one process, round by round. For each point it prints
new tokens per second, the speed-up, the time to the first new token, and whether the two
texts are identical (they must be: greedy, same window). Points: 256 and 1,024 new tokens at
the default context of 128, and the same at a context of 512 (``--block-sizes``).

Then it puts the time of one cached token next to its floor: reading the model's weights once
(their bytes over this machine's memory bandwidth, measured in the same run by a 200 MB tensor
copy, counted as read + write bytes per second), and splits a cached token's time into parts
measured side by side, round by round (medians): the weight-read floor; the same weights as
matrix-vector products alone (one position through every weight matrix as the cached step
multiplies it: ``np.dot`` where ``OnePositionStep`` takes the model, else ``F.linear``; what the
floor costs as BLAS calls; a model that fits in the CPU's last-level cache, like the seed's 19 MB
in a 32 MB L3, is read faster than the copy's rate, and this part is then negative); the rest of
one cached forward (norms, attention, GELU, adds, op dispatch); the slides' re-prefills spread
over the tokens; and the generation loop around the forward (the token's tensor, the greedy
choice, Python). Each part is given in wall time and in this process's CPU
time: on a shared machine the wall time also counts the time spent waiting for a core, the CPU
time much less so. Then the cost of one sampling step at temperature 0.8 (the figures above are
greedy). ``--no-breakdown`` skips it.

Exits 1 if the two paths' texts differ anywhere, or if the cache is less than 5x faster at
256 new tokens with the default context (skipped under --quick, whose tiny model is all
per-call overhead).

    python benchmarks/sampling.py
    python benchmarks/sampling.py --lengths 256 --block-sizes 128 --rounds 5
    python benchmarks/sampling.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from _common import PRESETS, machine_line, table

from tui_trainer.data.dataset import Vocabulary, default_corpus_path
from tui_trainer.model.gpt import GPT
from tui_trainer.model.sampling import SamplingSettings, generate, pick_next, slide_keep

GOAL = 5.0  # cached / uncached new tokens per second at 256 new tokens, default context
GOAL_POINT = (128, 256)  # (block_size, new tokens)
FLOOR_GOAL = 2.0  # a cached token within this many times the weight-read floor
COPY_BYTES = 200 * 2**20  # the bandwidth probe: large enough to leave every cache behind


def timed_generation(model: GPT, prompt_ids: list[int], new_tokens: int, kv_cache: bool) -> tuple[float, float, list[int]]:
    """(seconds in all, seconds to the first new token, the new ids) for one greedy generation."""
    first: list[float] = []
    started = time.perf_counter()

    def on_token(_: int) -> None:
        if not first:
            first.append(time.perf_counter() - started)

    ids = generate(model, prompt_ids, SamplingSettings(max_new_tokens=new_tokens, temperature=0, kv_cache=kv_cache),
                   on_token=on_token)
    return time.perf_counter() - started, first[0], ids


def copy_bandwidth() -> float:
    """Bytes per second (read + written) of one large tensor copy, after a warm-up copy."""
    source = torch.ones(COPY_BYTES // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    started = time.perf_counter()
    target.copy_(source)
    return 2 * COPY_BYTES / (time.perf_counter() - started)


def weight_bytes(model: GPT) -> int:
    """Bytes a cached token reads: every parameter once (the tied head once), but of the position
    table only its one row."""
    unique = {p.data_ptr(): p for p in model.parameters()}.values()
    positions = model.position_embedding.weight
    row_bytes = positions.shape[1] * positions.element_size()
    return sum(p.numel() * p.element_size() for p in unique) - (positions.shape[0] - 1) * row_bytes


def per_call(fn, calls: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per call. On a shared machine the wall time
    also counts the time spent waiting for a core; the CPU time is what the call cost when it ran
    (still inflated by the others' use of the caches and memory bus, but far less)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def breakdown(model: GPT, prompt_ids: list[int], new_tokens: int, rounds: int) -> tuple[list[list[str]], float]:
    """Rows of where a cached token's time goes (see the module docstring), medians of ``rounds``
    in wall and in CPU time; and the seconds of one temperature-0.8 sampling step (the greedy
    figures leave it out)."""
    block = model.cfg.block_size
    linears = [(m.weight, m.bias) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    one = {w.shape[1]: torch.randn(1, w.shape[1]) for w, _ in linears}
    mid = block // 2
    keep = slide_keep(block)
    prefill_ids = torch.tensor([[i % model.cfg.vocab_size for i in range(keep)]])
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        model.eval()
        cache = model.new_kv_cache()
        model.forward_cached(prefill_ids[:, :1].expand(1, mid).contiguous(), cache)
        token = torch.tensor([[1]])
        logits = model.forward_cached(token, model.new_kv_cache())[0]

        one_position = cache.one_position  # the products as the cached step does them, where it can
        row_of = {size: x.numpy()[0] for size, x in one.items()}

        def gemvs() -> None:
            if one_position is None:
                for weight, bias in linears:
                    F.linear(one[weight.shape[1]], weight, bias)
                return
            for weight, bias in one_position.matrices:
                out = np.dot(weight, row_of[weight.shape[1]])
                if bias is not None:
                    np.add(out, bias, out=out)

        def step() -> None:
            cache.length = mid  # the same position every call: half the context
            model.forward_cached(token, cache)

        def prefill() -> None:
            model.forward_cached(prefill_ids, model.new_kv_cache())

        def generation() -> None:
            timed_generation(model, prompt_ids, new_tokens, True)

        names = ("gemv", "step", "prefill", "token", "sample")
        wall: dict[str, list[float]] = {name: [] for name in ("bw", *names)}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(rounds):
            wall["bw"].append(copy_bandwidth())
            for name, fn, calls, per in (("gemv", gemvs, 50, 1), ("step", step, 50, 1), ("prefill", prefill, 5, 1),
                                         ("token", generation, 1, new_tokens),
                                         ("sample", lambda: pick_next(logits, 0.8, None, generator), 200, 1)):
                seconds, cpu_seconds = per_call(fn, calls)
                wall[name].append(seconds / per)
                cpu[name].append(cpu_seconds / per)
    bandwidth = statistics.median(wall.pop("bw"))
    floor = weight_bytes(model) / bandwidth
    # Slides in a generation of new_tokens from the prompt: the first when the window is full,
    # then one every block - keep tokens.
    grown = max(0, len(prompt_ids) + new_tokens - block)
    slides = 0 if grown == 0 else 1 + (grown - 1) // (block - keep)

    def parts(times: dict[str, list[float]]) -> list[float]:
        m = {name: statistics.median(values) for name, values in times.items()}
        slide_share = slides * m["prefill"] / new_tokens
        return [m["gemv"] - floor, m["step"] - m["gemv"], slide_share, m["token"] - m["step"] - slide_share, m["token"]]

    names_rows = ["  matrix-vector products beyond the floor (< 0: faster, from the CPU's cache)",
                  "  the rest of one cached forward (norms, attention, GELU, dispatch)",
                  f"  slides: {slides} re-prefill(s) of {keep} positions over {new_tokens} tokens",
                  "  the loop: the token's tensor, greedy choice, Python",
                  "a cached token in generate()"]
    rows = [[f"weight-read floor ({weight_bytes(model) / 1e6:.1f} MB at {bandwidth / 1e9:.1f} GB/s)",
             f"{floor * 1e3:.3f}", "1.00x", "", ""]]
    for name, seconds, cpu_seconds in zip(names_rows, parts(wall), parts(cpu)):
        rows.append([name, f"{seconds * 1e3:.3f}", f"{seconds / floor:.2f}x",
                     f"{cpu_seconds * 1e3:.3f}", f"{cpu_seconds / floor:.2f}x"])
    return rows, statistics.median(wall["sample"])


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    parser.add_argument("--lengths", type=parse_ints, default=[256, 1024], help="new tokens, comma-separated")
    parser.add_argument("--block-sizes", type=parse_ints, default=[128, 512], help="contexts, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="cached/uncached pairs per point")
    parser.add_argument("--prompt", default="First Citizen:\n", help="the prompt (characters of the corpus)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="a tiny model, short lengths, one round")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the split of a cached token's time against the weight-read floor")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.lengths, args.block_sizes, args.rounds = "tiny", [24, 48], [16], 1
        args.threads = args.threads or 1  # a tiny model: a second thread only adds synchronisation
    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = Vocabulary.from_text(default_corpus_path().read_text(encoding="utf-8"))
    prompt_ids = vocab.encode(args.prompt).tolist()

    print("Generation with vs without the KV cache (greedy, same prompt, random init)")
    print(machine_line())
    print(f"the cached step's matrix-vector products: numpy's BLAS at {torch.get_num_threads()} thread(s), "
          "torch's count, torch's own ops at 1 (tui_trainer/model/one_position.py)")
    print(f"model {args.preset} {PRESETS[args.preset][0].n_layer}x{PRESETS[args.preset][0].n_embd}, "
          f"vocab {vocab.size}, prompt {len(prompt_ids)} tokens {args.prompt!r}, {args.rounds} interleaved rounds")
    rows, failures, ratios = [], [], {}
    for block_size in args.block_sizes:
        torch.manual_seed(0)
        model = GPT(replace(PRESETS[args.preset][0], block_size=block_size, vocab_size=vocab.size))
        timed_generation(model, prompt_ids, 8, True)  # warm-up: first-call allocations
        timed_generation(model, prompt_ids, 8, False)
        for new_tokens in args.lengths:
            runs: dict[bool, list[tuple[float, float, list[int]]]] = {True: [], False: []}
            for _ in range(args.rounds):
                for kv_cache in (True, False):
                    runs[kv_cache].append(timed_generation(model, prompt_ids, new_tokens, kv_cache))
            texts = {tuple(ids) for kind in runs.values() for _, _, ids in kind}
            identical = len(texts) == 1
            if not identical:
                failures.append(f"block {block_size}, {new_tokens} tokens: the texts differ with and without the cache")
            rate = {kind: statistics.median(new_tokens / seconds for seconds, _, _ in kind_runs)
                    for kind, kind_runs in runs.items()}
            first = {kind: statistics.median(t for _, t, _ in kind_runs) * 1e3 for kind, kind_runs in runs.items()}
            ratio = rate[True] / rate[False]
            ratios[(block_size, new_tokens)] = ratio
            rows.append([str(block_size), f"{new_tokens:,}", f"{rate[True]:,.0f}", f"{rate[False]:,.0f}",
                         f"{ratio:.1f}x", f"{first[True]:.1f}", f"{first[False]:.1f}", "yes" if identical else "NO"])
    print(table(["context", "new tokens", "cached tok/s", "uncached tok/s", "speed-up",
                 "first token ms (cached)", "(uncached)", "same text"], rows))
    if not rows:
        print("measured nothing: no lengths or block sizes given")
        return 1
    if args.quick:
        print(f"--quick: the {GOAL:.0f}x goal is not checked on the tiny model")
    elif GOAL_POINT in ratios:
        verdict = "met" if ratios[GOAL_POINT] >= GOAL else "NOT met"
        print(f"goal: >= {GOAL:.0f}x at {GOAL_POINT[1]} new tokens, context {GOAL_POINT[0]}: "
              f"{ratios[GOAL_POINT]:.1f}x, {verdict}")
        if ratios[GOAL_POINT] < GOAL:
            failures.append(f"the cache is {ratios[GOAL_POINT]:.1f}x faster at {GOAL_POINT[1]} tokens, below {GOAL:.0f}x")
    else:
        print(f"goal not checked: the point context {GOAL_POINT[0]}, {GOAL_POINT[1]} new tokens was not measured")
    if args.breakdown:
        block_size = args.block_sizes[0]
        new_tokens = args.lengths[0]
        torch.manual_seed(0)
        model = GPT(replace(PRESETS[args.preset][0], block_size=block_size, vocab_size=vocab.size))
        rows, sample_seconds = breakdown(model, prompt_ids, new_tokens, max(3, args.rounds))
        print(f"\nwhere a cached token's time goes: context {block_size}, {new_tokens} new tokens, "
              f"{max(3, args.rounds)} interleaved rounds, medians; wall time, then this process's CPU time "
              "(on a busy machine the wall time also counts waiting for a core)")
        print(table(["part", "ms per token", "x floor", "CPU ms", "x floor"], rows))
        print(f"sampling at temperature 0.8 (not in the greedy figures above): {sample_seconds * 1e6:.0f} us a token")
        ratio, cpu_ratio = float(rows[-1][2].rstrip("x")), float(rows[-1][4].rstrip("x"))
        print(f"goal: a cached token within {FLOOR_GOAL:.0f}x the weight-read floor: {ratio:.2f}x, "
              f"{'meets' if ratio <= FLOOR_GOAL else 'misses'} (in CPU time {cpu_ratio:.2f}x; load "
              f"{os.getloadavg()[0]:.1f})")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
