"""The command line: a short headless run writes its files; bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CORPUS, TINY_MODEL

from tui_trainer.cli.main import main

TINY = [*TINY_MODEL, "--limit-train-batches", "6", "--limit-val-batches", "2"]

STEP_FIELDS = {"epoch", "step", "micro_steps", "accum", "micro_batch", "effective_batch", "tokens", "loss", "lr",
               "grad_norm", "tokens_seen", "tokens_per_s"}
EPOCH_FIELDS = {"epoch", "train_loss", "val_loss", "accum", "effective_batch", "tokens_seen", "seconds",
                "diagnosis", "diagnosis_reason"}
END_FIELDS = {"reason", "epochs", "best_val_loss", "best_epoch"}


def test_headless_run_writes_config_metrics_and_checkpoints(small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--epochs", "2", *TINY])
    out = capsys.readouterr().out
    assert code == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["train"]["accum"] == 2 and config["config"]["model"]["vocab_size"] == len(config["vocab"])
    assert "".join(config["vocab"]) == "".join(sorted(set(small_corpus.read_text())))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    types = [r["type"] for r in records]
    assert types.count("step") == 6 and types.count("epoch") == 2 and types[-1] == "end"
    for record in records:
        expected = {"step": STEP_FIELDS, "epoch": EPOCH_FIELDS, "end": END_FIELDS}[record["type"]]
        assert expected <= record.keys()
    step = records[0]
    assert step["effective_batch"] == 8 and step["tokens"] == 8 * 32 and step["micro_steps"] == 2
    assert records[-1]["reason"] == "completed" and records[-1]["epochs"] == 2
    assert (run_dir / "checkpoints" / "latest.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert epoch_lines[1].startswith("epoch 2/2 train_loss=") and "val_loss=" in epoch_lines[1]
    assert "effective_batch=8 (4x2)" in epoch_lines[1] and "tokens/s=" in epoch_lines[1]


def test_console_script_runs_headless_and_exits_zero(small_corpus, tmp_path):
    script = Path(sys.executable).with_name("tui-trainer")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tui_trainer.cli.main"]
    result = subprocess.run([*command, "--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "r"),
                             "--epochs", "1", *TINY], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1 train_loss=" in result.stdout
    assert (tmp_path / "r" / "metrics.jsonl").exists()


def test_bare_command_without_a_terminal_falls_back_to_headless_with_a_note(small_corpus, tmp_path):
    result = subprocess.run([sys.executable, "-m", "tui_trainer.cli.main", "--data", str(small_corpus), "--run-dir",
                             str(tmp_path / "r"), "--epochs", "1", *TINY], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "running headless" in result.stderr
    assert "epoch 1/1" in result.stdout


def _write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


BAD_INPUTS = {
    "missing file": (lambda t: ["--data", str(t / "nope.txt")], "does not exist"),
    "empty file": (lambda t: ["--data", _write(t, "empty.txt", b"")], "is empty"),
    "binary file": (lambda t: ["--data", _write(t, "bin.txt", b"\x00\x01\x02" * 500)], "binary"),
    "not utf-8": (lambda t: ["--data", _write(t, "latin.txt", "café ".encode("latin-1") * 500)], "UTF-8"),
    "too short": (lambda t: ["--data", _write(t, "short.txt", b"hello world")], "too short"),
    "accum 0": (lambda t: ["--accum", "0"], "--accum"),
    "negative micro-batch": (lambda t: ["--micro-batch", "-4"], "--micro-batch"),
    "negative block size": (lambda t: ["--block-size", "-1"], "--block-size"),
    "negative layers": (lambda t: ["--n-layer", "-2"], "--n-layer"),
    "negative sample tokens": (lambda t: ["--sample-tokens", "-1"], "--sample-tokens"),
    "val split 0": (lambda t: ["--val-split", "0"], "--val-split"),
    "val split above 1": (lambda t: ["--val-split", "1.5"], "--val-split"),
    "block size beyond val split": (lambda t: ["--block-size", "4000"], "--block-size"),
    "n_embd not divisible": (lambda t: ["--n-embd", "30", "--n-head", "4"], "not divisible"),
    "unknown device": (lambda t: ["--device", "tpu"], "device"),
    "cuda absent": (lambda t: ["--device", "cuda"], "CUDA"),
    "not a number": (lambda t: ["--lr", "fast"], "--lr"),
    "unknown flag": (lambda t: ["--acum", "4"], "--acum"),
    "resume missing dir": (lambda t: ["--resume", str(t / "none")], "--resume"),
    "micro-batch beyond memory": (lambda t: ["--data", str(CORPUS), "--micro-batch", "900", "--block-size", "1024", "--device", "cpu",
                                             "--n-layer", "4", "--n-embd", "64", "--n-head", "8", "--dropout", "0.1"],
                                  "lower --micro-batch and raise --accum"),
    "micro-batch beyond the data": (lambda t: ["--micro-batch", "100000"], "training sequences"),
    "model beyond memory": (lambda t: ["--n-layer", "4", "--n-embd", "16384"], "use a smaller model"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_on_stderr_and_exit_2(case, small_corpus, tmp_path, capsys):
    if case == "cuda absent":
        import torch
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    extra, expected = BAD_INPUTS[case]
    run_dir = tmp_path / "run"
    args = ["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), *TINY, *extra(tmp_path)]
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(args))
    assert exited.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in captured.err
    assert not run_dir.exists()  # nothing that could be mistaken for a run


def test_bad_input_through_the_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tui_trainer.cli.main", "--no-ui", "--accum", "0", "--run-dir",
                             str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--accum" in result.stderr
    assert not (tmp_path / "r").exists()


def test_refuses_a_run_dir_that_already_holds_a_run_unless_overwrite(small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--epochs", "1", *TINY]
    assert main(base) == 0
    before = (run_dir / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert main([*base, "--overwrite"]) == 0
    assert (run_dir / "metrics.jsonl").read_text().count('"type": "end"') == 1


def test_a_run_dir_whose_run_never_took_a_step_is_started_again(small_corpus, tmp_path, capsys):
    # What a run killed while it built its model (an OOM kill, kill -9) leaves behind.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".tui-trainer-run").write_text('{"tool": "tui-trainer"}')  # written first: the folder is ours
    (run_dir / "config.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text("")
    assert main(["--no-ui", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint" in err and err.rstrip().endswith(f"start it again with --run-dir {run_dir}")
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--epochs", "1", *TINY]) == 0
    assert "never took a step: starting it again" in capsys.readouterr().out
    assert (run_dir / "checkpoints" / "latest.pt").is_file()


def test_a_run_dir_with_steps_but_no_checkpoint_needs_overwrite(small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--epochs", "1", *TINY]
    assert main(base) == 0
    shutil.rmtree(run_dir / "checkpoints")  # as if killed -9 before its first save
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err and "--overwrite" in err
    assert main(["--no-ui", "--resume", str(run_dir)]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    assert main([*base, "--overwrite"]) == 0


@pytest.mark.parametrize("leftover", ["best.pt only", "blank metrics"])
def test_what_is_not_a_resumable_run_is_still_not_thrown_away(leftover, small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--epochs", "1", *TINY]
    assert main(base) == 0
    if leftover == "best.pt only":  # killed between an epoch's two saves
        (run_dir / "checkpoints" / "latest.pt").unlink()
        (run_dir / "metrics.jsonl").write_text("")
        kept = (run_dir / "checkpoints" / "best.pt").read_bytes()
    else:
        shutil.rmtree(run_dir / "checkpoints")
        (run_dir / "metrics.jsonl").write_text("\n")
    capsys.readouterr()
    if leftover == "best.pt only":
        assert main(base) == 2 and "--overwrite" in capsys.readouterr().err
        assert (run_dir / "checkpoints" / "best.pt").read_bytes() == kept
    else:  # a blank line is no step: the run never took one
        assert main(base) == 0 and "never took a step" in capsys.readouterr().out


def test_toml_config_is_read_and_flags_override_it(small_corpus, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('[train]\naccum = 3\nepochs = 1\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\n'
                      'block_size = 32\n[data]\nlimit_train_batches = 3\nlimit_val_batches = 1\n')
    run_dir = tmp_path / "run"
    assert main(["--no-ui", "--config", str(config), "--data", str(small_corpus), "--run-dir", str(run_dir),
                 "--micro-batch", "2", "--threads", "1"]) == 0
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert saved["train"]["accum"] == 3 and saved["train"]["micro_batch"] == 2
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nacum = 3\n")
    capsys.readouterr()
    assert main(["--no-ui", "--config", str(typo), "--run-dir", str(tmp_path / "t")]) == 2
    assert "did you mean 'accum'" in capsys.readouterr().err
    typo.write_text("epochs = 3\n")
    assert main(["--no-ui", "--config", str(typo), "--run-dir", str(tmp_path / "t")]) == 2
    assert "outside any table — put it under [train]" in capsys.readouterr().err
    for text, words in [("epoch = 3\n", "did you mean 'epochs' under [train]?"),
                        ("train = 5\n", "must be a table — write [train]"),
                        ("[model]\nvocab_size = 65\n", "it comes from the data"),
                        ("[train]\nepochs = 2020-01-01\n", "got 2020-01-01")]:
        typo.write_text(text)
        assert main(["--no-ui", "--config", str(typo), "--run-dir", str(tmp_path / "t")]) == 2
        assert words in capsys.readouterr().err, text


@pytest.mark.parametrize("table, line, words", [
    ("model", 'n_layer = "x"', "n_layer in [model]"),
    ("train", "epochs = 2.5", "must be a whole number"),
    ("optim", 'lr = "fast"', "must be a number"),
    ("train", "compile = 1", "true or false"),
    ("data", "val_split = true", "must be a number"),
    ("optim", "beta1 = 1.5", "beta1 must be in [0, 1)"),
    ("train", "min_delta = nan", "min_delta must be a finite number"),
    ("diagnosis", "overfit_gap = nan", "overfit_gap must be a finite number"),
    ("diagnosis", "overfit_gap = -1.0", "diagnosis thresholds are out of range"),
    ("train", "epochs = true", "got true"),
    ("train", "limit_train_batches = 5", "belongs in another table — move it to [data]"),
])
def test_toml_value_of_the_wrong_type_or_range_is_one_line_and_exit_2(table, line, words, small_corpus, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(f"[{table}]\n{line}\n")
    run_dir = tmp_path / "run"
    assert main(["--no-ui", "--config", str(config), "--data", str(small_corpus), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert words in err and " — " in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_toml_integer_for_a_float_setting_is_accepted(small_corpus, tmp_path):
    config = tmp_path / "lr.toml"
    config.write_text("[optim]\nlr = 1\n[train]\nepochs = 1\n")
    run_dir = tmp_path / "run"
    assert main(["--no-ui", "--config", str(config), "--data", str(small_corpus), "--run-dir", str(run_dir), *TINY]) == 0
    assert json.loads((run_dir / "config.json").read_text())["config"]["optim"]["lr"] == 1.0


def test_default_corpus_is_found_from_any_working_directory(tmp_path):
    code = ("from tui_trainer.data.dataset import default_corpus_path; p = default_corpus_path(); "
            "print(p.name, p.stat().st_size)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    name, size = result.stdout.split()
    assert name == "tinyshakespeare.txt" and int(size) > 1_000_000


def test_the_options_page_lists_every_config_key_in_its_table():
    import re
    from dataclasses import fields

    from tui_trainer.config import RunConfig

    readme = (Path(__file__).resolve().parent.parent / "docs" / "options.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    listed: dict[str, set[str]] = {}
    section = ""
    for line in block.splitlines():
        header = re.match(r"\[(\w+)\]", line)
        section = header.group(1) if header else section
        listed.setdefault(section, set()).update(re.findall(r"\w+", line.split("#", 1)[1]))
    expected = {f.name: {g.name for g in fields(f.default_factory)} - ({"vocab_size"} if f.name == "model" else set())
                for f in fields(RunConfig) if f.name != "run_dir"}
    assert listed == expected


# -- subcommands, help and version ----------------------------------------------------------------

def option_blocks(help_text: str) -> dict[str, str]:
    """Each option of a --help page with its (possibly wrapped) help text, by its flag."""
    blocks: dict[str, str] = {}
    flag = None
    for line in help_text.splitlines():
        stripped = line.strip()
        if line.startswith("  -"):
            flag = stripped.split()[0].rstrip(",")
            blocks[flag] = stripped
        elif flag and line.startswith("    "):
            blocks[flag] += " " + stripped
        else:
            flag = None
    return blocks


def test_train_help_groups_the_flags_and_shows_every_default(capsys):
    from tui_trainer.cli.flags import FLAGS

    with pytest.raises(SystemExit) as exited:
        main(["train", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    titles = [line for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["options:", "model:", "data:", "optimisation:", "run control:"]
    blocks = option_blocks(text)
    assert {flag for flag, *_ in FLAGS} | {"--no-ui", "--run-dir", "--resume", "--overwrite", "--config",
                                          "--compile"} <= blocks.keys()
    for flag, block in blocks.items():
        assert flag == "-h" or "(default: " in block, block
    # The figures come from the config dataclasses.
    assert "(default: 16)" in blocks["--micro-batch"] and "(default: 8; 1 with --time-budget)" in blocks["--accum"]
    assert "(default: 0.001; fine-tuning and --time-budget runs choose their own" in blocks["--lr"]
    assert "(default: 6)" in blocks["--n-layer"]
    assert "(default: off)" in blocks["--compile"] and "(default: no cap)" in blocks["--limit-train-batches"]
    # Validation's default follows a training cap, and the help says how.
    assert "(default: no cap; with --limit-train-batches N, ceil(N x val_split / (1 - val_split)))" in " ".join(
        blocks["--limit-val-batches"].split())
    assert "(default: 5% of the run" in blocks["--warmup-tokens"]
    model_part = text[text.index("\nmodel:"):text.index("\ndata:")]
    assert "--n-embd" in model_part and "--lr" not in model_part


def test_python_dash_m_is_the_console_script():
    top = subprocess.run([sys.executable, "-m", "tui_trainer", "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("usage: tui-trainer ") and "train" in top.stdout
    train = subprocess.run([sys.executable, "-m", "tui_trainer", "train", "--help"], capture_output=True, text=True,
                           timeout=60)
    assert train.returncode == 0 and "usage: tui-trainer train" in train.stdout and "optimisation:" in train.stdout
    bad = subprocess.run([sys.executable, "-m", "tui_trainer", "--accum", "0", "--no-ui"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--accum" in bad.stderr


def test_version_is_printed_from_the_package():
    import tui_trainer

    result = subprocess.run([sys.executable, "-m", "tui_trainer", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout == f"tui-trainer {tui_trainer.__version__}\n"


def test_bare_flags_and_the_train_command_are_the_same_run(small_corpus, tmp_path, capsys):
    losses = []
    for name, prefix in (("bare", []), ("train", ["train"])):
        run_dir = tmp_path / name
        assert main([*prefix, "--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--epochs", "1",
                     *TINY]) == 0
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in records if r["type"] == "step"])
    assert len(losses[0]) == 3 and losses[0] == losses[1]


def test_an_unknown_command_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["trian", "--no-ui"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "trian" in err and "tui-trainer --help" in err
