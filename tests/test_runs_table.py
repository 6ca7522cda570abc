"""The runs' table (issue 30, item 7): rundir/summary.py's rows from the reader's records, the table
under `view A B`'s curves at 80x24, `tui-trainer runs [DIR]`, and `--resume` given the folder of
runs; and two figures that misled (item 8): a data folder's size, the viewer's planned tokens."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from metrics_records import line, record
from screen import screen_text

from tui_trainer.cli.main import main
from tui_trainer.cli.runs import listing
from tui_trainer.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tui_trainer.events import RunStarted
from tui_trainer.rundir.lifecycle import data_changed, data_size
from tui_trainer.rundir.lock import RunLock
from tui_trainer.rundir.ownership import write_marker
from tui_trainer.rundir.reader import event_from_record
from tui_trainer.rundir.runs_table import columns, fit, render, short_labels
from tui_trainer.rundir.summary import read_summary, summarize, tokenizer_notice
from tui_trainer.ui.follow import MetricsFollower


def config_record(data: dict | None = None, **train) -> dict:
    """config.json's record (the batch epoch_records' default: micro-batch 4, accum 2)."""
    train = {"epochs": 3, "micro_batch": 4, "accum": 2, **train}
    return {"config": RunConfig(data=DataConfig(**(data or {})), train=TrainConfig(**train)).to_dict()}


def epoch_records(epochs: int, accum: int = 2, micro_batch: int = 4, **more) -> list[dict]:
    """Each epoch's last step and the epoch, as the engine writes them (val loss falling)."""
    records = []
    batch = {"accum": accum, "micro_batch": micro_batch, "effective_batch": accum * micro_batch}
    for e in range(1, epochs + 1):
        records += [record("step", epoch=e, step=4 * e, tokens_seen=1024 * e, **batch),
                    record("epoch", epoch=e, epochs=3, val_loss=2.5 - 0.25 * e, train_loss=2.4 - 0.25 * e,
                           tokens_seen=1024 * e, seconds=10.0, tokens_per_s=128.0, **batch, **more)]
    return records


def events_of(records: list[dict]) -> list:
    return [event_from_record(r) for r in records]


def write_run(run_dir: Path, records: list[dict], data: dict | None = None, **train) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config_record(data, **train)))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


# -- the pure rows ----------------------------------------------------------------------------------

def test_a_runs_row_comes_from_its_records_and_its_status_from_the_end_record_or_the_lock():
    done = summarize("runs/a", config_record(), events_of([*epoch_records(3), record("end", reason="completed")]),
                     live=False)
    assert (done.status, done.epochs, done.epochs_planned, done.tokens) == ("finished", 3, 3, 3072)
    assert done.best_val_loss == pytest.approx(1.75) and done.seconds == 30.0 and done.tokens_per_s == 128.0
    stopped = summarize("b", None, events_of([*epoch_records(2), record("end", reason="early_stop")]), live=False)
    assert stopped.status == "early-stopped"
    assert summarize("c", None, events_of(epoch_records(1)), live=False).status == "interrupted"  # no end: killed
    assert summarize("d", None, events_of(epoch_records(1)), live=True).status == "running"  # the lock's word
    # An `end` followed by steps is a session that got resumed: its end is not the run's.
    resumed = [*epoch_records(1), record("end", reason="interrupted"), record("step", epoch=2, step=5)]
    assert summarize("e", None, events_of(resumed), live=True).status == "running"
    assert summarize("f", None, events_of([record("end", reason="error")]), live=False).status == "error"


def test_the_table_shows_only_the_settings_that_differ_and_bpb_only_where_recorded():
    runs = [summarize("runs/a", config_record(accum=4), events_of(epoch_records(2, accum=4)), live=False),
            summarize("runs/b", config_record(accum=16, epochs=5), events_of(epoch_records(3, accum=16)), live=False)]
    table = columns(runs)
    titles = [c.title for c in table]  # (--epochs differs too: the epochs column says it, as done/planned)
    assert titles == ["run", "status", "epochs", "tokens", "best val", "time", "tok/s", "eff batch", "accum"]
    assert table[-1].cells == ("4", "16") and table[-2].cells == ("16", "64") and table[0].cells == ("a", "b")
    # A run whose epochs record val_bpb: the column appears where it is there.
    epoch = dataclasses.replace(events_of(epoch_records(1))[1], val_bpb=1.25)
    runs.append(summarize("runs/c", config_record(accum=4), [epoch], live=False))
    table = columns(runs)
    bpb = next(c for c in table if c.title == "bpb")
    assert bpb.cells == ("—", "—", "1.2500")


