"""What W&B's run table shows, for run dirs: per run its status, epochs, tokens, best val loss
(and bits per byte where the records carry ``val_bpb``), time, tokens/s, and the settings that
differ between the runs, as figures (``RunSummary``); runs_table.py lays them out as the table that
``view A B`` (ui/compare.py) draws under the curves and ``tui-trainer runs [DIR]`` prints. No Textual.

``summarize`` is pure (events and config records in, a row of figures out); ``read_summary`` and
``run_dirs_under`` are the only functions that touch the disk. Whether a run is live is the
lock's own word (``lock.live_holder`` tries it), never a pid.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_trainer.errors import UserError
from tui_trainer.events import EpochEvent, RunEnded, StepEvent
from tui_trainer.rundir.files import CHECKPOINT_DIR, CONFIG_FILE, MARKER_FILE, METRICS_FILE
from tui_trainer.rundir.lock import live_holder
from tui_trainer.rundir.ownership import is_ours
from tui_trainer.rundir.reader import read_metrics_file, read_run_config

# An end record's reason in the words the app and `view` use for it (ui/view.py END_STATES; a trial read
# "stopped" there and "interrupted" here for one run). A run without its end record, and no longer
# live, is "interrupted": killed, or its machine went down.
STATUS = {"completed": "finished", "early_stop": "early-stopped", "interrupted": "stopped", "error": "error"}
NO_END = "interrupted"
DAMAGED = "damaged"
RUN_NAMES = (CONFIG_FILE, MARKER_FILE, METRICS_FILE, CHECKPOINT_DIR)  # any of these: a run dir (maybe damaged)
# Not setting columns: they differ between any two runs or say nothing (run_dir, cache_dir), or the
# epochs column shows them already (done/planned).
NOT_SETTINGS = frozenset({"train.run_dir", "data.cache_dir", "train.epochs"})


@dataclass(frozen=True)
class RunSummary:
    """One run's row, as figures (``columns`` formats them)."""

    path: str
    status: str  # running | finished | early-stopped | stopped | interrupted | error | damaged
    epochs: int = 0  # epochs done
    epochs_planned: int | None = None
    tokens: int = 0
    best_val_loss: float | None = None
    best_val_bpb: float | None = None  # only where the records carry val_bpb
    seconds: float = 0.0  # the run's wall time at its end (its `end` record) or last step; older records: the epochs' sum
    tokens_per_s: float | None = None
    effective_batch: int | None = None  # sequences per step (micro-batch x accum x processes), last recorded
    settings: dict[str, Any] = field(default_factory=dict)  # "train.accum": 4, from config.json
    problem: str = ""  # why a damaged run is damaged
    budget_spent: str | None = None  # a --time-budget run its budget ended: the budget as given ("8s")
    last_epoch_share: float | None = None  # ... and the share of its last epoch it trained


def flat_settings(config_record: dict[str, Any] | None) -> dict[str, Any]:
    """config.json's ``config`` table as ``{"section.name": value}``."""
    table = (config_record or {}).get("config")
    if not isinstance(table, dict):
        return {}
    return {f"{section}.{name}": value for section, values in table.items() if isinstance(values, dict)
            for name, value in values.items() if f"{section}.{name}" not in NOT_SETTINGS}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize(path: str, config_record: dict[str, Any] | None, events: Iterable[Any], live: bool) -> RunSummary:
    """A run's row from its config.json record and its metrics events in file order. ``live``: a
    process holds the run's lock. An `end` followed by steps was a session that got resumed."""
    epochs: list[EpochEvent] = []
    last_step: StepEvent | None = None
    end: RunEnded | None = None
    for event in events:
        if isinstance(event, EpochEvent):
            epochs.append(event)
            end = None
        elif isinstance(event, StepEvent):
            last_step, end = event, None
        elif isinstance(event, RunEnded):
            end = event
    status = "running" if live else STATUS.get(end.reason, end.reason) if end else NO_END
    settings = flat_settings(config_record)
    latest = _latest(epochs, last_step)  # (the record of the batch it trains with now)
    _accum_as_trained(settings, latest)
    # Ended by its budget: the epochs were its consequence (the last one partial), the budget the target.
    by_budget = (not live and end is not None and end.reason == "completed" and end.last_epoch_share is not None)
    budget = settings.get("train.time_budget")
    spent = (budget if isinstance(budget, str) else f"{budget:g}s" if _finite(budget) else "") if by_budget else None
    planned = _planned_epochs(config_record, epochs)
    tokens = max([0, *(e.tokens_seen for e in epochs), *([last_step.tokens_seen] if last_step else []),
                  *([end.tokens_seen] if end else [])])
    vals = [e.val_loss for e in epochs if _finite(e.val_loss)]
    bpbs = [getattr(e, "val_bpb", None) for e in epochs]
    bpbs = [b for b in bpbs if _finite(b)]
    seconds = sum(e.seconds for e in epochs if _finite(e.seconds))
    if end is not None and _finite(end.elapsed_seconds):  # the run's own clock at its end (what the app showed)
        seconds = end.elapsed_seconds
    elif end is None and last_step is not None and _finite(last_step.elapsed):  # live or killed: at its last step
        seconds = max(seconds, last_step.elapsed)
    return RunSummary(path=path, status=status, epochs=max((e.epoch for e in epochs), default=0),
                      epochs_planned=planned if isinstance(planned, int) else None, tokens=tokens,
                      best_val_loss=min(vals) if vals else None, best_val_bpb=min(bpbs) if bpbs else None,
                      seconds=seconds, tokens_per_s=run_pace(epochs, last_step), settings=settings,
                      effective_batch=_positive_count(getattr(latest, "effective_batch", None)),
                      budget_spent=spent, last_epoch_share=end.last_epoch_share if by_budget else None)


