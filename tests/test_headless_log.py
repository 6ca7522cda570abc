"""A headless log that speaks: progress lines every --log-every, epoch lines with times and ETA."""

from __future__ import annotations

import io
import re

import pytest
from helpers import TINY_MODEL

from tui_trainer.cli.headless import HeadlessLog
from tui_trainer.cli.main import main
from tui_trainer.config_checks import LogEvery, parse_log_every
from tui_trainer.errors import UserError
from tui_trainer.events import EpochEvent, RunStarted, StepEvent, ValidationProgress

TINY = [*TINY_MODEL, "--limit-train-batches", "12", "--limit-val-batches", "2"]


@pytest.mark.parametrize("value, expected", [
    ("30s", LogEvery(seconds=30.0)), ("2m", LogEvery(seconds=120.0)), ("1.5 s", LogEvery(seconds=1.5)),
    ("50", LogEvery(steps=50)), (50, LogEvery(steps=50)), ("off", LogEvery()), (0, LogEvery()),
])
def test_log_every_reads_seconds_minutes_steps_or_off(value, expected):
    assert parse_log_every(value) == expected


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", "s", "-1s", "nans"])
def test_a_log_every_that_is_no_interval_is_refused_with_examples(value):
    with pytest.raises(UserError) as caught:
        parse_log_every(value)
    assert "30s" in caught.value.hint and "50" in caught.value.hint


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _started(**overrides) -> RunStarted:
    settings = dict(run_dir="runs/x", device="cpu", threads=2, parameters=1000, vocab_size=65,
                    train_examples=320, val_examples=40, epochs=2, micro_batch=4, accum=2, processes=1,
                    block_size=32, planned_tokens=2 * 320 * 32, val_batches=10)
    settings.update(overrides)
    return RunStarted(**settings)


def _step(step: int, seconds: float = 1.0) -> StepEvent:
    tokens = 4 * 2 * 32
    return StepEvent(epoch=1, step=step, step_in_epoch=step, steps_in_epoch=40, micro_steps=2, accum=2,
                     micro_batch=4, effective_batch=8, tokens=tokens, loss=3.0 - step / 100, lr=1e-3,
                     grad_norm=0.5, tokens_seen=step * tokens, tokens_per_s=tokens / seconds)


def test_progress_lines_come_every_interval_with_where_when_and_how_fast():
    out, clock = io.StringIO(), Clock()
    log = HeadlessLog(out, progress=False, log_every=LogEvery(seconds=30.0), clock=clock)
    log.emit(_started())
    for step in range(1, 41):
        clock.now += 1.0
        log.emit(_step(step))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("progress ")]
    assert len(lines) == 1  # 40 s of steps: one line at 30 s, not one per step
    assert lines[0].startswith("progress epoch 1/2 step 30/40 (optimizer step 30) loss=2.7000 lr=1.00e-03 "
                               "tokens/s=256 elapsed=0:00:30 eta=")
    # 50 steps left at 1 s and 2 validation passes of 10 batches guessed at a third of a micro-batch.
    eta = re.search(r"eta=(\S+)", lines[0]).group(1)
    assert eta == "0:00:53"


def test_a_long_validation_pass_gets_progress_lines_too():
    out, clock = io.StringIO(), Clock()
    log = HeadlessLog(out, progress=False, log_every=LogEvery(seconds=10.0), clock=clock)
    log.emit(_started())
    log.emit(_step(1))
    for batch in range(0, 11):
        clock.now += 3.0
        log.emit(ValidationProgress(epoch=1, batch=batch, batches=10, seconds=3.0 * batch))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("progress ")]
    assert lines and all(" validating " in line for line in lines)
    assert lines[0].startswith("progress epoch 1/2 validating 3/10 elapsed=0:00:12 eta=")


def test_epoch_lines_carry_lr_epoch_seconds_elapsed_and_eta():
    out, clock = io.StringIO(), Clock()
    log = HeadlessLog(out, progress=False, log_every=LogEvery(), clock=clock)
    log.emit(_started())
    for step in range(1, 41):
        clock.now += 1.0
        log.emit(_step(step))
    clock.now += 5.0
    log.emit(EpochEvent(epoch=1, epochs=2, train_loss=2.8, val_loss=2.9, accum=2, effective_batch=8,
                        tokens_seen=40 * 256, seconds=45.0, diagnosis="healthy", diagnosis_reason="fine",
                        remedy="keep training", tokens_per_s=256.0))
    text = out.getvalue()
    assert "progress " not in text  # off: epoch lines only
    epoch_line = next(line for line in text.splitlines() if line.startswith("epoch 1/2"))
    assert " lr=1.00e-03 epoch_s=45.0 elapsed=0:00:45 eta=" in epoch_line
    assert epoch_line.endswith("diagnosis=healthy: fine")


