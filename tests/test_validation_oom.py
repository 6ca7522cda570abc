"""An out-of-memory in the validation pass (engine/loop.py validation_loss, engine/oom.py): the
pass is redone at half its micro-batch, and its loss (a token-weighted sum) is the same to float
rounding; said on screen and in metrics.jsonl; below micro-batch 1 the run stops with its checkpoint.
Two processes: every rank redoes the pass (they agree in the pass's own sum)."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import pytest
import torch
from helpers import tiny_config, train
from test_distributed import MODEL, cli, ended, epochs, run

from tui_trainer.events import EpochEvent, ListSink, Notice, SplitChanged
from tui_trainer.rundir.checkpoints import checkpoint_path, load_checkpoint, save_atomic
from tui_trainer.rundir.metrics import read_metrics

EXACT = 1e-6  # the same token-weighted sum in another order of batches: float rounding only


def _config(corpus, run_dir, **train_fields):
    cfg = tiny_config(corpus, run_dir, **{"epochs": 2, "micro_batch": 4, "accum": 2, **train_fields})
    return cfg.replace(data=replace(cfg.data, limit_train_batches=8, limit_val_batches=4))


def _out_of_memory_in_validation(trainer, nth: int, size: int, sizes: list[int]) -> None:
    """From outside: the model's forward raises torch.OutOfMemoryError once, at the ``nth``
    validation forward of the run, when its batch holds ``size`` sequences; ``sizes`` gets every
    validation batch's size."""
    model, forward, seen = trainer.model, trainer.model.forward, {"calls": 0}

    def forward_or_out_of_memory(idx, targets=None):
        if targets is not None and not model.training:
            seen["calls"] += 1
            sizes.append(idx.shape[0])
            if seen["calls"] == nth and idx.shape[0] == size:
                raise torch.OutOfMemoryError("out of memory (injected by the test)")
        return forward(idx, targets)

    model.forward = forward_or_out_of_memory


def test_an_out_of_memory_in_validation_halves_its_micro_batch_and_gives_the_same_val_loss(small_corpus, tmp_path):
    _, clean, _ = train(_config(small_corpus, tmp_path / "clean"))
    sizes: list[int] = []
    _, sink, end = _trained_with(_config(small_corpus, tmp_path / "oom"),
                                 lambda t: _out_of_memory_in_validation(t, nth=2, size=4, sizes=sizes))
    assert end.reason == "completed"  # the run went on: its second epoch too
    # Epoch 1: batch 1 at 4, out of memory at batch 2; the pass redone at 2 (its 4 batches cut in 8);
    # epoch 2 keeps the smaller validation micro-batch.
    assert sizes == [4, 4] + [2] * 8 + [2] * 8
    a, b = clean.of(EpochEvent), sink.of(EpochEvent)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert y.val_loss == pytest.approx(x.val_loss, rel=EXACT) and y.train_loss == x.train_loss
    change = sink.of(SplitChanged)[0]
    assert change.phase == "validation" and (change.old_micro_batch, change.new_micro_batch) == (4, 2)
    assert change.describe() == "memory: validation micro-batch 4 -> 2 after an out-of-memory in the validation after step 4"
    assert any("validation micro-batch 4 -> 2" in n.message and "same val loss" in n.message
               for n in sink.of(Notice))
    records = [r for r in read_metrics(tmp_path / "oom") if r["type"] == "memory"]
    assert len(records) == 1 and records[0]["phase"] == "validation" and records[0]["new_micro_batch"] == 2


def test_the_redone_validation_pass_equals_the_uninterrupted_one(small_corpus, tmp_path):
    trainer, _, _ = train(_config(small_corpus, tmp_path / "r", epochs=1))
    clean = trainer.evaluate()
    sizes: list[int] = []
    _out_of_memory_in_validation(trainer, nth=3, size=4, sizes=sizes)
    assert trainer.evaluate() == pytest.approx(clean, rel=EXACT)
    assert sizes == [4, 4, 4] + [2] * 8


