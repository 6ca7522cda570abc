"""Bad input of every kind is one line on stderr and exit code 2, with nothing created or left behind.

Grouped by class: numbers with no sane upper bound, numbers a library rejects, OS errors
on the paths a user gives, empty strings, flags that contradict a resume, checkpoints whose CRC is
fine but whose contents do not fit. Each case runs the real CLI entry point (``main``) in-process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TINY_MODEL

from tui_trainer.cli.main import main
from tui_trainer.config_checks import LIMITS, SEED_MAX, THREADS_PER_CORE_MAX, usable_cores

TINY = [*TINY_MODEL, "--limit-train-batches", "2", "--limit-val-batches", "1", "--epochs", "1"]


def left_behind(root: Path, keep: set[Path]) -> list[str]:
    """Every file or folder under ``root`` that the test did not put there itself."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p not in keep)


def run_bad(args: list[str], capsys, tmp_path: Path, keep: set[Path] = frozenset()) -> str:
    """Run the CLI; assert exit 2, one line on stderr, no traceback, nothing new under tmp_path."""
    before = set(tmp_path.rglob("*")) | set(keep)
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    assert left_behind(tmp_path, before) == []
    return lines[0]


# -- numbers with no sane upper bound, and numbers a library rejects ---------------------------

FLAG_OF = {"n_layer": "--n-layer", "n_embd": "--n-embd", "block_size": "--block-size", "micro_batch": "--micro-batch",
           "epochs": "--epochs", "checkpoint_every": "--checkpoint-every",
           "limit_train_batches": "--limit-train-batches", "limit_val_batches": "--limit-val-batches",
           "warmup_tokens": "--warmup-tokens", "max_bad_steps": "--max-bad-steps", "batch": "--batch"}

TOO_BIG = {
    **{name: ([FLAG_OF[name], str(limit + 1)] + (["--n-head", "1"] if name == "n_embd" else []), FLAG_OF[name])
       for name, limit in LIMITS.items()},
    "threads 100000000 (segfaulted)": (["--threads", "100000000"], "--threads"),
    "threads a few times the cores": (["--threads", str(THREADS_PER_CORE_MAX * usable_cores() + 1)], "core"),
    "seed beyond torch.manual_seed": (["--seed", str(2**64)], "--seed"),
    "seed whose data-order seed overflows": (["--seed", str(2**63 - 1)], "--seed"),
    "seed just above the range": (["--seed", str(SEED_MAX + 1)], "--seed"),
    "negative seed": (["--seed", "-5"], "--seed"),
    "val split whose hint overflowed": (["--val-split", "5e-324"], "--val-split"),
    "val split too small for any file": (["--val-split", "1e-9"], "--val-split"),
}


@pytest.mark.parametrize("case", sorted(TOO_BIG))
def test_a_number_beyond_any_machine_is_refused_before_anything_is_created(case, small_corpus, tmp_path, capsys):
    extra, expected = TOO_BIG[case]
    line = run_bad(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"), *TINY, *extra],
                   capsys, tmp_path)
    assert expected in line


def test_the_largest_seed_in_range_trains(small_corpus, tmp_path, capsys):
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"), *TINY,
                 "--seed", str(SEED_MAX)]) == 0


# -- OS errors on the paths a user gives, and empty strings --------------------------------------

LONG = "x" * 300  # longer than any file system's name limit (255 bytes)


def _loop(t: Path) -> str:
    (t / "loop").symlink_to(t / "loop")
    return str(t / "loop")


def _fifo(t: Path) -> str:
    os.mkfifo(t / "fifo")
    return str(t / "fifo")


def _folder(t: Path) -> str:
    (t / "folder").mkdir()
    return str(t / "folder")


def _file(t: Path) -> str:
    (t / "afile").write_text("x", encoding="utf-8")
    return str(t / "afile")


def _toml(t: Path, content: bytes) -> str:
    (t / "cfg.toml").write_bytes(content)
    return str(t / "cfg.toml")


