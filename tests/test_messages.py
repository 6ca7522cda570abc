"""Words a newcomer reads: where a stop left the run, resume notes, hints, config-file paths."""

from __future__ import annotations

import pytest
from helpers import TINY_MODEL, ScriptedSink, stop, tiny_config, train, with_limits

from tui_trainer.cli.main import main
from tui_trainer.config_checks import validate
from tui_trainer.control import Control
from tui_trainer.engine.loop import Trainer
from tui_trainer.errors import UserError
from tui_trainer.events import ListSink, MicroStep, RunEnded, RunStarted, StepEvent
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.bridge import AppSink

TINY = [*TINY_MODEL, "--limit-val-batches", "2"]


def test_a_stop_says_after_which_optimizer_step_of_the_run(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=3), 6)  # 3 steps an epoch
    _, _, end = train(cfg, ScriptedSink({4: stop()}))  # as q or Ctrl-C would, once step 4 is done
    assert end.message.startswith("stopped after optimizer step 4 (epoch 2); continue with --resume"), end.message


def test_a_resume_override_of_a_default_names_no_none(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    cfg = with_limits(tiny_config(small_corpus, run_dir, epochs=1, checkpoint_every=None), 6)
    Trainer(cfg, ListSink()).run()
    sink = ListSink()
    Trainer(cfg, sink, resume=run_dir, overrides={"train.epochs": 2, "train.checkpoint_every": 2}).run()
    notes = sink.of(RunStarted)[0].notes
    assert "--checkpoint-every 2 is set (the checkpoint left it at its default)" in notes, notes
    assert not any("None" in note for note in notes), notes


def test_the_patience_hint_is_a_value_to_use():
    cfg = tiny_config("x", "y", patience=-1)
    with pytest.raises(UserError) as caught:
        validate(cfg)
    assert "seed" not in caught.value.hint and "--patience 4" in caught.value.hint


def test_the_exit_line_after_an_early_stop_names_the_best_val_once(small_corpus, tmp_path):
    sink = AppSink()
    trainer = Trainer(with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 2), sink, for_ui=True)
    app = TrainerApp(trainer, sink)
    app.engine.end_event = RunEnded(reason="early_stop", epochs=5, steps=40, tokens_seen=1000, best_val_loss=2.6211,
                             best_epoch=2, message="val loss has not improved for 3 epochs (best 2.6211 at epoch 2)")
    line = app.summary_line()
    assert line.count("2.6211") == 1, line
    assert line.startswith("tui-trainer: early stop after 5 epochs: val loss has not improved"), line


def test_a_config_file_data_path_is_relative_to_the_file(small_corpus, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "tiny.txt").write_text(small_corpus.read_text())
    (folder / "run.toml").write_text('[data]\npath = "tiny.txt"\nlimit_train_batches = 2\n[train]\nepochs = 1\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["--no-ui", "--config", str(folder / "run.toml"), "--run-dir", str(tmp_path / "r"), *TINY]) == 0
    (folder / "run.toml").write_text('[data]\npath = "missing.txt"\n')
    capsys.readouterr()
    assert main(["--no-ui", "--config", str(folder / "run.toml"), "--run-dir", str(tmp_path / "s"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder / "missing.txt") in err and "run.toml" in err
    assert "--data" not in err.split("—")[0], err  # the problem names the file, not a flag nobody gave
    assert not (tmp_path / "s").exists()


def test_a_save_while_paused_resumes_to_the_same_losses(small_corpus, tmp_path):
    """`s` while paused saves at once, mid-window: a resume from that checkpoint redoes the window
    and gives the uninterrupted run's losses bit for bit."""
    import shutil

    from tui_trainer.events import CheckpointSaved, Paused

    def config(run_dir):
        return with_limits(tiny_config(small_corpus, run_dir, epochs=1, accum=3), 9)

    straight = ListSink()
    Trainer(config(tmp_path / "a"), straight).run()

    control = Control()

    class SaveWhilePaused(ListSink):
        def emit(self, event) -> None:
            super().emit(event)
            if isinstance(event, StepEvent) and event.step == 1:
                control.pause()  # takes effect after the next micro-step, inside step 2's window
            elif isinstance(event, Paused):
                control.save()
            elif isinstance(event, CheckpointSaved) and event.kind == "latest":
                shutil.copytree(tmp_path / "b", tmp_path / "copy")  # as if the process died now
                control.stop("interrupted")

    paused = SaveWhilePaused()
    Trainer(config(tmp_path / "b"), paused, control).run()
    saved = paused.of(CheckpointSaved)[0]
    assert saved.step == 1  # the last step taken; step 2's window was under way
    micro_steps = [e for e in paused.of(MicroStep) if e.step == 2]
    assert saved.redone_micro_steps == len(micro_steps) == 1  # ... one micro-step in: the event says it
    assert saved.redone_words() == "a resume redoes step 2 (1 micro-step in)"
    resumed = ListSink()
    Trainer(config(tmp_path / "copy"), resumed, resume=tmp_path / "copy").run()
    losses = [e.loss for e in straight.of(StepEvent)]
    assert [e.loss for e in resumed.of(StepEvent)] == losses[1:]