def _latest(epochs: list[EpochEvent], last_step: StepEvent | None) -> EpochEvent | StepEvent | None:
    """The run's latest record of its batch: the last step's when it outlives the last epoch."""
    return last_step if last_step is not None and (not epochs or last_step.epoch > epochs[-1].epoch) else \
        (epochs[-1] if epochs else None)


def _accum_as_trained(settings: dict[str, Any], latest: EpochEvent | StepEvent | None) -> None:
    """``train.accum`` as the run trains now where it changed during the run (`+`/`-`, --auto-accum):
    ``"4→8"``, so the row agrees with its own eff batch (config.json keeps the accum it started with).
    A split of the micro-batch (memory: 16x4 run as 8x8) is the same accum: the records' is unsplit."""
    started, micro = settings.get("train.accum"), settings.get("train.micro_batch")
    accum, split_micro = getattr(latest, "accum", None), getattr(latest, "micro_batch", 0)
    if _positive_count(started) is None or _positive_count(accum) is None:
        return
    if isinstance(micro, int) and 0 < split_micro < micro and micro % split_micro == 0:
        split = micro // split_micro
        accum = accum // split if accum % split == 0 else accum
    if accum != started:
        settings["train.accum"] = f"{started}→{accum}"


def _positive_count(value: Any) -> int | None:
    """A whole number above 0 as the records hold it, else None (a bool, a float, a damaged record)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def tokenizer_of(settings: dict[str, Any]) -> str:
    """What a run's losses are per token of: its tokenizer (a BPE with its vocabulary's size), or the
    model it started from (--init-from brings its tokenizer)."""
    if settings.get("model.init_from"):
        return f"that of {Path(str(settings['model.init_from'])).name}"
    tokenizer = str(settings.get("data.tokenizer") or "char")
    if tokenizer == "bpe":
        return f"bpe {settings.get('data.vocab_size') or 4096}"
    return tokenizer if tokenizer == "char" else Path(tokenizer).name


def tokenizer_notice(summaries: Sequence[RunSummary]) -> str | None:
    """One line when the runs' tokenizers differ: a loss per token of one is not a loss per token of
    another. Bits per byte is what compares them; None when they share one (or are damaged)."""
    read = [s for s in summaries if s.status != DAMAGED]
    kinds = list(dict.fromkeys(tokenizer_of(s.settings) for s in read))
    if len(kinds) < 2:
        return None
    head = f"these runs use different tokenizers ({', '.join(kinds)}): their losses are per token of each, not comparable"
    if all(s.best_val_bpb is not None for s in read):
        return head + "; bits per byte (bpb) compares them"
    return head + "; bits per byte (bpb) would, but not every run recorded it (older runs)"



def _planned_epochs(config_record: dict[str, Any] | None, epochs: list[EpochEvent]) -> int | None:
    """The epochs the run works to now: config.json's (a resume with --epochs rewrites it at once,
    while the records keep the old target until an epoch ends), or, with a --time-budget, the
    budget's plan as the last epoch recorded it."""
    train = ((config_record or {}).get("config") or {}).get("train")
    train = train if isinstance(train, dict) else {}
    if train.get("time_budget") is not None and epochs:
        return epochs[-1].epochs
    planned = train.get("epochs")
    if isinstance(planned, int) and not isinstance(planned, bool):
        return planned
    return epochs[-1].epochs if epochs else None


