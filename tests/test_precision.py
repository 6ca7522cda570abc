"""Which precision a run trains in, and what bf16 autocast leaves in fp32."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config

from tui_trainer.cli.main import main
from tui_trainer.data.dataset import WindowDataset, load_corpus
from tui_trainer.engine.accumulation import accumulate_window
from tui_trainer.engine.precision import Bf16Support, bf16_support, choose_precision, resume_precision
from tui_trainer.errors import UserError
from tui_trainer.model.gpt import GPT

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
NATIVE = Bf16Support(works=True, native=True, why="bf16 units")
EMULATED = Bf16Support(works=True, native=False, why="emulated")
NONE = Bf16Support(works=False, native=False, why="none")


@pytest.mark.parametrize("device", [CPU, MPS])
def test_auto_picks_bf16_only_on_bf16_hardware(device):
    assert choose_precision("auto", device, NATIVE) == ("bf16", torch.bfloat16)
    assert choose_precision("auto", device, EMULATED) == ("fp32", None)  # emulated bf16 is slower than fp32
    assert choose_precision("auto", device, NONE) == ("fp32", None)


def test_auto_on_a_cuda_card_without_bf16_units_is_fp16():
    assert choose_precision("auto", CUDA, NATIVE) == ("bf16", torch.bfloat16)
    assert choose_precision("auto", CUDA, EMULATED) == ("fp16", torch.float16)
    assert choose_precision("auto", CUDA, NONE) == ("fp16", torch.float16)


def test_auto_is_fp32_on_a_device_type_nobody_measured():
    assert choose_precision("auto", torch.device("meta"), NATIVE) == ("fp32", None)


def test_fp32_is_fp32_everywhere_and_bf16_runs_wherever_it_works():
    for support in (NATIVE, EMULATED, NONE):
        assert choose_precision("fp32", CPU, support) == ("fp32", None)
    assert choose_precision("bf16", CPU, EMULATED) == ("bf16", torch.bfloat16)
    assert choose_precision("BF16 ", CPU, NATIVE) == ("bf16", torch.bfloat16)


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
    assert resume_precision("auto", CPU, "bf16", resuming=True, explicit=False, support=NATIVE)[:2] == \
        ("bf16", torch.bfloat16)
    with pytest.raises(UserError, match="trained in bf16.*would train in fp32") as refused:
        resume_precision("auto", CPU, "bf16", resuming=True, explicit=False, support=NONE)
    # bf16 cannot run here, so the hint offers only the switch.
    assert refused.value.hint == "pass --precision fp32 to switch"
    name, _, note = resume_precision("fp32", CPU, "bf16", resuming=True, explicit=True, support=NONE)
    assert name == "fp32" and "switches this run from bf16" in note
    # A new run has nothing to keep.
    assert resume_precision("auto", CPU, "fp32", resuming=False, explicit=False, support=NATIVE)[2] == ""


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
