"""``tui-trainer runs [DIR]``: the run dirs under a folder (default ``runs/``), newest first, as
a plain-text table — the columns of ``view A B``'s table (rundir/summary.py builds both), cut to
the terminal's width by dropping the less important columns. A run dir it cannot read is listed
as ``damaged``, with why under the table; it never stops the listing."""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from pathlib import Path

from tui_trainer.cli.console import write_replacing
from tui_trainer.errors import UserError
from tui_trainer.rundir.runs_table import columns, fit, render
from tui_trainer.rundir.summary import DAMAGED, is_run_dir, read_summary, run_dirs_under, tokenizer_notice

DEFAULT_DIR = "runs"


def add_runs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", nargs="?", default=DEFAULT_DIR,
                        help=f"the folder holding run dirs (default: {DEFAULT_DIR}/)")
    parser.add_argument("--all-settings", action="store_true",
                        help="every setting that differs between the runs, however wide the table gets "
                             "(default: the columns that fit the terminal)")


def run_runs(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not folder.exists():
        if args.dir == DEFAULT_DIR:  # (`runs: no such folder` read as the command's own complaint)
            raise UserError(f"no {DEFAULT_DIR}/ folder here ({Path.cwd()}): no run has been trained from it yet",
                            f"train one (tui-trainer --quick puts it in {DEFAULT_DIR}/), run this where you "
                            "trained, or pass the folder that holds your run dirs")
        raise UserError(f"{args.dir}: no such folder", "pass the folder that holds your run dirs (train's "
                                                       "--run-dir is runs/DATE-TIME by default)")
    if not folder.is_dir():
        raise UserError(f"{args.dir} is not a folder", "pass the folder that holds your run dirs")
    write_replacing(sys.stdout, listing(folder, width=shutil.get_terminal_size((80, 24)).columns,
                                        all_settings=args.all_settings) + "\n")
    return 0


def listing(folder: Path, width: int = 80, all_settings: bool = False) -> str:
    """What ``runs`` prints for ``folder``: its table (or that it holds none), damaged runs explained."""
    run_dirs = [folder] if is_run_dir(folder) else run_dirs_under(folder)  # (a run dir given: its own row)
    if not run_dirs:
        return f"no run dirs in {folder} (a run dir holds the config.json and metrics.jsonl of a run)"
    summaries = [read_summary(run_dir) for run_dir in run_dirs]
    table = columns(summaries)
    shown = table if all_settings else fit(table, width)
    lines: list[str] = []
    hidden = [c.title for c in table if c not in shown]
    if hidden:
        lines.append(f"(not shown at {width} columns: {', '.join(hidden)}; "
                     f"--all-settings shows {'it' if len(hidden) == 1 else 'them'})")
    notice = tokenizer_notice(summaries)  # (char and BPE losses side by side: not comparable)
    if notice:
        lines.append(f"note: {notice}")
    lines += [f"{s.path}: damaged ({s.problem})" for s in summaries if s.status == DAMAGED]
    if run_dirs == [folder]:
        lines.append(f"{folder} is a run dir; see it with: tui-trainer view {folder}")
    else:
        lines.append(f"{len(summaries)} run{'s' if len(summaries) != 1 else ''} in {folder}, newest first")
        lines.append("compare some with: tui-trainer view RUN_DIR RUN_DIR")  # (its own line: never cut in two)
    # The table fits ``width`` already; the prose under it is wrapped there too, between words (a
    # terminal's own wrap cut "block_size" into "block_si" / "ze").
    prose = [textwrap.fill(line, width=max(40, width), break_long_words=False, break_on_hyphens=False)
             for line in lines]
    return "\n".join([render(shown), *prose])
