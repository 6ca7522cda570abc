"""Our GPT <-> Hugging Face GPT-2: parameter names, layouts and config fields, both ways.

Our model is GPT-2's architecture (pre-LayerNorm, biases everywhere, LayerNorm eps 1e-5, learned
positions, tied embeddings, one dropout for embeddings, attention and residuals); only the names,
the GELU variant and the layout of four matrices differ. GPT-2 keeps ``c_attn``, ``attn.c_proj``,
``c_fc`` and ``mlp.c_proj`` as Conv1D weights stored (in, out), the transpose of ``nn.Linear``'s
(out, in). The tied head is stored once (``transformer.wte``); GPT-2's causal-mask buffers
(``attn.bias``, ``attn.masked_bias`` in old files) are never ours.

Whatever cannot be mapped exactly is refused with one line naming the field: a model that loads
but computes something else is worse than none. Reading a folder's weights lives here too
(``read_gpt2_folder``); its tokenizer is data/hf_tokenizer.py's, and the two meet in
rundir/init_source.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tui_trainer.bounded_read import read_bounded_text
from tui_trainer.config_checks import GELU_CHOICES, LIMITS
from tui_trainer.errors import UserError

# ModelConfig.gelu <-> GPT-2's activation_function. "gelu_pytorch_tanh" is the same tanh formula as
# "gelu_new" (one kernel instead of the written-out formula): both load as "tanh".
ACTIVATION_OF_GELU = {"exact": "gelu", "tanh": "gelu_new"}
GELU_OF_ACTIVATION = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which our model uses (and GPT-2's default)
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # stored (in, out) by GPT-2
# Ours (after "blocks.{i}.") -> GPT-2's (after "transformer.h.{i}.").
BLOCK_NAMES = {
    "ln_1.weight": "ln_1.weight", "ln_1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.c_attn.weight", "attn.qkv.bias": "attn.c_attn.bias",
    "attn.proj.weight": "attn.c_proj.weight", "attn.proj.bias": "attn.c_proj.bias",
    "ln_2.weight": "ln_2.weight", "ln_2.bias": "ln_2.bias",
    "mlp.fc.weight": "mlp.c_fc.weight", "mlp.fc.bias": "mlp.c_fc.bias",
    "mlp.proj.weight": "mlp.c_proj.weight", "mlp.proj.bias": "mlp.c_proj.bias",
}
TOP_NAMES = {"token_embedding.weight": "transformer.wte.weight", "position_embedding.weight": "transformer.wpe.weight",
             "ln_f.weight": "transformer.ln_f.weight", "ln_f.bias": "transformer.ln_f.bias"}
MASK_BUFFERS = ("attn.bias", "attn.masked_bias")  # GPT-2's causal masks in old files: not weights
# GPT2Config's defaults, for a config.json that leaves a field out (transformers fills them the same way).
GPT2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
    "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False, "tie_word_embeddings": True,
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _is_conv1d(gpt2_name: str) -> bool:
    return gpt2_name.endswith(".weight") and any(f".{part}." in f".{gpt2_name}" for part in CONV1D)


def our_name_to_gpt2(name: str) -> str | None:
    """GPT-2's name of one of our parameters; None for ``lm_head.weight`` (tied: stored as wte)."""
    if name == "lm_head.weight":
        return None
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in BLOCK_NAMES:
        return f"transformer.h.{parts[1]}.{BLOCK_NAMES[parts[2]]}"
    raise UserError(f"the model has a parameter GPT-2 has no place for: {name}",
                    "this export knows tui-trainer's GPT; upgrade tui-trainer or export another run")


def to_gpt2_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> GPT-2's (GPT2LMHeadModel names), contiguous fp32 tensors, the head stored once."""
    head, embedding = state.get("lm_head.weight"), state.get("token_embedding.weight")
    if head is not None and embedding is not None and not torch.equal(head, embedding):
        raise UserError("the model's output head is not tied to its token embedding: GPT-2 ties them",
                        "export a run trained by tui-trainer (its head is always tied)")
    out = {}
    for name, tensor in state.items():
        gpt2 = our_name_to_gpt2(name)
        if gpt2 is None:
            continue
        tensor = tensor.detach().to("cpu", torch.float32)
        out[gpt2] = (tensor.t() if _is_conv1d(gpt2) else tensor).contiguous()
    return out


