"""A bias-corrected exponential moving average, as Adam's moments and TensorBoard's smoothing slider.

A plain EMA started at 0 (or at the first value) drags its start toward that seed for ~1/(1-beta)
points. Dividing by ``1 - beta**n`` removes the bias: the first smoothed point is the first value,
a constant series is smoothed to itself, and later points weight the recent past as a plain EMA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BiasCorrectedEMA:
    beta: float  # weight of the past, 0 <= beta < 1 (0.9: a memory of ~10 points)
    raw: float = 0.0  # the EMA started at 0, before the bias correction
    count: int = 0  # values folded in

    def update(self, value: float) -> float:
        """Fold in ``value`` and return the corrected average. A non-finite value is left out
        (a skipped step's NaN must not poison every later point)."""
        if math.isfinite(value):
            self.raw = self.beta * self.raw + (1.0 - self.beta) * value
            self.count += 1
        return self.value

    @property
    def value(self) -> float | None:
        """The corrected average, or None before the first value."""
        if self.count == 0:
            return None
        return self.raw / (1.0 - self.beta ** self.count)


def smoothed(values: list[float], beta: float) -> list[float]:
    """Every prefix's corrected EMA (NaN until the first finite value)."""
    ema = BiasCorrectedEMA(beta)
    out = []
    for value in values:
        ema.update(value)
        out.append(math.nan if ema.value is None else ema.value)
    return out
