"""One optimizer step, top to bottom: accumulate the window's micro-batches (accumulation.py: the
maths), clip once, one host sync, step, record — then what was asked meanwhile (the ranks'
agreement, auto-accum, `g`, `s`, pause, stop). An out-of-memory mid-window redoes the window at half
the micro-batch (oom.py); with several processes the ranks first agree whether any ran out, and only
then sum their gradients (gradient_sum.py), so every rank redoes the same window at the same split.
The loop (loop.py) takes one per window; no Textual import.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from tui_trainer.analysis.diagnosis import step_verdict
from tui_trainer.analysis.noise_scale import WindowNorms
from tui_trainer.data.dataset import Window
from tui_trainer.engine.accumulation import WindowAborted, accumulate_window
from tui_trainer.engine.distributed import peer_lost_in_the_gradient_sum, rank_share, sum_over_ranks
from tui_trainer.engine.endings import Endings
from tui_trainer.engine.oom import OutOfMemoryRecovery, cut_window, split_sizes
from tui_trainer.engine.runtime import capture_rng
from tui_trainer.engine.saving import Checkpoints
from tui_trainer.engine.session import TrainingSession
from tui_trainer.engine.split import StepPeak
from tui_trainer.engine.steering import Steering
from tui_trainer.events import DiagnosisEvent, MicroStep, RunEnded, StepEvent


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
                                                 self.optimizer, stop=self._stop_out_of_memory,
                                                 processes=self.ranks.world_size)

    def take(self, order: torch.Tensor, windows: list[Window], index: int) -> RunEnded | None:
        cfg, st = self.cfg, self.state
        window = windows[index]  # every rank's micro-batches; this rank takes its share
        mine = rank_share(window, self.ranks.rank, self.ranks.world_size)
        self._window_rng = capture_rng(self.session.device)  # a stop mid-window saves this: the resume redoes it
        started, paused_before = time.perf_counter(), self.steering.seconds_paused
        self.peak.start()
        while True:
            pieces = cut_window(mine, st.micro_split)  # (an out-of-memory cut the micro-batches: oom.py)
            ran_out = False
            try:
                loss_total, tokens = self._accumulate(order, window, pieces, index + 1, len(windows))
            except WindowAborted:
                # Stop mid-window: drop its partial gradient; the checkpoint resumes at its start.
                self.optimizer.zero_grad(set_to_none=True)
                return self.endings.interrupted(self.checkpoints.save("latest", rng=self._window_rng))
            except torch.OutOfMemoryError:
                ran_out = True  # (this rank skips the window's other micro-steps, yet joins the agreement)
            # (Recovered out here: the error's frames, and the activations they hold, are gone.)
            out_of_memory = self._ranks_out_of_memory(ran_out)
            if not out_of_memory:
                break
            outcome = self.out_of_memory.after(self._window_rng, out_of_memory)  # None: redo, half the micro-batch
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
            peak_memory=self.peak.read(), flops_per_s=flops_per_s, mfu=mfu,
            elapsed=self.session.elapsed_seconds(), unix_time=time.time()))
        return self._after_the_step(loss, norm, finite or scaler_skip, index + 1, len(windows))

    def _accumulate(self, order: torch.Tensor, window: Window, mine: Window, step_in_epoch: int,
                    steps_in_epoch: int) -> tuple[torch.Tensor, int]:
        """This rank's share of the window, forward and backward into its own gradients (several
        processes: no collective here; the sum follows the agreement). Returns (summed loss, the
        window's tokens)."""
        s, st = self.session, self.state
        self.optimizer.zero_grad(set_to_none=True)
        if s.grad_sync is not None:
            s.grad_sync.start_window()

        def between(i: int) -> bool:  # after micro-step i: tell the sinks, then the commands
            self.sink.emit(MicroStep(epoch=st.epoch, step=st.step + 1, micro_step=i + 1, micro_steps=len(mine),
                                     step_in_epoch=step_in_epoch, steps_in_epoch=steps_in_epoch))
            return self.steering.between_micro_steps(last=i + 1 == len(mine), window_rng=self._window_rng,
                                                     done=i + 1)

        total_tokens = window.tokens(self.cfg.model.block_size)  # every rank divides by the whole window's
        if len(mine) == 0:  # a short window's empty share: this rank adds zeros to the gradients' sum
            if not between(0):
                raise WindowAborted
            return torch.zeros((), device=s.train_set.device, dtype=torch.float32), total_tokens
        return accumulate_window(s.train_model, s.train_set, order, mine, total_tokens=total_tokens,
                                 autocast_dtype=s.autocast_dtype, between_micro_steps=between,
                                 increments=s.increments,
                                 loss_scale=s.loss_scaling.scale if s.loss_scaling is not None else None)

    def _ranks_out_of_memory(self, ran_out: bool) -> tuple[int, ...]:
        """The ranks that ran out of memory in this window (one process: this one, or none). Several
        processes: an agreement, before the gradients' sum, so that all redo the window or none does."""
        if not self.ranks.distributed:
            return (0,) if ran_out else ()
        mine = [0.0] * self.ranks.world_size
        mine[self.ranks.rank] = float(ran_out)
        return tuple(rank for rank, flag in enumerate(self.ranks.agree(mine)) if flag)

    def _clip_and_step(self, loss_total: torch.Tensor, tokens: int, window: Window,
                       mine: Window) -> tuple[float, float, float]:
        """LR, clip, one host sync, and the update unless the loss or norm is not finite (then the
        noise-scale estimate takes in the window's norms). Returns (lr, summed loss of the window,
        gradient norm before clipping). ``window``: every rank's micro-batches; ``mine``: this
        rank's (the same, for one process)."""
        cfg, s = self.cfg, self.session
        if self.ranks.distributed:  # the window's one gradient all-reduce: every rank's share summed
            with peer_lost_in_the_gradient_sum(self.ranks):
                s.grad_sync.sum_()
        # The LR of the tokens seen once this step is taken: the first step of a warm-up learns too.
        # (Less the tokens of the steps the fp16 loss scaler skipped: they taught nothing.)
        lr = s.figures.lr_for(self.state.tokens_seen - self.state.tokens_skipped + tokens)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Clip once per window, after accumulation (and the ranks' sum: the same norm on each).
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
        steering.save_if_asked()
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
