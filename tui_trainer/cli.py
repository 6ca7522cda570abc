"""Command line → RunConfig → the app or the headless run. The only place that exits."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import signal
import sys
import threading
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from collections.abc import Callable
from typing import Any, NoReturn

from .config import RunConfig, checked_value
from .errors import UserError

# flag → (config section, field, type, help)
FLAGS: list[tuple[str, str, str, type, str]] = [
    ("--data", "data", "path", str, "UTF-8 text file to train on (default: the bundled tiny-shakespeare)"),
    ("--val-split", "data", "val_split", float, "fraction of the text held out for validation (default 0.1)"),
    ("--limit-train-batches", "data", "limit_train_batches", int, "cap micro-batches per training epoch"),
    ("--limit-val-batches", "data", "limit_val_batches", int, "cap micro-batches per validation pass"),
    ("--block-size", "model", "block_size", int, "context length in tokens (default 128)"),
    ("--n-layer", "model", "n_layer", int, "transformer blocks (default 6)"),
    ("--n-head", "model", "n_head", int, "attention heads (default 8)"),
    ("--n-embd", "model", "n_embd", int, "model width d_model (default 256)"),
    ("--dropout", "model", "dropout", float, "dropout probability (default 0.1)"),
    ("--micro-batch", "train", "micro_batch", int, "sequences per forward/backward (default 16)"),
    ("--accum", "train", "accum", int, "micro-batches accumulated per optimizer step (default 8)"),
    ("--epochs", "train", "epochs", int, "passes over the training split (default 10)"),
    ("--seed", "train", "seed", int, "seed for init, data order and dropout (default 1337)"),
    ("--device", "train", "device", str, "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"),
    ("--threads", "train", "threads", int, "torch CPU threads (default: all cores; one left for the app on 4+)"),
    ("--precision", "train", "precision", str, "auto (bf16 where the hardware has it), fp32 or bf16 (default auto)"),
    ("--patience", "train", "patience", int, "early stopping patience in epochs; 0 = off (default 4)"),
    ("--min-delta", "train", "min_delta", float, "smallest val-loss improvement that counts (default 0)"),
    ("--checkpoint-every", "train", "checkpoint_every", int, "save `latest` every N optimizer steps (default ~5 min)"),
    ("--max-bad-steps", "train", "max_bad_steps", int, "non-finite steps in a row before stopping (default 3)"),
    ("--lr", "optim", "lr", float, "peak learning rate (default 1e-3)"),
    ("--weight-decay", "optim", "weight_decay", float, "AdamW weight decay (default 0.1)"),
    ("--grad-clip", "optim", "grad_clip", float, "clip the step's gradient norm; 0 = off (default 1.0)"),
    ("--warmup-tokens", "optim", "warmup_tokens", int, "linear warm-up in tokens (default 5%% of the run)"),
]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} — see `tui-trainer --help`", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="tui-trainer",
        description="Train a small character-level GPT with exact gradient accumulation and a validation split. "
                    "Opens the terminal app unless --no-ui is given.",
    )
    parser.add_argument("--no-ui", action="store_true", help="run headless: log lines on stdout, for CI and scripts")
    parser.add_argument("--run-dir", default=None, help="where config.json, metrics.jsonl and checkpoints go "
                                                        "(default runs/<timestamp>)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --run-dir")
    parser.add_argument("--config", metavar="FILE.toml", default=None,
                        help="TOML file with [model] [data] [optim] [train] [diagnosis] tables; flags override it")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    for flag, _section, _name, kind, help_text in FLAGS:
        parser.add_argument(flag, type=kind, default=None, help=help_text)
    return parser


def _load_toml(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist", "check the path given to --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML ({exc})", "fix the syntax") from None
    sections = {f.name: f for f in fields(RunConfig) if f.name != "run_dir"}
    # vocab_size comes from the data, never from a file.
    home = {f.name: name for name, section in sections.items() for f in fields(section.default_factory)
            if f.name != "vocab_size"}
    for section, table in data.items():
        if not isinstance(table, dict) and section in home:
            raise UserError(f"{section} in {path} is outside any table", f"put it under [{home[section]}]")
        if not isinstance(table, dict) and section in sections:
            raise UserError(f"{section} in {path} must be a table", f"write [{section}] with its settings below it")
        if not isinstance(table, dict):
            guess = difflib.get_close_matches(section, home, n=1)
            raise UserError(f"unknown setting '{section}' outside any table in {path}",
                            f"did you mean '{guess[0]}' under [{home[guess[0]]}]?" if guess
                            else f"settings go in the tables {', '.join(f'[{s}]' for s in sections)}")
        if section not in sections:
            guess = difflib.get_close_matches(section, sections, n=1)
            raise UserError(f"unknown table [{section}] in {path}",
                            f"did you mean [{guess[0]}]?" if guess else f"use one of {', '.join(sections)}")
        section_cls = sections[section].default_factory
        known = {f.name for f in fields(section_cls)} - {"vocab_size"}
        for key in table:
            if key == "vocab_size":
                raise UserError(f"vocab_size in {path} cannot be set", "remove it: it comes from the data's characters")
            if key not in known and key in home:
                raise UserError(f"'{key}' in [{section}] of {path} belongs in another table", f"move it to [{home[key]}]")
            if key not in known:
                guess = difflib.get_close_matches(key, known, n=1)
                raise UserError(f"unknown key '{key}' in [{section}] of {path}",
                                f"did you mean '{guess[0]}'?" if guess else f"known keys: {', '.join(sorted(known))}")
            table[key] = checked_value(section_cls, key, table[key], f"[{section}] of {path}")
    return data


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any]]:
    """The RunConfig the flags describe, and the flags the user gave explicitly ("section.field")."""
    given: dict[str, Any] = {}
    if args.config:
        for section, table in _load_toml(args.config).items():
            for key, value in table.items():
                given[f"{section}.{key}"] = value
    for _flag, section, name, _kind, _help in FLAGS:
        value = getattr(args, name if name != "path" else "data")
        if value is not None:
            given[f"{section}.{name}"] = value
    if args.compile:
        given["train.compile"] = True
    cfg = RunConfig(run_dir=args.run_dir)
    for key, value in given.items():
        section, name = key.split(".")
        try:
            cfg = cfg.replace(**{section: replace(getattr(cfg, section), **{name: value})})
        except TypeError:
            raise UserError(f"bad value for {key}: {value!r}", "see `tui-trainer --help`") from None
    return cfg, given


class SignalStopper:
    """SIGINT/SIGTERM/SIGHUP → ask the engine to finish its micro-step, save and end.

    A second signal while the engine is stopping is ignored (the save is atomic either way);
    a third one exits at once (putting the terminal back first when the app had it). Once a stop
    was signalled the handlers stay in place until the process exits, so a late second Ctrl-C
    cannot raise KeyboardInterrupt during shutdown. ``on_stop`` runs in the handler after each
    stop request (the app uses it to close once the engine is done).
    """

    SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
    # Leave the alternate screen, show the cursor, and switch off mouse reporting, bracketed paste
    # and the kitty keyboard protocol: what a full-screen app turns on.
    TERMINAL_RESET = "\x1b[<u\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1003l\x1b[?1006l\x1b[?1015l\x1b[?2004l\x1b[?1004l"

    def __init__(self, control, on_stop: Callable[[], None] | None = None, restore_terminal: bool = False) -> None:
        self.control = control
        self.on_stop = on_stop
        self.count = 0
        self._previous: dict[int, Any] = {}
        self._terminal: tuple[int, Any] | None = None  # (fd, termios attributes) to put back on a hard exit
        if restore_terminal:
            try:
                import termios

                fd = sys.stdin.fileno()
                self._terminal = (fd, termios.tcgetattr(fd))
            except Exception:  # no termios, no terminal on stdin (termios.error, OSError, ValueError)
                pass

    def __enter__(self) -> "SignalStopper":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if self.count >= 3:
            self._put_terminal_back()
            os._exit(128 + signum)
        self.control.stop("interrupted", signum)
        if self.on_stop is not None:
            self.on_stop()

    def _put_terminal_back(self) -> None:
        if self._terminal is None:
            return
        fd, attributes = self._terminal
        try:
            import termios

            termios.tcsetattr(fd, termios.TCSANOW, attributes)
            os.write(sys.__stderr__.fileno(), self.TERMINAL_RESET.encode())
        except Exception:  # the terminal may be gone; exiting matters more
            pass

    def __exit__(self, *exc: Any) -> None:
        if self.count:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class DetachableStream:
    """stdout for the headless log, made to outlive its terminal.

    When the SSH link drops, writes to the dead terminal fail (EIO; EPIPE for a closed pipe);
    the run must still save and write its `end` record. On the first failed write the file
    descriptor is pointed at /dev/null, so later writes and the interpreter's final flush succeed.
    """

    def __init__(self, stream) -> None:
        self.stream = stream
        self.detached = False

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False

    def write(self, text: str) -> None:
        self._guard(self.stream.write, text)

    def flush(self) -> None:
        self._guard(self.stream.flush)

    def _guard(self, call, *args: Any) -> None:
        if self.detached:
            return
        try:
            call(*args)
        except (OSError, ValueError):
            self.detached = True
            _point_at_devnull(self.stream)


def _point_at_devnull(stream) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def say(text: str) -> None:
    """One line on stderr, even when the terminal is gone."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        _point_at_devnull(sys.stderr)


