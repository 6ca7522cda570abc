"""``train``'s flags as one table: each flag's help group, the config field it sets, its type and
help text; the defaults come from the config dataclasses (``default_of``), never retyped. The
parser (main.py), the export's command line (export.py) and the docs test read it."""

from __future__ import annotations

from dataclasses import fields

from tui_trainer.config import RunConfig

MODEL, DATA, OPTIM, RUN = "model", "data", "optimisation", "run control"
GROUPS = {MODEL: "the GPT's shape", DATA: "what it trains on, and how much of it per epoch",
          OPTIM: "batch, learning rate and the optimizer", RUN: "where the run goes, how it runs and when it stops"}

def micro_batch_value(text: str) -> int | str:
    """--micro-batch: a whole number, or auto."""
    if text.strip().lower() == "auto":
        return "auto"
    return int(text)


micro_batch_value.__name__ = "micro-batch (a number or auto)"  # (argparse's one line names the type)

# flag → (help group, config section, field, type, help); the default is added from the config dataclasses
FLAGS: list[tuple[str, str, str, str, type, str]] = [
    ("--n-layer", MODEL, "model", "n_layer", int, "transformer blocks"),
    ("--n-head", MODEL, "model", "n_head", int, "attention heads"),
    ("--n-embd", MODEL, "model", "n_embd", int, "model width d_model"),
    ("--block-size", MODEL, "model", "block_size", int, "context length in tokens"),
    ("--dropout", MODEL, "model", "dropout", float, "dropout probability"),
    ("--gelu", MODEL, "model", "gelu", str, "the MLP's GELU: exact (erf) or tanh (GPT-2's approximation)"),
    ("--init-from", MODEL, "model", "init_from", str,
     "start from a Hugging Face GPT-2-architecture folder (config.json, model.safetensors, tokenizer.json) or a "
     "tui-trainer run dir (its best weights): its shape, GELU and tokenizer; --block-size may be smaller"),
    ("--data", DATA, "data", "path", str, "UTF-8 text file, or a directory: every *.txt under it, joined"),
    ("--tokenizer", DATA, "data", "tokenizer", str, "char, bpe (byte-level BPE learnt on the training text) "
                                                    "or a tokenizers FILE.json"),
    ("--vocab-size", DATA, "data", "vocab_size", int, "BPE vocabulary to learn, 256 to 2^20 (--tokenizer bpe only)"),
    ("--cache-dir", DATA, "data", "cache_dir", str, "where tokenized corpora are kept"),
    ("--val-split", DATA, "data", "val_split", float, "fraction of the text held out for validation"),
    ("--limit-train-batches", DATA, "data", "limit_train_batches", int, "cap micro-batches per training epoch"),
    ("--limit-val-batches", DATA, "data", "limit_val_batches", int, "cap micro-batches per validation pass"),
    ("--batch", OPTIM, "train", "batch", int, ("sequences per optimizer step: the tool splits it into micro-batch "
                                                "x accum x processes (micro-batch auto, unless given)")),
    ("--micro-batch", OPTIM, "train", "micro_batch", micro_batch_value,
     "sequences per forward/backward, or auto (with --batch): the largest that fits --memory-budget, measured "
     "(on a CPU the smallest within 5% of the fastest)"),
    ("--accum", OPTIM, "train", "accum", int, "micro-batches accumulated per optimizer step"),
    ("--memory-budget", OPTIM, "train", "memory_budget", str,
     "what --micro-batch auto may use: e.g. 6GB, 512MiB, or 80% of the memory free now"),
    ("--epochs", OPTIM, "train", "epochs", int, "passes over the training split"),
    ("--time-budget", OPTIM, "train", "time_budget", str,
     ("train for this long instead of --epochs (90s, 10m, 2h; a bare number is seconds): the run plans its tokens from its measured pace so "
      "that training, validation and the final save end within it, and the LR decays to its floor at the end; "
      "pauses do not count. Unless given, it trains with accum 1 and, for models 128 wide or less, lr 4e-3 "
      "(measured: benchmarks/time_to_loss.py)")),
    ("--lr", OPTIM, "optim", "lr", float, "peak learning rate"),
    ("--warmup-tokens", OPTIM, "optim", "warmup_tokens", int, "linear warm-up in tokens"),
    ("--lr-hold", OPTIM, "optim", "lr_hold", float,
     "hold the peak lr for this fraction of the run (after the warm-up), then decay: e.g. 0.8 decays over the "
     "last 20%"),
    ("--weight-decay", OPTIM, "optim", "weight_decay", float, "AdamW weight decay"),
    ("--grad-clip", OPTIM, "optim", "grad_clip", float, "clip the step's gradient norm; 0 = off"),
    ("--resume-schedule", OPTIM, "optim", "resume_schedule", str,
     "when a resume moves the schedule's end (--epochs): continue (decay on from the rate it had) or restart "
     "(back to the peak)"),
    ("--seed", RUN, "train", "seed", int, "seed for init, data order and dropout"),
    ("--device", RUN, "train", "device", str, "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"),
    ("--threads", RUN, "train", "threads", int, "torch CPU threads"),
    ("--precision", RUN, "train", "precision", str, "auto (bf16 where the hardware has it and trains "
                                                     "as well, fp16 on older CUDA cards), fp32, bf16 or fp16"),
    ("--backend", RUN, "train", "backend", str, "several processes (torchrun): auto (nccl on CUDA, gloo on the "
                                                 "CPU), gloo or nccl"),
    ("--dist-timeout", RUN, "train", "dist_timeout", float,
     "several processes: seconds a process waits for the others before the run ends with an error"),
    ("--patience", RUN, "train", "patience", int, "early stopping patience in epochs; 0 = off"),
    ("--min-delta", RUN, "train", "min_delta", float, "smallest val-loss improvement that counts"),
    ("--checkpoint-every", RUN, "train", "checkpoint_every", int, "save `latest` every N optimizer steps"),
    ("--max-bad-steps", RUN, "train", "max_bad_steps", int, "non-finite steps in a row before stopping"),
    ("--sample-tokens", RUN, "train", "sample_tokens", int,
     "tokens of the text sample written after each epoch's validation; 0 = off"),
    ("--log-every", RUN, "train", "log_every", str,
     "headless progress line: every 30s, 2m, 50 (optimizer steps) or off"),
]
# What a default of None means, in words (every other default is shown as its value).
NONE_MEANS = {
    "model.init_from": "random weights",
    "data.path": "the bundled tiny-shakespeare",
    "data.vocab_size": "4096",
    "data.cache_dir": "$XDG_CACHE_HOME/tui-trainer, i.e. ~/.cache/tui-trainer",
    "data.limit_train_batches": "no cap",
    "data.limit_val_batches": "no cap; with --limit-train-batches N, ceil(N x val_split / (1 - val_split))",
    "optim.warmup_tokens": "5% of the run, at least 10 steps' worth",
    "train.threads": "all cores; one left for the app on 4+",
    "train.checkpoint_every": "about every 5 minutes",
    "train.time_budget": "off: train for --epochs",
    "train.batch": "micro-batch x accum",
    "train.memory_budget": "80% of the memory free now",  # (memory_fit.DEFAULT_BUDGET_SHARE)
}


def default_of(section: str, name: str) -> str:
    """The default of a config field, as the help shows it (from the dataclasses, never retyped)."""
    section_cls = {f.name: f.default_factory for f in fields(RunConfig) if f.name != "run_dir"}[section]
    value = next(f.default for f in fields(section_cls) if f.name == name)
    if value is None:
        return NONE_MEANS[f"{section}.{name}"]
    shown = ("on" if value else "off") if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) \
        else str(value)
    return shown + DEFAULT_UNLESS.get(f"{section}.{name}", "")


# Defaults a kind of run sets otherwise (init_source.py's fine-tuning, analysis/time_budget.py's budget).
DEFAULT_UNLESS = {
    "optim.lr": "; fine-tuning and --time-budget runs choose their own unless given",
    "optim.lr_hold": "; 0.8 with --init-from",
    "train.accum": "; 1 with --time-budget",
}


def with_default(help_text: str, default: str) -> str:
    return f"{help_text} (default: {default})".replace("%", "%%")  # argparse %-formats help
