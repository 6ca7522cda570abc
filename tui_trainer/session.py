"""A training run's set-up and its services to the loop: ``TrainingSession(cfg, sink, control)``
validates everything (raising UserError, writing nothing), builds data, model and optimizer,
prepares the run dir (run_dir.py), and then offers the loop (loop.py) its figures (the LR
schedule, examples per epoch), checkpoint saves, the commands from the app, and the ways a run
ends. No Textual import, ever.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from . import run_dir as rd
from .config import RunConfig, validate
from .control import Control, SaveCheckpoint, SetAccum, SetPaused, TogglePause
from .data import Corpus, WindowDataset, load_corpus, window_count
from .diagnosis import Diagnosis
from .early_stopping import EarlyStopping
from .errors import UserError
from .events import (AccumChangeRequested, CheckpointFailed, CheckpointSaved, FanOut, Notice, Paused, Resumed,
                     RunEnded, Sink)
from .loop_state import LoopState
from .memory import check_fits
from .metrics import MetricsWriter
from .model import GPT, make_optimizer
from .precision import resume_precision
from .runtime import capture_rng, choose_threads, pick_device, restore_rng
from .schedule import lr_at


class TrainingSession:
    """Set up with ``(cfg, sink, control)``; the loop (``loop.Trainer``) runs on top of it."""

    def __init__(self, cfg: RunConfig, sink: Sink | None = None, control: Control | None = None, *,
                 resume: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 overwrite: bool = False, for_ui: bool = False, inject_nan_steps: frozenset[int] = frozenset()):
        self.control = control or Control()
        self.for_ui = for_ui  # someone can press `s` to retry a failed final save
        self.inject_nan_steps = inject_nan_steps  # test hook: poison these steps' loss with NaN
        self.notes: list[str] = []
        resume_state = None
        if resume is not None:
            resume_state = rd.load_resumable(resume)
            cfg = rd.merge_resume_config(resume_state, overrides or {}, Path(resume), self.notes)
            rd.refuse_a_finished_run(resume_state, cfg)
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
        self.run_dir = rd.prepare_run_dir(cfg, resume, overwrite, self.notes)

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
            self._resume_accum = rd.accum_given_with_resume(self.state, (overrides or {}).get("train.accum"),
                                                            cfg.train.epochs, self.notes)
        else:
            rd.write_config(self.run_dir, self.cfg, self.corpus, self.device, self.threads, self.precision)
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

    def _load_resume_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.state = LoopState(**state["loop"])
        self.state.finished = None
        restore_rng(state["rng"], self.device)
        rd.trim_metrics_after(self.run_dir, self.state.step, len(self.state.val_history))
        self.notes.append(f"resumed at epoch {self.state.epoch}, step {self.state.step}")
        pending = rd.pending_accum_note(self.state)
        if pending:
            self.notes.append(pending)

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
            self.sink.emit(CheckpointFailed(kind=kind, message=str(exc)))
            return False
        self._last_save_time = time.monotonic()
        if kind == "latest":
            self._latest_saved = (self.state.epoch, self.state.example_cursor, self.state.step)
        self.sink.emit(CheckpointSaved(kind=kind, path=str(path), step=self.state.step, epoch=self.state.epoch,
                                       seconds=seconds))
        return True

    def _restore_best(self) -> None:
        path = ckpt.checkpoint_path(self.run_dir, "best")
        if path.exists():
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])

    # -- commands -------------------------------------------------------------------------------

    def _handle_commands(self, wait: float | None = None) -> None:
        for command in self.control.drain(wait):
            if isinstance(command, SetAccum):
                self._request_accum(command.accum)
            elif isinstance(command, (TogglePause, SetPaused)):
                paused = not self._paused if isinstance(command, TogglePause) else command.paused
                if paused != self._paused:
                    self._paused = paused
                    self.sink.emit((Paused if paused else Resumed)(epoch=self.state.epoch, step=self.state.step))
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
        self.sink.emit(AccumChangeRequested(old=current, new=accum, epoch=self.state.epoch, step=self.state.step,
                                            applies_at_epoch=epoch))

    def _between_micro_steps(self, paused_seconds: list[float]) -> bool:
        """Called after every micro-step: commands, pause, stop. False = abandon the window."""
        self._handle_commands()
        if self._paused:
            started = time.perf_counter()
            while self._paused and not self.control.stop_requested:
                self._handle_commands(wait=0.1)
            paused_seconds[0] += time.perf_counter() - started
        return not self.control.stop_requested

    # -- how a run ends -------------------------------------------------------------------------

    def _end(self, reason: str, message: str = "") -> RunEnded:
        self.state.finished = reason
        verdict = self.last_diagnosis
        event = RunEnded(reason=reason, epochs=len(self.state.val_history), steps=self.state.step,
                         tokens_seen=self.state.tokens_seen,
                         best_val_loss=self.early_stopping.best if self.early_stopping.best_epoch else None,
                         best_epoch=self.early_stopping.best_epoch, message=message,
                         exit_signal=self.control.stop_signal if reason == "interrupted" else None,
                         diagnosis=verdict.kind if verdict else None,
                         diagnosis_reason=verdict.reason if verdict else None)
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
            self.sink.emit(Notice(message=f"the final checkpoint could not be saved ({self._save_error}): "
                                          "free some space and press s to retry, or q to leave without it",
                                  level="error"))
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
