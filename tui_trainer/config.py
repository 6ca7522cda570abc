"""Run configuration: frozen dataclasses, validated once at the edge (config_checks.py).

Everything inside the engine trusts a validated ``RunConfig``. Defaults follow the
seed's recommendations (micro-batch 8-16, accumulation 8-16, patience 3-5). Here: the sections,
their round trip through dicts (config.json, checkpoints), and a TOML value's type check.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from tui_trainer.errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 6  # transformer blocks
    n_head: int = 8  # attention heads per block; must divide n_embd
    n_embd: int = 256  # width of the residual stream (d_model)
    block_size: int = 128  # context length in tokens = length of one training example
    dropout: float = 0.1  # dropout on attention, MLP and embeddings (0 = deterministic maths)
    vocab_size: int = 0  # filled in from the data's character vocabulary
    # The MLP's GELU: "exact" (erf, as every run before this field) or "tanh" (GPT-2's approximation,
    # "gelu_new" in Hugging Face's config). Checkpoints written without it load as "exact".
    gelu: str = "exact"
    # A Hugging Face GPT-2-architecture folder or a tui-trainer run dir to start from (its shape, GELU,
    # weights and tokenizer); None = random weights. See tui_trainer/rundir/init_source.py.
    init_from: str | None = None


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None  # UTF-8 text file or a directory of *.txt files; None = the bundled tiny-shakespeare
    tokenizer: str = "char"  # "char" (one id per character), "bpe" (byte-level BPE learnt here) or a tokenizers .json file
    vocab_size: int | None = None  # BPE vocabulary to learn (256 or more); None = 4096. Only with tokenizer = "bpe"
    cache_dir: str | None = None  # where tokenized corpora are kept; None = $XDG_CACHE_HOME/tui-trainer (~/.cache/...)
    val_split: float = 0.1  # last fraction of the tokens held out for validation
    limit_train_batches: int | None = None  # cap on micro-batches per training epoch
    limit_val_batches: int | None = None  # cap on micro-batches per validation pass


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_tokens: int | None = None  # linear warm-up length in tokens; None = 5% of the run
    # fraction of the run after the warm-up the lr holds its peak before the cosine decay (constant-then-
    # decay); 0 = decay from the end of the warm-up. Fine-tuning (--init-from) holds 0.8 unless told.
    lr_hold: float = 0.0
    weight_decay: float = 0.1  # AdamW decoupled weight decay on matrices (not biases/norms)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # clip the window's gradient norm to this (0 = off)
    # a resume that moves the schedule's end (--epochs): "continue" decays from the rate it had,
    # "restart" climbs back to the peak and decays from there; never a jump
    resume_schedule: str = "continue"


@dataclass(frozen=True)
class DiagnosisConfig:
    """Thresholds of the loss-curve diagnosis (see tui_trainer/analysis/diagnosis.py)."""

    val_rise_warning: float = 0.05  # warn when val loss rises more than this fraction in one epoch
    trend_epochs: int = 3  # epochs a trend needs before it is called
    confirm_epochs: int = 2  # consecutive epochs a new pattern must hold before the verdict changes
    overfit_gap: float = 0.25  # val/train - 1 above this is a "large gap"
    val_margin: float = 0.01  # val more than this fraction above its best has "risen away" from it
    underfit_ratio: float = 0.6  # losses above this fraction of ln(vocab) (a uniform guess) are "high"
    # A fall of less than this fraction in one epoch is "flat"; 2% called a memorising run's
    # 1.5%/epoch descent (6-step epochs) a plateau (benchmarks/diagnosis.py).
    plateau_improvement: float = 0.01
    schedule_tail: float = 0.75  # the lr schedule is "in its tail" once the lr has come this far from peak to floor
    spike_factor: float = 2.0  # a step loss above spike_factor x rolling median is a spike
    spike_window: int = 25  # steps in the rolling median (of the same epoch)
    spike_min_rise: float = 0.25  # ... and at least this far above it, in nats: 0.13 -> 0.26 is noise, not a spike
    spike_jump: float = 1.0  # a step loss this many nats above the rolling median is a spike whatever the ratio


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    micro_batch: int | str = 16  # sequences per forward/backward; "auto" (with batch) = measured to fit the memory
    accum: int = 8  # micro-batches accumulated per optimizer step
    # Sequences per optimizer step (--batch): the split into micro_batch x accum x processes is the
    # tool's (micro_batch "auto", engine/memory_fit.py) or follows a given micro_batch. None = micro_batch x accum.
    batch: int | None = None
    memory_budget: str | None = None  # what --micro-batch auto may use: "6GB", "80%"; None = a share of what is free
    checkpoint_activations: bool = False  # recompute each block's activations in the backward (less memory, slower)
    seed: int = 1337  # drives init, data order and dropout
    device: str = "auto"  # auto = cuda, then mps, then cpu
    threads: int | None = None  # torch CPU threads; None = chosen for the machine
    patience: int = 4  # early stopping: epochs without improvement (0 = off)
    min_delta: float = 0.0  # early stopping: improvement smaller than this does not count
    checkpoint_every: int | None = None  # optimizer steps between `latest` saves; None = ~5 min
    max_bad_steps: int = 3  # consecutive non-finite steps before the run stops
    compile: bool = False  # torch.compile the model
    sample_tokens: int = 200  # a text sample of this many tokens after each epoch's validation (0 = off)
    noise_scale: bool = True  # estimate the gradient noise scale (one extra copy of the gradients)
    auto_accum: bool = False  # at each epoch boundary, switch accum to the noise scale's suggestion
    # Headless progress line: "30s" (or "2m") = every 30 seconds, a whole number = every N optimizer
    # steps, "off" (or 0) = epoch lines only. Long enough not to flood a CI log, short enough that a
    # job watchdog never takes a run for dead.
    log_every: str | int = "30s"
    # auto = bf16 autocast where the hardware has bf16 and it trains as well as fp32 (on a CPU: and faster,
    # by model width), fp16 on CUDA without bf16, else fp32 (the table in precision.py); fp32; bf16 or fp16 (forward under autocast; weights,
    # gradients, optimizer state and loss sums stay fp32; fp16 scales the loss: loss_scaling.py)
    precision: str = "auto"
    # Several processes (torchrun): the torch.distributed backend, auto = nccl on CUDA, gloo on the CPU;
    # and how long a collective waits for a rank before the run ends with an error (a rank died or hangs).
    backend: str = "auto"
    dist_timeout: float = 600.0
    # --time-budget: "90s", "10m", "2h" (or seconds): the run plans its tokens from its measured pace so that
    # training, validation and the final save end within it (engine/budget.py); None = train for --epochs.
    time_budget: str | float | None = None


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnosis: DiagnosisConfig = field(default_factory=DiagnosisConfig)
    run_dir: str | None = None  # None = runs/<timestamp>

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Rebuild from ``to_dict`` output; unknown keys are dropped, missing ones get defaults
        (so checkpoints written by older versions still load)."""
        return _build(cls, data)

    def replace(self, **sections: Any) -> "RunConfig":
        return dataclasses.replace(self, **sections)


