"""Diagnosis rules, the val-rise warning and early stopping: synthetic curves and real runs."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from helpers import tiny_config

from tui_trainer.analysis.diagnosis import diagnose, find_spike, step_verdict, val_rise_warning, verdicts_over
from tui_trainer.analysis.early_stopping import EarlyStopping
from tui_trainer.config import DiagnosisConfig, OptimConfig
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import DiagnosisEvent, EpochEvent, ListSink, StepEvent
from tui_trainer.rundir.metrics import read_metrics

VOCAB = 65  # ln(65) = 4.17: the loss of a uniform guess over tiny-shakespeare's characters
EPOCHS = 12


def healthy_curves():
    train = [1.2 + 2.6 * math.exp(-0.35 * e) for e in range(EPOCHS)]
    return train, [t + 0.06 for t in train]


def underfitting_curves():
    train = [4.05 - 0.01 * e for e in range(EPOCHS)]
    return train, [t + 0.02 for t in train]


def overfitting_curves():
    """Both fall until epoch 6; from epoch 7 on, val rises while train keeps falling."""
    train = [1.0 + 2.5 * math.exp(-0.3 * e) for e in range(EPOCHS)]
    val = [t + 0.1 for t in train[:6]] + [train[5] + 0.1 + 0.04 * (e - 5) for e in range(6, EPOCHS)]
    return train, val


def verdicts(train, val, **kwargs):
    """The engine's verdicts epoch by epoch (each one knows the one before: hysteresis)."""
    return [v.kind for v in verdicts_over(train, val, VOCAB, **kwargs)]


def test_healthy_curves_are_learning_then_healthy_and_never_a_problem():
    kinds = verdicts(*healthy_curves())
    train, val = healthy_curves()
    high = DiagnosisConfig().underfit_ratio * math.log(VOCAB)
    below = next(e for e in range(EPOCHS) if min(train[e], val[e]) < high)  # epoch index 2: 2.49
    assert kinds[:below + 1] == ["learning"] * (below + 1)  # crossing the line once is not yet a change
    assert kinds[below + 1:] == ["healthy"] * (EPOCHS - below - 1)


def test_underfitting_is_called_once_the_trend_is_established_and_confirmed():
    kinds = verdicts(*underfitting_curves())
    trend, confirm = DiagnosisConfig().trend_epochs, DiagnosisConfig().confirm_epochs
    first = trend + confirm - 1  # flat over the trend window, in `confirm` consecutive epochs
    assert kinds[:first - 1] == ["learning"] * (first - 1)
    assert kinds[first - 1:] == ["underfitting"] * (EPOCHS - first + 1)


def test_overfitting_from_epoch_7_is_called_once_val_has_risen_twice():
    train, val = overfitting_curves()
    assert val[6] > val[5] and val[5] < val[4]  # val bottoms out at epoch 6, rises from epoch 7
    kinds = verdicts(train, val)
    assert "underfitting" not in kinds[:7] and "overfitting" not in kinds[:7]  # one rise is not a trend yet
    assert kinds[7:] == ["overfitting"] * (EPOCHS - 7)  # epochs 8-12
    reason = verdicts_over(train[:8], val[:8], VOCAB)[-1].reason
    assert reason.startswith("since epoch 7:") and f"val {val[5]:.2f} -> {val[7]:.2f}" in reason
    assert f"train {train[5]:.2f} -> {train[7]:.2f}" in reason


def test_large_gap_is_overfitting_even_without_a_rising_trend():
    verdict = diagnose([2.0, 1.2], [2.1, 1.6], VOCAB)
    assert verdict.kind == "overfitting" and "gap 33%" in verdict.reason
    assert diagnose([2.0, 1.4], [2.1, 1.6], VOCAB).kind == "healthy"  # 14% gap
    assert diagnose([1.2], [1.6], VOCAB).kind == "healthy"  # epoch 1's train loss is not compared


def test_spiky_curve_is_unstable_in_the_epoch_of_the_spike_only():
    train, val = healthy_curves()
    calm = [2.0 + 0.05 * math.sin(i) for i in range(40)]
    spiky = calm[:25] + [5.5] + calm[26:]
    assert diagnose(train[:3], val[:3], VOCAB, step_losses=calm).kind == "healthy"
    verdict = diagnose(train[:3], val[:3], VOCAB, step_losses=spiky, first_step=101)
    assert verdict.kind == "unstable" and "step 126 loss 5.50" in verdict.reason
    assert find_spike(spiky[:25], 2.0, 25) is None


