"""``--compile`` on a CPU: the graph's dropout draws eager's random numbers (inductor's own CPU RNG made
the compiled forward 0.57x eager's: benchmarks/README.md, section 10). Set-up only: nothing compiles."""

from __future__ import annotations

import torch
import torch._inductor.config as inductor_config
from helpers import tiny_config

from tui_trainer.engine.loop import Trainer
from tui_trainer.events import ListSink


def test_compile_on_a_cpu_keeps_eager_random_ops_in_the_graph(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(inductor_config, "fallback_random", False)  # (restored after the test)
    trainer = Trainer(tiny_config(small_corpus, tmp_path / "run", compile=True), ListSink())
    try:
        assert isinstance(trainer.session.train_model, torch._dynamo.eval_frame.OptimizedModule)
        assert inductor_config.fallback_random is True
    finally:
        trainer.metrics.close()


def test_no_compile_leaves_inductor_alone(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(inductor_config, "fallback_random", False)
    trainer = Trainer(tiny_config(small_corpus, tmp_path / "run"), ListSink())
    try:
        assert not isinstance(trainer.session.train_model, torch._dynamo.eval_frame.OptimizedModule)
        assert inductor_config.fallback_random is False
    finally:
        trainer.metrics.close()
