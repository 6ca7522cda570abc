"""Does a checkpoint's content fit together? Checked before a resume touches anything.

``load_checkpoint`` proves the file is intact (zip CRCs) and has every part; this proves the parts
fit: weights of exactly the shapes its own config builds, an optimizer state for those weights, and
loop, early-stopping and RNG state with the keys and types the engine reads. Otherwise a file that
was edited, written by a buggy or foreign tool, or assembled from two runs would crash a resume
halfway through (after the metrics were trimmed) with a traceback instead of one line.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import torch

from tui_trainer.analysis.time_budget import state_problem
from tui_trainer.config import ModelConfig, RunConfig
from tui_trainer.config_checks import GELU_CHOICES, LIMITS
from tui_trainer.errors import UserError
from tui_trainer.rundir.reader import fits

_NUMBER = (int, float)


class _Misfit(Exception):
    """One way the contents do not fit: what, in a few words."""


def check_contents(state: dict[str, Any], path: Path, loop_state_cls: type) -> None:
    """Raise a one-line UserError naming the first part of ``state`` that does not fit."""
    try:
        model_cfg = _model_config(state["config"], state["vocab"], state.get("tokenizer"))
        _check_model(state["model"], model_cfg)
        _check_optimizer(state["optimizer"], model_cfg)
        _check_loop(state["loop"], loop_state_cls)
        _check_early_stopping(state["early_stopping"])
        _check_rng(state["rng"])
        _check_grad_scaler(state.get("grad_scaler"))
        _check_ranks(state.get("world_size", 1), state.get("rng_ranks"), state.get("rng_ranks_lost") is True)
        if not isinstance(state["data_sha256"], str) or len(state["data_sha256"]) != 64:
            raise _Misfit("its data hash is not a SHA-256")
        if not isinstance(state.get("data_path", ""), str):
            raise _Misfit("its data path is not a string")
    except _Misfit as misfit:
        raise UserError(f"checkpoint {path} does not fit together: {misfit}",
                        "it was not written whole by tui-trainer; resume from another run dir, or start a new run"
                        ) from None


def _model_config(config: Any, vocab: Any, tokenizer: Any) -> ModelConfig:
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise _Misfit("its config is not a table of settings")
    if tokenizer is not None and (not isinstance(tokenizer, dict) or tokenizer.get("kind") not in ("char", "bpe")
                                  or not isinstance(tokenizer.get("vocab_size"), int)):
        raise _Misfit("its tokenizer record is not one this version writes")
    bpe = tokenizer is not None and tokenizer["kind"] == "bpe"  # a BPE run's vocabulary is its tokenizer.json
    if not isinstance(vocab, list) or (not vocab and not bpe) or not all(isinstance(c, str) and c for c in vocab) \
            or len(set(vocab)) != len(vocab):
        raise _Misfit("its vocabulary is not a list of distinct tokens")
    try:
        cfg = RunConfig.from_dict(config).model
    except TypeError:
        raise _Misfit("its config has settings this version does not know") from None
    sizes = {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
             "vocab_size": cfg.vocab_size}
    for name, value in sizes.items():
        limit = LIMITS.get(name, 10**7)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
            raise _Misfit(f"its config's {name} is {value!r}")
    if cfg.n_embd % cfg.n_head:
        raise _Misfit(f"its config's n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
    if cfg.gelu not in GELU_CHOICES:
        raise _Misfit(f"its config's gelu is {cfg.gelu!r}")
    if not isinstance(cfg.dropout, _NUMBER) or isinstance(cfg.dropout, bool) or not 0 <= cfg.dropout < 1:
        raise _Misfit(f"its config's dropout is {cfg.dropout!r}")
    tokens = tokenizer["vocab_size"] if bpe else len(vocab)
    # A run started from a model (--init-from) keeps its embedding's rows, which may outnumber its
    # tokenizer's ids (a vocabulary padded to a multiple of 64, as nanoGPT pads GPT-2's 50,257).
    if cfg.vocab_size != tokens and not (cfg.init_from and cfg.vocab_size > tokens):
        raise _Misfit(f"its config's vocab_size {cfg.vocab_size} is not its vocabulary's {tokens} tokens")
    return cfg


def _expected_weights(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Names and shapes of the weights this config builds (on the meta device: no memory, no time)."""
    from tui_trainer.model.gpt import GPT

    with torch.device("meta"):
        model = GPT(cfg)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _check_model(weights: Any, cfg: ModelConfig) -> None:
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise _Misfit("its weights are not a table of tensors")
    expected = _expected_weights(cfg)
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise _Misfit(f"its weights {'lack ' + missing[0] if missing else 'have an extra ' + extra[0]} "
                      f"for the model of its own config")
    for name, shape in expected.items():
        if weights[name].shape != shape:
            raise _Misfit(f"weight {name} has shape {tuple(weights[name].shape)}, its config builds {tuple(shape)}")
        if not weights[name].is_floating_point():
            raise _Misfit(f"weight {name} is not a floating-point tensor")


