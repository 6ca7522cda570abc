"""Exact resume, in process: stop (or crash) a run anywhere, resume it, and the per-step losses
match the uninterrupted run bit for bit, with metrics.jsonl continued rather than repeated."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import nan_loss_at, tiny_config, with_limits

from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.precision import bf16_support, choose_precision
from tui_trainer.errors import UserError
from tui_trainer.events import (
    AccumChangeApplied,
    CheckpointSaved,
    EpochEvent,
    ListSink,
    MicroStep,
    RunEnded,
    RunStarted,
    StepEvent,
)
from tui_trainer.rundir.metrics import read_metrics
from tui_trainer.ui.view import RunView

# 20 micro-batches of 4 with accum 3: 6 full windows and a remainder window of 2 micro-batches.
TRAIN_BATCHES = 20
STEPS_PER_EPOCH = 7
STEP_KEYS = ("epoch", "step", "step_in_epoch", "micro_steps", "accum", "effective_batch", "tokens", "loss", "lr",
             "grad_norm", "tokens_seen", "skipped", "noise_scale", "suggested_accum")
EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "accum", "tokens_seen", "best_val_loss", "best_epoch", "noise_scale")


def resume_config(corpus: Path, run_dir: Path, **train):
    settings = dict(accum=3, epochs=3)
    settings.update(train)
    cfg = with_limits(tiny_config(corpus, run_dir, **settings), TRAIN_BATCHES)
    return cfg.replace(model=replace(cfg.model, dropout=0.1))  # dropout: RNG restoration really matters


class Script(ListSink):
    """A sink that steers the run like a user would: change accum or stop at a chosen moment.

    ``accum_at`` = (step, new accum), requested when that StepEvent is seen; ``stop_at`` is either
    ("micro", step, micro_step) — stop after that micro-step — or ("step", step) — stop once that
    step is done — or ("crash_epoch", epoch): raise (like a kill -9) as that epoch's record is written."""

    def __init__(self, accum_at=None, stop_at=None, accum_at_micro=None):
        super().__init__()
        self.trainer: Trainer | None = None
        self.accum_at, self.stop_at, self.accum_at_micro = accum_at, stop_at, accum_at_micro

    def emit(self, event):
        super().emit(event)
        control = self.trainer.control
        if isinstance(event, StepEvent) and self.accum_at and event.step == self.accum_at[0]:
            control.set_accum(self.accum_at[1])
        if isinstance(event, MicroStep) and self.accum_at_micro and \
                (event.step, event.micro_step) == self.accum_at_micro[:2]:
            control.set_accum(self.accum_at_micro[2])
        stop = self.stop_at
        if stop is None:
            return
        if stop[0] == "micro" and isinstance(event, MicroStep) and (event.step, event.micro_step) == stop[1:]:
            control.stop("interrupted")
        elif stop[0] == "step" and isinstance(event, StepEvent) and event.step == stop[1]:
            control.stop("interrupted")
        elif stop[0] == "crash_epoch" and isinstance(event, EpochEvent) and event.epoch == stop[1]:
            raise RuntimeError("simulated crash")


def run_trainer(cfg, sink: Script, nan_steps: frozenset[int] = frozenset(), **kwargs) -> tuple[Trainer, RunEnded]:
    trainer = Trainer(cfg, sink, **kwargs)
    sink.trainer = trainer
    nan_loss_at(trainer, nan_steps)
    end = trainer.run()
    return trainer, end


def records(run_dir: Path, kind: str, keys: tuple[str, ...]) -> list[tuple]:
    return [tuple(r[k] for k in keys) for r in read_metrics(run_dir) if r["type"] == kind]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shakespeare_text):
    """Uninterrupted runs, keyed by the accumulation request they make (computed once per module)."""
    base = tmp_path_factory.mktemp("reference")
    corpus = base / "corpus.txt"
    corpus.write_text(shakespeare_text[:20_000], encoding="utf-8")
    cache: dict = {}

    def get(accum_at=None, accum_at_micro=None, **train):
        key = (accum_at, accum_at_micro, tuple(sorted(train.items())))
        if key not in cache:
            run_dir = base / f"run{len(cache)}"
            _, end = run_trainer(resume_config(corpus, run_dir, **train), Script(accum_at, None, accum_at_micro))
            assert end.reason == "completed"
            cache[key] = (records(run_dir, "step", STEP_KEYS), records(run_dir, "epoch", EPOCH_KEYS))
        return cache[key]

    return corpus, get


