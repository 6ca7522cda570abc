"""Several processes, one run: torch.distributed (a gradient sum of our own), launched by torchrun.

``Ranks.from_environment()`` reads what torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE); one process without torchrun is ``world_size == 1`` and every collective here
is a no-op, so the one-process loop is the plain loop it always was.

What the ranks share, and how:

- gradients: each rank accumulates its share of the window locally; once the ranks agreed that
  none ran out of memory (step.py, ``Ranks.agree``), ``SummedGradients.sum_`` all-reduces them
  once (gradient_sum.py), as a *sum*: every rank already divides its micro-batches' losses by the token count of the
  *global* window (accumulation.py), so the sum over ranks is one big batch's gradient. (Not DDP:
  its all-reduce inside the last backward is where an out-of-memory on one rank would leave the
  others waiting.) It also measures the rank's own accumulated gradient before the sum (for the
  gradient-noise-scale estimate) and counts the all-reduces (benchmarks/scaling.py).
- numbers every rank needs (the window's loss, validation sums): ``sum_`` of a small tensor.
- decisions (stop, pause, save, an accumulation change): taken on rank 0, ``agree``d once per step
  (and "did any rank run out of memory in this window", before the gradients' sum) over a gloo group on the CPU (the same group as the gradients on CPU; its own with NCCL).
- checkpoints: rank 0 writes; every rank's RNG state travels to it with ``gather``.

A collective that fails (a rank died: gloo sees the closed connection at once) or times out
(``--dist-timeout``: a rank that hangs) raises ``PeerLost``: one clear line, never a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tui_trainer.errors import PeerLost, UserError

if TYPE_CHECKING:  # (torch is imported where it is used: the CLI starts without it)
    import torch

    from tui_trainer.data.dataset import Window

DEFAULT_TIMEOUT_S = 600.0  # a collective waits this long for a rank before the run ends with an error
SETUP_TIMEOUT_S = 3600.0  # joining, and waiting while rank 0 prepares the data (a first BPE run learns it)


@dataclass(frozen=True)
class Placement:
    """Where this process sits among the run's processes (torchrun's environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def placement_from_environment(environ: dict[str, str] | None = None) -> Placement:
    """RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE as torchrun sets them; none of them = one process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return Placement()
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        raise UserError("RANK/WORLD_SIZE/LOCAL_RANK in the environment are not whole numbers",
                        "launch with torchrun (or unset them for one process)") from None
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise UserError(f"the environment says rank {rank} of {world} processes (local rank {local_rank} of "
                        f"{local_world}), which cannot be", "launch with torchrun (or unset them for one process)")
    return Placement(rank, world, local_rank, local_world)


def choose_backend(requested: str, device: torch.device) -> str:
    """``auto`` = nccl on CUDA, gloo on the CPU; nccl needs CUDA."""
    requested = (requested or "auto").strip().lower()
    if requested not in ("auto", "gloo", "nccl"):
        raise UserError(f"unknown --backend '{requested}'", "use --backend auto, gloo or nccl")
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise UserError("--backend nccl needs CUDA devices, and this run trains on the "
                        f"{device.type.upper()}", "use --backend gloo (or auto) on the CPU")
    return requested


def rank_device(device: torch.device, placement: Placement) -> torch.device:
    """One GPU per local rank; the CPU is shared."""
    import torch

    if device.type == "cuda" and placement.distributed:
        count = torch.cuda.device_count()
        if placement.local_world_size > count:  # (checked on every rank: rank 0 says it)
            raise UserError(f"{placement.local_world_size} processes on this machine, one GPU each, but it has "
                            f"{count} GPU{'s' if count != 1 else ''}", f"use --nproc-per-node {count} or fewer")
        return torch.device("cuda", placement.local_rank)
    return device


class Ranks:
    """The run's processes, as the loop talks to them. ``Ranks()`` is one process (no-ops)."""

    def __init__(self, placement: Placement | None = None, backend: str = "gloo",
                 device: torch.device | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        import torch

        self.placement = placement or Placement()
        self.backend = backend
        self.device = device or torch.device("cpu")
        self.timeout_s = timeout_s
        self._control_group = None  # gloo, for the CPU-side agreements: the set-up's, then the training's
        self.group = None  # the training collectives' (the gradients, the sums), with --dist-timeout
        self._setup_group = self._training_control_group = None  # (see start)
        self._started = False
        self.abandoned = False  # left without tearing the group down (see close)

    @property
    def rank(self) -> int:
        return self.placement.rank

    @property
    def world_size(self) -> int:
        return self.placement.world_size

    @property
    def is_main(self) -> bool:
        return self.placement.is_main

    @property
    def distributed(self) -> bool:
        return self.placement.distributed

    # -- the process group's life ---------------------------------------------------------------

    def start(self) -> None:
        """Join the others (torchrun's env:// rendezvous). No-op for one process.

        Two timeouts: joining and the set-up (rank 0 may tokenize a large corpus while the others
        wait) allow ``SETUP_TIMEOUT_S``; once ``set_up_done()``, the training collectives allow
        ``--dist-timeout`` (groups of their own: the gradients' on the backend, the agreements' on gloo).
        """
        if not self.distributed or self._started:
            return
        import torch
        import torch.distributed as dist

        stop_with_the_launcher()
        kwargs: dict[str, Any] = {}
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            kwargs["device_id"] = self.device
        setup, training = (datetime.timedelta(seconds=max(SETUP_TIMEOUT_S, self.timeout_s)),
                           datetime.timedelta(seconds=self.timeout_s))
        try:
            dist.init_process_group(self.backend, timeout=setup, **kwargs)
            gloo = self.backend == "gloo"
            self._setup_group = None if gloo else dist.new_group(backend="gloo", timeout=setup)
            self.group = dist.new_group(backend=self.backend, timeout=training)
            self._training_control_group = self.group if gloo else dist.new_group(backend="gloo", timeout=training)
        except Exception as exc:  # (DistNetworkError, RuntimeError, ValueError: a bad rendezvous)
            raise PeerLost(f"could not join the other processes: {_first_line(exc)}") from None
        self._control_group = self._setup_group
        self._started = True

    def set_up_done(self) -> None:
        """From now on a collective waits ``--dist-timeout`` at most."""
        if self._started:
            self._control_group = self._training_control_group

    def close(self, clean: bool = True) -> None:
        """Leave the group (the gradient sum's reference to it dropped first: session.py). ``clean``: every rank ended at the
        same point (an agreed end): a barrier first lets gloo's thread finish with the last
        collective (its clean-up needs the GIL, which tearing the group down holds), then the group
        goes. Not clean (a
        peer lost, an exception): the group is left as it is (``abandoned``) and the process should
        end with ``os._exit`` once its files are closed (faces.py), never waiting on a dead peer."""
        if not self._started:
            return
        self._started = False
        if not clean:
            self.abandoned = True
            return
        import torch.distributed as dist

        try:
            dist.barrier()
            dist.destroy_process_group()
        except Exception:  # a peer gone after all: nothing left to tidy
            self.abandoned = True
        # No reference to a group may outlive this: one freed while Python shuts down can abort.
        self.group = self._control_group = self._setup_group = self._training_control_group = None

    # -- collectives (each a no-op for one process) ---------------------------------------------

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce ``tensor`` in place (sum) on the training device; returns it."""
        if self._started:
            import torch.distributed as dist

            self._call(dist.all_reduce, tensor, group=self.group)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` into every rank's, in place (on the training device); returns it."""
        if self._started:
            import torch.distributed as dist

            self._call(dist.broadcast, tensor, src=0, group=self.group)
        return tensor

    def agree(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum of every rank's ``values`` (float64, on the CPU): rank 0 fills the
        slots it decides, the others leave them 0, so every rank reads rank 0's decision; a slot
        every rank fills (a stop) reads as "any rank"."""
        if not self._started:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        self._call(dist.all_reduce, tensor, group=self._control_group)
        return tensor.tolist()

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (a list by rank); None elsewhere."""
        if not self._started:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        self._call(dist.gather_object, obj, out, dst=0, group=self._control_group)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self._started:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        self._call(dist.broadcast_object_list, box, src=0, group=self._control_group)
        return box[0]

    def _call(self, collective, *args, **kwargs) -> None:
        try:
            collective(*args, **kwargs)
        except Exception as exc:  # gloo: "Connection closed by peer", a timeout; NCCL: DistBackendError
            raise PeerLost(f"rank {self.rank} lost the other processes ({_reason(exc)}): "
                           f"another process of the run died or stopped answering") from None


def rank_share(window: Window, rank: int, world_size: int) -> Window:
    """This rank's micro-batches of a global window: every ``world_size``-th, from the ``rank``-th,
    so that a short window at an epoch's end is spread as evenly as it can be (a share may be empty)."""
    from tui_trainer.data.dataset import Window

    return Window(window.micro_batches[rank::world_size])


def sum_over_ranks(ranks: Ranks, loss_total: torch.Tensor, window: Window, *, measure: bool,
                   local_sq_norm: torch.Tensor | None) -> tuple[torch.Tensor, list[int], list[torch.Tensor]]:
    """Several processes: the window's summed loss over every rank (one small all-reduce), and with
    ``measure`` (the noise scale) each rank's own accumulated gradient (``local_sq_norm``, None for
    a rank with an empty share) as a small batch of its share's size. Returns (loss, sizes, squared
    norms); the last two empty when not measured or fewer than two ranks held part of the window."""
    import torch

    world = ranks.world_size
    sq_norms = torch.zeros(world, device=loss_total.device)
    if measure and local_sq_norm is not None:
        sq_norms[ranks.rank] = local_sq_norm
    summed = ranks.sum_(torch.cat([loss_total.float().reshape(1), sq_norms]))
    sizes = [rank_share(window, r, world).examples for r in range(world)]
    parts = [(size, summed[1 + r]) for r, size in enumerate(sizes) if size]
    if not measure or len(parts) < 2:
        return summed[0], [], []  # one rank held the whole window: no second batch size
    return summed[0], [size for size, _ in parts], [sq for _, sq in parts]


def stop_with_the_launcher() -> None:
    """A rank started by torchrun asks Linux for a SIGTERM when torchrun dies (``kill -9`` of the
    launcher): it then stops cleanly like on any SIGTERM, instead of training on unowned, holding the
    run lock and the terminal. Elsewhere (not Linux, not torchrun) nothing happens."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


_COMMUNICATION_WORDS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe")


@contextlib.contextmanager
def peer_lost_in_the_gradient_sum(ranks: Ranks) -> Iterator[None]:
    """A failure of the gradients' all-reduce (it surfaces as a RuntimeError from the work's
    ``wait``) raised as a PeerLost; anything else (a bug stays a bug) as it was."""
    try:
        yield
    except RuntimeError as exc:
        lost = as_peer_lost(exc, ranks.rank) if ranks.distributed else None
        if lost is None:
            raise
        raise lost from None


def as_peer_lost(exc: BaseException, rank: int) -> PeerLost | None:
    """A failure of the gradients' all-reduce (a RuntimeError from the work's ``wait``), as a
    PeerLost; None for anything else (a bug stays a bug)."""
    import torch.distributed as dist

    text = str(exc).lower()
    if isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(w in text for w in _COMMUNICATION_WORDS)):
        return PeerLost(f"rank {rank} lost the other processes during the gradient all-reduce "
                        f"({_reason(exc)}): another process of the run died or stopped answering")
    return None


def _reason(exc: BaseException) -> str:
    """A collective's failure in a few words (gloo's own text carries source paths and a joke)."""
    text = str(exc).lower()
    for words, reason in (("connection closed", "connection closed by a peer"),
                          ("connection reset", "connection reset by a peer"), ("broken pipe", "broken pipe"),
                          ("timed out", "no answer within --dist-timeout"), ("timeout", "no answer within --dist-timeout")):
        if words in text:
            return reason
    line = re.sub(r"\[[^\]]*\]\s*", "", _first_line(exc))  # no "[/path/to/gloo/...:123]"
    return line if len(line) <= 120 else line[:120].rsplit(" ", 1)[0] + "…"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
