"""The run directory's life: what it holds, creating/refusing/overwriting it, resuming from
it (the checkpoint's config merged with the user's flags, a finished run refused, metrics a
crash left beyond the checkpoint trimmed, ``--accum`` turned into a pending change), and its
``config.json``. Everything here runs before or around the loop, never inside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from tui_trainer.config import ACCUM_MAX, ACCUM_MIN, RunConfig
from tui_trainer.data.dataset import Corpus
from tui_trainer.data.text_source import find_source
from tui_trainer.errors import UserError
from tui_trainer.events import EpochEvent, RunEnded, SampleEvent, StepEvent
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir.files import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    SET_ASIDE_FILE,
    TENSORBOARD_DIR,
    TOKENIZER_FILE,
    temp_name,
)
from tui_trainer.rundir.lock import RunLock, refuse_if_in_use
from tui_trainer.rundir.ownership import foreign_name, has_marker, remove_our_files, write_marker
from tui_trainer.rundir.paths import make_run_dir, probe_checkpoint_dir, remove_made_folders
from tui_trainer.rundir.reader import read_metrics_file
from tui_trainer.rundir.summary import folder_of_runs_error
from tui_trainer.rundir.tokenizer_record import vocab_record

if TYPE_CHECKING:
    from tui_trainer.rundir.loop_state import LoopState

RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR, TENSORBOARD_DIR)  # (--overwrite removes these)
# Flags a resumed run may change: they steer the rest of the run, not what it has learnt so far.
SAFE_RESUME_OVERRIDES = frozenset({
    "train.epochs", "train.patience", "train.min_delta", "train.device", "train.threads",
    "train.checkpoint_every", "train.max_bad_steps", "train.compile", "train.sample_tokens",
    "train.noise_scale", "train.auto_accum", "train.log_every", "train.precision",
    "data.limit_train_batches", "data.limit_val_batches", "data.cache_dir", "optim.resume_schedule",
    "train.checkpoint_activations", "train.memory_budget"})  # (memory and speed: the same losses)


def data_size(path: str) -> int | None:
    """The data's size in bytes (recorded, so a changed file can be described): a file's, or the
    total of the *.txt files a folder holds (the ones the data loader reads; never the size of the
    directory entry itself); None if unknown."""
    try:
        if not os.path.isdir(path):
            return os.path.getsize(path)
        return sum(file.stat().st_size for file in find_source(Path(path)).files)
    except (OSError, UserError):
        return None


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_dir_holds(run_dir: Path) -> str:
    """What a run dir holds: "checkpoint" (a resumable run), "steps" (a run that logged steps but
    died before its first save), "set-up" (a run that never took a step, e.g. killed while it
    built its model) or "" (nothing of a run)."""
    if ckpt.checkpoint_path(run_dir).is_file():
        return "checkpoint"
    metrics = run_dir / METRICS_FILE
    saved = run_dir / CHECKPOINT_DIR
    if (metrics.is_file() and _has_records(metrics)) or (saved.is_dir() and any(saved.glob("*.pt"))):
        return "steps"  # (a `best.pt` without `latest.pt`: killed between the two saves of an epoch's end)
    if any((run_dir / marker).exists() for marker in RUN_MARKERS):
        return "set-up"
    return ""


def refuse_a_held_run(run_dir: Path, held: str, overwrite: bool) -> None:
    """A new run in a dir that holds one (``held``: run_dir_holds) is refused unless ``overwrite``."""
    if held == "checkpoint" and not overwrite:
        raise UserError(f"run dir {run_dir} already holds a run",
                        f"use --resume {run_dir} to continue it, --overwrite to replace it, or another --run-dir")
    if held == "steps" and not overwrite:
        raise UserError(f"run dir {run_dir} holds a run that stopped before its first checkpoint",
                        "use --overwrite to start it again, or another --run-dir")


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
    if not held and (folder_of_runs := folder_of_runs_error(Path(resume))):
        raise folder_of_runs  # `--resume runs`: the runs inside named, not "no checkpoint at runs/checkpoints/…"
    return ckpt.load_checkpoint(ckpt.checkpoint_path(resume))


def merge_resume_config(state: dict, overrides: dict[str, Any], run_dir: Path, notes: list[str]) -> RunConfig:
    """The checkpoint's config, with the safe overrides the user gave (each noted); contradictions refused."""
    saved = RunConfig.from_dict(state["config"])
    merged = saved.replace(run_dir=str(run_dir))
    if saved.train.time_budget is not None and "train.epochs" in overrides:
        raise UserError("--epochs contradicts the checkpoint: this run trains for its --time-budget",
                        "drop --epochs when resuming it (its plan is kept)")
    for key, value in overrides.items():
        section, name = key.split(".")
        old = getattr(getattr(saved, section), name)
        if key == "train.accum" and not ACCUM_MIN <= value <= ACCUM_MAX:
            raise UserError(f"--accum must be between {ACCUM_MIN} and {ACCUM_MAX}, got {value}", "use e.g. --accum 8")
        if key in ("data.path", "train.accum"):
            continue  # the data is checked by content hash once loaded; --accum becomes a pending change
        if value == old:
            continue
        if key == "train.micro_batch" and value == "auto":  # a resume keeps the split its run measured
            notes.append(f"a resumed run keeps its split: micro-batch {old} (auto was measured at its start)")
            continue
        if key not in SAFE_RESUME_OVERRIDES:
            raise UserError(f"--{name.replace('_', '-')} {value} contradicts the checkpoint "
                            f"({old if old is not None else 'left at its default'})",
                            f"drop --{name.replace('_', '-')} when resuming, or start a new run")
        merged = merged.replace(**{section: replace(getattr(merged, section), **{name: value})})
        flag = f"--{name.replace('_', '-')}"
        # A None in the checkpoint is a setting left at its default: say so, not "None".
        notes.append(f"{flag} {value} overrides the checkpoint's {old}" if old is not None else
                     f"{flag} {value} is set (the checkpoint left it at its default)")
    if "data.path" in overrides:
        merged = merged.replace(data=replace(merged.data, path=overrides["data.path"]))
    return merged


