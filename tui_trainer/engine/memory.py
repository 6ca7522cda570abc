"""Will one micro-batch fit? A lower-bound estimate of training memory, checked before a run starts.

The estimate is deliberately a floor (the measured peak on CPU is 1.2-3.2x it: benchmarks/memory.py
prints the ratio), so refusing when even the floor exceeds the free memory never refuses a run that
would have fit; it turns an OOM kill minutes in (exit 137, nothing saved) into one line that names
the fix.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import torch

from tui_trainer.config import ModelConfig, RunConfig
from tui_trainer.errors import UserError

BYTES_PER_FLOAT = 4  # the model, its state and (without autocast) its activations are float32
BF16_BYTES = 2  # activations under bf16 autocast (CUDA): counted at 2 bytes so the floor stays a floor


def parameter_count(m: ModelConfig) -> int:
    """Parameters of the GPT in model.py: per block 12 d^2 + 13 d (qkv, proj, MLP, two LayerNorms),
    the token (tied with the head) and position embeddings, the final LayerNorm."""
    d = m.n_embd
    return m.n_layer * (12 * d * d + 13 * d) + (m.vocab_size + m.block_size) * d + 2 * d


def activation_estimate_bytes(n_layer: int, n_embd: int, vocab: int, tokens: int,
                              bytes_per_float: int = BYTES_PER_FLOAT) -> int:
    """Back of the envelope: per token and layer, the block keeps ~17 d floats for backward
    (LN inputs and outputs 4d, q/k/v 3d, attention output 2d, MLP hidden before and after
    GELU 8d); then the final LN (2d) and the log-probabilities (vocab)."""
    per_token = n_layer * 17 * n_embd + 2 * n_embd + vocab
    return tokens * per_token * bytes_per_float


def attention_matrix_bytes(m: ModelConfig, micro_batch: int, device_type: str,
                           bytes_per_float: int = BYTES_PER_FLOAT) -> int:
    """Attention with dropout off the GPU takes the math path, which keeps the (T x T) scores, the
    softmax and the dropout mask of every head for backward (measured: 3 x B x H x T^2 floats per
    layer on CPU); the flash kernels used otherwise keep none of them."""
    if m.dropout == 0 or device_type == "cuda":
        return 0
    return m.n_layer * 3 * micro_batch * m.n_head * m.block_size ** 2 * bytes_per_float


def saved_for_backward_bytes(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one forward pass, weights left
    out: what the estimates above are checked against (tests, benchmarks/memory.py)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(inputs, targets)
    return sum(nbytes for (ptr, _), nbytes in seen.items() if ptr not in params)


def training_bytes_floor(cfg: RunConfig, device_type: str, train_windows: int | None = None,
                         autocast_bf16: bool = False) -> int:
    """Weights, gradients, AdamW's two moments (and the noise scale's copy of the gradients), and the activations of the largest micro-batch
    (never more sequences than the training split holds: ``train_windows``)."""
    m = cfg.model
    micro_batch = min(cfg.train.micro_batch, train_windows) if train_windows else cfg.train.micro_batch
    width = BF16_BYTES if autocast_bf16 else BYTES_PER_FLOAT
    # the noise-scale estimate keeps one more copy of the gradients (accumulation.GradientIncrements)
    copies = 5 if cfg.train.noise_scale and cfg.train.accum > 1 else 4
    state = copies * parameter_count(m) * BYTES_PER_FLOAT
    activations = activation_estimate_bytes(m.n_layer, m.n_embd, m.vocab_size, micro_batch * m.block_size, width)
    return state + activations + attention_matrix_bytes(m, micro_batch, device_type, width)


# (limit, usage, stat, the stat's reclaimable page cache) of this process's memory cgroup: v2, then
# v1. A container's limit is lower than what the host's /proc/meminfo (psutil) reports, and going
# past it is an OOM kill all the same. Usage counts the page cache; its inactive part is given back
# on demand, so it is room (the "working set" docker and the kubelet report).
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
                 "inactive_file"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                 "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"))


def _stat_value(stat_file: str, key: str) -> int:
    try:
        for line in Path(stat_file).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_room(files=CGROUP_FILES) -> int | None:
    """Bytes left under this process's cgroup memory limit, or None when there is no limit."""
    for limit_file, usage_file, stat_file, reclaimable in files:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2 ** 60:  # "max" or a huge number: no limit
            working_set = max(0, usage - _stat_value(stat_file, reclaimable))
            return max(0, int(limit) - working_set)
        return None
    return None


def free_bytes(device: torch.device) -> int | None:
    """Memory a run may still take: free device memory on CUDA, else available RAM plus free swap
    (within the cgroup's limit, in a container)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type in ("cpu", "mps"):
        free = psutil.virtual_memory().available + psutil.swap_memory().free
        room = cgroup_room()
        return free if room is None else min(free, room)
    return None


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GiB"


def check_fits(cfg: RunConfig, device: torch.device, train_windows: int | None = None,
               autocast_bf16: bool = False) -> None:
    """UserError when even the floor of the run's memory exceeds what is free."""
    need, free = training_bytes_floor(cfg, device.type, train_windows, autocast_bf16), free_bytes(device)
    if free is None or need <= free:
        return
    m, t = cfg.model, cfg.train
    # the noise-scale estimate keeps one more copy of the gradients (accumulation.GradientIncrements)
    copies = 5 if cfg.train.noise_scale and cfg.train.accum > 1 else 4
    state = copies * parameter_count(m) * BYTES_PER_FLOAT
    if state > free:
        raise UserError(
            f"this model ({parameter_count(m):,} parameters) needs at least {_gib(state)} for its weights, "
            f"gradients and AdamW state, more than the {_gib(free)} free on {device.type}",
            "use a smaller model (--n-layer, --n-embd)",
        )
    raise UserError(
        f"a micro-batch of {t.micro_batch} x {m.block_size} tokens on this model needs at least {_gib(need)}, "
        f"more than the {_gib(free)} free on {device.type}",
        "lower --micro-batch and raise --accum by the same factor (same effective batch), or lower --block-size",
    )
