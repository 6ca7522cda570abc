"""A checkpoint whose CRCs are fine but whose contents do not fit is one line and exit 2, and the run
dir is left exactly as it was (no trimmed metrics, no error.log, no temp file)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL

from tui_trainer.cli.main import main
from tui_trainer.rundir import checkpoints as ckpt

TINY = [*TINY_MODEL, "--limit-train-batches", "2", "--limit-val-batches", "1"]


@pytest.fixture(scope="module")
def saved_state(trained_run) -> tuple[Path, dict]:
    """The session's trained run and its checkpoint (tests copy both before they change them)."""
    return trained_run, torch.load(ckpt.checkpoint_path(trained_run), weights_only=True)


def _first_weight(state: dict) -> str:
    return next(iter(state["model"]))


MISFITS: dict[str, tuple[Callable[[dict], None], str]] = {
    "weight of another shape": (lambda s: s["model"].__setitem__(_first_weight(s), torch.zeros(3, 3)), "shape"),
    "weight missing": (lambda s: s["model"].pop(_first_weight(s)), "lack"),
    "extra weight": (lambda s: s["model"].__setitem__("extra.weight", torch.zeros(2)), "extra"),
    "config of another model": (lambda s: s["config"]["model"].__setitem__("n_layer", 2), "lack"),
    "vocab size not the vocabulary's": (lambda s: s["config"]["model"].__setitem__("vocab_size", 7), "vocab_size"),
    "config n_layer a string": (lambda s: s["config"]["model"].__setitem__("n_layer", "two"), "n_layer"),
    "vocabulary not strings": (lambda s: s.__setitem__("vocab", [1, 2, 3]), "vocabulary"),
    "extra loop key": (lambda s: s["loop"].__setitem__("surprise", 1), "surprise"),
    "loop epoch a string": (lambda s: s["loop"].__setitem__("epoch", "two"), "epoch"),
    "loop step a float": (lambda s: s["loop"].__setitem__("step", 1.5), "step"),
    "loop accum zero": (lambda s: s["loop"].__setitem__("accum", 0), "accum"),
    "loop val_micro_split zero": (lambda s: s["loop"].__setitem__("val_micro_split", 0), "val_micro_split"),
    "loop pending accum negative": (lambda s: s["loop"].__setitem__("pending_accum", -2), "pending_accum"),
    "loop elapsed seconds NaN": (lambda s: s["loop"].__setitem__("elapsed_seconds", float("nan")), "elapsed_seconds"),
    "loop a count negative": (lambda s: s["loop"].__setitem__("bad_steps_total", -1), "bad_steps_total"),
    "loop history of strings": (lambda s: s["loop"].__setitem__("val_history", ["low"]), "val_history"),
    "loop state not a table": (lambda s: s.__setitem__("loop", [1, 2]), "loop state"),
    "early stopping best a string": (lambda s: s["early_stopping"].__setitem__("best", "x"), "best"),
    "early stopping count missing": (lambda s: s["early_stopping"].pop("epochs_without_improvement"),
                                     "epochs_without_improvement"),
    "torch rng of the wrong type": (lambda s: s["rng"].__setitem__("torch", torch.zeros(4)), "random"),
    "python rng cut short": (lambda s: s["rng"].__setitem__("python", [1, 2, 3]), "random"),
    "optimizer moments of another shape": (
        lambda s: s["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(1)), "exp_avg"),
    "optimizer of another model": (lambda s: s["optimizer"]["param_groups"][0]["params"].pop(), "parameters"),
    "data hash not a hash": (lambda s: s.__setitem__("data_sha256", 12), "SHA-256"),
    "saved by 2 processes without their rng": (lambda s: s.__setitem__("world_size", 2), "one random-number state"),
    "a rank's rng cut short": (lambda s: s.update(world_size=2, rng_ranks=[s["rng"], {"torch": s["rng"]["torch"],
                                                                                     "python": [1]}]), "random"),
    "world size a string": (lambda s: s.__setitem__("world_size", "2"), "world size"),
}


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(MISFITS))
def test_a_checkpoint_whose_contents_do_not_fit_is_one_line_and_changes_nothing(case, saved_state, tmp_path,
                                                                                capsys):
    import copy
    import shutil

    source, state = saved_state
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    state = copy.deepcopy(state)
    mutate, expected = MISFITS[case]
    mutate(state)
    torch.save(state, ckpt.checkpoint_path(run_dir))  # a valid zip: the CRCs are fine
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"type": "step", "step": 99}\n')  # a record a resume would trim: it must stay
    before = snapshot(run_dir)
    code = main(["--no-ui", "--resume", str(run_dir), "--epochs", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("error: ") and "does not fit together" in err
    assert expected in err
    assert snapshot(run_dir) == before


def test_a_checkpoint_of_the_first_format_without_the_newer_loop_fields_still_resumes(saved_state, tmp_path):
    import copy
    import shutil

    source, state = saved_state
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    state = copy.deepcopy(state)
    state["format_version"] = 1
    del state["loop"]["elapsed_seconds"], state["loop"]["last_verdict"]
    torch.save(state, ckpt.checkpoint_path(run_dir))
    assert main(["--no-ui", "--resume", str(run_dir), "--epochs", "2"]) == 0
