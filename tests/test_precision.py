"""Which precision a run trains in, and what bf16 autocast leaves in fp32."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config, train, with_limits

import tui_trainer.engine.step as step_module
from tui_trainer.cli.main import main
from tui_trainer.config import ModelConfig
from tui_trainer.data.dataset import WindowDataset, load_corpus
from tui_trainer.engine.accumulation import accumulate_window
from tui_trainer.engine.precision import (
    CPU_BF16_MIN_WIDTH,
    Bf16Support,
    auto_reason,
    bf16_support,
    choose_precision,
    cpu_bf16_pays,
    resume_precision,
)
from tui_trainer.errors import UserError
from tui_trainer.model.gpt import GPT

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
NATIVE = Bf16Support(works=True, native=True, why="bf16 units")
EMULATED = Bf16Support(works=True, native=False, why="emulated")
NONE = Bf16Support(works=False, native=False, why="none")
# Shapes either side of the CPU's crossover (benchmarks/precision_crossover.py).
WIDE = ModelConfig(n_layer=6, n_head=8, n_embd=256, block_size=128)  # the seed model
NARROW = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)  # the tests' tiny model


@pytest.mark.parametrize("device", [CPU, MPS])
def test_auto_picks_bf16_only_on_bf16_hardware(device):
    assert choose_precision("auto", device, NATIVE, model=WIDE) == ("bf16", torch.bfloat16)
    # emulated bf16 is slower than fp32
    assert choose_precision("auto", device, EMULATED, model=WIDE) == ("fp32", None)
    assert choose_precision("auto", device, NONE, model=WIDE) == ("fp32", None)


def test_auto_on_a_cpu_with_bf16_units_picks_bf16_only_for_a_model_wide_enough():
    assert choose_precision("auto", CPU, NATIVE, model=NARROW) == ("fp32", None)  # bf16 is slower there
    at = ModelConfig(n_layer=4, n_head=4, n_embd=CPU_BF16_MIN_WIDTH, block_size=128)
    below = ModelConfig(n_layer=4, n_head=4, n_embd=CPU_BF16_MIN_WIDTH - 32, block_size=128)
    assert choose_precision("auto", CPU, NATIVE, model=at) == ("bf16", torch.bfloat16)
    assert choose_precision("auto", CPU, NATIVE, model=below) == ("fp32", None)
    assert cpu_bf16_pays(CPU_BF16_MIN_WIDTH, 64) and not cpu_bf16_pays(CPU_BF16_MIN_WIDTH - 1, 512)
    # The rule is the CPU's: a GPU or MPS with bf16 takes it for any shape.
    assert choose_precision("auto", CUDA, NATIVE, model=NARROW) == ("bf16", torch.bfloat16)
    assert choose_precision("auto", MPS, NATIVE, model=NARROW) == ("bf16", torch.bfloat16)


def test_auto_says_why_it_chose():
    assert auto_reason("cpu", NATIVE, NARROW) == (
        f"--precision auto: fp32 (bf16 is slower than fp32 below width {CPU_BF16_MIN_WIDTH} on a CPU, "
        "this model is 32 wide: benchmarks/precision_crossover.py)")
    assert auto_reason("cpu", NATIVE, WIDE).startswith("--precision auto: bf16 (bf16 units; bf16 is faster from width")
    assert auto_reason("cpu", NONE, WIDE) == "--precision auto: fp32 (no bf16 units: none)"
    assert auto_reason("cuda", EMULATED, NARROW) == "--precision auto: fp16 with loss scaling (no bf16 units: emulated)"
    assert auto_reason("meta", NATIVE, WIDE) == "--precision auto: fp32 (bf16 was never measured on meta)"


def test_auto_without_the_model_is_a_bug_not_a_guess():
    with pytest.raises(ValueError, match="model"):
        choose_precision("auto", CPU, NATIVE)


def test_auto_on_a_cuda_card_without_bf16_units_is_fp16():
    assert choose_precision("auto", CUDA, NATIVE, model=WIDE) == ("bf16", torch.bfloat16)
    assert choose_precision("auto", CUDA, EMULATED, model=WIDE) == ("fp16", torch.float16)
    assert choose_precision("auto", CUDA, NONE, model=WIDE) == ("fp16", torch.float16)


def test_auto_is_fp32_on_a_device_type_nobody_measured():
    assert choose_precision("auto", torch.device("meta"), NATIVE, model=WIDE) == ("fp32", None)


def test_fp32_is_fp32_everywhere_and_bf16_runs_wherever_it_works_whatever_the_shape():
    for support in (NATIVE, EMULATED, NONE):
        assert choose_precision("fp32", CPU, support) == ("fp32", None)
    assert choose_precision("bf16", CPU, EMULATED) == ("bf16", torch.bfloat16)
    assert choose_precision("BF16 ", CPU, NATIVE) == ("bf16", torch.bfloat16)
    assert choose_precision("bf16", CPU, NATIVE, model=NARROW) == ("bf16", torch.bfloat16)


def test_bf16_asked_for_without_bf16_is_a_user_error_that_names_the_fix():
    with pytest.raises(UserError, match="no bf16") as refused:
        choose_precision("bf16", CPU, NONE)
    assert "--precision auto or fp32" in refused.value.hint
    with pytest.raises(UserError, match="unknown precision"):
        choose_precision("fp8", CPU, NATIVE)


def test_this_cpu_is_asked_through_onednn():
    support = bf16_support(CPU)
    assert support.works == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert not support.native or support.works


def test_resume_keeps_the_recorded_precision_or_refuses():
    assert resume_precision("auto", CPU, "bf16", resuming=True, explicit=False, support=NATIVE, model=WIDE)[:2] == \
        ("bf16", torch.bfloat16)
    with pytest.raises(UserError, match="trained in bf16.*would train in fp32") as refused:
        resume_precision("auto", CPU, "bf16", resuming=True, explicit=False, support=NONE, model=WIDE)
    # bf16 cannot run here, so the hint offers only the switch.
    assert refused.value.hint == "pass --precision fp32 to switch"
    name, _, note = resume_precision("fp32", CPU, "bf16", resuming=True, explicit=True, support=NONE, model=WIDE)
    assert name == "fp32" and "switches this run from bf16" in note
    # A new run has nothing to keep.
    assert resume_precision("auto", CPU, "fp32", resuming=False, explicit=False, support=NATIVE, model=WIDE)[2] == ""
    # A narrow model that trained in bf16 under the old auto: the resume asks which to continue in.
    with pytest.raises(UserError, match="trained in bf16.*would train in fp32") as refused:
        resume_precision("auto", CPU, "bf16", resuming=True, explicit=False, support=NATIVE, model=NARROW)
    assert refused.value.hint == "pass --precision bf16 to continue as it trained, or pass --precision fp32 to switch"


@pytest.mark.skipif(not bf16_support(CPU).works, reason="this CPU has no oneDNN bf16")
def test_bf16_autocast_leaves_weights_gradients_and_the_loss_sum_in_fp32(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path)
    corpus = load_corpus(cfg.data, cfg.model.block_size)
    data = WindowDataset(corpus.train_tokens, cfg.model.block_size, CPU)
    results = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = GPT(cfg.model.__class__(**{**cfg.model.__dict__, "vocab_size": corpus.vocab.size}))
        loss_total, _ = accumulate_window(model, data, torch.arange(8), [(0, 4), (4, 8)], autocast_dtype=dtype)
        assert loss_total.dtype == torch.float32
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
        results[dtype] = loss_total.item()
    # The forward really ran in bf16: close to fp32, but not the same number.
    assert results[None] != results[torch.bfloat16]
    assert results[torch.bfloat16] == pytest.approx(results[None], rel=0.02)


def test_a_precision_that_does_not_exist_is_one_line_and_exit_2(small_corpus, tmp_path, capsys):
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"), "--precision", "fp8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--precision" in err
    assert not (tmp_path / "run").exists()


def test_the_headless_run_line_says_the_precision(small_corpus, tmp_path, capsys):
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"), "--precision", "fp32",
                 "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--epochs", "1",
                 "--limit-train-batches", "2", "--limit-val-batches", "1", "--micro-batch", "2", "--accum", "1"])
    assert code == 0
    assert "precision=fp32" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "fp32"


def test_the_run_line_says_why_auto_chose(small_corpus, tmp_path, capsys):
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"),
                 "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--epochs", "1",
                 "--limit-train-batches", "2", "--limit-val-batches", "1", "--micro-batch", "2", "--accum", "1"])
    out = capsys.readouterr().out
    assert code == 0
    reason = auto_reason("cpu", bf16_support(CPU), NARROW)
    assert f"note: {reason}" in out
    # 32 wide: fp32 on every CPU (no bf16 units, or bf16 units and a model below the crossover)
    assert "precision=fp32" in out and "--precision auto: fp32" in reason


def _window_as_before(model, dataset, indices, micro_batches, *, total_tokens=None, autocast_dtype=None,
                      between_micro_steps=None, increments=None, no_sync=None, loss_scale=None):
    """The bf16 window as it has always run (one process, no fp16): each micro-step's forward under its
    own autocast context, each backward outside autocast. The reference the engine must match."""
    micro_batches = list(micro_batches)
    loss_total = torch.zeros((), dtype=torch.float32)
    if increments is not None:
        increments.start_window()
    for i, (start, stop) in enumerate(micro_batches):
        inputs, targets = dataset.batch(indices[start:stop])
        with torch.autocast("cpu", dtype=autocast_dtype):
            loss_sum = model(inputs, targets)
        (loss_sum / total_tokens).backward()
        if increments is not None and len(micro_batches) > 1:
            increments.after_backward(first=i == 0, last=i + 1 == len(micro_batches))
        loss_total += loss_sum.detach().float()
        between_micro_steps(i)
    return loss_total, total_tokens


@pytest.mark.skipif(not bf16_support(CPU).works, reason="this CPU has no oneDNN bf16")
def test_bf16_steps_are_per_micro_step_autocast_bit_for_bit(small_corpus, tmp_path, monkeypatch):
    # Losses, norms and weights after 8 steps (remainder windows included) equal those of the window
    # above. Keeping autocast's cast cache over a window by one outer context with the backward left
    # inside it changes the gradients (benchmarks/autocast_cache.py): this fails on such a change.
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "a", precision="bf16", accum=3, epochs=2), 10)
    cfg = cfg.replace(model=cfg.model.__class__(**{**cfg.model.__dict__, "n_embd": 64, "dropout": 0.1}))
    runs = []
    for name in ("engine", "before"):
        if name == "before":
            monkeypatch.setattr(step_module, "accumulate_window", _window_as_before)
        trainer, sink, _ = train(cfg.replace(run_dir=str(tmp_path / name)))
        steps = [e for e in sink.events if type(e).__name__ == "StepEvent"]
        runs.append(([e.loss for e in steps], [e.grad_norm for e in steps],
                     [p.detach().clone() for p in trainer.model.parameters()]))
    (losses, norms, weights), (want_losses, want_norms, want_weights) = runs
    assert len(losses) == 8 and losses == want_losses and norms == want_norms
    assert all(torch.equal(a, b) for a, b in zip(weights, want_weights))


def test_bf16_asked_for_a_narrow_model_on_a_cpu_is_noted_and_a_wide_one_is_not():
    """A cold trial: `auto` said bf16 is slower below width 128, but `--precision bf16` at width 32 said nothing."""
    from tui_trainer.engine.precision import CPU_BF16_MIN_WIDTH, run_line_notes

    cpu = torch.device("cpu")
    narrow = run_line_notes("bf16", cpu, False, n_embd=32)
    assert len(narrow) == 1 and "32 wide no faster than fp32" in narrow[0] and "auto picks fp32" in narrow[0]
    assert run_line_notes("bf16", cpu, False, n_embd=CPU_BF16_MIN_WIDTH) == []
    assert run_line_notes("fp32", cpu, False, n_embd=32) == []
