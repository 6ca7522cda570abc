"""The two faces of `train`: the headless log and the Textual app, over the same engine.

Both install the signal handlers before anything slow starts (imports, the data, the model), so
a signal at any moment ends with a saved step and an `end` record; both return the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from tui_trainer.cli.console import DetachableStream, say, terminal_in_utf8
from tui_trainer.cli.signals import SignalStopper
from tui_trainer.config import RunConfig
from tui_trainer.config_checks import parse_log_every
from tui_trainer.errors import DataChanged, PeerLost, UserError


def exit_code_for(end) -> int:
    if end.reason == "error":
        return 1
    if end.reason == "interrupted" and end.exit_signal:
        return 128 + end.exit_signal
    return 0


def run_headless(cfg: RunConfig, given: dict[str, Any], args: argparse.Namespace) -> int:
    from tui_trainer.control import Control
    from tui_trainer.engine.distributed import placement_from_environment

    if not placement_from_environment().is_main:
        return run_worker(cfg, given, args)

    control = Control()
    # Handlers first: a signal while torch imports stops the run at its first micro-step; one
    # while the data is prepared stops that at once (PreparationCancelled, nothing kept).
    with SignalStopper(control):
        from tui_trainer.cli.headless import HeadlessLog
        from tui_trainer.data.progress import DataProgressLine
        from tui_trainer.engine.loop import Trainer
        from tui_trainer.events import FanOut

        stdout = DetachableStream(sys.stdout)
        log = HeadlessLog(stdout)
        listener = serve_listener(args)  # a bad host or busy port refused here, before the run dir exists
        trainer = Trainer(cfg, FanOut(log, tensorboard_sink(args)), control, resume=args.resume, overrides=given,
                          overwrite=args.overwrite, data_progress=DataProgressLine(stdout),
                          budget_started=getattr(args, "started", None))  # (--time-budget counts from the command's start)
        log.log_every = parse_log_every(trainer.cfg.train.log_every)  # a resumed run's own, unless given
        server = served_viewer(trainer, listener)
        try:
            end = trainer.run()
        finally:
            stop_served(server)
    if trainer.error is not None and not isinstance(trainer.error, UserError):
        if isinstance(trainer.error, PeerLost) and getattr(trainer, "ranks", None) is not None:
            # --nproc's launcher says it, once, with the rank that died and of what (launch.py)
            return leave(trainer, exit_code_for(end), lost=f"error: {end.message}", advice=trainer.rescue_advice)
        if isinstance(trainer.error, (PeerLost, DataChanged)):
            say(f"error: {end.message}")
        else:
            say(f"error: training failed: {end.message} (traceback in {trainer.run_dir / 'error.log'})")
    elif isinstance(trainer.error, UserError):
        raise trainer.error
    return leave(trainer, exit_code_for(end))


def run_worker(cfg: RunConfig, given: dict[str, Any], args: argparse.Namespace) -> int:
    """A rank other than 0 (torchrun): the same training, silent; rank 0 owns the screen, the log
    and the run dir. It speaks only when an exception ended it (rank 0 may be the one that died)."""
    from tui_trainer.control import Control
    from tui_trainer.engine.distributed import placement_from_environment

    control = Control()
    with SignalStopper(control):
        from tui_trainer.engine.loop import Trainer

        trainer = Trainer(cfg, None, control, resume=args.resume, overrides=given, overwrite=args.overwrite)
        end = trainer.run()
    # An end every rank agreed on (an out-of-memory at micro-batch 1) is rank 0's to say; an exception
    # (a peer lost, a crash) is said here too: rank 0 may be the one that died.
    if end.reason == "error" and trainer.error is not None:
        rank = placement_from_environment().rank
        say(f"error: {end.message}" if end.message.startswith("rank ") else f"error: rank {rank}: {end.message}")
    return leave(trainer, exit_code_for(end))


def leave(trainer, code: int, lost: str = "", advice: str = "") -> int:
    """The exit code. A rank of several processes exits here and now, its files closed and its
    output flushed: a process group torn down while Python shuts down can abort the process, and
    one whose peer is dead or stuck (``abandoned``) can wait forever. ``lost``: rank 0's line after
    a lost peer, which --nproc's launcher says (with ``advice``, what a resume can do); said here
    when no launcher of ours started the run (torchrun)."""
    if getattr(trainer, "ranks", None) is not None and trainer.ranks.distributed:
        if trainer.ranks.is_main:
            from tui_trainer.cli.launch import report_exit_code

            if not report_exit_code(code, lost, advice) and lost:
                say(lost)
        exit_now(code)
    if lost:
        say(lost)
    return code


def exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_app(cfg: RunConfig, given: dict[str, Any], args: argparse.Namespace) -> int:
    from tui_trainer.control import Control
    from tui_trainer.engine.distributed import placement_from_environment
    from tui_trainer.ui.factory import create_app

    if not placement_from_environment().is_main:
        return run_worker(cfg, given, args)  # rank 0 alone runs the app

    control = Control()
    built: list = []  # the app, once set-up is done (the signal handler may run before)
    # The handlers cover set-up too (imports, model, a checkpoint load): a signal then still
    # ends with a saved step and an `end` record, as headless does, without taking the terminal.
    # A dead terminal under the app is handled by its driver (ui/terminal.py).
    with SignalStopper(control, on_stop=lambda: _close_app_once_engine_ended(built),
                       restore_terminal=True):
        # The app shows at once ("setting up"); torch, the data and the model load behind it. With
        # --serve the trainer is built first: the served viewer needs its run dir from the start.
        listener = serve_listener(args)  # a bad host or busy port refused here, before the run dir exists
        app = create_app(cfg, resume=args.resume, overrides=given, overwrite=args.overwrite, control=control,
                         in_background=not args.serve, extra_sink=tensorboard_sink(args))
        built.append(app)
        server = served_viewer(app.engine.trainer, listener)
        if listener is not None:  # (its URL, printed above, is hidden under the app's screen: said there too)
            app.notify(listener.urls()[0], title="a viewer is served at", timeout=300)
        try:
            if not control.stop_requested:  # a signal already: no screen to take, finish() below stops the run
                with terminal_in_utf8():
                    app.run()
        finally:
            stop_served(server)
    end = app.engine.finish()  # (a stop during set-up: builds, saves step 0 and writes `end`)
    if app.engine.set_up_error is not None:
        raise app.engine.set_up_error  # bad input: the one line, exit 2, the terminal already given back
    if end is None:
        return 0
    if app.summary_line():
        say(app.summary_line())
    return leave(app.engine.trainer, exit_code_for(end))


def serve_listener(args: argparse.Namespace):
    """--serve: the address bound (and the token drawn) before the run starts; None without it."""
    if not args.serve:
        return None
    from tui_trainer.cli.serve import open_listener

    return open_listener(args.serve)


def served_viewer(trainer, listener):
    """--serve: a guarded textual-serve server of `view RUN_DIR` in a child process, while the run runs."""
    if listener is None:
        return None
    from tui_trainer.cli.serve import start_served_viewer

    return start_served_viewer(trainer.run_dir, listener)


def stop_served(server) -> None:
    if server is not None:
        from tui_trainer.cli.serve import stop_served_viewer

        stop_served_viewer(server)


def tensorboard_sink(args: argparse.Namespace):
    if not args.tensorboard:
        return None
    from tui_trainer.rundir.tensorboard import TensorBoardSink

    return TensorBoardSink()


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
        if app.engine.running:
            loop.call_later(0.2, check)
        else:
            app.exit()

    loop.call_soon_threadsafe(check)  # safe from a signal handler
