"""The one door between the engine thread and the UI thread.

The engine calls ``AppSink.emit`` from its own thread. Nothing there touches a widget:
events go into a deque (append/popleft are atomic in CPython) and the UI drains it on a
timer. Micro-steps, the highest-rate event, are coalesced into a single slot that holds
only the newest. Events that change what the user is waiting for (a pause taking effect,
an epoch's verdict, the end) also post a wake-up message, so the screen answers without
waiting for the next tick; at most one wake-up is in flight at a time.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from textual.message import Message

from tui_trainer.events import CheckpointSaved, DataPreparing, Event, MicroStep, StepEvent, ValidationProgress


class EngineWake(Message):
    """Something the user should see now has arrived from the engine."""


class SetUpDone(Message):
    """The set-up thread has built the trainer (or failed to): the app takes it from there."""


class AppSink:
    def __init__(self) -> None:
        self._events: deque = deque()
        self._latest_micro_step: Any = None
        self._wake_pending = False
        self._app = None

    def attach(self, app) -> None:
        self._app = app

    # -- engine thread --------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        match event:
            case MicroStep():
                self._latest_micro_step = event  # newest only: the UI never needs the ones in between
            case StepEvent() | CheckpointSaved() | ValidationProgress() | DataPreparing():
                self._events.append(event)  # at training speed: the drain timer picks them up
            case _:
                self._events.append(event)
                self._wake()

    def _wake(self) -> None:
        if not self._wake_pending and self._app is not None:
            self._wake_pending = True
            self._app.post_message(EngineWake())  # thread-safe; returns False once the app has closed

    # -- UI thread ------------------------------------------------------------------------------

    def drain(self) -> tuple[list, Any]:
        """Everything that arrived since the last drain, in order, and the newest micro-step."""
        self._wake_pending = False  # before reading, so an event appended after this posts again
        events = []
        while self._events:
            events.append(self._events.popleft())
        # Read, never cleared: applying the same micro-step twice changes nothing, and a
        # read-then-clear could drop one written in between (a stale bar while paused).
        return events, self._latest_micro_step
