"""A run --init-from a model: epoch 0 validates the starting weights before any step (what
fine-tuning buys, beside what it started from), early stopping measures against it, a resume never
repeats it; and fine-tuning's defaults (a small lr by width, no warm-up) under the flags."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import CORPUS
from test_val_bpb import target_bytes

from tui_trainer.cli.headless import HeadlessLog
from tui_trainer.cli.main import main
from tui_trainer.config import DataConfig, ModelConfig, RunConfig
from tui_trainer.data.dataset import load_corpus
from tui_trainer.data.tokenizer import train_bpe
from tui_trainer.events import EpochEvent, RunStarted, ValidationProgress
from tui_trainer.rundir.init_source import check_init_from, finetune_lr, init_state_dict, read_init_source
from tui_trainer.rundir.metrics import read_metrics
from tui_trainer.rundir.reader import parse_line
from tui_trainer.ui.view import RunView

transformers = pytest.importorskip("transformers")

BLOCK, MICRO_BATCH, VAL_BATCHES = 32, 4, 2
COMMON = ["--no-ui", "--block-size", str(BLOCK), "--micro-batch", str(MICRO_BATCH), "--accum", "1",
          "--threads", "1", "--limit-train-batches", "3", "--limit-val-batches", str(VAL_BATCHES),
          "--sample-tokens", "0", "--precision", "fp32", "--dropout", "0"]


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A 2-layer GPT-2 of width 32 with random weights and a byte-level BPE, as save_pretrained writes them."""
    folder = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     activation_function="gelu_new", bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    train_bpe(iter([CORPUS.read_text(encoding="utf-8")[:20_000]]), 300).save(folder)
    return folder


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def their_val_loss(folder, corpus) -> float:
    """The source's mean loss over the first windows of the validation split, by transformers."""
    tokens = load_corpus(DataConfig(path=str(corpus)), BLOCK, tokenizer=read_init_source(folder).tokenizer).val_tokens
    windows = VAL_BATCHES * MICRO_BATCH
    ids = np.asarray(tokens[:windows * BLOCK + 1], dtype=np.int64)
    rows = torch.tensor(np.stack([ids[i * BLOCK:(i + 1) * BLOCK + 1] for i in range(windows)]))
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(rows[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1)).item()


def test_a_run_from_a_model_validates_it_as_epoch_0_before_any_step(gpt2_folder, corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*COMMON, "--init-from", str(gpt2_folder), "--data", str(corpus), "--run-dir", str(run_dir),
                 "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    records = [r for r in read_metrics(run_dir) if r["type"] in ("step", "epoch")]
    start = records[0]
    assert (start["type"], start["epoch"], start["train_loss"], start["tokens_seen"]) == ("epoch", 0, "nan", 0)
    assert start["val_loss"] == pytest.approx(their_val_loss(gpt2_folder, corpus), abs=1e-4)
    source = read_init_source(gpt2_folder).tokenizer
    val_tokens = load_corpus(DataConfig(path=str(corpus)), BLOCK, tokenizer=source).val_tokens
    windows = VAL_BATCHES * MICRO_BATCH
    n_bytes = target_bytes(source, val_tokens, windows)
    assert start["val_bpb"] == pytest.approx(start["val_loss"] * windows * BLOCK / math.log(2) / n_bytes, rel=1e-9)
    assert records[1]["type"] == "step" and [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1, 2]
    line = next(line for line in out.splitlines() if line.startswith("epoch 0/2"))
    assert f"val_loss={start['val_loss']:.4f} val_bpb={start['val_bpb']:.4f} (before training, from " \
           f"{gpt2_folder})" in line, line
    assert "train_loss" not in line
    # The training epochs are the run's: the verdict and the end count them, not epoch 0.
    end = next(r for r in read_metrics(run_dir) if r["type"] == "end")
    assert end["epochs"] == 2
    # The run line says which defaults fine-tuning chose (width 32: 3e-5 x 768 / 32).
    assert ("fine-tuning defaults: lr 0.00072 (3e-05 x 768 / width 32), no warm-up, held for 80% of the run, "
            "then decayed to x0.1") in out, out
    optim = json.loads((run_dir / "config.json").read_text())["config"]["optim"]
    assert (optim["lr"], optim["warmup_tokens"], optim["lr_hold"]) == (pytest.approx(7.2e-4), 0, 0.8)
    # constant, then decay: the first steps all train at the peak (no warm-up), the last below it
    rates = [r["lr"] for r in read_metrics(run_dir) if r["type"] == "step"]
    assert rates[0] == rates[1] == pytest.approx(7.2e-4) and rates[-1] < rates[0]


def test_a_resume_does_not_repeat_epoch_0(gpt2_folder, corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*COMMON, "--init-from", str(gpt2_folder), "--data", str(corpus), "--run-dir", str(run_dir),
                 "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["--resume", str(run_dir), "--epochs", "2", "--no-ui"]) == 0
    assert "epoch 0/" not in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(run_dir) if r["type"] == "epoch"] == [0, 1, 2]


def test_fine_tuning_that_never_beats_the_start_stops_early_with_the_start_as_best(gpt2_folder, corpus, tmp_path,
                                                                                   capsys):
    """A learning rate too small to move the weights: no epoch beats epoch 0 by --min-delta, so
    patience 1 ends the run after epoch 1, and the best weights are the source's."""
    run_dir = tmp_path / "run"
    assert main([*COMMON, "--init-from", str(gpt2_folder), "--data", str(corpus), "--run-dir", str(run_dir),
                 "--epochs", "3", "--lr", "1e-12", "--weight-decay", "0", "--patience", "1",
                 "--min-delta", "0.01"]) == 0
    end = next(r for r in read_metrics(run_dir) if r["type"] == "end")
    assert (end["reason"], end["epochs"], end["best_epoch"]) == ("early_stop", 1, 0)
    assert f"best_val_loss={end['best_val_loss']:.4f} (epoch 0)" in capsys.readouterr().out
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)["model"]
    source = init_state_dict(read_init_source(gpt2_folder), BLOCK)
    assert all(torch.equal(best[name], source[name]) for name in source)


