"""``--time-budget`` in the engine: the run's clock, the pace it measures, and the plan
(analysis/time_budget.py: ``BudgetPlanner``) it feeds.

    the clock    active seconds: from the set-up's start (start-up counts), pauses left out
                 (Steering.seconds_paused), earlier sessions of a resumed run included
    the probe    at the end of the set-up, one forward of a micro-batch (eval mode, no RNG drawn):
                 a first guess of a step's time, to refuse a budget that cannot take one step, and
                 to show a provisional plan until the measured one
    the pace     training tokens per second over the last ``MEASURE_SECONDS`` of training (the
                 epoch ends are timed apart: they are the ``seconds_per_val_pass`` of the plan)
    the plan     after ``MEASURE_SECONDS`` of training; again when the pace drifts (a Notice says so)

The learning-rate schedule (figures.py) reads the plan: a ramp over the warm-up fixed before
training (--warmup-tokens, else 10 steps' worth), the peak held while the pace is measured, and a
cosine decay from the plan's point to the floor exactly at the planned tokens.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from tui_trainer.analysis.time_budget import BudgetPlanner, Pace, parse_duration, plan_tokens
from tui_trainer.errors import UserError
from tui_trainer.events import Notice, Sink

if TYPE_CHECKING:
    from tui_trainer.engine.session import TrainingSession

FORWARD_TO_STEP = 3.0  # a forward and its backward cost about three forwards
SAVE_BYTES_PER_S = 100e6  # a first guess of a checkpoint's write speed (weights + AdamW's two moments)
SECONDS_PER_SAMPLE_TOKEN = 0.005  # the text sample after each validation, a first guess
EPOCH_END_SCALE_MAX = 4.0  # an epoch end's time follows the pace by at most this factor either way
EPOCH_END_MARGIN = 1.5  # the guessed epoch end (validation, sample, saves) is padded this much until measured


class RunBudget:
    """The budget of one run. ``paused``: the seconds this session has been paused so far (the loop
    hands it Steering's count)."""

    def __init__(self, budget_seconds: float, *, started: float, state: dict[str, Any] | None = None) -> None:
        self.planner = BudgetPlanner(budget_seconds)
        self.used_before = 0.0  # active seconds of the earlier sessions (a resume)
        self.warmup_tokens: int | None = None  # where the decay starts: fixed at the first plan
        self.provisional_tokens = 0  # the probe's guess, shown until the measured plan
        if state is not None:
            self.planner.load_state_dict(state)
            self.used_before = float(state["used_seconds"])
            self.warmup_tokens = state.get("warmup_tokens")
            self.provisional_tokens = int(state.get("provisional_tokens") or 0)
            if self.planner.budget_seconds != budget_seconds:  # (a resume never changes it: refused earlier)
                self.planner.budget_seconds, self.planner.planned_pace = budget_seconds, None
        self._started = started
        self.paused: Callable[[], float] = lambda: 0.0
        self.training_seconds = 0.0  # this session's training (the epoch ends left out)
        self._mark: float | None = None  # active time of the last step's end, less the epoch ends since
        self._window: deque[tuple[float, int]] = deque()  # (training seconds, tokens seen) at step ends
        self.step_seconds_guess = 0.0
        self.epoch_end_guess = 0.0
        self.save_guess = 0.0
        self.epoch_end_seconds: float | None = None  # the last measured epoch end
        # The training pace when the epoch end was measured (the guess: the first pace): an epoch end is forward passes
        # and writes, so it slows (or quickens) as the steps do — a machine that turns busy makes both slower.
        self._epoch_end_pace: float | None = None
        self._pace: float | None = None  # the last measured training pace
        self._planned_at = 0.0  # training seconds when the plan was last made or changed

    # -- the clock ----------------------------------------------------------------------------

    def used(self) -> float:
        """Active seconds of the run so far: start-up and training, not pauses."""
        return self.used_before + time.monotonic() - self._started - self.paused()

    def seconds_left(self) -> float:
        return self.planner.seconds_left(self.used())

    @property
    def planned(self) -> bool:
        return self.planner.planned_tokens is not None

    def done(self, tokens_seen: int) -> bool:
        """The planned tokens are trained: the epoch in progress is the last one."""
        return self.planned and tokens_seen >= self.planner.planned_tokens

    def total_tokens(self) -> int:
        """The plan, or the probe's guess until it is made."""
        return self.planner.planned_tokens if self.planned else self.provisional_tokens

    # -- set-up: the probe --------------------------------------------------------------------

    def probe(self, session: TrainingSession) -> None:
        """Guess a step's, an epoch end's and a save's time; refuse a budget that cannot take one
        step after the start-up (the caller removes what the set-up made)."""
        cfg, model = session.cfg, session.model
        micro, block = cfg.train.micro_batch, cfg.model.block_size
        inputs, targets = session.train_set.batch(torch.arange(micro, device=session.device))
        autocast = (torch.autocast(session.device.type, dtype=session.autocast_dtype)
                    if session.autocast_dtype is not None else nullcontext())
        was_training, seconds = model.training, []
        model.eval()
        try:
            with torch.inference_mode(), autocast:
                for _ in range(2):  # the second: the first pays one-time costs
                    begun = time.monotonic()
                    model.loss_sum(inputs, targets).item()
                    seconds.append(time.monotonic() - begun)
        finally:
            model.train(was_training)
        forward = max(min(seconds), 1e-6)
        self.step_seconds_guess = FORWARD_TO_STEP * forward * session.state.accum
        val_batches = math.ceil(session.figures.val_examples() / micro)
        self.save_guess = 0.05 + 12 * model.num_parameters() / SAVE_BYTES_PER_S
        self.epoch_end_guess = EPOCH_END_MARGIN * (val_batches * forward + 2 * self.save_guess
                                                   + cfg.train.sample_tokens * SECONDS_PER_SAMPLE_TOKEN)
        used, budget = self.used(), self.planner.budget_seconds
        if budget - used < self.step_seconds_guess:
            raise UserError(f"--time-budget {_shown(budget)} is too short: the start-up took {used:.1f} s and one "
                            f"optimizer step takes about {_step_shown(self.step_seconds_guess)} s",
                            f"give at least --time-budget {math.ceil(used + self.step_seconds_guess + 1)}s "
                            f"(more leaves time to learn something)")
        # A short budget measures for a quarter of what is left at most (the default: MEASURE_SECONDS).
        self.planner.measure_seconds = min(self.planner.measure_seconds, max(0.5, 0.25 * (budget - used)))
        if not self.planned and not self.provisional_tokens:
            tokens_per_step = micro * session.state.accum * block
            self.provisional_tokens = self._plan(session.state.tokens_seen, session.figures.examples_per_epoch() * block,
                                                 tokens_per_step, tokens_per_step / self.step_seconds_guess)

    # -- training -----------------------------------------------------------------------------

    def training_starts(self) -> None:
        self._mark = self.used()

    def epoch_end_done(self, seconds: float) -> None:
        """An epoch's end (validation, sample, saves) took ``seconds``: they are not training."""
        self.epoch_end_seconds, self._epoch_end_pace = seconds, self._pace
        if self._mark is not None:
            self._mark += seconds

    def step_done(self, *, tokens_seen: int, tokens_per_epoch: int, tokens_per_step: int, sink: Sink) -> None:
        """After every optimizer step: time it, and plan (or plan again) when the pace says so."""
        now = self.used()
        if self._mark is not None:
            # (The session's first step pays one-time costs: its end starts the window.)
            self.training_seconds += now - self._mark
            self._window.append((self.training_seconds, tokens_seen))
            measure = self.planner.measure_seconds
            while len(self._window) > 2 and self._window[1][0] <= self.training_seconds - measure:
                self._window.popleft()
        self._mark = now
        if len(self._window) < 2:
            return
        if self.planned and self.training_seconds - self._planned_at < self.planner.measure_seconds:
            return  # (one plan per measuring window at most: a reading of a few slow steps is not a new pace)
        (t0, n0), (t1, n1) = self._window[0], self._window[-1]
        if t1 - t0 <= 0:
            return
        self._pace = (n1 - n0) / (t1 - t0)
        if self._epoch_end_pace is None:  # (the probe's guess holds at the first pace measured)
            self._epoch_end_pace = self._pace
        pace = Pace(self._pace, self._epoch_end(), self.save_guess)
        before = self.planned
        line = self.planner.update(elapsed_seconds=now, training_seconds=t1 - t0, tokens_seen=tokens_seen,
                                   tokens_per_epoch=tokens_per_epoch, pace=pace, tokens_per_step=tokens_per_step)
        if not before and self.planned:  # the decay starts here, at the peak the warm-up reached
            self.warmup_tokens = tokens_seen
        if line is not None:
            self._planned_at = self.training_seconds
            sink.emit(Notice(message=line + f" ({_shown(self.seconds_left())} of the budget left)"))
        if line is not None and self.planner.planned_tokens <= tokens_seen + tokens_per_step:
            sink.emit(Notice(level="warning", message=(
                f"time budget: this step is the last: the epoch's end (validation, sample, saves: "
                f"~{pace.seconds_per_val_pass:.1f} s at this pace) takes the rest; --limit-val-batches or "
                f"--sample-tokens 0 make it shorter")))

    def _epoch_end(self) -> float:
        """An epoch end's expected seconds at today's pace (scaled from the pace it was timed at)."""
        seconds = self.epoch_end_seconds if self.epoch_end_seconds is not None else self.epoch_end_guess
        if self._pace and self._epoch_end_pace:  # (bounded: one odd reading must not swallow the budget)
            seconds *= min(EPOCH_END_SCALE_MAX, max(1 / EPOCH_END_SCALE_MAX, self._epoch_end_pace / self._pace))
        return seconds

    def _plan(self, tokens_seen: int, tokens_per_epoch: int, tokens_per_step: int, tokens_per_s: float) -> int:
        return plan_tokens(budget_seconds=self.planner.budget_seconds, elapsed_seconds=self.used(),
                           tokens_seen=tokens_seen, tokens_per_epoch=tokens_per_epoch,
                           pace=Pace(tokens_per_s, self._epoch_end(), self.save_guess),
                           tokens_per_step=tokens_per_step)

    # -- a checkpoint -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {**self.planner.state_dict(), "used_seconds": self.used(), "warmup_tokens": self.warmup_tokens,
                "provisional_tokens": self.provisional_tokens}


def start_budget(session: TrainingSession, started: float) -> RunBudget | None:
    """The run's budget (None without --time-budget), probed: raises UserError when it cannot take
    one step. ``started``: the set-up's start (time.monotonic)."""
    given = session.cfg.train.time_budget
    if given is None:
        return None
    if session.ranks.distributed:
        raise UserError("--time-budget trains one process for now",
                        "drop --nproc (or torchrun), or train for --epochs instead")
    budget = RunBudget(parse_duration(given), started=started, state=session.state.time_budget)
    budget.probe(session)
    return budget


def _step_shown(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds >= 0.01 else f"{seconds:.1g}"  # (a fast step: 0.003, not 0.00)


def _shown(seconds: float) -> str:
    if 0 < seconds < 10 and seconds != round(seconds):  # (a budget of 0.5s is not "0s")
        return f"{seconds:.2g}s"
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 120 else f"{minutes // 60}h{minutes % 60:02d}m"
