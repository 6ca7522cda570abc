"""The training loop: ``Trainer(cfg, sink, control).run()``. No Textual import, ever.

Read it top to bottom: set-up (data, device, model, optimizer, run dir), then epochs of
optimizer-step windows (accumulation.py does one window), validation, diagnosis, early
stopping and checkpoints at each epoch's end. The engine emits events (events.py) to a
sink and reads commands (control.py) between micro-steps.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from .accumulation import WindowAborted, accumulate_window
from .config import RunConfig, validate
from .control import Control, SaveCheckpoint, SetAccum, SetPaused, TogglePause
from .data import (Corpus, Vocabulary, WindowDataset, epoch_examples, load_corpus, plan_windows, val_batches,
                   window_count)
from .diagnosis import Diagnosis, diagnose, step_verdict, val_rise_warning
from .early_stopping import EarlyStopping
from .errors import UserError
from .events import (AccumChangeApplied, AccumChangeRequested, CheckpointFailed, CheckpointSaved, DiagnosisEvent,
                     EpochEvent,
                     FanOut, MicroStep, Notice, Paused, Resumed, RunEnded, RunStarted, Sink, StepEvent)
from .memory import check_fits
from .metrics import METRICS_FILE, MetricsWriter
from .model import GPT, make_optimizer
from .precision import resume_precision
from .schedule import lr_at

CONFIG_FILE = "config.json"
DEFAULT_CHECKPOINT_SECONDS = 300.0  # `latest` every ~5 minutes when --checkpoint-every is not given
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, ckpt.CHECKPOINT_DIR)


# -- devices and threads --------------------------------------------------------------------

def pick_device(name: str) -> torch.device:
    """``auto`` = cuda, then mps, then cpu; an explicit name must exist on this machine."""
    name = (name or "auto").strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device '{name}'", "use --device auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but CUDA is not available here",
                            "use --device auto or --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices",
                            "use --device cuda:0")
        return device
    if device.type == "mps":
        if not mps_ok:
            raise UserError("--device mps was asked for but MPS is not available here", "use --device auto or cpu")
        return device
    raise UserError(f"unsupported device '{name}'", "use --device auto, cpu, cuda, cuda:N or mps")


def choose_threads(requested: int | None, for_ui: bool) -> int:
    """CPU threads for torch: all cores headless; with the app on a machine of 4+ cores,
    one core is left for the UI (on 2 cores the UI's share is too small to pay for a core)."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1) if for_ui and cores >= 4 else max(1, cores)


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


# -- RNG state ----------------------------------------------------------------------------------

def capture_rng(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# -- loop state (what a checkpoint needs to resume exactly) ------------------------------------

@dataclass
class LoopState:
    epoch: int = 1  # the epoch in progress (1-based)
    example_cursor: int = 0  # examples of this epoch already consumed (always at a window boundary)
    step: int = 0  # optimizer steps done in the whole run
    tokens_seen: int = 0
    accum: int = 8
    pending_accum: int | None = None  # applied at the start of the next epoch
    pending_accum_epoch: int | None = None  # that epoch (a stop in this epoch's first window must not apply it early)
    epoch_loss_sum: float = 0.0  # token-weighted train loss of the epoch so far
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    epoch_step_losses: list = field(default_factory=list)
    epoch_first_step: int = 1
    train_history: list = field(default_factory=list)
    val_history: list = field(default_factory=list)
    bad_steps_in_row: int = 0
    bad_steps_total: int = 0
    finished: str | None = None  # end reason once the run is over
    elapsed_seconds: float = 0.0  # wall time of the run at its last save, earlier sessions included
    last_verdict: list | None = None  # [kind, reason] of the latest diagnosis, at the last save


# -- the trainer --------------------------------------------------------------------------------

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


class Trainer:
    """Set up with ``Trainer(cfg, sink, control)`` (raises UserError on bad input, writing
    nothing), then ``run()`` → the ``RunEnded`` event."""

    def __init__(self, cfg: RunConfig, sink: Sink | None = None, control: Control | None = None, *,
                 resume: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 overwrite: bool = False, for_ui: bool = False, inject_nan_steps: frozenset[int] = frozenset()):
        self.control = control or Control()
        self.for_ui = for_ui  # someone can press `s` to retry a failed final save
        self.inject_nan_steps = inject_nan_steps  # test hook: poison these steps' loss with NaN
        self.notes: list[str] = []
        resume_state = None
        if resume is not None:
            held = run_dir_holds(Path(resume))
            if held in ("steps", "set-up"):
                raise UserError(f"run dir {resume} has no checkpoint: the run stopped before its first save",
                                f"start it again with --run-dir {resume}" + (" --overwrite" if held == "steps" else ""))
            resume_state = ckpt.load_checkpoint(ckpt.checkpoint_path(resume))
            cfg = self._merge_resume_config(resume_state, cfg, overrides or {}, Path(resume), self.notes)
            self._refuse_a_finished_run(resume_state, cfg)
        self.cfg = cfg = validate(cfg)
        self.device = pick_device(cfg.train.device)
        self.threads = choose_threads(cfg.train.threads, for_ui)
        torch.set_num_threads(self.threads)
        self.corpus: Corpus = load_corpus(cfg.data, cfg.model.block_size)
        if resume_state is not None and resume_state["data_sha256"] != self.corpus.sha256:
            raise UserError(f"the data file {self.corpus.path} differs from the one this run was trained on",
                            f"resume with --data {resume_state['data_path']} (same contents)")
        self.cfg = cfg = cfg.replace(model=replace(cfg.model, vocab_size=self.corpus.vocab.size))
        # The forward's autocast dtype (None = fp32); a resume keeps the checkpoint's precision unless told.
        self.precision, self.autocast_dtype, note = resume_precision(
            cfg.train.precision, self.device, resume_state.get("precision") if resume_state else None,
            resuming=resume_state is not None, explicit="train.precision" in (overrides or {}))
        self.notes += [note] if note else []
        train_windows = window_count(len(self.corpus.train_tokens), cfg.model.block_size)
        if cfg.train.micro_batch > train_windows:
            raise UserError(f"--micro-batch {cfg.train.micro_batch} is more than the {train_windows:,} training "
                            f"sequences of {cfg.model.block_size} tokens this data holds",
                            f"use --micro-batch {train_windows} or less (and --accum for a larger effective batch)")
        check_fits(cfg, self.device, train_windows=train_windows, autocast_bf16=self.autocast_dtype is not None)
        self.run_dir = self._prepare_run_dir(cfg, resume, overwrite)

        # Everything below follows validation: only now is the run dir written to.
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.model = GPT(cfg.model).to(self.device)
        self.train_model = torch.compile(self.model) if cfg.train.compile else self.model
        self.optimizer = make_optimizer(self.model, cfg.optim.lr, cfg.optim.weight_decay,
                                        (cfg.optim.beta1, cfg.optim.beta2), self.device.type)
        self.train_set = WindowDataset(self.corpus.train_tokens, cfg.model.block_size, self.device)
        self.val_set = WindowDataset(self.corpus.val_tokens, cfg.model.block_size, self.device)
        self.early_stopping = EarlyStopping(cfg.train.patience, cfg.train.min_delta)
        self.state = LoopState(accum=cfg.train.accum)
        self._resume_accum: int | None = None  # --accum given with --resume: a change at the next epoch boundary
        if resume_state is not None:
            self._load_resume_state(resume_state)
            self._resume_accum = self._accum_given_with_resume((overrides or {}).get("train.accum"))
        else:
            self._write_config()
        self.metrics = MetricsWriter(self.run_dir)
        self.sink = FanOut(self.metrics, sink)
        self._paused = False
        self._save_requested = False
        self._last_save_time = self._session_started = time.monotonic()
        # (epoch, cursor, step) of the `latest` checkpoint on disk, if any
        self._latest_saved = (self.state.epoch, self.state.example_cursor, self.state.step) if resume_state else None
        self._save_error = ""
        self._window_rng: dict[str, Any] | None = None
        self._step_alerted_epoch = 0  # one live spike/divergence alert per epoch, not one per step
        # The verdict so far (a resumed run's `end` record carries one even if it stops at once).
        self.last_diagnosis: Diagnosis | None = Diagnosis(*self.state.last_verdict) if self.state.last_verdict else None
        self.error: BaseException | None = None

    # -- set-up helpers -------------------------------------------------------------------------

    @staticmethod
    def _merge_resume_config(state: dict, cfg: RunConfig, overrides: dict[str, Any], run_dir: Path,
                             notes: list[str]) -> RunConfig:
        """The checkpoint's config, with the safe overrides the user gave (each noted); contradictions refused."""
        saved = RunConfig.from_dict(state["config"])
        safe = {"train.epochs", "train.patience", "train.min_delta", "train.device", "train.threads",
                "train.checkpoint_every", "train.max_bad_steps", "train.compile", "train.precision",
                "data.limit_train_batches", "data.limit_val_batches"}
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
            if key not in safe:
                raise UserError(f"--{name.replace('_', '-')} {value} contradicts the checkpoint ({old})",
                                f"drop --{name.replace('_', '-')} when resuming, or start a new run")
            merged = merged.replace(**{section: replace(getattr(merged, section), **{name: value})})
            notes.append(f"--{name.replace('_', '-')} {value} overrides the checkpoint's {old}")
        if "data.path" in overrides:
            merged = merged.replace(data=replace(merged.data, path=overrides["data.path"]))
        return merged

    @staticmethod
    def _refuse_a_finished_run(state: dict, cfg: RunConfig) -> None:
        """Resuming a run that already ended is refused before anything in its run dir changes."""
        epoch = state["loop"]["epoch"]
        if epoch > cfg.train.epochs:
            raise UserError(f"this run already finished {epoch - 1} epochs", "pass a larger --epochs to train longer")
        waited = state["early_stopping"]["epochs_without_improvement"]
        if cfg.train.patience and waited >= cfg.train.patience:
            raise UserError(f"this run stopped early: val loss did not improve for {waited} epochs "
                            f"(patience {cfg.train.patience})",
                            f"pass --patience {waited + 1} or more (0 = off) to train on")

    def _prepare_run_dir(self, cfg: RunConfig, resume: str | Path | None, overwrite: bool) -> Path:
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
                self.notes.append(f"{run_dir} held a run that never took a step: starting it again")
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

    def _write_config(self) -> None:
        record = {"config": self.cfg.to_dict(), "vocab": list(self.corpus.vocab.chars),
                  "data_path": self.corpus.path, "data_sha256": self.corpus.sha256,
                  "device": str(self.device), "threads": self.threads, "precision": self.precision,
                  "torch": torch.__version__}
        tmp = self.run_dir / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False))
        os.replace(tmp, self.run_dir / CONFIG_FILE)

    def _load_resume_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.state = LoopState(**state["loop"])
        self.state.finished = None
        restore_rng(state["rng"], self.device)
        self._trim_metrics_after(self.state.step, len(self.state.val_history))
        self.notes.append(f"resumed at epoch {self.state.epoch}, step {self.state.step}")
        st = self.state
        if st.pending_accum is not None:
            epoch = st.pending_accum_epoch or (st.epoch if st.example_cursor == 0 else st.epoch + 1)
            self.notes.append(f"accum {st.accum} -> {st.pending_accum} is pending, for epoch {epoch}")

    def _accum_given_with_resume(self, accum: int | None) -> int | None:
        """``--accum`` with ``--resume`` is a press of +/-: a change at the next epoch boundary (at
        this one when the run stopped at the start of an epoch), or the cancelling of one pending."""
        st = self.state
        if accum is None:
            return None
        at_boundary = st.example_cursor == 0
        epoch = st.epoch if at_boundary else st.epoch + 1
        if accum == st.accum:
            if st.pending_accum is None:
                return None
            self.notes.append(f"--accum {accum} cancels the pending change to {st.pending_accum}")
        elif st.pending_accum == accum and (st.pending_accum_epoch or epoch) == epoch:
            return None  # already pending, for that very boundary
        elif at_boundary:
            self.notes.append(f"--accum {accum} replaces accum {st.accum} now (the run resumes at an epoch boundary)")
        elif st.epoch >= self.cfg.train.epochs:
            self.notes.append(f"--accum {accum} would replace accum {st.accum} at the start of epoch {st.epoch + 1}, "
                              f"but this is the last epoch (pass a larger --epochs to get there)")
        else:
            self.notes.append(f"--accum {accum} replaces accum {st.accum} at the start of epoch {st.epoch + 1}")
        return accum

    def _trim_metrics_after(self, step: int, epochs_done: int) -> None:
        """Drop records a crash left beyond the checkpoint, so a resumed run never repeats a step."""
        path = self.run_dir / METRICS_FILE
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

    # -- derived figures ------------------------------------------------------------------------

    def _capped(self, examples: int, limit_batches: int | None) -> int:
        return min(examples, limit_batches * self.cfg.train.micro_batch) if limit_batches else examples

    def examples_per_epoch(self) -> int:
        return self._capped(len(self.train_set), self.cfg.data.limit_train_batches)

    def val_examples(self) -> int:
        """Examples one validation pass reads (``--limit-val-batches`` caps it)."""
        return self._capped(len(self.val_set), self.cfg.data.limit_val_batches)

    def planned_tokens(self) -> int:
        return self.cfg.train.epochs * self.examples_per_epoch() * self.cfg.model.block_size

    def warmup_tokens(self) -> int:
        """--warmup-tokens, or 5% of the run but at least 10 steps' worth (at most 20% of the run)."""
        explicit = self.cfg.optim.warmup_tokens
        if explicit is not None:
            return explicit
        planned = self.planned_tokens()
        ten_steps = 10 * self.cfg.train.micro_batch * self.cfg.train.accum * self.cfg.model.block_size
        return int(min(max(0.05 * planned, ten_steps), 0.2 * planned))

    def lr_for(self, tokens_seen: int) -> float:
        o = self.cfg.optim
        return lr_at(tokens_seen, o.lr, o.lr * o.min_lr_ratio, self.warmup_tokens(), self.planned_tokens())

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint_state(self, rng: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "loop": {**asdict(self.state), "elapsed_seconds": self.elapsed_seconds(),
                     "last_verdict": [self.last_diagnosis.kind, self.last_diagnosis.reason]
                     if self.last_diagnosis else None},
            "rng": rng if rng is not None else capture_rng(self.device),
            "config": self.cfg.to_dict(),
            "vocab": list(self.corpus.vocab.chars),
            "data_sha256": self.corpus.sha256,
            "data_path": self.corpus.path,
            "precision": self.precision,  # what the run trains in (a resume keeps it unless told)
        }

    def elapsed_seconds(self) -> float:
        """Wall time of the whole run so far: the earlier sessions (from the checkpoint) and this one."""
        return self.state.elapsed_seconds + time.monotonic() - self._session_started

    def save(self, kind: str, rng: dict[str, Any] | None = None) -> bool:
        path = ckpt.checkpoint_path(self.run_dir, kind)
        try:
            seconds = ckpt.save_atomic(self.checkpoint_state(rng), path)
        except ckpt.CheckpointWriteError as exc:
            self._save_error = str(exc.__cause__.strerror if isinstance(exc.__cause__, OSError) else exc)
            self.sink.emit(CheckpointFailed(kind, str(exc)))
            return False
        self._last_save_time = time.monotonic()
        if kind == "latest":
            self._latest_saved = (self.state.epoch, self.state.example_cursor, self.state.step)
        self.sink.emit(CheckpointSaved(kind, str(path), self.state.step, self.state.epoch, seconds))
        return True

    # -- commands -------------------------------------------------------------------------------

    def _handle_commands(self, wait: float | None = None) -> None:
        for command in self.control.drain(wait):
            if isinstance(command, SetAccum):
                self._request_accum(command.accum)
            elif isinstance(command, (TogglePause, SetPaused)):
                paused = not self._paused if isinstance(command, TogglePause) else command.paused
                if paused != self._paused:
                    self._paused = paused
                    self.sink.emit((Paused if paused else Resumed)(self.state.epoch, self.state.step))
            elif isinstance(command, SaveCheckpoint):
                self._save_requested = True

    def _request_accum(self, accum: int, at_this_boundary: bool = False) -> None:
        """A change of accumulation steps for the next epoch; with ``at_this_boundary`` (a resume
        at the start of an epoch) for the epoch about to start."""
        accum = max(1, min(1024, accum))
        current = self.state.accum
        target = None if accum == current else accum
        epoch = self.state.epoch if at_this_boundary else self.state.epoch + 1
        if target == self.state.pending_accum and (target is None or (self.state.pending_accum_epoch or epoch) == epoch):
            return
        self.state.pending_accum = target
        self.state.pending_accum_epoch = None if target is None else epoch
        self.sink.emit(AccumChangeRequested(current, accum, self.state.epoch, self.state.step, epoch))

    def _between_micro_steps(self, paused_seconds: list[float]) -> bool:
        """Called after every micro-step: commands, pause, stop. False = abandon the window."""
        self._handle_commands()
        if self._paused:
            started = time.perf_counter()
            while self._paused and not self.control.stop_requested:
                self._handle_commands(wait=0.1)
            paused_seconds[0] += time.perf_counter() - started
        return not self.control.stop_requested

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> RunEnded:
        try:
            end = self._run()
        except BaseException as exc:  # a bug or OOM: record it, keep what the run dir has
            self.error = exc
            message = f"{type(exc).__name__}: {exc}"
            try:
                (self.run_dir / "error.log").write_text(traceback.format_exc())
            except OSError:
                pass  # a full disk must not hide the error itself
            end = self._end("error", message)
        finally:
            self.metrics.close()
        return end

    def _end(self, reason: str, message: str = "") -> RunEnded:
        self.state.finished = reason
        event = RunEnded(reason, len(self.state.val_history), self.state.step, self.state.tokens_seen,
                         self.early_stopping.best if self.early_stopping.best_epoch else None,
                         self.early_stopping.best_epoch, message,
                         self.control.stop_signal if reason == "interrupted" else None,
                         self.last_diagnosis.kind if self.last_diagnosis else None,
                         self.last_diagnosis.reason if self.last_diagnosis else None)
        self.sink.emit(event)
        return event

    def _end_with_the_run_saved(self, reason: str, message: str = "",
                                then: Callable[[], None] | None = None) -> RunEnded:
        """End a finished run, but not with its final weights only in memory: when the last save
        failed (a full disk), the app can retry it with `s` (the engine waits for it here); a run
        whose final checkpoint is still not on disk ends as an error, so a script notices."""
        st = self.state
        saved = self._latest_saved == (st.epoch, st.example_cursor, st.step)
        if not saved and self.for_ui:
            self.sink.emit(Notice(f"the final checkpoint could not be saved ({self._save_error}): "
                                  "free some space and press s to retry, or q to leave without it", "error"))
            while not saved and not self.control.stop_requested:
                commands = self.control.drain(timeout=0.25)
                saved = any(isinstance(c, SaveCheckpoint) for c in commands) and self.save("latest")
        if saved:
            if then is not None:
                then()
            return self._end(reason, message)
        previous = (f"the last checkpoint on disk is from step {self._latest_saved[2]}" if self._latest_saved
                    else "no checkpoint is on disk")
        done = "finished" if reason == "completed" else "stopped early"
        return self._end("error", f"training {done} at step {st.step}, but its final checkpoint could not be saved "
                                  f"({self._save_error}); {previous}")

    def _interrupted(self, saved: bool, where: str) -> RunEnded:
        """End after a stop; the message says what a resume continues from."""
        if saved:
            return self._end("interrupted", f"stopped at {where}; continue with --resume {self.run_dir}")
        previous = ("no earlier checkpoint exists" if self._latest_saved is None else
                    f"the previous checkpoint (step {self._latest_saved[2]}) is intact")
        return self._end("interrupted", f"stopped at {where}, but the checkpoint could not be saved "
                                        f"({self._save_error}); {previous}")

    def _run(self) -> RunEnded:
        cfg, st = self.cfg, self.state
        self._session_started = time.monotonic()
        if st.epoch > cfg.train.epochs:
            raise UserError(f"this run already finished {cfg.train.epochs} epochs", "pass a larger --epochs to train longer")
        per_epoch, effective = self.examples_per_epoch(), cfg.train.micro_batch * st.accum
        if effective > per_epoch:
            self.notes.append(f"an epoch holds {per_epoch:,} sequences, fewer than the effective batch of "
                              f"{effective:,}: each epoch is one optimizer step of {per_epoch:,}")
        self.sink.emit(RunStarted(
            str(self.run_dir), str(self.device), self.threads, self.model.num_parameters(), self.corpus.vocab.size,
            self.examples_per_epoch(), self.val_examples(), cfg.train.epochs, cfg.train.micro_batch, st.accum, 1,
            cfg.model.block_size, self.planned_tokens(), st.step, st.epoch, st.tokens_seen, tuple(self.notes),
            st.elapsed_seconds, precision=self.precision))
        if self._resume_accum is not None:
            self._request_accum(self._resume_accum, at_this_boundary=st.example_cursor == 0)
            self._resume_accum = None
        self.model.train()
        while st.epoch <= cfg.train.epochs:
            if (st.example_cursor == 0 and st.pending_accum is not None
                    and st.epoch >= (st.pending_accum_epoch or st.epoch)):
                self.sink.emit(AccumChangeApplied(st.accum, st.pending_accum, st.epoch, st.step))
                st.accum, st.pending_accum, st.pending_accum_epoch = st.pending_accum, None, None
            outcome = self._train_epoch()
            if outcome is not None:
                return outcome
            outcome = self._finish_epoch()
            if outcome is not None:
                return outcome
        return self._end_with_the_run_saved("completed")

    def _train_epoch(self) -> RunEnded | None:
        cfg, st = self.cfg, self.state
        micro_batch, block = cfg.train.micro_batch, cfg.model.block_size
        order = epoch_examples(len(self.train_set), cfg.train.seed, st.epoch, micro_batch,
                               cfg.data.limit_train_batches).to(self.device)
        windows = plan_windows(len(order), micro_batch, st.accum)
        # The window that starts at the cursor (an epoch's last window may be short, so no division).
        first_window = next((i for i, w in enumerate(windows) if w[0][0] >= st.example_cursor), len(windows))
        for window_index in range(first_window, len(windows)):
            micro_ranges = windows[window_index]
            self._window_rng = capture_rng(self.device)
            step = st.step + 1
            started = time.perf_counter()
            paused_seconds = [0.0]

            def between(i: int, _ranges=micro_ranges, _step=step, _index=window_index) -> bool:
                self.sink.emit(MicroStep(st.epoch, _step, i + 1, len(_ranges), _index + 1, len(windows)))
                keep_going = self._between_micro_steps(paused_seconds)
                # A stop after the window's last micro-step still takes the step (checked below).
                return keep_going or i + 1 == len(_ranges)

            self.optimizer.zero_grad(set_to_none=True)
            try:
                loss_total, tokens = accumulate_window(self.train_model, self.train_set, order, micro_ranges,
                                                       self.autocast_dtype, between)
            except WindowAborted:
                # Stop mid-window: drop its partial gradient; the checkpoint resumes at its start.
                self.optimizer.zero_grad(set_to_none=True)
                saved = self.save("latest", rng=self._window_rng)
                return self._interrupted(saved, f"epoch {st.epoch}, step {st.step}")
            if step in self.inject_nan_steps:
                loss_total = loss_total * float("nan")
            # The LR of the tokens seen once this step is taken: the first step of a warm-up learns too.
            lr = self.lr_for(st.tokens_seen + tokens)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            # Clip once per window, after accumulation; the norm is returned either way.
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            # The one host sync of the step: loss and gradient norm together.
            loss_sum, norm = torch.stack([loss_total.float(), grad_norm.float()]).tolist()
            loss = loss_sum / tokens
            finite = math.isfinite(loss) and math.isfinite(norm)
            if finite:
                self.optimizer.step()
                st.bad_steps_in_row = 0
                st.epoch_loss_sum += loss_sum
                st.epoch_tokens += tokens
            else:
                st.bad_steps_in_row += 1
                st.bad_steps_total += 1
            self.optimizer.zero_grad(set_to_none=True)
            st.step = step
            st.tokens_seen += tokens
            st.example_cursor = micro_ranges[-1][1]
            st.epoch_step_losses.append(loss)
            seconds = max(time.perf_counter() - started - paused_seconds[0], 1e-9)
            st.epoch_seconds += seconds
            sequences = micro_ranges[-1][1] - micro_ranges[0][0]
            self.sink.emit(StepEvent(st.epoch, step, window_index + 1, len(windows), len(micro_ranges), st.accum,
                                     micro_batch, sequences, tokens, loss, lr, norm, st.tokens_seen,
                                     tokens / seconds, skipped=not finite))
            self._check_step(loss, step)
            if not finite:
                self.sink.emit(Notice(f"step {step}: non-finite loss or gradient ({loss:.4g}, norm {norm:.4g}); "
                                      f"update skipped ({st.bad_steps_in_row} in a row)", "warning"))
                if st.bad_steps_in_row >= cfg.train.max_bad_steps:
                    good = ("no checkpoint was saved before them" if self._latest_saved is None
                            else f"the last good checkpoint (step {self._latest_saved[2]}) is intact")
                    # Not "--resume": it would replay the same steps into the same divergence.
                    return self._end("error", f"{st.bad_steps_in_row} non-finite steps in a row at step {step}: "
                                              f"lower the learning rate — start again with --lr {cfg.optim.lr / 10:g} "
                                              f"(and --overwrite, or another --run-dir); {good}")
            # No periodic `latest` during a run of non-finite steps: it keeps pointing at the last good
            # step. An asked-for save (the app's `s`, a stop) still saves.
            if self._save_requested or (self._periodic_save_due() and st.bad_steps_in_row == 0):
                self._save_requested = False
                self.save("latest")
            if self.control.stop_requested:
                # No second save when this step's periodic one just wrote the same state.
                saved = self._latest_saved == (st.epoch, st.example_cursor, st.step) or self.save("latest")
                return self._interrupted(saved, f"epoch {st.epoch}, step {st.step}")
        return None

    def _check_step(self, loss: float, step: int) -> None:
        """Live verdict on the newest step: a non-finite loss always, a spike once per epoch."""
        st = self.state
        verdict = step_verdict(st.epoch_step_losses, self.corpus.vocab.size, self.cfg.diagnosis, st.epoch_first_step)
        if verdict is None or (math.isfinite(loss) and self._step_alerted_epoch == st.epoch):
            return
        self._step_alerted_epoch = st.epoch
        self.last_diagnosis = verdict
        self.sink.emit(DiagnosisEvent(verdict.kind, verdict.reason, verdict.remedy, st.epoch, step))

    def _periodic_save_due(self) -> bool:
        every = self.cfg.train.checkpoint_every
        if every:
            return self.state.step % every == 0
        return time.monotonic() - self._last_save_time >= DEFAULT_CHECKPOINT_SECONDS

    @torch.inference_mode()
    def evaluate(self) -> float:
        """Token-weighted mean validation loss, in eval mode; back to train mode after."""
        was_training = self.model.training
        self.model.eval()
        try:
            loss_sum = torch.zeros((), device=self.device)
            tokens = 0
            indices = torch.arange(len(self.val_set), device=self.device)
            for start, stop in val_batches(len(self.val_set), self.cfg.train.micro_batch,
                                           self.cfg.data.limit_val_batches):
                inputs, targets = self.val_set.batch(indices[start:stop])
                loss_sum += self.model.loss_sum(inputs, targets).float()
                tokens += inputs.numel()
            return loss_sum.item() / tokens
        finally:
            self.model.train(was_training)

    def _finish_epoch(self) -> RunEnded | None:
        cfg, st = self.cfg, self.state
        started = time.perf_counter()
        val_loss = self.evaluate()
        train_loss = st.epoch_loss_sum / st.epoch_tokens if st.epoch_tokens else float("nan")
        st.train_history.append(train_loss)
        st.val_history.append(val_loss)
        verdict = diagnose(st.train_history, st.val_history, self.corpus.vocab.size, cfg.diagnosis,
                           st.epoch_step_losses, st.epoch_first_step)
        self.last_diagnosis = verdict
        warning = val_rise_warning(st.val_history, cfg.diagnosis.val_rise_warning)
        improved, should_stop, stop_reason = self.early_stopping.update(val_loss, st.epoch)
        epoch_seconds = st.epoch_seconds + (time.perf_counter() - started)
        tokens_per_s = st.epoch_tokens / st.epoch_seconds if st.epoch_seconds else 0.0
        epoch_done = st.epoch
        effective_batch = cfg.train.micro_batch * st.accum
        self.sink.emit(EpochEvent(
            epoch_done, cfg.train.epochs, train_loss, val_loss, st.accum, effective_batch, st.tokens_seen,
            epoch_seconds, verdict.kind, verdict.reason, verdict.remedy, warning,
            self.early_stopping.best if self.early_stopping.best_epoch else None,
            self.early_stopping.best_epoch, self.early_stopping.epochs_without_improvement, tokens_per_s))
        # The next epoch starts clean; a checkpoint taken now resumes there.
        st.epoch += 1
        st.example_cursor = 0
        st.epoch_loss_sum, st.epoch_tokens, st.epoch_seconds = 0.0, 0, 0.0
        st.epoch_step_losses = []
        st.epoch_first_step = st.step + 1
        if improved:
            self.save("best")
        if should_stop and st.epoch <= cfg.train.epochs:
            self.save("latest")
            self.sink.emit(Notice(f"early stopping: {stop_reason}", "warning"))
            # The best weights come back only once `latest` holds the run's own (a retried save must
            # not pair the best epoch's weights with a later epoch's optimizer and position).
            return self._end_with_the_run_saved("early_stop", stop_reason, then=self._restore_best)
        saved = self.save("latest")
        if self.control.stop_requested:
            return self._interrupted(saved, f"the end of epoch {epoch_done}")
        return None

    def _restore_best(self) -> None:
        path = ckpt.checkpoint_path(self.run_dir, "best")
        if path.exists():
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])


def vocabulary_of(run_dir: str | Path) -> Vocabulary:
    record = json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    return Vocabulary(tuple(record["vocab"]))
