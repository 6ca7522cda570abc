"""Running set-up work on a thread of its own (see ``in_passing_thread``)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from tui_trainer.control import Control

SIGNAL_EXIT_GRACE_S = 10.0  # after a signal's save, how long the app may take to wind down before the process leaves


def in_passing_thread(build: Callable[[], Any]) -> Any:
    """``build()`` on a thread that ends with it; its result, or its exception raised here.

    Building the Trainer runs torch ops (model init, a checkpoint load). Run on the main
    thread, they leave it an OpenMP worker team for the life of the process, and with the
    engine's own team in its thread that cost the app ~20% of its throughput on 2 cores
    (benchmarks/ui_overhead.py: 0.79x of --no-ui). A thread's team goes when the thread does.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = build()
        except BaseException as exc:  # re-raised on the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="tui-trainer-set-up")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class PassingBuild:
    """``build()`` started on a passing thread (the same reason as above: its OpenMP team goes with
    it), for the app to show itself first and take the result when it comes.

    The thread never touches the app's widgets: it stores the outcome, then calls ``done()``,
    which only posts a message (``App.post_message`` is thread-safe; it returns False once the app
    has closed, and ``join()`` still hands the outcome to whoever finishes the run).
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        self.build = build
        self.value: Any = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, done: Callable[[], Any]) -> None:
        def target() -> None:
            try:
                self.value = self.build()
            except BaseException as exc:  # handed to the app (or to join's caller)
                self.error = exc
            done()

        self._thread = threading.Thread(target=target, name="tui-trainer-set-up")
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def join(self) -> Any:
        """Wait for the build (running it here, on a passing thread, if it never started); its
        value, or its exception raised here."""
        if self._thread is None:
            return in_passing_thread(self.build)
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.value


class EngineThread:
    """The training engine on a thread of its own, for the app: started once set-up is done,
    stopped (it saves) and joined when the app has closed, its ``RunEnded`` kept.

    A run stopped by a signal may have lost its terminal with its session: once everything is saved,
    should the app still not wind down (a driver stuck on a dead terminal), the process leaves anyway
    rather than linger unseen on the machine."""

    def __init__(self, control: Control, set_up: PassingBuild | None = None) -> None:
        self.control = control
        self.set_up = set_up
        self.set_up_error: BaseException | None = None  # bad input found while the app was showing
        self.trainer: Any | None = None
        self.end_event: Any | None = None  # the engine's RunEnded, once it returns
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()  # finish() has joined the engine

    def start(self, trainer: Any) -> None:
        self.trainer = trainer
        self._thread = threading.Thread(target=self._run, name="tui-trainer-engine")
        self._thread.start()

    def _run(self) -> None:
        self.end_event = self.trainer.run()
        if self.control.stop_signal is not None:
            threading.Thread(target=self._exit_if_stuck, args=(self.control.stop_signal,), daemon=True,
                             name="tui-trainer-exit-watchdog").start()

    def _exit_if_stuck(self, signal_number: int) -> None:
        if not self._finished.wait(SIGNAL_EXIT_GRACE_S):
            os._exit(128 + signal_number)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def finish(self, timeout: float | None = None):
        """After the app has closed: stop the engine (it saves), wait for it, return its RunEnded.

        None when the engine never started. Never leaves a half-written run: the wait ends
        when the engine has written its checkpoint and its `end` record."""
        thread = self._thread
        if thread is None:
            return self._finish_set_up()
        if thread.is_alive():
            self.control.stop("interrupted")
            thread.join(1.0)
            if thread.is_alive():
                try:
                    print("tui-trainer: waiting for the engine to finish its micro-step and save…",
                          file=sys.stderr, flush=True)
                except (OSError, ValueError):  # no terminal left to tell
                    pass
                thread.join(timeout)
        if not thread.is_alive():
            self._finished.set()
        return self.end_event

    def _finish_set_up(self):
        """The app closed before the engine started (q, a signal, or bad input while it set up): a
        Trainer that got built still ends as a stop does, with a saved step-0 checkpoint and its
        `end` record; None when nothing was built."""
        if self.set_up is None or self.set_up_error is not None:
            return None
        try:
            trainer, _history = self.set_up.join()
        except BaseException as exc:
            self.set_up_error = exc
            return None
        self.trainer = trainer
        if not self.control.stop_requested:
            self.control.stop("interrupted")
        self.end_event = trainer.run()  # stops at its first micro-step: saves where it is, writes `end`
        return self.end_event