CASES = {
    # stop mid-window, the partial window's gradient is dropped and redone
    "mid_window": dict(stop_at=("micro", 3, 2)),
    # stop after the last micro-step of a window (the window is complete but not yet applied)
    "window_end_micro": dict(stop_at=("micro", 5, 3)),
    # stop once the epoch's last (remainder) step is done, before validation
    "after_last_step_of_epoch": dict(stop_at=("step", STEPS_PER_EPOCH)),
    # a pending accumulation change (3 -> 2 at epoch 2) survives a stop in epoch 1
    "pending_accum_change": dict(accum_at=(2, 2), stop_at=("micro", 4, 1)),
    # ... and a stop in epoch 2 after it was applied
    "after_accum_change_applied": dict(accum_at=(2, 2), stop_at=("micro", 10, 2)),
    # a change requested inside an epoch's first window, stopped before that window finished
    "accum_change_in_first_window": dict(accum_at_micro=(1, 1, 5), stop_at=("micro", 1, 2)),
}


@pytest.mark.parametrize("case", CASES)
def test_stop_anywhere_then_resume_gives_the_uninterrupted_losses_bit_for_bit(case, reference, tmp_path):
    corpus, reference_of = reference
    spec = CASES[case]
    accum_at, accum_at_micro = spec.get("accum_at"), spec.get("accum_at_micro")
    want_steps, want_epochs = reference_of(accum_at, accum_at_micro)
    run_dir = tmp_path / "run"
    cfg = resume_config(corpus, run_dir)

    first = Script(accum_at, spec["stop_at"], accum_at_micro)
    _, end = run_trainer(cfg, first)
    assert end.reason == "interrupted"
    assert first.of(CheckpointSaved)[-1].kind == "latest"

    second = Script()  # the resumed session makes no requests: what was pending is in the checkpoint
    trainer, end = run_trainer(resume_config(corpus, tmp_path / "ignored"), second, resume=run_dir)
    assert end.reason == "completed", end.message
    assert second.of(RunStarted)[0].resumed_from_step == first.of(RunEnded)[0].steps

    assert records(run_dir, "step", STEP_KEYS) == want_steps  # every step once, identical losses
    assert records(run_dir, "epoch", EPOCH_KEYS) == want_epochs
    ends = [r["reason"] for r in read_metrics(run_dir) if r["type"] == "end"]
    assert ends == ["interrupted", "completed"]
    if accum_at or accum_at_micro:
        assert len(first.of(AccumChangeApplied) + second.of(AccumChangeApplied)) == 1


def test_crash_after_a_periodic_checkpoint_at_an_epochs_last_step_resumes_without_repeating_it(reference,
                                                                                             tmp_path):
    """--checkpoint-every 7 saves `latest` right after the epoch's last (remainder) step; a crash
    during that epoch's validation leaves that checkpoint and an epoch record it does not cover."""
    corpus, reference_of = reference
    want_steps, want_epochs = reference_of(checkpoint_every=STEPS_PER_EPOCH)
    run_dir = tmp_path / "run"
    _, end = run_trainer(resume_config(corpus, run_dir, checkpoint_every=STEPS_PER_EPOCH),
                         Script(stop_at=("crash_epoch", 1)))
    assert end.reason == "error"
    assert [r["epoch"] for r in read_metrics(run_dir) if r["type"] == "epoch"] == [1]  # written before the crash

    _, end = run_trainer(resume_config(corpus, run_dir), Script(), resume=run_dir)
    assert end.reason == "completed"
    assert records(run_dir, "step", STEP_KEYS) == want_steps
    assert records(run_dir, "epoch", EPOCH_KEYS) == want_epochs


