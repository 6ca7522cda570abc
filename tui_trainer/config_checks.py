"""What a run's settings may be: the bounds of its counts (``LIMITS``, ``SEED_MAX``, the vocabulary's),
``validate`` — every check that does not need the data, each a ``UserError`` naming the flag and a
fix — and ``--log-every`` understood (``parse_log_every``). config.py holds the settings themselves.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

from tui_trainer.config import ACCUM_MAX, ACCUM_MIN, DataConfig, RunConfig, TrainConfig
from tui_trainer.errors import UserError

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
