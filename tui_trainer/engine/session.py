"""A training run's set-up: ``TrainingSession(cfg, sink, control)`` validates everything (raising
UserError, writing nothing), joins the other processes, builds data, model and optimizer, prepares
the run dir (rundir/lifecycle.py), and hands the loop (loop.py) what it trains with, complete: the
model (and the one the steps call: compiled or not), the optimizer, the data sets, the loop's state,
the sinks, the run's figures (figures.py); what a checkpoint holds and a resume: session_state.py.
The loop's other parts (saving.py, steering.py, endings.py) are handed what they need from it.
No Textual import, ever.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tui_trainer.analysis.diagnosis import Diagnosis
from tui_trainer.analysis.early_stopping import EarlyStopping
from tui_trainer.analysis.noise_scale import NoiseScaleEstimator
from tui_trainer.analysis.time_budget import bare_seconds_note, budget_notes, parse_duration
from tui_trainer.config import RunConfig
from tui_trainer.config_checks import usable_cores, validate
from tui_trainer.control import Control
from tui_trainer.data.bits_per_byte import exact_bytes, token_byte_lengths, validation_bytes
from tui_trainer.data.dataset import Corpus, WindowDataset, load_corpus, window_count
from tui_trainer.data.text_source import PreparationCancelled, ProgressFn
from tui_trainer.data.tokenizer import fewer_tokens_note, tokenizer_from_record
from tui_trainer.engine.accumulation import GradientIncrements
from tui_trainer.engine.budget import start_budget
from tui_trainer.engine.distributed import (
    PeerLost,
    Placement,
    Ranks,
    choose_backend,
    placement_from_environment,
    rank_device,
)
from tui_trainer.engine.figures import RunFigures, carried_schedule
from tui_trainer.engine.flops import flops_meter
from tui_trainer.engine.gradient_sum import gradient_sum
from tui_trainer.engine.loss_scaling import LossScaling
from tui_trainer.engine.memory import check_fits
from tui_trainer.engine.precision import auto_reason, bf16_support, resume_precision, run_line_notes
from tui_trainer.engine.runtime import (
    busy_machine_note,
    choose_threads,
    compile_model,
    cores_busy_elsewhere,
    pick_device,
)
from tui_trainer.engine.session_state import restore_session
from tui_trainer.engine.split import check_batch, fit_split, memory_budget, memory_record
from tui_trainer.errors import UserError
from tui_trainer.events import FanOut, Sink
from tui_trainer.model.gpt import GPT, make_optimizer
from tui_trainer.model.sampling import LiveSampler
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir import lifecycle as rd
from tui_trainer.rundir.checkpoint_contents import check_contents
from tui_trainer.rundir.init_source import check_corpus_tokenizer, finetune_notes, init_state_dict, read_init_source
from tui_trainer.rundir.loop_state import LoopState
from tui_trainer.rundir.metrics import MetricsWriter, NoMetrics
from tui_trainer.rundir.tokenizer_record import check_resumed_tokenizer


class TrainingSession:
    """Set up with ``(cfg, sink, control)``: what the loop (``loop.Trainer``) trains with, built
    once and complete (a failed set-up raises and leaves nothing half-built behind)."""

    def __init__(self, cfg: RunConfig, sink: Sink | None = None, control: Control | None = None, *,
                 resume: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 overwrite: bool = False, for_ui: bool = False, data_progress: ProgressFn | None = None,
                 budget_started: float | None = None):
        # A --time-budget counts the start-up: from here, or from ``budget_started`` (time.monotonic()
        # at the process's start: the headless face passes it).
        setup_started = time.monotonic() if budget_started is None else budget_started
        self.control = control or Control()
        self.for_ui = for_ui  # someone can press `s` to retry a failed final save
        self.notes: list[str] = []
        self._overwrite = overwrite
        self.outstanding_end: str | None = None  # a resumed run that finished but never recorded its end
        self.run_dir: Path | None = None  # (rank 0 makes it; the others learn its path)
        self.control_server = None  # commands from viewers, while the loop runs
        self.run_lock = None  # the run dir's one-writer lock (run_lock.py), from prepare_run_dir to the end
        placement = placement_from_environment()  # torchrun's RANK/WORLD_SIZE; none = one process
        resume_state = None
        if resume is not None:
            cfg, resume_state = _read_checkpoint(resume, overrides, placement.is_main, self.notes)
            self.outstanding_end = rd.refuse_or_finish(resume_state, cfg, Path(resume))
        self.cfg = cfg = validate(cfg)
        if cfg.train.time_budget is not None:
            parse_duration(cfg.train.time_budget)  # (a bad one: one line, before anything is made)
            if resume is None and (bare := bare_seconds_note(cfg.train.time_budget)):
                self.notes.append(bare)
            if resume is None and overrides is not None:  # (the CLI's run: it chose the budget's defaults)
                self.notes += budget_notes(cfg.train.accum, cfg.optim.lr, cfg.model.n_embd, overrides)
        self._place(placement, for_ui)
        self.ranks.start()  # (one process: nothing)
        made: list[Path] = []  # the folders a new run made (removed again if its set-up fails)
        try:
            self._prepare_rank_0_first(resume_state, resume, overrides, overwrite, data_progress, made)
            try:
                self._build(sink, resume_state, overrides)
            finally:
                failed = sum(self.ranks.agree([1.0 if sys.exc_info()[0] is not None else 0.0]))
            if failed:
                raise PeerLost(f"{failed:g} of the {self.ranks.world_size} processes could not set up the run")
            self.ranks.set_up_done()  # (from here on a collective waits --dist-timeout at most)
            self.grad_sync = gradient_sum(self.model, self.ranks)  # (several processes: rank 0's weights on all)
            self.train_model = compile_model(self.model, self.device) if cfg.train.compile else self.model
            self.budget = start_budget(self, setup_started)  # (one too short to take a step: refused here)
            self.figures = replace(self.figures, budget=self.budget)
        except BaseException:
            if placement.is_main and resume is None and self.run_dir is not None:
                self.release_run_dir()  # nothing left behind: a new run whose set-up failed goes again
                rd.remove_new_run(self.run_dir, made)
            self.ranks.close(clean=not isinstance(sys.exc_info()[1], PeerLost))
            raise

    def _place(self, placement: Placement, for_ui: bool) -> None:
        """The processes, this one's device and its CPU threads."""
        cfg = self.cfg
        device = pick_device(cfg.train.device)
        self.ranks = Ranks(placement, choose_backend(cfg.train.backend, device) if placement.distributed else "",
                           rank_device(device, placement), cfg.train.dist_timeout)
        self.device = self.ranks.device
        self.threads = choose_threads(cfg.train.threads, for_ui, placement.local_world_size)
        cores, here = usable_cores(), placement.local_world_size
        if here > 1 and self.threads * here > cores:
            self.notes.append(f"{here} processes x {self.threads} threads on {cores} cores: more threads than "
                              f"cores slow every rank down; leave out --threads (each rank then takes "
                              f"{max(1, cores // here)})")
        elif here == 1 and self.device.type == "cpu" and cfg.train.threads is None:
            # A busy machine is said, not acted on: the thread count changes the losses' bits.
            busy = busy_machine_note(self.threads, cores, cores_busy_elsewhere())
            self.notes += [busy] if busy else []
        torch.set_num_threads(self.threads)

    def _prepare_rank_0_first(self, resume_state: dict | None, resume: str | Path | None,
                              overrides: dict[str, Any] | None, overwrite: bool,
                              data_progress: ProgressFn | None, made: list[Path]) -> None:
        """Rank 0 prepares the data (a first run tokenizes and caches it) and the run dir; the others
        wait for its verdict, then map the cache it made and touch no file."""
        cfg = self.cfg
        if self.ranks.is_main:
            try:
                self._prepare(cfg, resume_state, resume, overrides, data_progress)
                self.run_dir = rd.prepare_run_dir(self.cfg, resume, overwrite, self.notes, made,
                                                  take_lock=self._take_lock)
            except BaseException as exc:
                self.ranks.broadcast(("failed", *_user_error_parts(exc)))
                raise
            self.ranks.broadcast(("ready", str(self.run_dir)))
            return
        verdict = self.ranks.broadcast(None)
        if verdict[0] == "failed":  # rank 0 says why; this rank ends the same way, quietly
            _, message, hint, cancelled_by = verdict
            if cancelled_by is not None:
                raise PreparationCancelled(cancelled_by)
            raise UserError(message, hint) if message else PeerLost("rank 0 could not set up the run")
        self.run_dir = Path(verdict[1])
        self._prepare(cfg, resume_state, resume, overrides, None)

    def _prepare(self, cfg: RunConfig, resume_state: dict | None, resume: str | Path | None,
                 overrides: dict[str, Any] | None, data_progress: ProgressFn | None) -> None:
        """The data (tokenized, or mapped from the token cache), the precision, and the checks that
        need them: every rank does this; rank 0 first (it may build the cache)."""
        # A resumed BPE run encodes with the tokenizer in its run dir, never a new one.
        resumed_tokenizer = tokenizer_from_record(resume_state, resume) if resume_state is not None else None
        # --init-from (a new run): the source's tokenizer encodes the corpus; its weights start the model (_build).
        self.init_source = read_init_source(cfg.model.init_from) if cfg.model.init_from and resume is None else None
        try:
            self.corpus: Corpus = load_corpus(cfg.data, cfg.model.block_size, progress=data_progress,
                                              cancel=lambda: self.control.stop_requested,
                                              tokenizer=resumed_tokenizer or getattr(self.init_source, "tokenizer", None))
        except PreparationCancelled:
            raise PreparationCancelled(self.control.stop_signal) from None
        if resume_state is not None and resume_state["data_sha256"] != self.corpus.sha256:
            raise rd.data_changed(self.corpus.path, self.corpus.sha256, rd.data_size(self.corpus.path), resume_state)
        if resume_state is not None:
            check_resumed_tokenizer(resume_state, self.corpus.vocab)
        self.notes += list(self.corpus.notes)  # (a damaged token cache rebuilt)
        if resume_state is None and cfg.data.tokenizer == "bpe":  # (said once: when the run begins)
            fewer = fewer_tokens_note(self.corpus.vocab.size, cfg.data.vocab_size)
            self.notes += [fewer] if fewer else []
        vocab_size = self.corpus.vocab.size
        if self.init_source is not None:
            check_corpus_tokenizer(self.init_source, self.corpus.vocab)
            self.notes += finetune_notes(self.init_source, cfg, overrides or {})
            vocab_size = self.init_source.vocab_size  # its embedding's rows (GPT-2: 50,257 = its tokenizer)
        elif cfg.model.init_from and resume_state is not None:
            vocab_size = cfg.model.vocab_size  # a resumed fine-tuning run: the checkpoint's rows
        self.cfg = cfg = cfg.replace(model=replace(cfg.model, vocab_size=vocab_size))
        # The forward's autocast dtype (None = fp32); a resume keeps the checkpoint's precision unless told.
        self.precision, self.autocast_dtype, note = resume_precision(
            cfg.train.precision, self.device, resume_state.get("precision") if resume_state else None,
            resuming=resume_state is not None, explicit="train.precision" in (overrides or {}), model=cfg.model)
        self.notes += [note] if note else []
        if cfg.train.precision.strip().lower() == "auto":  # the run line says why auto chose
            self.notes.append(auto_reason(self.device.type, bf16_support(self.device), cfg.model))
        train_windows = window_count(len(self.corpus.train_tokens), cfg.model.block_size)
        self.cfg = cfg = self._batch_split(cfg, resume_state)
        if cfg.train.micro_batch == "auto":  # (measured once the model is built; the checks take 1 meanwhile)
            cfg = cfg.replace(train=replace(cfg.train, micro_batch=1))
        if cfg.train.micro_batch > train_windows:
            raise UserError(f"--micro-batch {cfg.train.micro_batch} is more than the {train_windows:,} training "
                            f"sequences of {cfg.model.block_size} tokens this data holds",
                            f"use --micro-batch {train_windows} or less (and --accum for a larger effective batch)")
        world = self.ranks.world_size
        per_epoch = min(train_windows, (cfg.data.limit_train_batches or train_windows) * cfg.train.micro_batch)
        micro_batches = -(-per_epoch // cfg.train.micro_batch)
        if micro_batches < world:
            raise UserError(f"an epoch holds {micro_batches} micro-batch{'es' if micro_batches != 1 else ''} of "
                            f"{cfg.train.micro_batch}, fewer than the {world} processes: each needs at least one",
                            f"use --nproc {micro_batches} or fewer, a smaller --micro-batch or a larger "
                            f"--limit-train-batches")
        check_fits(cfg, self.device, train_windows=train_windows, autocast_bf16=self.autocast_dtype is not None)
        if resume is None and self.corpus.vocab.kind == "bpe" and cfg.run_dir and self.ranks.is_main:
            rd.refuse_a_foreign_tokenizer_file(Path(cfg.run_dir), self._overwrite)

    def _batch_split(self, cfg: RunConfig, resume_state: dict | None) -> RunConfig:
        """--batch over the processes (UserError now, before anything is written), and the budget
        --micro-batch auto fits into. (A resume keeps the split it saved: merge_resume_config.)"""
        self.memory_budget: int | None = None
        cfg = check_batch(cfg, self.ranks.world_size)
        if cfg.train.micro_batch == "auto" or cfg.train.memory_budget is not None:
            self.memory_budget = memory_budget(cfg.train.memory_budget, self.device)
        return cfg

    def _build(self, sink: Sink | None, resume_state: dict | None, overrides: dict[str, Any] | None) -> None:
        """Model, optimizer, data sets, loop state, config.json and metrics: the set-up that writes."""
        cfg = self.cfg
        # TF32 for the matmuls that stay fp32 (a card with bf16 units has it; older ones do not).
        tf32 = self.device.type == "cuda" and bf16_support(self.device).native
        if tf32:
            torch.set_float32_matmul_precision("high")
        self.notes += run_line_notes(self.precision, self.device, tf32, cfg.model.n_embd)
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.model = GPT(cfg.model)
        if self.init_source is not None:
            self.model.load_state_dict(init_state_dict(self.init_source, cfg.model.block_size))
            self.notes.append(f"started from {self.init_source.describe()}")
        self.model = self.model.to(self.device)  # the same weights on every rank (gradient_sum broadcasts rank 0's all the same)
        if self.ranks.rank:  # each rank its own dropout masks (rank 0 draws what one process draws)
            torch.manual_seed(cfg.train.seed + 7919 * self.ranks.rank)
            random.seed(cfg.train.seed + 7919 * self.ranks.rank)
        self.model.checkpoint_activations = cfg.train.checkpoint_activations
        self.fit = None  # what --micro-batch auto measured and chose (memory_fit.Fit)
        if cfg.train.micro_batch == "auto":  # the probes leave the RNG (init, data order, dropout) untouched
            train_windows = window_count(len(self.corpus.train_tokens), cfg.model.block_size)
            cfg, self.fit = fit_split(self.model, cfg, self.device, self.autocast_dtype, self.memory_budget,
                                      self.ranks, train_windows)
            self.cfg = cfg
        self.optimizer = make_optimizer(self.model, cfg.optim.lr, cfg.optim.weight_decay,
                                        (cfg.optim.beta1, cfg.optim.beta2), self.device.type)
        self.loss_scaling = LossScaling(self.device) if self.precision == "fp16" else None
        self.flops = flops_meter(self.model, cfg.model, self.device, self.precision, tf32)
        self.train_set = WindowDataset(self.corpus.train_tokens, cfg.model.block_size, self.device, cfg.model.vocab_size)
        self.val_set = WindowDataset(self.corpus.val_tokens, cfg.model.block_size, self.device, cfg.model.vocab_size)
        self.early_stopping = EarlyStopping(cfg.train.patience, cfg.train.min_delta)
        # The gradient noise scale: one more copy of the gradients; off = exactly the plain loop.
        # (Several processes measure each rank's gradient instead: distributed.SummedGradients.)
        self.increments = (GradientIncrements(self.model.parameters())
                           if cfg.train.noise_scale and not self.ranks.distributed else None)
        self.noise = NoiseScaleEstimator()
        self.state = LoopState(accum=cfg.train.accum)
        self.resume_accum: int | None = None  # --accum given with --resume: a change at the next epoch boundary
        if resume_state is not None:
            restore_session(self, resume_state)
            if cfg.train.noise_scale:  # (resumed with --no-noise-scale: no stale estimate is reported)
                self.noise.load_state_dict(self.state.noise_scale_state)
            self.resume_accum = rd.accum_given_with_resume(self.state, (overrides or {}).get("train.accum"),
                                                            cfg.train.epochs, self.notes)
        # config.json is the resolved config: a resume rewrites it with what it merged (and recreates it).
        # Rank 0 alone writes; the other ranks' events go nowhere.
        if self.ranks.is_main:
            rd.write_config(self.run_dir, self.cfg, self.corpus, self.device, self.threads, self.precision,
                            self.ranks.world_size, memory=memory_record(self.cfg, self.fit, self.memory_budget, self.ranks.world_size))
        self.metrics = MetricsWriter(self.run_dir) if self.ranks.is_main else NoMetrics()
        self.sink = FanOut(self.metrics, sink)
        self.figures = RunFigures(cfg, len(self.train_set), len(self.val_set), self.ranks.world_size,
                                  lr_anchor=tuple(self.state.lr_anchor) if self.state.lr_anchor else None)
        if resume_state is not None:
            anchor, note = carried_schedule(self.figures, RunConfig.from_dict(resume_state["config"]),
                                            self.state.tokens_seen)
            if anchor is not None:
                self.state.lr_anchor = list(anchor)
                self.figures = replace(self.figures, lr_anchor=anchor)
            self.notes += [note] if note else []
        # UTF-8 bytes of the targets a validation pass reads (its first val_examples windows, over every
        # rank): counted once, they turn each pass's val loss into bits per byte (bits_per_byte.py).
        self.val_bytes = validation_bytes(self.corpus.val_tokens, cfg.model.block_size, self.figures.val_examples(),
                                          token_byte_lengths(self.corpus.vocab))
        if not exact_bytes(self.corpus.vocab):
            self.notes.append("val_bpb counts each token's bytes by decoding it alone (the tokenizer is not "
                              "byte-level): close, but not exact")
        # Ids the training text never holds are never sampled (their embeddings are untrained); a model
        # started from --init-from learnt its whole vocabulary elsewhere, so it keeps every id.
        self.untrained_ids = () if cfg.model.init_from else self.corpus.untrained_ids
        self.sampler = LiveSampler(self.model, self.corpus.vocab, cfg.train.sample_tokens, cfg.train.seed,
                                   self.untrained_ids)
        self.started = time.monotonic()  # this session's start (the run's wall time adds the earlier ones)
        # Where the `latest` checkpoint on disk stands: a resumed run's own position; none for a new run.
        self.latest_saved = self.state.position if resume_state else None
        # The verdict so far (a resumed run's `end` record carries one even if it stops at once).
        self.diagnosis: Diagnosis | None = Diagnosis.from_state(self.state.last_verdict)

    def _take_lock(self, run_dir: Path) -> None:
        self.run_lock = rd.lock_run_dir(run_dir)

    def release_run_dir(self) -> None:
        """The run is over: no more steering, and another process may now train in the run dir."""
        if self.control_server is not None:
            self.control_server.close()
            self.control_server = None
        if self.run_lock is not None:
            self.run_lock.release()

    def close(self, clean: bool) -> None:
        """The run is over: the metrics file closed, the run dir released, the processes' group left
        (``clean``: every rank ended at the same point; see Ranks.close)."""
        self.metrics.close()
        self.release_run_dir()
        if self.ranks.distributed:
            # No reference to the group may outlive it (one freed while Python shuts down can abort).
            self.train_model = self.model
            if self.grad_sync is not None:
                self.grad_sync.group = None
            gc.collect()
        self.ranks.close(clean=clean)

    def open_control_socket(self, status: Callable[[], dict[str, Any]]) -> None:
        """Listen for commands from viewers (control_socket.py) while the run runs; ``status`` is
        what a viewer is told (Steering.status)."""
        from tui_trainer.rundir.control_socket import ControlServer

        try:
            self.control_server = ControlServer(self.run_dir, self.control, status)
        except OSError as exc:  # e.g. a run dir path longer than a Unix socket's ~107 bytes
            self.notes.append(f"no control socket ({exc.strerror or exc}): viewers can watch this run, not steer it")

    def elapsed_seconds(self) -> float:
        """Wall time of the whole run so far: the earlier sessions (from the checkpoint) and this one."""
        return self.state.elapsed_seconds + time.monotonic() - self.started


def _read_checkpoint(resume: str | Path, overrides: dict[str, Any] | None, is_main: bool,
                     notes: list[str]) -> tuple[RunConfig, dict]:
    """A resume: the checkpoint (checked), and the config it ran with merged with the flags given."""
    if is_main:  # (the others: rank 0 holds the lock by the time they look)
        rd.refuse_a_run_dir_in_use(resume)  # before its checkpoint is read: a live run is not resumed
    resume_state = rd.load_resumable(resume)
    check_contents(resume_state, ckpt.checkpoint_path(resume), LoopState)
    cfg = rd.merge_resume_config(resume_state, overrides or {}, Path(resume), notes)
    validate(cfg)  # the flags first: `--epochs 0` is bad input, not "finished 0 epochs"
    return cfg, resume_state


def _user_error_parts(exc: BaseException) -> tuple[str, str, int | None]:
    """What the other ranks raise when rank 0's set-up failed: (message, hint) of a UserError, and
    the signal of a stopped data preparation (0 = none known); ("", "", None) for anything else."""
    if isinstance(exc, UserError):
        return exc.message, exc.hint, None
    if isinstance(exc, PreparationCancelled):
        return "", "", exc.args[0] if exc.args and exc.args[0] else 0
    return "", "", None
