"""`--init-from DIR`: the model a run starts from — a Hugging Face GPT-2 folder or a tui-trainer run dir.

Two steps, so that bad input is refused before anything is made and the weights are read once:

- ``read_init_source(path)`` reads what the run's config needs (shape, GELU, dropout, tokenizer)
  from config.json and the tokenizer files, without the weights; ``check_init_from(cfg, given)``
  (the CLI's edge) refuses flags that contradict it and returns the config with the source's shape.
- ``init_state_dict(source, block_size)`` then reads the weights as our state dict, keeping the
  first ``block_size`` positions: what the engine loads into a new GPT before its first step.

Nothing is downloaded: a folder the user already has is the only source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tui_trainer.bounded_read import read_bounded_text
from tui_trainer.config import OptimConfig, RunConfig
from tui_trainer.data.hf_tokenizer import check_vocab_fits, read_folder_tokenizer
from tui_trainer.data.tokenizer import CharTokenizer, Tokenizer, tokenizer_from_record
from tui_trainer.errors import UserError
from tui_trainer.model.hf import HF_CACHE_HINT, read_gpt2_config, read_gpt2_folder
from tui_trainer.rundir import checkpoints as ckpt

HF, RUN = "hf", "run"  # InitSource.kind


@dataclass(frozen=True)
class InitSource:
    """What a run started from it takes: its shape, GELU, dropout and tokenizer (weights: ``init_state_dict``)."""

    path: Path
    kind: str  # HF (a GPT-2 folder) or RUN (a tui-trainer run dir: its best weights)
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int  # its context; a run may take the first block_size <= n_positions
    vocab_size: int  # rows of its embedding (>= the tokenizer's size)
    gelu: str  # "exact" or "tanh"
    dropout: float | None  # None: a GPT-2 folder whose three dropouts differ (the user gives --dropout)
    tokenizer: Tokenizer

    def describe(self) -> str:
        """For the run line: what the run started from."""
        what = "GPT-2 folder" if self.kind == HF else "run"
        return (f"{what} {self.path} ({self.n_layer} layers, width {self.n_embd}, {self.n_positions} positions, "
                f"{self.vocab_size:,} tokens, GELU {self.gelu})")


def _run_checkpoint(path: Path) -> Path:
    best = ckpt.checkpoint_path(path, "best")
    if not best.is_file():
        raise UserError(f"--init-from {path} is a run dir without checkpoints/best.pt",
                        "start from a run that has finished at least one epoch")
    return best


def _is_run_dir(path: Path) -> bool:
    return (path / ckpt.CHECKPOINT_DIR).is_dir() and (path / "config.json").is_file() and \
        "config" in _json(path / "config.json")


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(read_bounded_text(path, "--init-from file", "pass a model folder or a run dir"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_init_source(path: str | Path) -> InitSource:
    """The shape and tokenizer of ``path`` (no weights read), or a UserError naming what is wrong."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"--init-from {path}: no such folder", HF_CACHE_HINT)
    if _is_run_dir(path):
        record = _json(path / "config.json")
        m = RunConfig.from_dict(record["config"]).model
        _run_checkpoint(path)
        tokenizer = tokenizer_from_record(record, path)
        return InitSource(path, RUN, m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size, m.gelu, m.dropout,
                          tokenizer)
    _config, shape = read_gpt2_config(path)
    tokenizer = read_folder_tokenizer(path)
    if tokenizer.size > shape.vocab_size:
        raise UserError(f"--init-from {path}: its tokenizer has {tokenizer.size:,} tokens but vocab_size is "
                        f"{shape.vocab_size:,}", "pass the model's own tokenizer files")
    check_vocab_fits(shape.vocab_size, f"--init-from {path}")
    return InitSource(path, HF, shape.n_layer, shape.n_head, shape.n_embd, shape.n_positions, shape.vocab_size,
                      shape.gelu, shape.dropout, tokenizer)


def init_state_dict(source: InitSource, block_size: int) -> dict[str, torch.Tensor]:
    """The source's weights as our GPT's state dict (fp32, head tied), positions cut to ``block_size``."""
    if source.kind == HF:
        _shape, state, _config = read_gpt2_folder(source.path, block_size)
        return state
    state = ckpt.load_checkpoint(_run_checkpoint(source.path))["model"]
    state = {name: tensor.to(torch.float32) for name, tensor in state.items()}
    state["position_embedding.weight"] = state["position_embedding.weight"][:block_size].contiguous()
    state["lm_head.weight"] = state["token_embedding.weight"]
    return state


def check_corpus_tokenizer(source: InitSource, corpus_tokenizer: Tokenizer) -> None:
    """A char source's ids are positions in its characters: the corpus must have exactly those
    (a BPE source's tokenizer encodes any text, and the corpus was encoded with it)."""
    if not isinstance(source.tokenizer, CharTokenizer):
        return
    chars = source.tokenizer.chars
    if tuple(corpus_tokenizer.chars) != chars:
        new = sorted(set(corpus_tokenizer.chars) - set(chars))
        what = f"characters it never saw ({', '.join(repr(c) for c in new[:5])})" if new else "other characters"
        raise UserError(f"the data has {what} than --init-from {source.path}'s character vocabulary",
                        "start from it on text with the same characters, or train a new run")


# Flags whose value must be the source's: (section.field, flag, the source's attribute).
SHAPE_FLAGS = (("model.n_layer", "--n-layer", "n_layer"), ("model.n_head", "--n-head", "n_head"),
               ("model.n_embd", "--n-embd", "n_embd"), ("model.gelu", "--gelu", "gelu"))


