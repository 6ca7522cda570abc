"""Run configuration: frozen dataclasses, validated once at the edge.

Everything inside the engine trusts a validated ``RunConfig``. Defaults follow the
seed's recommendations (micro-batch 8-16, accumulation 8-16, patience 3-5).
"""

from __future__ import annotations

import dataclasses
import math
import os
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


# Upper bounds for the counts: far beyond anything this tool can train on any machine, so they never
# refuse a real run, but a typo (an extra digit or three) gets one line instead of a segfault in a
# C library, an hour of silence, or a figure of 10^30 GiB. Values that reach torch must also fit its
# 64-bit integers (the data order seeds a generator with seed x 1,000,003 + epoch).
LIMITS: dict[str, int] = {
    "n_layer": 4096,
    "n_embd": 65_536,
    "block_size": 1_048_576,
    "micro_batch": 1_048_576,
    "batch": 1_048_576 * ACCUM_MAX,
    "epochs": 1_000_000,
    "checkpoint_every": 10**9,
    "limit_train_batches": 10**9,
    "limit_val_batches": 10**9,
    "warmup_tokens": 10**15,
    "max_bad_steps": 1_000_000,
}
SEED_MAX = 2**32 - 1  # numpy's range; seed x 1,000,003 + epoch then fits a torch generator's seed
THREADS_PER_CORE_MAX = 4  # more torch threads than this per core only slows a run down (400x at 999 on 2 cores)
MIN_VAL_SPLIT = 1e-6  # below this no real file holds a validation window, and the hints overflow


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _at_most(name: str, value: int | None, flag: str) -> None:
    limit = LIMITS[name]
    if value is not None and value > limit:
        raise UserError(f"{flag} {value} is far beyond what this tool can use (at most {limit:,})",
                        f"pass {flag} {limit} or less")
@dataclass(frozen=True)
class LogEvery:
    """``log_every`` understood: at most one of the two is set (neither = no progress lines)."""

    seconds: float | None = None
    steps: int | None = None


def parse_log_every(value: str | int) -> LogEvery:
    """``"30s"``, ``"2m"``, ``"1.5m"`` -> seconds; ``50`` or ``"50"`` -> optimizer steps; ``"off"``/``0`` -> none."""
    text = str(value).strip().lower()
    if text in ("off", "0", "0s", "0m", "none"):
        return LogEvery()
    try:
        if text.endswith(("s", "m")):
            number = float(text[:-1].strip())
            if math.isfinite(number) and number > 0:
                return LogEvery(seconds=number * (60 if text.endswith("m") else 1))
        elif not isinstance(value, bool) and int(text) > 0:
            return LogEvery(steps=int(text))
    except ValueError:
        pass
    raise UserError(f"--log-every {value} is not an interval",
                    "use e.g. --log-every 30s (seconds), 2m (minutes), 50 (optimizer steps) or off")