def test_labels_are_the_shortest_suffix_that_tells_the_runs_apart():
    assert short_labels(["runs/a/x", "runs/b/x", "runs/y"]) == ["a/x", "b/x", "y"]
    assert short_labels(["x", "old/x"]) == ["x", "old/x"]
    assert short_labels(["/very/long/path/runs/hello-world-accum4-lr3e-4-seed1"])[0].startswith("…")


def test_a_wide_table_drops_its_least_important_columns_to_fit():
    runs = [summarize(f"runs/run-{i}", config_record(accum=2 ** i, seed=i, patience=i, min_delta=0.001 * i),
                      events_of(epoch_records(2)), live=False) for i in range(1, 4)]
    table = columns(runs)
    kept = fit(table, 80)
    text = render(kept)
    assert max(len(row) for row in text.splitlines()) <= 80
    assert [c.title for c in kept][:3] == ["run", "status", "epochs"] and "best val" in text and "accum" in text
    assert len(kept) < len(table) and "tok/s" not in text  # tok/s goes first


def test_runs_with_different_tokenizers_get_one_notice_that_names_bits_per_byte():
    char = summarize("runs/char", config_record(), events_of(epoch_records(2)), live=False)
    bpe = summarize("runs/bpe", config_record({"tokenizer": "bpe", "vocab_size": 512}), events_of(epoch_records(2)),
                    live=False)
    notice = tokenizer_notice([char, bpe])
    assert notice and "(char, bpe 512)" in notice and "not comparable" in notice and "bits per byte" in notice
    assert "not every run recorded it" in notice  # these records carry no val_bpb
    with_bpb = [summarize(s.path, {"config": {"data": {"tokenizer": t}}}, events_of(epoch_records(2, val_bpb=1.5)),
                          live=False) for s, t in ((char, "char"), (bpe, "bpe"))]
    assert "not every run" not in tokenizer_notice(with_bpb)
    assert tokenizer_notice([char, char]) is None  # one tokenizer: nothing to say
    bpe_4k = summarize("runs/bpe4k", config_record({"tokenizer": "bpe"}), events_of(epoch_records(2)), live=False)
    assert "bpe 512, bpe 4096" in tokenizer_notice([bpe, bpe_4k])  # another vocabulary is another tokenizer


