"""How one window of micro-batches becomes one optimizer step's gradient.

Each micro-batch's summed token loss is divided by the number of tokens in the *whole
window*, so after the last backward the accumulated gradient is exactly the gradient of
the mean loss over every token of the step, whether the window is full, holds fewer
micro-batches (end of epoch), or ends with a short micro-batch. A fixed ``1/accum``
would over-weight the short micro-batches of a remainder window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from .data import WindowDataset


class WindowAborted(Exception):
    """Raised by ``accumulate_window`` when ``between_micro_steps`` asks to stop mid-window."""


def window_tokens(micro_ranges: Sequence[tuple[int, int]], block_size: int) -> int:
    return (micro_ranges[-1][1] - micro_ranges[0][0]) * block_size


def accumulate_window(
    model: torch.nn.Module,
    dataset: WindowDataset,
    indices: torch.Tensor,
    micro_ranges: Sequence[tuple[int, int]],
    autocast_dtype: torch.dtype | None = None,
    between_micro_steps: Callable[[int], bool] | None = None,
) -> tuple[torch.Tensor, int]:
    """Forward/backward every micro-batch of a window into ``param.grad``.

    Returns the window's summed token loss as a device tensor (no host sync here) and
    its token count. ``between_micro_steps(i)`` is called after micro-step ``i`` (0-based);
    returning False aborts the window with ``WindowAborted``.
    """
    total_tokens = window_tokens(micro_ranges, dataset.block_size)
    loss_total = torch.zeros((), device=indices.device, dtype=torch.float32)
    for i, (start, stop) in enumerate(micro_ranges):
        inputs, targets = dataset.batch(indices[start:stop])
        with (torch.autocast(indices.device.type, dtype=autocast_dtype) if autocast_dtype is not None
              else contextlib.nullcontext()):
            loss_sum = model(inputs, targets)  # a compiled model compiles this call
        # This micro-batch's share of the window's mean loss: sum / all tokens of the window.
        (loss_sum / total_tokens).backward()
        loss_total += loss_sum.detach().float()
        if between_micro_steps is not None and not between_micro_steps(i):
            raise WindowAborted
    return loss_total, total_tokens
