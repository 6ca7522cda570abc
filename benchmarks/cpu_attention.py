"""Why attention runs in fp32 under CPU autocast: PyTorch's CPU attention kernels, bf16 vs fp32.

For each shape (head width, context), scaled_dot_product_attention's forward + backward on
8 sequences, causal, q/k/v as the model makes them (views of one (B, T, 3C) projection), with
the flash and the math backends, in bf16 and in fp32; then the model's own training step (4
layers, micro-batch 8 x accum 4, bundled vocabulary) in fp32 and under bf16 autocast, where
tui_trainer/model/gpt.py runs the attention in fp32. Measurements alternate (one call of each
in turn) and the figures are medians.

    python benchmarks/cpu_attention.py
    python benchmarks/cpu_attention.py --quick       # two small shapes, a few calls (smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _common import machine_line, table
from torch.nn.attention import SDPBackend, sdpa_kernel

from tui_trainer.config import ModelConfig
from tui_trainer.model.gpt import GPT, make_optimizer

SHAPES = ((8, 16, 128), (4, 32, 64), (8, 32, 128), (6, 64, 256))  # (heads, head width, context)
BATCH = 8


def attention_call(heads: int, width: int, context: int, dtype: torch.dtype, backend: SDPBackend):
    qkv = torch.randn(BATCH, context, 3 * heads * width, dtype=dtype, requires_grad=True)

    def call() -> None:
        q, k, v = qkv.split(heads * width, dim=2)
        q, k, v = (t.view(BATCH, context, heads, width).transpose(1, 2) for t in (q, k, v))
        with sdpa_kernel(backend):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y.float().sum().backward()
    return call


def model_step(width: int, context: int, heads: int, dtype: torch.dtype | None):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=4, n_head=heads, n_embd=width, block_size=context, dropout=0.0, vocab_size=65))
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), "cpu")
    data = torch.randint(0, 65, (BATCH * 4, context + 1), generator=torch.Generator().manual_seed(1))

    def step() -> None:
        for micro in range(4):
            rows = data[micro * BATCH:(micro + 1) * BATCH]
            with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
                loss = model(rows[:, :-1], rows[:, 1:])
            (loss / (BATCH * 4 * context)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def alternate(calls: dict[str, object], rounds: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of each call, one call of each in turn."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(warmup + rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if index >= warmup:
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="measured calls of each (default 15)")
    parser.add_argument("--quick", action="store_true", help="two small shapes, a few calls (smoke test)")
    args = parser.parse_args(argv)
    shapes, rounds = (SHAPES[:2], 3) if args.quick else (SHAPES, args.rounds)
    print(machine_line())
    rows = []
    for heads, width, context in shapes:
        calls = {f"{dtype_name}/{backend.name.lower()}": attention_call(heads, width, context, dtype, backend)
                 for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
                 for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH)}
        ms = alternate(calls, rounds, warmup=2)
        best = min(ms, key=ms.get)
        rows.append([str(width), str(context), *(f"{ms[name]:.2f}" for name in calls),
                     f"{ms['bf16/flash_attention'] / ms['fp32/flash_attention']:.2f}x", best])
    print(f"attention forward + backward, {BATCH} sequences, causal: milliseconds (medians of {rounds})")
    print(table(["head width", "context", *calls, "bf16/fp32 flash", "fastest"], rows))

    width, context, heads = (64, 64, 4) if args.quick else (128, 128, 8)
    steps = {"fp32": model_step(width, context, heads, None), "bf16": model_step(width, context, heads, torch.bfloat16)}
    ms = alternate(steps, max(3, rounds), warmup=2)
    tokens = BATCH * 4 * context
    print(f"\nthe model's training step ({width} wide, {heads} heads, context {context}, {BATCH}x4, attention in "
          f"fp32 under bf16 autocast): fp32 {tokens / ms['fp32'] * 1000:,.0f} tok/s, bf16 "
          f"{tokens / ms['bf16'] * 1000:,.0f} tok/s: bf16/fp32 {ms['fp32'] / ms['bf16']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
