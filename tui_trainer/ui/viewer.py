"""``tui-trainer view RUN_DIR``: the training app's screen on a run this process does not train.

The engine thread is replaced by a follower thread (follow.py) that tails metrics.jsonl into the
same ``AppSink``, and ``Control`` by ``RemoteControl`` (control_socket.py), so ``+``/``-``/``p``/``s``
reach the run exactly as in the training app. What differs is what ends things: ``q`` closes the
viewer only (the run goes on); stopping the run takes ``ctrl+x`` and a ``y``. Pause and pending
accumulation changes are not in metrics.jsonl: the follower asks the run's socket for its status
and turns the changes into the events the engine would have sent.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from tui_trainer.config import ACCUM_MAX
from tui_trainer.errors import UserError
from tui_trainer.events import AccumChangeApplied, AccumChangeRequested, CheckpointSaved, Notice, Paused, Resumed
from tui_trainer.rundir.control_socket import RemoteControl, check_socket_is_ours, socket_path
from tui_trainer.rundir.files import CHECKPOINT_DIR, checkpoint_name
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.commands import VIEWER
from tui_trainer.ui.follow import MetricsFollower
from tui_trainer.ui.widgets.stats import recorded_memory

POLL_S = 0.25  # metrics and status: new records are on screen well within a second


class ConfirmStop(ModalScreen[bool]):
    """Stopping someone's run from a viewer is one key too easy without a question."""

    DEFAULT_CSS = """
    ConfirmStop { align: center middle; }
    ConfirmStop > Vertical { width: 60; height: auto; border: thick $error; background: $surface; padding: 1 2; }
    """
    BINDINGS = [Binding("y", "answer(True)", "yes, stop it"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Stop the run in {self.run_dir}?\n\nIt finishes its micro-step, saves latest.pt and "
                         "ends (it can be resumed). y = stop it, n = keep it running.")

    def action_answer(self, stop: bool) -> None:
        self.dismiss(stop)


class ViewerApp(TrainerApp, inherit_bindings=False):
    COMMANDS_TABLE = VIEWER
    # Its own keys in its own order (inherited, the trainer's order held and ^x, new, came last: a
    # footer below ~72 columns cut `^x stop run`, now it cuts `? help`); Textual's ctrl+q kept.
    BINDINGS = [*(b for b in App.BINDINGS if b.key == "ctrl+q"), *VIEWER.bindings]
    Q_WORDS = "close"  # "press q to close", as its footer's `q close`
    # A live run's keys need 77 columns spaced out, 90 with the palette hint: at 80 the hint gave way
    # to nothing and `^x stop run` was cut off (ctrl+p still works; the help lists it).
    STEERING_FOOTER_COLUMNS = (78, 90)

    @property
    def footer_columns(self) -> tuple[int, int]:
        return self.STEERING_FOOTER_COLUMNS if self.steerable else self.FOOTER_COLUMNS

    def __init__(self, follower: MetricsFollower, first_events: list, remote: RemoteControl | None,
                 **kwargs: Any) -> None:
        # The memory row: the run's recorded figure (this process's own memory is not the run's).
        kwargs.setdefault("memory_probe", lambda device: recorded_memory(self.view))
        super().__init__(None, replay=first_events, **kwargs)
        self.follower = follower
        self.remote = remote
        if remote is not None:
            remote.on_error = self._remote_failed
            self.control = remote  # the parent's key actions call these methods
        self.live_at_start = not follower.ended
        self._stop_following = threading.Event()
        self._follower_thread: threading.Thread | None = None
        self._last_status: dict[str, Any] | None = None

    def on_mount(self) -> None:  # (after TrainerApp.on_mount: Textual calls each class's handler)
        if not self.follower.ended:
            self._follower_thread = threading.Thread(target=self._follow, name="tui-trainer-follow", daemon=True)
            self._follower_thread.start()

    def on_unmount(self) -> None:
        self._stop_following.set()

    # -- the follower thread (touches no widget: it only emits into the sink) --------------------

    def _follow(self) -> None:
        while not self._stop_following.wait(POLL_S) and not self.follower.ended:
            try:
                events = self.follower.poll()
            except UserError as exc:
                self.sink.emit(Notice(message=f"stopped following: {exc.message}", level="error"))
                return
            if self.remote is not None and not self.follower.ended:
                events = self._status_events() + events
            set_aside = self.follower.new_set_aside()
            if set_aside:
                events.append(Notice(message=set_aside, level="warning"))
            for event in events:
                self.sink.emit(event)

    def _status_events(self) -> list:
        """Pause and accum changes, read from the run's socket (the engine's events stay in its process)."""
        status = self.remote.status()
        if status is None:
            return []
        last, self._last_status = self._last_status, status
        epoch, step = status["epoch"], status["step"]
        events: list = []
        if status["paused"] != (last["paused"] if last else False):
            events.append((Paused if status["paused"] else Resumed)(epoch=epoch, step=step))
        if last is not None and status["accum"] != last["accum"]:
            events.append(AccumChangeApplied(old=last["accum"], new=status["accum"], epoch=epoch, step=step))
        pending = status["pending_accum"]
        if pending != (last["pending_accum"] if last else None) and pending is not None:
            events.append(AccumChangeRequested(old=status["accum"], new=pending, epoch=epoch, step=step,
                                               applies_at_epoch=epoch + 1))
        saves = status.get("saves")  # (an older run's status has no count of asked-for saves)
        if last is not None and isinstance(saves, int) and saves > (last.get("saves") or 0):
            path = self.follower.run_dir / CHECKPOINT_DIR / checkpoint_name("latest")
            redone = status.get("saved_redone")  # (a run of an older version: none; any other value: not ours)
            redone = redone if type(redone) is int and 0 <= redone <= ACCUM_MAX else 0
            events.append(CheckpointSaved(kind="latest", path=str(path),
                                          step=status.get("saved_step") or step, epoch=epoch,
                                          seconds=status.get("saved_seconds") or 0.0, requested=True,
                                          redone_micro_steps=redone))
        return events

    # -- keys --------------------------------------------------------------------------------------

    @property
    def steerable(self) -> bool:
        """The run is live and listens on its socket. (Not the parent's ``engine_running``: that one
        is stopped when the app closes, and closing a viewer must never stop the run.)"""
        return self.remote is not None and not self.view.ended

    def _remote_failed(self, text: str) -> None:
        self.notify(text, title="steering", severity="error", timeout=6)

    def action_stop(self, signal_number: int | None = None) -> None:
        """ctrl+c closes the viewer, as q does; the run is not touched."""
        self.exit()

    def why_no_sample(self) -> str:
        run_dir = self.follower.run_dir
        if self.view.ended:
            return f"the run has ended; new text: tui-trainer sample {run_dir}"
        return f"this viewer cannot reach the run (no control socket); new text: tui-trainer sample {run_dir}"

    def action_stop_run(self) -> None:
        if not self.steerable:
            self.notify("this viewer cannot stop the run (it is over, or has no control socket)", timeout=4)
            return

        def answered(stop: bool | None) -> None:
            if stop and self.remote is not None:
                self.remote.stop()
                if self.remote.stop_requested:
                    self.view.request_stop()
                    self.refresh_panels()
                    self.notify("stopping the run: it finishes its micro-step and saves", timeout=4)

        self.push_screen(ConfirmStop(self.view.run_dir or str(self.follower.run_dir)), answered)

    def _on_run_ended(self, event: Any) -> None:
        super()._on_run_ended(event)
        if self.live_at_start:
            self.notify(f"the run has ended ({event.reason}){': ' + event.message if event.message else ''}",
                        title="run ended", timeout=15)

    def summary_line(self) -> str | None:
        return None  # the viewer leaves nothing behind, on the terminal either


def create_view_app(run_dir: str | Path, **kwargs: Any) -> ViewerApp:
    """A viewer on ``run_dir``; bad input (not a run dir, a corrupt metrics file, a control socket
    that is not ours) is a UserError here, before Textual takes the terminal."""
    follower = MetricsFollower(run_dir)
    first_events = follower.poll()
    set_aside = follower.new_set_aside()
    if set_aside:  # (after RunStarted: the app shows notices of a started run)
        first_events.insert(1, Notice(message=set_aside, level="warning"))
    remote = None
    path = socket_path(follower.run_dir)
    if path.exists() or path.is_symlink():
        check_socket_is_ours(path)  # (a dead run's socket is ours too: it is checked the same)
        if not follower.ended:
            remote = RemoteControl(path)
    return ViewerApp(follower, first_events, remote, **kwargs)
