"""Attention on a CPU under bf16/fp16 autocast runs in fp32 (PyTorch's CPU flash attention is
2-3x slower in bf16 at head widths 16-64: benchmarks/README.md, section 10); fp32 runs and
CUDA are untouched."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tui_trainer.config import ModelConfig
from tui_trainer.model.gpt import GPT


class AttentionInputs(TorchDispatchMode):
    """Records the dtype of the query of every attention kernel that really runs."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in func.name():
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


def model(dropout: float = 0.0) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=16, dropout=dropout, vocab_size=17))


def attention_dtypes(gpt: GPT, dtype: torch.dtype | None, backward: bool = True) -> list[torch.dtype]:
    ids = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(1))
    recorded = AttentionInputs()
    with recorded:
        with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
            loss = gpt(ids, ids)
        if backward:
            loss.backward()
    return recorded.dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_runs_in_fp32_under_cpu_autocast_forward_and_backward(dtype):
    dtypes = attention_dtypes(model(), dtype)
    assert len(dtypes) >= 4  # two layers, forward and backward
    assert set(dtypes) == {torch.float32}


def test_the_matmuls_around_it_keep_autocasts_precision():
    gpt = model()
    ids = torch.randint(0, 17, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gpt.blocks[0].attn.qkv(gpt.token_embedding(ids)).dtype == torch.bfloat16
        assert gpt(ids).dtype == torch.bfloat16  # the head's matmul: still autocast's


def test_fp32_attention_is_the_same_kernel_call_as_ever():
    """An fp32 run goes straight to SDPA: the same op, the same bits as F.scaled_dot_product_attention."""
    gpt = model()
    assert set(attention_dtypes(gpt, None)) == {torch.float32}
    attn = gpt.blocks[0].attn
    x = torch.randn(2, 16, 64)
    q, k, v = attn.qkv(x).split(64, dim=2)
    q, k, v = (t.view(2, 16, 4, 16).transpose(1, 2) for t in (q, k, v))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = attn.proj(y.transpose(1, 2).contiguous().view(2, 16, 64))
    assert torch.equal(attn(x), expected)


def test_bf16_loss_with_fp32_attention_stays_near_fp32s():
    gpt = model()
    ids = torch.randint(0, 17, (4, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = gpt(ids, ids).item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = gpt(ids, ids).item()
    assert abs(low - full) / full < 0.01


def test_attention_dropout_still_applies_in_training_under_autocast():
    gpt = model(dropout=0.5)
    gpt.train()
    ids = torch.randint(0, 17, (2, 16))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(3)
        first = gpt(ids, ids)
        torch.manual_seed(4)
        second = gpt(ids, ids)
    assert not torch.equal(first, second)