def from_gpt2_state_dict(weights: dict[str, torch.Tensor], n_layer: int, block_size: int | None = None
                         ) -> dict[str, torch.Tensor]:
    """GPT-2's weights (with or without the ``transformer.`` prefix, mask buffers ignored) -> our
    state dict, fp32, with ``lm_head.weight`` tied to the embedding. ``block_size`` keeps only the
    first N positions. A missing or unexpected weight is a UserError naming it."""
    plain = {}
    for name, tensor in weights.items():
        short = name.removeprefix("transformer.")
        if short.endswith(MASK_BUFFERS) and short.split(".")[-2] == "attn":
            continue
        plain[short] = tensor
    head = plain.pop("lm_head.weight", None)
    ours: dict[str, torch.Tensor] = {}
    wanted = {our: gpt2.removeprefix("transformer.") for our, gpt2 in TOP_NAMES.items()}
    for i in range(n_layer):
        wanted.update({f"blocks.{i}.{our}": f"h.{i}.{gpt2}" for our, gpt2 in BLOCK_NAMES.items()})
    for our, gpt2 in wanted.items():
        if gpt2 not in plain:
            raise UserError(f"the weights have no {gpt2}", "pass a complete GPT-2-architecture model folder")
        tensor = plain.pop(gpt2).to(torch.float32)
        ours[our] = (tensor.t() if _is_conv1d(gpt2) else tensor).contiguous()
    if plain:
        extra = sorted(plain)
        raise UserError(f"the weights hold {len(extra)} tensor(s) a GPT-2 has no place for, e.g. {extra[0]}",
                        "pass a GPT-2-architecture model (GPT2LMHeadModel), not another architecture")
    if head is not None and not torch.equal(head.to(torch.float32), ours["token_embedding.weight"]):
        raise UserError("the weights' lm_head differs from wte: an untied head, which our GPT cannot hold",
                        "pass a GPT-2 with tie_word_embeddings = true")
    if block_size is not None:
        ours["position_embedding.weight"] = ours["position_embedding.weight"][:block_size].contiguous()
    ours["lm_head.weight"] = ours["token_embedding.weight"]
    return ours


def gpt2_config(n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int, gelu: str,
                dropout: float, eos_token_id: int | None = None) -> dict[str, Any]:
    """config.json of the GPT2LMHeadModel that computes what our GPT of this shape computes."""
    if gelu not in ACTIVATION_OF_GELU:
        raise UserError(f"the run's gelu {gelu!r} has no GPT-2 activation_function",
                        f"export a run with gelu one of {', '.join(GELU_CHOICES)}")
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": vocab_size, "n_positions": block_size, "n_ctx": block_size,
        "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head, "n_inner": None,
        "activation_function": ACTIVATION_OF_GELU[gelu], "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "add_cross_attention": False, "use_cache": True,
        "tie_word_embeddings": True, "bos_token_id": eos_token_id, "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }


@dataclass(frozen=True)
class Gpt2Shape:
    """What a GPT-2 config.json says our ModelConfig must be."""

    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int  # the context it was trained at; a run may use the first block_size <= this
    vocab_size: int
    gelu: str  # "exact" or "tanh"
    dropout: float | None  # None: its three dropouts differ, and our GPT has one (the user must choose)


def _field(config: dict[str, Any], name: str) -> Any:
    return config[name] if name in config else GPT2_DEFAULTS[name]


