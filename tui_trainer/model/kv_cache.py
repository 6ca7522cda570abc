"""Generation's forward: the KV cache and the cached step that reads and extends it.

A cached token is one position's forward: ~25 matrix-vector products, which read every weight
once (the floor, benchmarks/sampling.py), and ~20 small ops a layer on vectors of 256-1,024
numbers, each of which costs more in dispatch (~1-3 us) than in arithmetic. So the step is
written for few ops rather than with the modules' calls (benchmarks/README.md, section 8):

- activations stay 2-D, (batch * time, channels), so every linear is one ``addmm``;
- the weights are read through views taken once per cache (``LayerWeights``): no ``aten::t``
  and no module attribute look-ups per token;
- each layer's keys and values share one buffer, (2, batch, heads, context, head_dim), so one
  copy writes both and attention reads them through views made once;
- a residual add is done in place on the linear's fresh output.

The arithmetic is the modules' own, op for op (``x + proj(y)`` and ``proj(y).add_(x)`` are the same
floating-point sum), so the logits are those of the step this replaced.

One token of one sequence on the CPU — every generated token after the prefill — takes a step of its
own, ``OnePositionStep`` (tui_trainer/model/one_position.py): its matrix-vector products through
numpy's BLAS, about twice MKL's speed at these shapes, and six torch calls a layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tui_trainer.model.one_position import OnePositionStep

if TYPE_CHECKING:  # gpt.py imports this module
    from tui_trainer.model.gpt import GPT, Block


@dataclass(frozen=True, slots=True)
class LayerWeights:
    """One block's tensors as the cached step reads them: the linears' weights transposed (views of
    the parameters, so in-place updates show; a parameter *replaced* needs a new cache)."""

    ln_1_weight: torch.Tensor
    ln_1_bias: torch.Tensor
    qkv_weight_t: torch.Tensor  # (C, 3C)
    qkv_bias: torch.Tensor
    attn_proj_weight_t: torch.Tensor  # (C, C)
    attn_proj_bias: torch.Tensor
    ln_2_weight: torch.Tensor
    ln_2_bias: torch.Tensor
    fc_weight_t: torch.Tensor  # (C, 4C)
    fc_bias: torch.Tensor
    mlp_proj_weight_t: torch.Tensor  # (4C, C)
    mlp_proj_bias: torch.Tensor
    eps: float  # the layer norms' (both are built alike)
    gelu_approximate: str  # F.gelu's `approximate`: "none" (exact) or "tanh"

    @classmethod
    def of(cls, block: Block) -> LayerWeights:
        attn, mlp = block.attn, block.mlp
        return cls(block.ln_1.weight, block.ln_1.bias, attn.qkv.weight.t(), attn.qkv.bias,
                   attn.proj.weight.t(), attn.proj.bias, block.ln_2.weight, block.ln_2.bias,
                   mlp.fc.weight.t(), mlp.fc.bias, mlp.proj.weight.t(), mlp.proj.bias,
                   block.ln_1.eps, mlp.approximate)


class KVCache:
    """Keys and values of every attention layer for one generation, preallocated to the context,
    and the weights the cached step reads (taken from ``model`` when the cache is made).

    ``length`` is how many positions (from 0) the buffers hold. The model has learned absolute
    positions, so a full cache cannot drop its oldest token and go on: the caller starts a new
    cache over a shorter window instead (tui_trainer/model/sampling.py slides by re-prefilling)."""

    def __init__(self, model: GPT, batch: int) -> None:
        cfg = model.cfg
        weight = model.token_embedding.weight
        shape = (2, batch, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        # Per layer: [0] keys, [1] values, each (batch, heads, context, head_dim).
        self.buffers = [torch.zeros(shape, device=weight.device, dtype=weight.dtype) for _ in range(cfg.n_layer)]
        self.keys = [buffer[0] for buffer in self.buffers]
        self.values = [buffer[1] for buffer in self.buffers]
        self.layers = [LayerWeights.of(block) for block in model.blocks]
        # one token at a time for one sequence on the CPU; None where it can't be taken (its doc)
        self.one_position = OnePositionStep.of(model, self.buffers)
        self.capacity = cfg.block_size
        self.length = 0


def cached_forward(model: GPT, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Token ids (B, T) that follow the ``cache.length`` positions the cache holds → the
    next-token logits (B, vocab) after the last of them. Appends the ids to the cache."""
    batch, time = idx.shape
    start = cache.length
    end = start + time
    if end > cache.capacity:
        raise ValueError(f"{start} cached + {time} new positions exceed the context of {cache.capacity}")
    if time == 1 and cache.one_position is not None and cache.one_position.takes(idx):
        logits = cache.one_position(int(idx), start)
        cache.length = end
        return logits
    cfg = model.cfg
    channels, heads = cfg.n_embd, cfg.n_head
    head_dim = channels // heads
    norm_shape = (channels,)
    # A slice of the position table is the lookup of positions start..end-1, without building an
    # index tensor for every token.
    x = (model.token_embedding(idx) + model.position_embedding.weight[start:end]).view(batch * time, channels)
    mask = None
    if time > 1 and start > 0:
        # SDPA's is_causal aligns the mask top-left, which is wrong when queries start at
        # `start`: query i (absolute start + i) may see keys 0..start + i.
        mask = torch.ones(time, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
    for w, buffer, keys, values in zip(cache.layers, cache.buffers, cache.keys, cache.values):
        h = F.layer_norm(x, norm_shape, w.ln_1_weight, w.ln_1_bias, w.eps)
        qkv = torch.addmm(w.qkv_bias, h, w.qkv_weight_t).view(batch, time, 3, heads, head_dim)
        # keys and values, (B, T, 2, H, D) -> (2, B, H, T, D), into the buffer at start..end-1: one copy
        buffer.narrow(3, start, time).copy_(qkv.narrow(2, 1, 2).permute(2, 0, 3, 1, 4))
        q = qkv.select(2, 0).transpose(1, 2)  # (B, H, T, D)
        keys_so_far, values_so_far = keys.narrow(2, 0, end), values.narrow(2, 0, end)
        if time == 1:  # one new token sees every cached position: no mask at all
            y = F.scaled_dot_product_attention(q, keys_so_far, values_so_far)
        elif mask is None:  # a prefill: the ordinary causal mask
            y = F.scaled_dot_product_attention(q, keys_so_far, values_so_far, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, keys_so_far, values_so_far, attn_mask=mask)
        y = y.transpose(1, 2).reshape(batch * time, channels)
        x = torch.addmm(w.attn_proj_bias, y, w.attn_proj_weight_t).add_(x)  # x + proj(y)
        h = F.layer_norm(x, norm_shape, w.ln_2_weight, w.ln_2_bias, w.eps)
        h = F.gelu(torch.addmm(w.fc_bias, h, w.fc_weight_t), approximate=w.gelu_approximate)
        x = torch.addmm(w.mlp_proj_bias, h, w.mlp_proj_weight_t).add_(x)  # x + mlp(x)
    cache.length = end
    # Only the last position's logits are needed: with a large vocabulary the head is costly.
    last = x.view(batch, time, channels)[:, -1]
    return model.lm_head(F.layer_norm(last, norm_shape, model.ln_f.weight, model.ln_f.bias, model.ln_f.eps))
