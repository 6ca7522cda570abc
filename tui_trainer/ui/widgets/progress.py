"""Where the run is: micro-steps inside the optimizer step, steps inside the epoch, epochs."""

from __future__ import annotations

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.base import Panel


class ProgressPanel(Panel):
    """micro-step 5/8 ━━━━━╸━━━ / step 120/480 ━━╸━━━━━━ / epoch 3/10 ━━━╸━━━━━

    While the epoch validates, the first row is ``validating 12/40`` instead. A --time-budget run
    ended by its budget stops inside its last epoch by design: its step row then reads ``budget
    spent`` (complete) and its epoch row the epochs it trained, not a bar left looking unfinished."""

    COMPONENT_CLASSES = {"progress--label", "progress--count", "progress--bar", "progress--complete",
                         "progress--finished"}

    DEFAULT_CSS = """
    ProgressPanel { height: 3; }
    """

    def key(self, view: RunView, now: float):
        return (view.val_batch, view.val_batches, view.micro_step, view.micro_steps, view.step_in_epoch, view.steps_in_epoch, view.epoch,
                view.epochs, view.epochs_done, view.last_epoch_share)

    def build(self, view: RunView, now: float) -> Table:
        label = self.get_component_rich_style("progress--label")
        count = self.get_component_rich_style("progress--count")
        styles = dict(style=self.get_component_rich_style("progress--bar"),
                      complete_style=self.get_component_rich_style("progress--complete"),
                      finished_style=self.get_component_rich_style("progress--finished"))
        epochs_done = view.epochs_done
        rows = [
            ("micro-step", view.micro_step, view.micro_steps),
            ("step", view.step_in_epoch, view.steps_in_epoch),
            ("epoch", epochs_done, view.epochs),
        ]
        # Counters print the step in progress ("epoch 3/10" while epoch 3 runs); bars show work done.
        counters = [
            f"{view.micro_step}/{view.micro_steps}" if view.micro_steps else "-/-",
            f"{view.step_in_epoch}/{view.steps_in_epoch}" if view.steps_in_epoch else "-/-",
            f"{min(view.epoch, view.epochs)}/{view.epochs}" if view.epochs else "-/-",
        ]
        if view.end_reason == "completed" and view.last_epoch_share is not None:
            rows[1:] = [("budget", 1, 1), ("epoch", epochs_done, epochs_done)]
            counters[1:] = ["spent", f"{epochs_done}/{epochs_done}"]
        if view.val_batch is not None:  # the epoch's validation pass: its bar takes the micro-steps' row
            rows[0] = ("validating", view.val_batch, view.val_batches)
            counters[0] = f"{view.val_batch}/{view.val_batches}"
        width = max(len(c) for c in counters)
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(no_wrap=True, width=10)
        grid.add_column(no_wrap=True, justify="right", width=width)
        grid.add_column(ratio=1)
        for (name, done, total), counter in zip(rows, counters):
            grid.add_row(Text(name, label), Text(counter, count), ProgressBar(total=max(total, 1), completed=done, **styles))
        return grid
