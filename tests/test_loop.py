"""The engine end to end on real data: equivalence of splits, determinism, split, eval, schedule."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ScriptedSink, tiny_config, train, with_limits

from tui_trainer.analysis.schedule import lr_at
from tui_trainer.config import DataConfig
from tui_trainer.data.dataset import WindowDataset, load_corpus
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import (
    AccumChangeApplied,
    AccumChangeRequested,
    EpochEvent,
    ListSink,
    MicroStep,
    RunEnded,
    RunStarted,
    StepEvent,
)
from tui_trainer.rundir.metrics import read_metrics


def test_same_examples_per_step_give_same_losses_whatever_the_split(small_corpus, tmp_path):
    """micro 32 x accum 1 and micro 8 x accum 4 see the same 32 examples per step, including the
    remainder step at each epoch's end (18 examples: one micro-batch of 18 vs micro-batches 8, 8, 2)."""
    # The whole validation split (no batch limit), so both runs validate on the same windows.
    big_cfg = with_limits(tiny_config(small_corpus, tmp_path / "a", micro_batch=32, accum=1), None, None)
    acc_cfg = with_limits(tiny_config(small_corpus, tmp_path / "b", micro_batch=8, accum=4), None, None)
    _, one_big, _ = train(big_cfg)
    _, accumulated, _ = train(acc_cfg)
    big_steps, acc_steps = one_big.of(StepEvent), accumulated.of(StepEvent)
    assert len(big_steps) == len(acc_steps) > 10
    assert {s.epoch for s in big_steps} == {1, 2}  # crosses an epoch boundary
    last_of_epoch = [s for s in acc_steps if s.step_in_epoch == s.steps_in_epoch][0]
    assert last_of_epoch.effective_batch < 32 and last_of_epoch.micro_steps < 4  # a real remainder window
    for big, acc in zip(big_steps, acc_steps):
        assert big.tokens == acc.tokens
        assert acc.loss == pytest.approx(big.loss, abs=1e-4)
    for big, acc in zip(one_big.of(EpochEvent), accumulated.of(EpochEvent)):
        assert acc.val_loss == pytest.approx(big.val_loss, abs=1e-4)


def test_same_seed_twice_gives_identical_metrics(small_corpus, tmp_path):
    def losses(run_dir: Path) -> list:
        cfg = with_limits(tiny_config(small_corpus, run_dir, epochs=2), 12)
        cfg = cfg.replace(model=replace(cfg.model, dropout=0.1))
        train(cfg)
        return [(r["type"], r.get("loss"), r.get("train_loss"), r.get("val_loss")) for r in read_metrics(run_dir)]

    first, second = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert first == second
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "three", seed=7, epochs=2), 12)
    train(cfg.replace(model=replace(cfg.model, dropout=0.1)))
    other_seed = [(r["type"], r.get("loss")) for r in read_metrics(tmp_path / "three")]
    assert other_seed != [(t, loss) for t, loss, *_ in first]


def test_split_is_contiguous_90_10_and_training_windows_never_reach_validation(tmp_path):
    # The last 10% is written in characters that never occur in the first 90%.
    head = ("abc def ghi\n" * 400)[:4500]
    tail = ("0123456789" * 60)[:500]
    path = tmp_path / "split.txt"
    path.write_text(head + tail, encoding="utf-8")
    corpus = load_corpus(DataConfig(path=str(path)), block_size=16)
    full = corpus.vocab.encode(head + tail)
    assert len(corpus.val_tokens) == 500 and len(corpus.train_tokens) == 4500
    assert torch.equal(torch.from_numpy(np.concatenate([corpus.train_tokens, corpus.val_tokens]).astype(np.int64)), full)
    digits = {corpus.vocab.chars.index(d) for d in "0123456789"}
    train = WindowDataset(corpus.train_tokens, 16)
    seen = set(train.inputs.unique().tolist()) | set(train.targets.unique().tolist())
    assert not seen & digits
    val = WindowDataset(corpus.val_tokens, 16)
    assert set(val.inputs.unique().tolist()) <= digits


def test_validation_runs_in_eval_mode_without_changing_weights(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "run")
    trainer = Trainer(cfg.replace(model=replace(cfg.model, dropout=0.3)), ListSink())
    modes = []
    handle = trainer.model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng_before = torch.get_rng_state()
    first, second = trainer.evaluate(), trainer.evaluate()
    handle.remove()
    assert modes and not any(modes)  # every forward pass in eval mode
    assert trainer.model.training  # and back to train mode after
    assert first == second  # dropout off: deterministic
    assert torch.equal(rng_before, torch.get_rng_state())
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(p.grad is None for p in trainer.model.parameters())


def test_lr_schedule_is_a_function_of_tokens_seen():
    peak, low = 1e-3, 1e-4
    assert lr_at(0, peak, low, 100, 1000) < lr_at(50, peak, low, 100, 1000) < peak
    assert lr_at(100, peak, low, 100, 1000) == pytest.approx(peak)
    assert lr_at(550, peak, low, 100, 1000) == pytest.approx((peak + low) / 2)
    assert lr_at(1000, peak, low, 100, 1000) == low and lr_at(5000, peak, low, 100, 1000) == low


