"""The training loop, top to bottom: ``Trainer(cfg, sink, control).run()`` → ``RunEnded``.

    run          Trainer._run: the epochs; an accum change waiting for an epoch's start applied there
    epoch        Trainer._train_epoch: its shuffled examples cut into ``Window``s of accum micro-batches
    one step     step.py, OptimizerStep.take: accumulate (accumulation.py: the maths) → clip and step → record,
                 then what was asked meanwhile (agreement, auto-accum, `g`, `s`, pause, stop); an
                 out-of-memory mid-window redoes it at half the micro-batch (oom.py)
    epoch 0      Trainer._validate_the_start: --init-from's weights validated before any step
    validation   Trainer.evaluate → validation_loss: token-weighted val loss, in eval mode (and bits per byte);
                 an out-of-memory in it redoes the pass at half its micro-batch (oom.ValidationSplit)
    epoch's end  Trainer._finish_epoch: diagnosis, early stopping, checkpoints, the epoch's event

The parts, each handed what it needs and testable alone: ``TrainingSession`` (session.py: the
set-up, and ``RunFigures``, figures.py: the sizes and the LR schedule), ``Checkpoints`` (saving.py),
``Steering`` (steering.py: the commands and the ranks' agreement on them), ``Endings`` (endings.py:
every way a run ends). A signal (SIGINT/SIGTERM) becomes a stop in cli/signals.py; the loop meets
it in Steering (between micro-steps, or agreed at a step's end) and saves and ends through
Endings.interrupted. Several processes: distributed.py. No Textual import.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from tui_trainer.analysis.diagnosis import Diagnosis, SchedulePosition, diagnose, val_rise_warning
from tui_trainer.analysis.time_budget import budget_spent_words, last_epoch_share
from tui_trainer.config import RunConfig
from tui_trainer.control import Control
from tui_trainer.data.bits_per_byte import val_bits_per_byte
from tui_trainer.data.dataset import WindowDataset, epoch_examples, epoch_windows, val_batch_limit, val_batches
from tui_trainer.engine.distributed import PeerLost, Ranks
from tui_trainer.engine.endings import Endings
from tui_trainer.engine.oom import NoSmallerSplit, ValidationRanOutOfMemory, ValidationSplit, split_sizes
from tui_trainer.engine.saving import Checkpoints
from tui_trainer.engine.session import TrainingSession
from tui_trainer.engine.session_state import checkpoint_of
from tui_trainer.engine.split import split_choice
from tui_trainer.engine.steering import Steering
from tui_trainer.engine.step import OptimizerStep
from tui_trainer.engine.validation_progress import ValidationProgressEmitter
from tui_trainer.errors import DataChanged
from tui_trainer.events import EpochEvent, Notice, RunEnded, RunStarted, Sink
from tui_trainer.model.gpt import GPT


class Trainer:
    """Set up with ``Trainer(cfg, sink, control, **setup)`` (``setup``: TrainingSession's
    keywords; raises UserError on bad input, writing nothing), then ``run()`` → ``RunEnded``."""

    def __init__(self, cfg: RunConfig, sink: Sink | None = None, control: Control | None = None, **setup: Any) -> None:
        self.session = s = TrainingSession(cfg, sink, control, **setup)
        # What the loop reads at every step, by name (the session built them once, complete).
        self.cfg, self.state, self.sink, self.control, self.ranks = s.cfg, s.state, s.sink, s.control, s.ranks
        self.device, self.model, self.optimizer, self.run_dir, self.metrics, self.figures = (
            s.device, s.model, s.optimizer, s.run_dir, s.metrics, s.figures)
        self.checkpoints = Checkpoints(s.run_dir, s.ranks, s.sink, s.state, contents=lambda rng, rank_rngs: checkpoint_of(s, rng, rank_rngs),
                                       latest=s.latest_saved, device=s.device,
                                       every_steps=s.cfg.train.checkpoint_every)
        self.steering = Steering(s.control, s.ranks, s.sink, s.state, save=self.checkpoints.save_latest,
                                 sample=s.sampler.asked)
        self.endings = Endings(s.state, s.sink, s.control, self.checkpoints, s.early_stopping, s.run_dir,
                               verdict=lambda: s.diagnosis, can_retry_save=s.for_ui and not s.ranks.distributed,
                               elapsed=s.elapsed_seconds)
        self.steps = OptimizerStep(s, self.steering, self.checkpoints, self.endings)
        self.validation_split = ValidationSplit(s.sink, s.device, s.cfg.train.micro_batch, s.state,
                                                s.ranks.world_size)
        if s.budget is not None:  # (--time-budget: pauses do not count)
            s.budget.paused = lambda: self.steering.seconds_paused
        self.error: BaseException | None = None  # what ended the run, if not the run itself
        self.rescue_advice = ""  # after a lost process or data cut short: what a resume can do (saving.rescue)

    @property
    def last_diagnosis(self) -> Diagnosis | None:
        return self.session.diagnosis

    def run(self) -> RunEnded:
        try:
            if self.ranks.is_main:
                self.session.open_control_socket(self.steering.status)
            end = self._run()
        except NoSmallerSplit as exc:  # (every rank, together: the pass's sum was their agreement)
            saved = self.checkpoints.save("latest")
            end = self.endings.end("error", str(exc) if saved else f"{exc} (the checkpoint could not be saved: "
                                                                   f"{self.checkpoints.error})")
        except BaseException as exc:  # a bug or OOM: record it, keep what the run dir has
            self.error = exc
            if isinstance(exc, (PeerLost, DataChanged)):  # the last step taken is saved (a partial window's
                # gradient dropped): a lost process, or the token cache cut short under the run (token_file.py)
                self.optimizer.zero_grad(set_to_none=True)
                self.rescue_advice = self.checkpoints.rescue()
                end = self.endings.end("error", "; ".join(filter(None, (str(exc), self.rescue_advice))))
            else:
                end = self.endings.crashed(exc, log=self.ranks.is_main)  # (rank 0 alone writes in the run dir)
        finally:
            self.session.close(clean=self.error is None)
        return end

    def _restore_best(self) -> None:
        self.checkpoints.restore_best(self.model)

    # -- the run: epochs ------------------------------------------------------------------------

    def _run(self) -> RunEnded:
        cfg, st, s = self.cfg, self.state, self.session
        s.started = time.monotonic()
        self.sink.emit(self._run_started())
        if s.outstanding_end is not None:
            # Training was done; only the `end` record was missing (a stop during the final
            # validation or save of an older version, or a kill just before the record).
            message = (f"the run had finished (epoch {st.epoch - 1} of {cfg.train.epochs} saved) "
                       f"but its end was never recorded: recorded now")
            if s.outstanding_end == "early_stop":
                return self.endings.end_with_the_run_saved("early_stop", message, then=self._restore_best)
            return self.endings.end_with_the_run_saved("completed", message)
        if s.resume_accum is not None:  # --accum given with --resume
            self.steering.request_accum(s.resume_accum, at_this_boundary=st.example_cursor == 0)
            s.resume_accum = None
        self.model.train()
        if self.ranks.distributed:  # a stop during the set-up (one process sees it at its first micro-step)
            self.steering.agree()
            if self.steering.stopping():
                return self.endings.interrupted(self.checkpoints.save("latest"))
        if s.init_source is not None and st.step == 0:  # a new run from a model (a resume never repeats it)
            outcome = self._validate_the_start()
            if outcome is not None:
                return outcome
        if s.budget is not None:
            s.budget.training_starts()
        while self._training_left():
            self.steering.apply_pending_accum()
            outcome = self._train_epoch()
            if outcome is None:
                outcome = self._finish_epoch()
            if outcome is not None:
                return outcome
        late_stop = ("a stop came after the last training step: the last validation and final save were "
                     "finished, so the run is complete" if self.steering.stopping() else "")
        if s.budget is None:
            return self.endings.end_with_the_run_saved("completed", late_stop)
        # The budget ended it, most often inside its last epoch (by design): say where, in words and as a share.
        per_epoch = self.figures.examples_per_epoch() * cfg.model.block_size
        share = last_epoch_share(st.tokens_seen, per_epoch)
        spent = budget_spent_words(-(-st.tokens_seen // per_epoch), share)
        return self.endings.end_with_the_run_saved("completed", "; ".join(filter(None, [spent, late_stop])),
                                                   last_epoch_share=share)

    def _training_left(self) -> bool:
        """Epochs to go (--epochs), or tokens (--time-budget: the epoch that reaches the plan is the last)."""
        budget = self.session.budget
        return self.state.epoch <= self.cfg.train.epochs if budget is None else not budget.done(self.state.tokens_seen)

    def _run_started(self) -> RunStarted:
        """The run's first event: what it trains, on what, and from where (a resume)."""
        cfg, st, s, world = self.cfg, self.state, self.session, self.ranks.world_size
        per_epoch, effective = self.figures.examples_per_epoch(), cfg.train.micro_batch * st.accum * world
        micro_batch, accum = split_sizes(cfg.train.micro_batch, st.accum, st.micro_split)
        if effective > per_epoch:
            s.notes.append(f"an epoch holds {per_epoch:,} sequences, fewer than the effective batch of "
                           f"{effective:,}: each epoch is one optimizer step of {per_epoch:,}")
        if per_epoch < self.figures.train_windows and st.step == 0:  # (--quick caps it too: say so)
            s.notes.append(f"each epoch trains on {per_epoch:,} of the {self.figures.train_windows:,} training "
                           f"sequences (--limit-train-batches {cfg.data.limit_train_batches}; a shuffled sample "
                           f"each epoch)")
        return RunStarted(
            run_dir=str(self.run_dir), device=str(self.device), threads=s.threads,
            parameters=self.model.num_parameters(), vocab_size=s.corpus.vocab.size,
            train_examples=per_epoch, val_examples=self.figures.val_examples(), epochs=self.figures.epochs(),
            micro_batch=micro_batch, accum=accum, processes=world, block_size=cfg.model.block_size,
            planned_tokens=self.figures.planned_tokens(), resumed_from_step=st.step, start_epoch=st.epoch,
            tokens_seen=st.tokens_seen, notes=tuple(s.notes), elapsed_before=st.elapsed_seconds,
            sample_tokens=cfg.train.sample_tokens, noise_scale=cfg.train.noise_scale,
            auto_accum=cfg.train.auto_accum, precision=s.precision, val_batches=len(self.my_val_batches()),
            init_from=str(s.init_source.path) if s.init_source is not None else "",
            time_budget=s.budget.planner.budget_seconds if s.budget else None,
            budget_left=s.budget.seconds_left() if s.budget else None,
            split=split_choice(cfg, s.fit, world), memory_budget=s.memory_budget or 0,
            checkpoint_activations=cfg.train.checkpoint_activations)

    # -- an epoch: windows of micro-batches ------------------------------------------------------

    def _train_epoch(self) -> RunEnded | None:
        cfg, st = self.cfg, self.state
        # The example order stays on the host, where a batch's gather reads it (on a GPU: no sync).
        order = epoch_examples(len(self.session.train_set), cfg.train.seed, st.epoch, cfg.train.micro_batch,
                               cfg.data.limit_train_batches)
        # The global windows: the same as one process accumulating accum x world micro-batches.
        windows, first_window = epoch_windows(len(order), cfg.train.micro_batch, st.accum * self.ranks.world_size,
                                              cursor=st.example_cursor)
        for window_index in range(first_window, len(windows)):
            outcome = self.steps.take(order, windows, window_index)
            if outcome is not None:
                return outcome
            if self.session.budget is not None and self.session.budget.done(st.tokens_seen):
                return None  # the plan is trained: this (maybe partial) epoch is the last
        return None

    # -- validation and the epoch's end ----------------------------------------------------------

    def my_val_batches(self) -> list[tuple[int, int]]:
        """This rank's validation batches: every world_size-th, as rank_share."""
        batches = val_batches(len(self.session.val_set), self.cfg.train.micro_batch, val_batch_limit(self.cfg.data))
        return batches[self.ranks.rank::self.ranks.world_size]

    def evaluate(self, epoch: int | None = None) -> float:
        """The validation loss of the weights as they are (``validation_loss``), its progress told
        as ``epoch``'s (None: the epoch in progress). An out-of-memory in the pass: redone at half the
        micro-batch (oom.ValidationSplit), the same loss; at micro-batch 1, NoSmallerSplit ends the run."""
        s = self.session
        while True:
            mine = self.validation_split.batches(self.my_val_batches())
            progress = ValidationProgressEmitter(self.sink, self.state.epoch if epoch is None else epoch, len(mine))
            try:
                return validation_loss(self.model, s.val_set, mine, self.ranks, progress)
            except ValidationRanOutOfMemory as out_of_memory:  # (every rank: agreed in the pass's sum)
                self.validation_split.after(out_of_memory, self.state)  # half the micro-batch, or NoSmallerSplit

    def bits_per_byte(self, val_loss: float) -> float | None:
        """``val_loss`` (a pass's mean over every target it read) in bits per byte of the text."""
        s = self.session
        if not s.val_bytes:
            return None
        return val_bits_per_byte(val_loss, self.figures.val_examples() * self.cfg.model.block_size, s.val_bytes)

    def _validate_the_start(self) -> RunEnded | None:
        """Epoch 0 (--init-from, a new run): the starting weights' validation before any step, so
        the user sees what fine-tuning buys. Its val loss is early stopping's first best (as
        nanoGPT's fine-tuning keeps its first evaluation as best_val_loss): an epoch counts as an
        improvement only when it beats the model it started from, and the `best` checkpoint holds
        the starting weights until one does. No train loss, no verdict: no training epoch."""
        cfg, st, s = self.cfg, self.state, self.session
        started = time.perf_counter()
        val_loss = self.evaluate(epoch=0)
        sample = s.sampler.after_epoch(st.step) if self.ranks.is_main else None
        best = s.early_stopping
        # (a source whose val loss is not finite sets no bar: the first finite epoch is the first best)
        improved = math.isfinite(val_loss) and best.update(val_loss, 0)[0]
        self.sink.emit(EpochEvent(
            epoch=0, epochs=cfg.train.epochs, train_loss=float("nan"), val_loss=val_loss,
            val_bpb=self.bits_per_byte(val_loss), accum=st.accum,
            effective_batch=cfg.train.micro_batch * st.accum * self.ranks.world_size, tokens_seen=st.tokens_seen,
            micro_batch=cfg.train.micro_batch, seconds=time.perf_counter() - started, diagnosis="",
            best_val_loss=best.best if best.best_epoch is not None else None, best_epoch=best.best_epoch,
            sample=sample))
        if improved:
            self.checkpoints.save("best")
        self.steering.agree()  # (a stop during this pass: every rank sees it)
        if self.steering.stopping():
            return self.endings.interrupted(self.checkpoints.save("latest"))
        return None

    def _finish_epoch(self) -> RunEnded | None:
        cfg, st, s = self.cfg, self.state, self.session
        started = time.perf_counter()
        val_loss = self.evaluate()
        # Its own generator: the losses stay as they were. Rank 0's alone (it alone shows it).
        sample = s.sampler.after_epoch(st.step) if self.ranks.is_main else None
        train_loss = st.epoch_loss_sum / st.epoch_tokens if st.epoch_tokens else float("nan")
        st.train_history.append(train_loss)
        st.val_history.append(val_loss)
        # The previous verdict (hysteresis) and where the lr schedule stands (what remedy fits).
        schedule = SchedulePosition.at(st.tokens_seen, cfg.optim.lr, cfg.optim.lr * cfg.optim.min_lr_ratio,
                                       s.figures.warmup_tokens(), s.figures.decay_end(), cfg.optim.lr_hold,
                                       lr=s.figures.lr_for(st.tokens_seen - st.tokens_skipped))
        verdict = diagnose(st.train_history, st.val_history, s.corpus.vocab.size, cfg.diagnosis,
                           st.epoch_step_losses, st.epoch_first_step, s.diagnosis, schedule)
        s.diagnosis = verdict
        warning = val_rise_warning(st.val_history, cfg.diagnosis.val_rise_warning)
        best = s.early_stopping
        improved, should_stop, stop_reason = best.update(val_loss, st.epoch)
        epoch_done, world = st.epoch, self.ranks.world_size
        micro_batch, accum = split_sizes(cfg.train.micro_batch, st.accum, st.micro_split)
        self.sink.emit(EpochEvent(
            epoch=epoch_done, epochs=self.figures.epochs(), train_loss=train_loss, val_loss=val_loss,
            val_bpb=self.bits_per_byte(val_loss), accum=accum,
            effective_batch=cfg.train.micro_batch * st.accum * world, tokens_seen=st.tokens_seen,
            micro_batch=micro_batch, seconds=st.epoch_seconds + (time.perf_counter() - started),
            diagnosis=verdict.kind,
            diagnosis_reason=verdict.reason, remedy=verdict.remedy, val_rise_warning=warning,
            best_val_loss=best.best if best.best_epoch is not None else None, best_epoch=best.best_epoch,
            epochs_without_improvement=best.epochs_without_improvement,
            tokens_per_s=st.epoch_tokens / st.epoch_seconds if st.epoch_seconds else 0.0, sample=sample,
            noise_scale=s.noise.noise_scale, suggested_accum=s.noise.suggestion(cfg.train.micro_batch, world),
            noise_scale_error=s.noise.relative_error()))
        # The next epoch starts clean; a checkpoint taken now resumes there.
        st.epoch += 1
        st.example_cursor = 0
        st.epoch_loss_sum, st.epoch_tokens, st.epoch_seconds = 0.0, 0, 0.0
        st.epoch_step_losses = []
        st.epoch_first_step = st.step + 1
        if not math.isfinite(val_loss):  # diverged weights: not saved, and not a "completed" run
            return self.endings.diverged(val_loss, epoch_done, lr=cfg.optim.lr)
        if improved:
            self.checkpoints.save("best")
        if should_stop and self._training_left():
            self.checkpoints.save("latest")
            self.sink.emit(Notice(message=f"early stopping: {stop_reason}", level="warning"))
            # The best weights come back only once `latest` holds the run's own (a retried save must
            # not pair the best epoch's weights with a later epoch's optimizer and position).
            return self.endings.end_with_the_run_saved("early_stop", stop_reason, then=self._restore_best)
        saved = self.checkpoints.save("latest")
        if s.budget is not None:
            s.budget.epoch_end_done(time.perf_counter() - started)
        self.steering.agree()  # (a stop, or an accum change, during validation or the save: every rank sees it)
        # A stop during the last epoch's validation or save: nothing is left to interrupt, the run
        # completes (a stop that ended it as "interrupted" left a run no resume could finish).
        if self.steering.stopping() and self._training_left():
            return self.endings.interrupted(saved, f"at the end of epoch {epoch_done}")
        return None


