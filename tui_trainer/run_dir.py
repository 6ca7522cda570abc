"""The run directory's life: what it holds, creating/refusing/overwriting it, resuming from
it (the checkpoint's config merged with the user's flags, a finished run refused, metrics a
crash left beyond the checkpoint trimmed, ``--accum`` turned into a pending change), and its
``config.json``. Everything here runs before or around the loop, never inside it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import checkpoint as ckpt
from .config import RunConfig
from .data import Corpus, Vocabulary
from .errors import UserError
from .metrics import METRICS_FILE

if TYPE_CHECKING:
    from .loop_state import LoopState

CONFIG_FILE = "config.json"
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, ckpt.CHECKPOINT_DIR)
# Flags a resumed run may change: they steer the rest of the run, not what it has learnt so far.
SAFE_RESUME_OVERRIDES = frozenset({
    "train.epochs", "train.patience", "train.min_delta", "train.device", "train.threads",
    "train.checkpoint_every", "train.max_bad_steps", "train.compile", "train.precision",
    "data.limit_train_batches", "data.limit_val_batches"})


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_dir_holds(run_dir: Path) -> str:
    """What a run dir holds: "checkpoint" (a resumable run), "steps" (a run that logged steps but
    died before its first save), "set-up" (a run that never took a step, e.g. killed while it
    built its model) or "" (nothing of a run)."""
    if ckpt.checkpoint_path(run_dir).is_file():
        return "checkpoint"
    metrics = run_dir / METRICS_FILE
    saved = run_dir / ckpt.CHECKPOINT_DIR
    if (metrics.is_file() and _has_records(metrics)) or (saved.is_dir() and any(saved.glob("*.pt"))):
        return "steps"  # (a `best.pt` without `latest.pt`: killed between the two saves of an epoch's end)
    if any((run_dir / marker).exists() for marker in RUN_MARKERS):
        return "set-up"
    return ""


def _has_records(metrics: Path) -> bool:
    with metrics.open("rb") as handle:
        return bool(handle.read(4096).strip())


# -- resuming -------------------------------------------------------------------------------------

def load_resumable(resume: str | Path) -> dict[str, Any]:
    """The checkpoint of a run dir given to ``--resume``; a run that never saved one is refused."""
    held = run_dir_holds(Path(resume))
    if held in ("steps", "set-up"):
        raise UserError(f"run dir {resume} has no checkpoint: the run stopped before its first save",
                        f"start it again with --run-dir {resume}" + (" --overwrite" if held == "steps" else ""))
    return ckpt.load_checkpoint(ckpt.checkpoint_path(resume))


def merge_resume_config(state: dict, overrides: dict[str, Any], run_dir: Path, notes: list[str]) -> RunConfig:
    """The checkpoint's config, with the safe overrides the user gave (each noted); contradictions refused."""
    saved = RunConfig.from_dict(state["config"])
    merged = saved.replace(run_dir=str(run_dir))
    for key, value in overrides.items():
        section, name = key.split(".")
        old = getattr(getattr(saved, section), name)
        if key == "train.accum" and not 1 <= value <= 1024:
            raise UserError(f"--accum must be between 1 and 1024, got {value}", "use e.g. --accum 8")
        if key in ("data.path", "train.accum"):
            continue  # the data is checked by content hash once loaded; --accum becomes a pending change
        if value == old:
            continue
        if key not in SAFE_RESUME_OVERRIDES:
            raise UserError(f"--{name.replace('_', '-')} {value} contradicts the checkpoint ({old})",
                            f"drop --{name.replace('_', '-')} when resuming, or start a new run")
        merged = merged.replace(**{section: replace(getattr(merged, section), **{name: value})})
        notes.append(f"--{name.replace('_', '-')} {value} overrides the checkpoint's {old}")
    if "data.path" in overrides:
        merged = merged.replace(data=replace(merged.data, path=overrides["data.path"]))
    return merged


def refuse_a_finished_run(state: dict, cfg: RunConfig) -> None:
    """Resuming a run that already ended is refused before anything in its run dir changes."""
    epoch = state["loop"]["epoch"]
    if epoch > cfg.train.epochs:
        raise UserError(f"this run already finished {epoch - 1} epochs", "pass a larger --epochs to train longer")
    waited = state["early_stopping"]["epochs_without_improvement"]
    if cfg.train.patience and waited >= cfg.train.patience:
        raise UserError(f"this run stopped early: val loss did not improve for {waited} epochs "
                        f"(patience {cfg.train.patience})",
                        f"pass --patience {waited + 1} or more (0 = off) to train on")


