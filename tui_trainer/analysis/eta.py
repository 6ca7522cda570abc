"""The time a run has left, from what it has measured: shared by the app and the headless log.

    ETA = (training tokens left x seconds per training token
           + validation batches left x seconds per validation batch) x wall / measured

Both paces are this session's (a resumed run's first steps set them afresh). Until the first
validation pass has been timed, a validation batch is guessed at a third of a training
micro-batch of the same size (a forward pass without the backward, which costs about twice
the forward). ``wall / measured`` (at least 1) adds what went to neither: saves, the app, the
data. Pauses are the caller's to leave out of ``wall``.
"""

from __future__ import annotations

import math

FORWARD_SHARE = 1 / 3  # a validation batch vs a training micro-batch of the same size, until measured


class EtaModel:
    def __init__(self, *, planned_tokens: int, tokens_seen: int, epochs: int, epochs_done: int,
                 val_batches: int, micro_batch: int, block_size: int) -> None:
        self.planned_tokens = planned_tokens  # tokens the whole run trains on
        self.tokens_seen = tokens_seen  # run total, earlier sessions included
        self.epochs = epochs
        self.epochs_done = epochs_done  # epochs whose validation is done
        self.val_batches = val_batches  # micro-batches in one validation pass
        self.batch_tokens = micro_batch * block_size
        self.train_seconds = 0.0  # this session's measured training time and tokens
        self.train_tokens = 0
        self.train_steps = 0  # this session's optimizer steps (their pace is trusted after a few)
        self.val_seconds = 0.0  # finished passes of this session
        self.val_batches_timed = 0
        self.pass_batch = 0  # the pass in progress: batches done, its seconds so far
        self.pass_seconds = 0.0

    def step(self, tokens: int, seconds: float, tokens_seen: int) -> None:
        self.train_seconds += max(0.0, seconds)
        self.train_tokens += tokens
        self.train_steps += 1
        self.tokens_seen = tokens_seen

    def validation(self, batch: int, batches: int, seconds: float) -> None:
        self.val_batches = batches
        self.pass_batch, self.pass_seconds = batch, seconds

    def epoch_done(self, tokens_seen: int | None = None, training: bool = True) -> None:
        """An epoch's validation has ended: its pass joins the measured pace. ``training`` False:
        epoch 0's pass before any step (--init-from), timed but no epoch of the run's."""
        self.val_seconds += self.pass_seconds
        self.val_batches_timed += self.pass_batch
        self.pass_batch, self.pass_seconds = 0, 0.0
        self.epochs_done += 1 if training else 0
        if tokens_seen is not None:
            self.tokens_seen = tokens_seen

    def seconds_per_val_batch(self) -> float | None:
        timed = self.val_batches_timed + self.pass_batch
        if timed:
            return (self.val_seconds + self.pass_seconds) / timed
        if self.train_tokens:
            return self.train_seconds / self.train_tokens * self.batch_tokens * FORWARD_SHARE
        return None

    def val_batches_left(self) -> int:
        return max(0, (self.epochs - self.epochs_done) * self.val_batches - self.pass_batch)

    def eta(self, wall_seconds: float) -> float | None:
        """Seconds left; ``wall_seconds`` = this session's active (unpaused) time. None until a step."""
        per_val_batch = self.seconds_per_val_batch()
        if not self.train_tokens or self.train_seconds <= 0 or per_val_batch is None:
            return None
        tokens_left = max(0, self.planned_tokens - self.tokens_seen)
        left = tokens_left * self.train_seconds / self.train_tokens + self.val_batches_left() * per_val_batch
        measured = self.train_seconds + self.val_seconds + self.pass_seconds
        overhead = max(1.0, wall_seconds / measured) if measured > 0 else 1.0
        return left * overhead

    def shown(self, smoothing: "SmoothedEta", wall_seconds: float) -> float | None:
        """The ETA to show a person: this session's measured estimate through ``smoothing``."""
        return smoothing.update(self.eta(wall_seconds), wall_seconds, self.train_seconds, self.train_steps)


MEASURE_SECONDS = 5.0  # this session's training time before its pace is trusted for an ETA
MEASURE_STEPS = 2  # and optimizer steps: the first step of a session pays for warm-up (allocations, caches)
SETTLE = 0.15  # an estimate within 15% of the running countdown leaves the countdown alone
FOLLOW_SECONDS = 20.0  # how quickly the shown ETA follows a pace that truly changed (time constant)


class SmoothedEta:
    """The ETA a person reads: nothing ("measuring…") until this session has measured its own
    pace, then a clock that counts down second by second and follows the raw estimate only when
    it moves away by more than ``SETTLE`` (a real change of pace: another process, a new accum),
    and then smoothly, over ``FOLLOW_SECONDS``. The raw estimate jumps with every noisy step
    (0:26:42 -> 0:05:14 -> 0:06:15 within seconds of a resume, before this); the shown one does not.

    ``now`` is the session's active time (pauses left out), so the clock stands still in a pause."""

    def __init__(self) -> None:
        self.shown: float | None = None
        self.at = 0.0

    def update(self, raw: float | None, now: float, measured_seconds: float, measured_steps: int) -> float | None:
        if raw == 0:
            return 0.0  # nothing left: exact, measured or not
        if raw is None or measured_seconds < MEASURE_SECONDS or measured_steps < MEASURE_STEPS:
            return None
        if self.shown is None:
            self.shown, self.at = raw, now
            return raw
        elapsed = max(0.0, now - self.at)
        countdown = max(0.0, self.shown - elapsed)
        if abs(raw - countdown) > SETTLE * max(countdown, 1.0):
            countdown += (raw - countdown) * (1.0 - math.exp(-elapsed / FOLLOW_SECONDS))
        self.shown, self.at = countdown, now
        return countdown


def duration(seconds: float | None) -> str:
    """0:03:12, or 1d 02:03:04 for long runs; '--:--' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {clock}" if days else clock
