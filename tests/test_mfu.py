"""MFU: the model's FLOPs per token (6N + 12LHQT) and a peak only for GPUs we know (analysis/mfu.py)."""

import pytest
import torch

from tui_trainer.analysis.mfu import flops_per_token, mfu, peak_flops, peak_for
from tui_trainer.config import ModelConfig
from tui_trainer.model.gpt import GPT


def test_flops_per_token_counts_six_per_matmul_parameter_plus_attention():
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    model = GPT(cfg)
    n = sum(p.numel() for p in model.parameters())
    positions = cfg.block_size * cfg.n_embd
    flops = flops_per_token(parameters=n, position_parameters=positions, n_layer=2, n_head=2, head_size=16,
                            block_size=16)
    assert flops == 6 * (n - positions) + 12 * 2 * 2 * 16 * 16


def test_the_forward_matmul_flops_are_a_third_of_the_count():
    """Count the forward's matmul FLOPs with torch's own counter: the 6N part is 3x the forward's 2N."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=64, dropout=0.0)
    model = GPT(cfg)
    x = torch.randint(0, 64, (1, 32))
    with FlopCounterMode(display=False) as counter:
        model(x)
    n = sum(p.numel() for p in model.parameters())
    expected = flops_per_token(parameters=n, position_parameters=32 * 64, n_layer=2, n_head=2, head_size=32,
                               block_size=32) * 32 / 3
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize(("name", "bf16"), [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA GeForce RTX 4090", 165.2), ("NVIDIA L4", 121.0), ("NVIDIA H200", 989.4),
])
def test_known_gpus_have_their_peak(name, bf16):
    peak = peak_for(name)
    assert peak is not None and peak.bf16 == bf16


def test_cards_without_bf16_and_unknown_devices():
    t4 = peak_for("Tesla T4")
    assert t4 is not None and peak_flops(t4, "bf16", tf32=False) is None
    assert peak_flops(t4, "fp16", tf32=False) == 65e12
    assert peak_for("NVIDIA GeForce RTX 3060") is None  # not in the table: no MFU rather than a wrong one
    assert peak_for("cpu") is None
    assert mfu(1000.0, 1e9, None) is None


def test_tf32_counts_only_where_it_runs():
    a100 = peak_for("NVIDIA A100-PCIE-40GB")
    assert peak_flops(a100, "fp32", tf32=True) == 156e12
    assert peak_flops(a100, "fp32", tf32=False) == 19.5e12
    assert mfu(100_000.0, 1e9, 312e12) == pytest.approx(100_000 * 1e9 / 312e12)
