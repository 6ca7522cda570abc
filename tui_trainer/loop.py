"""The training loop, top to bottom: ``Trainer(cfg, sink, control).run()`` → ``RunEnded``.

    run        the epochs; an accum change waiting for an epoch's start is applied there
    epoch      its shuffled examples cut into windows of ``accum`` micro-batches
    window     accumulate the micro-batches' gradients (accumulation.py: the maths), then
    step       one optimizer step: LR for the tokens seen, clip once, one host sync, step
    validate   token-weighted val loss in eval mode, diagnosis, early stopping, checkpoints

Set-up (data, model, optimizer, run dir) and the services the loop calls (save, commands,
ending a run) live in session.py; the run directory's life in run_dir.py. The loop emits events
(events.py) to a sink and reads commands (control.py) between micro-steps. No Textual import.
"""

from __future__ import annotations

import math
import time
import traceback

import torch

from .accumulation import WindowAborted, accumulate_window
from .data import epoch_examples, plan_windows, val_batches
from .diagnosis import diagnose, step_verdict, val_rise_warning
from .errors import UserError
from .events import (AccumChangeApplied, DiagnosisEvent, EpochEvent, MicroStep, Notice, RunEnded, RunStarted,
                     StepEvent)
from .runtime import capture_rng
from .session import TrainingSession

DEFAULT_CHECKPOINT_SECONDS = 300.0  # `latest` every ~5 minutes when --checkpoint-every is not given


