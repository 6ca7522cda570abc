"""The one reader of a run dir's files from outside the run: ``metrics.jsonl`` turned back into the
engine's events, and ``config.json``. What is read is input, not truth: every value is checked for
the type (and the sign) its event field declares before it becomes an event.

One policy for a line that is not a metrics record, for every reader (view, view A B, a resumed
run's history, the resume's trim, export):

- the file's last line cut short (no newline: the run crashed mid-write) is skipped silently;
- any other bad line (not UTF-8, not JSON, not an object, a field of the wrong type such as a
  ``null`` loss, a count beyond ``MAX_COUNT``) is a ``BadLine`` named by its line number: readers go on without it and say so,
  and nothing deletes it (a resume moves it to ``metrics.set-aside.jsonl``).

A record of a type this version does not know (a newer version's) is neither an event nor bad.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import MISSING, dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from tui_trainer.config import RunConfig, checked_value
from tui_trainer.config_checks import LIMITS
from tui_trainer.errors import UserError
from tui_trainer.events import EpochEvent, RunEnded, SampleEvent, StepEvent
from tui_trainer.rundir.files import CONFIG_FILE, METRICS_FILE

RECORD_EVENTS = {"step": StepEvent, "epoch": EpochEvent, "sample": SampleEvent, "end": RunEnded}
_REQUIRED = {kind: {f.name for f in dataclass_fields(kind) if f.default is MISSING and f.default_factory is MISSING}
             for kind in RECORD_EVENTS.values()}
_NON_FINITE = {"nan", "inf", "-inf"}  # how the writer spells what JSON cannot (metrics._clean)
_NUMBER = (int, float)
MAX_COUNT = 2**53  # a step, epoch or token count beyond this is no run's (nor exact as a float: plots, TensorBoard)
CONFIG_LIMIT = 16 * 2**20  # a config.json is a few KB; more is not one
POSITIVE = ("n_layer", "n_head", "n_embd", "block_size", "epochs", "micro_batch", "accum")  # (sizes a viewer uses)


def accepted_types(hint: Any) -> frozenset[type]:
    """The plain types an annotation admits (``float | None`` → {float, NoneType})."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return frozenset(typing.get_origin(kind) or kind for kind in options)


def fits(value: Any, hint: Any) -> bool:
    """``value`` is of the annotated type (an int is a fine float; a bool is no int)."""
    return _admits(value, accepted_types(hint))


def _admits(value: Any, accepted: frozenset[type]) -> bool:
    kind = type(value)
    if kind is int:
        return int in accepted or float in accepted
    if kind in accepted:
        return True
    return kind is not bool and any(isinstance(value, k) for k in (str, list, dict, tuple) if k in accepted)


_ACCEPTED = {kind: {name: accepted_types(hint) for name, hint in typing.get_type_hints(kind).items()}
             for kind in RECORD_EVENTS.values()}


class BadRecord(ValueError):
    """A line that is not a metrics record; ``str()`` says why in a few words."""


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{type(value).__name__} {json.dumps(value)[:30]}" if isinstance(value, (str, list, dict)) else repr(value)


def event_from_record(record: Any) -> Any | None:
    """The event a metrics record was written from; None for a record type this version does not
    know. ``BadRecord`` when it is not a record, or a field has the wrong type or a negative count."""
    if not isinstance(record, dict):
        raise BadRecord(f"a JSON {type(record).__name__ if record is not None else 'null'}, not an object")
    kind = RECORD_EVENTS.get(record.get("type")) if isinstance(record.get("type"), str) else None
    if kind is None:
        if "type" not in record or not isinstance(record["type"], str):
            raise BadRecord("no record type")
        return None
    accepted = _ACCEPTED[kind]
    values = {}
    for name, value in record.items():
        admitted = accepted.get(name)
        if admitted is None:
            continue  # a field of another version
        if type(value) is str and value in _NON_FINITE and float in admitted and str not in admitted:
            value = float(value)
        if not _admits(value, admitted):
            raise BadRecord(f"its {name} is {_describe(value)}")
        if type(value) is int and value < 0 and float not in admitted:  # (every whole number here is a count)
            raise BadRecord(f"its {name} is {value}")
        if type(value) is int and abs(value) > MAX_COUNT:  # (no run counts this far: a float64 axis cannot)
            raise BadRecord(f"its {name} is {float(value):.3g} (out of range)")
        values[name] = tuple(value) if type(value) is list else value
    missing = sorted(_REQUIRED[kind] - set(values))
    if missing:
        raise BadRecord(f"a {record['type']} record without {missing[0]}")
    return kind(**values)


@dataclass(frozen=True)
class Line:
    """One complete line of metrics.jsonl: its event (None: a record type this version does not
    know, or a bad line), or why it is bad."""

    number: int
    raw: bytes
    event: Any = None
    problem: str | None = None

    def describe(self) -> str:
        return f"line {self.number} ({self.problem})"


