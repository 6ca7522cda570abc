"""Text samples during training: after each epoch and on request, without touching the losses."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers import CORPUS, ScriptedSink, tiny_config, train, with_limits

from tui_trainer.events import EpochEvent, SampleEvent, StepEvent
from tui_trainer.rundir.metrics import read_metrics


def ask_for_a_sample(trainer) -> None:
    trainer.control.sample()  # as `g` does


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2-epoch run with samples off, and on (40 tokens after each epoch, one asked at step 3)."""
    root = tmp_path_factory.mktemp("live")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")

    def config(name: str, sample_tokens: int):
        cfg = with_limits(tiny_config(corpus, root / name, epochs=2, sample_tokens=sample_tokens), 8)
        # Dropout on: the global RNG drives it, so a sampler that drew from it would change the losses.
        return cfg.replace(model=replace(cfg.model, dropout=0.2))

    return train(config("off", 0))[1], train(config("on", 40), ScriptedSink({3: ask_for_a_sample}))[1], root / "on"


def test_losses_are_bit_identical_with_sampling_on_or_off(runs):
    off, on, _ = runs
    assert [s.loss for s in on.of(StepEvent)] == [s.loss for s in off.of(StepEvent)]
    assert [(e.train_loss, e.val_loss) for e in on.of(EpochEvent)] == [(e.train_loss, e.val_loss)
                                                                       for e in off.of(EpochEvent)]
    assert all(e.sample is None for e in off.of(EpochEvent)) and not off.of(SampleEvent)


def test_a_sample_follows_each_epoch_and_an_asked_one_the_step_that_saw_the_request(runs):
    _, on, _ = runs
    first, second = (e.sample for e in on.of(EpochEvent))
    assert len(first) == len(second) == 40
    assert first != second  # other weights (and seeds) write other text
    asked = on.of(SampleEvent)
    # Asked as step 3 was reported: the engine reads commands between micro-steps, so it sees the
    # request during step 4 and samples once that step is taken, before step 5 starts.
    assert len(asked) == 1 and asked[0].step == 4 and asked[0].epoch == 1 and len(asked[0].text) == 40
    order = [(type(e).__name__, e.step) for e in on.events if isinstance(e, (StepEvent, SampleEvent))]
    assert order[3:6] == [("StepEvent", 4), ("SampleEvent", 4), ("StepEvent", 5)]


def test_the_epoch_record_carries_the_sample_and_an_asked_one_has_its_own_record(runs):
    _, on, run_dir = runs
    records = read_metrics(run_dir)
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["sample"] for r in epochs] == [e.sample for e in on.of(EpochEvent)]
    asked = [r for r in records if r["type"] == "sample"]
    assert len(asked) == 1 and asked[0]["step"] == 4 and asked[0]["text"] == on.of(SampleEvent)[0].text


def test_headless_shows_each_sample_on_one_escaped_line(runs):
    import io

    from tui_trainer.cli.headless import SAMPLE_LOG_CHARS, HeadlessLog

    _, on, _ = runs
    out = io.StringIO()
    log = HeadlessLog(out, progress=False)
    for event in on.events:
        log.emit(event)
    lines = out.getvalue().splitlines()
    samples = [line for line in lines if line.startswith("sample ")]
    assert [line.split(":", 1)[0] for line in samples] == ["sample at step 4", "sample after epoch 1",
                                                           "sample after epoch 2"]
    first = on.of(EpochEvent)[0].sample
    shown = samples[1].split(": ", 1)[1]
    assert len(shown) <= SAMPLE_LOG_CHARS and "\n" not in shown
    assert shown.encode("ascii").decode("unicode_escape") == first  # 40 ASCII characters: shown whole
