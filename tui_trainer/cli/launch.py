"""``tui-trainer train --nproc N ...``: the same run on N processes of this machine, launched through
``torch.distributed.run`` (torchrun's own code, run in this process) for users who do not want to
type ``torchrun --standalone --nproc-per-node N -m tui_trainer train ...``.

The workers get this command line without ``--nproc`` (``LAUNCHED_BY`` in their environment says
this launcher started them). torchrun forwards SIGINT,
SIGTERM and SIGHUP to them and waits ``SHUTDOWN_TIMEOUT_S`` for the step they are in, the save and
the `end` record; its own failure report is kept quiet: the ranks have said what went wrong, and
the exit code is rank 0's (the same on every rank: they stop together).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import torch

from tui_trainer.cli.console import say
from tui_trainer.config import RunConfig
from tui_trainer.config_checks import usable_cores, validate
from tui_trainer.engine.distributed import choose_backend
from tui_trainer.engine.runtime import pick_device
from tui_trainer.errors import UserError

LAUNCHED_BY = "TUI_TRAINER_LAUNCHED"  # set in the workers' environment by this launcher
EXIT_CODE_FILE = "TUI_TRAINER_EXIT_CODE_FILE"  # where rank 0 writes its exit code for the launcher
SHUTDOWN_TIMEOUT_S = 600  # a stop finishes the step in progress (torchrun's default is 30 s, then SIGKILL)


def check_nproc(nproc: int, cfg: RunConfig) -> None:
    """One line, exit 2: fewer than 1, more than the CPU's cores (CPU) or the GPUs (CUDA), nccl without CUDA."""
    device = pick_device(cfg.train.device)
    if nproc < 1:
        raise UserError(f"--nproc must be 1 or more, got {nproc}", "use --nproc 2 for two processes")
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise UserError(f"--nproc {nproc} is more than this machine's {gpus} GPU{'s' if gpus != 1 else ''} "
                            f"(one process per GPU)", f"use --nproc {gpus} or fewer")
    elif device.type == "mps":
        raise UserError("--nproc needs CUDA GPUs or the CPU: MPS has no multi-process backend",
                        "use --device cpu, or leave out --nproc")
    else:
        cores = usable_cores()
        if nproc > cores:
            raise UserError(f"--nproc {nproc} is more than this machine's {cores} CPU core{'s' if cores != 1 else ''}",
                            f"use --nproc {cores} or fewer")
    choose_backend(cfg.train.backend, device)


def is_launched_worker() -> bool:
    return os.environ.get(LAUNCHED_BY) == "1"


def launch(nproc: int, cfg: RunConfig, argv: list[str]) -> int:
    """Run ``tui_trainer`` with ``argv`` on ``nproc`` local processes; the exit code is rank 0's."""
    validate(cfg)  # bad flags are said once, here, not once per rank
    check_nproc(nproc, cfg)
    # torchrun's INFO/WARNING/ERROR lines and its failure report would bury the run's own one line
    # (its loggers take their level from LOGLEVEL when they are made, at import).
    os.environ.setdefault("LOGLEVEL", "CRITICAL")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in ("torch.distributed.elastic", "torch.distributed.run"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[LAUNCHED_BY] = "1"
    # Each rank's share of the cores (torchrun would set 1 and print a banner about it).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
    exit_file = Path(tempfile.mkdtemp(prefix="tui-trainer-")) / "exit-code"
    os.environ[EXIT_CODE_FILE] = str(exit_file)  # rank 0 writes its exit code there as it leaves
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
                       "--module", "tui_trainer", *without_nproc(argv)])
    forward_resizes()
    try:
        run(args)
    except ChildFailedError as exc:
        code, lost, advice = _rank0_word(exit_file)
        died = _died(exc)
        if died:  # killed (SIGKILL, out of memory, a crash): it could not say so itself
            say(died_line(*died, advice=advice))
            return 1
        if lost:  # (a rank that hung past --dist-timeout, or exited: rank 0's own line)
            say(lost)
        return code if code is not None else _exit_code(exc)
    except SignalException as exc:  # the workers had it forwarded, stopped together, and saved
        # (a run that had already completed when the signal came says 0)
        code, lost, _ = _rank0_word(exit_file)
        if lost:
            say(lost)
        return code if code is not None else 128 + int(exc.sigval)
    finally:
        sys.stdout.flush()
    return 0


