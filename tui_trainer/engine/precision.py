"""Which precision a run trains in: ``auto``, ``fp32``, ``bf16`` or ``fp16`` → (name, autocast dtype).

bf16 and fp16 mean autocast around the training forward only: the weights, the gradients that
accumulate over a window, AdamW's state and the loss sum stay float32 (accumulation.py adds
each micro-batch's loss as float32). So the numbers that carry over from step to step are
fp32 in every precision; bf16/fp16 change the matmuls of the forward and their backward.
fp16 also scales the loss (loss_scaling.py): its 5-bit exponent would flush small gradients to 0.

``auto``, per device (``auto_precision``, a pure function of what the device can do):

    device   what it has                                       auto
    cuda     bf16 units: compute capability >= 8.0 (Ampere+)   bf16 (+ TF32 for what stays fp32)
    cuda     compute capability < 8.0 (GTX 10xx, RTX 20xx,    fp16 with loss scaling
             T4, V100)
    mps      bf16 (macOS 14+)                                  bf16
    mps      no bf16                                           fp32
    cpu      bf16 units (AVX512-BF16 / AMX / Arm BF16),        bf16
             a model at least CPU_BF16_MIN_WIDTH wide
    cpu      bf16 units, a narrower model                      fp32 (bf16 is slower there)
    cpu      no bf16 units (emulated or none)                  fp32
    other                                                      fp32

CPU and MPS bf16: benchmarks/precision.py measured bf16 to train as well as fp32 (val loss at
equal tokens within 1% of fp32, or within fp32's seed-to-seed spread). ``--precision fp16`` runs on
CPU too (slowly: it is there so the loss-scaling path is tested without a GPU); ``--precision
bf16`` on a GPU without bf16 units, or ``--precision fp16`` where fp16 autocast cannot run, is a
UserError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tui_trainer.config import ModelConfig
from tui_trainer.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

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
    fp16: bool = True  # fp16 autocast and loss scaling run here (CUDA and CPU always; MPS: asked)


def cuda_bf16_native(capability: tuple[int, int]) -> bool:
    """bf16 tensor cores: compute capability 8.0 (Ampere) or newer. TF32 comes with them."""
    return tuple(capability) >= (8, 0)


# A CPU with bf16 units still trains narrow models slower in bf16 than in fp32: autocast's casts and
# the bf16 <-> fp32 conversions around every matmul cost more than the narrower matmuls save. The
# crossover, bf16 vs fp32 tokens/s of the engine's step over width 32..384 and context 64..512
# (benchmarks/precision_crossover.py; the data in benchmarks/README.md, section 10): by width. (The
# attention itself runs in fp32 on a CPU under autocast: model/gpt.py, benchmarks/cpu_attention.py.)
CPU_BF16_MIN_WIDTH = 128


def cpu_bf16_pays(n_embd: int, block_size: int) -> bool:
    """Does bf16 autocast train a model this wide (``n_embd``) at this context (``block_size``)
    faster than fp32 on a CPU with bf16 units? A rule by shape, never a timing at start-up: the
    same command picks the same precision however busy the machine is."""
    return n_embd >= CPU_BF16_MIN_WIDTH


def auto_precision(device_type: str, support: Bf16Support, model: ModelConfig) -> str:
    """What ``--precision auto`` trains ``model`` in on a ``device_type`` that can do ``support``
    (the module's table): bf16 where the hardware has it (on a CPU: and the model is wide enough
    for bf16 to pay), fp16 on CUDA without it, else fp32."""
    if support.native and device_type in AUTO_BF16_DEVICE_TYPES:
        if device_type == "cpu" and not cpu_bf16_pays(model.n_embd, model.block_size):
            return "fp32"
        return "bf16"
    if device_type == "cuda" and support.fp16:
        return "fp16"
    return "fp32"


def auto_reason(device_type: str, support: Bf16Support, model: ModelConfig) -> str:
    """Why ``--precision auto`` chose what it did (the run line's note)."""
    name = auto_precision(device_type, support, model)
    if device_type == "cpu" and support.native:
        if name == "fp32":
            return (f"--precision auto: fp32 (bf16 is slower than fp32 below width {CPU_BF16_MIN_WIDTH} on a CPU, "
                    f"this model is {model.n_embd} wide: benchmarks/precision_crossover.py)")
        return (f"--precision auto: bf16 ({support.why}; bf16 is faster from width {CPU_BF16_MIN_WIDTH} up on a "
                f"CPU, this model is {model.n_embd} wide: benchmarks/precision_crossover.py)")
    if name == "fp16":
        return f"--precision auto: fp16 with loss scaling (no bf16 units: {support.why})"
    if name == "bf16":
        return f"--precision auto: bf16 ({support.why})"
    if device_type not in AUTO_BF16_DEVICE_TYPES:
        return f"--precision auto: fp32 (bf16 was never measured on {device_type})"
    return f"--precision auto: fp32 (no bf16 units: {support.why})"


def bf16_support(device: torch.device) -> Bf16Support:
    """Ask torch (not /proc/cpuinfo) what this device can do in bf16."""
    if device.type == "cuda":
        works = torch.cuda.is_bf16_supported(including_emulation=True)
        capability = torch.cuda.get_device_capability(device)
        native = works and cuda_bf16_native(capability)
        name = f"{torch.cuda.get_device_name(device)}, compute capability {capability[0]}.{capability[1]}"
        return Bf16Support(works, native, name + (": Ampere or newer" if native else ": older than Ampere"))
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
        return Bf16Support(works, works, "MPS on macOS 14+" if works else "MPS before macOS 14",
                           fp16=_mps_fp16_works())
    return Bf16Support(False, False, f"no bf16 check for {device.type}")


def _mps_bf16_works() -> bool:
    try:
        return bool(torch.ones(2, device="mps", dtype=torch.bfloat16).sum().item() == 2)
    except (RuntimeError, TypeError):
        return False


def _mps_fp16_works() -> bool:
    """fp16 autocast and a working GradScaler on MPS (newer torch versions only)."""
    try:
        with torch.autocast("mps", dtype=torch.float16):
            ok = torch.ones(2, 2, device="mps") @ torch.ones(2, 2, device="mps")
        return ok.dtype == torch.float16 and torch.amp.GradScaler("mps").is_enabled()
    except (RuntimeError, TypeError, ValueError):
        return False


def choose_precision(requested: str, device: torch.device, support: Bf16Support | None = None, *,
                     model: ModelConfig | None = None) -> tuple[str, torch.dtype | None]:
    """``requested`` (auto/fp32/bf16/fp16) on ``device`` → (name, autocast dtype or None for fp32).
    ``auto`` needs the ``model`` it trains (on a CPU the rule is by width).

    ``support`` is what ``bf16_support(device)`` reports (asked for when not given). bf16 asked
    for where it cannot run (on a GPU: without bf16 units; emulated bf16 is slower than fp32), or
    fp16 where it cannot run, is a UserError; ``auto`` never fails.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in PRECISIONS:
        raise UserError(f"unknown precision '{requested}'", "use --precision auto, fp32, bf16 or fp16")
    if requested == "fp32":
        return "fp32", None
    support = support if support is not None else bf16_support(device)
    if requested == "bf16":
        if not support.works or (device.type == "cuda" and not support.native):
            raise UserError(f"--precision bf16 was asked for but {device.type} here has no bf16 ({support.why})",
                            "use --precision auto or fp16" if device.type == "cuda" and support.fp16
                            else "use --precision auto or fp32")
        return "bf16", torch.bfloat16
    if requested == "fp16":
        if not support.fp16:
            raise UserError(f"--precision fp16 was asked for but {device.type} here cannot run fp16 autocast with "
                            f"loss scaling ({support.why})", "use --precision auto or fp32")
        return "fp16", torch.float16
    if model is None:
        raise ValueError("--precision auto needs the model's shape (choose_precision(..., model=cfg.model))")
    name = auto_precision(device.type, support, model)
    return name, AUTOCAST_DTYPES[name]


AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_line_notes(precision: str, device: torch.device, tf32: bool, n_embd: int | None = None) -> list[str]:
    """What the run's start says about its precision beyond its name: fp16 on a CPU is slow, and
    bf16 on a CPU for a model narrower than the crossover; TF32."""
    notes = []
    if precision == "fp16" and device.type == "cpu":
        notes.append("--precision fp16 on a CPU is slow (no fp16 units: it exists to test the GPU path); "
                     "--precision auto or fp32 trains faster here")
    if precision == "bf16" and device.type == "cpu" and n_embd is not None and not cpu_bf16_pays(n_embd, 0):
        notes.append(f"bf16 on a CPU trains a model {n_embd} wide no faster than fp32 (bf16 pays from width "
                     f"{CPU_BF16_MIN_WIDTH}: benchmarks/precision_crossover.py); --precision auto picks fp32 here")
    if tf32:
        notes.append("TF32 on for the matmuls that stay fp32 (an Ampere or newer GPU)")
    return notes


def legacy_precision(device: torch.device) -> str:
    """What a checkpoint written before --precision trained in: bf16 autocast on CUDA with bf16, else fp32."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def resume_precision(requested: str, device: torch.device, recorded: str | None, *, resuming: bool,
                     explicit: bool, model: ModelConfig,
                     support: Bf16Support | None = None) -> tuple[str, torch.dtype | None, str]:
    """The precision of a run about to start: (name, autocast dtype, a note for the log or "").

    A resumed run keeps the precision its checkpoint recorded (``recorded``; None = a checkpoint
    from before precisions were recorded): if ``requested`` resolves to another one here (``auto``
    on other hardware), the resume is refused unless the precision was given ``explicit``-ly.
    """
    support = support if support is not None else bf16_support(device)
    name, dtype = choose_precision(requested, device, support, model=model)
    recorded = recorded or legacy_precision(device)
    if not resuming or name == recorded:
        return name, dtype, ""
    if explicit:
        return name, dtype, f"--precision {name} switches this run from {recorded} (its checkpoint's) to {name}"
    can_keep = recorded == "fp32" or (support.fp16 if recorded == "fp16" else support.works)
    keep = f"pass --precision {recorded} to continue as it trained, or " if can_keep else ""
    raise UserError(f"this run trained in {recorded}; resumed here (--precision {requested}) it would train in {name}",
                    f"{keep}pass --precision {name} to switch")