def test_an_out_of_memory_in_validation_at_micro_batch_1_stops_with_the_checkpoint(small_corpus, tmp_path):
    cfg = _config(small_corpus, tmp_path / "r", micro_batch=1)
    trainer, _, end = _trained_with(cfg, lambda t: _out_of_memory_in_validation(t, nth=1, size=1, sizes=[]))
    assert end.reason == "error" and end.steps == 4  # (8 micro-batches of 1, accum 2: 4 steps)
    assert end.message.startswith("out of memory in the validation after step 4 even at micro-batch 1")
    assert "is saved" in end.message
    saved = load_checkpoint(checkpoint_path(tmp_path / "r"))
    assert saved["loop"]["step"] == 4 and saved["loop"]["epoch"] == 1  # a resume validates epoch 1 again
    assert trainer.error is None  # an ending, not a crash: no error.log, no traceback
    assert not (tmp_path / "r" / "error.log").exists()


def _trained_with(cfg, prepare):
    from helpers import ScriptedSink

    from tui_trainer.engine.loop import Trainer

    sink = ScriptedSink()
    trainer = Trainer(cfg, sink)
    prepare(trainer)
    return trainer, sink, trainer.run()


INJECT = '''
import os
import torch
from tui_trainer.model import gpt

forward, calls = gpt.GPT.forward, [0]

def forward_or_out_of_memory(self, idx, targets=None):
    if targets is not None and not self.training and os.environ.get("RANK") == "1":
        calls[0] += 1
        if calls[0] == 2:  # rank 1's second validation batch of the run
            raise torch.OutOfMemoryError("out of memory (injected by the test)")
    return forward(self, idx, targets)

gpt.GPT.forward = forward_or_out_of_memory
'''


def test_two_processes_redo_the_validation_pass_together_and_get_the_same_val_loss(small_corpus, tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(INJECT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")])}
    common = ["--data", str(small_corpus), *MODEL, "--dropout", "0", "--epochs", "2", "--micro-batch", "4",
              "--accum", "2", "--limit-train-batches", "16", "--nproc", "2"]
    recovered = run(cli(*common, "--run-dir", str(tmp_path / "oom")), env=env)
    assert recovered.returncode == 0, recovered.stdout[-2000:] + recovered.stderr[-3000:]
    clean = run(cli(*common, "--run-dir", str(tmp_path / "clean")))
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-3000:]
    a, b = epochs(tmp_path / "clean"), epochs(tmp_path / "oom")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=EXACT) and y["train_loss"] == x["train_loss"]
    memory = [r for r in read_metrics(tmp_path / "oom") if r["type"] == "memory"]
    assert len(memory) == 1 and memory[0]["phase"] == "validation" and memory[0]["ranks"] == [1]
    assert "validation micro-batch 4 -> 2 after an out-of-memory on rank 1" in recovered.stdout
    assert ended(tmp_path / "oom")["reason"] == "completed"


def test_a_resume_starts_validation_at_the_halved_micro_batch_and_old_checkpoints_load(small_corpus, tmp_path):
    """The halved validation micro-batch is in the checkpoint: a resumed run validates at it from the
    first pass (before, it ran out of memory again at the first validation and halved again). A
    checkpoint from before the field loads at the planned size."""
    from tui_trainer.engine.loop import Trainer

    run_dir = tmp_path / "r"
    _, _, end = _trained_with(_config(small_corpus, run_dir, epochs=1),
                              lambda t: _out_of_memory_in_validation(t, nth=2, size=4, sizes=[]))
    assert end.reason == "completed"
    saved = load_checkpoint(checkpoint_path(run_dir, "latest"))
    assert saved["loop"]["val_micro_split"] == 2

    def resumed(where):
        sizes: list[int] = []
        trainer = Trainer(_config(small_corpus, where), ListSink(), resume=where, overrides={"train.epochs": 2})
        _out_of_memory_in_validation(trainer, nth=0, size=0, sizes=sizes)  # (records the sizes only)
        return sizes, trainer.run()

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    sizes, end = resumed(run_dir)
    assert end.reason == "completed" and sizes == [2] * 8  # epoch 2's pass, at 2 from its first batch
    # A checkpoint written before the field: it loads, and validation starts at the planned 4.
    path = checkpoint_path(old, "latest")
    state = load_checkpoint(path)
    del state["loop"]["val_micro_split"]
    save_atomic(state, path)
    sizes, end = resumed(old)
    assert end.reason == "completed" and sizes == [4] * 4
