"""A new run never touches a folder's files unless the folder is provably a tui-trainer run dir, and
even --overwrite removes only tui-trainer's own files. Run through the real CLI entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import TINY_MODEL

from tui_trainer.cli.main import main
from tui_trainer.rundir.ownership import MARKER_FILE

TINY = [*TINY_MODEL, "--limit-train-batches", "2", "--limit-val-batches", "1", "--epochs", "1"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def foreign(folder: Path, name: str) -> None:
    """A file or folder of one of our names, as an ML project would hold it."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "checkpoints/":
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "model.safetensors").write_bytes(b"weights of the user's own")
    elif name == "checkpoints/latest.pt":
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "latest.pt").write_bytes(b"someone else's latest")
    elif name == "config.json":
        (folder / "config.json").write_text('{"my": 1}', encoding="utf-8")
    else:
        (folder / name).write_text("the user's own\n", encoding="utf-8")


FOREIGN = ["config.json", "checkpoints/", "checkpoints/latest.pt", "metrics.jsonl", "error.log", "tokenizer.json"]


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("name", FOREIGN)
def test_a_folder_holding_one_of_our_names_that_is_not_ours_is_refused_and_untouched(name, overwrite,
                                                                                      small_corpus, tmp_path, capsys):
    folder = tmp_path / "p"
    foreign(folder, name)
    (folder / "notes.md").write_text("mine", encoding="utf-8")
    before = snapshot(folder)
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(folder), *TINY]
                + (["--overwrite"] if overwrite else []))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and "not written by tui-trainer" in err
    assert name.split("/")[0] in err
    assert snapshot(folder) == before


def test_run_dir_dot_in_a_project_folder_trains_and_overwrite_takes_back_only_its_own_files(small_corpus, tmp_path,
                                                                                           monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "train.py").write_text("print('mine')\n", encoding="utf-8")
    (project / "README.md").write_text("# my project\n", encoding="utf-8")
    before = snapshot(project)
    monkeypatch.chdir(project)
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", ".", *TINY]) == 0
    assert (project / MARKER_FILE).is_file() and (project / "checkpoints" / "latest.pt").is_file()
    (project / "checkpoints" / "notes.txt").write_text("the user's, put beside ours", encoding="utf-8")
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", ".", *TINY]) == 2  # holds a run now
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", ".", *TINY, "--overwrite"]) == 0
    after = snapshot(project)
    assert {k: v for k, v in after.items() if k in before} == before  # the project's files, byte for byte
    assert (project / "checkpoints" / "notes.txt").read_text(encoding="utf-8") == "the user's, put beside ours"
    assert len([r for r in (project / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
                if '"type": "end"' in r]) == 1  # the old run's records are gone: a fresh run


def test_a_project_folder_with_its_own_config_json_is_refused_for_run_dir_dot(small_corpus, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text('{"learning_rate": 0.1}', encoding="utf-8")
    before = snapshot(tmp_path)
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", ".", *TINY, "--overwrite"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def _older_version_run(small_corpus, run_dir: Path) -> None:
    """A run dir as versions before the marker left it: ours by its config.json only."""
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), *TINY]) == 0
    (run_dir / MARKER_FILE).unlink()


def test_a_run_dir_of_an_older_version_still_resumes_and_overwrites(small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "old"
    _older_version_run(small_corpus, run_dir)
    assert main(["--no-ui", "--resume", str(run_dir), "--epochs", "2"]) == 0
    assert (run_dir / MARKER_FILE).is_file()  # marked from now on
    (run_dir / MARKER_FILE).unlink()
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), *TINY, "--overwrite"]) == 0


def test_a_run_that_never_took_a_step_is_started_again_only_when_it_is_ours(small_corpus, tmp_path, capsys):
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / MARKER_FILE).write_text(json.dumps({"tool": "tui-trainer"}), encoding="utf-8")
    (ours / "checkpoints").mkdir()  # killed while it set up
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(ours), *TINY]) == 0
    assert "never took a step: starting it again" in capsys.readouterr().out


def test_overwrite_never_removes_a_folder_of_ours_with_the_users_files_in_it(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), *TINY]) == 0
    keep = run_dir / "checkpoints" / "exported.onnx"
    keep.write_bytes(b"the user's export")
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), *TINY, "--overwrite"]) == 0
    assert keep.read_bytes() == b"the user's export"
    assert not any(p.name.startswith(".") and p.name.endswith(".tmp") for p in run_dir.rglob("*"))
    assert os.path.isfile(run_dir / "checkpoints" / "latest.pt")
