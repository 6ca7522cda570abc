"""FLOP/s and MFU of a run's steps (analysis/mfu.py holds the maths and the table of peaks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tui_trainer.analysis.mfu import flops_per_token, peak_flops, peak_for
from tui_trainer.config import ModelConfig


@dataclass(frozen=True)
class FlopsMeter:
    """The model's training FLOPs per token and the device's peak for the run's precision
    (None: a CPU, or a GPU not in the table: FLOP/s alone, no MFU)."""

    per_token: float
    peak: float | None

    def figures(self, tokens_per_s: float) -> tuple[float, float | None]:
        """(achieved FLOP/s, MFU or None) of a step at ``tokens_per_s``."""
        achieved = tokens_per_s * self.per_token
        return achieved, (achieved / self.peak if self.peak else None)


def flops_meter(model: torch.nn.Module, cfg: ModelConfig, device: torch.device, precision: str,
                tf32: bool) -> FlopsMeter:
    """Counted once at set-up from the model's shape."""
    parameters = sum(p.numel() for p in model.parameters())
    per_token = flops_per_token(parameters=parameters, position_parameters=cfg.block_size * cfg.n_embd,
                                n_layer=cfg.n_layer, n_head=cfg.n_head, head_size=cfg.n_embd // cfg.n_head,
                                block_size=cfg.block_size)
    peak = None
    if device.type == "cuda":
        known = peak_for(torch.cuda.get_device_name(device))
        peak = peak_flops(known, precision, tf32) if known is not None else None
    return FlopsMeter(per_token, peak)
