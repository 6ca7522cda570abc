"""The Textual app: bindings, the engine thread, and the timers that drain it into the panels.

factory.py builds it (``create_app`` for a run, ``create_replay_app`` for recorded events).
``app.engine.finish()`` (ui/threads.py) stops and joins the engine after the app has closed and returns its ``RunEnded``.

Threads: the engine runs in its own (non-daemon) thread and only ever calls
``AppSink.emit``; the UI thread drains the sink on a timer (``DRAIN_HZ``), redraws the
plot at ``PLOT_HZ`` when something changed, and sends commands through ``Control``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from textual import events as textual_events
from textual.app import App, ComposeResult, SystemCommand
from textual.notifications import Notification, Notify
from textual.screen import Screen

from tui_trainer.config import ACCUM_MAX, ACCUM_MIN
from tui_trainer.control import Control
from tui_trainer.errors import UserError
from tui_trainer.events import CheckpointFailed, CheckpointSaved, RunEnded
from tui_trainer.ui.bridge import AppSink, EngineWake, SetUpDone
from tui_trainer.ui.commands import TRAINER, CommandTable
from tui_trainer.ui.format import summary_line
from tui_trainer.ui.layout import BORDER_TITLES, NARROW_COLUMNS, apply_size_classes, compose_panels
from tui_trainer.ui.terminal import sturdy
from tui_trainer.ui.threads import EngineThread, PassingBuild
from tui_trainer.ui.toasts import toasts_for
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets import (
    BatchPanel,
    DiagnosisBanner,
    EpochTable,
    ErrorPanel,
    HelpScreen,
    LossPlot,
    ProgressPanel,
    StatsPanel,
    StatusBar,
)
from tui_trainer.ui.widgets.samples import SamplePanel, SamplesScreen
from tui_trainer.ui.widgets.stats import memory_in_use, recorded_memory

DRAIN_HZ = 4  # progress bars and counters; 10 Hz cost the 2-core benchmark 6% of a core, 4 Hz about 3.5%
PLOT_HZ = 2  # the chart (the issue asks for 2-4 Hz; a plotext build costs ~10 ms)
TICK_HZ = 1  # elapsed, ETA, memory


class TrainerApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "tui-trainer"

    COMMANDS_TABLE: CommandTable = TRAINER  # keys, help, palette, and when each works (commands.py)
    BINDINGS = list(TRAINER.bindings)
    Q_WORDS = "quit"  # what q does once the run has ended, as the banner's ending line says it
    # Below these widths the footer's keys close up, and take the `^p palette` hint's room (layout.py).
    FOOTER_COLUMNS = (NARROW_COLUMNS, NARROW_COLUMNS)

    def __init__(self, trainer: Any | None = None, sink: AppSink | None = None, *,
                 replay: Iterable[Any] = (), clock: Callable[[], float] = time.monotonic,
                 memory_probe: Callable[[str], str] = memory_in_use, control: Control | None = None,
                 set_up: PassingBuild | None = None) -> None:
        """``trainer`` must emit into ``sink`` (create_app wires them); with no trainer the
        screen shows ``replay``, a list of recorded events, and nothing runs. ``set_up`` builds
        (trainer, history) on a passing thread once the app shows; the engine starts when it is done."""
        super().__init__()
        self.control: Control = trainer.control if trainer is not None else control or Control()
        self.engine = EngineThread(self.control, set_up)  # the training thread: start, finish, its RunEnded
        self.engine.trainer = trainer
        self.sink = sink if sink is not None else AppSink()
        self._replay = list(replay)
        self.view = RunView()
        self.clock = clock
        self.memory_probe = memory_probe
        self.memory = "—"
        self.exit_when_ended = False  # set by q: leave as soon as the engine has saved
        self._last_micro_step = None
        self._saving_toast: Notification | None = None  # `s`'s "saving…", replaced by its "saved"
        self.main_screen: Screen | None = None  # set on mount, with the panels

    # -- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield from compose_panels()

    def on_mount(self) -> None:
        self.sink.attach(self)
        # Held once: app.query_one searches the *active* screen, which is the help screen while it is open.
        main = self.screen
        self.main_screen = main
        self.plot = main.query_one(LossPlot)
        self.stats = main.query_one(StatsPanel)
        self.panels = [main.query_one(kind) for kind in (StatusBar, ProgressPanel, BatchPanel, DiagnosisBanner,
                                                          ErrorPanel, EpochTable, SamplePanel)]
        for selector, title in BORDER_TITLES:
            main.query_one(selector).border_title = title
        self._apply_size_classes(self.size.width, self.size.height)
        self.set_interval(1 / DRAIN_HZ, self.drain)
        self.set_interval(1 / PLOT_HZ, self.redraw_plot)
        self.set_interval(1 / TICK_HZ, self.tick)
        self.tick()
        if self._replay:
            self.feed(self._replay)
        if self.engine.set_up is not None:
            self.engine.set_up.start(done=lambda: self.post_message(SetUpDone()))  # (from the set-up thread)
        elif self.engine.trainer is not None:
            self.engine.start(self.engine.trainer)

    def on_set_up_done(self, _message: SetUpDone) -> None:
        try:
            trainer, history = self.engine.set_up.join()
        except BaseException as exc:  # bad input (a UserError) or a bug: the CLI reports it once we close
            self.engine.set_up_error = exc
            self.exit()
            return
        if self.control.stop_requested:  # a stop while it set up (q leaves at once): finish() runs it
            self.exit()
            return
        self.engine.trainer = trainer
        self.feed(history)
        self.view.pending_accum = trainer.state.pending_accum  # a change asked for before the interruption
        self.engine.start(trainer)

    def on_resize(self, event: textual_events.Resize) -> None:
        self._apply_size_classes(event.size.width, event.size.height)

    def _apply_size_classes(self, width: int, height: int) -> None:
        if self.main_screen is not None:
            apply_size_classes(self.main_screen, width, height, self.footer_columns)

    @property
    def footer_columns(self) -> tuple[int, int]:
        return self.FOOTER_COLUMNS

    def get_driver_class(self):
        return sturdy(super().get_driver_class())  # survives the terminal going away (see terminal.py)

    def summary_line(self) -> str | None:
        """What the terminal keeps once the app has gone: how the run ended and where it is."""
        if self.engine.end_event is None or self.engine.trainer is None:
            return None
        return summary_line(self.engine.end_event, self.engine.trainer.run_dir, self.view.error_text)

    def run(self, *args: Any, **kwargs: Any):
        try:
            return super().run(*args, **kwargs)
        finally:
            # However the app ends (q, ctrl+q, a crash in a widget), the engine is told to stop;
            # its thread is not a daemon, so the process waits for the save.
            if self.engine.running:
                self.control.stop("interrupted")

    # -- engine events → view → panels --------------------------------------------------------

    def on_engine_wake(self, _message: EngineWake) -> None:
        self.drain()

    def drain(self) -> None:
        events, micro_step = self.sink.drain()
        if not events and micro_step is self._last_micro_step:
            return
        now = self.clock()
        for event in events:
            self.view.apply(event, now)
            self._react(event)
        if micro_step is not None and micro_step is not self._last_micro_step:
            self._last_micro_step = micro_step
            self.view.apply(micro_step, now)
        self.refresh_panels()

    def feed(self, events: Iterable[Any]) -> None:
        """Push recorded events through the same path as the engine's (tests, replays)."""
        for event in events:
            self.sink.emit(event)
        self.drain()
        self.redraw_plot()

    def _react(self, event: Any) -> None:
        if isinstance(event, RunEnded):
            self._on_run_ended(event)
        answered = isinstance(event, CheckpointFailed) or (isinstance(event, CheckpointSaved) and event.requested)
        if answered and self._saving_toast is not None:  # (an epoch end's save is not the one asked for)
            self.call_later(self._drop_notification, self._saving_toast)  # its answer replaces it
            self._saving_toast = None
        for toast in toasts_for(event):
            self.notify(toast.message, title=toast.title, severity=toast.severity, timeout=toast.seconds)

    def _drop_notification(self, notification: Notification) -> None:
        # (Textual's own, private; App.clear_notifications would take all. Another Textual 8.x without
        # it leaves the toast to its own seconds rather than end the app.)
        unnotify, shown = getattr(self, "_unnotify", None), getattr(self, "_notifications", ())
        if unnotify is not None and notification in shown:  # (gone already if its seconds ran out)
            unnotify(notification)

    def _on_run_ended(self, event: Any) -> None:
        error = getattr(self.engine.trainer, "error", None) if self.engine.trainer is not None else None
        if error is not None:
            if isinstance(error, UserError):
                self.view.error_text = error.one_line().removeprefix("error: ")
            else:
                self.view.error_text = f"{type(error).__name__}: {error}"
        self.refresh_bindings()
        self._apply_size_classes(self.size.width, self.size.height)  # (the footer's keys are fewer now)
        if self.main_screen is not None and self.main_screen is not self.screen:
            # (refresh_bindings tells the active screen only: under the samples or help screen the
            # main screen's footer went on offering the live keys until esc)
            self.main_screen.refresh_bindings()
        if self.exit_when_ended or (event.reason == "interrupted" and self.control.stop_signal is not None):
            self.exit()

    def refresh_panels(self) -> None:
        if self.main_screen is None:
            return
        now = self.clock()
        view = self.view
        self.main_screen.set_class(view.end_reason == "error", "-failed")
        # The samples panel takes room only once there is (or will be) something to show.
        self.main_screen.set_class(bool(view.sample or view.sample_requested or view.sample_tokens), "-samples")
        if isinstance(self.screen, SamplesScreen):
            self.screen.show(view, self.sample_note())
        for panel in self.panels:
            panel.show(view, now)
        self.stats.show(view, now, memory=self.memory)

    def redraw_plot(self) -> None:
        if self.main_screen is None:
            return
        self.plot.redraw(self.view)

    def tick(self) -> None:
        if self.view.ended and self.view.peak_memory:  # the run's recorded figure, as its viewer shows it
            self.memory = recorded_memory(self.view)
        elif self.view.device:
            self.memory = self.memory_probe(self.view.device)
        self.refresh_panels()

    # -- keys ---------------------------------------------------------------------------------

    @property
    def steerable(self) -> bool:
        """Commands reach a live run (here: until the engine has ended; set-up queues them for it)."""
        return not self.view.ended

    @property
    def sampled(self) -> bool:
        """The run has written a text sample: once it has ended, `g` offers the last one."""
        return self.view.sample is not None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # (While a finished run's final save waits for a retry the run has not ended yet, so `s` stays.)
        return self.COMMANDS_TABLE.key_runs(action, ended=self.view.ended, steerable=self.steerable,
                                            sampled=self.sampled)

    def action_accum_up(self) -> None:
        self._change_accum(double=True)

    def action_accum_down(self) -> None:
        self._change_accum(double=False)

    def _change_accum(self, double: bool) -> None:
        wanted = self.view.request_accum(double)
        if wanted is None:
            limit = f"{ACCUM_MAX} is the most" if double else f"{ACCUM_MIN} is the least"
            self.notify(f"accum {limit} it can be" if self.view.target_accum in (ACCUM_MIN, ACCUM_MAX)
                        else "the run is over", timeout=2)
            return
        self.control.set_accum(wanted)
        self.refresh_panels()

    def action_pause(self) -> None:
        self.view.request_pause_toggle()
        self.control.toggle_pause()
        self.refresh_panels()

    def action_save(self) -> None:
        self.control.save()
        paused = self.view.state == "paused"
        # One toast at a time over the stats: a second `s` replaces the first, the "saved" replaces both.
        if self._saving_toast is not None:
            self._drop_notification(self._saving_toast)
        self._saving_toast = Notification(
            "saving a checkpoint now (paused)…" if paused else "saving a checkpoint after this step…", timeout=3)
        self.post_message(Notify(self._saving_toast))

    def action_sample(self) -> None:
        """g: ask the engine for a sample after this step; where the panel is not shown, open the
        screen that shows it (and the latest one meanwhile). Where no new one can come (the run is
        over), the screen shows the last one, with a line that says where new text comes from."""
        if self.steerable and self.view.request_sample():
            self.control.sample()
        wide = self.main_screen is not None and self.main_screen.has_class("-wide")
        if (not wide or not self.steerable) and not isinstance(self.screen, SamplesScreen):
            self.push_screen(SamplesScreen(self.view, self.sample_note(), self.BINDINGS))
        self.refresh_panels()

    def action_last_sample(self) -> None:
        """g once the run has ended, where it wrote a sample: the last one, and where new text comes from."""
        self.action_sample()

    def action_sample_unavailable(self) -> None:
        """g where it cannot work (``g`` is not offered then): the last sample, and where new text comes from."""
        self.action_sample()

    def sample_note(self) -> str:
        """The samples screen's line where `g` writes no sample ("" where it does)."""
        return "" if self.steerable else self.why_no_sample()

    def why_no_sample(self) -> str:
        run_dir = self.view.run_dir or "RUN_DIR"
        return f"the run has ended; new text: tui-trainer sample {run_dir}"

    def action_interrupt(self) -> None:
        """Ctrl-C: the terminal is in raw mode, so it arrives as a key, not as SIGINT. It does what
        SIGINT does (the same stop as q, then exit code 130), so `tui-trainer && next` does not go
        on after a Ctrl-C; a second one leaves at once."""
        self.action_stop(signal.SIGINT)

    def action_smoothing(self) -> None:
        self.plot.toggle_smoothing(self.view)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            keys = self.COMMANDS_TABLE.help_keys(ended=self.view.ended, steerable=self.steerable, sampled=self.sampled)
            self.push_screen(HelpScreen(keys, self.view.notes))

    def action_close_app(self) -> None:
        self.exit()

    def action_stop(self, signal_number: int | None = None) -> None:
        """First q: stop cleanly and leave once saved. Second q, or a finished run: leave now."""
        if self.view.ended or not self.engine.running or self.exit_when_ended:
            self.exit()
            return
        self.exit_when_ended = True
        self.view.request_stop()
        self.control.stop("interrupted", signal_number)
        self.refresh_panels()
        self.notify("stopping: finishing the micro-step and saving (q again to leave at once)", timeout=4)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        # Of Textual's own, the theme helps (a light terminal); its "Quit ... as soon as possible" would
        # misdescribe what leaving does here (the engine still saves), "Keys" repeats `?`, and
        # "Screenshot" writes files into the working directory.
        yield from (command for command in super().get_system_commands(screen)
                    if command.title in ("Theme", "Maximize", "Minimize"))
        for command in self.COMMANDS_TABLE.palette_now(ended=self.view.ended, steerable=self.steerable,
                                                       sampled=self.sampled):
            yield SystemCommand(command.title, f"{command.help} ({command.key})",
                                getattr(self, f"action_{command.action}"))
