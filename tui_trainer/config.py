"""Run configuration: frozen dataclasses, validated once at the edge.

Everything inside the engine trusts a validated ``RunConfig``. Defaults follow the
seed's recommendations (micro-batch 8-16, accumulation 8-16, patience 3-5).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 6  # transformer blocks
    n_head: int = 8  # attention heads per block; must divide n_embd
    n_embd: int = 256  # width of the residual stream (d_model)
    block_size: int = 128  # context length in tokens = length of one training example
    dropout: float = 0.1  # dropout on attention, MLP and embeddings (0 = deterministic maths)
    vocab_size: int = 0  # filled in from the data's character vocabulary


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None  # UTF-8 text file; None = the bundled tiny-shakespeare corpus
    val_split: float = 0.1  # last fraction of the tokens held out for validation
    limit_train_batches: int | None = None  # cap on micro-batches per training epoch
    limit_val_batches: int | None = None  # cap on micro-batches per validation pass


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_tokens: int | None = None  # linear warm-up length in tokens; None = 5% of the run
    weight_decay: float = 0.1  # AdamW decoupled weight decay on matrices (not biases/norms)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # clip the window's gradient norm to this (0 = off)


@dataclass(frozen=True)
class DiagnosisConfig:
    """Thresholds of the loss-curve diagnosis (see tui_trainer/diagnosis.py)."""

    val_rise_warning: float = 0.05  # warn when val loss rises more than this fraction in one epoch
    trend_epochs: int = 3  # epochs a trend needs before it is called
    overfit_gap: float = 0.25  # val/train - 1 above this is a "large gap"
    underfit_ratio: float = 0.6  # losses above this fraction of ln(vocab) (a uniform guess) are "high"
    plateau_improvement: float = 0.02  # relative improvement per epoch below this = "barely move"
    spike_factor: float = 2.0  # a step loss above spike_factor x rolling median is a spike
    spike_window: int = 25  # steps in the rolling median (of the same epoch)
    spike_min_rise: float = 0.25  # ... and at least this far above it, in nats: 0.13 -> 0.26 is noise, not a spike


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    micro_batch: int = 16  # sequences per forward/backward
    accum: int = 8  # micro-batches accumulated per optimizer step
    seed: int = 1337  # drives init, data order and dropout
    device: str = "auto"  # auto = cuda, then mps, then cpu
    threads: int | None = None  # torch CPU threads; None = chosen for the machine
    patience: int = 4  # early stopping: epochs without improvement (0 = off)
    min_delta: float = 0.0  # early stopping: improvement smaller than this does not count
    checkpoint_every: int | None = None  # optimizer steps between `latest` saves; None = ~5 min
    max_bad_steps: int = 3  # consecutive non-finite steps before the run stops
    compile: bool = False  # torch.compile the model
    # auto = bf16 autocast where the hardware has bf16 and it trains as well as fp32 (precision.py), else fp32;
    # fp32; or bf16 (forward under autocast; weights, gradients, optimizer state and loss sums stay fp32)
    precision: str = "auto"


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


def _positive(name: str, value: int | float | None, flag: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise UserError(f"{flag} must be a positive number, got {value}", f"pass {flag} 1 or more")


def validate(cfg: RunConfig) -> RunConfig:
    """Check everything that does not need the data; raise UserError with a fix."""
    m, d, o, t, g = cfg.model, cfg.data, cfg.optim, cfg.train, cfg.diagnosis
    for section in (m, d, o, t, g):
        for f in fields(section):
            value = getattr(section, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                flag = f"--{f.name.replace('_', '-')}"
                raise UserError(f"{f.name} must be a finite number, got {value}",
                                f"give {flag} (or {f.name} in the config file) a real value")
    _positive("n_layer", m.n_layer, "--n-layer")
    _positive("n_head", m.n_head, "--n-head")
    _positive("n_embd", m.n_embd, "--n-embd")
    _positive("block_size", m.block_size, "--block-size")
    if m.n_embd % m.n_head:
        raise UserError(
            f"--n-embd {m.n_embd} is not divisible by --n-head {m.n_head}",
            f"choose --n-embd as a multiple of {m.n_head}, e.g. {m.n_head * max(1, m.n_embd // m.n_head)}",
        )
    if not 0.0 <= m.dropout < 1.0:
        raise UserError(f"--dropout must be in [0, 1), got {m.dropout}", "use e.g. --dropout 0.1")
    if not 0.0 < d.val_split < 1.0:
        raise UserError(f"--val-split must be between 0 and 1 (exclusive), got {d.val_split}",
                        "use e.g. --val-split 0.1 for a 90/10 split")
    _positive("limit_train_batches", d.limit_train_batches, "--limit-train-batches", allow_none=True)
    _positive("limit_val_batches", d.limit_val_batches, "--limit-val-batches", allow_none=True)
    _positive("epochs", t.epochs, "--epochs")
    _positive("micro_batch", t.micro_batch, "--micro-batch")
    if t.accum is None or t.accum < 1 or t.accum > 1024:
        raise UserError(f"--accum must be between 1 and 1024, got {t.accum}", "use e.g. --accum 8")
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise UserError(f"--lr must be a positive number, got {o.lr}", "use e.g. --lr 1e-3")
    for name, beta in (("beta1", o.beta1), ("beta2", o.beta2)):
        if not 0.0 <= beta < 1.0:
            raise UserError(f"{name} must be in [0, 1), got {beta}", f"use e.g. {name} = {0.9 if name == 'beta1' else 0.99}")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise UserError(f"min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}", "use e.g. min_lr_ratio = 0.1")
    if o.weight_decay < 0:
        raise UserError(f"--weight-decay must be 0 or more, got {o.weight_decay}", "use e.g. --weight-decay 0.1")
    if o.grad_clip < 0:
        raise UserError(f"--grad-clip must be 0 (off) or more, got {o.grad_clip}", "use e.g. --grad-clip 1.0")
    if o.warmup_tokens is not None and o.warmup_tokens < 0:
        raise UserError(f"--warmup-tokens must be 0 or more, got {o.warmup_tokens}", "omit it for 5% of the run")
    if t.patience < 0:
        raise UserError(f"--patience must be 0 (off) or more, got {t.patience}", "the seed recommends 3-5")
    if t.min_delta < 0:
        raise UserError(f"--min-delta must be 0 or more, got {t.min_delta}", "use e.g. --min-delta 0.001")
    _positive("threads", t.threads, "--threads", allow_none=True)
    if t.precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"--precision must be auto, fp32 or bf16, got {t.precision!r}", "use e.g. --precision auto")
    _positive("checkpoint_every", t.checkpoint_every, "--checkpoint-every", allow_none=True)
    _positive("max_bad_steps", t.max_bad_steps, "--max-bad-steps")
    if (g.val_rise_warning < 0 or g.trend_epochs < 2 or g.spike_factor <= 1 or g.spike_window < 3
            or g.overfit_gap < 0 or g.underfit_ratio <= 0 or g.plateau_improvement < 0 or g.spike_min_rise < 0):
        raise UserError("diagnosis thresholds are out of range",
                        "val_rise_warning >= 0, trend_epochs >= 2, spike_factor > 1, spike_window >= 3, "
                        "overfit_gap >= 0, underfit_ratio > 0, plateau_improvement >= 0, spike_min_rise >= 0")
    return cfg
