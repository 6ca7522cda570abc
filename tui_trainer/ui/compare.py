"""``tui-trainer view RUN_A RUN_B ...``: the runs' epoch curves overlaid, for the question people
always ask — did accum 16 beat accum 4? Val loss a line, train loss points, one colour per run,
the legend in the panel's title (inside the chart it would cover the curves). Under the chart,
the runs' table (rundir/summary.py builds it, as for ``tui-trainer runs``): status, epochs,
tokens, best val loss, time, tokens/s and the settings that differ, cut to the screen's width.
Runs are named by the shortest suffix of their paths that tells them apart. Live runs are
re-read every second. Reads only, like every viewer.

Runs with different tokenizers (char and BPE) have losses per token of different tokens: one line
over the table says so, and where every run recorded ``val_bpb`` the curves are val bits per byte,
the figure that compares them (train loss has no bits per byte: no points then).
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import Footer, Static
from textual_plotext import PlotextPlot

from tui_trainer.events import EpochEvent, RunEnded, StepEvent
from tui_trainer.rundir.runs_table import GAP, columns, fit, padded_rows, short_labels
from tui_trainer.rundir.summary import RunSummary, summarize, tokenizer_notice
from tui_trainer.ui.commands import COMPARE
from tui_trainer.ui.follow import MetricsFollower
from tui_trainer.ui.widgets.help import HelpScreen
from tui_trainer.ui.widgets.loss_plot import integer_ticks, nice_ticks, tick_labels

# plotext colour, and the same ANSI colour in Textual markup for the legend
RUN_COLORS = (("orange+", "ansi_bright_yellow"), ("cyan+", "ansi_bright_cyan"), ("magenta+", "ansi_bright_magenta"),
              ("green+", "ansi_bright_green"), ("blue+", "ansi_bright_blue"), ("red+", "ansi_bright_red"))
REFRESH_S = 1.0


class RunCurves:
    """One run's epoch records, read with a follower (appended to as a live run goes on)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.follower = MetricsFollower(run_dir)
        self.name = str(run_dir)  # as the user typed it: two runs may share a last component
        self.label = self.name  # the shortest suffix that tells it from the others (the app sets it)
        self.epochs: list[EpochEvent] = []
        self.last_step: StepEvent | None = None
        self.end: RunEnded | None = None  # the follower's word once the run is over
        self.update()

    def update(self) -> bool:
        new = self.follower.poll()
        for event in new:
            if isinstance(event, StepEvent):
                self.last_step = event
            elif isinstance(event, RunEnded):
                self.end = event
        self.epochs.extend(e for e in new if isinstance(e, EpochEvent))
        return bool(new)

    def summary(self) -> RunSummary:
        """This run's row of the table (the follower's records in file order: the steps come before
        their epoch, the end last)."""
        events = [*([self.last_step] if self.last_step else []), *self.epochs, *([self.end] if self.end else [])]
        settings = {"config": self.follower.cfg.to_dict()}  # (config.json as the reader read it)
        return summarize(self.name, settings, events, live=self.follower.holder is not None)


