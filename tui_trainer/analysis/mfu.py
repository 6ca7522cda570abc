"""Model FLOPs utilisation: the share of a device's peak that the model's own arithmetic reaches.

    FLOPs per token = 6 N + 12 L H Q T

(the PaLM paper's appendix B, as nanoGPT's ``estimate_mfu``): 6 per parameter for the forward and
backward matmuls, plus attention's scores and weighted sums over a context of T (L layers, H heads
of size Q). N counts the non-embedding parameters plus the tied head (the position table is a
lookup, not a matmul). Recomputation (activation checkpointing) is not counted: MFU is the model's
FLOPs, not the hardware's.

A peak is only known for GPUs named in ``PEAKS`` (dense tensor-core figures from the vendors'
data sheets, with fp32 accumulation as autocast uses); an unknown device gets no MFU rather than a
wrong one, and a CPU gets its achieved FLOP/s alone.
"""

from __future__ import annotations

from dataclasses import dataclass

TERA = 1e12


def flops_per_token(*, parameters: int, position_parameters: int, n_layer: int, n_head: int, head_size: int,
                    block_size: int) -> float:
    """Training FLOPs (forward + backward) per token of a GPT (see the module's docstring)."""
    matmul_parameters = parameters - position_parameters
    return 6.0 * matmul_parameters + 12.0 * n_layer * n_head * head_size * block_size


@dataclass(frozen=True)
class Peak:
    """Dense peak TFLOP/s of one GPU by the precision its matmuls run in."""

    names: tuple[str, ...]  # all of these must appear in torch.cuda.get_device_name() (any case)
    bf16: float | None  # bf16 tensor cores, fp32 accumulate (None: no bf16)
    fp16: float  # fp16 tensor cores, fp32 accumulate (fp32-rate where there are none)
    tf32: float | None  # fp32 matmuls on tensor cores (torch.set_float32_matmul_precision("high"))
    fp32: float  # plain fp32


# Most specific first: "H100 PCIe" before "H100".
PEAKS: tuple[Peak, ...] = (
    Peak(("h100", "pcie"), bf16=756.0, fp16=756.0, tf32=378.0, fp32=51.2),
    Peak(("h100", "nvl"), bf16=835.0, fp16=835.0, tf32=418.0, fp32=60.0),
    Peak(("h100",), bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9),  # SXM ("NVIDIA H100 80GB HBM3")
    Peak(("h200",), bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9),
    Peak(("a100",), bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5),
    Peak(("l4",), bf16=121.0, fp16=121.0, tf32=60.0, fp32=30.3),
    Peak(("a10",), bf16=125.0, fp16=125.0, tf32=62.5, fp32=31.2),
    Peak(("v100", "pcie"), bf16=None, fp16=112.0, tf32=None, fp32=14.0),
    Peak(("v100",), bf16=None, fp16=125.0, tf32=None, fp32=15.7),
    Peak(("t4",), bf16=None, fp16=65.0, tf32=None, fp32=8.1),
    Peak(("rtx 4090",), bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6),
    Peak(("rtx 3090",), bf16=71.0, fp16=71.0, tf32=35.6, fp32=35.6),
    Peak(("rtx 2080 ti",), bf16=None, fp16=53.8, tf32=None, fp32=13.4),
    Peak(("gtx 1080 ti",), bf16=None, fp16=11.3 / 64, tf32=None, fp32=11.3),
)


def peak_for(device_name: str) -> Peak | None:
    """The peak of a GPU by the name torch reports, or None when it is not in ``PEAKS``.
    A name must hold every word of an entry as a whole word ("l4" is not in "rtx 3090 l4x")."""
    words = device_name.lower().replace("-", " ").split()
    text = " " + " ".join(words) + " "
    for peak in PEAKS:
        if all(f" {name} " in text for name in peak.names):
            return peak
    return None


def peak_flops(peak: Peak, precision: str, tf32: bool) -> float | None:
    """FLOP/s of ``peak`` for a run in ``precision`` (fp32 / bf16 / fp16), or None when the card
    cannot run it."""
    tflops = {"bf16": peak.bf16, "fp16": peak.fp16,
              "fp32": (peak.tf32 if tf32 and peak.tf32 is not None else peak.fp32)}.get(precision)
    return None if tflops is None else tflops * TERA


def mfu(tokens_per_s: float, flops_per_token_: float, peak_flops_: float | None) -> float | None:
    """Achieved model FLOP/s over the peak (0..1), or None without a known peak."""
    if peak_flops_ is None or peak_flops_ <= 0 or tokens_per_s <= 0:
        return None
    return tokens_per_s * flops_per_token_ / peak_flops_