def trim_metrics_after(run_dir: Path, step: int, epochs_done: int) -> None:
    """Drop records a crash left beyond the checkpoint, so a resumed run never repeats a step."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if record.get("type") == "step" and record.get("step", 0) > step:
            continue
        if record.get("type") == "epoch" and record.get("epoch", 0) > epochs_done:
            continue
        kept.append(line)
    tmp = path.with_name(f".{METRICS_FILE}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def pending_accum_note(st: LoopState) -> str | None:
    """The note a resumed run shows when its checkpoint carries an accum change not yet applied."""
    if st.pending_accum is None:
        return None
    epoch = st.pending_accum_epoch or (st.epoch if st.example_cursor == 0 else st.epoch + 1)
    return f"accum {st.accum} -> {st.pending_accum} is pending, for epoch {epoch}"


def accum_given_with_resume(st: LoopState, accum: int | None, epochs: int, notes: list[str]) -> int | None:
    """``--accum`` with ``--resume`` is a press of +/-: a change at the next epoch boundary (at
    this one when the run stopped at the start of an epoch), or the cancelling of one pending.
    Returns the accum to request once the run starts, or None for nothing to do."""
    if accum is None:
        return None
    at_boundary = st.example_cursor == 0
    epoch = st.epoch if at_boundary else st.epoch + 1
    if accum == st.accum:
        if st.pending_accum is None:
            return None
        notes.append(f"--accum {accum} cancels the pending change to {st.pending_accum}")
    elif st.pending_accum == accum and (st.pending_accum_epoch or epoch) == epoch:
        return None  # already pending, for that very boundary
    elif at_boundary:
        notes.append(f"--accum {accum} replaces accum {st.accum} now (the run resumes at an epoch boundary)")
    elif st.epoch >= epochs:
        notes.append(f"--accum {accum} would replace accum {st.accum} at the start of epoch {st.epoch + 1}, "
                     f"but this is the last epoch (pass a larger --epochs to get there)")
    else:
        notes.append(f"--accum {accum} replaces accum {st.accum} at the start of epoch {st.epoch + 1}")
    return accum


# -- a new run --------------------------------------------------------------------------------------

def prepare_run_dir(cfg: RunConfig, resume: str | Path | None, overwrite: bool, notes: list[str]) -> Path:
    """The run dir, created and writable: a resumed one as it is; a new one refused when it holds a
    run (unless ``overwrite``), cleared of a run that never took a step."""
    run_dir = Path(resume) if resume is not None else Path(cfg.run_dir) if cfg.run_dir else default_run_dir()
    if resume is None and run_dir.exists():
        if not run_dir.is_dir():
            raise UserError(f"run dir {run_dir} exists and is not a directory", "pass another --run-dir")
        held = run_dir_holds(run_dir)
        if held == "checkpoint" and not overwrite:
            raise UserError(f"run dir {run_dir} already holds a run",
                            f"use --resume {run_dir} to continue it, --overwrite to replace it, or another --run-dir")
        if held == "steps" and not overwrite:
            raise UserError(f"run dir {run_dir} holds a run that stopped before its first checkpoint",
                            f"use --overwrite to start it again, or another --run-dir")
        if held == "set-up":
            notes.append(f"{run_dir} held a run that never took a step: starting it again")
        if held:
            for marker in RUN_MARKERS:
                target = run_dir / marker
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run dir {run_dir}: {exc.strerror}", "pass a writable --run-dir") from None
    if not os.access(run_dir, os.W_OK):
        raise UserError(f"run dir {run_dir} is not writable", "pass a writable --run-dir")
    return run_dir


def write_config(run_dir: Path, cfg: RunConfig, corpus: Corpus, device: torch.device, threads: int,
                 precision: str) -> None:
    """``config.json``: the run's config and vocabulary, written atomically before the first step."""
    record = {"config": cfg.to_dict(), "vocab": list(corpus.vocab.chars),
              "data_path": corpus.path, "data_sha256": corpus.sha256,
              "device": str(device), "threads": threads, "precision": precision, "torch": torch.__version__}
    tmp = run_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False))
    os.replace(tmp, run_dir / CONFIG_FILE)


def vocabulary_of(run_dir: str | Path) -> Vocabulary:
    record = json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    return Vocabulary(tuple(record["vocab"]))
