"""Command line → the subcommand's run. The only place that exits.

``tui-trainer train [flags]`` trains (the app, or headless with ``--no-ui``); bare
``tui-trainer [flags]`` means ``train``. A subcommand is one entry in ``COMMANDS``: a function
that adds its arguments to its parser and a function that runs it and returns the exit code.
TOML files are read in config_file.py, signals handled in signals.py, the vanishing terminal in
console.py, the command line's one-line errors and its spelling in argv.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tui_trainer import __version__
from tui_trainer.cli.argv import OneLineParser, dashed_values_attached, refuse_unknown
from tui_trainer.cli.config_file import load_toml, require_data_file
from tui_trainer.cli.console import say, terminal_in_utf8
from tui_trainer.cli.export import add_export_arguments, run_export
from tui_trainer.cli.faces import run_app, run_headless
from tui_trainer.cli.flags import FLAGS, GROUPS, OPTIM, RUN, default_of, with_default
from tui_trainer.cli.presets import QUICK, with_preset
from tui_trainer.cli.runs import add_runs_arguments, run_runs
from tui_trainer.cli.sample import add_sample_arguments, run_sample
from tui_trainer.config import RunConfig
from tui_trainer.data.text_source import PreparationCancelled
from tui_trainer.errors import PeerLost, UserError
from tui_trainer.rundir.paths import check_given_paths, user_os_error

PROG = "tui-trainer"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    groups = {name: parser.add_argument_group(name, about) for name, about in GROUPS.items()}
    run = groups[RUN]
    run.add_argument("--no-ui", action="store_true",
                     help=with_default("run headless: log lines on stdout, for CI and scripts", "the app"))
    run.add_argument("--run-dir", default=None, help=with_default(
        "where config.json, metrics.jsonl and checkpoints go", "runs/<timestamp>"))
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help=with_default("continue the run in RUN_DIR", "a new run"))
    run.add_argument("--overwrite", action="store_true", help=with_default("replace a run already in --run-dir", "off"))
    run.add_argument("--config", metavar="FILE.toml", default=None, help=with_default(
        "TOML file with [model] [data] [optim] [train] [diagnosis] tables; flags override it", "none"))
    run.add_argument("--quick", action="store_true", help=with_default(
        "a first run that shows the whole story (the loss falling, validation, a diagnosis) in about a minute "
        "on a laptop CPU: 4 layers, d_model 128, context 64, micro-batch 16 x accum 4, 150 micro-batches an epoch, "
        "6 epochs; flags and --config still override it", "off"))
    run.add_argument("--serve", metavar="[HOST:]PORT", default=None, help=with_default(
        "also serve a viewer of the run to a browser (textual-serve) at the printed URL, which carries a token; "
        "127.0.0.1 unless a host is given", "off"))
    run.add_argument("--tensorboard", action="store_true", help=with_default(
        "also write the scalars for TensorBoard under RUN_DIR/tensorboard (pip install 'tui-trainer[tensorboard]')",
        "off"))
    run.add_argument("--nproc", type=int, default=None, metavar="N", help=with_default(
        "train on N processes of this machine (one per GPU, or sharing the CPU's cores) through torchrun; "
        "several machines: see docs/distributed.md", "1"))
    run.add_argument("--compile", action="store_true", default=None,
                     help=with_default("torch.compile the model", default_of("train", "compile")))
    for flag, group, section, name, kind, help_text in FLAGS:
        groups[group].add_argument(flag, type=kind, default=None, help=with_default(help_text, default_of(section, name)))
    groups[OPTIM].add_argument("--no-noise-scale", dest="noise_scale", action="store_false", default=None,
                               help=with_default("do not estimate the gradient noise scale (saves one copy of the "
                                                 "gradients)", "estimated"))
    groups[OPTIM].add_argument("--checkpoint-activations", action="store_true", default=None, help=with_default(
        "recompute each block's activations in the backward: less memory per micro-batch, about a third slower",
        "off"))
    groups[OPTIM].add_argument("--auto-accum", action="store_true", default=None, help=with_default(
        "at each epoch boundary, accum becomes the noise scale's suggestion", default_of("train", "auto_accum")))


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any]]:
    """The RunConfig the flags describe, and the flags the user gave explicitly ("section.field")."""
    given: dict[str, Any] = {}
    if args.config:
        tables = load_toml(args.config)
        for section, table in tables.items():
            for key, value in table.items():
                given[f"{section}.{key}"] = value
        if args.data is None and tables.get("data", {}).get("path") is not None:
            require_data_file(tables["data"]["path"], args.config)
    for _flag, _group, section, name, _kind, _help in FLAGS:
        value = getattr(args, name if name != "path" else "data")
        if value is not None:
            given[f"{section}.{name}"] = value
    if args.compile:
        given["train.compile"] = True
    if args.noise_scale is not None:
        given["train.noise_scale"] = args.noise_scale
    if args.auto_accum:
        given["train.auto_accum"] = True
    if args.checkpoint_activations:
        given["train.checkpoint_activations"] = True
    if "train.batch" in given:
        if "train.accum" in given:
            raise UserError("--batch and --accum both say how large a step is",
                            "give --batch N (the split is chosen for you), or --micro-batch and --accum")
        given.setdefault("train.micro_batch", "auto")
    cfg = RunConfig(run_dir=args.run_dir)
    if args.quick:
        cfg = with_preset(cfg, QUICK)  # under the file and the flags, so they still override it
    for key, value in given.items():
        section, name = key.split(".")
        try:
            cfg = cfg.replace(**{section: replace(getattr(cfg, section), **{name: value})})
        except TypeError:
            raise UserError(f"bad value for {key}: {value!r}", f"see `{PROG} train --help`") from None
    return cfg, given


def run_train(args: argparse.Namespace) -> int:
    # Every path given is checked before anything is made (user_paths.py); an OSError on one of
    # them that still slips through (a race, a mount going away) is one line too.
    given_paths = {"--data": args.data, "--config": args.config, "--run-dir": args.run_dir, "--resume": args.resume}
    try:
        return _train(args, given_paths)
    except OSError as exc:
        error = user_os_error(exc, given_paths)
        if error is None:
            raise
        raise error from None


def _train(args: argparse.Namespace, given_paths: dict[str, str | None]) -> int:
    check_given_paths(config=args.config, resume=args.resume, run_dir=args.run_dir, overwrite=args.overwrite,
                      data=None)
    cfg, given = config_from_args(args)
    if "train.time_budget" in given and "train.epochs" in given:
        raise UserError("--time-budget and --epochs both say how long to train",
                        "give one: --time-budget plans the epochs from the measured pace (the last may be partial)")
    if "train.time_budget" in given and args.nproc not in (None, 1):
        raise UserError("--time-budget trains one process for now", "drop --nproc, or train for --epochs instead")
    if "train.time_budget" in given and not args.resume:
        from tui_trainer.analysis.time_budget import budget_defaults

        cfg = with_preset(cfg, budget_defaults(given, cfg.model.n_embd))  # (under what was given)
    if args.resume and args.quick:
        raise UserError("--quick starts a new run", "drop --quick when resuming: a run keeps its own settings")
    if cfg.model.init_from is not None:
        from tui_trainer.rundir.init_source import check_init_from

        if args.resume:
            raise UserError("--init-from starts a new run", "drop --init-from when resuming: a run keeps its weights")
        cfg = check_init_from(cfg, given)
    given_paths["--data"] = cfg.data.path
    check_given_paths(config=None, resume=None, run_dir=None, overwrite=False, data=cfg.data.path,
                      data_from="--data" if args.data is not None else f"[data] path in {args.config}")
    if args.serve:
        from tui_trainer.cli.serve import parse_serve

        parse_serve(args.serve)
    if args.tensorboard:
        from tui_trainer.rundir.tensorboard import require_tensorboard

        require_tensorboard()
    if args.nproc is not None:
        from tui_trainer.cli.launch import is_launched_worker, launch
        from tui_trainer.engine.distributed import placement_from_environment

        if not is_launched_worker():
            if placement_from_environment().distributed:
                raise UserError("--nproc inside torchrun: torchrun already started the processes",
                                "drop --nproc (torchrun's --nproc-per-node says how many)")
            if args.nproc != 1:  # (launch refuses 0 and below)
                if args.serve:  # rank 0 binds it; a bad host or busy port is said here, before any rank starts
                    from tui_trainer.cli.serve import open_listener

                    open_listener(args.serve).close()
                return launch(args.nproc, cfg, args.argv)
    use_app = not args.no_ui and sys.stdout.isatty() and sys.stdin.isatty()
    if not args.no_ui and not use_app:
        print("note: no terminal to draw the app on; running headless (pass --no-ui to silence this)",
              file=sys.stderr)
    return run_app(cfg, given, args) if use_app else run_headless(cfg, given, args)


# -- view: a run dir, without training --------------------------------------------------------------

def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    # One positional of one or more (not RUN_DIR plus RUN_DIR...): with none given, argparse names
    # it once, "required: RUN_DIR", where two read as two runs required (a cold trial).
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help=(
        "a run's directory (its --run-dir), finished or live; give more to compare them "
        "(their epoch curves overlaid, with a legend)"))
    parser.add_argument("--serve", metavar="[HOST:]PORT", default=None, help=with_default(
        "serve the viewer to a browser (textual-serve) at the printed URL, which carries a token; "
        "127.0.0.1 unless a host is given", "off"))


def run_view(args: argparse.Namespace) -> int:
    import os

    from tui_trainer.cli.serve import PARENT_PID_ENV, die_with_parent

    if os.environ.get("TEXTUAL_DRIVER") and os.environ.get(PARENT_PID_ENV, "").isdigit():
        die_with_parent(int(os.environ[PARENT_PID_ENV]))  # a served viewer never outlives its server
    from tui_trainer.rundir.setting_up import wait_for_start
    from tui_trainer.rundir.summary import refuse_a_folder_of_runs

    run_dirs = list(args.run_dirs)
    for run_dir in run_dirs:
        wait_for_start(run_dir, say)  # a run dir its live run is still setting up: its config.json awaited
        refuse_a_folder_of_runs(run_dir, "view")  # `view runs`: the runs inside named (as `--resume runs` does)
    from tui_trainer.ui.viewer import create_view_app  # (after the wait: it imports torch, ~1 s or more)

    if len(run_dirs) > 1:
        from tui_trainer.ui.compare import create_compare_app

        app = create_compare_app(run_dirs)
    else:
        app = create_view_app(run_dirs[0])  # bad input raises here, before the terminal is taken
    if args.serve:
        from tui_trainer.cli.serve import serve_viewer

        return serve_viewer(run_dirs, args.serve)
    served = bool(os.environ.get("TEXTUAL_DRIVER"))  # a page textual-serve started: the browser is the terminal
    if not served and not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise UserError("view needs a terminal to draw on", f"run it in a terminal (or read {run_dirs[0]}/metrics.jsonl)")
    with terminal_in_utf8():
        app.run()
    return 0


# -- subcommands ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    about: str  # one line, shown in `tui-trainer --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # returns the exit code; raises UserError on bad input


COMMANDS: dict[str, Command] = {
    "train": Command("train a GPT (the app, or headless with --no-ui); the default command",
                     add_train_arguments, run_train),
    "sample": Command("print text written by a run's model (checkpoints/best.pt), streamed on a terminal",
                      add_sample_arguments, run_sample),
    "view": Command("watch a run dir, finished or live, and steer a live run (+ - p s; ctrl+x stops it)",
                    add_view_arguments, run_view),
    "export": Command("write a run for another tool: its model for Hugging Face (--hf), its metrics for TensorBoard "
                      "(--tensorboard)", add_export_arguments, run_export),
    "runs": Command("list the run dirs under a folder (default runs/), newest first: status, epochs, best val "
                    "loss, time and the settings that differ", add_runs_arguments, run_runs),
}
DEFAULT_COMMAND = "train"


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed_version

        return installed_version(PROG)
    except (ImportError, PackageNotFoundError):
        return __version__  # running from a checkout that was never installed


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Train a small GPT (characters or BPE) with exact gradient accumulation and a validation split.",
        epilog=f"Bare `{PROG} [flags]` means `{PROG} {DEFAULT_COMMAND} [flags]`; "
               f"`{PROG} COMMAND --help` lists a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.about, description=command.about)
        command.add_arguments(sub)
    return parser


def with_command(argv: list[str]) -> list[str]:
    """Bare ``tui-trainer [flags]`` (no command, or a first argument that is a flag of the default
    command) means ``tui-trainer train [flags]``; the top level keeps its own --help and --version."""
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        return [DEFAULT_COMMAND, *argv]
    return argv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = with_command(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    argv = dashed_values_attached(argv, commands.get(argv[0]) if argv else None)
    args, extras = parser.parse_known_args(argv)
    if extras:
        refuse_unknown(commands[args.command], extras)
    args.argv = argv  # (what --nproc hands on to each process)
    return args


def process_started() -> float:
    """``time.monotonic()`` when this process began: the interpreter's start and torch's import count
    towards a --time-budget, as the user's clock does (measured: ~3 s a 53 s budget's process spent
    before ``main``). Now, where the process's start cannot be read."""
    try:
        import psutil

        age = time.time() - psutil.Process().create_time()
    except Exception:  # (the platform refuses: the budget counts from here)
        return time.monotonic()
    return time.monotonic() - age if 0 <= age < 600 else time.monotonic()


def main(argv: list[str] | None = None) -> int:
    # A --time-budget counts from the process's start when run as a command (argv None), else from here.
    started = process_started() if argv is None else time.monotonic()
    args = parse_args(argv)
    args.started = started
    try:
        return COMMANDS[args.command].run(args)
    except UserError as exc:
        if _is_main_rank():  # several processes: rank 0 says it (the others met the same problem)
            say(exc.one_line())
        return exc.exit_code
    except PreparationCancelled as exc:
        if _is_main_rank():
            say("tui-trainer: stopped while preparing the data; no run was started and no partial cache was kept")
        return 128 + (exc.args[0] if exc.args and exc.args[0] else 2)
    except PeerLost as exc:  # several processes: one died or hung during set-up
        say(f"error: {exc}")
        from tui_trainer.cli.faces import exit_now

        exit_now(1)  # (the process group is abandoned: no tearing it down)
        return 1
    except KeyboardInterrupt:
        return 130


def _is_main_rank() -> bool:
    from tui_trainer.engine.distributed import placement_from_environment

    try:
        return placement_from_environment().is_main
    except UserError:
        return True


if __name__ == "__main__":
    sys.exit(main())
