"""What the app and viewers ask of a running loop, and how several processes agree on it.

``Steering`` is the part of ``TrainingSession`` (session.py) that drains the ``Control`` queue
between micro-steps: accumulation changes for the next epoch, pause, save, sample, stop. One
process acts on them at once (a pause or stop between micro-steps); several act at step
boundaries, on what rank 0 decided and ``_agree`` shared (a stop any rank was asked for included),
so that every rank pauses, saves and stops at the same step. No Textual import, ever.

It works on the session's own state: ``control``, ``state`` (LoopState), ``sink``, ``ranks``,
``sampler``, ``save`` and the flags ``_paused``, ``_save_requested``, ``_sample_requested``,
``_stop_agreed``, ``_window_rng``, all set up by ``TrainingSession``.
"""

from __future__ import annotations

import time
from typing import Any

from tui_trainer.control import SampleNow, SaveCheckpoint, SetAccum, SetPaused, TogglePause
from tui_trainer.events import AccumChangeRequested, Paused, Resumed


class Steering:
    """The commands, as the loop of ``TrainingSession`` meets them (see the module's docstring)."""

    def steering_status(self) -> dict[str, Any]:
        """The few plain fields a viewer needs (read from the socket's thread: ints and bools only)."""
        st = self.state
        return {"paused": self._paused, "accum": st.accum, "pending_accum": st.pending_accum,
                "epoch": st.epoch, "step": st.step, "stopping": self.control.stop_requested}

    def _handle_commands(self, wait: float | None = None) -> None:
        for command in self.control.drain(wait):
            if isinstance(command, SetAccum):
                self._request_accum(command.accum)
                self.state.accum_decided_epoch = self.state.epoch  # --auto-accum leaves this epoch's choice alone
            elif isinstance(command, (TogglePause, SetPaused)):
                paused = not self._paused if isinstance(command, TogglePause) else command.paused
                if paused != self._paused:
                    self._paused = paused
                    if not self.ranks.distributed:  # (several: said when the ranks hold, _wait_while_paused)
                        self.sink.emit((Paused if paused else Resumed)(epoch=self.state.epoch, step=self.state.step))
            elif isinstance(command, SaveCheckpoint):
                self._save_requested = True
            elif isinstance(command, SampleNow):
                self._sample_requested = True

    def _request_accum(self, accum: int, at_this_boundary: bool = False, auto: bool = False) -> None:
        """A change of accumulation steps for the next epoch; with ``at_this_boundary`` (a resume
        at the start of an epoch) for the epoch about to start."""
        accum = max(1, min(1024, accum))
        current = self.state.accum
        target = None if accum == current else accum
        epoch = self.state.epoch if at_this_boundary else self.state.epoch + 1
        if target == self.state.pending_accum and (target is None or (self.state.pending_accum_epoch or epoch) == epoch):
            return
        self.state.pending_accum = target
        self.state.pending_accum_epoch = None if target is None else epoch
        self.sink.emit(AccumChangeRequested(old=current, new=accum, epoch=self.state.epoch, step=self.state.step,
                                            applies_at_epoch=epoch, auto=auto))

    def _between_micro_steps(self, paused_seconds: list[float]) -> bool:
        """Called after every micro-step: commands, pause, stop. False = abandon the window."""
        self._handle_commands()
        if self._paused:
            started = time.perf_counter()
            while self._paused and not self.control.stop_requested:
                self._handle_commands(wait=0.1)
                self._sample_if_asked()  # paused, the weights are those of the last step
                if self._save_requested:
                    # `s` while paused saves now, not after a step nobody is taking: the state of the
                    # last step with this window's RNG, as a stop mid-window saves (the resume redoes it).
                    self._save_requested = False
                    self.save("latest", rng=self._window_rng)
            paused_seconds[0] += time.perf_counter() - started
        return not self.control.stop_requested

    def _agree(self) -> None:
        """Several processes, at a step boundary: every rank takes rank 0's decisions (pause, save, a
        pending accumulation change, --auto-accum's epoch) and a stop any rank was asked for (a
        signal reaches each rank on its own), with one exit signal for all. One process: nothing."""
        if not self.ranks.distributed:
            return
        st, world, rank, main = self.state, self.ranks.world_size, self.ranks.rank, self.ranks.is_main
        asked, signal_number = self.control.stop_requested, self.control.stop_signal  # (a handler may set them now)
        signals = [0.0] * world
        signals[rank] = float(signal_number or 0) if asked else 0.0
        mine = [float(self._paused), float(self._save_requested), float(st.pending_accum or 0),
                float(st.pending_accum_epoch or 0), float(st.accum_decided_epoch or 0)]
        agreed = self.ranks.agree([float(asked), *signals, *(mine if main else [0.0] * len(mine))])
        stop, signals, decided = agreed[0], agreed[1:world + 1], agreed[world + 1:]
        # Until the next agreement every rank acts on this one: a signal that reaches one rank
        # after it would otherwise send that rank alone into the stop's save.
        self._stop_agreed = bool(stop)
        if stop:
            self.control.stop_reason = self.control.stop_reason or "interrupted"
            self.control.stop_signal = next((int(s) for s in signals if s), None)
        if not main:
            self._paused, self._save_requested = bool(decided[0]), bool(decided[1])
            st.pending_accum = int(decided[2]) or None
            st.pending_accum_epoch = int(decided[3]) or None
            st.accum_decided_epoch = int(decided[4])

    def stopping(self) -> bool:
        """Whether the run stops now: one process asks its Control; several act on what they last
        agreed (``_agree``), so that they stop at the same step."""
        return self._stop_agreed if self.ranks.distributed else self.control.stop_requested

    def _wait_while_paused(self) -> float:
        """Several processes: a pause (decided on rank 0) holds every rank at the step boundary,
        agreeing every 0.2 s so that no collective waits long; `s` saves, `g` samples, meanwhile.
        Returns the seconds paused."""
        started = time.perf_counter()
        self.sink.emit(Paused(epoch=self.state.epoch, step=self.state.step))  # (rank 0's sink: the screen)
        while self._paused and not self.stopping():
            if self.ranks.is_main:
                self._handle_commands(wait=0.2)
                self._sample_if_asked()
            self._agree()
            if self._save_requested:
                self._save_requested = False
                self.save("latest")
        if not self._paused:
            self.sink.emit(Resumed(epoch=self.state.epoch, step=self.state.step))
        return time.perf_counter() - started

    def _sample_if_asked(self) -> None:
        """A `g` seen since the last step: a sample from the weights as they are (own generator,
        eval mode and back: the training that follows is unchanged)."""
        if self._sample_requested:
            self._sample_requested = False
            self.sink.emit(self.sampler.asked(self.state.epoch, self.state.step))
