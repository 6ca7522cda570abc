"""The training loop, top to bottom: ``Trainer(cfg, sink, control).run()`` → ``RunEnded``.

    run          Trainer._run: the epochs; an accum change waiting for an epoch's start applied there
    epoch        Trainer._train_epoch: its shuffled examples cut into ``Window``s of accum micro-batches
    one step     OptimizerStep.take: accumulate (accumulation.py: the maths) → clip and step → record,
                 then what was asked meanwhile (agreement, auto-accum, `g`, `s`, pause, stop); an
                 out-of-memory mid-window redoes it at half the micro-batch (oom.py)
    epoch 0      Trainer._validate_the_start: --init-from's weights validated before any step
    validation   Trainer.evaluate → validation_loss: token-weighted val loss, in eval mode (and bits per byte)
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

from tui_trainer.analysis.diagnosis import Diagnosis, SchedulePosition, diagnose, step_verdict, val_rise_warning
from tui_trainer.analysis.noise_scale import WindowNorms
from tui_trainer.config import RunConfig
from tui_trainer.control import Control
from tui_trainer.data.bits_per_byte import val_bits_per_byte
from tui_trainer.data.dataset import Window, WindowDataset, epoch_examples, epoch_windows, val_batch_limit, val_batches
from tui_trainer.engine.accumulation import WindowAborted, accumulate_window, join_the_gradient_sync
from tui_trainer.engine.distributed import PeerLost, Ranks, peer_lost_in_the_backward, rank_share, sum_over_ranks
from tui_trainer.engine.endings import Endings
from tui_trainer.engine.oom import OutOfMemoryRecovery, cut_window, split_sizes
from tui_trainer.engine.runtime import capture_rng
from tui_trainer.engine.saving import Checkpoints
from tui_trainer.engine.session import TrainingSession
from tui_trainer.engine.split import StepPeak
from tui_trainer.engine.steering import Steering
from tui_trainer.engine.validation_progress import ValidationProgressEmitter
from tui_trainer.errors import DataChanged
from tui_trainer.events import DiagnosisEvent, EpochEvent, MicroStep, Notice, RunEnded, RunStarted, Sink, StepEvent
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
        self.checkpoints = Checkpoints(s.run_dir, s.ranks, s.sink, s.state, contents=s.checkpoint_state,
                                       latest=s.latest_saved, device=s.device,
                                       every_steps=s.cfg.train.checkpoint_every)
        self.steering = Steering(s.control, s.ranks, s.sink, s.state, save=self.checkpoints.save_latest,
                                 sample=s.sampler.asked)
        self.endings = Endings(s.state, s.sink, s.control, self.checkpoints, s.early_stopping, s.run_dir,
                               verdict=lambda: s.diagnosis, can_retry_save=s.for_ui and not s.ranks.distributed)
        self.steps = OptimizerStep(s, self.steering, self.checkpoints, self.endings)
        if s.budget is not None:  # (--time-budget: pauses do not count)
            s.budget.paused = lambda: self.steering.seconds_paused
        self.error: BaseException | None = None  # what ended the run, if not the run itself

    @property
    def last_diagnosis(self) -> Diagnosis | None:
        return self.session.diagnosis

    def run(self) -> RunEnded:
        try:
            if self.ranks.is_main:
                self.session.open_control_socket(self.steering.status)
            end = self._run()
        except BaseException as exc:  # a bug or OOM: record it, keep what the run dir has
            self.error = exc
            if isinstance(exc, (PeerLost, DataChanged)):  # the last step taken is saved (a partial window's
                # gradient dropped): a lost process, or the token cache cut short under the run (token_file.py)
                self.optimizer.zero_grad(set_to_none=True)
                end = self.endings.end("error", str(exc) + self.checkpoints.rescue())
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
        return self.endings.end_with_the_run_saved("completed", late_stop)

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
            split=s.split_choice(), memory_budget=s.memory_budget or 0,
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
        as ``epoch``'s (None: the epoch in progress)."""
        s = self.session
        mine = self.my_val_batches()
        progress = ValidationProgressEmitter(self.sink, self.state.epoch if epoch is None else epoch, len(mine))
        return validation_loss(self.model, s.val_set, mine, self.ranks, progress)

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
                                       s.figures.warmup_tokens(), s.figures.decay_end())
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


# -- one optimizer step: accumulate → clip and step → record ------------------------------------