def _check_optimizer(optimizer: Any, cfg: ModelConfig) -> None:
    """AdamW's state: two groups (matrices with decay, then the rest) over the model's parameters."""
    from tui_trainer.model.gpt import GPT

    with torch.device("meta"):
        params = [p for p in GPT(cfg).parameters() if p.requires_grad]
    ordered = [p.shape for p in params if p.dim() >= 2] + [p.shape for p in params if p.dim() < 2]
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("param_groups"), list) \
            or not isinstance(optimizer.get("state"), dict):
        raise _Misfit("its optimizer state is not an optimizer's")
    ids = [i for group in optimizer["param_groups"] if isinstance(group, dict) for i in group.get("params", [])]
    if len(ids) != len(ordered) or len(optimizer["param_groups"]) != 2:
        raise _Misfit(f"its optimizer holds {len(ids)} parameters, its model has {len(ordered)}")
    shape_of = dict(zip(ids, ordered))
    for key, entry in optimizer["state"].items():
        if key not in shape_of or not isinstance(entry, dict):
            raise _Misfit(f"its optimizer has state for a parameter {key!r} the model does not have")
        for name in ("exp_avg", "exp_avg_sq"):
            value = entry.get(name)
            if not isinstance(value, torch.Tensor) or value.shape != shape_of[key]:
                raise _Misfit(f"its optimizer's {name} of parameter {key} does not match the weight's shape")


def _check_loop(loop: Any, loop_state_cls: type) -> None:
    if not isinstance(loop, dict):
        raise _Misfit("its loop state is not a table")
    hints = typing.get_type_hints(loop_state_cls)
    known = {f.name for f in dataclasses.fields(loop_state_cls)}
    # Keys a newer version adds are refused by the format version; one unknown here is damage.
    extra = sorted(set(loop) - known)
    if extra:
        raise _Misfit(f"its loop state has an unknown key '{extra[0]}'")
    for key, value in loop.items():
        if not fits(value, hints[key]):
            raise _Misfit(f"its loop state's {key} is {type(value).__name__} {value!r:.40}")
        if isinstance(value, list) and key.endswith(("history", "losses")) \
                and not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in value):
            raise _Misfit(f"its loop state's {key} holds something other than numbers")
    for key in ("epoch", "accum", "pending_accum", "pending_accum_epoch", "val_micro_split"):
        if loop.get(key) is not None and loop[key] < 1:
            raise _Misfit(f"its loop state's {key} is {loop[key]}")
    anchor = loop.get("lr_anchor")
    if anchor is not None and not (len(anchor) == 2 and isinstance(anchor[0], int) and not isinstance(anchor[0], bool)
                                   and anchor[0] >= 0 and isinstance(anchor[1], float) and 0 < anchor[1] < math.inf):
        raise _Misfit(f"its loop state's lr_anchor is {anchor!r:.40}")
    for key in ("example_cursor", "step", "tokens_seen", "tokens_skipped", "epoch_tokens",
                "bad_steps_in_row", "bad_steps_total",
                "elapsed_seconds", "epoch_seconds"):
        if key in loop and not loop[key] >= 0:  # (a NaN fails too)
            raise _Misfit(f"its loop state's {key} is {loop[key]}")
    if loop.get("time_budget") is not None and (problem := state_problem(loop["time_budget"])):
        raise _Misfit(f"its time budget {problem}")


def _check_early_stopping(early: Any) -> None:
    if not isinstance(early, dict):
        raise _Misfit("its early-stopping state is not a table")
    best, best_epoch, waited = early.get("best"), early.get("best_epoch", 0), early.get("epochs_without_improvement")
    if not isinstance(best, _NUMBER) or isinstance(best, bool):
        raise _Misfit(f"its early-stopping best is {best!r}")
    if best_epoch is not None and (not isinstance(best_epoch, int) or isinstance(best_epoch, bool)):
        raise _Misfit(f"its early-stopping best_epoch is {best_epoch!r}")
    if not isinstance(waited, int) or isinstance(waited, bool) or waited < 0:
        raise _Misfit(f"its early-stopping epochs_without_improvement is {waited!r}")


def _check_grad_scaler(scaler: Any) -> None:
    """fp16's loss scaler (GradScaler.state_dict), or None for the other precisions."""
    if scaler is None:
        return
    if not isinstance(scaler, dict):
        raise _Misfit("its loss-scaler state is not a table")
    for key in ("scale", "growth_factor", "backoff_factor"):
        value = scaler.get(key)
        if not isinstance(value, _NUMBER) or isinstance(value, bool) or not 0 < value < float("inf"):
            raise _Misfit(f"its loss-scaler {key} is {value!r}")
    for key in ("growth_interval", "_growth_tracker"):
        value = scaler.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _Misfit(f"its loss-scaler {key} is {value!r}")


def _check_ranks(world_size: Any, rank_rngs: Any, lost: bool) -> None:
    """Several processes: one RNG state per rank (a resume with as many restores each one's), unless
    rank 0 saved it alone after losing the others (``rng_ranks_lost``)."""
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise _Misfit(f"its world size is {world_size!r}")
    if world_size == 1 or (lost and rank_rngs is None):
        return
    if not isinstance(rank_rngs, list) or len(rank_rngs) != world_size:
        raise _Misfit(f"it was saved by {world_size} processes but does not hold one random-number state for each")
    for rng in rank_rngs:
        _check_rng(rng)


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, dict):
        raise _Misfit("its random-number state is not a table")
    torch_state = rng.get("torch")
    if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8 \
            or torch_state.shape != torch.get_rng_state().shape:
        raise _Misfit("its torch random-number state is not one")
    python_state = rng.get("python")
    if not isinstance(python_state, list) or len(python_state) != 625 \
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in python_state):
        raise _Misfit("its Python random-number state is not one")
    cuda_state = rng.get("cuda")
    if cuda_state is not None and (not isinstance(cuda_state, torch.Tensor) or cuda_state.dtype != torch.uint8):
        raise _Misfit("its CUDA random-number state is not one")
