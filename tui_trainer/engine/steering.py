"""What the app and viewers ask of a running loop, and how several processes agree on it.

``Steering(control, ranks, sink, state, save=…, sample=…)`` drains the ``Control`` queue between
micro-steps: accumulation changes for the next epoch, pause, save, sample, stop. One process acts
on them at once (a pause or stop between micro-steps); several act at step boundaries, on what
rank 0 decided and ``agree`` shared (``AgreedDecisions``, and a stop any rank was asked for), so
that every rank pauses, saves and stops at the same step. No Textual import, ever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tui_trainer.config import ACCUM_MAX, ACCUM_MIN
from tui_trainer.control import Control, SampleNow, SaveCheckpoint, SetAccum, SetPaused, TogglePause
from tui_trainer.engine.distributed import Ranks
from tui_trainer.events import AccumChangeApplied, AccumChangeRequested, Event, Notice, Paused, Resumed, Sink
from tui_trainer.rundir.loop_state import LoopState


@dataclass(frozen=True)
class AgreedDecisions:
    """What rank 0 decides for every rank at a step boundary (several processes)."""

    paused: bool
    save_requested: bool
    pending_accum: int | None  # an accumulation change waiting for an epoch's start
    pending_accum_epoch: int | None  # that epoch
    accum_decided_epoch: int  # the epoch whose next accum a key or --auto-accum already chose

    SLOTS = 5  # floats in ``to_floats`` (a class constant, not a field)

    def to_floats(self) -> list[float]:
        return [float(self.paused), float(self.save_requested), float(self.pending_accum or 0),
                float(self.pending_accum_epoch or 0), float(self.accum_decided_epoch or 0)]

    @classmethod
    def from_floats(cls, values: list[float]) -> AgreedDecisions:
        paused, save, pending, pending_epoch, decided_epoch = values
        return cls(paused=bool(paused), save_requested=bool(save), pending_accum=int(pending) or None,
                   pending_accum_epoch=int(pending_epoch) or None, accum_decided_epoch=int(decided_epoch))


class Steering:
    """The commands, as the loop meets them. ``save(rng)`` writes `latest` (``rng``: the state to
    resume with, None = now's) and says whether it did; ``sample(epoch, step)`` is the sample event
    for `g` (LiveSampler.asked)."""

    def __init__(self, control: Control, ranks: Ranks, sink: Sink, state: LoopState, *,
                 save: Callable[..., bool], sample: Callable[[int, int], Event]) -> None:
        self.control, self.ranks, self.sink, self.state = control, ranks, sink, state
        self._save, self._sample = save, sample
        self.paused = False
        self.save_requested = False  # `s`, or a periodic save: after the current step
        self.save_asked = False  # ... and someone asked for it (`s`, the socket): its save is confirmed
        self.asked_saves = 0  # the asked-for saves written, for a viewer's status (`saves`, `saved_step`)
        self.asked_save_step = 0
        self.asked_save_seconds = 0.0
        self.asked_save_redone = 0  # its micro-steps of the window under way, which a resume redoes
        self.sample_requested = False  # `g`: a sample after the current step
        self.seconds_paused = 0.0  # paused between micro-steps, in all (not part of any step's time)
        self._stop_agreed = False  # several processes: the stop they last agreed on (agree)

    def status(self) -> dict[str, Any]:
        """The few plain fields a viewer needs (read from the socket's thread: ints and bools only)."""
        st = self.state
        return {"paused": self.paused, "accum": st.accum, "pending_accum": st.pending_accum,
                "epoch": st.epoch, "step": st.step, "stopping": self.control.stop_requested,
                "saves": self.asked_saves, "saved_step": self.asked_save_step,
                "saved_seconds": self.asked_save_seconds, "saved_redone": self.asked_save_redone}

    def handle_commands(self, wait: float | None = None) -> None:
        for command in self.control.drain(wait):
            if isinstance(command, SetAccum):
                self.request_accum(command.accum)
                self.state.accum_decided_epoch = self.state.epoch  # --auto-accum leaves this epoch's choice alone
            elif isinstance(command, (TogglePause, SetPaused)):
                paused = not self.paused if isinstance(command, TogglePause) else command.paused
                if paused != self.paused:
                    self.paused = paused
                    if not self.ranks.distributed:  # (several: said when the ranks hold, wait_while_paused)
                        self.sink.emit((Paused if paused else Resumed)(epoch=self.state.epoch, step=self.state.step))
            elif isinstance(command, SaveCheckpoint):
                self.save_requested = self.save_asked = True  # (said, as a pause is; and its save confirmed)
                when = "now (paused)" if self.paused else "after the step in progress"
                self.sink.emit(Notice(message=f"a checkpoint was asked for at step {self.state.step}: saving {when}"))
            elif isinstance(command, SampleNow):
                self.sample_requested = True

    def apply_pending_accum(self) -> None:
        """At an epoch's start: the accumulation change waiting for it (a key, --auto-accum, a resume)."""
        st = self.state
        if st.example_cursor == 0 and st.pending_accum is not None and st.epoch >= (st.pending_accum_epoch or st.epoch):
            self.sink.emit(AccumChangeApplied(old=st.accum, new=st.pending_accum, epoch=st.epoch, step=st.step))
            st.accum, st.pending_accum, st.pending_accum_epoch = st.pending_accum, None, None

    def request_accum(self, accum: int, *, at_this_boundary: bool = False, auto: bool = False) -> None:
        """A change of accumulation steps for the next epoch; with ``at_this_boundary`` (a resume
        at the start of an epoch) for the epoch about to start."""
        accum = max(ACCUM_MIN, min(ACCUM_MAX, accum))
        st = self.state
        current = st.accum
        target = None if accum == current else accum
        epoch = st.epoch if at_this_boundary else st.epoch + 1
        if target == st.pending_accum and (target is None or (st.pending_accum_epoch or epoch) == epoch):
            return
        st.pending_accum = target
        st.pending_accum_epoch = None if target is None else epoch
        self.sink.emit(AccumChangeRequested(old=current, new=accum, epoch=st.epoch, step=st.step,
                                            applies_at_epoch=epoch, auto=auto))

    def auto_accum(self, suggestion: int | None, *, step_in_epoch: int, steps_in_epoch: int, epochs: int) -> None:
        """--auto-accum: from the middle of an epoch, the settled suggestion becomes the pending change
        for the next one, once per epoch, exactly as a key press (so +/- can still override it).
        Never below 2: a window of one micro-batch measures nothing, and auto would stay stuck at 1."""
        st = self.state
        if (suggestion is None or st.accum_decided_epoch == st.epoch or st.epoch >= epochs
                or 2 * step_in_epoch < steps_in_epoch):
            return
        st.accum_decided_epoch = st.epoch
        self.request_accum(max(2, suggestion), auto=True)

    def between_micro_steps(self, *, last: bool, window_rng: dict[str, Any] | None, done: int = 0) -> bool:
        """After every micro-step (``last``: the window's last; ``done``: the window's micro-steps
        so far): the commands. False = abandon the window. One process acts at once: a pause holds
        here (counted into ``seconds_paused``), `s` while paused saves the last step's state with
        ``window_rng`` (the window's RNG: the resume redoes the window, as after a stop, and its
        event says how many micro-steps that is), a stop abandons the window unless only its step
        is left. Several processes act together at the step's end (``agree``): here only the queue."""
        self.handle_commands()
        if self.ranks.distributed:
            return True
        if self.paused:
            started = time.perf_counter()
            while self.paused and not self.control.stop_requested:
                self.handle_commands(wait=0.1)
                self.sample_if_asked()  # paused, the weights are those of the last step
                self.save_if_asked(window_rng, redone=done)
            self.seconds_paused += time.perf_counter() - started
        # A stop after the window's last micro-step still takes the step (the loop stops after it).
        return last or not self.control.stop_requested

    def agree(self) -> None:
        """Several processes, at a step boundary: every rank takes rank 0's decisions (pause, save, a
        pending accumulation change, --auto-accum's epoch) and a stop any rank was asked for (a
        signal reaches each rank on its own), with one exit signal for all. One process: nothing."""
        if not self.ranks.distributed:
            return
        st, world, rank, main = self.state, self.ranks.world_size, self.ranks.rank, self.ranks.is_main
        asked, signal_number = self.control.stop_requested, self.control.stop_signal  # (a handler may set them now)
        signals = [0.0] * world
        signals[rank] = float(signal_number or 0) if asked else 0.0
        mine = AgreedDecisions(self.paused, self.save_requested, st.pending_accum, st.pending_accum_epoch,
                               st.accum_decided_epoch)
        slots = mine.to_floats() if main else [0.0] * AgreedDecisions.SLOTS  # (the others' slots add 0)
        agreed = self.ranks.agree([float(asked), *signals, *slots])
        stop, signals = agreed[0], agreed[1:world + 1]
        # Until the next agreement every rank acts on this one: a signal that reaches one rank
        # after it would otherwise send that rank alone into the stop's save.
        self._stop_agreed = bool(stop)
        if stop:
            self.control.stop_reason = self.control.stop_reason or "interrupted"
            self.control.stop_signal = next((int(s) for s in signals if s), None)
        if not main:
            decided = AgreedDecisions.from_floats(agreed[world + 1:])
            self.paused, self.save_requested = decided.paused, decided.save_requested
            st.pending_accum, st.pending_accum_epoch = decided.pending_accum, decided.pending_accum_epoch
            st.accum_decided_epoch = decided.accum_decided_epoch

    def stopping(self) -> bool:
        """Whether the run stops now: one process asks its Control; several act on what they last
        agreed (``agree``), so that they stop at the same step."""
        return self._stop_agreed if self.ranks.distributed else self.control.stop_requested

    def wait_while_paused(self) -> float:
        """Several processes: a pause (decided on rank 0) holds every rank at the step boundary,
        agreeing every 0.2 s so that no collective waits long; `s` saves, `g` samples, meanwhile.
        Returns the seconds paused."""
        started = time.perf_counter()
        self.sink.emit(Paused(epoch=self.state.epoch, step=self.state.step))  # (rank 0's sink: the screen)
        while self.paused and not self.stopping():
            if self.ranks.is_main:
                self.handle_commands(wait=0.2)
                self.sample_if_asked()
            self.agree()
            self.save_if_asked()
        if not self.paused:
            self.sink.emit(Resumed(epoch=self.state.epoch, step=self.state.step))
        return time.perf_counter() - started

    def save_if_asked(self, rng: dict[str, Any] | None = None, redone: int = 0) -> None:
        """`latest`, where a save is due (`s`, the socket, a periodic one); an asked-for one is
        said by the faces (``CheckpointSaved.requested``) and counted for viewers (``status``)."""
        if not self.save_requested:
            return
        asked, self.save_requested, self.save_asked = self.save_asked, False, False
        started = time.perf_counter()
        if self._save(rng, requested=asked, redone=redone) and asked:
            self.asked_save_step, self.asked_save_seconds = self.state.step, time.perf_counter() - started
            self.asked_save_redone = redone
            self.asked_saves += 1

    def sample_if_asked(self) -> None:
        """A `g` seen since the last step: a sample from the weights as they are (own generator,
        eval mode and back: the training that follows is unchanged)."""
        if self.sample_requested:
            self.sample_requested = False
            self.sink.emit(self._sample(self.state.epoch, self.state.step))