def test_a_doubling_of_a_tiny_loss_is_noise_not_a_spike():
    """Late in a memorising run: 0.26 after steps around 0.13 is 2x the median but 0.13 nats."""
    train, val = healthy_curves()
    low = [0.13 + 0.005 * math.sin(i) for i in range(20)]
    blip = low[:14] + [0.27] + low[15:]
    assert diagnose(train[:3], val[:3], VOCAB, step_losses=blip).kind == "healthy"
    assert step_verdict(blip[:15], VOCAB, DiagnosisConfig()) is None
    jump = low[:14] + [0.6] + low[15:]  # 0.47 nats above the median: a spike
    assert diagnose(train[:3], val[:3], VOCAB, step_losses=jump).kind == "unstable"


def test_non_finite_losses_are_unstable_at_once():
    assert diagnose([3.0], [float("nan")], VOCAB).kind == "unstable"
    verdict = diagnose([3.0], [3.1], VOCAB, step_losses=[3.2, float("inf")], first_step=7)
    assert verdict.kind == "unstable" and "step 8" in verdict.reason
    assert step_verdict([3.2, float("nan")], VOCAB, DiagnosisConfig(), first_step=1).kind == "unstable"


def test_divergence_far_above_a_uniform_guess_is_unstable():
    assert step_verdict([4.1, 250.0], VOCAB, DiagnosisConfig()).kind == "unstable"
    assert diagnose([900.0, 600.0, 250.0], [950.0, 300.0, 160.0], VOCAB).kind == "unstable"


def test_every_diagnosis_has_a_remedy():
    remedies = {kind: verdicts_over(*curves, VOCAB)[-1].remedy for kind, curves in
                [("healthy", healthy_curves()), ("underfitting", underfitting_curves()),
                 ("overfitting", overfitting_curves())]}
    assert "keep training" in remedies["healthy"]
    assert "larger model" in remedies["underfitting"] and "learning rate" in remedies["underfitting"]
    assert "regularization" in remedies["overfitting"] and "epochs past the best val" in remedies["overfitting"]
    assert "lower the learning rate" in diagnose([3.0], [math.nan], VOCAB).remedy


def test_thresholds_are_configurable():
    train, val = [2.0, 1.2], [2.1, 1.6]
    assert diagnose(train, val, VOCAB, DiagnosisConfig(overfit_gap=0.5)).kind == "healthy"


@pytest.mark.parametrize("previous, current, warns", [
    (1.0, 1.05, False), (2.0, 2.1, False), (1.62, 1.701, False),  # exactly 5%
    (1.0, 1.0501, True), (2.0, 2.1002, True), (1.62, 1.7011, True),  # just over
    (2.0, 1.9, False),
])
def test_val_rise_warning_fires_just_over_five_percent_and_not_at_exactly_five(previous, current, warns):
    warning = val_rise_warning([previous, current], 0.05)
    assert (warning is not None) == warns
    if warns:
        assert f"{previous:.4f} -> {current:.4f}" in warning


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=3)
    results = [stopper.update(v, e) for e, v in enumerate([3.0, 2.0, 2.5, 2.4, 2.3], start=1)]
    assert [r[0] for r in results] == [True, True, False, False, False]
    assert [r[1] for r in results] == [False, False, False, False, True]
    assert stopper.best == 2.0 and stopper.best_epoch == 2
    assert results[-1][2] == "val loss has not improved for 3 epochs (best 2.0000 at epoch 2)"


def test_min_delta_ignores_tiny_improvements_and_patience_zero_never_stops():
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    assert stopper.update(2.0, 1)[0] and not stopper.update(1.995, 2)[0]
    stop = stopper.update(1.994, 3)
    assert stop[1] and "not improved by more than 0.01 for 2 epochs" in stop[2]
    never = EarlyStopping(patience=0)
    assert not any(never.update(5.0, e)[1] for e in range(1, 20))


def test_early_stopping_state_survives_a_round_trip():
    original = EarlyStopping(patience=3)
    for epoch, value in enumerate([3.0, 2.0, 2.2], start=1):
        original.update(value, epoch)
    restored = EarlyStopping(patience=3)
    restored.load_state_dict(original.state_dict())
    assert restored.update(2.1, 4) == original.update(2.1, 4)
    assert restored.state_dict() == original.state_dict()


def _memorising_config(corpus, run_dir, patience):
    cfg = tiny_config(corpus, run_dir, micro_batch=8, accum=1, epochs=30, patience=patience)
    return cfg.replace(model=replace(cfg.model, n_layer=2, n_embd=64, n_head=4, dropout=0.0),
                       optim=OptimConfig(lr=3e-3, weight_decay=0.0),
                       data=replace(cfg.data, limit_val_batches=None))


@pytest.fixture
def tiny_text(tmp_path, shakespeare_text):
    path = tmp_path / "tiny.txt"
    path.write_text(shakespeare_text[:4000], encoding="utf-8")
    return path


