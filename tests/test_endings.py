"""Endings on its own (with the real Checkpoints writing small checkpoints to a temp dir): the `end`
record, what a stop's message says a resume continues from, a finished run whose final save
failed, and too many non-finite steps in a row. No model, no training loop."""

from __future__ import annotations

import signal
import threading

import torch

from tui_trainer.analysis.diagnosis import Diagnosis
from tui_trainer.analysis.early_stopping import EarlyStopping
from tui_trainer.control import Control
from tui_trainer.engine.distributed import Ranks
from tui_trainer.engine.endings import Endings
from tui_trainer.engine.saving import Checkpoints
from tui_trainer.events import CheckpointFailed, CheckpointSaved, ListSink, Notice, RunEnded
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir.loop_state import LoopPosition, LoopState


def make(run_dir, *, can_retry_save=False, verdict=None, latest=None, state=None):
    state = state or LoopState(epoch=2, example_cursor=40, step=14, tokens_seen=14_000)
    control, sink = Control(), ListSink()
    checkpoints = Checkpoints(run_dir, Ranks(), sink, state, contents=lambda rng, rank_rngs: {"step": state.step},
                              latest=latest, device=torch.device("cpu"), every_steps=None)
    endings = Endings(state, sink, control, checkpoints, EarlyStopping(patience=0), run_dir,
                      verdict=lambda: verdict, can_retry_save=can_retry_save)
    return endings, checkpoints, control, sink, state


def test_a_stop_that_saved_says_where_it_stopped_and_how_to_go_on(tmp_path):
    endings, checkpoints, control, sink, state = make(tmp_path)
    control.stop(signal_number=signal.SIGTERM)
    assert checkpoints.save("latest") and checkpoints.latest == LoopPosition(2, 40, 14)
    end = endings.interrupted(saved=True)
    assert end.reason == "interrupted" and end.exit_signal == signal.SIGTERM and end.steps == 14
    assert end.message == f"stopped after optimizer step 14 (epoch 2); continue with --resume {tmp_path}"
    assert state.finished == "interrupted" and sink.of(RunEnded) == [end]


def test_a_stop_whose_save_failed_points_at_the_previous_checkpoint(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    endings, checkpoints, _, sink, _ = make(not_a_folder, latest=LoopPosition(1, 0, 9))
    assert not checkpoints.save("latest") and sink.of(CheckpointFailed)
    end = endings.interrupted(saved=False, where="at the end of epoch 1")
    assert end.message.startswith("stopped at the end of epoch 1, but the checkpoint could not be saved (")
    assert end.message.endswith("the previous checkpoint (step 9) is intact")
    assert endings.interrupted(saved=False).message.endswith("the previous checkpoint (step 9) is intact")


def test_stop_point_before_the_first_step(tmp_path):
    endings, *_ = make(tmp_path, state=LoopState(epoch=1))
    assert endings.stop_point() == "before the first optimizer step (epoch 1)"


def test_the_end_record_carries_the_verdict_and_the_best_epoch(tmp_path):
    verdict = Diagnosis(kind="learning", reason="both losses fall", remedy="keep going")
    endings, _, _, _, state = make(tmp_path, verdict=verdict)
    endings.early_stopping.update(2.5, 1)
    state.val_history = [2.5]
    end = endings.end("completed")
    assert (end.diagnosis, end.diagnosis_reason) == ("learning", "both losses fall")
    assert (end.best_val_loss, end.best_epoch, end.epochs, end.exit_signal) == (2.5, 1, 1, None)


def test_a_finished_run_ends_completed_only_once_its_state_is_saved(tmp_path):
    endings, checkpoints, _, _, _ = make(tmp_path)
    checkpoints.save("latest")
    calls = []
    end = endings.end_with_the_run_saved("completed", then=lambda: calls.append("then"))
    assert end.reason == "completed" and calls == ["then"]


def test_a_finished_run_whose_final_save_failed_ends_as_an_error(tmp_path):
    endings, checkpoints, _, _, _ = make(tmp_path, latest=LoopPosition(1, 0, 9))
    checkpoints.error = "No space left on device"
    end = endings.end_with_the_run_saved("completed", then=lambda: (_ for _ in ()).throw(AssertionError))
    assert end.reason == "error"
    assert end.message == ("training finished at step 14, but its final checkpoint could not be saved "
                           "(No space left on device); the last checkpoint on disk is from step 9")


def test_in_the_app_a_failed_final_save_waits_for_s_and_then_completes(tmp_path):
    endings, checkpoints, control, sink, _ = make(tmp_path, can_retry_save=True)
    checkpoints.error = "No space left on device"
    threading.Timer(0.3, control.save).start()
    give_up = threading.Timer(10, control.stop)  # (a retry that never saves fails instead of hanging)
    give_up.start()
    end = endings.end_with_the_run_saved("completed")
    give_up.cancel()
    assert end.reason == "completed" and checkpoints.holds_now()
    assert ckpt.checkpoint_path(tmp_path).exists()
    notice = sink.of(Notice)[0]
    assert notice.level == "error" and "press s to retry" in notice.message
    assert [saved.requested for saved in sink.of(CheckpointSaved)] == [True]  # (its toast says it was written)


def test_non_finite_steps_warn_until_max_bad_steps_in_a_row_then_end_with_a_hint(tmp_path):
    endings, _, _, sink, state = make(tmp_path, latest=LoopPosition(2, 32, 12))
    state.bad_steps_in_row = 1
    assert endings.after_a_non_finite_step(float("nan"), float("nan"), max_bad_steps=2, lr=3e-3) is None
    assert "step 14: non-finite loss" in sink.of(Notice)[0].message
    state.bad_steps_in_row = 2
    end = endings.after_a_non_finite_step(float("nan"), 1.0, max_bad_steps=2, lr=3e-3)
    assert end.reason == "error" and "2 non-finite steps in a row at step 14" in end.message
    assert "--lr 0.0003" in end.message and "the last good checkpoint (step 12) is intact" in end.message


def test_a_crash_ends_as_an_error_in_one_line_with_its_traceback_in_error_log(tmp_path):
    endings, *_ = make(tmp_path)
    try:
        raise MemoryError("out of memory on the device")
    except MemoryError as exc:
        end = endings.crashed(exc, log=True)
    assert end.reason == "error" and end.message == "MemoryError: out of memory on the device"
    assert "Traceback" in (tmp_path / "error.log").read_text(encoding="utf-8")
    other_rank = make(tmp_path / "elsewhere")[0]
    try:
        raise RuntimeError("a bug")
    except RuntimeError as exc:
        assert other_rank.crashed(exc, log=False).message == "RuntimeError: a bug"
    assert not (tmp_path / "elsewhere").exists()  # (another rank writes nothing)
