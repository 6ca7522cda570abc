"""How one window of micro-batches becomes one optimizer step's gradient.

Each micro-batch's summed token loss is divided by the number of tokens in the *whole
window*, so after the last backward the accumulated gradient is exactly the gradient of
the mean loss over every token of the step, whether the window is full, holds fewer
micro-batches (end of epoch), or ends with a short micro-batch. A fixed ``1/accum``
would over-weight the short micro-batches of a remainder window.

``GradientIncrements`` (optional) measures each micro-batch's own gradient on the way, for the
gradient-noise-scale estimate (noise_scale.py); it reads the gradients, never changes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from tui_trainer.data.dataset import MicroBatch, Window, WindowDataset


class WindowAborted(Exception):
    """Raised by ``accumulate_window`` when ``between_micro_steps`` asks to stop mid-window."""


class GradientIncrements:
    """The squared norm of what each micro-step's backward added to ``param.grad``.

    Cost: one extra copy of the gradients (``_previous``, kept between windows) and, per
    micro-step, a subtract, a norm and a copy on the device (the first skips the subtract, the
    last the copy). The squared norms stay device tensors, so no host sync happens here: the
    step reads them with its one ``.tolist()``.
    """

    def __init__(self, params) -> None:
        self.params = [p for p in params if p.requires_grad]
        self._previous: list[torch.Tensor] | None = None
        self.sq_norms: list[torch.Tensor] = []  # this window's, one per micro-step so far

    def start_window(self) -> None:
        self.sq_norms = []

    def after_backward(self, first: bool, last: bool) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if first:
            increment = grads  # the gradient was empty before the window's first backward
        else:
            # previous - now = minus this micro-step's increment (its norm is the same)
            torch._foreach_sub_(self._previous, grads)
            increment = self._previous
        self.sq_norms.append(torch.stack(torch._foreach_norm(increment)).square().sum())
        if last:
            return
        if self._previous is None or len(self._previous) != len(grads):
            self._previous = [g.clone() for g in grads]
        else:
            torch._foreach_copy_(self._previous, grads)


def accumulate_window(
    model: torch.nn.Module,
    dataset: WindowDataset,
    indices: torch.Tensor,
    micro_batches: Window | Sequence[MicroBatch],
    *,
    total_tokens: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    between_micro_steps: Callable[[int], bool] | None = None,
    increments: GradientIncrements | None = None,
    loss_scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Forward/backward every micro-batch of a window into ``param.grad``.

    Returns the window's summed token loss as a device tensor (no host sync here) and
    ``total_tokens``. ``between_micro_steps(i)`` is called after micro-step ``i`` (0-based);
    returning False aborts the window with ``WindowAborted``. ``increments``, if given, records
    each micro-step's gradient norm (``increments.sq_norms``).

    Several processes (distributed.py): ``micro_batches`` are this rank's share of the window,
    ``total_tokens`` the *global* window's tokens (every rank divides by it, so the sum over ranks,
    taken after the window by gradient_sum.py, is one big batch's gradient). Every backward here is
    local: no collective runs inside a window.

    fp16 (loss_scaling.py): ``loss_scale`` multiplies each micro-batch's share before its backward,
    so ``param.grad`` holds scale x the window's gradient until the step unscales it, once.
    """
    micro_batches = list(micro_batches)
    if total_tokens is None:
        total_tokens = (micro_batches[-1][1] - micro_batches[0][0]) * dataset.block_size
    loss_total = torch.zeros((), device=dataset.device, dtype=torch.float32)
    if increments is not None:
        increments.start_window()
        if len(micro_batches) < 2:
            increments = None  # one micro-batch: no second batch size, nothing to measure
    for i, (start, stop) in enumerate(micro_batches):
        last = i + 1 == len(micro_batches)
        loss_sum = _forward(model, dataset, indices[start:stop], autocast_dtype)
        # This micro-batch's share of the window's mean loss: sum / all tokens of the window.
        share = loss_sum / total_tokens
        (loss_scale(share) if loss_scale is not None else share).backward()
        if increments is not None:
            increments.after_backward(first=i == 0, last=last)
        loss_total += loss_sum.detach().float()
        if between_micro_steps is not None and not between_micro_steps(i):
            raise WindowAborted
    return loss_total, total_tokens


def _forward(model: torch.nn.Module, dataset: WindowDataset, batch: torch.Tensor,
             autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """The summed token loss of one micro-batch (the autocast precision, if any)."""
    inputs, targets = dataset.batch(batch)
    with (torch.autocast(batch.device.type, dtype=autocast_dtype) if autocast_dtype is not None
          else contextlib.nullcontext()):
        return model(inputs, targets)  # a compiled model compiles this call
