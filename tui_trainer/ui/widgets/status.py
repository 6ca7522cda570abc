"""The top line: run name, device, state, elapsed time and ETA."""

from __future__ import annotations

from rich.text import Text

from tui_trainer.ui import format as fmt
from tui_trainer.ui.view import (
    EARLY_STOPPED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    PAUSED,
    PAUSING,
    RESUMING,
    RUNNING,
    STARTING,
    STOPPING,
    VALIDATING,
    RunView,
)
from tui_trainer.ui.widgets.base import Panel

STATE_LABELS = {
    STARTING: "setting up…", RUNNING: "running", VALIDATING: "validating", PAUSING: "pausing…", PAUSED: "paused", RESUMING: "resuming…",
    STOPPING: "stopping…", FINISHED: "finished", EARLY_STOPPED: "early-stopped", INTERRUPTED: "stopped",
    FAILED: "error",
}


# The busy machine's mark, with its note's advice where there is room ("busy" alone where not;
# the banner, then `?`, has the whole note).
LONG, SHORT = "busy: try {}", "busy: {}"
MIN_NAME = 5  # the fewest cells a cut run name keeps (4 characters and "…"); fewer: no name


class StatusBar(Panel):
    """`tui-trainer │ run 20260101-120000 │ cpu x2 bf16 │ ▶ running │ 0:03:12 │ ETA 0:12:40`"""

    COMPONENT_CLASSES = {"status--title", "status--dim", "status--run"} | {
        f"status--{state}" for state in STATE_LABELS}

    DEFAULT_CSS = """
    StatusBar { height: 1; }
    """

    def key(self, view: RunView, now: float):
        return (view.run_name, view.device, view.threads, view.precision, view.state, view.busy_machine,
                fmt.duration(view.elapsed(now)),
                fmt.duration(view.eta(now)), view.eta_measuring, view.epoch, view.epochs,
                fmt.duration(view.budget_seconds_left(now)))

    def build(self, view: RunView, now: float) -> Text:
        # Narrow terminals drop the title first, then the busy hint's advice, then the device, then
        # the run's name (which run this is matters more than the tool's name), never the time and
        # the ETA. (The device went first once: at 80 columns "ETA measuring…" or "stopping…" hid it.)
        room = self.size.width or 10_000
        name = view.run_name
        for parts in ((True, name, True, LONG), (False, name, True, LONG), (False, name, True, SHORT),
                      (False, name, True, ""), (False, name, False, "")):
            line = self._line(view, now, *parts)
            if len(line.plain) <= room:
                return line
        # Still too long: the name cut to what is left (a long run name at 60 columns), or gone.
        left = room - len(self._line(view, now, False, "", False, "").plain) - 1
        return self._line(view, now, False, name[:left - 1] + "…" if left >= MIN_NAME else None, False, "")

    def _line(self, view: RunView, now: float, with_title: bool, name: str | None, with_device: bool,
              advice_form: str) -> Text:
        dim = self.get_component_rich_style("status--dim")
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        if with_title:
            line.append(" tui-trainer ", self.get_component_rich_style("status--title"))
        if name is not None:
            line.append(" ")
            line.append(name, self.get_component_rich_style("status--run"))
        if view.device and with_device:
            line.append("  ")
            line.append(view.device, dim)
            if view.device.startswith("cpu") and view.threads:
                line.append(f"x{view.threads}", dim)
            if view.precision:
                line.append(f" {view.precision}", dim)
        if view.busy_machine and not view.ended:  # (the note leaves the banner at the first diagnosis; this stays)
            advice = view.busy_advice
            line.append("  ")
            line.append(advice_form.format(advice) if advice and advice_form else "busy",
                        self.get_component_rich_style("status--pausing"))
        line.append("  ")
        line.append(f" {STATE_LABELS.get(view.state, view.state)} ",
                    self.get_component_rich_style(f"status--{view.state}"))
        line.append("  ")
        line.append(fmt.duration(view.elapsed(now)))
        if not view.ended:
            budget_left = view.budget_seconds_left(now)  # --time-budget (pauses do not count)
            if budget_left is not None:  # the budget is the run's countdown: an ETA beside it only disagrees
                line.append("  budget ", dim)
                line.append(fmt.duration(budget_left))
                line.append(" left", dim)
                return line
            line.append("  ETA ", dim)
            eta = view.eta(now)
            line.append("measuring…" if eta is None and view.eta_measuring else fmt.duration(eta),
                        dim if eta is None else "")
        return line