ACCUM_MIN, ACCUM_MAX = 1, 1024  # the accumulation steps a run may use (flags, keys, socket, resume)


def _build(cls: type, data: dict[str, Any]) -> Any:
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and is_dataclass(sub) and isinstance(value, dict):
            value = _build(sub, value)
        kwargs[f.name] = value
    return cls(**kwargs)


_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def checked_value(section_cls: type, name: str, value: Any, where: str) -> Any:
    """``value`` as the type of ``section_cls.name`` (an int is a fine float), or a UserError.

    For values from outside the CLI's argparse (a TOML file): ``epochs = 2.5`` or
    ``lr = "fast"`` must be refused at the edge, not crash deep in the engine.
    """
    hint = typing.get_type_hints(section_cls)[name]
    options = typing.get_args(hint) or (hint,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    wanted = " or ".join(_TYPE_WORDS[k] for k in options if k in _TYPE_WORDS)
    default = next((f.default for f in fields(section_cls) if f.name == name), None)
    example = f"e.g. {name} = {_toml_literal(default)}" if default is not None else f"give {name} {wanted}"
    raise UserError(f"{name} in {where} must be {wanted}, got {_toml_literal(value)}", example)


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (dict, list)):
        return "a table" if isinstance(value, dict) else "an array"
    if isinstance(value, (int, float)):
        return repr(value)
    return str(value)  # a TOML date or time
