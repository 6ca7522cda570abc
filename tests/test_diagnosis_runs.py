"""Regression tests on recorded real runs (tests/data/diagnosis_runs/, written by
`python benchmarks/diagnosis.py --record DIR` from each run's metrics.jsonl): issue 17's three
complaints, replayed epoch by epoch as the engine diagnoses them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import ScriptedSink, stop, tiny_config, train, with_limits

from tui_trainer.analysis.diagnosis import Diagnosis, SchedulePosition, verdicts_over
from tui_trainer.config import DiagnosisConfig
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import ListSink
from tui_trainer.rundir.metrics import read_metrics

RUNS = Path(__file__).resolve().parent / "data" / "diagnosis_runs"
CFG = DiagnosisConfig()


def load(name: str) -> dict:
    return json.loads((RUNS / f"{name}.json").read_text(encoding="utf-8"))


def replay(run: dict) -> list[Diagnosis]:
    s = run["schedule"]
    schedules = [SchedulePosition.at(t, s["peak_lr"], s["min_lr"], s["warmup_tokens"], s["total_tokens"])
                 for t in run["tokens_seen"]]
    return verdicts_over(run["train"], run["val"], run["vocab_size"], CFG, run["steps"], run["first_steps"], schedules)


def changes(kinds: list[str]) -> list[tuple[int, str, str]]:
    return [(e + 2, a, b) for e, (a, b) in enumerate(zip(kinds, kinds[1:])) if a != b]


def test_the_memorising_run_no_longer_flip_flops():
    run = load("memorise")
    # The recorded run is issue 17's: epochs 16-23 read like this before.
    assert run["recorded_verdicts"][15:23] == ["underfitting", "underfitting", "overfitting", "overfitting",
                                              "underfitting", "healthy", "healthy", "overfitting"]
    verdicts = replay(run)
    kinds = [v.kind for v in verdicts]
    assert changes(kinds) == [(22, "learning", "healthy"), (24, "healthy", "overfitting")]
    # Overfitting, once established, stays (val never gets back to its best of epoch 21).
    best = min(range(len(run["val"])), key=lambda i: run["val"][i]) + 1
    assert best == 21 and all(v.since_epoch == best + 1 for v in verdicts[23:])
    change = verdicts[23].reason
    assert change.startswith("since epoch 22: val 2.61 -> 2.67 while train 2.36 -> 2.29") and "(was healthy)" in change


def test_the_memorising_run_is_learning_at_epoch_3_not_underfitting():
    verdict = replay(load("memorise"))[2]
    assert verdict.kind == "learning" and "3.98 -> 3.86 -> 3.71" in verdict.reason


def test_the_six_epoch_run_ending_on_the_lr_floor_is_not_told_to_raise_the_lr():
    run = load("short6")
    assert run["recorded_verdicts"][-1] == "underfitting"  # what it said before
    last = replay(run)[-1]
    assert "higher learning rate" not in last.remedy
    assert "schedule in its tail (lr 1.0e-04)" in last.remedy and "a longer run" in last.remedy


def test_the_small_model_plateaus_in_the_tail_as_underfitting_with_a_capacity_remedy():
    last = replay(load("underfit"))[-1]
    assert last.kind == "underfitting"
    assert "larger model" in last.remedy and "tail" in last.remedy and "higher learning rate" not in last.remedy


def test_the_seed_model_at_lr_3e_2_is_unstable_at_once_and_told_to_lower_the_lr():
    run = load("lr3e-2")
    assert run["recorded_verdicts"][0] == "healthy"  # the old spike rule missed a loss of 7.94 > ln(65)
    verdicts = replay(run)
    assert verdicts[0].kind == "unstable" and "step 3 loss 5.29" in verdicts[0].reason
    assert verdicts[-1].unstable_epoch == 1 and "lower the learning rate" in verdicts[-1].remedy


@pytest.mark.parametrize("name", sorted(p.stem for p in RUNS.glob("*.json")))
def test_no_underfitting_while_train_still_falls(name):
    run = load(name)
    losses = run["train"]
    falling = [e for e in range(1, len(losses)) if (losses[e - 1] - losses[e]) / losses[e - 1] > CFG.plateau_improvement]
    assert falling, f"{name}: no epoch where train falls, nothing to check"
    verdicts = replay(run)
    assert len(verdicts) == len(losses)
    assert [e + 1 for e in falling if verdicts[e].kind == "underfitting"] == [], name


# -- the engine: the verdict state survives a resume --------------------------------------------------

def _epoch_verdicts(run_dir: Path) -> list[tuple]:
    return [(r["epoch"], r["diagnosis"], r["diagnosis_reason"], r["remedy"]) for r in read_metrics(run_dir)
            if r["type"] == "epoch"]


@pytest.mark.parametrize("stop_step", [10, 12])  # mid-epoch 3; the end of epoch 3 (4 steps an epoch)
def test_a_resumed_run_diagnoses_every_epoch_as_the_uninterrupted_run(small_corpus, tmp_path, stop_step):
    def config(run_dir):
        cfg = with_limits(tiny_config(small_corpus, run_dir, epochs=6, micro_batch=4, accum=2), 8)
        # Slow to change, and a constant lr (no tail to shortcut it): the verdicts after the resume
        # hang on the state before it.
        return cfg.replace(diagnosis=DiagnosisConfig(confirm_epochs=3),
                           optim=replace(cfg.optim, min_lr_ratio=1.0))

    straight = Trainer(config(tmp_path / "straight"), ListSink())
    straight.run()
    _, _, end = train(config(tmp_path / "resumed"), ScriptedSink({stop_step: stop()}))
    assert end.reason == "interrupted"
    resumed = Trainer(config(tmp_path / "resumed"), ListSink(), resume=tmp_path / "resumed")
    resumed.run()
    assert _epoch_verdicts(tmp_path / "resumed") == _epoch_verdicts(tmp_path / "straight")
    # The whole verdict state (since when, what pattern, how long it has held), not only the words.
    assert resumed.last_diagnosis == straight.last_diagnosis and straight.last_diagnosis.epoch == 6
    assert (straight.last_diagnosis.kind, straight.last_diagnosis.since_epoch) == ("learning", 1)



def test_the_engine_says_live_what_the_replay_of_its_history_says(small_corpus, tmp_path):
    """The engine passes the previous verdict and the schedule position as ``verdicts_over`` does:
    a 6-epoch cosine run ends in the schedule's tail, so a missing schedule would show."""
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=6, micro_batch=4, accum=2), 8)
    straight = Trainer(cfg, ListSink())
    straight.run()
    records = read_metrics(tmp_path / "run")
    epochs = [r for r in records if r["type"] == "epoch"]
    steps = [[r["loss"] for r in records if r["type"] == "step" and r["epoch"] == e["epoch"]] for e in epochs]
    first_steps = [min(r["step"] for r in records if r["type"] == "step" and r["epoch"] == e["epoch"]) for e in epochs]
    o = cfg.optim
    schedules = [SchedulePosition.at(e["tokens_seen"], o.lr, o.lr * o.min_lr_ratio, straight.figures.warmup_tokens(),
                                     straight.figures.planned_tokens()) for e in epochs]
    replayed = verdicts_over([e["train_loss"] for e in epochs], [e["val_loss"] for e in epochs],
                             straight.session.corpus.vocab.size, cfg.diagnosis, steps, first_steps, schedules)
    assert [(v.kind, v.reason, v.remedy) for v in replayed] == [(e["diagnosis"], e["diagnosis_reason"], e["remedy"])
                                                               for e in epochs]
    assert replayed[-1] == straight.last_diagnosis and "schedule in its tail" in replayed[-1].remedy