def _positive(name: str, value: int | float | None, flag: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise UserError(f"{flag} must be a positive number, got {value}", f"pass {flag} 1 or more")


GELU_CHOICES = ("exact", "tanh")  # ModelConfig.gelu
MIN_BPE_VOCAB = 256  # the byte alphabet alone
MAX_VOCAB = 2 ** 32  # the widest id type of the token cache is uint32 (a tokenizer file's bound)
# A BPE to learn: `tokenizers` (0.23) reserves ~59 bytes per asked-for id before it looks at the
# data (10^9 aborted allocating ~59 GB; 2^20 takes ~62 MB), and a merge needs a pair the text
# repeats: 2^20 is 4x the largest vocabularies in use (256k) and fits the cache's uint32 ids.
MAX_BPE_VOCAB = 2 ** 20


def _check_tokenizer(d: DataConfig) -> None:
    if not d.tokenizer or not d.tokenizer.strip():
        raise UserError("--tokenizer is empty", "use --tokenizer char, --tokenizer bpe or --tokenizer FILE.json")
    if d.vocab_size is not None and d.tokenizer != "bpe":
        what = "a character vocabulary comes from the data" if d.tokenizer == "char" else "the tokenizer file sets it"
        raise UserError(f"--vocab-size is only for --tokenizer bpe ({what})",
                        "drop --vocab-size, or add --tokenizer bpe")
    if d.vocab_size is not None and not MIN_BPE_VOCAB <= d.vocab_size <= MAX_BPE_VOCAB:
        raise UserError(f"--vocab-size must be between {MIN_BPE_VOCAB} (the byte alphabet) and {MAX_BPE_VOCAB:,}, "
                        f"got {d.vocab_size:,}", "use e.g. --vocab-size 4096")


def _check_batch(t: TrainConfig) -> None:
    """--batch and --micro-batch (a number, or auto with --batch): what one process can check; the
    processes' share is the session's (a batch must divide by micro-batch x processes)."""
    if t.micro_batch == "auto":
        if t.batch is None:
            raise UserError("--micro-batch auto needs --batch: the batch is what it splits",
                            "add e.g. --batch 64, or give --micro-batch a number")
    elif isinstance(t.micro_batch, (str, bool)):
        raise UserError(f"--micro-batch must be a number or auto, got {t.micro_batch!r}", "use e.g. --micro-batch 16")
    else:
        _positive("micro_batch", t.micro_batch, "--micro-batch")
    _positive("batch", t.batch, "--batch", allow_none=True)
    if t.batch is not None and isinstance(t.micro_batch, int) and t.batch % t.micro_batch:
        raise UserError(f"--batch {t.batch} is not a multiple of --micro-batch {t.micro_batch}",
                        f"use --micro-batch auto, or a micro-batch that divides {t.batch}")
    if t.memory_budget is not None and t.micro_batch != "auto":
        raise UserError("--memory-budget is what --micro-batch auto fits into",
                        "add --batch N (micro-batch auto is its default), or drop --memory-budget")


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
    # An empty string must not silently mean "the default".
    for value, flag, fix in ((d.path, "--data (or [data] path)", "give it a UTF-8 text file, or leave it out for "
                                                                  "the bundled corpus"),
                             (t.device, "--device", "use auto, cpu, cuda, cuda:N or mps"),
                             (cfg.run_dir, "--run-dir", "give it a folder, or leave it out for runs/<timestamp>")):
        if value is not None and not value.strip():
            raise UserError(f"{flag} is empty", fix)
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
    if m.gelu not in GELU_CHOICES:
        raise UserError(f"--gelu must be exact or tanh, got {m.gelu!r}",
                        "use --gelu exact (erf) or --gelu tanh (GPT-2's approximation)")
    if m.init_from is not None and not str(m.init_from).strip():
        raise UserError("--init-from is empty", "give it a Hugging Face GPT-2 folder or a run dir, or leave it out")
    if not 0.0 < d.val_split < 1.0:
        raise UserError(f"--val-split must be between 0 and 1 (exclusive), got {d.val_split}",
                        "use e.g. --val-split 0.1 for a 90/10 split")
    _check_tokenizer(d)
    _positive("limit_train_batches", d.limit_train_batches, "--limit-train-batches", allow_none=True)
    _positive("limit_val_batches", d.limit_val_batches, "--limit-val-batches", allow_none=True)
    _positive("epochs", t.epochs, "--epochs")
    _check_batch(t)
    if t.accum is None or not ACCUM_MIN <= t.accum <= ACCUM_MAX:
        raise UserError(f"--accum must be between {ACCUM_MIN} and {ACCUM_MAX}, got {t.accum}", "use e.g. --accum 8")
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise UserError(f"--lr must be a positive number, got {o.lr}", "use e.g. --lr 1e-3")
    for name, beta in (("beta1", o.beta1), ("beta2", o.beta2)):
        if not 0.0 <= beta < 1.0:
            raise UserError(f"{name} must be in [0, 1), got {beta}", f"use e.g. {name} = {0.9 if name == 'beta1' else 0.99}")
    if not 0.0 <= o.lr_hold < 1.0:  # (NaN fails it too)
        raise UserError(f"--lr-hold must be at least 0 and below 1, got {o.lr_hold}",
                        "use e.g. --lr-hold 0.8 (hold the peak for 80% of the run, then decay), or 0")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise UserError(f"min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}", "use e.g. min_lr_ratio = 0.1")
    if o.weight_decay < 0:
        raise UserError(f"--weight-decay must be 0 or more, got {o.weight_decay}", "use e.g. --weight-decay 0.1")
    if o.grad_clip < 0:
        raise UserError(f"--grad-clip must be 0 (off) or more, got {o.grad_clip}", "use e.g. --grad-clip 1.0")
    if o.warmup_tokens is not None and o.warmup_tokens < 0:
        raise UserError(f"--warmup-tokens must be 0 or more, got {o.warmup_tokens}", "omit it for 5% of the run")
    for name, value, flag in (("n_layer", m.n_layer, "--n-layer"), ("n_embd", m.n_embd, "--n-embd"),
                              ("block_size", m.block_size, "--block-size"),
                              ("micro_batch", t.micro_batch if isinstance(t.micro_batch, int) else None,
                               "--micro-batch"), ("batch", t.batch, "--batch"), ("epochs", t.epochs, "--epochs"),
                              ("checkpoint_every", t.checkpoint_every, "--checkpoint-every"),
                              ("limit_train_batches", d.limit_train_batches, "--limit-train-batches"),
                              ("limit_val_batches", d.limit_val_batches, "--limit-val-batches"),
                              ("warmup_tokens", o.warmup_tokens, "--warmup-tokens"),
                              ("max_bad_steps", t.max_bad_steps, "--max-bad-steps")):
        _at_most(name, value, flag)
    if d.val_split < MIN_VAL_SPLIT:
        raise UserError(f"--val-split {d.val_split:g} is too small to hold a validation window",
                        f"use --val-split {MIN_VAL_SPLIT:g} or more, e.g. 0.1")
    if not 0 <= t.seed <= SEED_MAX:
        raise UserError(f"--seed must be between 0 and {SEED_MAX}, got {t.seed}", "use e.g. --seed 1337")
    if t.threads is not None and t.threads > THREADS_PER_CORE_MAX * usable_cores():
        cores = usable_cores()
        raise UserError(f"--threads {t.threads} is far more than this machine's {cores} core{'s' if cores > 1 else ''}",
                        f"pass --threads {cores} (or leave it out: one per core)")
    if t.patience < 0:
        raise UserError(f"--patience must be 0 (off) or more, got {t.patience}",
                        "use e.g. --patience 4 (epochs without a val-loss improvement), or 0 to train every epoch")
    if t.min_delta < 0:
        raise UserError(f"--min-delta must be 0 or more, got {t.min_delta}", "use e.g. --min-delta 0.001")
    _positive("threads", t.threads, "--threads", allow_none=True)
    if o.resume_schedule not in ("continue", "restart"):
        raise UserError(f"--resume-schedule must be continue or restart, got {o.resume_schedule!r}",
                        "use --resume-schedule continue (decay on from the rate it had) or restart (back to the peak)")
    if t.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"--precision must be auto, fp32, bf16 or fp16, got {t.precision!r}",
                        "use e.g. --precision auto")
    if t.backend not in ("auto", "gloo", "nccl"):
        raise UserError(f"--backend must be auto, gloo or nccl, got {t.backend!r}", "use --backend auto")
    if not (isinstance(t.dist_timeout, (int, float)) and math.isfinite(t.dist_timeout)
            and 1 <= t.dist_timeout <= 86_400):
        raise UserError(f"--dist-timeout must be 1 to 86400 seconds, got {t.dist_timeout}",
                        "use e.g. --dist-timeout 600")
    _positive("checkpoint_every", t.checkpoint_every, "--checkpoint-every", allow_none=True)
    _positive("max_bad_steps", t.max_bad_steps, "--max-bad-steps")
    if t.sample_tokens < 0:
        raise UserError(f"--sample-tokens must be 0 (off) or more, got {t.sample_tokens}",
                        "use e.g. --sample-tokens 200")
    if t.auto_accum and not t.noise_scale:
        raise UserError("--auto-accum follows the noise scale, which --no-noise-scale turns off",
                        "drop one of the two (noise_scale = true in the config file)")
    if t.auto_accum and t.accum < 2:
        raise UserError("--auto-accum needs accum 2 or more: a window of one micro-batch cannot measure "
                        "the noise scale", "start with e.g. --accum 8")
    parse_log_every(t.log_every)
    if (g.val_rise_warning < 0 or g.trend_epochs < 2 or g.confirm_epochs < 1 or g.spike_factor <= 1
            or g.spike_window < 3 or g.overfit_gap < 0 or g.val_margin < 0 or g.underfit_ratio <= 0
            or g.plateau_improvement < 0 or not 0 <= g.schedule_tail <= 1 or g.spike_min_rise < 0
            or g.spike_jump <= 0):
        raise UserError("diagnosis thresholds are out of range",
                        "val_rise_warning >= 0, trend_epochs >= 2, confirm_epochs >= 1, spike_factor > 1, "
                        "spike_window >= 3, overfit_gap >= 0, val_margin >= 0, underfit_ratio > 0, "
                        "plateau_improvement >= 0, 0 <= schedule_tail <= 1, spike_min_rise >= 0, spike_jump > 0")
    return cfg