def test_a_line_cut_short_by_a_crash_is_dropped_on_resume(reference, tmp_path):
    corpus, reference_of = reference
    want_steps, _ = reference_of()
    run_dir = tmp_path / "run"
    _, end = run_trainer(resume_config(corpus, run_dir), Script(stop_at=("step", 4)))
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"type": "step", "epoch": 1, "step": 5, "lo')  # a kill -9 mid-write
    _, end = run_trainer(resume_config(corpus, run_dir), Script(), resume=run_dir)
    assert end.reason == "completed"
    assert records(run_dir, "step", STEP_KEYS) == want_steps


def test_a_resume_of_a_run_with_damaged_metrics_continues_and_names_the_lines_it_set_aside(reference, tmp_path):
    """The metrics are a log, the checkpoint is the truth: bad lines never stop a resume, and are
    moved aside (named in the run's notes), never deleted."""
    corpus, reference_of = reference
    want_steps, _ = reference_of()
    run_dir = tmp_path / "run"
    run_trainer(resume_config(corpus, run_dir), Script(stop_at=("step", 4)))
    lines = (run_dir / "metrics.jsonl").read_bytes().split(b"\n")
    damaged = [b"[1,2,3]", b'{"type": "step", "step": 2, "loss": null}', b"\xff\xfe not UTF-8"]
    (run_dir / "metrics.jsonl").write_bytes(b"\n".join([lines[0], damaged[0], lines[1], damaged[1], damaged[2],
                                                         *lines[2:]]))
    sink = Script()
    _, end = run_trainer(resume_config(corpus, run_dir), sink, resume=run_dir)
    assert end.reason == "completed"
    assert records(run_dir, "step", STEP_KEYS) == want_steps
    notes = " ".join(sink.of(RunStarted)[0].notes)
    assert "line 2 (a JSON list, not an object), line 4 (its loss is null), line 5 (not UTF-8 text)" in notes, notes
    assert "metrics.set-aside.jsonl" in notes
    assert (run_dir / "metrics.set-aside.jsonl").read_bytes() == b"\n".join(damaged) + b"\n"


def test_safe_overrides_apply_and_are_logged_contradictions_are_refused(reference, tmp_path):
    corpus, _ = reference
    run_dir = tmp_path / "run"
    run_trainer(resume_config(corpus, run_dir), Script(stop_at=("step", 2)))

    sink = Script(stop_at=("step", 3))
    trainer, _ = run_trainer(resume_config(corpus, run_dir), sink, resume=run_dir,
                             overrides={"train.epochs": 5, "train.patience": 2, "train.device": "cpu"})
    assert trainer.cfg.train.epochs == 5 and trainer.cfg.train.patience == 2
    notes = " ".join(sink.of(RunStarted)[0].notes)
    assert "epochs" in notes and "5" in notes and "patience" in notes
    assert "device" not in notes  # the same value as the checkpoint's is no override

    for overrides, words in [({"model.n_embd": 64}, "--n-embd 64"), ({"model.n_layer": 2}, "--n-layer 2"),
                             ({"train.seed": 1}, "--seed 1")]:
        with pytest.raises(UserError) as refused:
            Trainer(resume_config(corpus, run_dir), ListSink(), resume=run_dir, overrides=overrides)
        assert words in refused.value.one_line() and "\n" not in refused.value.one_line()


@pytest.mark.parametrize("stop_at", [("micro", 3, 2), ("step", STEPS_PER_EPOCH), ("micro", STEPS_PER_EPOCH + 1, 1)],
                         ids=["mid_epoch_1", "after_epoch_1s_last_step", "start_of_epoch_2"])
