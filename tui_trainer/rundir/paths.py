"""The paths a user gives (--data, --config, --run-dir, --resume), checked before anything is created.

Every way the operating system can refuse one — a folder where a file is expected, a file where a
folder is expected, no permission, a name too long, a symlink loop — becomes one line naming the
path and the fix (exit code 2), not a traceback after a half-made run dir. A name with bytes that
are not valid in the file system's encoding is fine: Python keeps them (as surrogates), and every
file tui-trainer writes records them losslessly (config.json is ASCII JSON).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from tui_trainer.errors import UserError
from tui_trainer.rundir.files import CHECKPOINT_DIR


def _empty(value: str | None) -> bool:
    return value is not None and not value.strip()


def refuse_empty(flag: str, value: str | None, fix: str) -> None:
    """An empty string must not silently mean "the default"."""
    if _empty(value):
        raise UserError(f"{flag} is empty", fix)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_input_file(path: str, what: str, flag: str, folder_ok: bool = False) -> None:
    """``path`` is a regular file this process can open for reading (or, with ``folder_ok``, a
    folder: --data takes a folder of .txt files, which text_source.py checks file by file)."""
    refuse_empty(flag, path, f"give {flag} the path of a file")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist", f"check the path given to {flag}") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be reached: {_reason(exc)}", f"check the path given to {flag}") from None
    if stat.S_ISDIR(info.st_mode):
        if folder_ok:
            return
        raise UserError(f"{what} {path} is a directory", f"pass a file to {flag}")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} {path} is not a regular file", f"pass a file to {flag}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read: {_reason(exc)}", f"check its permissions, or pass another "
                                                                        f"file to {flag}") from None


def _name_max(existing: Path) -> int:
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
        except OSError:  # a name too long, a loop: look further up
            continue
    return Path(".")


def check_run_dir(path: str, flag: str = "--run-dir") -> None:
    """``path`` is a folder, or a place where one can be made: refused before anything is created."""
    refuse_empty(flag, path, f"give {flag} a folder, or leave it out for runs/<timestamp>")
    target = Path(path)
    longest = _name_max(_existing_ancestor(target.absolute()))
    too_long = next((part for part in target.parts if len(os.fsencode(part)) > longest), None)
    if too_long is not None:
        raise UserError(f"run dir {path} has a name longer than the file system allows ({longest} bytes)",
                        f"pass a shorter {flag}")
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return  # made when the run starts
    except NotADirectoryError:
        raise UserError(f"cannot create run dir {path}: a part of it is a file, not a folder",
                        f"pass another {flag}") from None
    except OSError as exc:
        raise UserError(f"run dir {path} cannot be reached: {_reason(exc)}", f"pass another {flag}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"run dir {path} exists and is not a directory", f"pass another {flag}")


def check_resume_dir(path: str) -> None:
    refuse_empty("--resume", path, "give --resume the run dir to continue")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"--resume {path}: no such run directory",
                        "pass a run dir such as runs/20260101-120000") from None
    except OSError as exc:
        raise UserError(f"--resume {path} cannot be reached: {_reason(exc)}", "pass the run dir to continue") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"--resume {path} is not a directory", "pass the run dir (the folder), not a file in it")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"--resume {path} cannot be read: permission denied", "check its permissions")


def make_run_dir(path: Path) -> list[Path]:
    """``mkdir -p path``, but a failure leaves no half-made parents behind. Returns the folders it
    made (outermost first), for a set-up that fails later to remove again."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    made: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            made.append(folder)
    except FileExistsError:
        if not path.is_dir():
            _remove_made(made)
            raise UserError(f"run dir {path} exists and is not a directory", "pass another --run-dir") from None
    except OSError as exc:
        _remove_made(made)
        reason = "a part of it is a file, not a folder" if exc.errno == errno.ENOTDIR else _reason(exc)
        raise UserError(f"cannot create run dir {path}: {reason}", "pass a writable --run-dir") from None
    return made


def remove_made_folders(made: list[Path]) -> None:
    """Remove folders ``make_run_dir`` made, innermost first; one that is not empty stays."""
    _remove_made(made)


def probe_checkpoint_dir(run_dir: Path) -> None:
    """Write and remove a file in ``checkpoints/``: a read-only folder (or mount) is found at start."""
    folder = run_dir / CHECKPOINT_DIR
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise UserError(f"checkpoints cannot be saved in {folder}: {_reason(exc)}",
                        "make it writable, or pass another --run-dir") from None


def _remove_made(made: list[Path]) -> None:
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            pass


def check_given_paths(*, config: str | None, resume: str | None, run_dir: str | None, overwrite: bool,
                      data: str | None, data_from: str = "--data") -> None:
    """Every path given on the command line (and the data path of a --config file), before anything is made."""
    if config is not None:
        check_input_file(config, "config file", "--config")
    if resume is not None:
        check_resume_dir(resume)
        if run_dir is not None and Path(run_dir).absolute() != Path(resume).absolute():
            raise UserError(f"--run-dir {run_dir} cannot be used with --resume: the run continues in {resume}",
                            "drop --run-dir (to start a new run elsewhere, drop --resume instead)")
        if overwrite:
            raise UserError("--overwrite cannot be used with --resume: resuming keeps the run",
                            f"drop --overwrite to continue it, or drop --resume and pass --run-dir {resume} "
                            "--overwrite to start it again")
    elif run_dir is not None:
        check_run_dir(run_dir)
    if data is not None:
        check_input_file(data, "data file", data_from, folder_ok=True)


def user_os_error(exc: OSError, paths: dict[str, str | None]) -> UserError | None:
    """An OSError about one of the paths the user gave (``{flag: path}``), as a one-line UserError;
    None when it is about something else (a bug or the machine, which keeps its traceback)."""
    if exc.filename is None:
        return None
    failed = Path(os.fsdecode(exc.filename)).absolute()
    for flag, given in paths.items():
        if not given:
            continue
        root = Path(given).absolute()
        if failed == root or root in failed.parents:
            return UserError(f"{flag} {given}: {_reason(exc)} ({os.fsdecode(exc.filename)})",
                             f"check the path given to {flag}")
    return None
