"""fp16 loss scaling fitted to the exact accumulation of a window (``--precision fp16``).

fp16's 5-bit exponent flushes small gradients to zero, so the loss is multiplied by a large
scale before each backward and the gradients divided by it before the update, with
``torch.amp.GradScaler`` finding the largest scale that does not overflow. With accumulation:

    each micro-batch     backward of scale x (its loss sum / the window's tokens)   (accumulation.py)
    the window's end     unscale once → clip (sees the true norm) → step unless a gradient is
                         inf/NaN → update the scale (halved after an overflow, doubled after
                         ``growth_interval`` clean steps)

A window whose gradients overflowed is *skipped* by the scaler: no update, the LR schedule does
not advance (``LoopState.tokens_skipped``: the schedule reads tokens_seen - tokens_skipped, while
tokens_seen keeps counting every token the data fed, as the epochs and the ETA do), and it does
not count towards ``--max-bad-steps``: finding the scale is the scaler's normal work. It is a
real divergence, counted as bad, when the loss itself is not finite, or when the scale has fallen
below ``MIN_SCALE`` (the gradients overflow even unscaled).

No host sync here: the scaler keeps its scale and its inf check on the device, and the step reads
the scale in its one ``.tolist()`` (``scale_tensor``). Several processes: the gradients are
all-reduced before ``unscale``, so every rank finds the same inf and skips the same steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch

MIN_SCALE = 1.0  # a skip at a smaller scale is a divergence, not the scaler finding its scale


class LossScaling:
    """One run's ``GradScaler`` and the host's view of its last scale."""

    def __init__(self, device: torch.device) -> None:
        self.scaler = torch.amp.GradScaler(device.type)
        self.last_scale = float(self.scaler._init_scale)  # the scale the last step was taken with (host copy)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Once per window, after the last backward (and the all-reduce), before clipping."""
        self.scaler.unscale_(optimizer)

    def scale_tensor(self) -> torch.Tensor:
        """The current scale as a device tensor, read with the step's other figures in one sync."""
        # (GradScaler keeps it as _scale; get_scale() would sync on its own.)
        return self.scaler._get_scale_async()

    def update(self) -> None:
        """After the step (taken or not): the scale backs off when ``unscale_`` found an inf/NaN."""
        self.scaler.update()

    def is_a_scaler_skip(self, loss: float, norm: float) -> bool:
        """A non-finite gradient norm with a finite loss at a scale above the floor: an overflow
        the scaler handles (not a bad step). ``last_scale``: the scale of this step."""
        return math.isfinite(loss) and not math.isfinite(norm) and self.last_scale >= MIN_SCALE

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)
        self.last_scale = float(state["scale"])
