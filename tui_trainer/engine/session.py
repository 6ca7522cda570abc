"""A training run's set-up and its services to the loop: ``TrainingSession(cfg, sink, control)``
validates everything (raising UserError, writing nothing), builds data, model and optimizer,
prepares the run dir (run_dir.py), and then offers the loop (loop.py) its figures (the LR
schedule, examples per epoch) and checkpoint saves; the commands from the app are steering.py's,
the ways a run ends endings.py's. No Textual import, ever.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from tui_trainer.analysis.diagnosis import Diagnosis
from tui_trainer.analysis.early_stopping import EarlyStopping
from tui_trainer.analysis.noise_scale import NoiseScaleEstimator
from tui_trainer.analysis.schedule import lr_at
from tui_trainer.config import RunConfig, usable_cores, validate
from tui_trainer.control import Control
from tui_trainer.data.dataset import Corpus, WindowDataset, load_corpus, val_batch_limit, window_count
from tui_trainer.data.text_source import PreparationCancelled, ProgressFn
from tui_trainer.data.tokenizer import tokenizer_from_record
from tui_trainer.engine.accumulation import GradientIncrements
from tui_trainer.engine.distributed import (
    PeerLost,
    Ranks,
    choose_backend,
    placement_from_environment,
    rank_device,
    wrap_model,
)
from tui_trainer.engine.endings import Endings
from tui_trainer.engine.loop_state import LoopState
from tui_trainer.engine.memory import check_fits
from tui_trainer.engine.precision import resume_precision
from tui_trainer.engine.runtime import capture_rng, choose_threads, pick_device, restore_rng
from tui_trainer.engine.steering import Steering
from tui_trainer.errors import UserError
from tui_trainer.events import CheckpointFailed, CheckpointSaved, FanOut, Sink
from tui_trainer.model.gpt import GPT, make_optimizer
from tui_trainer.model.sampling import LiveSampler
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir import lifecycle as rd
from tui_trainer.rundir.checkpoint_contents import check_contents
from tui_trainer.rundir.init_source import check_corpus_tokenizer, init_state_dict, read_init_source
from tui_trainer.rundir.metrics import MetricsWriter, NoMetrics


class TrainingSession(Steering, Endings):
    """Set up with ``(cfg, sink, control)``; the loop (``loop.Trainer``) runs on top of it. The
    commands from the app and viewers (and, with several processes, the ranks' agreement on them)
    are steering.py's; how a run ends, endings.py's."""

    def __init__(self, cfg: RunConfig, sink: Sink | None = None, control: Control | None = None, *,
                 resume: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 overwrite: bool = False, for_ui: bool = False, inject_nan_steps: frozenset[int] = frozenset(),
                 data_progress: ProgressFn | None = None):
        self.control = control or Control()
        self.for_ui = for_ui  # someone can press `s` to retry a failed final save
        self.inject_nan_steps = inject_nan_steps  # test hook: poison these steps' loss with NaN
        self.notes: list[str] = []
        self._overwrite = overwrite
        placement = placement_from_environment()  # torchrun's RANK/WORLD_SIZE; none = one process
        made: list[Path] = []  # the folders a new run made (removed again if its set-up fails)
        self._outstanding_end: str | None = None  # a resumed run that finished but never recorded its end
        resume_state = None
        self._control_server = None  # commands from viewers, while run() runs
        self.run_lock = None  # the run dir's one-writer lock (run_lock.py), from prepare_run_dir to the end
        if resume is not None:
            if placement.is_main:  # (the others: rank 0 holds the lock by the time they look)
                rd.refuse_a_run_dir_in_use(resume)  # before its checkpoint is read: a live run is not resumed
            resume_state = rd.load_resumable(resume)
            check_contents(resume_state, ckpt.checkpoint_path(resume), LoopState)
            cfg = rd.merge_resume_config(resume_state, overrides or {}, Path(resume), self.notes)
            validate(cfg)  # the flags first: `--epochs 0` is bad input, not "finished 0 epochs"
            self._outstanding_end = rd.refuse_or_finish(resume_state, cfg, Path(resume))
        self.cfg = cfg = validate(cfg)
        device = pick_device(cfg.train.device)
        self.ranks = Ranks(placement, choose_backend(cfg.train.backend, device) if placement.distributed else "",
                           rank_device(device, placement), cfg.train.dist_timeout)
        self.device = self.ranks.device
        self.threads = choose_threads(cfg.train.threads, for_ui, placement.local_world_size)
        cores, here = usable_cores(), placement.local_world_size
        if here > 1 and self.threads * here > cores:
            self.notes.append(f"{here} processes x {self.threads} threads on {cores} cores: more threads than cores "
                              f"slow every rank down; leave out --threads (each rank then takes {max(1, cores // here)})")
        torch.set_num_threads(self.threads)
        self.ranks.start()  # (one process: nothing)
        try:
            # Rank 0 prepares the data (a first run tokenizes and caches it) and the run dir; the
            # others wait for its verdict, then map the cache it made and touch no file.
            if placement.is_main:
                try:
                    self._prepare(cfg, resume_state, resume, overrides, data_progress)
                    self.run_dir = rd.prepare_run_dir(self.cfg, resume, overwrite, self.notes, made,
                                                      take_lock=self._take_lock)
                except BaseException as exc:
                    self.ranks.broadcast(("failed", *_user_error_parts(exc)))
                    raise
                self.ranks.broadcast(("ready", str(self.run_dir)))
            else:
                verdict = self.ranks.broadcast(None)
                if verdict[0] == "failed":  # rank 0 says why; this rank ends the same way, quietly
                    _, message, hint, cancelled_by = verdict
                    if cancelled_by is not None:
                        raise PreparationCancelled(cancelled_by)
                    raise UserError(message, hint) if message else PeerLost("rank 0 could not set up the run")
                self.run_dir = Path(verdict[1])
                self._prepare(cfg, resume_state, resume, overrides, None)
            try:
                self._build(sink, resume_state, overrides)
            finally:
                failed = sum(self.ranks.agree([1.0 if sys.exc_info()[0] is not None else 0.0]))
            if failed:
                raise PeerLost(f"{failed:g} of the {self.ranks.world_size} processes could not set up the run")
            self.ranks.set_up_done()  # (from here on a collective waits --dist-timeout at most)
            self.train_model, self.grad_sync = wrap_model(self.model, self.ranks)
            self.train_model = torch.compile(self.train_model) if cfg.train.compile else self.train_model
        except BaseException:
            if placement.is_main and resume is None and getattr(self, "run_dir", None) is not None:
                self.release_run_dir()  # nothing left behind: a new run whose set-up failed goes again
                rd.remove_new_run(self.run_dir, made)
            self.ranks.close(clean=not isinstance(sys.exc_info()[1], PeerLost))
            raise

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
            rd.check_resumed_tokenizer(resume_state, self.corpus.vocab)
        vocab_size = self.corpus.vocab.size
        if self.init_source is not None:
            check_corpus_tokenizer(self.init_source, self.corpus.vocab)
            vocab_size = self.init_source.vocab_size  # its embedding's rows (GPT-2: 50,257 = its tokenizer)
        elif cfg.model.init_from and resume_state is not None:
            vocab_size = cfg.model.vocab_size  # a resumed fine-tuning run: the checkpoint's rows
        self.cfg = cfg = cfg.replace(model=replace(cfg.model, vocab_size=vocab_size))
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

    def _build(self, sink: Sink | None, resume_state: dict | None, overrides: dict[str, Any] | None) -> None:
        """Model, optimizer, data sets, loop state, config.json and metrics: the set-up that writes."""
        cfg = self.cfg
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.model = GPT(cfg.model)
        if self.init_source is not None:
            self.model.load_state_dict(init_state_dict(self.init_source, cfg.model.block_size))
            self.notes.append(f"started from {self.init_source.describe()}")
        self.model = self.model.to(self.device)  # the same weights on every rank (DDP checks)
        if self.ranks.rank:  # each rank its own dropout masks (rank 0 draws what one process draws)
            torch.manual_seed(cfg.train.seed + 7919 * self.ranks.rank)
            random.seed(cfg.train.seed + 7919 * self.ranks.rank)
        self.optimizer = make_optimizer(self.model, cfg.optim.lr, cfg.optim.weight_decay,
                                        (cfg.optim.beta1, cfg.optim.beta2), self.device.type)
        self.train_set = WindowDataset(self.corpus.train_tokens, cfg.model.block_size, self.device)
        self.val_set = WindowDataset(self.corpus.val_tokens, cfg.model.block_size, self.device)
        self.early_stopping = EarlyStopping(cfg.train.patience, cfg.train.min_delta)
        # The gradient noise scale: one more copy of the gradients; off = exactly the plain loop.
        # (Several processes measure each rank's gradient instead: distributed.SummedGradients.)
        self.increments = (GradientIncrements(self.model.parameters())
                           if cfg.train.noise_scale and not self.ranks.distributed else None)
        self.noise = NoiseScaleEstimator()
        self.state = LoopState(accum=cfg.train.accum)
        self._resume_accum: int | None = None  # --accum given with --resume: a change at the next epoch boundary
        if resume_state is not None:
            self._load_resume_state(resume_state)
            if cfg.train.noise_scale:  # (resumed with --no-noise-scale: no stale estimate is reported)
                self.noise.load_state_dict(self.state.noise_scale_state)
            self._resume_accum = rd.accum_given_with_resume(self.state, (overrides or {}).get("train.accum"),
                                                            cfg.train.epochs, self.notes)
        # config.json is the resolved config: a resume rewrites it with what it merged (and recreates it).
        # Rank 0 alone writes; the other ranks' events go nowhere.
        if self.ranks.is_main:
            rd.write_config(self.run_dir, self.cfg, self.corpus, self.device, self.threads, self.precision,
                            self.ranks.world_size)
        self.metrics = MetricsWriter(self.run_dir) if self.ranks.is_main else NoMetrics()
        self.sink = FanOut(self.metrics, sink)
        self._paused = False
        self._stop_agreed = False  # several processes: the stop they last agreed on (_agree)
        self._save_requested = False
        self._sample_requested = False  # `g`: a sample after the current step
        self.sampler = LiveSampler(self.model, self.corpus.vocab, cfg.train.sample_tokens, cfg.train.seed)
        self._last_save_time = self._session_started = time.monotonic()
        # (epoch, cursor, step) of the `latest` checkpoint on disk, if any
        self._latest_saved = (self.state.epoch, self.state.example_cursor, self.state.step) if resume_state else None
        self._save_error = ""
        self._window_rng: dict[str, Any] | None = None
        self._step_alerted_epoch = 0  # one live spike/divergence alert per epoch, not one per step
        # The verdict so far (a resumed run's `end` record carries one even if it stops at once).
        self.last_diagnosis: Diagnosis | None = Diagnosis.from_state(self.state.last_verdict)
        self.error: BaseException | None = None

    def _take_lock(self, run_dir: Path) -> None:
        self.run_lock = rd.lock_run_dir(run_dir)

    def release_run_dir(self) -> None:
        """The run is over: no more steering, and another process may now train in the run dir."""
        if self._control_server is not None:
            self._control_server.close()
            self._control_server = None
        if self.run_lock is not None:
            self.run_lock.release()

    def open_control_socket(self) -> None:
        """Listen for commands from viewers (control_socket.py) while the run runs."""
        from tui_trainer.rundir.control_socket import ControlServer

        try:
            self._control_server = ControlServer(self.run_dir, self.control, self.steering_status)
        except OSError as exc:  # e.g. a run dir path longer than a Unix socket's ~107 bytes
            self.notes.append(f"no control socket ({exc.strerror or exc}): viewers can watch this run, not steer it")

    def _load_resume_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.state = LoopState(**state["loop"])
        self.state.finished = None
        self._restore_rank_rng(state)
        if self.ranks.is_main:  # (rank 0 alone writes in the run dir)
            rd.trim_metrics_after(self.run_dir, self.state.step, len(self.state.val_history))
        self.notes.append(f"resumed at epoch {self.state.epoch}, step {self.state.step}")
        pending = rd.pending_accum_note(self.state)
        if pending:
            self.notes.append(pending)

    def _restore_rank_rng(self, state: dict) -> None:
        """Each rank's own RNG state when the world size is the one the checkpoint was saved with
        (bit-exact); otherwise rank 0 takes the saved one and the others their fresh seeds."""
        saved_world = int(state.get("world_size", 1))
        world = self.ranks.world_size
        if saved_world == world and not state.get("rng_ranks_lost"):
            restore_rng(state["rng_ranks"][self.ranks.rank] if world > 1 else state["rng"], self.device)
            return
        if self.ranks.is_main:
            restore_rng(state["rng"], self.device)
        if saved_world == world:
            self.notes.append("saved after a process was lost (only rank 0's random state was kept): "
                              "the same position and data order, no longer bit-exact with an unbroken run")
            return
        self.notes.append(f"saved with {_processes(saved_world)}, resumed with {_processes(world)}: the same "
                          f"position and data order, the effective batch now micro-batch x accum x {world}; "
                          f"no longer bit-exact with an unbroken run")

    # -- derived figures ------------------------------------------------------------------------

    def _capped(self, examples: int, limit_batches: int | None) -> int:
        return min(examples, limit_batches * self.cfg.train.micro_batch) if limit_batches else examples

    def examples_per_epoch(self) -> int:
        return self._capped(len(self.train_set), self.cfg.data.limit_train_batches)

    def val_examples(self) -> int:
        """Examples one validation pass reads (``--limit-val-batches`` caps it)."""
        return self._capped(len(self.val_set), val_batch_limit(self.cfg.data))

    def planned_tokens(self) -> int:
        return self.cfg.train.epochs * self.examples_per_epoch() * self.cfg.model.block_size

    def warmup_tokens(self) -> int:
        """--warmup-tokens, or 5% of the run but at least 10 steps' worth (at most 20% of the run)."""
        explicit = self.cfg.optim.warmup_tokens
        if explicit is not None:
            return explicit
        planned = self.planned_tokens()
        ten_steps = (10 * self.cfg.train.micro_batch * self.cfg.train.accum * self.ranks.world_size
                     * self.cfg.model.block_size)
        return int(min(max(0.05 * planned, ten_steps), 0.2 * planned))

    def lr_for(self, tokens_seen: int) -> float:
        o = self.cfg.optim
        return lr_at(tokens_seen, o.lr, o.lr * o.min_lr_ratio, self.warmup_tokens(), self.planned_tokens())

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint_state(self, rng: dict[str, Any] | None = None,
                         rank_rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything a resume needs. ``rank_rngs``: every rank's RNG state (several processes)."""
        rng = rng if rng is not None else capture_rng(self.device)
        extra: dict[str, Any] = {}
        if rank_rngs is not None and len(rank_rngs) > 1:
            extra["rng_ranks"] = rank_rngs
        elif self.ranks.distributed:  # a rescue after a process was lost: only rank 0's state is here
            extra["rng_ranks_lost"] = True
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "loop": {**asdict(self.state), "elapsed_seconds": self.elapsed_seconds(),
                     "last_verdict": self.last_diagnosis.to_state() if self.last_diagnosis else None},
            "rng": rank_rngs[0] if "rng_ranks" in extra else rng,
            **extra,
            "world_size": self.ranks.world_size,
            "config": self.cfg.to_dict(),
            "vocab": rd.vocab_record(self.corpus.vocab),
            "tokenizer": self.corpus.vocab.record(),
            "data_sha256": self.corpus.sha256,
            "data_path": self.corpus.path,
            "data_bytes": rd.data_size(self.corpus.path),
            "precision": self.precision,  # what the run trains in (a resume keeps it unless told)
        }

    def elapsed_seconds(self) -> float:
        """Wall time of the whole run so far: the earlier sessions (from the checkpoint) and this one."""
        return self.state.elapsed_seconds + time.monotonic() - self._session_started

    def save(self, kind: str, rng: dict[str, Any] | None = None) -> bool:
        """Write a checkpoint (rank 0; with several processes every rank calls this at the same
        point, sends its RNG state, and gets rank 0's outcome)."""
        rank_rngs = self.ranks.gather(capture_rng(self.device)) if self.ranks.distributed else None
        if self.ranks.is_main:
            saved = self._write_checkpoint(kind, rng, rank_rngs)
        else:
            saved = False
        saved = bool(self.ranks.broadcast(saved)) if self.ranks.distributed else saved
        if saved:
            self._last_save_time = time.monotonic()
            if kind == "latest":
                self._latest_saved = (self.state.epoch, self.state.example_cursor, self.state.step)
        return saved

    def rescue_save(self) -> str:
        """Several processes, another one lost: rank 0 saves where the run stands (the last step
        taken; a partial window's gradient is dropped) unless `latest` holds it already. Returns what
        a resume can do, for the end message ("" on the other ranks)."""
        st = self.state
        if not self.ranks.is_main or not hasattr(self, "optimizer"):
            return ""
        if self._latest_saved != (st.epoch, st.example_cursor, st.step):
            self.optimizer.zero_grad(set_to_none=True)
            if not self._write_checkpoint("latest", None, None):
                return "; " + (f"the previous checkpoint (step {self._latest_saved[2]}) is intact"
                               if self._latest_saved else "no checkpoint could be saved")
            self._latest_saved = (st.epoch, st.example_cursor, st.step)
        return (f"; step {st.step} is saved: continue with --resume {self.run_dir} (the other ranks' random "
                f"state was lost with them: not bit-exact)")

    def _write_checkpoint(self, kind: str, rng: dict[str, Any] | None,
                          rank_rngs: list[dict[str, Any]] | None) -> bool:
        path = ckpt.checkpoint_path(self.run_dir, kind)
        try:
            seconds = ckpt.save_atomic(self.checkpoint_state(rng, rank_rngs), path)
        except ckpt.CheckpointWriteError as exc:
            self._save_error = str(exc.__cause__.strerror if isinstance(exc.__cause__, OSError) else exc)
            self.sink.emit(CheckpointFailed(kind=kind, message=str(exc)))
            return False
        self.sink.emit(CheckpointSaved(kind=kind, path=str(path), step=self.state.step, epoch=self.state.epoch,
                                       seconds=seconds))
        return True

    def _restore_best(self) -> None:
        path = ckpt.checkpoint_path(self.run_dir, "best")
        if self.ranks.is_main and path.exists():  # (the weights rank 0 keeps: the others end now)
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])


def _processes(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")


def _user_error_parts(exc: BaseException) -> tuple[str, str, int | None]:
    """What the other ranks raise when rank 0's set-up failed: (message, hint) of a UserError, and
    the signal of a stopped data preparation (0 = none known); ("", "", None) for anything else."""
    if isinstance(exc, UserError):
        return exc.message, exc.hint, None
    if isinstance(exc, PreparationCancelled):
        return "", "", exc.args[0] if exc.args and exc.args[0] else 0
    return "", "", None
