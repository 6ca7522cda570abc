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