# -- the validation pass ---------------------------------------------------------------------------

@torch.inference_mode()
def validation_loss(model: GPT, val_set: WindowDataset, batches: list[tuple[int, int]], ranks: Ranks,
                    progress: ValidationProgressEmitter) -> float:
    """Token-weighted mean validation loss over ``batches`` (this rank's), in eval mode; back to
    train mode after. Several processes: each evaluates its batches, and the sums are added up.

    An out-of-memory ends this rank's pass early (its sums are worthless); the ranks learn it in the
    pass's one sum, where each adds a 1 in its own slot, so every rank runs the same collectives and
    raises ``ValidationRanOutOfMemory`` together (one process: at once)."""
    was_training = model.training
    model.eval()
    try:
        loss_sum = torch.zeros((), device=val_set.device)
        tokens, ran_out = 0, False
        indices = torch.arange(len(val_set), device=val_set.device)
        for done, (start, stop) in enumerate(batches, 1):
            inputs, targets = val_set.batch(indices[start:stop])
            try:
                loss_sum += model.loss_sum(inputs, targets).float()
            except torch.OutOfMemoryError:
                ran_out = True  # (said below, once the error's frames and their tensors are gone)
                break
            tokens += inputs.numel()
            progress.batch_done(done)
        if ranks.distributed:
            flags = torch.zeros(ranks.world_size, dtype=torch.float64, device=val_set.device)
            flags[ranks.rank] = float(ran_out)
            summed = ranks.sum_(torch.cat([loss_sum.double().reshape(1), torch.tensor(
                [float(tokens)], dtype=torch.float64, device=val_set.device), flags]))
            out_of_memory = tuple(rank for rank, flag in enumerate(summed[2:].tolist()) if flag)
            if out_of_memory:
                raise ValidationRanOutOfMemory(out_of_memory)
            return (summed[0] / summed[1]).item()
        if ran_out:
            raise ValidationRanOutOfMemory((0,))
        return loss_sum.item() / tokens
    finally:
        model.train(was_training)
