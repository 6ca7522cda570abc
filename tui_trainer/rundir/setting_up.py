"""A run dir a live run is still setting up: the training process holds its lock (it takes it before
it writes anything) but has not written ``config.json`` yet, as in the first seconds of a run that
prepares its data. ``view`` waits for it rather than call it "not a run dir" (a cold trial: `view R`
one second after starting the run). Reading only: nothing here writes into the run dir.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tui_trainer.errors import UserError
from tui_trainer.rundir.files import CONFIG_FILE
from tui_trainer.rundir.lock import live_holder

START_WAIT_S = 60.0  # how long `view` waits for a live run's config.json
POLL_S = 0.2


def being_set_up(run_dir: str | Path) -> bool:
    """A folder without config.json whose lock a live process holds: a run that has not started yet."""
    path = Path(run_dir)
    return path.is_dir() and not (path / CONFIG_FILE).exists() and live_holder(path) is not None


def wait_for_start(run_dir: str | Path, say: Callable[[str], None], seconds: float = START_WAIT_S,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once ``run_dir`` is no longer being set up: its config.json is there, or its process let
    go of it without writing one (then the caller's own check says what it is). A run dir that is not
    being set up returns at once, silently. Still setting up after ``seconds``: a UserError. Ctrl-C
    (KeyboardInterrupt) leaves, as anywhere."""
    if not being_set_up(run_dir):
        return
    holder = live_holder(Path(run_dir))
    who = f" (pid {holder.pid})" if holder is not None and holder.pid else ""
    say(f"waiting for {run_dir} to start: its training process{who} is setting it up… (Ctrl-C leaves)")
    deadline = clock() + seconds
    while being_set_up(run_dir):
        if clock() >= deadline:
            raise UserError(f"{run_dir} is still being set up by its training process{who} after {seconds:.0f} s "
                            f"(no {CONFIG_FILE} yet)",
                            f"try `tui-trainer view {run_dir}` again once its log says the run started")
        sleep(POLL_S)