PATH_CASES = {
    # --data
    "data is a folder without text": (lambda t: ["--data", _folder(t)], "holds no .txt files"),
    "data name too long": (lambda t: ["--data", LONG], "too long"),
    "data in a symlink loop": (lambda t: ["--data", _loop(t)], "symbolic links"),
    "data is a fifo": (lambda t: ["--data", _fifo(t)], "not a regular file"),
    "data under a file": (lambda t: ["--data", _file(t) + "/corpus.txt"], "Not a directory"),
    "data empty": (lambda t: ["--data", ""], "--data is empty"),
    "toml data path empty": (lambda t: ["--config", _toml(t, b'[data]\npath = ""\n')], "is empty"),
    "toml data path a folder without text": (
        lambda t: ["--config", _toml(t, f'[data]\npath = "{_folder(t)}"\n'.encode())], "holds no .txt files"),
    # --config
    "config is a folder": (lambda t: ["--config", _folder(t)], "is a directory"),
    "config name too long": (lambda t: ["--config", LONG + ".toml"], "too long"),
    "config in a symlink loop": (lambda t: ["--config", _loop(t)], "symbolic links"),
    "config empty": (lambda t: ["--config", ""], "--config is empty"),
    "config not utf-8": (lambda t: ["--config", _toml(t, b"[train]\nepochs = 1\n# caf\xe9\n")], "not UTF-8"),
    "config with a byte-order mark": (lambda t: ["--config", _toml(t, b"\xef\xbb\xbf[train]\nepochs = 1\n")],
                                      "byte-order mark"),
    # --run-dir
    "run dir name too long": (lambda t: ["--run-dir", str(t / LONG)], "longer than the file system allows"),
    "run dir too long below a new folder": (lambda t: ["--run-dir", str(t / "new" / LONG)], "longer than"),
    "run dir under a file": (lambda t: ["--run-dir", _file(t) + "/run"], "a part of it is a file"),
    "run dir is a file": (lambda t: ["--run-dir", _file(t)], "not a directory"),
    "run dir in a symlink loop": (lambda t: ["--run-dir", _loop(t) + "/run"], "symbolic links"),
    "run dir empty": (lambda t: ["--run-dir", ""], "--run-dir is empty"),
    # --resume
    "resume a file": (lambda t: ["--resume", _file(t)], "not a directory"),
    "resume name too long": (lambda t: ["--resume", LONG], "too long"),
    "resume in a symlink loop": (lambda t: ["--resume", _loop(t)], "symbolic links"),
    "resume empty": (lambda t: ["--resume", ""], "--resume is empty"),
    "resume with another run dir": (lambda t: ["--resume", _folder(t), "--run-dir", str(t / "elsewhere")],
                                    "cannot be used with --resume"),
    "resume with overwrite": (lambda t: ["--resume", _folder(t), "--overwrite"], "--overwrite cannot be used"),
    # other empty strings
    "device empty": (lambda t: ["--device", ""], "--device is empty"),
}


@pytest.mark.parametrize("case", sorted(PATH_CASES))
def test_an_unusable_path_or_empty_string_is_one_line_and_leaves_nothing(case, small_corpus, tmp_path, capsys):
    extra, expected = PATH_CASES[case]
    given = extra(tmp_path)  # the fixtures the case needs exist before the run
    args = ["--no-ui", *TINY, *given]
    if "--data" not in given and "--config" not in given and "--resume" not in given:
        args += ["--data", str(small_corpus)]
    if "--run-dir" not in given and "--resume" not in given:
        args += ["--run-dir", str(tmp_path / "run")]
    line = run_bad(args, capsys, tmp_path)
    assert expected in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file: no permission error to provoke")
@pytest.mark.parametrize("flag", ["--data", "--config"])
def test_an_unreadable_file_is_one_line(flag, small_corpus, tmp_path, capsys):
    path = tmp_path / "secret"
    path.write_text("[train]\n", encoding="utf-8")
    path.chmod(0)
    args = ["--no-ui", *TINY, "--run-dir", str(tmp_path / "run"), flag, str(path)]
    if flag != "--data":
        args += ["--data", str(small_corpus)]
    assert "cannot be read" in run_bad(args, capsys, tmp_path)


def test_a_set_up_that_fails_after_the_run_dir_was_made_takes_back_what_it_wrote(small_corpus, tmp_path, capsys,
                                                                                  monkeypatch):
    """config.json cannot be written (a folder sits where its temp file goes): one line, exit 2, and
    the run dir holds what it held before — no marker, no checkpoints/, no metrics."""
    from tui_trainer.rundir import lifecycle

    run_dir = tmp_path / "run"
    (run_dir / ".config.json.tmp").mkdir(parents=True)
    before = set(tmp_path.rglob("*"))
    # A folder not ours holding one of our (temp) names is refused before anything is written ...
    line = run_bad(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), *TINY], capsys, tmp_path,
                   keep=before)
    assert "--run-dir" in line and ".config.json.tmp/ not written by tui-trainer" in line
    assert sorted(p.name for p in run_dir.iterdir()) == [".config.json.tmp"]
    # ... and the same folder showing up only once the run dir is made is taken back as it was.
    make_run_dir = lifecycle.make_run_dir

    def make_then_a_folder_appears(path):
        made = make_run_dir(path)
        (path / ".config.json.tmp").mkdir()
        return made

    monkeypatch.setattr(lifecycle, "make_run_dir", make_then_a_folder_appears)
    run_dir = tmp_path / "later"
    line = run_bad(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), *TINY], capsys, tmp_path,
                   keep={run_dir, run_dir / ".config.json.tmp"})
    assert "--run-dir" in line and "Is a directory" in line
    assert sorted(p.name for p in run_dir.iterdir()) == [".config.json.tmp"]


def test_making_a_run_dir_that_fails_halfway_removes_the_parents_it_made(tmp_path):
    from tui_trainer.errors import UserError
    from tui_trainer.rundir.paths import make_run_dir

    # The two parents can be made, the last name cannot (too long): both parents go again.
    with pytest.raises(UserError, match="cannot create run dir"):
        make_run_dir(tmp_path / "fresh" / "inner" / LONG)
    assert list(tmp_path.iterdir()) == []
