"""The training loop, top to bottom: ``Trainer(cfg, sink, control).run()`` → ``RunEnded``.

    run        the epochs; an accum change waiting for an epoch's start is applied there
    epoch      its shuffled examples cut into windows of ``accum`` micro-batches
    window     accumulate the micro-batches' gradients (accumulation.py: the maths), then
    step       one optimizer step: LR for the tokens seen, clip once, one host sync, step
    validate   token-weighted val loss in eval mode, diagnosis, early stopping, checkpoints

Set-up (data, model, optimizer, run dir) and the services the loop calls (save, figures) live in
session.py, the commands in steering.py, the ways a run ends in endings.py; the run directory's
life in run_dir.py; several processes' collectives in distributed.py. The loop emits events
(events.py) to a sink and reads commands (control.py) between micro-steps. No Textual import.
"""

from __future__ import annotations

import gc
import math
import time
import traceback

import torch

from tui_trainer.analysis.diagnosis import SchedulePosition, diagnose, step_verdict, val_rise_warning
from tui_trainer.analysis.noise_scale import WindowNorms
from tui_trainer.data.dataset import epoch_examples, plan_windows, val_batch_limit, val_batches
from tui_trainer.engine.accumulation import WindowAborted, accumulate_window, window_tokens
from tui_trainer.engine.distributed import PeerLost, as_peer_lost, rank_share
from tui_trainer.engine.runtime import capture_rng
from tui_trainer.engine.session import TrainingSession
from tui_trainer.engine.validation_progress import ValidationProgressEmitter
from tui_trainer.errors import DataChanged
from tui_trainer.events import (
    AccumChangeApplied,
    DiagnosisEvent,
    EpochEvent,
    MicroStep,
    Notice,
    RunEnded,
    RunStarted,
    StepEvent,
)

DEFAULT_CHECKPOINT_SECONDS = 300.0  # `latest` every ~5 minutes when --checkpoint-every is not given