def test_fine_tuning_defaults_follow_the_width_and_flags_override_them(gpt2_folder):
    cfg = RunConfig().replace(model=replace(ModelConfig(), init_from=str(gpt2_folder)))
    chosen = check_init_from(cfg, {})
    assert (chosen.optim.lr, chosen.optim.warmup_tokens) == (pytest.approx(3e-5 * 768 / 32), 0)
    flags = cfg.replace(optim=replace(cfg.optim, lr=2e-3, warmup_tokens=1000))  # (as config_from_args sets them)
    given = check_init_from(flags, {"optim.lr": 2e-3, "optim.warmup_tokens": 1000})
    assert (given.optim.lr, given.optim.warmup_tokens) == (2e-3, 1000)
    assert finetune_lr(768) == pytest.approx(3e-5)  # GPT-2 small: nanoGPT's finetune_shakespeare
    assert finetune_lr(1600) == pytest.approx(1.44e-5)  # GPT-2 XL
    assert finetune_lr(8) == RunConfig().optim.lr  # never above a run from random weights


def test_epoch_0_is_no_training_epoch_for_the_app_and_the_headless_log():
    started = RunStarted(run_dir="runs/x", device="cpu", threads=1, parameters=1000, vocab_size=300,
                         train_examples=64, val_examples=16, epochs=3, micro_batch=4, accum=4, processes=1,
                         block_size=64, planned_tokens=3 * 64 * 64, init_from="/models/gpt2")
    start = EpochEvent(epoch=0, epochs=3, train_loss=float("nan"), val_loss=5.1, val_bpb=2.0, accum=4,
                       effective_batch=16, micro_batch=4, tokens_seen=0, seconds=1.5, diagnosis="",
                       best_val_loss=5.1, best_epoch=0)
    view = RunView()
    for event in (started, ValidationProgress(epoch=0, batch=4, batches=4, seconds=1.5), start):
        view.apply(event, 0.0)
    assert (view.epochs_done, view.diagnosis, view.best_epoch) == (0, None, 0)
    assert view.epoch_points[0].step == 0 and view._eta.epochs_done == 0
    out = io.StringIO()
    log = HeadlessLog(out=out, progress=False)
    log.emit(started)
    log.emit(start)
    assert "epoch 0/3 val_loss=5.1000 val_bpb=2.0000 (before training, from /models/gpt2)" in out.getvalue()
    # metrics.jsonl spells the missing train loss as every non-finite float: "nan", read back as NaN
    record = json.dumps({"type": "epoch", **{k: ("nan" if k == "train_loss" else v) for k, v in start.__dict__.items()}})
    read = parse_line(record.encode(), 1).event
    assert read.before_training and math.isnan(read.train_loss) and read.val_bpb == 2.0


async def test_the_app_draws_epoch_0_as_the_start_of_the_val_curve_and_a_row_of_the_table():
    from screen import screen_text

    from tui_trainer.events import StepEvent
    from tui_trainer.ui.factory import create_replay_app
    from tui_trainer.ui.widgets import LossPlot

    started = RunStarted(run_dir="runs/x", device="cpu", threads=1, parameters=1000, vocab_size=300,
                         train_examples=64, val_examples=16, epochs=3, micro_batch=4, accum=4, processes=1,
                         block_size=64, planned_tokens=3 * 64 * 64, init_from="/models/gpt2")
    events = [started, EpochEvent(epoch=0, epochs=3, train_loss=float("nan"), val_loss=5.1, val_bpb=2.0, accum=4,
                                  effective_batch=16, micro_batch=4, tokens_seen=0, seconds=1.5, diagnosis="",
                                  best_val_loss=5.1, best_epoch=0)]
    for step in range(1, 5):
        events.append(StepEvent(epoch=1, step=step, step_in_epoch=step, steps_in_epoch=4, micro_steps=4, accum=4,
                                micro_batch=4, effective_batch=16, tokens=1024, loss=5.0 - step / 10, lr=1e-4,
                                grad_norm=0.5, tokens_seen=1024 * step, tokens_per_s=5000.0))
    events.append(EpochEvent(epoch=1, epochs=3, train_loss=4.75, val_loss=4.8, val_bpb=1.9, accum=4,
                             effective_batch=16, micro_batch=4, tokens_seen=4096, seconds=2.0, diagnosis="learning",
                             best_val_loss=4.8, best_epoch=1))
    app = create_replay_app()
    async with app.run_test(size=(180, 50)) as pilot:  # wide: the epoch table in the side column, a row an epoch
        app.feed(events)
        app.tick()
        await pilot.pause()
        app.redraw_plot()
        await pilot.pause()
        text = screen_text(app)
        drawn, done = app.query_one(LossPlot).points_drawn, app.view.epochs_done
    start = next(line for line in text.splitlines() if "5.1000" in line and "start" in line)
    assert "—" in start and "2.0000" in start, start  # no train loss; its bpb
    assert any("learning" in line and "4.7500" in line for line in text.splitlines()), text
    assert done == 1  # (epoch 0 is no epoch done: the progress bar's third)
    assert drawn == 4 + 2  # four steps and the two val points (epoch 0's has no train point)
