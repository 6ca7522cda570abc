"""The noise scale inside the engine: measured without changing training, recorded, followed by --auto-accum."""

from __future__ import annotations

import json

from helpers import ScriptedSink, tiny_config, train, with_limits

from tui_trainer.analysis.noise_scale import SETTLE_ESTIMATES, suggested_accum
from tui_trainer.cli.main import main
from tui_trainer.events import AccumChangeApplied, AccumChangeRequested, EpochEvent, RunStarted, StepEvent
from tui_trainer.rundir.metrics import read_metrics


def test_losses_are_bit_identical_with_the_noise_scale_on_and_off(small_corpus, tmp_path):
    def run(name: str, on: bool):
        cfg = with_limits(tiny_config(small_corpus, tmp_path / name, accum=4, epochs=2, noise_scale=on), 60)
        return train(cfg)[1]

    on, off = run("on", True), run("off", False)
    assert [(s.loss, s.grad_norm) for s in on.of(StepEvent)] == [(s.loss, s.grad_norm) for s in off.of(StepEvent)]
    assert [e.val_loss for e in on.of(EpochEvent)] == [e.val_loss for e in off.of(EpochEvent)]
    assert all(s.noise_scale is None and s.suggested_accum is None for s in off.of(StepEvent))
    steps = on.of(StepEvent)  # 15 steps an epoch; the estimate settles after SETTLE_ESTIMATES windows
    assert all(s.noise_scale is None for s in steps[:SETTLE_ESTIMATES - 1])
    settled = [s for s in steps[SETTLE_ESTIMATES - 1:]]
    assert settled and all(s.noise_scale > 0 for s in settled)
    assert all(s.suggested_accum == suggested_accum(s.noise_scale, 4) for s in settled)
    assert on.of(RunStarted)[0].noise_scale and not off.of(RunStarted)[0].noise_scale


def test_step_and_epoch_records_carry_the_noise_scale(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", accum=4, epochs=2), 60)
    train(cfg)
    records = read_metrics(tmp_path / "run")
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert all("noise_scale" in r and "suggested_accum" in r for r in steps + epochs)
    assert epochs[-1]["noise_scale"] == steps[-1]["noise_scale"] and epochs[-1]["suggested_accum"] >= 1


def test_accum_1_gives_no_estimate(small_corpus, tmp_path):
    _, sink, _ = train(with_limits(tiny_config(small_corpus, tmp_path / "run", accum=1, epochs=1), 30))
    assert all(s.noise_scale is None for s in sink.of(StepEvent))


def test_auto_accum_makes_the_suggestion_a_pending_change_applied_at_the_boundary(small_corpus, tmp_path):
    # micro-batch 1: this tiny model's noise scale (~3 sequences, growing to ~7) suggests accum 4
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", micro_batch=1, accum=2, epochs=3,
                                  auto_accum=True), 60)
    _, sink, _ = train(cfg)
    requests = sink.of(AccumChangeRequested)
    assert requests and all(r.auto for r in requests)
    first = requests[0]
    steps = sink.of(StepEvent)
    before = [s for s in steps if s.step <= first.step]
    assert first.new == max(2, before[-1].suggested_accum) != 2  # the suggestion of the step it followed
    assert 2 * before[-1].step_in_epoch >= before[-1].steps_in_epoch  # from the middle of the epoch
    applied = sink.of(AccumChangeApplied)[0]
    assert (applied.old, applied.new, applied.epoch) == (2, first.new, first.applies_at_epoch)
    assert {s.accum for s in steps if s.epoch == first.applies_at_epoch} == {first.new}
    assert len({r.epoch for r in requests}) == len(requests)  # at most one request an epoch


def test_auto_accum_never_goes_below_2_where_it_could_not_measure(small_corpus, tmp_path):
    # micro-batch 4: the suggestion is 1 (noise scale ~4 sequences); auto keeps 2
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", accum=2, epochs=2, auto_accum=True), 60)
    _, sink, _ = train(cfg)
    assert 1 in {s.suggested_accum for s in sink.of(StepEvent)}
    assert not sink.of(AccumChangeRequested) and {s.accum for s in sink.of(StepEvent)} == {2}


def test_a_key_press_in_the_epoch_overrides_auto_accum(small_corpus, tmp_path):
    sink = ScriptedSink({1: lambda trainer: trainer.control.set_accum(8)})  # the user's choice, early in epoch 1
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", accum=2, epochs=2, auto_accum=True), 60)
    train(cfg, sink)
    assert [(r.new, r.auto) for r in sink.of(AccumChangeRequested)] == [(8, False)]
    assert sink.of(AccumChangeApplied)[0].new == 8


def test_flags_and_toml_turn_the_noise_scale_off_and_auto_accum_on(small_corpus, tmp_path, capsys):
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--micro-batch", "4",
            "--threads", "1", "--epochs", "1", "--limit-train-batches", "4", "--limit-val-batches", "1"]
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "a"), *tiny,
                 "--no-noise-scale"]) == 0
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["config"]["train"]
    assert saved["noise_scale"] is False and saved["auto_accum"] is False
    config = tmp_path / "run.toml"
    config.write_text("[train]\nnoise_scale = true\nauto_accum = true\n")
    assert main(["--no-ui", "--config", str(config), "--data", str(small_corpus), "--run-dir", str(tmp_path / "b"),
                 *tiny]) == 0
    saved = json.loads((tmp_path / "b" / "config.json").read_text())["config"]["train"]
    assert saved["noise_scale"] is True and saved["auto_accum"] is True
    capsys.readouterr()
    for extra, words in [(["--auto-accum", "--no-noise-scale"], "which --no-noise-scale turns off"),
                         (["--auto-accum", "--accum", "1"], "needs accum 2 or more")]:
        assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "c"), *tiny, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0]
        assert not (tmp_path / "c").exists()
