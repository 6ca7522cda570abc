"""--batch N split by the tool (engine/split.py), an out-of-memory mid-window recovered (engine/oom.py)
and activation checkpointing: each changes memory and speed, never the losses."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import tiny_config

from tui_trainer.cli.main import main
from tui_trainer.config import ModelConfig
from tui_trainer.data.dataset import Window
from tui_trainer.engine import memory_fit
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.memory_fit import measure_step_peak
from tui_trainer.engine.oom import cut_window
from tui_trainer.events import ListSink, Notice, RunStarted, SplitChanged, StepEvent
from tui_trainer.model.gpt import GPT
from tui_trainer.rundir.metrics import read_metrics

TOLERANCE = 1e-5  # the accumulation-equivalence tolerance (fp32)


def _config(corpus, run_dir, *, dropout=0.0, limit_train_batches=None, **train):
    cfg = tiny_config(corpus, run_dir, **{"epochs": 1, **train})
    return cfg.replace(model=replace(cfg.model, dropout=dropout),
                       data=replace(cfg.data, limit_train_batches=limit_train_batches))


def _losses(cfg, prepare=None) -> tuple[list[float], ListSink, Trainer]:
    sink = ListSink()
    trainer = Trainer(cfg, sink)
    if prepare is not None:
        prepare(trainer)
    end = trainer.run()
    assert end.reason == "completed", end.message
    return [e.loss for e in sink.of(StepEvent)], sink, trainer


def _assert_close(a: list[float], b: list[float], rel: float = TOLERANCE) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=rel)


def _force_sixteen(monkeypatch):
    """From outside: the probes run for real, but any micro-batch above 16 reads as too big and 16
    as the fastest, so auto chooses 16 under any budget."""
    real = memory_fit.measure_step_peak

    def measured(model, micro_batch, *args, **kwargs):
        peak, speed = real(model, micro_batch, *args, **kwargs)
        return (10 ** 15 if micro_batch > 16 else peak), (1e12 if micro_batch == 16 else speed)

    monkeypatch.setattr(memory_fit, "measure_step_peak", measured)


def test_auto_chooses_a_split_whose_losses_are_the_hand_given_ones(small_corpus, tmp_path, monkeypatch):
    _force_sixteen(monkeypatch)
    auto, sink, _ = _losses(_config(small_corpus, tmp_path / "auto", dropout=0.1, batch=64, micro_batch="auto"))
    started = sink.of(RunStarted)[0]
    assert (started.micro_batch, started.accum) == (16, 4)
    assert started.split.startswith("auto: micro-batch 16 x accum 4") and started.memory_budget > 0
    by_hand, _, _ = _losses(_config(small_corpus, tmp_path / "hand", dropout=0.1, micro_batch=16, accum=4))
    assert auto == by_hand  # the probes left init, data order and dropout alone: bit for bit
    smaller, _, _ = _losses(_config(small_corpus, tmp_path / "8x8", dropout=0.0, micro_batch=8, accum=8))
    auto_no_dropout, _, _ = _losses(_config(small_corpus, tmp_path / "auto0", batch=64, micro_batch="auto"))
    _assert_close(auto_no_dropout, smaller)
    record = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert record["config"]["train"]["micro_batch"] == 16 and record["memory"]["choice"] == started.split


def test_batch_with_a_given_micro_batch_derives_the_accumulation(small_corpus, tmp_path):
    _, sink, _ = _losses(_config(small_corpus, tmp_path / "r", batch=32, micro_batch=8, limit_train_batches=8))
    started = sink.of(RunStarted)[0]
    assert (started.micro_batch, started.accum) == (8, 4) and "as given" in started.split


def _out_of_memory_at(trainer, step: int, micro_step: int, size: int) -> None:
    """From outside: the model's forward raises torch.OutOfMemoryError once, at the given step's
    micro-step, when the micro-batch is ``size`` (as a device that ran out would)."""
    model, forward, seen = trainer.model, trainer.model.forward, {"micro": 0, "raised": False}

    def forward_or_out_of_memory(idx, targets=None):
        if targets is not None and model.training and trainer.state.step + 1 == step and not seen["raised"]:
            seen["micro"] += 1
            if seen["micro"] == micro_step and idx.shape[0] == size:
                seen["raised"] = True
                raise torch.OutOfMemoryError("out of memory (injected by the test)")
        return forward(idx, targets)

    model.forward = forward_or_out_of_memory


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_an_out_of_memory_mid_window_halves_the_micro_batch_and_keeps_the_trajectory(
        small_corpus, tmp_path, dropout):
    cfg = _config(small_corpus, tmp_path / "oom", dropout=dropout, micro_batch=16, accum=4)
    recovered, sink, _ = _losses(cfg, lambda t: _out_of_memory_at(t, step=3, micro_step=3, size=16))
    steady, _, _ = _losses(_config(small_corpus, tmp_path / "8x8", dropout=dropout, micro_batch=8, accum=8))
    steady16, _, _ = _losses(_config(small_corpus, tmp_path / "16x4", dropout=dropout, micro_batch=16, accum=4))
    if dropout == 0.0:
        _assert_close(recovered, steady)
    else:  # dropout masks follow the micro-batch shapes: steps before the change are 16 x 4's, after 8 x 8's
        _assert_close(recovered[:2], steady16[:2])
    change = sink.of(SplitChanged)[0]
    assert change.describe() == "memory: micro-batch 16 -> 8, accum 4 -> 8 after an out-of-memory at step 3"
    assert any("micro-batch 16 -> 8" in n.message for n in sink.of(Notice))
    steps = sink.of(StepEvent)
    assert (steps[1].micro_batch, steps[1].accum) == (16, 4) and (steps[2].micro_batch, steps[2].accum) == (8, 8)
    records = [r for r in read_metrics(tmp_path / "oom") if r["type"] == "memory"]
    assert records and records[0]["step"] == 3 and records[0]["new_micro_batch"] == 8


def test_the_redone_window_draws_the_dropout_masks_it_drew_before(small_corpus, tmp_path):
    """The RNG is set back to the window's start: with dropout, the recovered step equals a run that
    takes that window at 8 x 8 from the same RNG state (the same 16 x 4 steps before it)."""
    cfg = _config(small_corpus, tmp_path / "oom", dropout=0.1, micro_batch=16, accum=4)
    once, _, _ = _losses(cfg, lambda t: _out_of_memory_at(t, step=3, micro_step=2, size=16))
    twice, _, _ = _losses(cfg.replace(run_dir=str(tmp_path / "oom2")),
                          lambda t: _out_of_memory_at(t, step=3, micro_step=4, size=16))
    _assert_close(once, twice)  # where in the window it ran out does not matter: the window is redone


def test_out_of_memory_at_micro_batch_1_stops_with_a_checkpoint_naming_the_levers(small_corpus, tmp_path):
    sink = ListSink()
    trainer = Trainer(_config(small_corpus, tmp_path / "r", micro_batch=1, accum=2, limit_train_batches=8), sink)
    _out_of_memory_at(trainer, step=2, micro_step=1, size=1)
    end = trainer.run()
    assert end.reason == "error" and "micro-batch 1" in end.message and "--checkpoint-activations" in end.message
    from tui_trainer.rundir.checkpoints import checkpoint_path, load_checkpoint

    saved = load_checkpoint(checkpoint_path(tmp_path / "r"))
    assert end.steps == 1 and saved["loop"]["step"] == 1  # the last step taken, its window to redo


def test_cut_window_halves_every_micro_batch_keeping_its_examples():
    window = Window(((0, 16), (16, 32), (32, 45)))
    cut = cut_window(window, 2)
    assert cut.micro_batches == ((0, 8), (8, 16), (16, 24), (24, 32), (32, 39), (39, 45))
    assert cut.examples == window.examples and cut_window(window, 1) is window


def test_checkpointed_activations_give_the_same_losses_with_dropout(small_corpus, tmp_path):
    plain, _, _ = _losses(_config(small_corpus, tmp_path / "a", dropout=0.1, limit_train_batches=8))
    recomputed, sink, _ = _losses(_config(small_corpus, tmp_path / "b", dropout=0.1, limit_train_batches=8,
                                          checkpoint_activations=True))
    _assert_close(recomputed, plain, rel=1e-6)
    assert sink.of(RunStarted)[0].checkpoint_activations


def test_checkpointed_activations_take_less_memory_per_micro_batch():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=8, n_head=4, n_embd=128, block_size=256, vocab_size=65, dropout=0.1))
    model.train()
    device = torch.device("cpu")
    measure_step_peak(model, 2, 256, 65, device, None)  # warm-up: one-time allocations
    plain, _ = measure_step_peak(model, 16, 256, 65, device, None)
    model.checkpoint_activations = True
    recomputed, _ = measure_step_peak(model, 16, 256, 65, device, None)
    assert recomputed < 0.8 * plain, (recomputed, plain)  # (measured: about 0.6 to 0.75 of it)


def test_a_step_carries_its_peak_memory(small_corpus, tmp_path):
    _, sink, _ = _losses(_config(small_corpus, tmp_path / "r", limit_train_batches=4))
    assert all(e.peak_memory > 0 for e in sink.of(StepEvent))


BAD = {
    "auto without batch": (["--micro-batch", "auto"], "--micro-batch auto needs --batch"),
    "batch with accum": (["--batch", "64", "--accum", "4"], "--batch and --accum"),
    "budget unparseable": (["--batch", "64", "--memory-budget", "lots"], "--memory-budget"),
    "budget above the machine": (["--batch", "64", "--memory-budget", "900TB"], "more than this machine has"),
    "micro-batch does not divide": (["--batch", "60", "--micro-batch", "16"], "not a multiple of --micro-batch"),
}
BASE = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--threads", "1",
        "--limit-train-batches", "6", "--limit-val-batches", "2", "--device", "cpu"]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_batch_input_is_one_line_exit_2_and_nothing_created(case, small_corpus, tmp_path, capsys):
    extra, expected = BAD[case]
    run_dir = tmp_path / "run"
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), *BASE, *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not run_dir.exists()


def test_the_run_line_says_how_the_split_was_chosen(small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), *BASE, "--epochs", "1",
                 "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "auto: micro-batch" in out and "budget" in out


class StopAt(ListSink):
    """Stops the run once optimizer step ``step`` is done (as a user pressing q would)."""

    def __init__(self, step: int):
        super().__init__()
        self.step, self.control = step, None

    def emit(self, event):
        super().emit(event)
        if isinstance(event, StepEvent) and event.step == self.step:
            self.control.stop()


def _stopped_at(cfg, step: int, prepare=None, **setup):
    from tui_trainer.control import Control

    sink, control = StopAt(step), Control()
    sink.control = control
    trainer = Trainer(cfg, sink, control, **setup)
    if prepare is not None:
        prepare(trainer)
    trainer.run()
    return sink


def test_a_resume_keeps_the_measured_split_and_the_one_an_out_of_memory_left(small_corpus, tmp_path, monkeypatch):
    _force_sixteen(monkeypatch)
    run_dir = tmp_path / "r"
    cfg = _config(small_corpus, run_dir, batch=64, micro_batch="auto", epochs=2)
    _stopped_at(cfg, 4, lambda t: _out_of_memory_at(t, step=2, micro_step=1, size=16))
    monkeypatch.setattr(memory_fit, "fit_micro_batch", None)  # a resume measures nothing
    sink = _stopped_at(cfg, 5, resume=run_dir, overrides={"train.micro_batch": "auto"})
    started = sink.of(RunStarted)[0]
    assert (started.micro_batch, started.accum) == (8, 8)  # planned 16 x 4, halved at step 2
    assert any("keeps its split" in note for note in started.notes)


def test_when_only_checkpointed_activations_fit_auto_proposes_them_and_starts_nothing(
        small_corpus, tmp_path, monkeypatch):
    from tui_trainer.errors import UserError

    real = memory_fit.measure_step_peak

    def measured(model, micro_batch, *args, **kwargs):  # the real probe; too big unless recomputed
        peak, speed = real(model, micro_batch, *args, **kwargs)
        return (peak if model.checkpoint_activations and micro_batch <= 2 else 10 ** 15), speed

    monkeypatch.setattr(memory_fit, "measure_step_peak", measured)
    run_dir = tmp_path / "r"
    with pytest.raises(UserError) as error:
        Trainer(_config(small_corpus, run_dir, batch=8, micro_batch="auto"), ListSink())
    assert "with --checkpoint-activations micro-batch 2 fits" in error.value.message
    assert "--checkpoint-activations" in error.value.hint and not run_dir.exists()


def test_two_processes_agree_on_one_measured_split(small_corpus, tmp_path):
    from test_distributed import MODEL, cli, run, steps

    run_dir = tmp_path / "two"
    two = run(cli("--data", str(small_corpus), *MODEL, "--epochs", "1", "--batch", "20", "--run-dir", str(run_dir),
                  "--nproc", "2"))
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    assert "split=auto: micro-batch" in two.stdout and "an out-of-memory mid-run ends the run" not in two.stdout
    records = steps(run_dir)
    assert records and {(r["micro_batch"] * r["accum"] * 2) for r in records if r["effective_batch"] == 20} == {20}
    bad = run(cli("--data", str(small_corpus), *MODEL, "--batch", "21", "--run-dir", str(tmp_path / "odd"),
                  "--nproc", "2"))
    assert bad.returncode == 2 and "does not divide over the 2 processes" in bad.stderr
    assert not (tmp_path / "odd").exists()
