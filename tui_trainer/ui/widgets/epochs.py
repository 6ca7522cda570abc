"""One line per finished epoch (shown when the terminal has room: wide or tall)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from tui_trainer.analysis.diagnosis import KINDS as KIND_STYLES
from tui_trainer.ui import format as fmt
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.base import Panel

COLUMNS = ["epoch", "train", "val", "bpb", "accum", "tok/s", "verdict"]
# widest usual values: every column in 60 (an 80-column terminal's table has ~76)
COLUMN_WIDTHS = {"epoch": 5, "train": 7, "val": 7, "bpb": 6, "accum": 5, "tok/s": 6, "verdict": 12}
NARROWER = ("tok/s", "accum", "bpb")  # the columns a narrow panel leaves out, first to last


class EpochTable(Panel):
    COMPONENT_CLASSES = {"epochs--header", "epochs--best"} | {f"epochs--{kind}" for kind in KIND_STYLES}

    def key(self, view: RunView, now: float):
        return (len(view.epoch_rows), view.best_epoch)

    def on_resize(self) -> None:
        self.refresh()

    def build(self, view: RunView, now: float) -> Table:
        table = Table(box=None, expand=True, padding=(0, 1), show_edge=False,
                      header_style=self.get_component_rich_style("epochs--header"))
        room = max(1, self.size.height - 1)  # the newest epochs that fit under the header
        best = self.get_component_rich_style("epochs--best")
        rows = []
        for row in view.epoch_rows[-room:]:
            kind = row.diagnosis if row.diagnosis in KIND_STYLES else "unstable"
            start = row.before_training  # epoch 0: the starting weights' val loss, no training yet
            rows.append({"epoch": str(row.epoch), "train": fmt.loss(None if start else row.train_loss),
                         "val": Text(fmt.loss(row.val_loss), best if row.epoch == view.best_epoch else ""),
                         "bpb": fmt.loss(row.val_bpb), "accum": str(row.accum),
                         "tok/s": "—" if start else fmt.count(row.tokens_per_s),
                         "verdict": Text("start", "dim") if start else
                         Text(row.diagnosis, self.get_component_rich_style(f"epochs--{kind}"))})
        # (size is the content area, padding excluded; records from before bits per byte: no bpb column)
        names = self.columns_that_fit(self.size.width or 10_000,
                                      bpb=any(row.val_bpb is not None for row in view.epoch_rows[-room:]))
        for name in names:
            table.add_column(name, justify="left" if name == "verdict" else "right", no_wrap=True)
        for row in rows:
            table.add_row(*(row[name] for name in names))
        if not rows:  # a caption, not a row: nothing here should read like an epoch's figures
            table.caption = "(a row after each epoch)"
            table.caption_style = "dim italic"
            table.caption_justify = "left"
        return table

    @staticmethod
    def columns_that_fit(width: int, bpb: bool = True) -> list[str]:
        """Every column when there is room; in a narrow side column tok/s goes first, then accum, then bpb."""
        shown = [c for c in COLUMNS if bpb or c != "bpb"]
        for dropped in range(len(NARROWER) + 1):
            names = [c for c in shown if c not in NARROWER[:dropped]]
            if sum(COLUMN_WIDTHS[c] for c in names) + 2 * (len(names) - 1) <= width:
                return names
        return names
