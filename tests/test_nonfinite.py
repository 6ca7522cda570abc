"""Non-finite losses and gradients: the step is skipped (weights and optimizer state untouched),
counted and reported as `unstable` with its step; after --max-bad-steps in a row the run ends
with `error`, a hint to lower the learning rate, and the last good checkpoint intact."""

from __future__ import annotations

import json
import math

import torch
from helpers import nan_loss_at, tiny_config, with_limits

from tui_trainer.cli.main import main
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import CheckpointSaved, DiagnosisEvent, ListSink, MicroStep, Notice, StepEvent
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir.metrics import read_metrics


class Snapshots(ListSink):
    """Copies of the weights and the AdamW state after every step."""

    def __init__(self, poison_grad_at: int | None = None):
        super().__init__()
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.adam: dict[int, list[torch.Tensor]] = {}
        self.poison_grad_at = poison_grad_at
        self.trainer: Trainer | None = None
        self._hook = None

    def emit(self, event):
        super().emit(event)
        model = self.trainer.model
        if isinstance(event, StepEvent):
            self.weights[event.step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.adam[event.step] = [s["exp_avg_sq"].clone() for s in self.trainer.optimizer.state.values()]
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
        if (isinstance(event, MicroStep) and event.step == self.poison_grad_at and event.micro_step == 1
                and self._hook is None):
            # A real autograd hook: from the next micro-step on, this step's gradient is NaN
            # while its loss stays finite.
            weight = next(p for p in model.parameters() if p.dim() == 2)
            self._hook = weight.register_hook(lambda grad: torch.full_like(grad, math.nan))


def run(cfg, sink: Snapshots, nan_steps: frozenset[int] = frozenset()):
    trainer = Trainer(cfg, sink)
    sink.trainer = trainer
    nan_loss_at(trainer, nan_steps)
    return trainer, trainer.run()


def test_a_nan_loss_is_skipped_counted_reported_and_leaves_the_weights_alone(small_corpus, tmp_path):
    sink = Snapshots()
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1, accum=2), 16)
    trainer, end = run(cfg, sink, nan_steps=frozenset({3}))
    assert end.reason == "completed"
    step3 = [s for s in sink.of(StepEvent) if s.step == 3][0]
    assert step3.skipped and math.isnan(step3.loss)
    assert not any(s.skipped for s in sink.of(StepEvent) if s.step != 3)
    for name, before in sink.weights[2].items():
        assert torch.equal(sink.weights[3][name], before), name  # the update was not applied
        assert not torch.equal(sink.weights[4][name], before) or "ln" in name or "bias" in name
    assert all(torch.equal(a, b) for a, b in zip(sink.adam[2], sink.adam[3]))  # nor the optimizer state
    verdicts = [d for d in sink.of(DiagnosisEvent) if d.step == 3]
    assert verdicts and verdicts[0].kind == "unstable" and "step 3" in verdicts[0].reason
    assert any("step 3" in n.message and n.level == "warning" for n in sink.of(Notice))
    assert trainer.state.bad_steps_total == 1 and trainer.state.bad_steps_in_row == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    record = [r for r in read_metrics(tmp_path / "run") if r["type"] == "step" and r["step"] == 3][0]
    assert record["skipped"] is True and record["loss"] == "nan"


def test_a_nan_gradient_with_a_finite_loss_is_skipped_too(small_corpus, tmp_path):
    sink = Snapshots(poison_grad_at=3)
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1, accum=2), 16)
    trainer, end = run(cfg, sink)
    assert end.reason == "completed"
    step3 = [s for s in sink.of(StepEvent) if s.step == 3][0]
    assert step3.skipped and math.isfinite(step3.loss) and math.isnan(step3.grad_norm)
    for name, before in sink.weights[2].items():
        assert torch.equal(sink.weights[3][name], before), name
    assert all(torch.equal(a, b) for a, b in zip(sink.adam[2], sink.adam[3]))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(s["exp_avg"]).all() for s in trainer.optimizer.state.values())


def test_max_bad_steps_in_a_row_ends_with_error_and_keeps_the_last_good_checkpoint(small_corpus, tmp_path):
    sink = Snapshots()
    run_dir = tmp_path / "run"
    cfg = with_limits(tiny_config(small_corpus, run_dir, epochs=1, accum=2, checkpoint_every=1, max_bad_steps=3), 16)
    trainer, end = run(cfg, sink, nan_steps=frozenset({4, 5, 6}))
    assert end.reason == "error" and end.steps == 6
    assert "3 non-finite steps in a row" in end.message and "lower the learning rate" in end.message
    assert "the last good checkpoint (step 3) is intact" in end.message
    assert end.diagnosis == "unstable"
    assert [e.step for e in sink.of(CheckpointSaved)] == [1, 2, 3]  # none written during the bad streak
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))
    assert state["loop"]["step"] == 3 and state["loop"]["bad_steps_in_row"] == 0
    for name, weight in state["model"].items():
        assert torch.equal(weight, sink.weights[3][name]) and torch.isfinite(weight).all()
    assert read_metrics(run_dir)[-1]["reason"] == "error"


def test_bad_steps_must_be_in_a_row_to_stop(small_corpus, tmp_path):
    sink = Snapshots()
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1, accum=2, max_bad_steps=2), 16)
    trainer, end = run(cfg, sink, nan_steps=frozenset({2, 4, 6}))
    assert end.reason == "completed" and trainer.state.bad_steps_total == 3


def test_an_absurd_learning_rate_through_the_cli_is_stopped_with_a_hint(small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--lr", "1e6",
                 "--warmup-tokens", "0", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
                 "--micro-batch", "4", "--accum", "2", "--threads", "1", "--limit-train-batches", "16",
                 "--checkpoint-every", "1"])
    out = capsys.readouterr().out
    assert code == 1
    assert "diagnosis=unstable at step" in out and "lower the learning rate — start again with --lr 100000" in out
    records = read_metrics(run_dir)
    skipped = [r["step"] for r in records if r["type"] == "step" and r["skipped"]]
    assert len(skipped) == 3 and skipped == list(range(skipped[0], skipped[0] + 3))
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "error"
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))
    assert state["loop"]["step"] == skipped[0] - 1
    assert all(torch.isfinite(w).all() for w in state["model"].values())
    json.dumps(records)  # every line stayed valid JSON (NaN written as a string)


def test_an_epoch_that_ends_diverged_before_max_bad_steps_is_an_error_and_saves_nothing(small_corpus, tmp_path):
    """--lr 1e308 on a short epoch: fewer non-finite steps than --max-bad-steps, a val loss of nan,
    and the run used to end "completed" with exit 0 (and its epoch's sample a RuntimeError)."""
    from tui_trainer.config import OptimConfig

    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1, max_bad_steps=5), 3, 2)
    trainer = Trainer(cfg.replace(optim=OptimConfig(lr=1e308, warmup_tokens=0)), ListSink())
    end = trainer.run()
    assert trainer.error is None
    assert end.reason == "error" and "validation loss is nan after epoch 1: the weights diverged" in end.message
    assert not ckpt.checkpoint_path(tmp_path / "run").exists()
