"""One line per finished epoch (shown when the terminal has room: wide or tall)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from .. import format as fmt
from ..view import RunView
from .base import Panel

KIND_STYLES = ("learning", "healthy", "underfitting", "overfitting", "unstable")


class EpochTable(Panel):
    COMPONENT_CLASSES = {"epochs--header", "epochs--best"} | {f"epochs--{kind}" for kind in KIND_STYLES}

    def key(self, view: RunView, now: float):
        return (len(view.epoch_rows), view.best_epoch)

    def on_resize(self) -> None:
        self.refresh()

    def build(self, view: RunView, now: float) -> Table:
        table = Table(box=None, expand=True, padding=(0, 1), show_edge=False,
                      header_style=self.get_component_rich_style("epochs--header"))
        for name, justify in (("epoch", "right"), ("train", "right"), ("val", "right"), ("accum", "right"),
                              ("tok/s", "right"), ("verdict", "left")):
            table.add_column(name, justify=justify, no_wrap=True)
        room = max(1, self.size.height - 1)  # the newest epochs that fit under the header
        best = self.get_component_rich_style("epochs--best")
        for row in view.epoch_rows[-room:]:
            val = Text(fmt.loss(row.val_loss), best if row.epoch == view.best_epoch else "")
            kind = row.diagnosis if row.diagnosis in KIND_STYLES else "unstable"
            table.add_row(str(row.epoch), fmt.loss(row.train_loss), val, str(row.accum),
                          fmt.count(row.tokens_per_s), Text(row.diagnosis, self.get_component_rich_style(f"epochs--{kind}")))
        if not view.epoch_rows:
            table.add_row("", "", "", "", "", Text("after the first epoch", style="dim"))
        return table
