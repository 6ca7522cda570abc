"""Learning-rate schedule as a pure function of tokens seen.

Scheduling by tokens (not optimizer steps) means a change of accumulation steps mid-run
does not stretch or squeeze the schedule: the same token gets the same learning rate.
"""

from __future__ import annotations

import math


def lr_at(tokens_seen: int, peak_lr: float, min_lr: float, warmup_tokens: int, total_tokens: int) -> float:
    """Linear warm-up to ``peak_lr`` over ``warmup_tokens``, then cosine decay to ``min_lr`` at
    ``total_tokens``; flat at ``min_lr`` after that."""
    if warmup_tokens > 0 and tokens_seen < warmup_tokens:
        return peak_lr * (tokens_seen + 1) / (warmup_tokens + 1)
    if tokens_seen >= total_tokens:
        return min_lr
    progress = (tokens_seen - warmup_tokens) / max(1, total_tokens - warmup_tokens)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak_lr - min_lr)
