"""TensorBoard as one more sink: the step and epoch scalars written with PyTorch's
``SummaryWriter`` under ``RUN_DIR/tensorboard`` (``train --tensorboard``), or after the fact from
``metrics.jsonl`` (``export RUN_DIR --tensorboard``). TensorBoard is an optional extra.

Step scalars use the optimizer step as their x; epoch scalars the epoch number. No Textual import.

An export holds the run dir's lock while it writes (a live run is refused: its export would be
partial, and a later one would show every point twice), writes into a hidden temp folder and
renames it into place (a killed export blocks nothing), and writes nothing for no records.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_trainer.errors import UserError
from tui_trainer.events import EpochEvent, RunEnded, RunStarted, StepEvent
from tui_trainer.rundir.files import METRICS_FILE, TENSORBOARD_DIR, TENSORBOARD_EVENTS
from tui_trainer.rundir.lock import RunLock, lock_is_held
from tui_trainer.rundir.ownership import is_ours
from tui_trainer.rundir.reader import check_run_dir, read_metrics_file

EXPORT_TEMP_PREFIX = f".{TENSORBOARD_DIR}.export-"  # (a hidden folder beside RUN_DIR/tensorboard)
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
EPOCH_SCALARS = (("epoch/train_loss", "train_loss"), ("epoch/val_loss", "val_loss"), ("epoch/val_bpb", "val_bpb"),
                 ("epoch/accum", "accum"), ("epoch/tokens_per_s", "tokens_per_s"),
                 ("epoch/best_val_loss", "best_val_loss"))


class TensorBoardSink:
    """Writes scalars for StepEvent and EpochEvent. The writer opens at the run's RunStarted (the run
    dir exists and is locked by then) or at once when ``run_dir`` is given (export); RunEnded closes it."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self._writer: Any = None
        if log_dir is not None:
            self._open(Path(log_dir))

    def _open(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def emit(self, event: Any) -> None:
        match event:
            case RunStarted(run_dir=run_dir) if self._writer is None:
                self._open(Path(run_dir) / TENSORBOARD_DIR)
            case _ if self._writer is None:
                return
            case StepEvent():
                self._scalars(STEP_SCALARS, event, event.step)
            case EpochEvent():
                self._scalars(EPOCH_SCALARS, event, event.epoch)
            case RunEnded():
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


@dataclass(frozen=True)
class Export:
    target: Path  # RUN_DIR/tensorboard
    records: int  # step and epoch records written as scalars
    set_aside: str  # the metrics lines left out, named ("" for none)


def export_tensorboard(run_dir: str | Path) -> Export:
    """``RUN_DIR/metrics.jsonl`` → TensorBoard event files in ``RUN_DIR/tensorboard``."""
    require_tensorboard()
    path = check_run_dir(run_dir)
    if lock_is_held(path):
        raise UserError(f"run dir {run_dir} is still training: an export now would be partial",
                        "export it once the run has ended (or train with --tensorboard to write them as it goes)")
    if not is_ours(path):
        raise UserError(f"{run_dir} is not a tui-trainer run dir (its config.json is not one of ours)",
                        "pass the --run-dir of a tui-trainer run")
    target = path / TENSORBOARD_DIR
    if target.is_symlink() or target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} already holds TensorBoard event files",
                        "remove it first (exporting again would show every point twice)")
    metrics = read_metrics_file(path)
    events = [e for e in metrics.events if isinstance(e, (StepEvent, EpochEvent))]  # (what becomes scalars)
    if not events:
        raise UserError(f"{path / METRICS_FILE} holds no step or epoch records: nothing to export",
                        "export a run that has trained at least one step")
    lock = RunLock(path)  # (no run may start here while the export writes)
    try:
        _remove_stale_exports(path)
        temp = Path(tempfile.mkdtemp(prefix=EXPORT_TEMP_PREFIX, dir=path))
        try:
            sink = TensorBoardSink(temp)
            try:
                for event in events:
                    sink.emit(event)
            finally:
                sink.close()
            os.replace(temp, target)  # (over an empty folder of that name, or none)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    finally:
        lock.release()
    return Export(target, len(events), metrics.bad_summary())


def _remove_stale_exports(run_dir: Path) -> None:
    """Temp folders of exports that were killed (the run dir's lock is ours: none is writing now),
    each removed only when it holds nothing but event files."""
    for folder in run_dir.glob(f"{EXPORT_TEMP_PREFIX}*"):
        if folder.is_symlink() or not folder.is_dir():
            continue
        if all(f.is_file() and not f.is_symlink() and f.match(TENSORBOARD_EVENTS) for f in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