def test_accum_given_with_resume_applies_at_the_next_epoch_boundary(stop_at, reference, tmp_path):
    """`--resume RUN --accum 2` = pressing `-` in epoch 1: the same losses as the run that did,
    bit for bit; resumed right at epoch 2's start, the change applies there."""
    corpus, get = reference
    expected_steps, expected_epochs = get(accum_at=(2, 2))
    run_dir = tmp_path / "run"
    run_trainer(resume_config(corpus, run_dir), Script(stop_at=stop_at))
    sink = Script()
    trainer, end = run_trainer(resume_config(corpus, run_dir), sink, resume=run_dir, overrides={"train.accum": 2})
    assert end.reason == "completed"
    assert "--accum 2 replaces accum 3" in " ".join(sink.of(RunStarted)[0].notes)
    assert [(a.old, a.new, a.epoch) for a in sink.of(AccumChangeApplied)] == [(3, 2, 2)]
    assert records(run_dir, "step", STEP_KEYS) == expected_steps
    assert records(run_dir, "epoch", EPOCH_KEYS) == expected_epochs
    with pytest.raises(UserError, match="--accum must be between 1 and 1024"):
        Trainer(resume_config(corpus, tmp_path / "x"), ListSink(), resume=run_dir, overrides={"train.accum": 0})


def test_accum_given_with_resume_equal_to_the_current_one_cancels_a_pending_change(reference, tmp_path):
    corpus, get = reference
    expected_steps, _ = get()  # no change at all
    run_dir = tmp_path / "run"
    run_trainer(resume_config(corpus, run_dir), Script(accum_at=(2, 2), stop_at=("step", 3)))  # 3 -> 2 pending
    sink = Script()
    run_trainer(resume_config(corpus, run_dir), sink, resume=run_dir, overrides={"train.accum": 3})
    notes = " ".join(sink.of(RunStarted)[0].notes)
    assert "accum 3 -> 2 is pending, for epoch 2" in notes and "cancels the pending change to 2" in notes
    assert sink.of(AccumChangeApplied) == []
    assert records(run_dir, "step", STEP_KEYS) == expected_steps


def test_accum_given_with_resume_at_an_epoch_start_moves_a_pending_change_to_now(reference, tmp_path):
    """Stopped inside epoch 1's first window with 3 -> 5 pending for epoch 2: `--accum 5` makes it
    apply at once, so the run equals one that had accum 5 from the start."""
    corpus, get = reference
    expected_steps, _ = get(accum=5)
    run_dir = tmp_path / "run"
    run_trainer(resume_config(corpus, run_dir), Script(accum_at_micro=(1, 1, 5), stop_at=("micro", 1, 2)))
    sink = Script()
    run_trainer(resume_config(corpus, run_dir), sink, resume=run_dir, overrides={"train.accum": 5})
    assert "replaces accum 3 now" in " ".join(sink.of(RunStarted)[0].notes)
    assert [(a.old, a.new, a.epoch) for a in sink.of(AccumChangeApplied)] == [(3, 5, 1)]
    assert records(run_dir, "step", STEP_KEYS) == expected_steps


def test_a_resumed_run_goes_on_counting_its_elapsed_time(reference, tmp_path):
    corpus, _ = reference
    run_dir = tmp_path / "run"
    first, _ = run_trainer(resume_config(corpus, run_dir), Script(stop_at=("step", 3)))
    saved = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["loop"]["elapsed_seconds"]
    assert 0 < saved <= first.session.elapsed_seconds()
    sink = Script(stop_at=("step", 5))
    second, _ = run_trainer(resume_config(corpus, run_dir), sink, resume=run_dir)
    assert sink.of(RunStarted)[0].elapsed_before == saved
    view = RunView()
    view.apply(sink.of(RunStarted)[0], now=100.0)
    assert view.elapsed(now=102.5) == pytest.approx(saved + 2.5)
    assert second.session.elapsed_seconds() > saved


def test_a_resumed_run_stopped_at_once_still_ends_with_its_diagnosis(reference, tmp_path):
    corpus, _ = reference
    run_dir = tmp_path / "run"
    # A NaN step in epoch 1 makes its verdict unstable: the histories alone would say healthy.
    _, first = run_trainer(resume_config(corpus, run_dir), Script(stop_at=("step", STEPS_PER_EPOCH + 2)),
                           nan_steps=frozenset({3}))
    assert first.diagnosis == "unstable"
    sink = Script(stop_at=("micro", STEPS_PER_EPOCH + 3, 1))
    _, end = run_trainer(resume_config(corpus, run_dir), sink, resume=run_dir)
    assert end.reason == "interrupted" and end.diagnosis == first.diagnosis


