"""``tui-trainer view RUN_A RUN_B ...``: the runs' epoch curves overlaid, for the question people
always ask — did accum 16 beat accum 4? Val loss a line, train loss points, one colour per run,
the legend in the panel's title (inside the chart it would cover the curves). Live runs are
re-read every second. Reads only, like every viewer.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer
from textual_plotext import PlotextPlot

from tui_trainer.events import EpochEvent
from tui_trainer.ui.follow import MetricsFollower

# plotext colour, and the same ANSI colour in Textual markup for the legend
RUN_COLORS = (("orange+", "ansi_bright_yellow"), ("cyan+", "ansi_bright_cyan"), ("magenta+", "ansi_bright_magenta"),
              ("green+", "ansi_bright_green"), ("blue+", "ansi_bright_blue"), ("red+", "ansi_bright_red"))
REFRESH_S = 1.0


class RunCurves:
    """One run's epoch records, read with a follower (appended to as a live run goes on)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.follower = MetricsFollower(run_dir)
        self.name = str(run_dir)  # as the user typed it: two runs may share a last component
        self.epochs: list[EpochEvent] = []
        self.update()

    def update(self) -> bool:
        new = [e for e in self.follower.poll() if isinstance(e, EpochEvent)]
        self.epochs.extend(new)
        return bool(new)


class CompareApp(App[None]):
    TITLE = "tui-trainer view"
    BINDINGS = [Binding("q", "quit", "close")]
    DEFAULT_CSS = "PlotextPlot { border: round $primary; }"

    def __init__(self, runs: list[RunCurves]) -> None:
        super().__init__()
        self.runs = runs

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="compare")
        yield Footer()

    def on_mount(self) -> None:
        plot = self.query_one(PlotextPlot)
        plot.border_title = "epoch loss (━ val, • train)  " + "  ".join(
            f"[{RUN_COLORS[i % len(RUN_COLORS)][1]}]━[/] {run.name}" for i, run in enumerate(self.runs))
        self.redraw()
        self.set_interval(REFRESH_S, self.refresh_runs)
        self.tell_set_aside()

    def tell_set_aside(self) -> None:
        for run in self.runs:
            set_aside = run.follower.new_set_aside()
            if set_aside:
                self.notify(set_aside, title="metrics", severity="warning", timeout=10)

    def refresh_runs(self) -> None:
        if any([run.update() for run in self.runs if not run.follower.ended]):
            self.redraw()
        self.tell_set_aside()

    def redraw(self) -> None:
        widget = self.query_one(PlotextPlot)
        plt = widget.plt
        plt.clear_figure()
        for i, run in enumerate(self.runs):
            color = RUN_COLORS[i % len(RUN_COLORS)][0]
            xs = [e.epoch for e in run.epochs]
            if xs:
                plt.plot(xs, [e.val_loss for e in run.epochs], color=color, marker="braille")
                plt.scatter(xs, [e.train_loss for e in run.epochs], color=color, marker="dot")
        plt.xlabel("epoch")
        widget.refresh()


def create_compare_app(run_dirs: list[str]) -> CompareApp:
    return CompareApp([RunCurves(run_dir) for run_dir in run_dirs])
