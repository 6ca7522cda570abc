"""TensorBoard as one more sink: the step and epoch scalars written with PyTorch's
``SummaryWriter`` under ``RUN_DIR/tensorboard`` (``train --tensorboard``), or after the fact from
``metrics.jsonl`` (``export RUN_DIR --tensorboard``). TensorBoard is an optional extra.

Step scalars use the optimizer step as their x; epoch scalars the epoch number. No Textual import.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tui_trainer.errors import UserError

TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = "install it with: pip install 'tui-trainer[tensorboard]' (or pip install tensorboard)"


def require_tensorboard() -> None:
    """Checked before a run starts: the flag without the package is bad input, not a crash later."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package, which is not installed", INSTALL_HINT) from None


# (tag, field) per event type: what TensorBoard users look for first
STEP_SCALARS = (("train/step_loss", "loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm"),
                ("train/tokens_per_s", "tokens_per_s"), ("train/accum", "accum"),
                ("train/effective_batch", "effective_batch"), ("train/noise_scale", "noise_scale"))
EPOCH_SCALARS = (("epoch/train_loss", "train_loss"), ("epoch/val_loss", "val_loss"), ("epoch/accum", "accum"),
                 ("epoch/tokens_per_s", "tokens_per_s"), ("epoch/best_val_loss", "best_val_loss"))


class TensorBoardSink:
    """Writes scalars for StepEvent and EpochEvent. The writer opens at the run's RunStarted (the run
    dir exists and is locked by then) or at once when ``run_dir`` is given (export); RunEnded closes it."""

    def __init__(self, run_dir: str | Path | None = None) -> None:
        self._writer: Any = None
        if run_dir is not None:
            self._open(Path(run_dir))

    def _open(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def emit(self, event: Any) -> None:
        name = type(event).__name__
        if name == "RunStarted" and self._writer is None:
            self._open(Path(event.run_dir))
        elif self._writer is None:
            return
        elif name == "StepEvent":
            self._scalars(STEP_SCALARS, event, event.step)
        elif name == "EpochEvent":
            self._scalars(EPOCH_SCALARS, event, event.epoch)
        elif name == "RunEnded":
            self.close()

    def _scalars(self, scalars: tuple[tuple[str, str], ...], event: Any, x: int) -> None:
        for tag, field in scalars:
            value = getattr(event, field, None)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(tag, value, x)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def export_tensorboard(run_dir: str | Path) -> tuple[Path, int]:
    """``RUN_DIR/metrics.jsonl`` → TensorBoard event files; returns their dir and the records written."""
    import json

    from tui_trainer.rundir.metrics import METRICS_FILE
    from tui_trainer.ui.follow import check_run_dir, event_from_record

    require_tensorboard()
    path = check_run_dir(run_dir)
    target = path / TENSORBOARD_DIR
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{target} already holds TensorBoard event files",
                        "remove it first (exporting again would show every point twice)")
    lines = (path / METRICS_FILE).read_text(encoding="utf-8").split("\n") if (path / METRICS_FILE).exists() else []
    events = []  # all read before anything is written: a corrupt file leaves no half export
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = event_from_record(json.loads(line))
        except (ValueError, TypeError):
            if number == len(lines):
                break  # a torn last line
            raise UserError(f"{path / METRICS_FILE} is corrupt at line {number}: not a metrics record",
                            "move the file aside") from None
        if type(event).__name__ in ("StepEvent", "EpochEvent"):  # (what becomes scalars)
            events.append(event)
    sink = TensorBoardSink(path)
    try:
        for event in events:
            sink.emit(event)
    finally:
        sink.close()
    return target, len(events)
