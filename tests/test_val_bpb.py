"""val_bpb in the engine and its consumers: each epoch's val loss in bits per byte of the text the
pass read (its first val_examples windows: --limit-val-batches respected), written to the epoch
records, read back (old records without it too), and shown in the headless line and the epoch table."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from helpers import tiny_config, with_limits
from test_bits_per_byte import gpt2_byte_decoder

from tui_trainer.cli.headless import HeadlessLog
from tui_trainer.data.tokenizer import CharTokenizer
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import EpochEvent, RunStarted
from tui_trainer.rundir.metrics import read_metrics
from tui_trainer.rundir.reader import parse_line

VAL_BATCHES, MICRO_BATCH, BLOCK = 3, 4, 32


def target_bytes(tokenizer, val_tokens, windows: int) -> int:
    """The UTF-8 bytes of the targets of the first ``windows`` windows, from the tokens' text
    (independent of data/bits_per_byte.py): a char's own bytes, a byte-level token's bytes."""
    ids = np.asarray(val_tokens[1:windows * BLOCK + 1], dtype=np.int64)
    if isinstance(tokenizer, CharTokenizer):
        return len(tokenizer.decode(ids).encode("utf-8"))
    decoder = gpt2_byte_decoder()
    spelled = {i: t for t, i in tokenizer.tokenizer.get_vocab().items()}
    return sum(len(bytes(decoder[c] for c in spelled[int(i)])) for i in ids)


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_val_bpb_is_the_val_loss_in_bits_over_the_bytes_the_pass_read(tmp_path, shakespeare_text, tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_text[:20_000].replace("e", "é"), encoding="utf-8")  # 2 bytes: not one a token
    cfg = with_limits(tiny_config(corpus, tmp_path / "run", epochs=2, micro_batch=MICRO_BATCH), 3, VAL_BATCHES)
    if tokenizer == "bpe":
        cfg = cfg.replace(data=replace(cfg.data, tokenizer="bpe", vocab_size=300))
    trainer = Trainer(cfg)
    assert trainer.run().reason == "completed"
    corpus_tokens = trainer.session.corpus
    windows = VAL_BATCHES * MICRO_BATCH  # the pass reads only these (the split holds many more)
    assert (len(corpus_tokens.val_tokens) - 1) // BLOCK > windows
    n_bytes = target_bytes(corpus_tokens.vocab, corpus_tokens.val_tokens, windows)
    bytes_per_token = n_bytes / (windows * BLOCK)
    assert bytes_per_token > 1.03  # (BPE: several bytes a token)
    epochs = [r for r in read_metrics(tmp_path / "run") if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for record in epochs:
        assert record["val_bpb"] == pytest.approx(record["val_loss"] / math.log(2) / bytes_per_token, rel=1e-9)


def epoch_event(**fields) -> EpochEvent:
    values = {"epoch": 1, "epochs": 3, "train_loss": 2.5, "val_loss": 2.6, "accum": 4, "effective_batch": 16,
              "micro_batch": 4, "tokens_seen": 4096, "seconds": 3.0}
    return EpochEvent(**{**values, **fields})


def test_epoch_records_without_val_bpb_still_read_and_new_ones_read_it_back():
    old = {"type": "epoch", **{k: v for k, v in epoch_event().__dict__.items() if k != "val_bpb"}}
    assert parse_line(json.dumps(old).encode(), 1).event.val_bpb is None
    new = {"type": "epoch", **epoch_event(val_bpb=1.234).__dict__}
    assert parse_line(json.dumps(new).encode(), 1).event.val_bpb == 1.234
    bad = {**new, "val_bpb": "fast"}
    assert "val_bpb" in parse_line(json.dumps(bad).encode(), 1).problem


def test_the_headless_epoch_line_shows_val_bpb_beside_val_loss():
    out = io.StringIO()
    log = HeadlessLog(out=out, progress=False)
    log.emit(epoch_event(val_bpb=3.7512))
    log.emit(epoch_event(epoch=2))  # (a record from before bits per byte: nothing to show)
    first, second = [line for line in out.getvalue().splitlines() if line.startswith("epoch")]
    assert "val_loss=2.6000 val_bpb=3.7512 effective_batch" in first, first
    assert "val_bpb" not in second and "val_loss=2.6000 effective_batch" in second, second


async def test_the_epoch_table_has_a_bpb_column_at_80_columns():
    from screen import screen_text

    from tui_trainer.ui.factory import create_replay_app
    from tui_trainer.ui.widgets import EpochTable

    started = RunStarted(run_dir="runs/x", device="cpu", threads=1, parameters=1000, vocab_size=65,
                         train_examples=64, val_examples=16, epochs=3, micro_batch=4, accum=4, processes=1,
                         block_size=64, planned_tokens=3 * 64 * 64)
    app = create_replay_app()
    async with app.run_test(size=(80, 40)) as pilot:  # tall: the table under the panels, the whole width
        app.feed([started, epoch_event(val_bpb=3.7512), epoch_event(epoch=2, val_loss=2.4, val_bpb=3.4601)])
        app.tick()
        await pilot.pause()
        assert app.query_one(EpochTable).display
        text = screen_text(app)
    header = next(line for line in text.splitlines() if "verdict" in line)
    assert all(name in header for name in ("epoch", "train", "val", "bpb", "accum", "tok/s")), header
    assert "3.4601" in text, text  # (the newest epoch: the panel has room for one row here)
