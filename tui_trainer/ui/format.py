"""Numbers the way the panels print them: short, fixed-width where it matters."""

from __future__ import annotations

import math
from pathlib import Path

from tui_trainer.analysis.eta import duration  # noqa: F401  (shared with the headless log)
from tui_trainer.rundir.runs_table import short_count  # noqa: F401  (one definition: the runs table's too)


def count(value: float | None) -> str:
    """12,345 below a million, then 1.23M / 4.56B."""
    if value is None:
        return "—"
    if abs(value) < 1_000_000:
        return f"{value:,.0f}"
    if abs(value) < 1_000_000_000:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e9:.2f}B"




def size(n_bytes: float | None) -> str:
    """1.2 GB, 329 MB, 12.5 MB: three significant figures at most (1,010 MB is 1.0 GB). Decimal units
    (1 MB = 10^6 bytes), as the memory budget's GB, the data's MB and the export's MB are: a trial read
    458,129,408 bytes as "437 MB" here beside "0.5 GB" there."""
    if n_bytes is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if round(abs(n_bytes)) < 1000 or unit == "TB":  # 999.7 MB would print as "1000 MB"
            return f"{n_bytes:.0f} {unit}" if abs(n_bytes) >= 100 or unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.0f} TB"


def loss(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def scientific(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def plain(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def plural(n: int, word: str) -> str:
    """1 epoch, 2 epochs."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def summary_line(end, run_dir: Path, error_text: str | None = None) -> str:
    """The line the terminal keeps once the app has gone: how the run ended (a RunEnded) and where it is."""
    best = f", best val {end.best_val_loss:.4f} at epoch {end.best_epoch}" if end.best_epoch is not None else ""
    next_step = end.next_step(str(run_dir))
    then = f"\n{next_step}" if next_step else ""
    if end.reason == "completed" and end.last_epoch_share is not None:  # --time-budget: where it ended
        return f"tui-trainer: {end.message}, {plural(end.steps, 'step')}{best} — {run_dir}{then}"
    if end.reason == "completed":
        return (f"tui-trainer: finished {plural(end.epochs, 'epoch')}, {plural(end.steps, 'step')}{best}"
                f" — {run_dir}{then}")
    if end.reason == "early_stop":
        # The early-stopping reason names the best epoch already ("... (best 1.6000 at epoch 4)").
        return f"tui-trainer: early stop after {plural(end.epochs, 'epoch')}: {end.message} — {run_dir}{then}"
    if end.reason == "error":
        log = run_dir / "error.log"
        where = f" (traceback in {log})" if log.exists() else ""
        return f"tui-trainer: error: {error_text or end.message}{where} — {run_dir}"
    return f"tui-trainer: {end.message or 'stopped'}{then}"
