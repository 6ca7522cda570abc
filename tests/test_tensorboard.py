"""--tensorboard and `export --tensorboard`: the scalars read back with TensorBoard's own event reader."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import tiny_config, with_limits

from tui_trainer.cli.main import main
from tui_trainer.engine.loop import Trainer
from tui_trainer.rundir.files import METRICS_FILE
from tui_trainer.rundir.lock import RunLock
from tui_trainer.rundir.metrics import read_metrics
from tui_trainer.rundir.tensorboard import EXPORT_TEMP_PREFIX, TENSORBOARD_DIR, TensorBoardSink

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    accumulator = event_accumulator.EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(s.step, s.value) for s in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def expected(run_dir) -> dict[str, list[tuple[int, float]]]:
    records = read_metrics(run_dir)
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    return {"train/step_loss": [(r["step"], r["loss"]) for r in steps],
            "train/lr": [(r["step"], r["lr"]) for r in steps],
            "epoch/val_loss": [(r["epoch"], r["val_loss"]) for r in epochs],
            "epoch/train_loss": [(r["epoch"], r["train_loss"]) for r in epochs]}


def assert_same(written, wanted) -> None:
    for tag, points in wanted.items():
        assert [s for s, _ in written[tag]] == [s for s, _ in points], tag
        assert [v for _, v in written[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_a_run_with_the_tensorboard_sink_writes_its_step_and_epoch_scalars(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=2), 4, 2)
    Trainer(cfg, TensorBoardSink()).run()
    written = scalars(tmp_path / "run" / TENSORBOARD_DIR)
    assert_same(written, expected(tmp_path / "run"))
    assert {"train/grad_norm", "train/tokens_per_s", "train/accum", "epoch/accum"} <= set(written)


def test_export_writes_the_same_scalars_from_metrics_after_the_fact(small_corpus, tmp_path, capsys):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=2), 4, 2)
    Trainer(cfg).run()
    assert main(["export", str(tmp_path / "run"), "--tensorboard"]) == 0
    assert_same(scalars(tmp_path / "run" / TENSORBOARD_DIR), expected(tmp_path / "run"))
    assert main(["export", str(tmp_path / "run"), "--tensorboard"]) == 2  # twice would double every point
    assert "already holds" in capsys.readouterr().err


def test_the_flag_without_tensorboard_installed_says_how_to_install_it(small_corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what an environment without it imports
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    code = main(["train", "--no-ui", "--tensorboard", "--data", str(small_corpus), "--run-dir", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'tui-trainer[tensorboard]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_overwrite_removes_the_old_runs_event_files(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 2, 2)
    Trainer(cfg, TensorBoardSink()).run()
    assert (tmp_path / "run" / TENSORBOARD_DIR).is_dir()
    Trainer(cfg, overwrite=True).run()
    assert not (tmp_path / "run" / TENSORBOARD_DIR).exists()  # else TensorBoard would mix the two runs


def test_export_refuses_a_live_run_and_writes_nothing(small_corpus, tmp_path, capsys):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 2, 2)
    Trainer(cfg).run()
    held = RunLock(tmp_path / "run")  # (what a training process holds)
    try:
        assert main(["export", str(tmp_path / "run"), "--tensorboard"]) == 2
    finally:
        held.release()
    err = capsys.readouterr().err
    assert "still training" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / TENSORBOARD_DIR).exists()
    assert not list((tmp_path / "run").glob(f"{EXPORT_TEMP_PREFIX}*"))


def test_export_of_no_records_writes_nothing_and_blocks_no_later_export(small_corpus, tmp_path, capsys):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 2, 2)
    Trainer(cfg).run()
    metrics = tmp_path / "run" / METRICS_FILE
    records = metrics.read_bytes()
    metrics.write_bytes(b"")
    assert main(["export", str(tmp_path / "run"), "--tensorboard"]) == 2
    assert "nothing to export" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        [".lock", ".tui-trainer-run", "checkpoints", "config.json", "metrics.jsonl"])
    stale = tmp_path / "run" / f"{EXPORT_TEMP_PREFIX}killed"  # an export killed mid-write
    stale.mkdir()
    (stale / "events.out.tfevents.1.host").write_bytes(b"partial")
    metrics.write_bytes(records)
    assert main(["export", str(tmp_path / "run"), "--tensorboard"]) == 0
    assert_same(scalars(tmp_path / "run" / TENSORBOARD_DIR), expected(tmp_path / "run"))
    assert not stale.exists()


def test_export_names_the_lines_it_leaves_out_and_prints_under_an_ascii_console(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 2, 2)
    Trainer(cfg).run()
    metrics = tmp_path / "run" / METRICS_FILE
    lines = metrics.read_bytes().split(b"\n")
    metrics.write_bytes(b"\n".join([lines[0], b'{"type": "step", "loss": null}', *lines[1:]]))
    result = subprocess.run([sys.executable, "-m", "tui_trainer", "export", str(tmp_path / "run"), "--tensorboard"],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "line 2 (its loss is null) left out" in result.stderr and "Traceback" not in result.stderr
    assert "wrote" in result.stdout and " - view with" in result.stdout
    assert (tmp_path / "run" / TENSORBOARD_DIR).is_dir()


def test_a_record_with_a_count_out_of_range_is_a_bad_line_not_a_traceback(small_corpus, tmp_path, capsys):
    """`"epoch": 10**30` was SummaryWriter's `ValueError: Value out of range` (and a view axis to 7.5e29)."""
    from tui_trainer.rundir.reader import parse_line

    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 2, 2)
    Trainer(cfg).run()
    metrics = tmp_path / "run" / METRICS_FILE
    lines = metrics.read_bytes().split(b"\n")
    epoch = next(line for line in lines if b'"type": "epoch"' in line)
    huge = epoch.replace(b'"epoch": 1,', b'"epoch": ' + str(10 ** 30).encode() + b",")
    assert huge != epoch
    metrics.write_bytes(b"\n".join([lines[0], huge, *lines[1:]]))
    assert main(["export", str(tmp_path / "run"), "--tensorboard"]) == 0
    err = capsys.readouterr().err
    assert "line 2 (its epoch is 1e+30 (out of range)) left out" in err, err
    record = b'{"type": "step", "step": %d, "epoch": 1, "loss": 1.0}'
    assert "out of range" in parse_line(record % (2 ** 53 + 1), 1).problem
    assert "out of range" not in str(parse_line(record % 2 ** 53, 1).problem)