def parse_line(raw: bytes, number: int) -> Line:
    if not raw.strip():
        return Line(number, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Line(number, raw, problem="not UTF-8 text")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # (RecursionError: a line of thousands of nested brackets)
        return Line(number, raw, problem="not JSON")
    try:
        return Line(number, raw, event=event_from_record(record))
    except BadRecord as exc:
        return Line(number, raw, problem=str(exc))
    except TypeError as exc:  # a field the constructor refuses: a bug of the check above, named not raised
        return Line(number, raw, problem=str(exc))


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of ``data`` and what follows its last newline (a line still being
    written, or torn by a crash)."""
    *lines, tail = data.split(b"\n")
    return lines, tail


@dataclass
class Metrics:
    """A whole metrics.jsonl as read: every complete line, and the torn tail left out."""

    path: Path
    lines: list[Line]
    torn: bytes = b""

    @property
    def events(self) -> list:
        return [line.event for line in self.lines if line.event is not None]

    @property
    def bad(self) -> list[Line]:
        return [line for line in self.lines if line.problem is not None]

    def bad_summary(self) -> str:
        """"line 3 (not JSON), line 9 (its loss is null)" (at most five named, then a count)."""
        bad = self.bad
        named = ", ".join(line.describe() for line in bad[:5])
        return named + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")


def read_metrics_file(run_dir: str | Path) -> Metrics:
    """``RUN_DIR/metrics.jsonl`` read under the policy above (an absent file: no lines)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Metrics(path, [])
    except OSError as exc:
        raise UserError(f"{path} cannot be read: {exc.strerror or exc}", "check its permissions") from None
    complete, tail = split_lines(data)
    lines = [parse_line(raw, number) for number, raw in enumerate(complete, 1)]
    if tail.strip():
        last = parse_line(tail, len(complete) + 1)
        if last.problem is None:
            lines.append(last)  # a good record that lacks only its newline
        else:
            return Metrics(path, lines, torn=tail)
    return Metrics(path, lines)


def not_a_run_dir_folder(run_dir: str | Path) -> UserError:
    """The one line for a RUN_DIR that is no folder: a file ("a file, not a run directory": a cold
    trial read "no such run directory" of a file that exists), or nothing there at all."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        return UserError(f"{run_dir} is a file, not a run directory",
                         "pass the run's folder (its --run-dir), such as runs/20260101-120000")
    return UserError(f"{run_dir}: no such run directory",  # (a run starting now makes its folder in a second or two)
                     "pass a run dir such as runs/20260101-120000 (a run that is just starting: try again in a moment)")


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` if it is a run dir (it has the config.json every run writes before its first step)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise not_a_run_dir_folder(run_dir)
    if not (path / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not a run dir (it has no {CONFIG_FILE})",
                        "pass the --run-dir of a run, such as runs/20260101-120000")
    return path


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """``RUN_DIR/config.json``: the run's config (every setting checked for its type, the sizes for
    their sign) and the whole record; one line naming the file and the fix when it is not one."""
    path = Path(run_dir) / CONFIG_FILE
    fix = f"restore it from a backup; `tui-trainer train --resume {run_dir}` also rewrites it from the checkpoint"
    try:
        with open(path, "rb") as handle:
            data = handle.read(CONFIG_LIMIT + 1)
    except OSError as exc:
        raise UserError(f"{path} cannot be read: {exc.strerror or exc}", "check its permissions") from None
    try:
        record = json.loads(data.decode("utf-8")) if len(data) <= CONFIG_LIMIT else None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a run's config (not UTF-8 text)", fix) from None
    except (ValueError, RecursionError):
        raise UserError(f"{path} is not a run's config (not JSON: truncated or edited?)", fix) from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise UserError(f"{path} is not a run's config (no table of settings)", fix)
    settings = record["config"]
    sections = {f.name: f.default_factory for f in dataclass_fields(RunConfig) if callable(f.default_factory)}
    for section, section_cls in sections.items():
        values = settings.get(section, {})
        if not isinstance(values, dict):
            raise UserError(f"{path} is not a run's config ({section} is not a table)", fix)
        known = {f.name for f in dataclass_fields(section_cls)}
        for name, value in values.items():
            if name in known:
                checked = _checked(section_cls, name, value, path, fix)
                if name in POSITIVE and checked < 1 or name in LIMITS and checked is not None \
                        and not 0 <= checked <= LIMITS[name]:
                    raise UserError(f"{path} is not a run's config ({section}.{name} is {checked})", fix)
    return RunConfig.from_dict(settings), record


def _checked(section_cls: type, name: str, value: Any, path: Path, fix: str) -> Any:
    try:
        return checked_value(section_cls, name, value, str(path))
    except UserError as exc:
        raise UserError(f"{path} is not a run's config ({exc.message})", fix) from None


def whole_number(record: dict[str, Any], key: str, default: int, least: int = 0) -> int:
    """An integer field of a record we read, or ``default`` when it is absent or not a count."""
    value = record.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= least else default


def finite(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)