class Trainer(TrainingSession):
    """Set up with ``Trainer(cfg, sink, control)`` (raises UserError on bad input, writing
    nothing), then ``run()`` → the ``RunEnded`` event."""

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

    # -- the run: epochs ------------------------------------------------------------------------

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
            run_dir=str(self.run_dir), device=str(self.device), threads=self.threads,
            parameters=self.model.num_parameters(), vocab_size=self.corpus.vocab.size,
            train_examples=self.examples_per_epoch(), val_examples=self.val_examples(), epochs=cfg.train.epochs,
            micro_batch=cfg.train.micro_batch, accum=st.accum, processes=1, block_size=cfg.model.block_size,
            planned_tokens=self.planned_tokens(), resumed_from_step=st.step, start_epoch=st.epoch,
            tokens_seen=st.tokens_seen, notes=tuple(self.notes), elapsed_before=st.elapsed_seconds,
            precision=self.precision))
        if self._resume_accum is not None:
            self._request_accum(self._resume_accum, at_this_boundary=st.example_cursor == 0)
            self._resume_accum = None
        self.model.train()
        while st.epoch <= cfg.train.epochs:
            if (st.example_cursor == 0 and st.pending_accum is not None
                    and st.epoch >= (st.pending_accum_epoch or st.epoch)):
                self.sink.emit(AccumChangeApplied(old=st.accum, new=st.pending_accum, epoch=st.epoch, step=st.step))
                st.accum, st.pending_accum, st.pending_accum_epoch = st.pending_accum, None, None
            outcome = self._train_epoch() or self._finish_epoch()
            if outcome is not None:
                return outcome
        return self._end_with_the_run_saved("completed")

    # -- an epoch: windows of micro-batches ------------------------------------------------------

    def _train_epoch(self) -> RunEnded | None:
        cfg, st = self.cfg, self.state
        order = epoch_examples(len(self.train_set), cfg.train.seed, st.epoch, cfg.train.micro_batch,
                               cfg.data.limit_train_batches).to(self.device)
        windows = plan_windows(len(order), cfg.train.micro_batch, st.accum)
        # The window that starts at the cursor (an epoch's last window may be short, so no division).
        first_window = next((i for i, w in enumerate(windows) if w[0][0] >= st.example_cursor), len(windows))
        for window_index in range(first_window, len(windows)):
            outcome = self._train_window(order, windows, window_index)
            if outcome is not None:
                return outcome
        return None

    def _train_window(self, order: torch.Tensor, windows: list, window_index: int) -> RunEnded | None:
        """One window: accumulate its micro-batches, take the step, then save or stop if asked."""
        cfg, st = self.cfg, self.state
        micro_ranges = windows[window_index]
        self._window_rng = capture_rng(self.device)
        step = st.step + 1
        started = time.perf_counter()
        paused_seconds = [0.0]

        def between(i: int) -> bool:
            self.sink.emit(MicroStep(epoch=st.epoch, step=step, micro_step=i + 1, micro_steps=len(micro_ranges),
                                     step_in_epoch=window_index + 1, steps_in_epoch=len(windows)))
            keep_going = self._between_micro_steps(paused_seconds)
            # A stop after the window's last micro-step still takes the step (checked below).
            return keep_going or i + 1 == len(micro_ranges)

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
        lr, loss_sum, norm = self._optimizer_step(loss_total, tokens)
        loss = loss_sum / tokens
        finite = math.isfinite(loss) and math.isfinite(norm)
        if finite:
            st.bad_steps_in_row = 0
            st.epoch_loss_sum += loss_sum
            st.epoch_tokens += tokens
        else:
            st.bad_steps_in_row += 1
            st.bad_steps_total += 1
        st.step = step
        st.tokens_seen += tokens
        st.example_cursor = micro_ranges[-1][1]
        st.epoch_step_losses.append(loss)
        seconds = max(time.perf_counter() - started - paused_seconds[0], 1e-9)
        st.epoch_seconds += seconds
        self.sink.emit(StepEvent(
            epoch=st.epoch, step=step, step_in_epoch=window_index + 1, steps_in_epoch=len(windows),
            micro_steps=len(micro_ranges), accum=st.accum, micro_batch=cfg.train.micro_batch,
            effective_batch=micro_ranges[-1][1] - micro_ranges[0][0], tokens=tokens, loss=loss, lr=lr,
            grad_norm=norm, tokens_seen=st.tokens_seen, tokens_per_s=tokens / seconds, skipped=not finite))
        self._check_step(loss, step)
        if not finite:
            outcome = self._after_a_non_finite_step(loss, norm, step)
            if outcome is not None:
                return outcome
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

    # -- a step: the window's gradient becomes one update ----------------------------------------

    def _optimizer_step(self, loss_total: torch.Tensor, tokens: int) -> tuple[float, float, float]:
        """LR, clip, one host sync, and the update unless the loss or norm is not finite.
        Returns (lr, summed loss of the window, gradient norm before clipping)."""
        # The LR of the tokens seen once this step is taken: the first step of a warm-up learns too.
        lr = self.lr_for(self.state.tokens_seen + tokens)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Clip once per window, after accumulation; the norm is returned either way.
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # The one host sync of the step: loss and gradient norm together.
        loss_sum, norm = torch.stack([loss_total.float(), grad_norm.float()]).tolist()
        if math.isfinite(loss_sum / tokens) and math.isfinite(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, loss_sum, norm

    def _after_a_non_finite_step(self, loss: float, norm: float, step: int) -> RunEnded | None:
        """A skipped update is a warning; ``max_bad_steps`` of them in a row end the run."""
        st = self.state
        self.sink.emit(Notice(message=f"step {step}: non-finite loss or gradient ({loss:.4g}, norm {norm:.4g}); "
                                      f"update skipped ({st.bad_steps_in_row} in a row)", level="warning"))
        if st.bad_steps_in_row < self.cfg.train.max_bad_steps:
            return None
        good = ("no checkpoint was saved before them" if self._latest_saved is None
                else f"the last good checkpoint (step {self._latest_saved[2]}) is intact")
        # Not "--resume": it would replay the same steps into the same divergence.
        return self._end("error", f"{st.bad_steps_in_row} non-finite steps in a row at step {step}: "
                                  f"lower the learning rate — start again with --lr {self.cfg.optim.lr / 10:g} "
                                  f"(and --overwrite, or another --run-dir); {good}")

    def _check_step(self, loss: float, step: int) -> None:
        """Live verdict on the newest step: a non-finite loss always, a spike once per epoch."""
        st = self.state
        verdict = step_verdict(st.epoch_step_losses, self.corpus.vocab.size, self.cfg.diagnosis, st.epoch_first_step)
        if verdict is None or (math.isfinite(loss) and self._step_alerted_epoch == st.epoch):
            return
        self._step_alerted_epoch = st.epoch
        self.last_diagnosis = verdict
        self.sink.emit(DiagnosisEvent(kind=verdict.kind, reason=verdict.reason, remedy=verdict.remedy,
                                      epoch=st.epoch, step=step))

    def _periodic_save_due(self) -> bool:
        every = self.cfg.train.checkpoint_every
        if every:
            return self.state.step % every == 0
        return time.monotonic() - self._last_save_time >= DEFAULT_CHECKPOINT_SECONDS

    # -- validation and the epoch's end ----------------------------------------------------------

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
        epoch_done = st.epoch
        best = self.early_stopping
        self.sink.emit(EpochEvent(
            epoch=epoch_done, epochs=cfg.train.epochs, train_loss=train_loss, val_loss=val_loss, accum=st.accum,
            effective_batch=cfg.train.micro_batch * st.accum, tokens_seen=st.tokens_seen,
            seconds=st.epoch_seconds + (time.perf_counter() - started), diagnosis=verdict.kind,
            diagnosis_reason=verdict.reason, remedy=verdict.remedy, val_rise_warning=warning,
            best_val_loss=best.best if best.best_epoch else None, best_epoch=best.best_epoch,
            epochs_without_improvement=best.epochs_without_improvement,
            tokens_per_s=st.epoch_tokens / st.epoch_seconds if st.epoch_seconds else 0.0))
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
            self.sink.emit(Notice(message=f"early stopping: {stop_reason}", level="warning"))
            # The best weights come back only once `latest` holds the run's own (a retried save must
            # not pair the best epoch's weights with a later epoch's optimizer and position).
            return self._end_with_the_run_saved("early_stop", stop_reason, then=self._restore_best)
        saved = self.save("latest")
        if self.control.stop_requested:
            return self._interrupted(saved, f"the end of epoch {epoch_done}")
        return None