def test_cli_log_every_steps_prints_a_progress_line_every_n_steps(small_corpus, tmp_path, capsys):
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"), "--epochs", "1",
                 "--log-every", "2", *TINY])
    out = capsys.readouterr().out
    assert code == 0
    steps = [int(m) for m in re.findall(r"^progress epoch 1/1 step \d+/6 \(optimizer step (\d+)\)", out, re.M)]
    assert steps == [2, 4, 6]
    assert re.search(r"^epoch 1/1 .* epoch_s=[\d.]+ elapsed=\d:\d\d:\d\d eta=0:00:00 diagnosis=", out, re.M), out


def test_cli_bad_log_every_is_one_line_and_exit_2(small_corpus, tmp_path, capsys):
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"),
                 "--log-every", "often", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--log-every often" in err
    assert not (tmp_path / "run").exists()


def test_log_every_in_a_toml_train_table(small_corpus, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("[train]\nlog_every = 3\nepochs = 1\n")
    code = main(["--no-ui", "--config", str(config), "--data", str(small_corpus), "--run-dir", str(tmp_path / "r"),
                 *TINY])
    out = capsys.readouterr().out
    assert code == 0
    assert re.findall(r"\(optimizer step (\d+)\)", out) == ["3", "6"]


def test_a_slow_optimizer_step_gets_progress_lines_from_its_micro_steps():
    from tui_trainer.events import MicroStep

    out, clock = io.StringIO(), Clock()
    log = HeadlessLog(out, progress=False, log_every=LogEvery(seconds=30.0), clock=clock)
    log.emit(_started())
    for micro in range(1, 9):
        clock.now += 10.0
        log.emit(MicroStep(epoch=1, step=1, micro_step=micro, micro_steps=8, step_in_epoch=1, steps_in_epoch=40))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("progress ")]
    assert lines[0] == "progress epoch 1/2 step 0/40, micro-step 3/8 of optimizer step 1 elapsed=0:00:30 eta=measuring"
    assert len(lines) == 2


def test_step_lines_come_first_when_steps_are_quicker_than_the_interval():
    from tui_trainer.events import MicroStep

    out, clock = io.StringIO(), Clock()
    log = HeadlessLog(out, progress=False, log_every=LogEvery(seconds=30.0), clock=clock)
    log.emit(_started())
    for step in range(1, 41):
        for micro in (1, 2):
            clock.now += 0.5
            log.emit(MicroStep(epoch=1, step=step, micro_step=micro, micro_steps=2, step_in_epoch=step,
                               steps_in_epoch=40))
        log.emit(_step(step))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("progress ")]
    assert len(lines) == 1 and " loss=" in lines[0], lines


def test_the_end_of_a_run_with_a_model_says_how_to_sample_it(small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--epochs", "1", *TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"write text with its best model: tui-trainer sample {run_dir}"


def epoch_line_with_noise(scale: float, error: float | None) -> str:
    """What the log prints for an epoch whose records carry this noise scale (suggestion: accum 16)."""
    out, clock = io.StringIO(), Clock()
    log = HeadlessLog(out, progress=False, log_every=LogEvery(), clock=clock)
    log.emit(_started())
    log.emit(EpochEvent(epoch=1, epochs=2, train_loss=2.8, val_loss=2.9, accum=2, effective_batch=8,
                        tokens_seen=256, seconds=4.0, diagnosis="healthy", diagnosis_reason="fine",
                        remedy="keep training", tokens_per_s=256.0, noise_scale=scale, suggested_accum=16,
                        noise_scale_error=error))
    return out.getvalue()


@pytest.mark.parametrize(("error", "said"), [(0.6, "±60%: settling, no suggestion yet"), (0.2, "±20% -> suggests accum 16"),
                                             (None, "sequences -> suggests accum 16")])
def test_the_epoch_line_suggests_an_accum_only_when_the_noise_scale_is_known_well(error, said):
    assert said in epoch_line_with_noise(250.0, error)


def test_the_epoch_lines_noise_scale_reads_as_the_screens_do():
    """A trial read ±56% in the log and ±55% on the screen for one recorded 0.5601."""
    from tui_trainer.analysis.noise_scale import noise_error_words, noise_scale_words

    out = epoch_line_with_noise(1234.0, 0.5601)
    assert f"noise scale ~{noise_scale_words(1234.0)} sequences{noise_error_words(0.5601)}:" in out
    assert "~1,200 sequences ±55%:" in out
