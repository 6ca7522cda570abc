"""AdamW step time: for-loop vs foreach vs fused, on the seed's model (why the engine uses fused).

Times ``optimizer.step()`` alone (random gradients already in place), the three
implementations interleaved round by round, and prints min/median/max and the ratios.

    python benchmarks/optimizer_step.py
    python benchmarks/optimizer_step.py --preset small --rounds 50
    python benchmarks/optimizer_step.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch
from _common import PRESETS, fmt_spread, machine_line, spread, table

from tui_trainer.model.gpt import GPT

KINDS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.rounds = "tiny", 3
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(replace(PRESETS[args.preset][0], vocab_size=65)).to(device)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-6, **kw) for name, kw in KINDS.items()}
    for optimizer in optimizers.values():
        optimizer.step()  # allocate the state
    times: dict[str, list[float]] = {name: [] for name in KINDS}
    for _ in range(args.rounds):
        for name, optimizer in optimizers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - started) * 1e3)
    print("AdamW step time by implementation")
    print(machine_line(args.device))
    print(f"model {args.preset}: {model.num_parameters():,} parameters; {args.rounds} interleaved rounds")
    fused = spread(times["fused"])[1]
    print(table(["implementation", "ms min / median / max", "median vs fused"],
                [[name, fmt_spread(t, ".2f"), f"{spread(t)[1] / fused:.1f}x"] for name, t in times.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
