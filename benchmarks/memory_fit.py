"""Benchmark: --micro-batch auto under budgets that force different choices (engine/memory_fit.py).

For each model and each memory budget: the micro-batch the fit chose for ``--batch``, the chosen
micro-batch's peak measured again afterwards (a fresh forward + backward, plus the optimizer state
AdamW really allocates after one step; it must stay under the budget), its tokens/s, and what the
probing cost in seconds. Then activation checkpointing (``--checkpoint-activations``): the peak and
tokens/s of one micro-batch with and without it. A budget nothing fits says so (and whether
activation checkpointing would make micro-batch 1 fit). Peaks: bytes above the weights (CUDA's
allocator, or the process's peak RSS on the CPU, reset between probes).

    python benchmarks/memory_fit.py                 # the seed model, --batch 16, budgets 0.1 to 1 GB
    python benchmarks/memory_fit.py --big           # also a ~50M-parameter model at context 512 (slow on a CPU)
    python benchmarks/memory_fit.py --only-big --budgets 1.5   # that model alone, one budget
    python benchmarks/memory_fit.py --device cuda
    python benchmarks/memory_fit.py --quick         # a tiny model (CI smoke)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch
from _common import CHECK_FAILED, PRESETS, machine_line, table

from tui_trainer.config import ModelConfig
from tui_trainer.engine.memory_fit import MARGIN, fit_micro_batch, measure_step_peak
from tui_trainer.errors import UserError
from tui_trainer.model.gpt import GPT, make_optimizer

GB = 10 ** 9
VOCAB = 65  # tiny-shakespeare's characters


def models(quick: bool, big: bool, seed_too: bool = True) -> list[tuple[str, ModelConfig, int, list[float]]]:
    if quick:
        tiny = PRESETS["tiny"][0]
        return [("tiny", replace(tiny, vocab_size=VOCAB), 8, [0.002, 2.0])]
    seed = PRESETS["seed"][0]
    chosen = [("seed (6L d256 ctx128)", replace(seed, vocab_size=VOCAB), 16, [0.1, 0.25, 0.5, 1.0])] if seed_too else []
    if big:  # 8 x 12 x 704^2 = 47.6M parameters in the blocks
        chosen.append(("~48M (8L d704 ctx512)", ModelConfig(n_layer=8, n_head=11, n_embd=704, block_size=512,
                                                           vocab_size=VOCAB, dropout=0.0), 4, [0.5, 1.0, 2.0, 4.0]))
    return chosen


def optimizer_state_bytes(model: GPT, device: torch.device) -> int:
    """What AdamW allocates at its first step (its two moments), measured: one real step taken."""
    optimizer = make_optimizer(model, 1e-9, 0.0, (0.9, 0.95), device.type)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    size = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t) and t.dim() > 0)
    model.zero_grad(set_to_none=True)
    return size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model (CI smoke)")
    parser.add_argument("--big", action="store_true", help="also a ~50M-parameter model at context 512")
    parser.add_argument("--only-big", action="store_true", help="the ~50M model alone (implies --big)")
    parser.add_argument("--budgets", default=None, help="comma-separated budgets in GB, instead of each model's own")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(machine_line(args.device))
    failed = False
    for name, cfg, batch, budgets in models(args.quick, args.big or args.only_big, seed_too=not args.only_big):
        budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else budgets
        torch.manual_seed(0)
        model = GPT(cfg).to(device)
        params = model.num_parameters()
        state = optimizer_state_bytes(model, device) + params * 4  # AdamW + the noise scale's gradient copy
        print(f"\n{name}: {params / 1e6:,.1f}M parameters, --batch {batch}, optimizer state "
              f"{state / GB:,.2f} GB (margin {MARGIN:.0%} of the budget kept free)")
        rows = []
        for budget_gb in budgets:
            budget = int(budget_gb * GB)
            try:
                fit = fit_micro_batch(model, batch=batch, processes=1, block_size=cfg.block_size, vocab_size=VOCAB,
                                      device=device, autocast_dtype=None, budget_bytes=budget, state_bytes=state)
            except UserError as exc:
                model.checkpoint_activations = True
                try:
                    rescue = fit_micro_batch(model, batch=batch, processes=1, block_size=cfg.block_size,
                                             vocab_size=VOCAB, device=device, autocast_dtype=None,
                                             budget_bytes=budget, state_bytes=state)
                    words = f"nothing fits; with --checkpoint-activations: {rescue.micro_batch}"
                except UserError:
                    words = "nothing fits, even with --checkpoint-activations"
                finally:
                    model.checkpoint_activations = False
                rows.append([f"{budget_gb:g} GB", words, "-", "-", "-", "-"])
                del exc
                continue
            peak, speed = measure_step_peak(model, fit.micro_batch, cfg.block_size, VOCAB, device, None)
            measured = peak + state
            under = measured <= budget
            failed |= not under
            rows.append([f"{budget_gb:g} GB", f"{fit.micro_batch} x {fit.accum}", f"{measured / GB:,.2f}",
                         "yes" if under else "NO", f"{speed:,.0f}", f"{fit.seconds:.1f}"])
            print(f"  {budget_gb:g} GB: {fit.describe()}")
        print(table(["budget", "micro x accum", "peak GB", "under", "tokens/s", "probe s"], rows))
        micro = max(1, min(batch, 8 if not args.quick else 4))
        plain, plain_speed = measure_step_peak(model, micro, cfg.block_size, VOCAB, device, None)
        model.checkpoint_activations = True
        recomputed, recomputed_speed = measure_step_peak(model, micro, cfg.block_size, VOCAB, device, None)
        model.checkpoint_activations = False
        print(f"activation checkpointing at micro-batch {micro}: peak {plain / GB:,.3f} -> {recomputed / GB:,.3f} GB "
              f"({recomputed / max(plain, 1):.2f}x), tokens/s {plain_speed:,.0f} -> {recomputed_speed:,.0f} "
              f"({recomputed_speed / max(plain_speed, 1e-9):.2f}x)")
    if failed:
        print("FAILED: a chosen micro-batch measured above its budget")
        return CHECK_FAILED
    print("every chosen micro-batch measured under its budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