def test_accumulation_change_does_not_distort_the_schedule(small_corpus, tmp_path):
    """Runs with different accumulation give every step the LR of the tokens seen once it is taken."""
    trainer, sink, _ = train(with_limits(tiny_config(small_corpus, tmp_path / "a", accum=2), 20))
    _, other, _ = train(with_limits(tiny_config(small_corpus, tmp_path / "b", accum=5), 20))
    for event in sink.of(StepEvent) + other.of(StepEvent):
        assert event.lr == pytest.approx(trainer.figures.lr_for(event.tokens_seen))
    by_tokens = {e.tokens_seen: e.lr for e in sink.of(StepEvent)}
    shared = [e for e in other.of(StepEvent) if e.tokens_seen in by_tokens]
    assert shared and all(by_tokens[e.tokens_seen] == pytest.approx(e.lr) for e in shared)


def test_first_warm_up_step_learns(small_corpus, tmp_path):
    """The first step's LR is its share of the warm-up, not ~0 (a wasted step)."""
    trainer, sink, _ = train(with_limits(tiny_config(small_corpus, tmp_path / "a", accum=2), 20))
    first = sink.of(StepEvent)[0]
    peak = trainer.cfg.optim.lr
    assert first.lr == pytest.approx(peak * (first.tokens + 1) / (trainer.figures.warmup_tokens() + 1))
    assert first.lr > peak * first.tokens / trainer.figures.warmup_tokens() / 2


def test_accum_change_applies_exactly_at_the_next_epoch(small_corpus, tmp_path):
    sink = ScriptedSink({2: lambda trainer: trainer.control.set_accum(4)})
    train(with_limits(tiny_config(small_corpus, tmp_path / "run", accum=2, epochs=2), 12), sink)
    request = sink.of(AccumChangeRequested)[0]
    applied = sink.of(AccumChangeApplied)[0]
    assert (request.old, request.new, request.applies_at_epoch) == (2, 4, 2)
    assert (applied.old, applied.new, applied.epoch) == (2, 4, 2)
    accum_by_epoch: dict[int, set[int]] = {}
    for r in read_metrics(tmp_path / "run"):
        if r["type"] == "step":
            accum_by_epoch.setdefault(r["epoch"], set()).add(r["accum"])
    assert accum_by_epoch == {1: {2}, 2: {4}}  # every step of epoch 1 at the old value, of epoch 2 at the new
    assert sink.events.index(applied) < sink.events.index(next(e for e in sink.of(StepEvent) if e.epoch == 2))


def test_events_cover_micro_steps_steps_epochs_and_the_end(small_corpus, tmp_path):
    _, sink, end = train(with_limits(tiny_config(small_corpus, tmp_path / "run", accum=3, epochs=2), 7))
    started = sink.of(RunStarted)[0]
    assert (started.train_examples, started.val_examples) == (7 * 4, 4 * 4)  # both as the limits cap them
    assert (started.val_batches, started.effective_batch) == (4, 4 * 3)
    assert [(e.micro_batch, e.effective_batch) for e in sink.of(EpochEvent)] == [(4, 4 * 3)] * 2
    micro = sink.of(MicroStep)
    assert [m.micro_step for m in micro[:3]] == [1, 2, 3] and micro[0].micro_steps == 3
    steps = sink.of(StepEvent)
    assert [s.micro_steps for s in steps if s.epoch == 1] == [3, 3, 1]  # 7 micro-batches: 3 + 3 + 1
    assert len(micro) == 14
    epochs = sink.of(EpochEvent)
    assert [e.epoch for e in epochs] == [1, 2]
    assert all(math.isfinite(e.train_loss) and math.isfinite(e.val_loss) for e in epochs)
    assert isinstance(sink.events[-1], RunEnded) and end.reason == "completed"
    # The epoch's train loss is the token-weighted mean of its steps.
    epoch1 = [s for s in steps if s.epoch == 1]
    weighted = sum(s.loss * s.tokens for s in epoch1) / sum(s.tokens for s in epoch1)
    assert epochs[0].train_loss == pytest.approx(weighted, rel=1e-6)


def test_pause_stops_steps_until_resumed(small_corpus, tmp_path):
    import threading
    import time

    paused_at = []

    def pause_for_half_a_second(trainer):
        paused_at.append(time.perf_counter())
        trainer.control.pause()
        threading.Timer(0.5, trainer.control.resume).start()

    sink = ScriptedSink({2: pause_for_half_a_second}, on=MicroStep, when=lambda event: event.micro_step == 1)
    train(with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 8), sink)
    from tui_trainer.events import Paused, Resumed
    paused, resumed = sink.of(Paused)[0], sink.of(Resumed)[0]
    between = sink.events[sink.events.index(paused):sink.events.index(resumed)]
    assert not [e for e in between if isinstance(e, (StepEvent, MicroStep))]
    assert len(sink.of(StepEvent)) == 4