def died_line(rank: int, name: str, advice: str = "") -> str:
    """The launcher's one line for a rank killed without a word. Rank 0, when another rank died,
    leaves what a resume can do (``advice``: what it saved, the exact --resume) to this line instead
    of a line of its own that said the same loss again; without it, no vaguer advice — which, after
    a kill during the set-up, named a run dir that did not exist yet (a hostile trial)."""
    if rank == 0:
        return (f"error: rank 0 died ({name}) and the other processes were stopped; a checkpoint it saved "
                f"before is intact: continue with --resume RUN_DIR if the run dir has one")
    return f"error: rank {rank} died ({name}) and the other processes were stopped" + (f"; {advice}" if advice else "")


def report_exit_code(code: int, lost: str = "", advice: str = "") -> bool:
    """Rank 0, as it leaves: its exit code for the launcher (when this launcher started it) and,
    after a lost peer, its error line and what a resume can do, for the launcher to say once (it
    knows which rank died and of what). False when there is no launcher of ours to tell."""
    path = os.environ.get(EXIT_CODE_FILE)
    if not path:
        return False
    try:
        text = "\n".join([str(code), *(" ".join(part.split()) for part in (lost, advice) if lost)])
        Path(path).write_text(text, encoding="utf-8")
        return True
    except OSError:
        return False  # the launcher then goes by torchrun's record


def _rank0_word(path: Path) -> tuple[int | None, str, str]:
    """What rank 0 left as it left: its exit code (None: it died before it could), and after a lost
    peer its error line and what a resume can do ("" otherwise)."""
    try:
        parts = path.read_text(encoding="utf-8").split("\n")
        return int(parts[0].strip()), *(parts[1:3] + ["", ""])[:2]
    except (OSError, ValueError):
        return None, "", ""
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def forward_resizes() -> None:
    """torchrun starts each rank in a session of its own, so a terminal resize (SIGWINCH, sent to the
    terminal's foreground group: this launcher) would never reach the app on rank 0: pass it on to
    the children (the other ranks ignore it)."""
    if not hasattr(signal, "SIGWINCH") or not os.path.isdir("/proc"):
        return

    def on_resize(_signum, _frame) -> None:
        for pid in _children():
            try:
                os.kill(pid, signal.SIGWINCH)
            except OSError:
                pass

    signal.signal(signal.SIGWINCH, on_resize)


def _children() -> list[int]:
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    # "pid (comm) state ppid ...": the name may hold spaces, so split after its ")".
                    if int(stat.read().rsplit(b")", 1)[1].split()[1]) == me:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def without_nproc(argv: list[str]) -> list[str]:
    """The command line each worker gets: ``--nproc N`` / ``--nproc=N`` taken out."""
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token == "--nproc":
            skip = True
        elif not token.startswith("--nproc="):
            out.append(token)
    return out


def _died(failed) -> tuple[int, str] | None:
    """(rank, signal name) of the first rank killed by a signal that is not a stop (SIGKILL, SIGSEGV,
    SIGABRT…): torchrun then SIGTERMs the others, which end as if stopped."""
    stops = {signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", signal.SIGTERM)}
    for rank, failure in sorted(failed.failures.items()):
        if failure.exitcode < 0 and -failure.exitcode not in stops:
            try:
                return rank, signal.Signals(-failure.exitcode).name
            except ValueError:
                return rank, f"signal {-failure.exitcode}"
    return None


def _exit_code(failed) -> int:
    """The run's exit code from torchrun's record of the ranks that failed: rank 0's own code, else
    another rank's (when one rank exits first, torchrun SIGTERMs the rest: those signals are its
    tidying up, not the cause); a signal only when every failed rank died of one (128 + its number)."""
    by_rank = sorted(failed.failures.items())
    codes = [failure.exitcode for _, failure in by_rank]
    own = [code for code in codes if code > 0]
    if own:
        return own[0]
    return 128 - codes[0]
