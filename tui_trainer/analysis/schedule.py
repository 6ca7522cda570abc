"""Learning-rate schedule as a pure function of tokens seen.

Scheduling by tokens (not optimizer steps) means a change of accumulation steps mid-run
does not stretch or squeeze the schedule: the same token gets the same learning rate.
"""

from __future__ import annotations

import math


def lr_at(tokens_seen: int, peak_lr: float, min_lr: float, warmup_tokens: int, total_tokens: int,
          anchor: tuple[int, float] | None = None, hold: float = 0.0) -> float:
    """Linear warm-up to ``peak_lr`` over ``warmup_tokens``, then cosine decay to ``min_lr`` at
    ``total_tokens``; flat at ``min_lr`` after that.

    ``hold`` (0 <= hold < 1): the fraction of the run after the warm-up that the rate holds its peak
    before the cosine begins (constant-then-decay, as fine-tuning wants); 0 = the cosine starts as
    the warm-up ends.

    ``anchor`` = (tokens, lr): from that point on the cosine runs from ``lr`` there to ``min_lr`` at
    ``total_tokens`` instead (a resume that moved the end: the rate goes on from where it was, or
    restarts at the peak, rather than jumping to where the new end's curve would have put it); an
    anchor inside the hold holds its rate until the decay begins."""
    if tokens_seen >= total_tokens:
        return min_lr
    start, start_lr = warmup_tokens, peak_lr
    if anchor is not None and anchor[0] <= tokens_seen:
        start, start_lr = anchor  # (past the warm-up it was set after, whatever the new plan's warm-up)
    elif warmup_tokens > 0 and tokens_seen < warmup_tokens:
        return peak_lr * (tokens_seen + 1) / (warmup_tokens + 1)
    if hold > 0.0:
        start = max(start, warmup_tokens + int(hold * (total_tokens - warmup_tokens)))
        if tokens_seen < start:
            return start_lr
    progress = (tokens_seen - start) / max(1, total_tokens - start)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (start_lr - min_lr)