# -- a resumed run whose training is already done ------------------------------------------------
# Finished and recorded: refused. Finished but never recorded (a stop during the last epoch's
# validation or final save in an older version, a kill between that save and the `end` record):
# resuming records exactly that end.

FINISHED = ("completed", "early_stop")


def finished_by(state: dict[str, Any], cfg: RunConfig) -> str | None:
    """How the checkpoint's run has ended with these settings: "completed" (past its last epoch),
    "early_stop" (patience used up), or None (there is training left to do)."""
    budget = state["loop"].get("time_budget")  # --time-budget: its plan's tokens trained
    if budget is not None:
        planned = budget.get("planned_tokens")
        if planned is not None and state["loop"]["tokens_seen"] >= planned and state["loop"]["example_cursor"] == 0:
            return "completed"
    elif state["loop"]["epoch"] > cfg.train.epochs:
        return "completed"
    waited = state["early_stopping"]["epochs_without_improvement"]
    if cfg.train.patience and waited >= cfg.train.patience:
        return "early_stop"
    return None


def last_end_record(run_dir: Path) -> str | None:
    """The reason of the last `end` record in metrics.jsonl, if no step or epoch came after it
    (bad lines are passed over here: the resume's trim names them)."""
    for event in reversed(read_metrics_file(run_dir).events):
        if isinstance(event, RunEnded):
            return event.reason
        if isinstance(event, (StepEvent, EpochEvent)):
            return None
    return None


def refuse_or_finish(state: dict[str, Any], cfg: RunConfig, run_dir: Path) -> str | None:
    """Refuse to resume a run that ended and says so; return the end a resume still owes to one
    that finished without recording it (None: a run with training left)."""
    finished = finished_by(state, cfg)
    if finished is None or last_end_record(run_dir) not in FINISHED:
        return finished
    epoch = state["loop"]["epoch"]
    if finished == "completed":
        if state["loop"].get("time_budget") is not None:
            raise UserError(f"this run already spent its time budget ({epoch - 1} epochs)",
                            "start a new run (--init-from this run dir starts from its weights)")
        raise UserError(f"this run already finished {epoch - 1} epochs", "pass a larger --epochs to train longer")
    waited = state["early_stopping"]["epochs_without_improvement"]
    raise UserError(f"this run stopped early: val loss did not improve for {waited} epochs "
                    f"(patience {cfg.train.patience})",
                    f"pass --patience {waited + 1} or more (0 = off) to train on")