class CompareApp(App[None]):
    TITLE = "tui-trainer view"
    BINDINGS = list(COMPARE.bindings)
    DEFAULT_CSS = """
    PlotextPlot { border: round $primary; height: 1fr; }
    #runs-table { height: auto; max-height: 50%; padding: 0 1; }
    #tokenizer-notice { height: auto; padding: 0 1; color: $warning; display: none; }
    """

    def __init__(self, runs: list[RunCurves]) -> None:
        super().__init__()
        self.runs = runs
        for run, label in zip(runs, short_labels([run.name for run in runs])):
            run.label = label

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="compare")
        yield Static(id="tokenizer-notice")
        yield Static(id="runs-table")
        yield Footer()

    def on_mount(self) -> None:
        self.redraw()
        self.call_after_refresh(self.redraw)  # (again once laid out: the ticks follow the plot's size)
        self.set_interval(REFRESH_S, self.refresh_runs)
        self.tell_set_aside()

    def on_resize(self) -> None:
        self.redraw()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(COMPARE.help_keys(ended=True, steerable=False)))

    def tell_set_aside(self) -> None:
        for run in self.runs:
            set_aside = run.follower.new_set_aside()
            if set_aside:
                self.notify(set_aside, title="metrics", severity="warning", timeout=10)

    def refresh_runs(self) -> None:
        changed = [run.update() for run in self.runs if not run.follower.ended]
        if changed:  # (a live run's time and tokens move with its steps, not only at its epochs)
            self.redraw()
        self.tell_set_aside()

    def table_text(self, width: int, summaries: list[RunSummary] | None = None) -> Text:
        """The runs' table cut to ``width`` columns, each run's name in its curve's colour."""
        summaries = summaries if summaries is not None else [run.summary() for run in self.runs]
        rows = padded_rows(fit(columns(summaries, [run.label for run in self.runs]), width))
        text = Text(GAP.join(rows[0]).rstrip(), style="bold")
        for i, cells in enumerate(rows[1:]):
            text.append("\n")
            text.append(cells[0], style=RUN_COLORS[i % len(RUN_COLORS)][1].replace("ansi_", ""))
            text.append((GAP + GAP.join(cells[1:])).rstrip())
        return text

    def in_bits_per_byte(self, notice: str | None) -> bool:
        """Curves in val bits per byte: the tokenizers differ (``notice``: tokenizer_notice's line)
        and every run's epochs recorded it."""
        return notice is not None and all(
            run.epochs and all(e.val_bpb is not None for e in run.epochs) for run in self.runs)

    def legend(self, width: int, bpb: bool = False) -> str:
        """The panel's title: each run's colour and name where they fit ``width``; else the table's
        names, in the same colours, are the legend."""
        what = "epoch val bits per byte (━)" if bpb else "epoch loss (━ val, • train)"
        names = "  ".join(f"━ {run.label}" for run in self.runs)
        if len(f"{what}  {names}") + 6 <= width:
            return f"{what}  " + "  ".join(
                f"[{RUN_COLORS[i % len(RUN_COLORS)][1]}]━[/] {run.label}" for i, run in enumerate(self.runs))
        return what[:-1] + "; the runs in their colours below)"

    def redraw(self) -> None:
        summaries = [run.summary() for run in self.runs]  # (once a redraw, shared)
        self.query_one("#runs-table", Static).update(self.table_text(max(20, self.size.width - 2), summaries))
        words = tokenizer_notice(summaries)
        notice = self.query_one("#tokenizer-notice", Static)
        notice.update(words or "")
        notice.display = words is not None
        bpb = self.in_bits_per_byte(words)
        widget = self.query_one(PlotextPlot)
        widget.border_title = self.legend(self.size.width, bpb)
        plt = widget.plt
        plt.clear_figure()
        values: list[float] = []
        last = 0
        for i, run in enumerate(self.runs):
            color = RUN_COLORS[i % len(RUN_COLORS)][0]
            xs = [e.epoch for e in run.epochs]
            if xs and bpb:  # (train loss has no bits per byte: the val curve only)
                plt.plot(xs, [e.val_bpb for e in run.epochs], color=color, marker="braille")
                values += [e.val_bpb for e in run.epochs if math.isfinite(e.val_bpb)]
            elif xs:
                plt.plot(xs, [e.val_loss for e in run.epochs], color=color, marker="braille")
                plt.scatter(xs, [e.train_loss for e in run.epochs], color=color, marker="dot")
                values += [v for e in run.epochs for v in (e.val_loss, e.train_loss) if math.isfinite(v)]
            if xs:
                last = max(last, xs[-1])
        if last:  # round ticks: whole epochs, and 1.5 2.0 2.5 on the loss axis (not 1.0 2.2 3.5)
            high = max(last, 2)
            ticks = integer_ticks(1, high, max(2, widget.size.width // 10))
            plt.xlim(1, high)
            plt.xticks(ticks, [str(t) for t in ticks])
        if values:
            low, high = min(values), max(values)
            pad = max(high - low, 0.1) * 0.08
            ticks = nice_ticks(low - pad, high + pad, max(2, (widget.size.height - 3) // 2))
            plt.ylim(low - pad, high + pad)
            plt.yticks(ticks, tick_labels(ticks))
        plt.xlabel("epoch")
        widget.refresh()


def create_compare_app(run_dirs: list[str]) -> CompareApp:
    return CompareApp([RunCurves(run_dir) for run_dir in run_dirs])
