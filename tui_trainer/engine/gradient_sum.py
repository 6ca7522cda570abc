"""Several processes: the window's gradients summed over the ranks, once, after the window.

``gradient_sum(model, ranks)`` (at set-up) puts rank 0's weights on every rank and returns the
``SummedGradients`` the step calls; None for one process. Why not DDP: its all-reduce runs inside
the window's last backward, so an out-of-memory on one rank there leaves the others waiting in a
collective no agreement can reach (oom.py). Here every backward is local, the ranks agree (step.py)
and then sum. No Textual import, ever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tui_trainer.engine.distributed import Ranks

if TYPE_CHECKING:
    import torch


class SummedGradients:
    """The gradient all-reduce as a *sum* (the losses are already weighted by the global window's
    tokens), once per window, *after* the window: every micro-step's backward stays local, the ranks
    agree that none ran out of memory (step.py), and only then ``sum_()`` adds every rank's
    accumulated gradient. An out-of-memory can therefore never strike one rank inside a collective
    the others wait in. (No DDP: its all-reduce runs inside the last backward, where that can happen.)

    The gradients go in buckets of about ``BUCKET_BYTES`` (DDP's default size), each flattened and
    all-reduced asynchronously, so that several are in flight at once; the summed buckets become the
    gradients (views of them: no copy back). On the way it measures the squared norm of this rank's
    own accumulated gradient (before the sum, for the noise scale) and counts the all-reduces
    (benchmarks/scaling.py). A *round* is one ``sum_``: each bucket all-reduced once; every window
    has exactly one (``most_rounds_in_a_window``)."""

    BUCKET_BYTES = 25 * 2**20

    def __init__(self, params, group=None) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.group = group  # the training group (its --dist-timeout)
        self.local_sq_norm: torch.Tensor | None = None  # this window's, summed over the buckets
        self.allreduces = 0  # every bucket's all-reduce so far
        self.buckets = 0  # the most buckets seen in one round
        self.bucket_bytes: list[int] = []  # the last round's buckets, in bytes each
        self._bucket_counts: dict[int, int] = {}  # this window's all-reduces per bucket index
        self._most_rounds = 0  # in any earlier window

    def start_window(self) -> None:
        self._most_rounds = self.most_rounds_in_a_window
        self._bucket_counts = {}
        self.local_sq_norm = None

    @property
    def most_rounds_in_a_window(self) -> int:
        """The most gradient sums any window took so far (1 when all is well)."""
        return max(self._most_rounds, max(self._bucket_counts.values(), default=0))

    def sum_(self) -> None:
        """Every rank's accumulated gradient, summed, into ``param.grad`` on every rank (a rank whose
        share of a short window was empty adds zeros). A collective: every rank calls it, once a window."""
        import torch
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        for p in self.params:
            if p.grad is None:  # (an empty share: no backward ran on this rank)
                p.grad = torch.zeros_like(p)
        pending, sq_norm = [], None
        for index, bucket in enumerate(_buckets(self.params, self.BUCKET_BYTES)):
            flat = _flatten_dense_tensors([p.grad for p in bucket])
            sq = flat.float().square().sum()
            sq_norm = sq if sq_norm is None else sq_norm + sq
            pending.append((bucket, flat, dist.all_reduce(flat, group=self.group, async_op=True)))
            self.allreduces += 1
            self._bucket_counts[index] = self._bucket_counts.get(index, 0) + 1
        self.local_sq_norm = sq_norm
        self.buckets = max(self.buckets, len(pending))
        self.bucket_bytes = [flat.numel() * flat.element_size() for _, flat, _ in pending]
        for bucket, flat, work in pending:
            work.wait()
            for p, summed in zip(bucket, _unflatten_dense_tensors(flat, [p.grad for p in bucket])):
                p.grad = summed  # (a view of the summed bucket; the local gradient is freed)


def _buckets(params: list, bucket_bytes: int) -> list[list]:
    """``params`` in order, cut into runs of one dtype and device of about ``bucket_bytes`` each."""
    buckets: list[list] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        if not buckets or size + nbytes > bucket_bytes or (buckets[-1][0].dtype, buckets[-1][0].device) != (
                p.dtype, p.device):
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return buckets


def gradient_sum(model: torch.nn.Module, ranks: Ranks) -> SummedGradients | None:
    """Several processes: rank 0's weights on every rank (as DDP's constructor does), and the
    window's gradient sum; None for one process."""
    if not ranks.distributed:
        return None
    for tensor in [*model.parameters(), *model.buffers()]:
        ranks.broadcast_(tensor.data)
    return SummedGradients(model.parameters(), ranks.group)
