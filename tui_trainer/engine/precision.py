"""Which precision a run trains in: ``auto``, ``fp32`` or ``bf16`` → (name, autocast dtype).

bf16 here means autocast around the training forward only: the weights, the gradients that
accumulate over a window, AdamW's state and the loss sum stay float32 (accumulation.py adds
each micro-batch's loss as float32). So the numbers that carry over from step to step are
fp32 in both precisions; bf16 changes the matmuls of the forward and their backward.

``auto`` picks bf16 where the hardware has bf16 units *and* bf16 was measured to train as well
as fp32 (benchmarks/precision.py: val loss at equal tokens within 1% of fp32, or within fp32's
seed-to-seed spread); fp32 everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tui_trainer.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")

# Device types on which `auto` may choose bf16 (when the device has native bf16, see below).
# CPU: benchmarks/precision.py on an AVX512-BF16 CPU, seed model, 262k tokens: bf16 val loss
# +0.02% from fp32's at the same seed, against a 0.26 fp32 seed-to-seed spread (benchmarks/README.md).
AUTO_BF16_DEVICE_TYPES = frozenset({"cuda", "cpu", "mps"})


@dataclass(frozen=True)
class Bf16Support:
    """What a device can do in bf16."""

    works: bool  # bf16 autocast runs here (possibly emulated, and then slower than fp32)
    native: bool  # ... on bf16 hardware (AVX512-BF16/AMX on x86, BF16 on Arm, Ampere+ GPUs)
    why: str  # what was found, for messages


def bf16_support(device: torch.device) -> Bf16Support:
    """Ask torch (not /proc/cpuinfo) what this device can do in bf16."""
    if device.type == "cuda":
        works = torch.cuda.is_bf16_supported(including_emulation=True)
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return Bf16Support(works, native, "an Ampere or newer GPU" if native else "a GPU older than Ampere")
    if device.type == "cpu":
        # oneDNN's own check: true on AVX512 (BW/VL/DQ) x86 and on Arm with BF16. On AVX512 CPUs
        # without AVX512-BF16 (Skylake-X) the bf16 maths is emulated, so `auto` also wants the units.
        works = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        units = [name for name in ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16") if caps.get(name)]
        native = works and bool(units)
        why = (f"oneDNN bf16 with {'/'.join(units)}" if native else
               "oneDNN bf16, emulated (no bf16 units)" if works else "no oneDNN bf16 on this CPU")
        return Bf16Support(works, native, why)
    if device.type == "mps":
        works = _mps_bf16_works()
        return Bf16Support(works, works, "MPS on macOS 14+" if works else "MPS before macOS 14")
    return Bf16Support(False, False, f"no bf16 check for {device.type}")


def _mps_bf16_works() -> bool:
    try:
        return bool(torch.ones(2, device="mps", dtype=torch.bfloat16).sum().item() == 2)
    except (RuntimeError, TypeError):
        return False


def choose_precision(requested: str, device: torch.device,
                     support: Bf16Support | None = None) -> tuple[str, torch.dtype | None]:
    """``requested`` (auto/fp32/bf16) on ``device`` → ("fp32", None) or ("bf16", torch.bfloat16).

    ``support`` is what ``bf16_support(device)`` reports (asked for when not given). bf16 asked
    for on a device that cannot run it is a UserError; ``auto`` never fails.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in PRECISIONS:
        raise UserError(f"unknown precision '{requested}'", "use --precision auto, fp32 or bf16")
    if requested == "fp32":
        return "fp32", None
    support = support if support is not None else bf16_support(device)
    if requested == "bf16":
        if not support.works:
            raise UserError(f"--precision bf16 was asked for but {device.type} here has no bf16 ({support.why})",
                            "use --precision auto or fp32")
        return "bf16", torch.bfloat16
    if support.native and device.type in AUTO_BF16_DEVICE_TYPES:
        return "bf16", torch.bfloat16
    return "fp32", None


def legacy_precision(device: torch.device) -> str:
    """What a checkpoint written before --precision trained in: bf16 autocast on CUDA with bf16, else fp32."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def resume_precision(requested: str, device: torch.device, recorded: str | None, *, resuming: bool,
                     explicit: bool, support: Bf16Support | None = None) -> tuple[str, torch.dtype | None, str]:
    """The precision of a run about to start: (name, autocast dtype, a note for the log or "").

    A resumed run keeps the precision its checkpoint recorded (``recorded``; None = a checkpoint
    from before precisions were recorded): if ``requested`` resolves to another one here (``auto``
    on other hardware), the resume is refused unless the precision was given ``explicit``-ly.
    """
    support = support if support is not None else bf16_support(device)
    name, dtype = choose_precision(requested, device, support)
    recorded = recorded or legacy_precision(device)
    if not resuming or name == recorded:
        return name, dtype, ""
    if explicit:
        return name, dtype, f"--precision {name} switches this run from {recorded} (its checkpoint's) to {name}"
    keep = f"pass --precision {recorded} to continue as it trained, or " if recorded == "fp32" or support.works else ""
    raise UserError(f"this run trained in {recorded}; resumed here (--precision {requested}) it would train in {name}",
                    f"{keep}pass --precision {name} to switch")
