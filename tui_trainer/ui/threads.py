"""Running set-up work on a thread of its own (see ``in_passing_thread``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


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
