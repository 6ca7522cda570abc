"""The run directory's life (run_dir.py), function by function, without training anything."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config
from metrics_records import line, record

from tui_trainer.data.dataset import load_corpus
from tui_trainer.errors import UserError
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir import lifecycle as rd
from tui_trainer.rundir.loop_state import LoopState
from tui_trainer.rundir.metrics import METRICS_FILE
from tui_trainer.rundir.ownership import MARKER_FILE, write_marker
from tui_trainer.rundir.tokenizer_record import vocabulary_of


def a_checkpoint_state(cfg, epoch: int = 2, waited: int = 0) -> dict:
    return {"config": cfg.to_dict(), "loop": {"epoch": epoch},
            "early_stopping": {"epochs_without_improvement": waited}}


# -- what a run dir holds ---------------------------------------------------------------------------

def test_run_dir_holds_tells_a_checkpoint_from_steps_from_a_set_up_from_nothing(tmp_path):
    assert rd.run_dir_holds(tmp_path) == ""
    (tmp_path / "notes.txt").write_text("mine")
    assert rd.run_dir_holds(tmp_path) == ""  # a user's own file is not a run
    (tmp_path / rd.CONFIG_FILE).write_text("{}")
    assert rd.run_dir_holds(tmp_path) == "set-up"
    (tmp_path / METRICS_FILE).write_text("")
    assert rd.run_dir_holds(tmp_path) == "set-up"  # an empty metrics file: not a step yet
    (tmp_path / METRICS_FILE).write_text(line("step"))
    assert rd.run_dir_holds(tmp_path) == "steps"
    (tmp_path / METRICS_FILE).unlink()
    ckpt.checkpoint_path(tmp_path, "best").parent.mkdir()
    ckpt.checkpoint_path(tmp_path, "best").write_bytes(b"x")
    assert rd.run_dir_holds(tmp_path) == "steps"  # best without latest: killed between the two saves
    ckpt.checkpoint_path(tmp_path).write_bytes(b"x")
    assert rd.run_dir_holds(tmp_path) == "checkpoint"


def test_load_resumable_refuses_a_run_that_never_saved(tmp_path):
    (tmp_path / METRICS_FILE).write_text(line("step"))
    with pytest.raises(UserError) as caught:
        rd.load_resumable(tmp_path)
    assert "no checkpoint" in caught.value.message and "--overwrite" in caught.value.hint


# -- a new run --------------------------------------------------------------------------------------

def test_prepare_creates_a_nested_run_dir(tmp_path):
    cfg = tiny_config("unused.txt", tmp_path / "a" / "b")
    assert rd.prepare_run_dir(cfg, None, False, []) == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()


def test_prepare_refuses_a_run_dir_holding_a_run_and_changes_nothing(tmp_path):
    write_marker(tmp_path)
    ckpt.checkpoint_path(tmp_path).parent.mkdir()
    ckpt.checkpoint_path(tmp_path).write_bytes(b"x")
    with pytest.raises(UserError) as caught:
        rd.prepare_run_dir(tiny_config("unused.txt", tmp_path), None, False, [])
    assert "--resume" in caught.value.hint and "--overwrite" in caught.value.hint
    assert ckpt.checkpoint_path(tmp_path).read_bytes() == b"x"


def test_prepare_with_overwrite_removes_the_old_run_but_not_other_files(tmp_path):
    write_marker(tmp_path)
    ckpt.checkpoint_path(tmp_path).parent.mkdir()
    ckpt.checkpoint_path(tmp_path).write_bytes(b"x")
    (tmp_path / METRICS_FILE).write_text(line("step"))
    (tmp_path / "notes.txt").write_text("mine")
    rd.prepare_run_dir(tiny_config("unused.txt", tmp_path), None, True, [])
    # The old run's files are gone; the new run's marker and (empty, probed) checkpoints/ are there.
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        MARKER_FILE, "checkpoints", "notes.txt"]


def test_prepare_starts_a_run_that_never_took_a_step_again_with_a_note(tmp_path):
    write_marker(tmp_path)
    (tmp_path / rd.CONFIG_FILE).write_text("{}")
    notes: list[str] = []
    rd.prepare_run_dir(tiny_config("unused.txt", tmp_path), None, False, notes)
    assert not (tmp_path / rd.CONFIG_FILE).exists()
    assert notes == [f"{tmp_path} held a run that never took a step: starting it again"]


def test_prepare_refuses_a_file_in_place_of_the_run_dir(tmp_path):
    target = tmp_path / "run"
    target.write_text("not a dir")
    with pytest.raises(UserError, match="not a directory"):
        rd.prepare_run_dir(tiny_config("unused.txt", target), None, False, [])


def test_config_json_carries_the_vocabulary_back(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path)
    corpus = load_corpus(cfg.data, cfg.model.block_size)
    rd.write_config(tmp_path, cfg, corpus, torch.device("cpu"), 1, "fp32")
    assert vocabulary_of(tmp_path) == corpus.vocab
    record = json.loads((tmp_path / rd.CONFIG_FILE).read_text(encoding="utf-8"))
    assert record["data_sha256"] == corpus.sha256 and record["config"] == cfg.to_dict()
    assert not list(tmp_path.glob(".*.tmp"))


# -- resuming ---------------------------------------------------------------------------------------

def test_merge_takes_safe_overrides_with_a_note_and_refuses_contradictions(tmp_path):
    saved = tiny_config("corpus.txt", "elsewhere")
    notes: list[str] = []
    merged = rd.merge_resume_config(a_checkpoint_state(saved), {"train.epochs": 5, "model.n_layer": 1,
                                                                "data.path": "moved.txt"}, tmp_path, notes)
    assert merged.train.epochs == 5 and merged.data.path == "moved.txt" and merged.run_dir == str(tmp_path)
    assert notes == [f"--epochs 5 overrides the checkpoint's {saved.train.epochs}"]  # n_layer: the same value
    with pytest.raises(UserError, match="contradicts the checkpoint") as caught:
        rd.merge_resume_config(a_checkpoint_state(saved), {"model.n_layer": 3}, tmp_path, [])
    assert "--n-layer" in caught.value.hint
    with pytest.raises(UserError, match="between 1 and 1024"):
        rd.merge_resume_config(a_checkpoint_state(saved), {"train.accum": 0}, tmp_path, [])


@pytest.mark.parametrize("recorded", [True, False], ids=["end recorded", "end missing"])
def test_a_finished_or_early_stopped_run_is_refused_only_when_its_end_was_recorded(recorded, tmp_path):
    cfg = tiny_config("corpus.txt", "run", epochs=2, patience=2)
    assert rd.refuse_or_finish(a_checkpoint_state(cfg, epoch=2, waited=1), cfg, tmp_path) is None  # an epoch to go
    for reason, state in (("completed", a_checkpoint_state(cfg, epoch=3)),
                          ("early_stop", a_checkpoint_state(cfg, epoch=2, waited=2))):
        (tmp_path / METRICS_FILE).write_text(line("epoch", epoch=2) + (line("end", reason=reason) if recorded
                                                                      else ""))
        if not recorded:  # training done, end never written: the resume owes exactly that end
            assert rd.refuse_or_finish(state, cfg, tmp_path) == reason
            continue
        with pytest.raises(UserError, match="already finished 2 epochs" if reason == "completed"
                           else "stopped early") as caught:
            rd.refuse_or_finish(state, cfg, tmp_path)
        if reason == "early_stop":
            assert "--patience 3" in caught.value.hint


def test_trim_drops_records_beyond_the_checkpoint_and_lines_cut_short(tmp_path):
    lines = [{"type": "start"}, record("step", step=1), record("step", step=2), record("epoch", epoch=1),
             record("step", step=3), record("epoch", epoch=2)]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"type": "st'
    (tmp_path / METRICS_FILE).write_text(text, encoding="utf-8")
    rd.trim_metrics_after(tmp_path, step=2, epochs_done=1)
    kept = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text(encoding="utf-8").splitlines()]
    assert kept == lines[:4]
    rd.trim_metrics_after(tmp_path / "missing", step=2, epochs_done=1)  # no metrics yet: nothing to do


def test_accum_given_with_resume_is_a_pending_change_for_the_right_epoch():
    mid_epoch = LoopState(epoch=2, example_cursor=8, accum=2)
    notes: list[str] = []
    assert rd.accum_given_with_resume(mid_epoch, 4, 3, notes) == 4
    assert notes == ["--accum 4 replaces accum 2 at the start of epoch 3"]
    assert rd.accum_given_with_resume(mid_epoch, 2, 3, []) is None  # the same value, nothing pending
    assert rd.accum_given_with_resume(mid_epoch, None, 3, []) is None
    at_boundary = LoopState(epoch=2, example_cursor=0, accum=2)
    notes = []
    assert rd.accum_given_with_resume(at_boundary, 4, 3, notes) == 4
    assert "now" in notes[0]
    pending = LoopState(epoch=2, example_cursor=8, accum=2, pending_accum=4, pending_accum_epoch=3)
    assert rd.accum_given_with_resume(pending, 4, 3, []) is None  # already pending for that boundary
    notes = []
    assert rd.accum_given_with_resume(pending, 2, 3, notes) == 2
    assert notes == ["--accum 2 cancels the pending change to 4"]
    notes = []
    assert rd.accum_given_with_resume(LoopState(epoch=3, example_cursor=8, accum=2), 4, 3, notes) == 4
    assert "this is the last epoch" in notes[0]


def test_a_pending_accum_change_is_noted_with_its_epoch():
    assert rd.pending_accum_note(LoopState(epoch=2, accum=2)) is None
    assert (rd.pending_accum_note(LoopState(epoch=2, example_cursor=8, accum=2, pending_accum=4))
            == "accum 2 -> 4 is pending, for epoch 3")
    assert (rd.pending_accum_note(LoopState(epoch=2, example_cursor=0, accum=2, pending_accum=4))
            == "accum 2 -> 4 is pending, for epoch 2")
