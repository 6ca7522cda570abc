"""An out-of-memory under several processes (engine/oom.py, step.py): 2 CPU processes with gloo,
the out-of-memory injected on rank 1 alone by wrapping the model's forward from outside (a
sitecustomize, as test_distributed's fp16 test does). Every rank adopts the same new split at the
same step (the ranks agree before the gradients' sum), the trajectory is the one an uninterrupted
run at the smaller split takes, and below micro-batch 1 every rank stops with the checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_distributed import MODEL, cli, ended, epochs, run, steps

from tui_trainer.rundir.checkpoints import checkpoint_path, load_checkpoint
from tui_trainer.rundir.metrics import read_metrics

TOLERANCE = 1e-5  # the accumulation-equivalence tolerance (fp32)

# Every rank records the size of each training forward (its split, seen from outside); rank 1 raises
# torch.OutOfMemoryError once, at its OOM_AT-th training forward (a device that ran out would).
INJECT = '''
import os
import torch
from tui_trainer.model import gpt

forward, calls = gpt.GPT.forward, [0]
rank = os.environ.get("RANK", "0")
at = int(os.environ.get("OOM_AT", "0"))
where = os.environ["OOM_SIZES_DIR"]

def forward_or_out_of_memory(self, idx, targets=None):
    if targets is not None and self.training:
        calls[0] += 1
        with open(os.path.join(where, f"rank{rank}.txt"), "a") as sizes:
            sizes.write(f"{idx.shape[0]}\\n")
        if rank == "1" and calls[0] == at:
            raise torch.OutOfMemoryError("out of memory (injected by the test)")
    return forward(self, idx, targets)

gpt.GPT.forward = forward_or_out_of_memory
'''


def _injected(tmp_path: Path, at: int) -> tuple[dict[str, str], Path]:
    inject, sizes = tmp_path / "inject", tmp_path / "sizes"
    inject.mkdir()
    sizes.mkdir()
    (inject / "sitecustomize.py").write_text(INJECT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")]),
           "OOM_AT": str(at), "OOM_SIZES_DIR": str(sizes)}
    return env, sizes


def _sizes(folder: Path, rank: int) -> list[int]:
    return [int(line) for line in (folder / f"rank{rank}.txt").read_text().split()]


def test_an_out_of_memory_on_one_rank_switches_every_rank_at_the_same_step_and_keeps_the_trajectory(
        small_corpus, tmp_path):
    # 64 sequences an epoch (16 micro-batches of 4), windows of 16: 4 steps an epoch, 2 micro-steps a rank.
    common = ["--data", str(small_corpus), *MODEL, "--dropout", "0", "--epochs", "2", "--nproc", "2"]
    env, sizes = _injected(tmp_path, at=3)  # rank 1's first micro-step of step 2
    recovered = run(cli(*common, "--micro-batch", "4", "--accum", "2", "--limit-train-batches", "16",
                        "--run-dir", str(tmp_path / "oom")), env=env)
    assert recovered.returncode == 0, recovered.stdout[-2000:] + recovered.stderr[-3000:]
    steady = run(cli(*common, "--micro-batch", "2", "--accum", "4", "--limit-train-batches", "32",
                     "--limit-val-batches", "8", "--run-dir", str(tmp_path / "steady")))
    assert steady.returncode == 0, steady.stdout[-2000:] + steady.stderr[-3000:]

    # Both ranks: step 1 at 4 x 2, then step 2 redone (and every later step taken) at 2 x 4.
    # (Rank 0 finished its first try at step 2; rank 1 ran out at its first micro-step and skipped the other.)
    assert _sizes(sizes, 0) == [4, 4] + [4, 4] + [2] * 4 + [2] * 4 * 6
    assert _sizes(sizes, 1) == [4, 4] + [4] + [2] * 4 + [2] * 4 * 6
    memory = [r for r in read_metrics(tmp_path / "oom") if r["type"] == "memory"]
    assert len(memory) == 1 and memory[0]["step"] == 2 and memory[0]["ranks"] == [1]
    assert (memory[0]["old_micro_batch"], memory[0]["new_micro_batch"]) == (4, 2)
    assert (memory[0]["old_accum"], memory[0]["new_accum"]) == (2, 4)
    assert "micro-batch 4 -> 2, accum 2 -> 4 after an out-of-memory on rank 1 at step 2" in recovered.stdout
    a, b = steps(tmp_path / "oom"), steps(tmp_path / "steady")
    assert [(s["micro_batch"], s["accum"]) for s in a] == [(4, 2)] + [(2, 4)] * 7
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):
        assert (x["step"], x["tokens"]) == (y["step"], y["tokens"])
        assert x["loss"] == pytest.approx(y["loss"], rel=TOLERANCE)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=TOLERANCE)
    for x, y in zip(epochs(tmp_path / "oom"), epochs(tmp_path / "steady")):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=TOLERANCE)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=TOLERANCE)  # (the same 16 validation sequences)
    assert ended(tmp_path / "oom")["reason"] == "completed"


def test_an_out_of_memory_at_micro_batch_1_on_one_rank_stops_every_rank_with_the_checkpoint(small_corpus, tmp_path):
    env, sizes = _injected(tmp_path, at=3)  # rank 1's first micro-step of step 2, at micro-batch 1
    run_dir = tmp_path / "run"
    done = run(cli("--data", str(small_corpus), *MODEL, "--dropout", "0", "--epochs", "1", "--micro-batch", "1",
                   "--accum", "2", "--limit-train-batches", "16", "--run-dir", str(run_dir), "--nproc", "2"), env=env)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    end = ended(run_dir)
    assert end["reason"] == "error" and end["steps"] == 1
    assert "out of memory at step 2 (on rank 1) even at micro-batch 1" in end["message"]
    assert "--checkpoint-activations" in end["message"]
    said = [line for line in (done.stdout + done.stderr).splitlines() if "even at micro-batch 1" in line]
    assert len(said) == 1, done.stdout[-2000:] + done.stderr[-2000:]  # rank 0 says it, once
    saved = load_checkpoint(checkpoint_path(run_dir))
    assert saved["loop"]["step"] == 1  # the last step taken, its window to redo on resume
    assert _sizes(sizes, 0) == [1, 1, 1, 1] and _sizes(sizes, 1) == [1, 1, 1]  # nobody went on alone
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