def data_changed(path: str, sha256: str, size: int | None, saved: dict[str, Any]) -> UserError:
    """The data a resume found is not the data the run trained on: what changed, and what can be done
    (never "resume with --data X" naming X itself)."""
    then_path, then_sha = saved.get("data_path"), saved["data_sha256"]
    then_size = saved.get("data_bytes")
    sizes = f"{then_size:,} bytes then, {size:,} now; " if isinstance(then_size, int) and size is not None else ""
    hashes = f"SHA-256 {then_sha[:12]}… then, {sha256[:12]}… now"
    same_file = then_path is None or _same(path, then_path)
    if same_file:
        return UserError(f"the data file {path} has changed since this run trained on it ({sizes}{hashes})",
                         f"put back the contents it had (SHA-256 {then_sha[:12]}…) and resume, or start a new run "
                         f"with another --run-dir")
    return UserError(f"the data file {path} is not the one this run trained on ({then_path}; {sizes}{hashes})",
                     f"drop --data to resume with {then_path}, or start a new run with another --run-dir")


def _same(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return a == b


def trim_metrics_after(run_dir: Path, step: int, epochs_done: int, notes: list[str] | None = None) -> None:
    """Drop records a crash left beyond the checkpoint, so a resumed run never repeats a step.

    The metrics are a log and the checkpoint is the truth: damaged lines never stop a resume, and
    are never deleted either. A torn last line (a crash mid-write) goes; any other line that is not
    a record moves to metrics.set-aside.jsonl, and ``notes`` says which."""
    metrics = read_metrics_file(run_dir)
    if not metrics.lines and not metrics.torn:
        return
    aside = metrics.bad
    kept = [line.raw for line in metrics.lines
            if line.problem is None and line.raw.strip() and not _beyond(line.event, step, epochs_done)]
    path = Path(run_dir) / METRICS_FILE
    if aside:
        with open(Path(run_dir) / SET_ASIDE_FILE, "ab") as handle:  # (appended: an earlier resume's stay)
            handle.write(b"".join(line.raw + b"\n" for line in aside))
            handle.flush()
            os.fsync(handle.fileno())
        if notes is not None:
            notes.append(f"{path}: {metrics.bad_summary()} set aside in {SET_ASIDE_FILE} (not metrics records)")
    tmp = path.with_name(temp_name(METRICS_FILE))
    tmp.write_bytes(b"".join(raw + b"\n" for raw in kept))
    os.replace(tmp, path)


def _beyond(event: object, step: int, epochs_done: int) -> bool:
    """A record of a step or epoch after the checkpoint's (a crash wrote it; the resume redoes it)."""
    if isinstance(event, (StepEvent, SampleEvent)):
        return event.step > step
    return isinstance(event, EpochEvent) and event.epoch > epochs_done


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

def lock_run_dir(run_dir: Path) -> RunLock:
    """The run dir's one-writer lock, taken (UserError naming the live holder when it is held)."""
    return RunLock(run_dir)


def refuse_a_run_dir_in_use(run_dir: str | Path) -> None:
    """UserError when a live process trains in ``run_dir``; reads only."""
    refuse_if_in_use(Path(run_dir))


def prepare_run_dir(cfg: RunConfig, resume: str | Path | None, overwrite: bool, notes: list[str],
                    made: list[Path] | None = None, *, take_lock: Callable[[Path], Any] | None = None) -> Path:
    """The run dir, created, marked as ours and writable (its checkpoints/ too): a resumed one as it
    is; a new one refused when it holds anything of our names that is not provably ours
    (ownership.py), or a run (unless ``overwrite``); cleared of a run that never took a step.
    ``take_lock(run_dir)`` is called before anything in it is written (and refuses a dir another
    process trains in). The folders it makes are added to ``made`` (for a set-up that fails later
    to remove again)."""
    run_dir = Path(resume) if resume is not None else Path(cfg.run_dir) if cfg.run_dir else default_run_dir()
    locked = False
    if run_dir.is_dir():
        refuse_a_run_dir_in_use(run_dir)
    if resume is None and run_dir.exists():
        if not run_dir.is_dir():
            raise UserError(f"run dir {run_dir} exists and is not a directory", "pass another --run-dir")
        foreign = foreign_name(run_dir)
        if foreign is not None:
            article = "an" if foreign.lstrip(".")[:1] in "aeiou" else "a"
            raise UserError(f"run dir {run_dir} holds {article} {foreign} not written by tui-trainer",
                            f"pass another --run-dir (nothing in {run_dir} was touched)")
        held = run_dir_holds(run_dir)
        refuse_a_held_run(run_dir, held, overwrite)
        if held == "set-up":
            notes.append(f"{run_dir} held a run that never took a step: starting it again")
        if held and take_lock is not None:
            take_lock(run_dir)
            locked = True
        if held:
            remove_our_files(run_dir)  # file by file: what the user put beside them stays
    new_folders = make_run_dir(run_dir)
    try:
        if not os.access(run_dir, os.W_OK):
            raise UserError(f"run dir {run_dir} is not writable", "pass a writable --run-dir")
        if take_lock is not None and not locked:
            take_lock(run_dir)
        probe_checkpoint_dir(run_dir)  # found now, not when the first save fails after the whole run
        if not has_marker(run_dir):
            write_marker(run_dir)  # a new run; or an older version's run dir, ours from now on
    except (UserError, OSError) as exc:
        if resume is None:
            remove_new_run(run_dir, new_folders)
        if isinstance(exc, UserError):
            raise
        raise UserError(f"run dir {run_dir} is not writable: {exc.strerror}", "pass a writable --run-dir") from None
    if made is not None:
        made.extend(new_folders)
    return run_dir


def remove_new_run(run_dir: Path, made: list[Path]) -> None:
    """Undo a new run whose set-up failed: its files (its lock file too: the run never started), and
    the folders it made (if nothing else is in them)."""
    remove_our_files(run_dir)
    lock = run_dir / LOCK_FILE
    if lock.is_file():
        lock.unlink()
    remove_made_folders(made)


def write_config(run_dir: Path, cfg: RunConfig, corpus: Corpus, device: torch.device, threads: int,
                 precision: str = "fp32", world_size: int = 1, memory: dict | None = None) -> None:
    """``config.json``: the run's config and vocabulary, written atomically before the first step."""
    corpus.vocab.save(run_dir)  # a BPE run's tokenizer.json (nothing for char: `vocab` holds it)
    record = {"config": cfg.to_dict(), "vocab": vocab_record(corpus.vocab), "tokenizer": corpus.vocab.record(),
              "data_path": corpus.path, "data_sha256": corpus.sha256, "data_bytes": data_size(corpus.path),
              "device": str(device), "threads": threads, "precision": precision, "world_size": world_size,
              "torch": torch.__version__}
    if memory is not None:  # how the micro-batch was chosen (engine/split.py)
        record["memory"] = memory
    tmp = run_dir / temp_name(CONFIG_FILE)
    # ASCII JSON (non-ASCII as \u escapes) in UTF-8, never the locale's encoding: a path with bytes
    # that are not valid in the file system's encoding (a surrogate in Python) round-trips too.
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, run_dir / CONFIG_FILE)


def refuse_a_foreign_tokenizer_file(run_dir: Path, overwrite: bool) -> None:
    """A BPE run writes RUN_DIR/tokenizer.json: a file of that name that is not a run's own (say,
    a Hugging Face model folder given as --run-dir) is never overwritten."""
    if not (run_dir / TOKENIZER_FILE).exists():
        return
    held = run_dir_holds(run_dir)
    refuse_a_held_run(run_dir, held, overwrite)  # (the run's own tokenizer.json: the same word as a char run's)
    if not held:
        raise UserError(f"run dir {run_dir} holds a {TOKENIZER_FILE} that is not a tui-trainer run's",
                        "pass another --run-dir (a BPE run keeps its tokenizer there)")