def exit_code_for(end) -> int:
    if end.reason == "error":
        return 1
    if end.reason == "interrupted" and end.exit_signal:
        return 128 + end.exit_signal
    return 0


def run_headless(cfg: RunConfig, given: dict[str, Any], args: argparse.Namespace) -> int:
    from .control import Control

    control = Control()
    # Handlers first: a signal while torch imports or the data loads stops the run at its first micro-step.
    with SignalStopper(control):
        from .engine import Trainer
        from .headless import HeadlessLog

        trainer = Trainer(cfg, HeadlessLog(DetachableStream(sys.stdout)), control, resume=args.resume,
                          overrides=given, overwrite=args.overwrite)
        end = trainer.run()
    if trainer.error is not None and not isinstance(trainer.error, UserError):
        say(f"error: training failed: {end.message} (traceback in {trainer.run_dir / 'error.log'})")
    elif isinstance(trainer.error, UserError):
        raise trainer.error
    return exit_code_for(end)


def run_app(cfg: RunConfig, given: dict[str, Any], args: argparse.Namespace) -> int:
    from .control import Control
    from .ui.app import create_app

    control = Control()
    built: list = []  # the app, once set-up is done (the signal handler may run before)
    # The handlers cover set-up too (imports, model, a checkpoint load): a signal then still
    # ends with a saved step and an `end` record, as headless does, without taking the terminal.
    # A dead terminal under the app is handled by its driver (ui/terminal.py).
    with SignalStopper(control, on_stop=lambda: _close_app_once_engine_ended(built),
                       restore_terminal=True):
        app = create_app(cfg, resume=args.resume, overrides=given, overwrite=args.overwrite, control=control)
        built.append(app)
        if control.stop_requested:
            end = app.trainer.run()  # stops at once: saves where it is and writes `end`
            say(f"tui-trainer: {end.message or 'stopped'}")
            return exit_code_for(end)
        app.run()
    end = app.finish()
    if end is None:
        return 0
    if app.summary_line():
        say(app.summary_line())
    return exit_code_for(end)


def _close_app_once_engine_ended(built: list) -> None:
    """Called in the signal handler. A running engine ends the app itself after saving; one that
    already ended (the app showing a finished run) would leave the app open on a dead terminal."""
    if not built:
        return  # still setting up: run_app sees the stop before it draws anything
    app = built[0]
    try:
        loop = asyncio.get_running_loop()  # the handler runs on the main thread, inside the app's loop
    except RuntimeError:
        return

    def check() -> None:
        if getattr(app, "engine_running", False):
            loop.call_later(0.2, check)
        else:
            app.exit()

    loop.call_soon_threadsafe(check)  # safe from a signal handler


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, given = config_from_args(args)
        if args.resume and not Path(args.resume).is_dir():
            raise UserError(f"--resume {args.resume}: no such run directory", "pass a run dir such as runs/20260101-120000")
        use_app = not args.no_ui and sys.stdout.isatty() and sys.stdin.isatty()
        if not args.no_ui and not use_app:
            print("note: no terminal to draw the app on; running headless (pass --no-ui to silence this)",
                  file=sys.stderr)
        code = run_app(cfg, given, args) if use_app else run_headless(cfg, given, args)
    except UserError as exc:
        say(exc.one_line())
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