def check_init_from(cfg: RunConfig, given: dict[str, Any], source: InitSource | None = None) -> RunConfig:
    """``cfg`` with the shape, GELU and dropout of ``--init-from``'s source; a flag that contradicts the
    source (or a tokenizer flag: the tokenizer is the source's) is a one-line UserError."""
    source = source or read_init_source(cfg.model.init_from)
    where = f"--init-from {source.path}"
    for key, flag, attribute in SHAPE_FLAGS:
        theirs = getattr(source, attribute)
        if key in given and given[key] != theirs:
            raise UserError(f"{flag} {given[key]} contradicts {where} ({attribute} {theirs})",
                            f"drop {flag}: the model's shape comes from the source")
    for key, flag in (("data.tokenizer", "--tokenizer"), ("data.vocab_size", "--vocab-size")):
        if key in given:
            raise UserError(f"{flag} contradicts {where}: the run uses the source's tokenizer",
                            f"drop {flag}")
    block_size = given.get("model.block_size", source.n_positions)
    if block_size > source.n_positions:
        raise UserError(f"--block-size {block_size} is longer than {where}'s {source.n_positions} positions",
                        f"use --block-size {source.n_positions} or less (the first positions are kept)")
    dropout = given.get("model.dropout", source.dropout)
    if dropout is None:
        raise UserError(f"{where} has different resid_pdrop, embd_pdrop and attn_pdrop; our GPT has one dropout",
                        "pass --dropout, e.g. --dropout 0.1")
    model = replace(cfg.model, n_layer=source.n_layer, n_head=source.n_head, n_embd=source.n_embd,
                    block_size=block_size, gelu=source.gelu, dropout=dropout,
                    init_from=str(source.path.absolute()))
    optim = replace(cfg.optim, **{key.split(".")[1]: value for key, value in finetune_defaults(source, given).items()})
    return cfg.replace(model=model, optim=optim)


# -- fine-tuning defaults (under the flags and a config file: what they give wins) -----------------

FINETUNE_LR_GPT2 = 3e-5  # nanoGPT's finetune_shakespeare: 1/20 of GPT-2 small's 6e-4 pre-training peak
GPT2_WIDTH = 768
# nanoGPT's finetune_shakespeare keeps its lr constant (decay_lr = False); a decay over the last fifth
# then settles the weights (warmup-stable-decay: the lr held, then cooled at the end).
FINETUNE_LR_HOLD = 0.8


def finetune_lr(n_embd: int) -> float:
    """The peak lr a fine-tuning run takes when none is given: 3e-5 at GPT-2's width 768, as 1/width
    elsewhere (the GPT-3 family's pre-training peaks fall about as 1/width from 125M to 6.7B: 6e-4 at
    768, 2e-4 at 2048, 1.2e-4 at 4096; and Adam moves each weight by ~lr, so a layer's output moves
    by ~width x lr). Never above the default lr of a run from random weights."""
    return min(OptimConfig.lr, FINETUNE_LR_GPT2 * GPT2_WIDTH / n_embd)


def finetune_defaults(source: InitSource, given: dict[str, Any]) -> dict[str, Any]:
    """What a run --init-from a model takes unless told ("section.field" -> value): a small peak lr
    (``finetune_lr``) held for most of the run before it decays (``FINETUNE_LR_HOLD``) and no warm-up (warm-up shields random weights from their first large
    gradients; pretrained ones start where the loss is low already, as nanoGPT's and Hugging Face's
    fine-tuning start at the peak). Dropout is the source's unless given (``check_init_from``)."""
    chosen: dict[str, Any] = {}
    if "optim.lr" not in given:
        chosen["optim.lr"] = finetune_lr(source.n_embd)
    if "optim.warmup_tokens" not in given:
        chosen["optim.warmup_tokens"] = 0
    if "optim.lr_hold" not in given:
        chosen["optim.lr_hold"] = FINETUNE_LR_HOLD
    return chosen


def finetune_notes(source: InitSource, cfg: RunConfig, given: dict[str, Any]) -> list[str]:
    """The run line's word on the defaults fine-tuning chose (those still in ``cfg``: a run set up
    without ``check_init_from`` took none)."""
    chosen, parts = finetune_defaults(source, given), []
    if "optim.lr" in chosen and cfg.optim.lr == chosen["optim.lr"]:
        parts.append(f"lr {cfg.optim.lr:.2g} ({FINETUNE_LR_GPT2:g} x {GPT2_WIDTH} / width {source.n_embd})")
    if "optim.warmup_tokens" in chosen and cfg.optim.warmup_tokens == 0:
        parts.append("no warm-up")
    if "optim.lr_hold" in chosen and cfg.optim.lr_hold == chosen["optim.lr_hold"]:
        parts.append(f"held for {cfg.optim.lr_hold:.0%} of the run, then decayed to x{cfg.optim.min_lr_ratio:g}")
    if "model.dropout" not in given and source.dropout is not None and cfg.model.dropout == source.dropout:
        parts.append(f"dropout {source.dropout:g} (the source's)")
    if not parts:
        return []
    patience = cfg.train.patience
    stopping = (f"; early stopping after {patience} epoch{'s' if patience != 1 else ''} without a new best val "
                f"loss (epoch 0's the first)"
                if cfg.train.patience else "")
    return [f"fine-tuning defaults: {', '.join(parts)} (flags override them){stopping}"]
