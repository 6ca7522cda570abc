"""A stop that comes after all training is done (during the last epoch's validation or final save)
leaves a completed run, or one that --resume turns into exactly that; the same for an early stop.
A run stranded by an older version (its final save done, no `completed` record) resumes into one."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from helpers import tiny_config, with_limits

from tui_trainer.cli.faces import exit_code_for
from tui_trainer.cli.main import main
from tui_trainer.control import Control
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import CheckpointSaved, EpochEvent, ListSink, StepEvent
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir.metrics import read_metrics

STEPS_PER_EPOCH = 2  # 4 micro-batches of 4, accum 2


class StopWhen(ListSink):
    """Records events; when ``when(event)`` first holds, stops the engine as a signal would: by a
    real SIGTERM to this process (handled by the CLI's SignalStopper) or straight through Control."""

    def __init__(self, control: Control, when, real_signal: bool = False) -> None:
        super().__init__()
        self.control, self.when, self.real_signal, self.fired = control, when, real_signal, False

    def emit(self, event) -> None:
        super().emit(event)
        if not self.fired and self.when(event):
            self.fired = True
            if self.real_signal:
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                self.control.stop("interrupted", signal.SIGTERM)


def run(cfg, when, real_signal: bool = False, resume=None, overrides=None):
    from tui_trainer.cli.signals import SignalStopper

    control = Control()
    sink = StopWhen(control, when, real_signal)
    with SignalStopper(control):
        trainer = Trainer(cfg, sink, control, resume=resume, overrides=overrides or {})
        end = trainer.run()
    return trainer, sink, end


def config(corpus, run_dir, epochs=2, **train):
    return with_limits(tiny_config(corpus, run_dir, epochs=epochs, **train), 2 * STEPS_PER_EPOCH)


def ends(run_dir):
    return [r for r in read_metrics(run_dir) if r["type"] == "end"]


def epochs_logged(run_dir):
    return [r["epoch"] for r in read_metrics(run_dir) if r["type"] == "epoch"]


def last_epoch_done(epochs):
    return lambda e: isinstance(e, EpochEvent) and e.epoch == epochs


def final_save(epochs):
    return lambda e: isinstance(e, CheckpointSaved) and e.epoch == epochs + 1


@pytest.mark.parametrize("moment", ["validation", "final save"])
@pytest.mark.parametrize("real_signal", [False, True], ids=["control", "SIGTERM"])
def test_a_stop_after_the_last_training_step_of_the_run_still_completes_it(moment, real_signal, small_corpus,
                                                                           tmp_path):
    run_dir = tmp_path / "run"
    when = last_epoch_done(2) if moment == "validation" else final_save(2)
    trainer, sink, end = run(config(small_corpus, run_dir), when, real_signal)
    assert sink.fired
    assert end.reason == "completed" and exit_code_for(end) == 0
    assert "stop" in end.message and "--resume" not in end.message
    assert [e["reason"] for e in ends(run_dir)] == ["completed"]
    assert epochs_logged(run_dir) == [1, 2]
    assert torch.load(ckpt.checkpoint_path(run_dir), weights_only=True)["loop"]["epoch"] == 3


def test_a_stop_at_the_last_step_resumes_into_the_validation_and_the_completed_record(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    last_step = lambda e: isinstance(e, StepEvent) and e.step == 2 * STEPS_PER_EPOCH
    _, _, end = run(config(small_corpus, run_dir), last_step)
    assert end.reason == "interrupted" and f"--resume {run_dir}" in end.message
    assert epochs_logged(run_dir) == [1]
    _, sink, end = run(config(small_corpus, run_dir), lambda e: False, resume=run_dir)
    assert end.reason == "completed" and not sink.of(StepEvent)  # nothing trained twice
    assert epochs_logged(run_dir) == [1, 2]
    assert [e["reason"] for e in ends(run_dir)] == ["interrupted", "completed"]


def _strand(run_dir, reason="interrupted"):
    """What an older version left: the last checkpoint saved after all training, and an `end` record
    that is not a finished run's (or none: killed between the save and the record)."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1])["type"] == "end"
    if reason is None:
        lines = lines[:-1]
    else:
        record = json.loads(lines[-1])
        record.update(reason=reason, message="stopped at the end of epoch 2; continue with --resume")
        lines[-1] = json.dumps(record)
    (run_dir / "metrics.jsonl").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


@pytest.mark.parametrize("left", ["interrupted", None], ids=["interrupted-record", "no-end-record"])
def test_a_run_stranded_after_its_final_save_resumes_into_completed(left, small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    _, _, end = run(config(small_corpus, run_dir), lambda e: False)
    assert end.reason == "completed"
    _strand(run_dir, left)
    code = main(["--no-ui", "--resume", str(run_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert ends(run_dir)[-1]["reason"] == "completed" and epochs_logged(run_dir) == [1, 2]
    assert "step" not in [r["type"] for r in read_metrics(run_dir)][-2:]  # no step was trained again
    assert "end reason=completed" in out


def test_a_completed_run_is_still_refused_on_resume(small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run(config(small_corpus, run_dir), lambda e: False)
    before = (run_dir / "metrics.jsonl").read_bytes()
    assert main(["--no-ui", "--resume", str(run_dir)]) == 2
    assert "already finished 2 epochs" in capsys.readouterr().err
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def _early_stop_config(corpus, run_dir, epochs):
    # A min-delta nothing beats: epoch 1 is the best, patience 1 stops after epoch 2.
    return config(corpus, run_dir, epochs=epochs, patience=1, min_delta=100.0)


def test_an_early_stop_whose_save_is_interrupted_still_ends_as_an_early_stop(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    trainer, sink, end = run(_early_stop_config(small_corpus, run_dir, 5), final_save(2))
    assert sink.fired and end.reason == "early_stop" and exit_code_for(end) == 0
    assert [e["reason"] for e in ends(run_dir)] == ["early_stop"]


def test_an_early_stop_stranded_before_its_end_record_resumes_into_exactly_that(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    _, _, end = run(_early_stop_config(small_corpus, run_dir, 5), lambda e: False)
    assert end.reason == "early_stop" and end.best_epoch == 1
    _strand(run_dir, None)
    trainer, sink, end = run(_early_stop_config(small_corpus, run_dir, 5), lambda e: False, resume=run_dir)
    assert end.reason == "early_stop" and not sink.of(StepEvent)
    best = torch.load(ckpt.checkpoint_path(run_dir, "best"), weights_only=True)
    assert all(torch.equal(v, best["model"][k]) for k, v in trainer.model.state_dict().items())
    assert [e["reason"] for e in ends(run_dir)] == ["early_stop"]


def test_an_early_stop_that_fires_at_the_last_epoch_completes_the_run(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    _, sink, end = run(_early_stop_config(small_corpus, run_dir, 2), last_epoch_done(2))
    assert end.reason == "completed" and exit_code_for(end) == 0
    assert [e["reason"] for e in ends(run_dir)] == ["completed"]
