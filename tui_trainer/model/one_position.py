"""Generation's step for one new position of one sequence on the CPU: every token after the prefill.

Such a step is one row through every weight matrix — matrix-vector products, two flops per weight
read, so they run at the speed the weights reach the core — and about twenty small ops a layer on
vectors of 256-1,024 numbers, each costing more in dispatch than in arithmetic. Measured on this
project's test machine (AMD EPYC, AVX-512, 2 cores; benchmarks/README.md, section 8, row 8e):

- PyTorch's CPU build sends a one-row product to MKL (``addmm``/``addmv``), which read the seed
  model's weights at 8-19 GB/s; the OpenBLAS that numpy's wheels bundle reads the same arrays at
  28-40 GB/s. So the products here are ``np.dot`` on numpy views of the parameters (no copy; an
  in-place update of the weights is seen).
- The small ops run with cold caches, since every product streams its matrix through them: on
  their own the seed's 6 layers of small ops took 0.36 ms, between the products 0.9. So there
  are few of them: each product writes into an array made once per cache, of which a torch view
  was made once too (the next layer norm, attention or GELU reads it with no new tensor), the
  bias and the residual are added in place, and the new key and value go into the cache with one
  numpy assignment. Per layer, six torch calls remain: two layer norms, the attention and its two
  views of the cache, and the GELU.

The arithmetic is the modules' own, in their order (``proj(y) + x`` is ``W y``, then ``+ b``,
then ``+ x``); the products sum in OpenBLAS's order rather than MKL's, so the logits differ from
the training forward's in the last bits (~1e-7; the cache-vs-recompute test holds them to 1e-5).

Threads: OpenBLAS has a pool of its own, apart from torch's OpenMP one, and the two must not both
be busy: with torch at 2 threads and OpenBLAS at 2 on 2 cores, a 12-layer, 768-wide model's step
took 202 ms instead of 12-22 (torch's idle threads spin while OpenBLAS's wait for the cores). So
torch runs this step at one thread, restored after it (none of its ops here is big enough to share
out), and numpy's BLAS gets, by ``blas_threads`` (set through threadpoolctl when it changes), torch's
thread count for a model larger than the CPU's last-level cache, whose products read from memory
twice as fast on two cores (that model: 12 ms against 22); one thread for a model that fits, whose
products read from the cache, where a second thread costs more in handing over than it gains (the
seed model at 2 torch threads: 1.80x and 2.02x its floor with one BLAS thread, 1.96x and 2.37x
with two). A rule by shape and machine, not a timing: the same model gets the same threads.

Only what numpy can take exactly gets this step (``OnePositionStep.of`` answers None otherwise):
float32 parameters on the CPU in row-major order (every model as it trains and loads), one
sequence; and a call only with autograd and CPU autocast off (a numpy product is invisible to
the one and would not follow the other; ``takes``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

if TYPE_CHECKING:  # gpt.py imports kv_cache.py, which imports this module
    from tui_trainer.model.gpt import GPT, Block


CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")  # Linux: index0..N, each with level and size
_SIZE = re.compile(r"(\d{1,9})([KMG]?)")


def cache_size_bytes(text: str) -> int:
    """sysfs's size of a cache ("32768K", "1M") in bytes; 0 for anything else."""
    found = _SIZE.fullmatch(text.strip())
    if not found:
        return 0
    return int(found.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[found.group(2)]


@functools.cache
def last_level_cache_bytes(caches: Path = CPU_CACHES) -> int:
    """The size of the CPU's highest-level cache, or 0 where the system doesn't say (not Linux)."""
    best = (0, 0)  # (level, bytes)
    for index in caches.glob("index*"):
        try:
            level = int((index / "level").read_text()[:8])
            size = cache_size_bytes((index / "size").read_text()[:32])
        except (OSError, ValueError):
            continue
        best = max(best, (level, size))
    return best[1]


def blas_threads(weight_bytes: int, torch_threads: int, cache_bytes: int) -> int:
    """numpy BLAS's threads for products over ``weight_bytes`` of weights (the module doc): one
    where they fit in a known last-level cache of ``cache_bytes``, else torch's count."""
    return 1 if 0 < weight_bytes <= cache_bytes else torch_threads


_blas_threads: int | None = None  # the thread count this module last gave numpy's BLAS


def _share_threads(threads: int) -> None:
    """numpy's BLAS at ``threads``, set only when it changes (a call costs ~1 ms)."""
    global _blas_threads
    if threads != _blas_threads:
        threadpool_limits(limits=threads, user_api="blas")  # kept, not undone: this process's setting
        _blas_threads = threads


@contextmanager
def torch_at_one_thread() -> Iterator[None]:
    """torch's thread count at 1 inside, restored after (a pair of calls costs ~0.2 us). Also for the
    sampler's ops between two steps: at GPT-2's 50,257 logits they go parallel, and torch's idle
    threads would then spin through the next step's products (a 6 x 768 model with that vocabulary,
    2 threads, temperature 0.8: 13.8 ms a token with the choice at one thread, 21.2 without)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        yield
    finally:
        torch.set_num_threads(threads)


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def _array(tensor: torch.Tensor) -> np.ndarray | None:
    """A numpy view of a parameter (or buffer), or None where numpy can't take it as it is."""
    if tensor.device.type != "cpu" or tensor.dtype != torch.float32 or not tensor.is_contiguous():
        return None
    return tensor.detach().numpy()


def _output(size: int) -> tuple[np.ndarray, torch.Tensor]:
    """An array a product writes into, and the (1, size) torch view the next op reads."""
    array = np.empty(size, dtype=np.float32)
    return array, torch.from_numpy(array).view(1, size)


class _Layer:
    """One block's weights (numpy views), its outputs (arrays and their torch views, made once), and
    its slice of the cache."""

    __slots__ = ("ln_1_weight", "ln_1_bias", "ln_2_weight", "ln_2_bias", "eps", "approximate",
                 "qkv_weight", "qkv_bias", "proj_weight", "proj_bias", "fc_weight", "fc_bias",
                 "mlp_weight", "mlp_bias", "qkv", "kv_in", "kv", "q", "keys", "values",
                 "attn_out", "attn_out_t", "fc_out", "fc_out_t", "mlp_out", "mlp_out_t")

    def __init__(self, block: Block, arrays: list[np.ndarray], buffer: torch.Tensor, heads: int) -> None:
        channels = block.ln_1.weight.shape[0]
        head_dim = channels // heads
        self.ln_1_weight, self.ln_1_bias = block.ln_1.weight, block.ln_1.bias
        self.ln_2_weight, self.ln_2_bias = block.ln_2.weight, block.ln_2.bias
        self.eps, self.approximate = block.ln_1.eps, block.mlp.approximate
        (self.qkv_weight, self.qkv_bias, self.proj_weight, self.proj_bias,
         self.fc_weight, self.fc_bias, self.mlp_weight, self.mlp_bias) = arrays
        self.qkv, qkv = _output(3 * channels)
        heads_view = self.qkv.reshape(3, heads, head_dim)  # a view: q, k, v by head
        self.kv_in = heads_view[1:]  # (2, H, D): this position's key and value
        self.kv = buffer.numpy()[:, 0]  # (2, H, context, D): the cache, keys then values
        self.q = qkv.view(3, 1, heads, 1, head_dim)[0]  # (1, H, 1, D)
        self.keys, self.values = buffer[0], buffer[1]  # (1, H, context, D) each
        self.attn_out, self.attn_out_t = _output(channels)
        self.fc_out, self.fc_out_t = _output(4 * channels)
        self.mlp_out, self.mlp_out_t = _output(channels)


class OnePositionStep:
    """The cached step for one token of one sequence (see the module doc), over a cache's buffers.
    Not re-entrant: its outputs live in arrays of its own, reused by every call."""

    def __init__(self, model: GPT, arrays: list[np.ndarray], buffers: list[torch.Tensor]) -> None:
        cfg = model.cfg
        self.tokens, self.positions, self.head_weight = arrays[:3]
        per_layer = iter(arrays[3:])
        self.layers = [_Layer(block, [next(per_layer) for _ in range(8)], buffer, cfg.n_head)
                       for block, buffer in zip(model.blocks, buffers)]
        self.ln_f = model.ln_f
        self.norm_shape = (cfg.n_embd,)
        self.embedded, self.embedded_t = _output(cfg.n_embd)
        # the weight matrices and biases, for benchmarks/sampling.py's split of a token's time
        self.matrices = [(arrays[2], None)] + [(a, b) for a, b in zip(arrays[3::2], arrays[4::2])]
        self.weight_bytes = sum(weight.nbytes for weight, _ in self.matrices)  # what a token reads

    @classmethod
    def of(cls, model: GPT, buffers: list[torch.Tensor]) -> OnePositionStep | None:
        """The step for ``model`` over one sequence's cache ``buffers`` (batch 1), or None where
        numpy can't take its tensors (see the module doc)."""
        if buffers and (buffers[0].shape[1] != 1 or _array(buffers[0]) is None):
            return None
        tensors = [model.token_embedding.weight, model.position_embedding.weight, model.lm_head.weight]
        for block in model.blocks:
            for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):
                if linear.bias is None:
                    return None
                tensors += [linear.weight, linear.bias]
        arrays = [_array(tensor) for tensor in tensors]
        if any(array is None for array in arrays):
            return None
        return cls(model, arrays, buffers)

    @staticmethod
    def takes(idx: torch.Tensor) -> bool:
        """Whether a call with these token ids (1, 1) may run here: integer ids, and autograd and
        CPU autocast off (see the module doc); else the general step runs."""
        return idx.dtype == torch.long and not torch.is_grad_enabled() and not _autocast_on_cpu()

    def __call__(self, token_id: int, position: int) -> torch.Tensor:
        """The next-token logits (1, vocab), a fresh tensor, after ``token_id`` at ``position``,
        whose key and value go into the cache; positions before it must be there already."""
        if not 0 <= token_id < len(self.tokens):  # (numpy would take -1 as the last row)
            raise IndexError(f"token id {token_id} is outside the vocabulary of {len(self.tokens)}")
        _share_threads(blas_threads(self.weight_bytes, torch.get_num_threads(), last_level_cache_bytes()))
        # torch's pool idle, not spinning, under numpy's (the module doc); a diverged model's inf and
        # NaN stay quiet, as in torch (the sampler reports them in one line), not numpy's RuntimeWarning
        with torch_at_one_thread(), np.errstate(all="ignore"):
            return self._step(token_id, position)

    def _step(self, token_id: int, position: int) -> torch.Tensor:
        end = position + 1
        norm_shape = self.norm_shape
        x = np.add(self.tokens[token_id], self.positions[position], out=self.embedded)
        x_t = self.embedded_t
        for layer in self.layers:
            h = F.layer_norm(x_t, norm_shape, layer.ln_1_weight, layer.ln_1_bias, layer.eps)
            qkv = np.dot(layer.qkv_weight, h.numpy()[0], out=layer.qkv)
            np.add(qkv, layer.qkv_bias, out=qkv)
            layer.kv[:, :, position] = layer.kv_in
            y = F.scaled_dot_product_attention(layer.q, layer.keys[:, :, :end], layer.values[:, :, :end])
            out = np.dot(layer.proj_weight, y.numpy().reshape(-1), out=layer.attn_out)  # x + proj(y)
            np.add(out, layer.proj_bias, out=out)
            x = np.add(out, x, out=out)
            h = F.layer_norm(layer.attn_out_t, norm_shape, layer.ln_2_weight, layer.ln_2_bias, layer.eps)
            fc = np.dot(layer.fc_weight, h.numpy()[0], out=layer.fc_out)
            np.add(fc, layer.fc_bias, out=fc)
            g = F.gelu(layer.fc_out_t, approximate=layer.approximate)
            out = np.dot(layer.mlp_weight, g.numpy()[0], out=layer.mlp_out)  # x + mlp(x)
            np.add(out, layer.mlp_bias, out=out)
            x = np.add(out, x, out=out)
            x_t = layer.mlp_out_t
        ln_f = self.ln_f
        h = F.layer_norm(x_t, norm_shape, ln_f.weight, ln_f.bias, ln_f.eps)
        return torch.from_numpy(np.dot(self.head_weight, h.numpy()[0])).view(1, -1)
