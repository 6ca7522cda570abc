"""A run's checkpoint as a Hugging Face GPT-2 folder: `tui-trainer export RUN_DIR --hf OUT_DIR`.

The folder holds config.json (GPT-2's fields, model/hf.py), model.safetensors (GPT-2's names and
Conv1D layouts, the tied head once, no mask buffers), the tokenizer (data/hf_tokenizer.py) and a
short model card. ``GPT2LMHeadModel.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load
it; writing it needs only ``safetensors``, never ``transformers``.

Nothing is half-written: every file goes into a temporary folder beside OUT_DIR, which is then
renamed into place (an existing OUT_DIR, with --overwrite, is moved aside first and removed last).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tui_trainer.config import RunConfig
from tui_trainer.data.hf_tokenizer import end_of_text_id, tokenizer_files
from tui_trainer.data.tokenizer import tokenizer_from_record
from tui_trainer.errors import UserError
from tui_trainer.model.hf import gpt2_config, to_gpt2_state_dict
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir.ownership import MARKER_FILE
from tui_trainer.rundir.reader import not_a_run_dir_folder

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class Exported:
    out_dir: Path
    checkpoint: Path  # the file the weights came from
    file_sizes: dict[str, int]  # name -> bytes, as written
    seconds: float  # wall time of the whole export (load, convert, write, rename)

    @property
    def total_bytes(self) -> int:
        return sum(self.file_sizes.values())


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """A fresh or empty folder, or --overwrite; refused before anything is read or written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file, not a folder", "pass --hf a folder to create")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir} is not empty", "pass --overwrite to replace it, or --hf a new folder")
    if not out_dir.parent.is_dir():
        raise UserError(f"{out_dir.parent} does not exist", "create the parent folder first, or pick another --hf")


def run_checkpoint(run_dir: Path, which: str) -> Path:
    if not run_dir.is_dir():
        raise not_a_run_dir_folder(run_dir)
    path = ckpt.checkpoint_path(run_dir, which)
    if path.is_file():
        return path
    other = "latest" if which == "best" else "best"
    if ckpt.checkpoint_path(run_dir, other).is_file():
        raise UserError(f"{run_dir} has no checkpoints/{which}.pt", f"use --checkpoint {other}")
    raise UserError(f"{run_dir} has no checkpoint", "export a run that has finished an epoch or saved with `s`")


def model_card(state: dict[str, Any], cfg: RunConfig, which: str, command_line: str, parameters: int) -> str:
    """README.md: what the model was trained on, how far, how well, and how to load it."""
    loop, stopping = state.get("loop", {}), state.get("early_stopping", {})
    val = loop.get("val_history") or []
    best = stopping.get("best")
    data = state.get("data_path") or cfg.data.path or "tiny-shakespeare (bundled)"
    m = cfg.model
    tokenizer = state.get("tokenizer") or {"kind": "char"}
    size = f"{state['data_bytes']:,} bytes, " if isinstance(state.get("data_bytes"), int) else ""
    lines = [
        "---", "library_name: transformers", "tags: [gpt2, tui-trainer]", "---", "",
        f"# GPT-2-architecture model trained with tui-trainer ({parameters:,} parameters)", "",
        f"- **Data**: `{data}` ({size}sha256 `{state.get('data_sha256', '?')}`), "
        f"tokenizer {tokenizer.get('kind')} ({m.vocab_size:,} tokens)",
        f"- **Shape**: {m.n_layer} layer(s), {m.n_head} heads, width {m.n_embd}, context {m.block_size}, "
        f"GELU {m.gelu}, dropout {m.dropout}",
        (f"- **Trained**: {loop.get('tokens_seen', 0):,} tokens seen, {loop.get('step', 0):,} optimizer steps, "
         f"{len(val)} epoch(s) validated; exported from `checkpoints/{which}.pt`"),
        (f"- **Validation loss**: {val[-1]:.4f} nats/token at this checkpoint" if val else
         "- **Validation loss**: none yet (no epoch finished)"),
    ]
    if best is not None:
        lines.append(f"- **Best validation loss** of the run: {best:.4f} (epoch {stopping.get('best_epoch')})")
    lines += ["", "Trained with a command equivalent to:", "", "```", command_line, "```", "",
              "Load it with `transformers`:", "", "```python",
              "from transformers import AutoTokenizer, GPT2LMHeadModel",
              "model = GPT2LMHeadModel.from_pretrained(FOLDER)",
              "tokenizer = AutoTokenizer.from_pretrained(FOLDER)", "```", ""]
    return "\n".join(lines)


def _write(folder: Path, name: str, text: str) -> None:
    with open(folder / name, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def _fill(tmp: Path, state: dict[str, Any], run_dir: Path, which: str, command_line: str) -> None:
    from safetensors.torch import save_file

    cfg = RunConfig.from_dict(state["config"])
    weights = state["model"]
    rows = weights["token_embedding.weight"].shape[0]  # the weights say how many tokens the model knows
    cfg = cfg.replace(model=replace(cfg.model, vocab_size=rows))
    tokenizer = tokenizer_from_record(state, run_dir)
    if tokenizer.size > rows:
        raise UserError(f"the run's tokenizer has {tokenizer.size} tokens but its model only {rows}",
                        "export a run written whole by tui-trainer")
    m = cfg.model
    gpt2 = to_gpt2_state_dict(weights)
    config = gpt2_config(m.n_layer, m.n_head, m.n_embd, m.block_size, rows, m.gelu, m.dropout,
                         end_of_text_id(tokenizer))
    _write(tmp, "config.json", json.dumps(config, indent=2) + "\n")
    save_file(gpt2, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~umask)  # safetensors writes 0600; the folder's other files follow the umask
    for name, text in tokenizer_files(tokenizer, m.block_size).items():
        _write(tmp, name, text)
    parameters = sum(t.numel() for t in gpt2.values())
    _write(tmp, "README.md", model_card(state, cfg, which, command_line, parameters))


def export_hf(run_dir: str | Path, out_dir: str | Path, which: str = "best", overwrite: bool = False,
              command_line: str = "") -> Exported:
    """Write the run's ``which`` checkpoint as a Hugging Face GPT-2 folder at ``out_dir``."""
    started = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir).expanduser().absolute()
    check_out_dir(out_dir, overwrite)
    if out_dir == run_dir.absolute() or out_dir in run_dir.absolute().parents or (out_dir / MARKER_FILE).exists():
        raise UserError(f"--hf {out_dir} would replace a run dir", "pass --hf a folder of its own, e.g. exported/")
    path = run_checkpoint(run_dir, which)
    state = ckpt.load_checkpoint(path)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    aside = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _fill(tmp, state, run_dir, which, command_line)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        if out_dir.exists():
            out_dir.rename(aside)  # (check_out_dir allowed it: empty, or --overwrite)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists() and not out_dir.exists():
            aside.rename(out_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return Exported(out_dir, path, sizes, time.perf_counter() - started)