def run_pace(epochs: list[EpochEvent], last_step: StepEvent | None) -> float | None:
    """Training tokens over training time, over every epoch (each epoch's tokens at its own pace);
    the last step's pace while the first epoch goes on."""
    tokens = seconds = 0.0
    before = 0
    for e in epochs:
        trained, before = e.tokens_seen - before, e.tokens_seen
        if trained > 0 and _finite(e.tokens_per_s) and e.tokens_per_s > 0:
            tokens, seconds = tokens + trained, seconds + trained / e.tokens_per_s
    if seconds > 0:
        return tokens / seconds
    if last_step is not None and _finite(last_step.tokens_per_s) and last_step.tokens_per_s > 0:
        return last_step.tokens_per_s
    return None


def damaged(path: str, problem: str) -> RunSummary:
    return RunSummary(path=path, status=DAMAGED, problem=problem)


# -- the disk ---------------------------------------------------------------------------------------

def read_summary(run_dir: str | Path) -> RunSummary:
    """A run dir's row, read with the one reader; a run dir it cannot read is ``damaged`` (never raised)."""
    path = str(run_dir)
    try:
        if not (Path(run_dir) / CONFIG_FILE).is_file():
            return damaged(path, f"no {CONFIG_FILE}")
        cfg, _ = read_run_config(run_dir)
        live = live_holder(Path(run_dir)) is not None  # (before the read: a run over wrote its last line)
        # (the settings as the config reads them: an older run's missing key is its default, as in view A B)
        return summarize(path, {"config": cfg.to_dict()}, read_metrics_file(run_dir).events, live)
    except UserError as exc:
        return damaged(path, exc.message)
    except OSError as exc:
        return damaged(path, exc.strerror or str(exc))


def is_run_dir(path: Path) -> bool:
    try:
        return path.is_dir() and any((path / name).exists() for name in RUN_NAMES)
    except OSError:
        return False


def _a_run(path: Path) -> bool:
    """Ours (the marker, or a config.json as we write it), or holding what only a run writes."""
    try:
        return is_ours(path) or (path / METRICS_FILE).is_file() or (path / CHECKPOINT_DIR).is_dir()
    except OSError:
        return False


def _last_written(path: Path) -> float:
    times = []
    for name in (METRICS_FILE, CONFIG_FILE, ""):
        try:
            times.append(os.stat(path / name).st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def run_dirs_under(folder: str | Path) -> list[Path]:
    """The run dirs directly inside ``folder``, newest first (by when each was last written)."""
    folder = Path(folder)
    try:
        children = list(folder.iterdir())
    except OSError as exc:
        raise UserError(f"{folder} cannot be listed: {exc.strerror or exc}", "check its permissions") from None
    # ours only (its marker, or a config.json as we write it): a Hugging Face export beside the runs,
    # with its own config.json, is not a run, let alone a damaged one
    runs = [child for child in children if is_run_dir(child) and _a_run(child)]
    return sorted(runs, key=lambda run: (-_last_written(run), run.name))


SHOWN_RUNS = 5  # a folder of runs given to --resume: the newest this many are named


def folder_of_runs_error(folder: Path, asked: str = "--resume") -> UserError | None:
    """For ``--resume runs``, ``view runs``, ``sample runs`` (``asked``: the flag or command given the
    folder that holds run dirs, not one of them): the error that names the runs inside, newest
    first, with their status; None when it holds none."""
    run_dirs = run_dirs_under(folder)
    if not run_dirs:
        return None
    named = ", ".join(f"{run_dir} ({read_summary(run_dir).status})" for run_dir in run_dirs[:SHOWN_RUNS])
    more = len(run_dirs) - SHOWN_RUNS
    return UserError(f"{asked} {folder} is a folder of runs, not a run dir; it holds {named}"
                     + (f" and {more} more" if more > 0 else ""),
                     f"pass one of these to {asked} (newest first; `tui-trainer runs {folder}` lists them all)")


def refuse_a_folder_of_runs(path: str | Path, asked: str) -> None:
    """``view``/``sample`` given a folder that is no run dir itself: one line naming the runs inside
    (``folder_of_runs_error``), or saying it holds none. A run dir (even a damaged one) and a path
    that is no folder pass: the command's own checks say what is wrong with them."""
    path = Path(path)
    if not path.is_dir() or is_run_dir(path):
        return
    error = folder_of_runs_error(path, asked)
    if error is not None:
        raise error
    raise UserError(f"{path} is not a run dir and holds none",
                    "pass a run dir such as runs/20260101-120000 (`tui-trainer runs [FOLDER]` lists them)")