def test_a_format_1_checkpoint_still_resumes(reference, tmp_path):
    corpus, get = reference
    expected_steps, _ = get()
    run_dir = tmp_path / "run"
    run_trainer(resume_config(corpus, run_dir), Script(stop_at=("step", 3)))
    path = run_dir / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    state["format_version"] = 1
    del state["loop"]["elapsed_seconds"], state["loop"]["last_verdict"]  # what version 1 did not have
    torch.save(state, path)
    sink = Script()
    _, end = run_trainer(resume_config(corpus, run_dir), sink, resume=run_dir)
    assert end.reason == "completed" and sink.of(RunStarted)[0].elapsed_before == 0.0
    assert records(run_dir, "step", STEP_KEYS) == expected_steps


def test_resume_refuses_a_data_file_with_other_contents(reference, tmp_path):
    corpus, _ = reference
    run_dir = tmp_path / "run"
    run_trainer(resume_config(corpus, run_dir), Script(stop_at=("step", 1)))
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text(encoding="utf-8").replace("the", "teh"), encoding="utf-8")
    with pytest.raises(UserError, match="is not the one this run trained on"):
        Trainer(resume_config(other, run_dir), ListSink(), resume=run_dir, overrides={"data.path": str(other)})
    # The same contents under another name is fine.
    copy = tmp_path / "copy.txt"
    copy.write_bytes(corpus.read_bytes())
    trainer = Trainer(resume_config(copy, run_dir), ListSink(), resume=run_dir, overrides={"data.path": str(copy)})
    assert trainer.state.step == 1
    trainer.metrics.close()


def test_checkpoint_holds_everything_resume_needs(reference, tmp_path):
    import torch

    corpus, _ = reference
    run_dir = tmp_path / "run"
    run_trainer(resume_config(corpus, run_dir, patience=5), Script(accum_at=(8, 2), stop_at=("micro", 9, 1)))
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert state["format_version"] >= 1
    assert {"model", "optimizer", "early_stopping", "rng", "loop", "config", "vocab", "data_sha256"} <= state.keys()
    loop = state["loop"]
    # Stopped inside step 9 (epoch 2's second window): the checkpoint is at step 8's end.
    assert (loop["epoch"], loop["step"], loop["example_cursor"]) == (2, 8, 12)
    assert loop["accum"] == 3 and loop["pending_accum"] == 2
    assert state["early_stopping"]["best_epoch"] == 1
    assert {"torch", "python"} <= state["rng"].keys()
    assert json.loads(json.dumps(state["config"]))["model"]["n_embd"] == 32


