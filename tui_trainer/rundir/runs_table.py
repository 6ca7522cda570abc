"""The runs table's layout: ``RunSummary`` rows (summary.py) → columns of cells, each with a rank,
and the columns that fit a width. What a user compares first stays longest: the run and its status,
its best val loss, epochs and time, the settings that say what the run is (its setup), its tokens,
then the other settings that differ; tokens/s gives way first. Pure: no disk, no Textual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_trainer.analysis.eta import duration
from tui_trainer.rundir.summary import DAMAGED, RunSummary

LABEL_MAX = 24  # a longer label keeps its end
GAP = "  "
# The settings that say what a run is (its tokenizer, its steps' size, its time budget): where they
# differ they outrank the other settings when the table is cut to the screen's width.
SETUP = ("data.tokenizer", "train.accum", "train.time_budget")
TITLES = {"train.time_budget": "budget"}  # a shorter title than the key's last part


def short_labels(paths: Sequence[str]) -> list[str]:
    """Each path's shortest suffix of whole components that no other path ends with
    (runs/a/x, runs/b/x, runs/y → a/x, b/x, y); cut at ``LABEL_MAX`` keeping the end."""
    parts = [Path(p).parts or (p,) for p in paths]
    labels = []
    for i, mine in enumerate(parts):
        others = [theirs for j, theirs in enumerate(parts) if j != i]
        k = 1
        while k < len(mine) and any(tuple(theirs[-k:]) == tuple(mine[-k:]) for theirs in others):
            k += 1
        label = "/".join(mine[-k:])
        labels.append(label if len(label) <= LABEL_MAX else "…" + label[-(LABEL_MAX - 1):])
    return labels


@dataclass(frozen=True)
class Column:
    title: str
    cells: tuple[str, ...]
    rank: int  # too wide a table drops the highest rank first
    left: bool = False  # text left-aligned (the run's label); figures right-aligned

    @property
    def width(self) -> int:
        return max(len(self.title), *(len(cell) for cell in self.cells)) if self.cells else len(self.title)


def short_count(value: float | None) -> str:
    """At most 5 characters: 987, 12.3K, 922K, 1.23M."""
    if value is None:
        return "—"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.2f}{unit}" if scaled < 10 else f"{scaled:.1f}{unit}" if scaled < 100 else \
                f"{scaled:.0f}{unit}"
    return f"{value:.0f}"


def setting_text(value: Any, key: str) -> str:
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if key == "data.path" and isinstance(value, str):
        return Path(value).name or value
    return str(value)


def status_text(s: RunSummary) -> str:
    """The status; a run its --time-budget ended reads ``budget 8s spent`` (its own word for done)."""
    if s.budget_spent is not None:
        return f"budget {s.budget_spent} spent" if s.budget_spent else "budget spent"
    return s.status


def epochs_text(s: RunSummary) -> str:
    """``3/10`` (done of planned); a run its budget ended, the epochs it trained: ``0.29``, ``22.5``
    (its last epoch was partial, and the plan was the budget's, not a target of epochs)."""
    if s.last_epoch_share is not None and s.epochs >= 1:
        trained = s.epochs - 1 + s.last_epoch_share
        return f"{trained:.2f}" if trained < 1 else f"{trained:.1f}"
    if s.epochs_planned and s.epochs > s.epochs_planned:
        return str(s.epochs)  # (a plan that moved under a budget run: "52/39" would read as wrong)
    return f"{s.epochs}/{s.epochs_planned}" if s.epochs_planned else str(s.epochs)


def differing(summaries: Sequence[RunSummary]) -> list[str]:
    """The settings whose values differ between the runs (damaged runs aside), in config order."""
    read = [s for s in summaries if s.status != DAMAGED]
    keys = list(dict.fromkeys(key for s in read for key in s.settings))
    return [key for key in keys if len({repr(s.settings.get(key)) for s in read}) > 1]


def columns(summaries: Sequence[RunSummary], labels: Sequence[str] | None = None) -> list[Column]:
    """The table's columns: run, status, epochs, tokens, best val (bpb where recorded), time, tok/s,
    then each differing setting (named by its last part, or whole where two sections share it)."""
    labels = list(labels) if labels is not None else short_labels([s.path for s in summaries])
    rows = [s for s in summaries]
    ok = [s.status != DAMAGED for s in rows]

    def cells(text) -> tuple[str, ...]:
        return tuple(text(s) if good else "—" for s, good in zip(rows, ok))

    # Ranks (the highest gives way first): time and tokens, what a user compares first, outlast every
    # setting but the setup's (a tokenizer, a batch, a budget: what says the losses are comparable at
    # all), and time outlasts those too; tokens/s goes first.
    table = [Column("run", tuple(labels), 0, left=True), Column("status", tuple(status_text(s) for s in rows), 1, left=True),
             Column("epochs", cells(epochs_text), 50),
             Column("tokens", cells(lambda s: short_count(s.tokens)), 59),
             Column("best val", cells(lambda s: f"{s.best_val_loss:.4f}" if s.best_val_loss is not None else "—"), 30)]
    if any(s.best_val_bpb is not None for s in rows):
        table.append(Column("bpb", cells(lambda s: f"{s.best_val_bpb:.4f}" if s.best_val_bpb is not None else "—"), 40))
    table += [Column("time", cells(lambda s: duration(s.seconds) if s.seconds else "—"), 51),
              Column("tok/s", cells(lambda s: short_count(s.tokens_per_s)), 100)]
    batches = {s.effective_batch for s, good in zip(rows, ok) if good}
    if len(batches) > 1:  # (micro-batch x accum x processes: a split of one batch is no different run)
        table.append(Column("eff batch", cells(lambda s: str(s.effective_batch or "—")), 55))
    keys = differing(rows)
    names = [TITLES.get(key, key.split(".", 1)[1]) for key in keys]
    others = 0
    for key, name in zip(keys, names):
        title = name if names.count(name) == 1 else key
        if key in SETUP:
            rank = 56 + SETUP.index(key)
        else:
            rank, others = (60 + others if others < 3 else 110 + others), others + 1
        table.append(Column(title, cells(lambda s, key=key: setting_text(s.settings.get(key), key)), rank))
    return table


def table_width(table: Sequence[Column]) -> int:
    return sum(c.width for c in table) + len(GAP) * max(0, len(table) - 1)


def fit(table: Sequence[Column], width: int) -> list[Column]:
    """The columns that fit ``width``, dropping the highest ranks first (the run and its status stay)."""
    kept = list(table)
    while table_width(kept) > width and len(kept) > 2:
        kept.remove(max(kept, key=lambda c: c.rank))
    return kept


def padded_rows(table: Sequence[Column]) -> list[list[str]]:
    """The header and each row as padded cells (join them with ``GAP``)."""
    widths = [c.width for c in table]

    def pad(text: str, col: Column, width: int) -> str:
        return text.ljust(width) if col.left else text.rjust(width)

    rows = [[pad(c.title, c, w) for c, w in zip(table, widths)]]
    for i in range(len(table[0].cells) if table else 0):
        rows.append([pad(c.cells[i], c, w) for c, w in zip(table, widths)])
    return rows


def render(table: Sequence[Column]) -> str:
    return "\n".join(GAP.join(row).rstrip() for row in padded_rows(table))