def test_real_overfitting_run_is_diagnosed_and_stops_early_at_the_best_epoch(tiny_text, tmp_path):
    sink = ListSink()
    trainer = Trainer(_memorising_config(tiny_text, tmp_path / "run", patience=3), sink)
    end = trainer.run()
    epochs = sink.of(EpochEvent)
    val = [e.val_loss for e in epochs]
    assert end.reason == "early_stop" and len(epochs) < 30
    assert end.best_epoch == val.index(min(val)) + 1 and end.best_val_loss == min(val)
    assert len(epochs) == end.best_epoch + 3  # patience 3
    assert "overfitting" in [e.diagnosis for e in epochs]
    records = read_metrics(tmp_path / "run")
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "early_stop"
    assert records[-1]["best_epoch"] == end.best_epoch
    epoch_records = [r for r in records if r["type"] == "epoch"]
    assert all("diagnosis" in r and "diagnosis_reason" in r for r in epoch_records)
    # The best weights are restored and saved.
    import torch
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["early_stopping"]["best_epoch"] == end.best_epoch
    # The model in memory holds best.pt's weights (not the last epoch's, which latest.pt keeps).
    latest = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    weights = trainer.model.state_dict()
    assert all(torch.equal(weights[name], best["model"][name]) for name in weights)
    assert not all(torch.equal(weights[name], latest["model"][name]) for name in weights)


def test_the_engine_warns_in_the_epoch_whose_val_loss_rose_more_than_5_percent(tmp_path):
    """Training text "abcd..." and validation text "dcba...": the better the model learns the
    training order, the worse it predicts the validation text, so val loss rises epoch after epoch."""
    corpus = tmp_path / "contrary.txt"
    corpus.write_text("abcd" * 900 + "dcba" * 100, encoding="utf-8")
    cfg = tiny_config(corpus, tmp_path / "run", micro_batch=8, accum=1, epochs=4, patience=0)
    cfg = cfg.replace(data=replace(cfg.data, limit_train_batches=4), optim=OptimConfig(lr=1e-2, weight_decay=0.0))
    sink = ListSink()
    assert Trainer(cfg, sink).run().reason == "completed"
    epochs = sink.of(EpochEvent)
    val = [e.val_loss for e in epochs]
    rose = [i for i in range(1, len(val)) if val[i] > val[i - 1] * 1.05]
    assert rose, f"val loss should rise more than 5% in some epoch: {val}"
    warned = [i for i, e in enumerate(epochs) if e.val_rise_warning]
    assert warned == rose  # on those epochs, and only on those
    assert all(f"({val[i - 1]:.4f} -> {val[i]:.4f})" in epochs[i].val_rise_warning for i in rose)
    records = [r for r in read_metrics(tmp_path / "run") if r["type"] == "epoch"]
    assert [i for i, r in enumerate(records) if r["val_rise_warning"]] == rose


def test_same_run_with_patience_zero_keeps_going(tiny_text, tmp_path):
    cfg = _memorising_config(tiny_text, tmp_path / "run", patience=0)
    cfg = cfg.replace(train=replace(cfg.train, epochs=16))
    sink = ListSink()
    end = Trainer(cfg, sink).run()
    assert end.reason == "completed" and len(sink.of(EpochEvent)) == 16
    val = [e.val_loss for e in sink.of(EpochEvent)]
    assert val.index(min(val)) + 1 + 3 < 16  # it would have stopped early with patience 3


def test_absurd_learning_rate_is_diagnosed_unstable_without_crashing(tiny_text, tmp_path):
    cfg = tiny_config(tiny_text, tmp_path / "run", micro_batch=8, accum=1, epochs=3)
    sink = ListSink()
    trainer = Trainer(cfg.replace(optim=OptimConfig(lr=100.0, grad_clip=0.0, warmup_tokens=0)), sink)
    end = trainer.run()
    assert trainer.error is None
    assert end.reason == "error" and "lower the learning rate" in end.message
    assert end.diagnosis == "unstable"
    alerts = sink.of(DiagnosisEvent)
    assert alerts and alerts[0].kind == "unstable"
    skipped = [s for s in sink.of(StepEvent) if s.skipped]
    assert len(skipped) == cfg.train.max_bad_steps
    assert all(torch_finite(p) for p in trainer.model.parameters())
    end_record = read_metrics(tmp_path / "run")[-1]
    assert end_record["reason"] == "error" and end_record["diagnosis"] == "unstable"


def test_large_learning_rate_without_nan_is_diagnosed_unstable(tiny_text, tmp_path):
    cfg = tiny_config(tiny_text, tmp_path / "run", micro_batch=8, accum=1, epochs=2)
    sink = ListSink()
    Trainer(cfg.replace(optim=OptimConfig(lr=10.0, grad_clip=0.0, warmup_tokens=0)), sink).run()
    assert [e.diagnosis for e in sink.of(EpochEvent)] == ["unstable", "unstable"]


def torch_finite(param) -> bool:
    import torch
    return bool(torch.isfinite(param).all())