def test_resuming_a_finished_run_is_refused_before_anything_is_written(reference, tmp_path, capsys):
    from tui_trainer.cli.main import main

    corpus, _ = reference
    run_dir = tmp_path / "run"
    _, end = run_trainer(resume_config(corpus, run_dir, epochs=1), Script())
    assert end.reason == "completed"
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    assert main(["--no-ui", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already finished 1 epochs" in err and "--epochs" in err
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before and not (run_dir / "error.log").exists()
    # More epochs continue it.
    _, end = run_trainer(resume_config(corpus, run_dir), Script(), resume=run_dir, overrides={"train.epochs": 2})
    assert end.reason == "completed" and end.epochs == 2


def test_resuming_an_early_stopped_run_needs_more_patience(reference, tmp_path):
    corpus, _ = reference
    run_dir = tmp_path / "run"
    cfg = resume_config(corpus, run_dir, epochs=6, patience=1, min_delta=10.0)  # no epoch can improve by 10
    _, end = run_trainer(cfg, Script())
    assert end.reason == "early_stop" and end.epochs == 2
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="stopped early") as refused:
        Trainer(cfg, ListSink(), resume=run_dir)
    assert "--patience" in refused.value.one_line()
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before
    _, end = run_trainer(cfg, Script(), resume=run_dir, overrides={"train.patience": 0})
    assert end.reason == "completed" and end.epochs == 6


needs_bf16 = pytest.mark.skipif(not bf16_support(torch.device("cpu")).works, reason="this CPU has no oneDNN bf16")


@needs_bf16
@pytest.mark.parametrize("case", ["mid_window", "after_last_step_of_epoch"])
def test_stop_then_resume_in_bf16_gives_the_uninterrupted_bf16_losses_bit_for_bit(case, reference, tmp_path):
    corpus, reference_of = reference
    want_steps, want_epochs = reference_of(precision="bf16")
    fp32_steps, _ = reference_of()
    assert [s[7] for s in want_steps] != [s[7] for s in fp32_steps]  # bf16 really ran: other losses than fp32
    run_dir = tmp_path / "run"
    first = Script(stop_at=CASES[case]["stop_at"])
    _, end = run_trainer(resume_config(corpus, run_dir, precision="bf16"), first)
    assert end.reason == "interrupted" and first.of(RunStarted)[0].precision == "bf16"
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["precision"] == "bf16"
    second = Script()
    _, end = run_trainer(resume_config(corpus, tmp_path / "ignored"), second, resume=run_dir)
    assert end.reason == "completed" and second.of(RunStarted)[0].precision == "bf16"
    assert records(run_dir, "step", STEP_KEYS) == want_steps
    assert records(run_dir, "epoch", EPOCH_KEYS) == want_epochs


def _recorded_as(run_dir: Path, precision: str | None) -> None:
    """Rewrite the checkpoint as if its run had trained in ``precision`` (None: a checkpoint from
    before precisions were recorded), e.g. under ``auto`` on a machine that chose differently."""
    path = run_dir / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    if precision is None:
        del state["precision"]
    else:
        state["precision"] = precision
    torch.save(state, path)


@needs_bf16
def test_a_resume_that_would_change_precision_is_refused_unless_precision_is_given(reference, tmp_path):
    corpus, _ = reference
    run_dir = tmp_path / "run"
    run_trainer(resume_config(corpus, run_dir, precision="auto"), Script(stop_at=("step", 2)))
    chosen_here = choose_precision("auto", torch.device("cpu"), model=resume_config(corpus, run_dir).model)[0]
    other = "fp32" if chosen_here == "bf16" else "bf16"
    _recorded_as(run_dir, other)
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match=f"trained in {other}.*would train in {chosen_here}") as refused:
        Trainer(resume_config(corpus, run_dir), ListSink(), resume=run_dir)
    assert f"--precision {other}" in refused.value.hint and f"--precision {chosen_here}" in refused.value.hint
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before  # nothing written
    # Asked for explicitly: the switch is made, and said.
    sink = Script(stop_at=("step", 3))
    run_trainer(resume_config(corpus, run_dir), sink, resume=run_dir, overrides={"train.precision": "auto"})
    started = sink.of(RunStarted)[0]
    assert started.precision == chosen_here
    assert any(f"switches this run from {other}" in note for note in started.notes)
    # ... and continuing in the checkpoint's own precision needs nothing more.
    _recorded_as(run_dir, other)
    trainer = Trainer(resume_config(corpus, run_dir), ListSink(), resume=run_dir,
                      overrides={"train.precision": other})
    assert trainer.session.precision == other and not any("switches" in note for note in trainer.session.notes)
    trainer.metrics.close()


def test_a_checkpoint_from_before_precisions_resumes_as_fp32_on_cpu(reference, tmp_path):
    corpus, get = reference
    expected_steps, _ = get()
    run_dir = tmp_path / "run"
    run_trainer(resume_config(corpus, run_dir), Script(stop_at=("step", 3)))  # fp32 (the fixture's)
    _recorded_as(run_dir, None)
    sink = Script()
    _, end = run_trainer(resume_config(corpus, run_dir), sink, resume=run_dir)
    assert end.reason == "completed" and sink.of(RunStarted)[0].precision == "fp32"
    assert records(run_dir, "step", STEP_KEYS) == expected_steps