def test_the_setup_columns_tokenizer_effective_batch_and_budget_survive_80_columns():
    runs = [summarize("runs/char", config_record(seed=1, patience=2, min_delta=0.01),
                      events_of(epoch_records(2, accum=4, micro_batch=16)), live=False),
            summarize("runs/bpe", config_record({"tokenizer": "bpe", "vocab_size": 512}, seed=2, patience=3,
                                                min_delta=0.02, time_budget="10m"),
                      events_of(epoch_records(2, accum=4, micro_batch=8)), live=False)]
    kept = fit(columns(runs), 80)
    text = render(kept)
    assert max(len(row) for row in text.splitlines()) <= 80, text
    titles = [c.title for c in kept]
    assert {"tokenizer", "eff batch", "budget", "time"} <= set(titles), text
    assert next(c for c in kept if c.title == "eff batch").cells == ("64", "32")
    # A split of the same batch (micro-batch 8 x accum 4, 16 x 2) is the same setup: no eff batch column.
    same = [summarize(f"runs/{m}", config_record(), events_of(epoch_records(2, accum=32 // m, micro_batch=m)),
                      live=False) for m in (8, 16)]
    assert "eff batch" not in [c.title for c in columns(same)]


# -- view A B C -------------------------------------------------------------------------------------

async def test_compare_of_a_char_and_a_bpe_run_says_so_and_plots_bits_per_byte(tmp_path):
    from tui_trainer.ui.compare import create_compare_app

    a = write_run(tmp_path / "char", [*epoch_records(3, val_bpb=2.0), record("end")])
    b = write_run(tmp_path / "bpe", [*epoch_records(3, val_bpb=1.8), record("end")], {"tokenizer": "bpe"})
    app = create_compare_app([str(a), str(b)])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = screen_text(app)
        title = str(app.query_one("#compare").border_title)
        await pilot.press("q")
    flat = " ".join(screen.split())
    assert "different tokenizers (char, bpe 4096)" in flat and "bits per byte (bpb) compares them" in flat, screen
    assert "bits per byte" in title and "train" not in title
    assert re.search(r"run +status .*tokenizer", screen), screen
    assert [row for row in screen.splitlines() if re.match(r"^│ +1 +2 +3 +│$", row)], screen  # whole epochs
    # The same tokenizer: no notice, the curves stay losses.
    c = write_run(tmp_path / "char2", [*epoch_records(3, val_bpb=2.1), record("end")], accum=4)
    app = create_compare_app([str(a), str(c)])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = screen_text(app)
        title = str(app.query_one("#compare").border_title)
    assert "tokenizers" not in screen and "epoch loss" in title


async def test_compare_app_at_80x24_shows_the_runs_table_under_the_curves(tmp_path):
    from tui_trainer.ui.compare import create_compare_app

    a = write_run(tmp_path / "sweep" / "hello-accum4", [*epoch_records(3, 4), record("end")], accum=4)
    b = write_run(tmp_path / "sweep" / "hello-accum16", [*epoch_records(2, 16), record("end", reason="early_stop")],
                  accum=16)
    c = write_run(tmp_path / "old" / "hello-accum4", epoch_records(1, 4), accum=4)
    lock = RunLock(c)  # as a live run holds it: that run is running
    try:
        app = create_compare_app([str(a), str(b), str(c)])
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            screen = screen_text(app)
            await pilot.press("q")
    finally:
        lock.release()
    rows = {row.split()[0]: row.split() for row in screen.splitlines() if row.split() and "/" in row.split()[0]
            or row.strip().startswith("hello")}
    assert rows["sweep/hello-accum4"][1:3] == ["finished", "3/3"] and rows["sweep/hello-accum4"][-1] == "4"
    assert rows["hello-accum16"][1:3] == ["early-stopped", "2/3"] and rows["hello-accum16"][-1] == "16"
    assert rows["old/hello-accum4"][1:3] == ["running", "1/3"]
    assert re.search(r"run +status +epochs .*best val .*accum", screen), screen
    assert "runs/he…" not in screen and str(tmp_path) not in screen
    axis = [row for row in screen.splitlines() if re.match(r"^│ +1 +2 +3 +│$", row)]
    assert axis, screen  # whole epochs, not 1.0 2.2 3.5
    y_ticks = re.findall(r"│ ?(\d+\.\d+)┤", screen)
    assert len(y_ticks) >= 2 and all(len(t.split(".")[1]) == 1 for t in y_ticks), y_ticks  # 1.5 1.8 2.0, not 1.69


# -- tui-trainer runs -------------------------------------------------------------------------------

def runs_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    write_run(folder / "20260101-120000", [*epoch_records(3), record("end")], accum=4)
    write_run(folder / "20260102-090000", epoch_records(1), accum=16)
    (folder / "broken").mkdir()
    (folder / "broken" / "config.json").write_text("{not json")
    write_marker(folder / "broken")  # (a run of ours whose config.json was damaged: its marker says so)
    (folder / "notes").mkdir()  # a folder that is not a run: not listed
    for age, name in enumerate(["20260102-090000", "broken", "20260101-120000"]):
        for path in [folder / name, *(folder / name).iterdir()]:
            os.utime(path, (1_800_000_000 - 100 * age, 1_800_000_000 - 100 * age))
    return folder


def test_runs_lists_the_run_dirs_newest_first_with_damaged_ones_and_fits_80_columns(tmp_path, capsys):
    folder = runs_folder(tmp_path)
    assert main(["runs", str(folder)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run", "status", "epochs"] and lines[0].split()[-1] == "accum"
    assert [line.split()[0] for line in lines[1:4]] == ["20260102-090000", "broken", "20260101-120000"]
    assert lines[1].split()[1] == "interrupted" and lines[2].split()[1] == "damaged" and "finished" in lines[3]
    words = " ".join(out.split())  # (the lines under the table are wrapped at 80, between words)
    assert "damaged (" in words and "not JSON" in words and "notes" not in words
    assert max(len(line) for line in lines[:4]) <= 80


def test_runs_of_an_empty_folder_says_so_and_of_a_missing_one_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    empty = subprocess.run([sys.executable, "-m", "tui_trainer", "runs", "empty"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert empty.returncode == 0 and "no run dirs in empty" in empty.stdout
    missing = subprocess.run([sys.executable, "-m", "tui_trainer", "runs"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no runs/ folder here" in missing.stderr
    named = subprocess.run([sys.executable, "-m", "tui_trainer", "runs", "elsewhere"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert named.returncode == 2 and named.stderr.count("\n") == 1 and "elsewhere: no such folder" in named.stderr


def test_a_run_extended_with_resume_epochs_is_planned_to_its_new_target_at_once(tmp_path):
    """`--resume R --epochs 6` rewrote config.json; the records still hold epochs of the 3 planned."""
    records = [*epoch_records(3), record("end"), record("step", epoch=4, step=13, tokens_seen=3300)]
    run_dir = write_run(tmp_path / "run", records, epochs=6)
    lock = RunLock(run_dir)  # the resumed session, live
    try:
        row = read_summary(run_dir)
    finally:
        lock.release()
    assert (row.status, row.epochs, row.epochs_planned) == ("running", 3, 6)
    assert "3/6" in render(fit(columns([row]), 80))


def test_a_time_budget_run_is_planned_to_its_budgets_epochs():
    budget = {"config": RunConfig(train=TrainConfig(epochs=10, time_budget="40s")).to_dict()}
    row = summarize("runs/b", budget, events_of([*epoch_records(2), record("end")]), live=False)
    assert row.epochs_planned == 3  # the plan the epochs recorded (epoch_records: 3), not --epochs


def test_a_time_budget_run_ended_by_its_budget_shows_the_budget_spent_and_the_epochs_it_trained():
    # Spent at 29% of its first epoch: not "completed 1/1", which reads as a whole epoch done.
    budget = {"config": RunConfig(train=TrainConfig(epochs=10, time_budget="8s")).to_dict()}
    spent = record("end", epochs=1, last_epoch_share=0.29, message="budget spent: ended 29% into epoch 1")
    one = [record("epoch", epoch=1, epochs=1, val_loss=2.5, train_loss=2.4, tokens_seen=1024, seconds=3.0,
                  tokens_per_s=300.0), spent]
    row = summarize("runs/b", budget, events_of(one), live=False)
    table = {c.title: c.cells[0] for c in columns([row])}
    assert table["status"] == "budget 8s spent" and table["epochs"] == "0.29", table
    later = summarize("runs/c", budget, events_of([*epoch_records(3), {**spent, "epochs": 3, "last_epoch_share": 0.5}]),
                      live=False)
    assert {c.title: c.cells[0] for c in columns([later])}["epochs"] == "2.5"
    # Not ended by its budget (stopped with q): the plan's epochs, as before.
    stopped = summarize("runs/d", budget, events_of([*epoch_records(2), record("end", reason="interrupted")]), live=False)
    assert {c.title: c.cells[0] for c in columns([stopped])}["epochs"] == "2/3"


def test_epochs_beyond_the_plan_show_as_a_count_not_a_fraction_over_one():
    """A cold trial's budget run, early-stopped, read "52/39": a plan that moved under it."""
    budget = {"config": RunConfig(train=TrainConfig(epochs=10, time_budget="10s")).to_dict()}
    row = summarize("runs/e", budget, events_of([*epoch_records(3), record("end", reason="early_stop")]), live=False)
    row = dataclasses.replace(row, epochs_planned=2)
    assert {c.title: c.cells[0] for c in columns([row])}["epochs"] == "3"


def test_a_run_whose_lock_is_held_is_running(tmp_path):
    run_dir = write_run(tmp_path / "run", epoch_records(1))
    lock = RunLock(run_dir)
    try:
        assert read_summary(run_dir).status == "running"
    finally:
        lock.release()
    assert read_summary(run_dir).status == "interrupted"


def test_resume_of_the_folder_of_runs_names_the_runs_inside(tmp_path, capsys):
    folder = runs_folder(tmp_path)
    assert main(["--no-ui", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint at" not in err
    assert "pass one of these to --resume" in err
    named = re.findall(r"runs/(\S+) \((\w[\w ]*)\)", err)
    assert named == [("20260102-090000", "interrupted"), ("broken", "damaged"), ("20260101-120000", "finished")]


@pytest.mark.parametrize("command", ["view", "sample"])
def test_view_and_sample_of_the_folder_of_runs_name_the_runs_inside(command, tmp_path, capsys):
    folder = runs_folder(tmp_path)
    assert main([command, str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint" not in err and "no config.json" not in err
    assert f"{command} {folder} is a folder of runs" in err and f"pass one of these to {command}" in err
    named = re.findall(r"runs/(\S+) \((\w[\w ]*)\)", err)
    assert named == [("20260102-090000", "interrupted"), ("broken", "damaged"), ("20260101-120000", "finished")]
    assert main(["view", str(folder / "20260101-120000"), str(folder)]) == 2  # (each of several too)
    assert "view " + str(folder) + " is a folder of runs" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["view", "sample"])
def test_view_and_sample_of_a_folder_without_runs_say_so_in_one_line(command, tmp_path, capsys):
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    assert main([command, str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a run dir and holds none" in err and "tui-trainer runs" in err


# -- item 8: the figures that misled ----------------------------------------------------------------

def test_a_data_folders_size_is_its_texts_not_the_directory_entry(tmp_path):
    folder = tmp_path / "texts"
    (folder / "more").mkdir(parents=True)
    (folder / "a.txt").write_text("x" * 1000)
    (folder / "more" / "b.txt").write_text("y" * 234)
    (folder / "notes.md").write_text("z" * 5000)  # not read by the data loader
    assert data_size(str(folder)) == 1234
    message = data_changed(str(folder), "b" * 64, data_size(str(folder)),
                           {"data_path": str(folder), "data_sha256": "a" * 64, "data_bytes": 1000}).message
    assert "1,000 bytes then, 1,234 now" in message


def test_the_viewer_plans_the_tokens_the_app_plans_with_limit_train_batches(tmp_path):
    # --quick: 150 micro-batches of 16 an epoch in 38 steps of accum 4 (the last holds 2): 6 x 150 x 16 x 64.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = RunConfig(model=ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=64),
                    data=DataConfig(limit_train_batches=150), train=TrainConfig(epochs=6, micro_batch=16, accum=4))
    (run_dir / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    (run_dir / "metrics.jsonl").write_text(line("step", steps_in_epoch=38, micro_batch=16, accum=4))
    started = MetricsFollower(run_dir).poll()[0]
    assert isinstance(started, RunStarted) and started.planned_tokens == 6 * 150 * 16 * 64  # 922K, not 934K


def test_a_hugging_face_export_beside_the_runs_is_not_listed_as_a_damaged_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs / "a", epoch_records(1))
    export = runs / "hf1"  # what `export --hf` writes: a config.json and a tokenizer.json, not ours
    export.mkdir(parents=True)
    (export / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    (export / "tokenizer.json").write_text("{}")
    assert main(["runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "hf1" not in out and "damaged" not in out, out


def test_runs_of_a_char_and_a_bpe_run_notes_that_their_losses_do_not_compare(tmp_path, capsys):
    write_run(tmp_path / "runs" / "char", epoch_records(2))
    write_run(tmp_path / "runs" / "bpe", epoch_records(2), {"tokenizer": "bpe", "vocab_size": 512})
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    words = " ".join(out.split())  # (the note is wrapped at the terminal's width, between words)
    assert words.count("note: these runs use different tokenizers (") == 1, out
    note = words[words.index("note: these runs"):]
    assert "char" in note and "bpe 512" in note and "bits per byte" in note, out


def test_the_prose_under_the_runs_table_is_wrapped_between_words_at_the_width(tmp_path):
    """A cold trial: the terminal's own wrap cut the footnotes mid-word ("block_si" / "ze")."""
    from tui_trainer.cli.runs import listing

    write_run(tmp_path / "runs" / "char", epoch_records(2))
    write_run(tmp_path / "runs" / "bpe", epoch_records(2), {"tokenizer": "bpe", "vocab_size": 512})
    out = listing(tmp_path / "runs", width=80)
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "bits per byte" in " ".join(out.split())


def test_columns_left_out_at_80_are_named(tmp_path, capsys):
    runs = tmp_path / "runs"
    for i in range(3):
        write_run(runs / f"run-{i}", epoch_records(2), accum=2 ** i, seed=i, patience=i + 1)
    assert main(["runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "--all-settings shows" in out or all(len(line) <= 80 for line in out.splitlines()), out


@pytest.mark.parametrize("width", [60, 80, 120])
def test_time_and_tokens_outlast_the_other_settings_at_80_columns_and_every_width_fits(width, tmp_path):
    """What a user compares first (how long, how much data) stays at 80 columns; settings that are not
    the run's setup give way first, and the table fits 60 and 120 too (issue: cold newcomer trial)."""
    folder = tmp_path / "runs"
    for i, accum in enumerate([4, 8, 2]):
        write_run(folder / f"2026010{i + 1}-120000", [*epoch_records(3, accum=accum), record("end")],
                  seed=i + 1, patience=i + 1, min_delta=0.01 * i, accum=accum)
    text = listing(folder, width=width)
    table = text.split("\n(")[0].splitlines()[:4]
    assert max(len(row) for row in table) <= width, text
    titles = table[0].split()
    if width >= 80:
        assert {"time", "tokens", "best", "epochs", "accum"} <= set(titles), text
        assert "0:00:30" in table[1], text  # the epochs' time: 3 x 10 s
    if width >= 120:
        assert "tok/s" in titles and {"seed", "patience"} <= set(titles), text
    assert titles[:2] == ["run", "status"]


def test_a_run_that_recorded_its_elapsed_time_shows_it_as_its_time():
    """The time column is what the app showed at the run's end (set-up and saves included), where the
    `end` record carries it; older records keep the epochs' sum."""
    recorded = summarize("runs/a", config_record(), events_of([*epoch_records(3), record(
        "end", reason="completed", elapsed_seconds=37.5)]), live=False)
    assert recorded.seconds == 37.5
    older = summarize("runs/b", config_record(), events_of([*epoch_records(3), record("end", reason="completed")]),
                      live=False)
    assert older.seconds == 30.0


def test_a_run_whose_accum_changed_shows_the_change_in_agreement_with_its_eff_batch():
    # micro-batch 16, started at accum 4, `+` during epoch 1: epoch 2 trains at accum 8 (eff batch 128).
    changed = [*epoch_records(1, accum=4, micro_batch=16), *epoch_records(2, accum=8, micro_batch=16)[2:]]
    runs = [summarize("runs/plus", config_record(micro_batch=16, accum=4), events_of(changed), live=False),
            summarize("runs/kept", config_record(micro_batch=16, accum=4),
                      events_of(epoch_records(2, accum=4, micro_batch=16)), live=False)]
    cells = {c.title: c.cells for c in columns(runs)}
    assert cells["eff batch"] == ("128", "64") and cells["accum"] == ("4→8", "4")
    # A split of the micro-batch for memory (16 x 4 trained as 8 x 8) is no change of accum.
    split = summarize("runs/split", config_record(micro_batch=16, accum=4),
                      events_of(epoch_records(2, accum=8, micro_batch=8)), live=False)
    assert split.settings["train.accum"] == 4


def test_a_run_without_an_end_shows_its_clock_at_its_last_step():
    records = [*epoch_records(1), record("step", epoch=2, step=5, tokens_seen=1280, elapsed=42.0, unix_time=1.0)]
    assert summarize("runs/live", config_record(), events_of(records), live=True).seconds == 42.0
    assert summarize("runs/old", config_record(), events_of(epoch_records(1)), live=True).seconds == 10.0


def test_the_compare_hint_is_a_line_of_its_own_whole_at_80_columns(tmp_path):
    """A trial saw `RUN_DIR` wrapped onto a line of its own under a long folder name."""
    from tui_trainer.cli.runs import listing

    runs = tmp_path / ("a-long-folder-name-for-runs-" * 2)
    for i in range(2):
        write_run(runs / f"run-{i}", epoch_records(2), seed=i)
    lines = listing(runs, width=80).splitlines()
    assert "compare some with: tui-trainer view RUN_DIR RUN_DIR" in lines
    assert not any(line.strip() == "RUN_DIR" for line in lines)


def test_runs_says_a_runs_end_in_the_words_the_app_and_view_use():
    """A trial read "stopped" in `view` and "interrupted" in `runs` for one run stopped with q."""
    from tui_trainer.rundir.summary import STATUS
    from tui_trainer.ui.view import END_STATES

    assert STATUS == END_STATES
    for reason, word in END_STATES.items():
        ended = summarize("r", None, events_of([*epoch_records(1), record("end", reason=reason)]), live=False)
        assert ended.status == word
