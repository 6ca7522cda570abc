"""The shared vocabulary: what the events carry, and that older metrics records still read."""

from __future__ import annotations

import json

from tui_trainer.cli.headless import HeadlessLog
from tui_trainer.events import EpochEvent, RunStarted, effective_batch
from tui_trainer.rundir.metrics import MetricsWriter, read_metrics
from tui_trainer.rundir.reader import event_from_record

EPOCH = dict(epoch=1, epochs=2, train_loss=2.5, val_loss=2.6, accum=4, effective_batch=8 * 4 * 3, tokens_seen=4096,
             seconds=3.0)


def test_run_started_carries_the_effective_batch_of_its_own_fields():
    started = RunStarted(run_dir="runs/x", device="cpu", threads=1, parameters=10, vocab_size=65, train_examples=96,
                         val_examples=16, epochs=2, micro_batch=8, accum=4, processes=3, block_size=32,
                         planned_tokens=2 * 96 * 32, val_batches=2)
    assert started.effective_batch == effective_batch(8, 4, 3) == 96


def test_an_epoch_record_without_micro_batch_still_reads(tmp_path):
    """metrics.jsonl written before the epoch event carried ``micro_batch``: the field gets its default."""
    old = {"type": "epoch", **EPOCH, "diagnosis": "learning"}
    event = event_from_record(json.loads(json.dumps(old)))
    assert isinstance(event, EpochEvent) and event.micro_batch == 0 and event.effective_batch == 96


def test_the_epoch_records_micro_batch_goes_to_the_file_and_back(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.emit(EpochEvent(**EPOCH, micro_batch=8))
    writer.close()
    (record,) = read_metrics(tmp_path)
    assert record["micro_batch"] == 8 and event_from_record(record).micro_batch == 8


def test_the_headless_epoch_line_shows_the_micro_batch_it_was_given(tmp_path):
    """Read from the event, not derived back from effective_batch // (accum x processes)."""
    lines = []

    class Out:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    log = HeadlessLog(out=Out(), progress=False)
    log.emit(RunStarted(run_dir="runs/x", device="cpu", threads=1, parameters=10, vocab_size=65, train_examples=96,
                        val_examples=16, epochs=2, micro_batch=8, accum=4, processes=3, block_size=32,
                        planned_tokens=2 * 96 * 32, val_batches=1))
    # A micro-batch that effective_batch // (accum x processes) would not give back (no run sends
    # this pair): the line can only show it by reading it.
    log.emit(EpochEvent(**EPOCH, micro_batch=5))
    text = "".join(lines)
    assert "effective_batch=96 (micro-batch 8 x accum 4 x 3 processes)" in text  # the run line
    assert "effective_batch=96 (micro-batch 5 x accum 4 x 3 processes)" in text  # the epoch line
