"""Learning-rate schedule as a pure function of tokens seen.

Scheduling by tokens (not optimizer steps) means a change of accumulation steps mid-run
does not stretch or squeeze the schedule: the same token gets the same learning rate.
"""

from __future__ import annotations

import math


def lr_at(tokens_seen: int, peak_lr: float, min_lr: float, warmup_tokens: int, total_tokens: int,
          anchor: tuple[int, float] | None = None) -> float:
    """Linear warm-up to ``peak_lr`` over ``warmup_tokens``, then cosine decay to ``min_lr`` at
    ``total_tokens``; flat at ``min_lr`` after that.

    ``anchor`` = (tokens, lr): from that point on the cosine runs from ``lr`` there to ``min_lr`` at
    ``total_tokens`` instead (a resume that moved the end: the rate goes on from where it was, or
    restarts at the peak, rather than jumping to where the new end's curve would have put it)."""
    if tokens_seen >= total_tokens:
        return min_lr
    start, start_lr = warmup_tokens, peak_lr
    if anchor is not None and anchor[0] <= tokens_seen:
        start, start_lr = anchor  # (past the warm-up it was set after, whatever the new plan's warm-up)
    elif warmup_tokens > 0 and tokens_seen < warmup_tokens:
        return peak_lr * (tokens_seen + 1) / (warmup_tokens + 1)
    progress = (tokens_seen - start) / max(1, total_tokens - start)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (start_lr - min_lr)