class Trainer(TrainingSession):
    """Set up with ``Trainer(cfg, sink, control)`` (raises UserError on bad input, writing
    nothing), then ``run()`` → the ``RunEnded`` event."""

    def run(self) -> RunEnded:
        try:
            if self.ranks.is_main:
                self.open_control_socket()
            end = self._run()
        except BaseException as exc:  # a bug or OOM: record it, keep what the run dir has
            self.error = exc
            message = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, (PeerLost, DataChanged)):  # (the token cache cut short: token_file.py)
                message = str(exc) + self.rescue_save()
            elif self.ranks.is_main:  # (rank 0 alone writes in the run dir)
                try:
                    (self.run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8",
                                                            errors="replace")
                except OSError:
                    pass  # a full disk must not hide the error itself
            end = self._end("error", message)
        finally:
            self.metrics.close()
            self.release_run_dir()
            if self.ranks.distributed:
                # DDP's reducer goes first, while the process group lives: freed with the group
                # it would tear it down holding the GIL that gloo's thread still needs (a hang).
                self.train_model = self.model
                if self.grad_sync is not None:
                    self.grad_sync.group = None
                gc.collect()
            self.ranks.close(clean=self.error is None)
        return end

    # -- the run: epochs ------------------------------------------------------------------------

    def _run(self) -> RunEnded:
        cfg, st = self.cfg, self.state
        self._session_started = time.monotonic()
        world = self.ranks.world_size
        per_epoch, effective = self.examples_per_epoch(), cfg.train.micro_batch * st.accum * world
        if effective > per_epoch:
            self.notes.append(f"an epoch holds {per_epoch:,} sequences, fewer than the effective batch of "
                              f"{effective:,}: each epoch is one optimizer step of {per_epoch:,}")
        self.sink.emit(RunStarted(
            run_dir=str(self.run_dir), device=str(self.device), threads=self.threads,
            parameters=self.model.num_parameters(), vocab_size=self.corpus.vocab.size,
            train_examples=self.examples_per_epoch(), val_examples=self.val_examples(), epochs=cfg.train.epochs,
            micro_batch=cfg.train.micro_batch, accum=st.accum, processes=world, block_size=cfg.model.block_size,
            planned_tokens=self.planned_tokens(), resumed_from_step=st.step, start_epoch=st.epoch,
            tokens_seen=st.tokens_seen, notes=tuple(self.notes), elapsed_before=st.elapsed_seconds,
            sample_tokens=cfg.train.sample_tokens, noise_scale=cfg.train.noise_scale,
            auto_accum=cfg.train.auto_accum, precision=self.precision,
            val_batches=len(rank_share(val_batches(len(self.val_set), cfg.train.micro_batch, val_batch_limit(cfg.data)),
                                       self.ranks.rank, world))))
        if self._outstanding_end is not None:
            # Training was done; only the `end` record was missing (a stop during the final
            # validation or save of an older version, or a kill just before the record).
            message = (f"the run had finished (epoch {st.epoch - 1} of {cfg.train.epochs} saved) "
                       f"but its end was never recorded: recorded now")
            if self._outstanding_end == "early_stop":
                return self._end_with_the_run_saved("early_stop", message, then=self._restore_best)
            return self._end_with_the_run_saved("completed", message)
        if self._resume_accum is not None:
            self._request_accum(self._resume_accum, at_this_boundary=st.example_cursor == 0)
            self._resume_accum = None
        self.model.train()
        if self.ranks.distributed:  # a stop during the set-up (one process sees it at its first micro-step)
            self._agree()
            if self.stopping():
                return self._interrupted(self.save("latest"), self._stop_point())
        while st.epoch <= cfg.train.epochs:
            if (st.example_cursor == 0 and st.pending_accum is not None
                    and st.epoch >= (st.pending_accum_epoch or st.epoch)):
                self.sink.emit(AccumChangeApplied(old=st.accum, new=st.pending_accum, epoch=st.epoch, step=st.step))
                st.accum, st.pending_accum, st.pending_accum_epoch = st.pending_accum, None, None
            outcome = self._train_epoch() or self._finish_epoch()
            if outcome is not None:
                return outcome
        late_stop = ("a stop came after the last training step: the last validation and final save were "
                     "finished, so the run is complete" if self.stopping() else "")
        return self._end_with_the_run_saved("completed", late_stop)

    # -- an epoch: windows of micro-batches ------------------------------------------------------

    def _train_epoch(self) -> RunEnded | None:
        cfg, st = self.cfg, self.state
        order = epoch_examples(len(self.train_set), cfg.train.seed, st.epoch, cfg.train.micro_batch,
                               cfg.data.limit_train_batches).to(self.device)
        # The global windows: the same as one process accumulating accum x world micro-batches.
        per_step = st.accum * self.ranks.world_size
        windows = plan_windows(len(order), cfg.train.micro_batch, per_step)
        starts = [w[0][0] for w in windows]
        if 0 < st.example_cursor < len(order) and st.example_cursor not in starts:
            # A resume with another world size: the windows go on from where the run stopped.
            windows = ([w for w in windows if w[0][0] < st.example_cursor]
                       + plan_windows(len(order), cfg.train.micro_batch, per_step, start=st.example_cursor))
        # The window that starts at the cursor (an epoch's last window may be short, so no division).
        first_window = next((i for i, w in enumerate(windows) if w[0][0] >= st.example_cursor), len(windows))
        for window_index in range(first_window, len(windows)):
            outcome = self._train_window(order, windows, window_index)
            if outcome is not None:
                return outcome
        return None

    def _train_window(self, order: torch.Tensor, windows: list, window_index: int) -> RunEnded | None:
        """One window: accumulate its micro-batches, take the step, then save or stop if asked."""
        cfg, st, ranks = self.cfg, self.state, self.ranks
        window = windows[window_index]  # every rank's micro-batches; this rank takes its share
        micro_ranges = rank_share(window, ranks.rank, ranks.world_size)
        self._window_rng = capture_rng(self.device)
        step = st.step + 1
        started = time.perf_counter()
        paused_seconds = [0.0]

        def between(i: int) -> bool:
            self.sink.emit(MicroStep(epoch=st.epoch, step=step, micro_step=i + 1, micro_steps=len(micro_ranges),
                                     step_in_epoch=window_index + 1, steps_in_epoch=len(windows)))
            if ranks.distributed:  # the ranks pause and stop together, at the step's end (_agree)
                self._handle_commands()
                return True
            keep_going = self._between_micro_steps(paused_seconds)
            # A stop after the window's last micro-step still takes the step (checked below).
            return keep_going or i + 1 == len(micro_ranges)

        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_sync is not None:
            self.grad_sync.start_window()
        try:
            loss_total, tokens = accumulate_window(
                self.train_model, self.train_set, order, micro_ranges, self.autocast_dtype, between, self.increments,
                total_tokens=window_tokens(window, cfg.model.block_size), empty_share=window[0],
                no_sync=self.train_model.no_sync if ranks.distributed else None)
        except RuntimeError as exc:
            lost = as_peer_lost(exc, ranks.rank) if ranks.distributed else None
            if lost is None:
                raise
            raise lost from None
        except WindowAborted:
            # Stop mid-window: drop its partial gradient; the checkpoint resumes at its start.
            self.optimizer.zero_grad(set_to_none=True)
            saved = self.save("latest", rng=self._window_rng)
            return self._interrupted(saved, self._stop_point())
        if step in self.inject_nan_steps:
            loss_total = loss_total * float("nan")
        lr, loss_sum, norm = self._optimizer_step(loss_total, tokens, window, micro_ranges)
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
        st.example_cursor = window[-1][1]
        st.epoch_step_losses.append(loss)
        seconds = max(time.perf_counter() - started - paused_seconds[0], 1e-9)
        st.epoch_seconds += seconds
        processes = ranks.world_size
        self.sink.emit(StepEvent(
            epoch=st.epoch, step=step, step_in_epoch=window_index + 1, steps_in_epoch=len(windows),
            micro_steps=len(micro_ranges), accum=st.accum, micro_batch=cfg.train.micro_batch,
            effective_batch=window[-1][1] - window[0][0], tokens=tokens, loss=loss, lr=lr,
            grad_norm=norm, tokens_seen=st.tokens_seen, tokens_per_s=tokens / seconds, skipped=not finite,
            noise_scale=self.noise.noise_scale,
            suggested_accum=self.noise.suggestion(cfg.train.micro_batch, processes), world_size=processes))
        # Rank 0's decisions (a periodic save is one: its clock is rank 0's) reach every rank here.
        if self._periodic_save_due() and st.bad_steps_in_row == 0:
            self._save_requested = True
        self._agree()
        self._auto_accum(window_index + 1, len(windows))
        self._check_step(loss, step)
        if not finite:
            outcome = self._after_a_non_finite_step(loss, norm, step)
            if outcome is not None:
                return outcome
        self._sample_if_asked()
        # No periodic `latest` during a run of non-finite steps: it keeps pointing at the last good
        # step. An asked-for save (the app's `s`, a stop) still saves.
        if self._save_requested:
            self._save_requested = False
            self.save("latest")
        if ranks.distributed and self._paused:
            self._wait_while_paused()
        if self.stopping():
            # No second save when this step's periodic one just wrote the same state.
            saved = self._latest_saved == (st.epoch, st.example_cursor, st.step) or self.save("latest")
            return self._interrupted(saved, self._stop_point())
        return None

    # -- a step: the window's gradient becomes one update ----------------------------------------

    def _optimizer_step(self, loss_total: torch.Tensor, tokens: int, window: list[tuple[int, int]],
                        micro_ranges: list[tuple[int, int]]) -> tuple[float, float, float]:
        """LR, clip, one host sync, and the update unless the loss or norm is not finite (then the
        noise-scale estimate takes in the window's norms). Returns (lr, summed loss of the window,
        gradient norm before clipping). ``window``: every rank's micro-batches; ``micro_ranges``:
        this rank's (the same, for one process)."""
        # The LR of the tokens seen once this step is taken: the first step of a warm-up learns too.
        lr = self.lr_for(self.state.tokens_seen + tokens)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Clip once per window, after accumulation (and the ranks' all-reduce: the same norm on each).
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.ranks.distributed:
            loss_total, part_sizes, part_sq_norms = self._sum_over_ranks(loss_total, window, micro_ranges)
        else:  # the noise scale's small batches: the micro-batches
            part_sizes = [stop - start for start, stop in micro_ranges]
            part_sq_norms = self.increments.sq_norms if self.increments is not None else []
        # The one host sync of the step: loss, gradient norm (and each part's norm) together.
        loss_sum, norm, *part_sq = torch.stack(
            [loss_total.float(), grad_norm.float(), *(n.float() for n in part_sq_norms)]).tolist()
        if math.isfinite(loss_sum / tokens) and math.isfinite(norm):
            self.optimizer.step()
            if part_sq:  # the window's norm before clipping, as the parts' are
                self.noise.update(WindowNorms.from_increments(part_sizes, part_sq, norm * norm))
                self.state.noise_scale_state = self.noise.state_dict()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, loss_sum, norm

    def _sum_over_ranks(self, loss_total: torch.Tensor, window: list[tuple[int, int]],
                        micro_ranges: list[tuple[int, int]]) -> tuple[torch.Tensor, list[int], list[torch.Tensor]]:
        """Several processes: the window's summed loss over every rank (one small all-reduce), and
        for the noise scale each rank's own gradient (its share of the window) as a small batch."""
        ranks = self.ranks
        world = ranks.world_size
        sq_norms = torch.zeros(world, device=self.device)
        measured = self.cfg.train.noise_scale and self.grad_sync.local_sq_norm is not None and micro_ranges
        if measured:
            sq_norms[ranks.rank] = self.grad_sync.local_sq_norm
        summed = ranks.sum_(torch.cat([loss_total.float().reshape(1), sq_norms]))
        sizes = [sum(stop - start for start, stop in rank_share(window, r, world)) for r in range(world)]
        parts = [(size, summed[1 + r]) for r, size in enumerate(sizes) if size]
        if not self.cfg.train.noise_scale or len(parts) < 2:
            return summed[0], [], []  # one rank held the whole window: no second batch size
        return summed[0], [size for size, _ in parts], [sq for _, sq in parts]

    def _auto_accum(self, step_in_epoch: int, steps_in_epoch: int) -> None:
        """--auto-accum: from the middle of an epoch, the settled suggestion becomes the pending change
        for the next one, once per epoch, exactly as a key press (so +/- can still override it).
        Never below 2: a window of one micro-batch measures nothing, and auto would stay stuck at 1."""
        st = self.state
        suggestion = self.noise.suggestion(self.cfg.train.micro_batch, self.ranks.world_size)
        if (not self.cfg.train.auto_accum or suggestion is None or st.accum_decided_epoch == st.epoch
                or st.epoch >= self.cfg.train.epochs or 2 * step_in_epoch < steps_in_epoch):
            return
        st.accum_decided_epoch = st.epoch
        self._request_accum(max(2, suggestion), auto=True)

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
        """Token-weighted mean validation loss, in eval mode; back to train mode after. Several
        processes: each evaluates every world_size-th batch, and the sums are added up."""
        was_training = self.model.training
        self.model.eval()
        try:
            loss_sum = torch.zeros((), device=self.device)
            tokens = 0
            indices = torch.arange(len(self.val_set), device=self.device)
            batches = val_batches(len(self.val_set), self.cfg.train.micro_batch, val_batch_limit(self.cfg.data))
            mine = rank_share(batches, self.ranks.rank, self.ranks.world_size)
            progress = ValidationProgressEmitter(self.sink, self.state.epoch, len(mine))
            for done, (start, stop) in enumerate(mine, 1):
                inputs, targets = self.val_set.batch(indices[start:stop])
                loss_sum += self.model.loss_sum(inputs, targets).float()
                tokens += inputs.numel()
                progress.batch_done(done)
            if self.ranks.distributed:
                summed = self.ranks.sum_(torch.stack([loss_sum.double(), torch.tensor(float(tokens), dtype=torch.float64,
                                                                                      device=self.device)]))
                return (summed[0] / summed[1]).item()
            return loss_sum.item() / tokens
        finally:
            self.model.train(was_training)

    def _finish_epoch(self) -> RunEnded | None:
        cfg, st = self.cfg, self.state
        started = time.perf_counter()
        val_loss = self.evaluate()
        # Its own generator: the losses stay as they were. Rank 0's alone (it alone shows it).
        sample = self.sampler.after_epoch(st.step) if self.ranks.is_main else None
        train_loss = st.epoch_loss_sum / st.epoch_tokens if st.epoch_tokens else float("nan")
        st.train_history.append(train_loss)
        st.val_history.append(val_loss)
        # The previous verdict (hysteresis) and where the lr schedule stands (what remedy fits).
        schedule = SchedulePosition.at(st.tokens_seen, cfg.optim.lr, cfg.optim.lr * cfg.optim.min_lr_ratio,
                                       self.warmup_tokens(), self.planned_tokens())
        verdict = diagnose(st.train_history, st.val_history, self.corpus.vocab.size, cfg.diagnosis,
                           st.epoch_step_losses, st.epoch_first_step, self.last_diagnosis, schedule)
        self.last_diagnosis = verdict
        warning = val_rise_warning(st.val_history, cfg.diagnosis.val_rise_warning)
        improved, should_stop, stop_reason = self.early_stopping.update(val_loss, st.epoch)
        epoch_done = st.epoch
        best = self.early_stopping
        self.sink.emit(EpochEvent(
            epoch=epoch_done, epochs=cfg.train.epochs, train_loss=train_loss, val_loss=val_loss, accum=st.accum,
            effective_batch=cfg.train.micro_batch * st.accum * self.ranks.world_size, tokens_seen=st.tokens_seen,
            micro_batch=cfg.train.micro_batch,
            seconds=st.epoch_seconds + (time.perf_counter() - started), diagnosis=verdict.kind,
            diagnosis_reason=verdict.reason, remedy=verdict.remedy, val_rise_warning=warning,
            best_val_loss=best.best if best.best_epoch else None, best_epoch=best.best_epoch,
            epochs_without_improvement=best.epochs_without_improvement,
            tokens_per_s=st.epoch_tokens / st.epoch_seconds if st.epoch_seconds else 0.0, sample=sample,
            noise_scale=self.noise.noise_scale, suggested_accum=self.noise.suggestion(cfg.train.micro_batch, self.ranks.world_size)))
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
        self._agree()  # (a stop, or an accum change, during validation or the save: every rank sees it)
        # A stop during the last epoch's validation or save: nothing is left to interrupt, the run
        # completes (a stop that ended it as "interrupted" left a run no resume could finish).
        if self.stopping() and st.epoch <= cfg.train.epochs:
            return self._interrupted(saved, f"at the end of epoch {epoch_done}")
        return None
