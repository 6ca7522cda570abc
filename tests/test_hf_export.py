"""`tui-trainer export RUN_DIR --hf OUT_DIR`: transformers loads the folder and computes what we compute.

Two tiny real runs through the CLI: a char run (exact GELU) and a BPE run with the tanh GELU.
Each export is loaded with GPT2LMHeadModel and AutoTokenizer, and compared with our model on a
batch of logits and on greedy text (`tui-trainer sample --temperature 0`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CORPUS

from tui_trainer.cli.main import main
from tui_trainer.cli.sample import load_run

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--micro-batch", "4",
        "--accum", "2", "--threads", "1", "--limit-train-batches", "6", "--limit-val-batches", "2",
        "--epochs", "1", "--precision", "fp32", "--sample-tokens", "0", "--dropout", "0"]


def cli(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as exited:
        return exited.code


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A char run (exact GELU) and a BPE run (tanh GELU), one short epoch each."""
    root = tmp_path_factory.mktemp("hf")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    made = {}
    for name, extra in (("char", []), ("bpe", ["--tokenizer", "bpe", "--vocab-size", "300", "--gelu", "tanh"])):
        made[name] = root / name
        assert cli("--no-ui", "--data", str(corpus), "--run-dir", str(made[name]), *TINY, *extra) == 0
    return made


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for name, run_dir in runs.items():
        out[name] = root / name
        assert cli("export", str(run_dir), "--hf", str(out[name])) == 0
    return out


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_transformers_gives_our_logits_and_our_token_ids(runs, exported, kind):
    ours = load_run(runs[kind])
    theirs = transformers.GPT2LMHeadModel.from_pretrained(exported[kind]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported[kind])
    text = CORPUS.read_text(encoding="utf-8")[30_000:31_000]
    ids = [int(i) for i in ours.tokenizer.encode(text)]
    assert tokenizer(text)["input_ids"] == ids
    assert tokenizer.decode(ids) == text
    batch = torch.tensor([ids[i * 32:(i + 1) * 32] for i in range(4)])
    with torch.no_grad():
        difference = (theirs(batch).logits - ours.model(batch)).abs().max().item()
    assert difference <= 1e-4
    assert theirs.config.activation_function == {"char": "gelu", "bpe": "gelu_new"}[kind]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_greedy_text_is_the_same_as_sample_at_temperature_0(runs, exported, kind, capsys):
    prompt, tokens = "ROMEO:\nWhat", 16  # prompt + new tokens within the context of 32: no window slides
    assert cli("sample", str(runs[kind]), "--prompt", prompt, "--tokens", str(tokens), "--temperature", "0") == 0
    ours = capsys.readouterr().out
    model = transformers.GPT2LMHeadModel.from_pretrained(exported[kind]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported[kind])
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    generated = model.generate(prompt_ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    theirs = prompt + tokenizer.decode(generated[0, prompt_ids.shape[1]:])
    assert ours == theirs if theirs.endswith("\n") else ours == theirs + "\n"


def test_the_folder_holds_gpt2_names_layouts_and_a_model_card(runs, exported):
    config = json.loads((exported["char"] / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == (2, 2, 32)
    assert config["n_positions"] == config["n_ctx"] == 32 and config["tie_word_embeddings"] is True
    assert config["layer_norm_epsilon"] == 1e-5
    tensors = safetensors_torch.load_file(str(exported["char"] / "model.safetensors"))
    assert "lm_head.weight" not in tensors  # tied: stored once, as wte
    assert not any(name.split(".")[-2:] in (["attn", "bias"], ["attn", "masked_bias"]) for name in tensors)
    ours = load_run(runs["char"]).model.state_dict()
    assert torch.equal(tensors["transformer.h.0.mlp.c_fc.weight"], ours["blocks.0.mlp.fc.weight"].t())
    assert tensors["transformer.h.1.attn.c_attn.weight"].shape == (32, 96)
    card = (exported["char"] / "README.md").read_text()
    state = torch.load(runs["char"] / "checkpoints" / "best.pt", weights_only=False)
    assert f"{state['loop']['tokens_seen']:,} tokens seen" in card
    assert f"{state['loop']['val_history'][-1]:.4f}" in card and "--n-layer 2" in card and "--gelu" not in card
    bpe_card = (exported["bpe"] / "README.md").read_text()
    assert "--tokenizer bpe" in bpe_card and "--gelu tanh" in bpe_card
    assert (exported["bpe"] / "tokenizer.json").read_text() == (runs["bpe"] / "tokenizer.json").read_text()


def test_a_non_empty_folder_is_refused_without_overwrite_and_replaced_with_it(runs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli("export", str(runs["char"]), "--hf", str(out)) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert cli("export", str(runs["char"]), "--hf", str(out), "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left beside it


def test_overwrite_never_replaces_a_run_dir(runs, capsys):
    for target in (runs["char"], runs["char"].parent):
        assert cli("export", str(runs["char"]), "--hf", str(target), "--overwrite") == 2
        assert "would replace a run dir" in capsys.readouterr().err
    assert (runs["char"] / "checkpoints" / "best.pt").is_file()


def test_a_run_without_a_checkpoint_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text((runs["char"] / "config.json").read_text())
    assert cli("export", str(run_dir), "--hf", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_tanh_model_is_not_exported_as_exact(runs):
    """The GELU is recorded in the checkpoint and exported as what the run computed."""
    run = load_run(runs["bpe"])
    assert run.config.model.gelu == "tanh" and run.model.blocks[0].mlp.approximate == "tanh"
    assert load_run(runs["char"]).model.blocks[0].mlp.approximate == "none"


def test_exporting_needs_no_transformers(runs, tmp_path):
    """transformers made unimportable: the export still writes the folder (only checking it needs it)."""
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from tui_trainer.cli.main import main\n"
            f"sys.exit(main(['export', {str(runs['char'])!r}, '--hf', {str(tmp_path / 'out')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_model_export_flags_without_hf_are_refused(runs, capsys):
    assert cli("export", str(runs["char"]), "--tensorboard", "--overwrite") == 2
    assert "--overwrite is for the model export (--hf)" in capsys.readouterr().err
    assert not (runs["char"] / "tensorboard").exists()