def shape_from_gpt2_config(config: dict[str, Any], where: str) -> Gpt2Shape:
    """The shape of a GPT-2 config.json, or a UserError naming the first field that does not fit our GPT."""
    def refuse(name: str, why: str) -> UserError:
        return UserError(f"{where}: {name} = {json.dumps(config.get(name, GPT2_DEFAULTS.get(name)))} {why}",
                         "pass a GPT-2-architecture folder (model_type gpt2), e.g. one of Hugging Face's cache")

    if config.get("model_type") != "gpt2":
        raise refuse("model_type", "is not gpt2: only GPT-2's architecture maps onto our GPT")
    sizes = {}
    for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        value = _field(config, name)
        limit = LIMITS.get({"n_positions": "block_size"}.get(name, name), 2**32)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
            raise refuse(name, f"is not a whole number from 1 to {limit:,}")
        sizes[name] = value
    if sizes["n_embd"] % sizes["n_head"]:
        raise refuse("n_head", f"does not divide n_embd {sizes['n_embd']}")
    activation = _field(config, "activation_function")
    if activation not in GELU_OF_ACTIVATION:
        raise refuse("activation_function", f"is not one of {', '.join(GELU_OF_ACTIVATION)}")
    if _field(config, "n_inner") not in (None, 4 * sizes["n_embd"]):
        raise refuse("n_inner", f"is not 4 x n_embd: our MLP is 4 x {sizes['n_embd']} wide")
    eps = _field(config, "layer_norm_epsilon")
    if not isinstance(eps, (int, float)) or not math.isclose(eps, LAYER_NORM_EPS, rel_tol=1e-6):
        raise refuse("layer_norm_epsilon", f"is not {LAYER_NORM_EPS}, our LayerNorms' epsilon")
    for name, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                         ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if _field(config, name) is not wanted:
            raise refuse(name, f"is not {json.dumps(wanted)}, as our GPT computes")
    drops = {_field(config, name) for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    for drop in drops:
        if not isinstance(drop, (int, float)) or not 0 <= drop < 1:
            raise UserError(f"{where}: a dropout (resid_pdrop, embd_pdrop, attn_pdrop) is {drop!r}",
                            "fix config.json: dropouts are from 0 to 1")
    return Gpt2Shape(sizes["n_layer"], sizes["n_head"], sizes["n_embd"], sizes["n_positions"], sizes["vocab_size"],
                     GELU_OF_ACTIVATION[activation], float(drops.pop()) if len(drops) == 1 else None)


HF_CACHE_HINT = ("pass a folder you already have, e.g. a Hugging Face snapshot: "
                 "~/.cache/huggingface/hub/models--gpt2/snapshots/<hash>/ (nothing is downloaded)")


def read_gpt2_config(folder: Path) -> tuple[dict[str, Any], Gpt2Shape]:
    path = folder / "config.json"
    try:
        config = json.loads(read_bounded_text(path, "model config", "restore the folder's config.json"))
    except FileNotFoundError:
        raise UserError(f"{folder} has no config.json: not a Hugging Face model folder", HF_CACHE_HINT) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is not readable JSON ({type(exc).__name__})", "restore the folder's config.json"
                        ) from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object", "restore the folder's config.json")
    return config, shape_from_gpt2_config(config, str(path))


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    weights = torch.load(path, map_location="cpu", weights_only=True)  # weights_only: no pickled code runs
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise ValueError("not a state dict of tensors")
    return weights


def read_gpt2_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, else of pytorch_model.bin."""
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            try:
                return _load_weights(path)
            except Exception as exc:  # safetensors' SafetensorError, torch's UnpicklingError, OSError, ...
                detail = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
                raise UserError(f"{path} does not load ({detail})", f"restore the folder's {name}") from None
    sharded = sorted(p.name for p in folder.glob("model-*.safetensors"))
    if sharded:
        raise UserError(f"{folder} holds sharded weights ({sharded[0]}, ...): not read here",
                        "pass a folder with one model.safetensors or pytorch_model.bin")
    raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin", HF_CACHE_HINT)


def read_gpt2_folder(folder: str | Path, block_size: int | None = None
                     ) -> tuple[Gpt2Shape, dict[str, torch.Tensor], dict[str, Any]]:
    """A Hugging Face GPT-2-architecture folder -> (its shape, our state dict, its config.json).

    ``block_size`` (at most its n_positions) keeps the first positions only."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder", HF_CACHE_HINT)
    config, shape = read_gpt2_config(folder)
    if block_size is not None and block_size > shape.n_positions:
        raise UserError(f"--block-size {block_size} is longer than the model's {shape.n_positions} positions",
                        f"use --block-size {shape.n_positions} or less")
    state = from_gpt2_state_dict(read_gpt2_weights(folder), shape.n_layer, block_size)
    rows, width = state["token_embedding.weight"].shape
    if (rows, width) != (shape.vocab_size, shape.n_embd):
        raise UserError(f"{folder}: wte is {rows} x {width} but config.json says vocab_size {shape.vocab_size} x "
                        f"n_embd {shape.n_embd}", "restore the folder: its weights and config.json disagree")
    return shape, state, config
