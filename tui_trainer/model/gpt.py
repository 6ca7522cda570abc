"""A small GPT: pre-LayerNorm blocks, SDPA causal attention, GELU MLP (exact or tanh), tied embeddings.

Two forward paths share the weights: ``GPT.forward`` for training and evaluation (whole
windows, dropout when training), and ``GPT.forward_cached`` for generation, which keeps each
layer's keys and values in a ``KVCache`` so that a new token costs one position's work.
The cached path is separate on purpose: the training path's ops stay exactly as they were,
so losses are bit-identical with or without the cache code.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tui_trainer.config import ModelConfig
from tui_trainer.model.kv_cache import KVCache, cached_forward

GELU_APPROXIMATE = {"exact": "none", "tanh": "tanh"}  # ModelConfig.gelu -> F.gelu's `approximate`
LOW_PRECISION = (torch.bfloat16, torch.float16)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                              dropout_p=self.dropout if self.training else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.qkv(x).split(channels, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (t.view(batch, time, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        if q.device.type == "cpu" and q.dtype in LOW_PRECISION:
            # PyTorch's CPU flash attention is 2-3x slower in bf16 than in fp32 at head widths
            # 16-64 (benchmarks/README.md, section 10), forward and backward: it runs in fp32 here,
            # outside autocast (whose CPU policy would cast it back), while the matmuls around it
            # keep autocast's precision. fp32 runs never get here: their ops are unchanged.
            with torch.autocast("cpu", enabled=False):
                y = self._attend(q.float(), k.float(), v.float())
        else:
            y = self._attend(q, k, v)
        y = y.transpose(1, 2).contiguous().view(batch, time, channels)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)
        # "exact" is erf's GELU (F.gelu's default, the same kernel as ever); "tanh" is GPT-2's approximation.
        self.approximate = GELU_APPROXIMATE[cfg.gelu]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the data")
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.position_embedding = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied input/output embeddings
        # --checkpoint-activations: each block's activations recomputed in the backward (training only)
        self.checkpoint_activations = False
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the stream's variance flat.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) → logits (B, T, vocab); with targets, the *sum* of the token
        cross-entropies instead (a sum, so callers can weight by tokens exactly)."""
        time = idx.shape[1]
        positions = torch.arange(time, device=idx.device)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # Non-reentrant, RNG preserved: the recomputed dropout masks are the forward's own.
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")

    def loss_sum(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self(idx, targets)

    def new_kv_cache(self, batch: int = 1) -> KVCache:
        return KVCache(self, batch)

    def forward_cached(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Token ids (B, T) that follow the ``cache.length`` positions the cache holds → the
        next-token logits (B, vocab) after the last of them. Appends the ids to the cache.
        The step itself is tui_trainer/model/kv_cache.py's, written for few ops per token.

        Call it under ``torch.inference_mode()`` with the model in ``eval()`` (no dropout here)."""
        return cached_forward(self, idx, cache)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   device_type: str) -> torch.optim.AdamW:
    """AdamW with decay on matrices only; fused on CUDA and CPU, foreach elsewhere.

    The fused CPU kernel (torch >= 2.4) steps the seed's model in ~2 ms against ~13 ms for
    foreach on 2 cores (benchmarks/README.md); an older torch falls back to foreach."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if device_type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except RuntimeError:  # no fused kernel for this device in this torch
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)
