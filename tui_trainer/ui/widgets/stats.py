"""Throughput and the optimizer's vital signs: tokens/s, lr, gradient norm, tokens, memory, parameters."""

from __future__ import annotations

import os

try:
    import psutil
except ImportError:  # a declared dependency, but the panel can live without it
    psutil = None

from rich.table import Table
from rich.text import Text

from tui_trainer.ui import format as fmt
from tui_trainer.ui.view import RunView
from tui_trainer.ui.widgets.base import Panel


def memory_in_use(device: str) -> str:
    """RSS of this process on CPU; allocated/peak on CUDA. Cheap enough for a 1 Hz tick."""
    if device.startswith("cuda"):
        import torch  # already imported by the engine; never imported here on CPU

        index = torch.device(device).index or 0
        allocated = torch.cuda.memory_allocated(index)
        peak = torch.cuda.max_memory_allocated(index)
        return f"{fmt.size(allocated)} (peak {fmt.size(peak)})"
    if psutil is None:
        return "—"
    try:
        return f"{fmt.size(psutil.Process(os.getpid()).memory_info().rss)} rss"
    except Exception:  # the platform refuses: not worth a crash
        return "—"


def recorded_memory(view: RunView) -> str:
    """The run's own figure from its records: the last step's measured peak (its RSS on a CPU, the
    allocator's peak on CUDA). What a viewer shows (its own process is not the run's), and what the
    app shows once the run has ended, so both read the same."""
    return f"{fmt.size(view.peak_memory)} peak" if view.peak_memory else "—"


class StatsPanel(Panel):
    COMPONENT_CLASSES = {"stats--name", "stats--value"}

    DEFAULT_CSS = """
    StatsPanel { height: 3; }
    """

    def rows(self, view: RunView, flops: bool = True) -> list[tuple[str, str]]:
        seen = fmt.short_count(view.tokens_seen)
        if view.planned_tokens:
            seen += f"/{fmt.short_count(view.planned_tokens)}"
        grad = fmt.plain(view.grad_norm, 3)
        if view.skipped_steps:
            grad += f" ({view.skipped_steps} skipped)"
        pace = "avg tok/s" if view.run_tokens_per_second is not None else "tokens/s"  # (ended: as `runs` says it)
        return [
            (pace, fmt.count(view.shown_tokens_per_second) + (self._flops(view) if flops else "")),
            ("lr", fmt.scientific(view.lr)),
            ("grad norm", grad),
            ("tokens", seen),
            ("memory", self._panel_extra.get("memory", "—")),
            ("params", fmt.short_count(view.parameters) if view.parameters else "—"),
        ]

    @staticmethod
    def _flops(view: RunView) -> str:
        """Beside tokens/s: MFU on a GPU whose peak is known, the achieved FLOP/s elsewhere (a CPU)."""
        if view.mfu is not None:
            return f" · MFU {view.mfu:.0%}"
        flops = view.flops_per_second
        if not flops:
            return ""
        unit, scale = ("TFLOP/s", 1e12) if flops >= 1e12 else ("GFLOP/s", 1e9)
        return f" · {flops / scale:.3g} {unit}"

    def _value_room(self, rows: list[tuple[str, str]], one_a_line: bool) -> int:
        """Cells a value gets in the grid (names as wide as the longest, one cell of padding between)."""
        if one_a_line:
            return self.size.width - max(len(n) for n, _ in rows) - 1
        names = max(len(n) for n, _ in rows[0::2]) + max(len(n) for n, _ in rows[1::2])
        return (self.size.width - names - 3) // 2

    def key(self, view: RunView, now: float):
        return tuple(self.rows(view))

    def on_resize(self) -> None:
        self.refresh()  # one row or three: a different layout

    def build(self, view: RunView, now: float) -> Table | Text:
        name = self.get_component_rich_style("stats--name")
        value = self.get_component_rich_style("stats--value")
        rows = self.rows(view)
        if self.size.height == 1:  # a short terminal gives the panel one row: the figures that fit, in order
            line = Text(no_wrap=True, overflow="ellipsis", end="")
            for label, figure in rows:
                piece = f"{label} {figure}"
                if line.cell_len and line.cell_len + 2 + len(piece) > self.size.width:
                    break
                if line.cell_len:
                    line.append("  ")
                line.append(label + " ", name)
                line.append(figure, value)
            return line
        grid = Table.grid(expand=True, padding=(0, 1))
        one_a_line = self.size.height >= len(rows)  # a tall, narrow side column: one figure a line, none cut short
        if len(rows[0][1]) > self._value_room(rows, one_a_line):  # FLOP/s beside tokens/s only where it fits whole
            rows = self.rows(view, flops=False)
        if one_a_line:
            grid.add_column(no_wrap=True)
            grid.add_column(no_wrap=True, ratio=1, overflow="ellipsis")
            for label, figure in rows:
                grid.add_row(Text(label, name), Text(figure, value))
            return grid
        # Two name/value pairs per line: 3 lines hold all six figures.
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, ratio=1, overflow="ellipsis")
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, ratio=1, overflow="ellipsis")
        for (n1, v1), (n2, v2) in zip(rows[0::2], rows[1::2]):
            grid.add_row(Text(n1, name), Text(v1, value), Text(n2, name), Text(v2, value))
        return grid
