"""A run dir must be provably ours before anything in it is touched; even then only our files go."""

from __future__ import annotations

import json

import pytest

from tui_trainer.rundir.files import ALL_NAMES as OUR_NAMES
from tui_trainer.rundir.files import MARKER_FILE
from tui_trainer.rundir.ownership import (
    config_is_ours,
    foreign_name,
    has_marker,
    is_ours,
    remove_our_files,
    write_marker,
)

OUR_CONFIG = {"config": {"model": {}, "data": {}, "train": {}}, "vocab": ["a"], "data_sha256": "0" * 64}


def test_a_marked_folder_is_ours_and_an_unmarked_one_is_not(tmp_path):
    assert not is_ours(tmp_path)
    write_marker(tmp_path)
    assert has_marker(tmp_path) and is_ours(tmp_path)
    assert json.loads((tmp_path / MARKER_FILE).read_text(encoding="utf-8"))["tool"] == "tui-trainer"
    assert [p.name for p in tmp_path.iterdir()] == [MARKER_FILE]  # no temp file left


def test_a_run_dir_of_an_older_version_is_recognised_by_its_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(OUR_CONFIG), encoding="utf-8")
    assert config_is_ours(tmp_path) and is_ours(tmp_path)


@pytest.mark.parametrize("content", ['{"my": 1}', "not json", "", '{"config": 1, "vocab": [], "data_sha256": ""}',
                                     "\xff\xfe"])
def test_a_config_json_of_anything_else_is_not_ours(content, tmp_path):
    (tmp_path / "config.json").write_text(content, encoding="latin-1")
    assert not is_ours(tmp_path)
    assert foreign_name(tmp_path) == "config.json"


def test_a_marker_file_of_anything_else_proves_nothing(tmp_path):
    (tmp_path / MARKER_FILE).write_text('{"tool": "something-else"}', encoding="utf-8")
    (tmp_path / "metrics.jsonl").write_text("mine\n", encoding="utf-8")
    # the marker itself is the user's file here (a run would write over it): it is the one named
    assert not is_ours(tmp_path) and foreign_name(tmp_path) == MARKER_FILE


@pytest.mark.parametrize("name", OUR_NAMES)
@pytest.mark.parametrize("as_folder", [False, True])
def test_each_of_our_names_in_a_folder_that_is_not_ours_is_named(name, as_folder, tmp_path):
    target = tmp_path / name
    if as_folder:
        target.mkdir()
        (target / "model.safetensors").write_bytes(b"w")
    else:
        target.write_text("mine", encoding="utf-8")
    assert foreign_name(tmp_path) == (f"{name}/" if as_folder else name)


def test_other_files_of_a_project_folder_are_not_in_the_way(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "README.md").write_text("a project", encoding="utf-8")
    assert foreign_name(tmp_path) is None


def test_removing_a_run_takes_only_our_files_and_leaves_the_users(tmp_path):
    write_marker(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(OUR_CONFIG), encoding="utf-8")
    (tmp_path / "metrics.jsonl").write_text("{}\n", encoding="utf-8")
    (tmp_path / "error.log").write_text("trace", encoding="utf-8")
    (tmp_path / ".config.json.tmp").write_text("half", encoding="utf-8")
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in ("latest.pt", "best.pt", ".latest.pt.tmp-12345"):
        (checkpoints / name).write_bytes(b"ckpt")
    (checkpoints / "model.safetensors").write_bytes(b"the user's")
    (tmp_path / "notes.txt").write_text("the user's", encoding="utf-8")
    remove_our_files(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["checkpoints", "checkpoints/model.safetensors", "notes.txt"]


def test_removing_a_run_with_nothing_of_the_users_removes_its_checkpoints_folder(tmp_path):
    write_marker(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.pt").write_bytes(b"ckpt")
    remove_our_files(tmp_path)
    assert list(tmp_path.iterdir()) == []
