"""`tui-trainer export RUN_DIR`: a run in another tool's format.

``--tensorboard`` writes the metrics as TensorBoard event files under RUN_DIR/tensorboard;
``--hf OUT_DIR`` writes the model as a Hugging Face GPT-2 folder (rundir/hf_export.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from tui_trainer.cli.console import say, write_replacing
from tui_trainer.config import RunConfig
from tui_trainer.errors import UserError

PROG = "tui-trainer"


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run's directory")
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard event files under RUN_DIR/tensorboard from metrics.jsonl")
    parser.add_argument("--hf", metavar="OUT_DIR", default=None,
                        help="write the model as a Hugging Face GPT-2 folder (config.json, model.safetensors, "
                             "tokenizer, README.md) that transformers' GPT2LMHeadModel and AutoTokenizer load")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="with --hf: which weights, best (lowest val loss) or latest (default: best)")
    parser.add_argument("--overwrite", action="store_true", help="with --hf: replace a non-empty OUT_DIR")


def command_line_of(cfg: RunConfig) -> str:
    """A `tui-trainer train` command with the run's settings: every flag whose value is not the default
    (settings with no flag, as `min_lr_ratio = 0.2`, belong in a --config file and are named after #)."""
    from tui_trainer.cli.flags import FLAGS

    default = RunConfig()
    flag_of = {(section, name): flag for flag, _group, section, name, _kind, _help in FLAGS}
    words, unflagged = [PROG, "train"], []
    for section in ("model", "data", "optim", "train", "diagnosis"):
        ours, theirs = getattr(cfg, section), getattr(default, section)
        for f in fields(ours):
            value = getattr(ours, f.name)
            if value == getattr(theirs, f.name) or (section, f.name) == ("model", "vocab_size"):
                continue
            flag = flag_of.get((section, f.name))
            if flag is None and isinstance(value, bool) and (section, f.name) == ("train", "compile"):
                flag = "--compile"
            if flag is None:
                unflagged.append(f"{f.name} = {value!r}")
            elif isinstance(value, bool):
                words.append(flag if value else f"--no-{f.name.replace('_', '-')}")
            else:
                words += [flag, str(value)]
    line = shlex.join(words)
    return line + (f"  # and in a --config file: {', '.join(unflagged)}" if unflagged else "")


def run_export(args: argparse.Namespace) -> int:
    if not (args.tensorboard or args.hf):
        raise UserError("export needs a format",
                        f"pass --tensorboard or --hf OUT_DIR: {PROG} export {args.run_dir} --hf exported/")
    if args.hf is None and (args.overwrite or args.checkpoint != "best"):
        flag = "--overwrite" if args.overwrite else "--checkpoint"
        raise UserError(f"{flag} is for the model export (--hf)", f"add --hf OUT_DIR, or drop {flag}")
    if args.hf is not None:
        from tui_trainer.rundir.hf_export import check_out_dir, export_hf

        check_out_dir(Path(args.hf).expanduser().absolute(), args.overwrite)  # before the TensorBoard part writes
    if args.tensorboard:
        from tui_trainer.rundir.tensorboard import export_tensorboard

        export = export_tensorboard(args.run_dir)
        if export.set_aside:
            say(f"warning: {args.run_dir}/metrics.jsonl: {export.set_aside} left out (not metrics records)")
        write_replacing(sys.stdout, f"wrote {export.records} records to {export.target} — view with: "
                                    f"tensorboard --logdir {export.target}\n")
    if args.hf is not None:
        exported = export_hf(args.run_dir, args.hf, args.checkpoint, args.overwrite, command_line=_command_line(args))
        write_replacing(sys.stdout, f"wrote {exported.out_dir} ({exported.total_bytes / 1e6:.1f} MB, "
                                    f"{exported.seconds:.1f}s) from {exported.checkpoint} — load with transformers: "
                                    f"GPT2LMHeadModel.from_pretrained({str(exported.out_dir)!r})\n")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The run's settings as a command line, for the model card (from its config.json)."""
    from tui_trainer.rundir.reader import read_run_config

    try:
        return command_line_of(read_run_config(args.run_dir)[0])
    except UserError:
        return f"{PROG} train  # (the run's config.json is unreadable: its settings are not known)"
