"""kill -9 at random moments of a run that checkpoints after every step: whatever moment the
kill lands on (often in the middle of writing a checkpoint), the checkpoint on disk loads and
the run resumes from it. Thirty kills, each followed by a resume of the same run dir."""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path

import torch

from tui_trainer.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import ListSink
from tui_trainer.rundir import checkpoints as ckpt

KILLS = 30  # about a quarter land mid-write: all 30 missing it is a 1-in-5000 event


def heavy_checkpoint_config(corpus: Path, run_dir: Path) -> RunConfig:
    """Little compute per step and a ~6 MB checkpoint after every step: most time goes to saving."""
    return RunConfig(model=ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=8, dropout=0.1),
                     data=DataConfig(path=str(corpus), limit_val_batches=1),
                     optim=OptimConfig(lr=1e-3),
                     train=TrainConfig(epochs=1000, micro_batch=1, accum=1, threads=1, patience=0, device="cpu",
                                       checkpoint_every=1),
                     run_dir=str(run_dir))


def train_until_killed(corpus: str, run_dir: str) -> None:
    cfg = heavy_checkpoint_config(Path(corpus), Path(run_dir))
    resume = run_dir if ckpt.checkpoint_path(run_dir).exists() else None
    Trainer(cfg, None, resume=resume).run()


def test_kill_9_at_random_moments_always_leaves_a_loadable_checkpoint(small_corpus, tmp_path):
    # forkserver: children fork from a clean process that has imported torch (fast) but never ran an
    # OpenMP region (a plain fork of this test process could deadlock in the child).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch._dynamo", "tui_trainer.engine.loop"])  # the optimizer imports dynamo: 1.5 s
    run_dir = tmp_path / "run"
    latest = ckpt.checkpoint_path(run_dir)
    rng = random.Random(20260101)
    steps, temps_left_behind = [], 0
    for kill in range(KILLS):
        before = latest.stat().st_mtime_ns if latest.exists() else None
        child = context.Process(target=train_until_killed, args=(str(small_corpus), str(run_dir)))
        child.start()
        deadline = time.monotonic() + 60
        # Wait for this child's first save, then kill it at a random moment of what follows.
        while not latest.exists() or latest.stat().st_mtime_ns == before:
            assert child.is_alive() and time.monotonic() < deadline, "the child never saved"
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.15))
        child.kill()  # SIGKILL: no handler, no cleanup
        child.join(timeout=30)
        assert child.exitcode == -9
        temps_left_behind += any(latest.parent.glob(".latest.pt.tmp-*"))
        state = ckpt.load_checkpoint(latest)  # raises on a torn or corrupt file
        assert all(torch.isfinite(t).all() for t in state["model"].values())
        steps.append(state["loop"]["step"])
    # Every child resumed where the one before it was killed, and got further.
    assert steps == sorted(steps) and len(set(steps)) == KILLS, steps
    print(f"kills mid-write: {temps_left_behind}/{KILLS}; steps {steps}")
    # The kills really did land mid-write (a temp file was being written) at least once.
    assert temps_left_behind >= 1, "no kill landed during a checkpoint write; make writes dominate"
    # And the final state resumes.
    trainer = Trainer(heavy_checkpoint_config(small_corpus, run_dir), ListSink(), resume=run_dir)
    assert trainer.state.step == steps[-1]
    trainer.metrics.close()