class OptimizerStep:
    """One optimizer step, ``take``: accumulate the window's micro-batches → clip and step → record;
    then what was asked meanwhile. Handed the session's set-up and the loop's other parts."""

    def __init__(self, session: TrainingSession, steering: Steering, checkpoints: Checkpoints,
                 endings: Endings) -> None:
        self.session, self.steering, self.checkpoints, self.endings = session, steering, checkpoints, endings
        self.cfg, self.state, self.sink, self.ranks = session.cfg, session.state, session.sink, session.ranks
        self.model, self.optimizer = session.model, session.optimizer
        self._window_rng: dict[str, Any] | None = None  # the window in progress starts from this RNG state
        self._step_alerted_epoch = 0  # one live spike/divergence alert per epoch, not one per step
        self.peak = StepPeak(session.device)  # the step's peak memory (the batch panel's bar)
        self.out_of_memory = OutOfMemoryRecovery(self.state, self.sink, session.device, self.cfg.train.micro_batch,
                                                 self.optimizer, stop=self._stop_out_of_memory)

    def take(self, order: torch.Tensor, windows: list[Window], index: int) -> RunEnded | None:
        cfg, st = self.cfg, self.state
        window = windows[index]  # every rank's micro-batches; this rank takes its share
        mine = rank_share(window, self.ranks.rank, self.ranks.world_size)
        self._window_rng = capture_rng(self.session.device)  # a stop mid-window saves this: the resume redoes it
        started, paused_before = time.perf_counter(), self.steering.seconds_paused
        self.peak.start()
        while True:
            pieces = cut_window(mine, st.micro_split)  # (an out-of-memory cut the micro-batches: oom.py)
            try:
                loss_total, tokens = self._accumulate(order, window, pieces, index + 1, len(windows))
                break
            except WindowAborted:
                # Stop mid-window: drop its partial gradient; the checkpoint resumes at its start.
                self.optimizer.zero_grad(set_to_none=True)
                return self.endings.interrupted(self.checkpoints.save("latest", rng=self._window_rng))
            except torch.OutOfMemoryError:
                if self.ranks.distributed:  # (no agreement inside the backward's all-reduce: oom.py)
                    raise
                outcome = self.out_of_memory.after(self._window_rng)  # None: the same window, half the micro-batch
                if outcome is not None:
                    return outcome
        mine = pieces
        lr, loss_sum, norm = self._clip_and_step(loss_total, tokens, window, mine)
        loss = loss_sum / tokens
        finite = math.isfinite(loss) and math.isfinite(norm)
        # fp16: an overflow the loss scaler skips is not a bad step, and the schedule waits (loss_scaling.py).
        scaler_skip = not finite and self.session.loss_scaling is not None \
            and self.session.loss_scaling.is_a_scaler_skip(loss, norm)
        if finite or scaler_skip:
            st.bad_steps_in_row = 0 if finite else st.bad_steps_in_row
            st.epoch_loss_sum += loss_sum
            st.epoch_tokens += tokens
            st.tokens_skipped += tokens if scaler_skip else 0
        else:
            st.bad_steps_in_row += 1
            st.bad_steps_total += 1
        st.step += 1
        st.tokens_seen += tokens
        st.example_cursor = window.stop
        st.epoch_step_losses.append(loss)
        paused = self.steering.seconds_paused - paused_before
        seconds = max(time.perf_counter() - started - paused, 1e-9)
        st.epoch_seconds += seconds
        world, noise, budget = self.ranks.world_size, self.session.noise, self.session.budget
        if budget is not None:  # (its plan, made or changed now, is told before the step)
            block = cfg.model.block_size
            budget.step_done(tokens_seen=st.tokens_seen, sink=self.sink,
                             tokens_per_step=cfg.train.micro_batch * st.accum * world * block,
                             tokens_per_epoch=self.session.figures.examples_per_epoch() * block)
        micro_batch, accum = split_sizes(cfg.train.micro_batch, st.accum, st.micro_split)
        flops_per_s, mfu = self.session.flops.figures(tokens / seconds)
        self.sink.emit(StepEvent(
            epoch=st.epoch, step=st.step, step_in_epoch=index + 1, steps_in_epoch=len(windows),
            micro_steps=len(mine), accum=accum, micro_batch=micro_batch,
            effective_batch=window.examples, tokens=tokens, loss=loss, lr=lr,
            grad_norm=norm, tokens_per_s=tokens / seconds, tokens_seen=st.tokens_seen, skipped=not finite,
            noise_scale=noise.noise_scale, suggested_accum=noise.suggestion(cfg.train.micro_batch, world),
            noise_scale_error=noise.relative_error(),
            world_size=world, budget_left=budget.seconds_left() if budget else None,
            planned_tokens=self.session.figures.planned_tokens() if budget else None,
            peak_memory=self.peak.read(), flops_per_s=flops_per_s, mfu=mfu))
        return self._after_the_step(loss, norm, finite or scaler_skip, index + 1, len(windows))

    def _accumulate(self, order: torch.Tensor, window: Window, mine: Window, step_in_epoch: int,
                    steps_in_epoch: int) -> tuple[torch.Tensor, int]:
        """This rank's share of the window, forward and backward into the gradients (several
        processes: one all-reduce, in the last backward). Returns (summed loss, the window's tokens)."""
        s, st = self.session, self.state
        self.optimizer.zero_grad(set_to_none=True)
        if s.grad_sync is not None:
            s.grad_sync.start_window()

        def between(i: int) -> bool:  # after micro-step i: tell the sinks, then the commands
            self.sink.emit(MicroStep(epoch=st.epoch, step=st.step + 1, micro_step=i + 1, micro_steps=len(mine),
                                     step_in_epoch=step_in_epoch, steps_in_epoch=steps_in_epoch))
            return self.steering.between_micro_steps(last=i + 1 == len(mine), window_rng=self._window_rng)

        total_tokens = window.tokens(self.cfg.model.block_size)  # every rank divides by the whole window's
        with peer_lost_in_the_backward(self.ranks):
            if len(mine) == 0:  # a short window's empty share: this rank still joins the all-reduce
                return join_the_gradient_sync(s.train_model, s.train_set, order, window.micro_batches[0],
                                              total_tokens=total_tokens, autocast_dtype=s.autocast_dtype,
                                              between_micro_steps=between)
            return accumulate_window(s.train_model, s.train_set, order, mine, total_tokens=total_tokens,
                                     autocast_dtype=s.autocast_dtype, between_micro_steps=between,
                                     increments=s.increments,
                                     no_sync=s.train_model.no_sync if self.ranks.distributed else None,
                                     loss_scale=s.loss_scaling.scale if s.loss_scaling is not None else None)

    def _clip_and_step(self, loss_total: torch.Tensor, tokens: int, window: Window,
                       mine: Window) -> tuple[float, float, float]:
        """LR, clip, one host sync, and the update unless the loss or norm is not finite (then the
        noise-scale estimate takes in the window's norms). Returns (lr, summed loss of the window,
        gradient norm before clipping). ``window``: every rank's micro-batches; ``mine``: this
        rank's (the same, for one process)."""
        cfg, s = self.cfg, self.session
        # The LR of the tokens seen once this step is taken: the first step of a warm-up learns too.
        # (Less the tokens of the steps the fp16 loss scaler skipped: they taught nothing.)
        lr = s.figures.lr_for(self.state.tokens_seen - self.state.tokens_skipped + tokens)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Clip once per window, after accumulation (and the ranks' all-reduce: the same norm on each).
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        scaling = s.loss_scaling
        if scaling is not None:  # fp16: the gradients back to their true size, once, before the clip
            scaling.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.ranks.distributed:
            measure = cfg.train.noise_scale
            local = s.grad_sync.local_sq_norm if measure and len(mine) else None
            loss_total, part_sizes, part_sq_norms = sum_over_ranks(self.ranks, loss_total, window,
                                                                   measure=measure, local_sq_norm=local)
        else:  # the noise scale's small batches: the micro-batches
            part_sizes = [stop - start for start, stop in mine]
            part_sq_norms = s.increments.sq_norms if s.increments is not None else []
        # The one host sync of the step: loss, gradient norm, fp16's scale (and each part's norm) together.
        scale = [scaling.scale_tensor().to(loss_total.device).float()] if scaling is not None else []
        loss_sum, norm, *part_sq = torch.stack(
            [loss_total.float(), grad_norm.float(), *scale, *(n.float() for n in part_sq_norms)]).tolist()
        if scaling is not None:
            scaling.last_scale = part_sq.pop(0)
            part_sq = [n / scaling.last_scale ** 2 for n in part_sq]  # (the parts were measured scaled)
        if math.isfinite(loss_sum / tokens) and math.isfinite(norm):
            # (fp16: a finite norm means the scaler's inf check found nothing, so step directly: no
            # second sync for GradScaler.step's own check.)
            self.optimizer.step()
            if part_sq:  # the window's norm before clipping, as the parts' are
                s.noise.update(WindowNorms.from_increments(part_sizes, part_sq, norm * norm))
                self.state.noise_scale_state = s.noise.state_dict()
        if scaling is not None:
            scaling.update()  # after an inf/NaN (recorded by unscale_): a smaller scale for the next window
        self.optimizer.zero_grad(set_to_none=True)
        return lr, loss_sum, norm

    def _stop_out_of_memory(self, message: str) -> RunEnded:
        """Out of memory at micro-batch 1: the last step's state saved (the window redone on resume)."""
        saved = self.checkpoints.save("latest", rng=self._window_rng)
        return self.endings.end("error", message if saved else f"{message} (the checkpoint could not be saved: "
                                                               f"{self.checkpoints.error})")

    def _after_the_step(self, loss: float, norm: float, finite: bool, step_in_epoch: int,
                        steps_in_epoch: int) -> RunEnded | None:
        """Between two steps: the ranks agree, --auto-accum, the live verdict, a non-finite step,
        then `g`, `s`, a pause and a stop, in that order."""
        cfg, st, steering = self.cfg, self.state, self.steering
        # Rank 0's decisions (a periodic save is one: its clock is rank 0's) reach every rank here.
        if self.checkpoints.periodic_due() and st.bad_steps_in_row == 0:
            steering.save_requested = True
        steering.agree()
        if cfg.train.auto_accum:
            steering.auto_accum(self.session.noise.suggestion(cfg.train.micro_batch, self.ranks.world_size),
                                step_in_epoch=step_in_epoch, steps_in_epoch=steps_in_epoch,
                                epochs=self.session.figures.epochs())
        self._check_step(loss)
        if not finite:
            outcome = self.endings.after_a_non_finite_step(loss, norm, max_bad_steps=cfg.train.max_bad_steps,
                                                           lr=cfg.optim.lr)
            if outcome is not None:
                return outcome
        steering.sample_if_asked()
        # No periodic `latest` during a run of non-finite steps: it keeps pointing at the last good
        # step. An asked-for save (the app's `s`, a stop) still saves.
        if steering.save_requested:
            steering.save_requested = False
            self.checkpoints.save("latest")
        if self.ranks.distributed and steering.paused:
            steering.wait_while_paused()
        if not steering.stopping():
            return None
        # No second save when this step's periodic one just wrote the same state.
        saved = self.checkpoints.holds_now()
        if not saved:
            saved = self.checkpoints.save("latest")
        return self.endings.interrupted(saved)

    def _check_step(self, loss: float) -> None:
        """Live verdict on the newest step: a non-finite loss always, a spike once per epoch."""
        st = self.state
        verdict = step_verdict(st.epoch_step_losses, self.session.corpus.vocab.size, self.cfg.diagnosis,
                               st.epoch_first_step)
        if verdict is None or (math.isfinite(loss) and self._step_alerted_epoch == st.epoch):
            return
        self._step_alerted_epoch = st.epoch
        self.session.diagnosis = verdict
        self.sink.emit(DiagnosisEvent(kind=verdict.kind, reason=verdict.reason, remedy=verdict.remedy,
                                      epoch=st.epoch, step=st.step))


# -- the validation pass ---------------------------------------------------------------------------

@torch.inference_mode()
def validation_loss(model: GPT, val_set: WindowDataset, batches: list[tuple[int, int]], ranks: Ranks,
                    progress: ValidationProgressEmitter) -> float:
    """Token-weighted mean validation loss over ``batches`` (this rank's), in eval mode; back to
    train mode after. Several processes: each evaluates its batches, and the sums are added up."""
    was_training = model.training
    model.eval()
    try:
        loss_sum = torch.zeros((), device=val_set.device)
        tokens = 0
        indices = torch.arange(len(val_set), device=val_set.device)
        for done, (start, stop) in enumerate(batches, 1):
            inputs, targets = val_set.batch(indices[start:stop])
            loss_sum += model.loss_sum(inputs, targets).float()
            tokens += inputs.numel()
            progress.batch_done(done)
        if ranks.distributed:
            both = torch.stack([loss_sum.double(), torch.tensor(float(tokens), dtype=torch.float64,
                                                                device=val_set.device)])
            summed = ranks.sum_(both)
            return (summed[0] / summed[1]).item()
        return loss_sum.item() / tokens
    finally:
        model.train(was_training)
