"""--init-from's loader: a tiny GPT-2 made here with transformers (random weights, save_pretrained)
loads into our GPT and computes the same logits; bad folders and contradicting flags are one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import CORPUS

from tui_trainer.cli.main import main
from tui_trainer.config import ModelConfig
from tui_trainer.data.hf_tokenizer import check_vocab_fits
from tui_trainer.data.tokenizer import train_bpe
from tui_trainer.errors import UserError
from tui_trainer.model.gpt import GPT
from tui_trainer.rundir.init_source import check_init_from, init_state_dict, read_init_source

transformers = pytest.importorskip("transformers")

VOCAB = 300


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 with random weights and a byte-level BPE of 300 tokens, as save_pretrained writes them."""
    folder = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    text = CORPUS.read_text(encoding="utf-8")[:20_000]
    tokenizer = train_bpe(iter([text]), VOCAB)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     activation_function="gelu_new", bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # biases and LayerNorms away from their 0/1 init, so a misplaced one shows
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(folder)
    tokenizer.save(folder)
    return folder


def theirs_and_ours(folder: Path, block_size: int | None = None) -> tuple[torch.nn.Module, GPT]:
    source = read_init_source(folder)
    block_size = block_size or source.n_positions
    cfg = ModelConfig(n_layer=source.n_layer, n_head=source.n_head, n_embd=source.n_embd, block_size=block_size,
                      dropout=0.0, vocab_size=source.vocab_size, gelu=source.gelu)
    ours = GPT(cfg)
    ours.load_state_dict(init_state_dict(source, block_size))
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval(), ours.eval()


def batch_of(folder: Path, length: int) -> torch.Tensor:
    ids = read_init_source(folder).tokenizer.encode(CORPUS.read_text(encoding="utf-8")[40_000:42_000])
    return torch.stack([ids[i * length:(i + 1) * length] for i in range(3)])


def test_a_gpt2_folder_gives_our_gpt_the_same_logits(gpt2_folder):
    theirs, ours = theirs_and_ours(gpt2_folder)
    batch = batch_of(gpt2_folder, 64)
    with torch.no_grad():
        assert (theirs(batch).logits - ours(batch)).abs().max().item() <= 1e-4
    source = read_init_source(gpt2_folder)
    assert (source.gelu, source.dropout, source.tokenizer.size) == ("tanh", 0.1, VOCAB)


def test_a_shorter_context_keeps_the_first_positions(gpt2_folder):
    theirs, ours = theirs_and_ours(gpt2_folder, block_size=16)
    assert ours.position_embedding.weight.shape[0] == 16
    batch = batch_of(gpt2_folder, 16)
    with torch.no_grad():
        assert (theirs(batch).logits - ours(batch)).abs().max().item() <= 1e-4


def test_pytorch_model_bin_and_vocab_plus_merges_load_too(gpt2_folder, tmp_path):
    """An older folder: weights in pytorch_model.bin (with GPT-2's mask buffers), tokenizer as vocab.json + merges.txt."""
    old = tmp_path / "old-gpt2"
    old.mkdir()
    shutil.copy(gpt2_folder / "config.json", old)
    from safetensors.torch import load_file

    weights = {name.removeprefix("transformer."): t for name, t in load_file(gpt2_folder / "model.safetensors").items()}
    weights["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))  # the causal mask old files carry
    torch.save(weights, old / "pytorch_model.bin")
    read_init_source(gpt2_folder).tokenizer.tokenizer.model.save(str(old))  # vocab.json + merges.txt
    _, ours = theirs_and_ours(gpt2_folder)
    _, old_ours = theirs_and_ours(old)
    batch = batch_of(gpt2_folder, 64)
    with torch.no_grad():
        assert torch.equal(old_ours(batch), ours(batch))
    assert torch.equal(batch_of(old, 64), batch)  # the same ids from vocab.json + merges.txt


def test_a_run_dir_source_gives_its_best_weights_and_its_characters(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    run_dir = tmp_path / "run"
    assert main(["--no-ui", "--data", str(corpus), "--run-dir", str(run_dir), "--epochs", "1", "--n-layer", "1",
                 "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--micro-batch", "4", "--accum", "2",
                 "--threads", "1", "--limit-train-batches", "4", "--limit-val-batches", "2",
                 "--sample-tokens", "0"]) == 0
    source = read_init_source(run_dir)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    assert (source.kind, source.n_layer, source.n_positions, source.gelu) == ("run", 1, 32, "exact")
    assert source.tokenizer.chars == tuple(best["vocab"])
    state = init_state_dict(source, 16)
    assert torch.equal(state["position_embedding.weight"], best["model"]["position_embedding.weight"][:16])
    assert torch.equal(state["blocks.0.mlp.fc.weight"], best["model"]["blocks.0.mlp.fc.weight"])


def test_a_char_source_refuses_data_with_other_characters(tmp_path):
    from tui_trainer.data.tokenizer import CharTokenizer
    from tui_trainer.rundir.init_source import HF, InitSource, check_corpus_tokenizer

    source = InitSource(tmp_path, HF, 1, 1, 8, 8, 3, "exact", 0.0, CharTokenizer(("a", "b", "c")))
    check_corpus_tokenizer(source, CharTokenizer(("a", "b", "c")))
    with pytest.raises(UserError) as refused:
        check_corpus_tokenizer(source, CharTokenizer(("a", "b", "c", "z")))
    assert "'z'" in refused.value.message


def _edited(folder: Path, tmp_path: Path, **fields) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(fields)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(("fields", "named"), [({"model_type": "llama"}, "model_type"),
                                               ({"activation_function": "relu"}, "activation_function"),
                                               ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
                                               ({"n_inner": 100}, "n_inner"),
                                               ({"scale_attn_by_inverse_layer_idx": True},
                                                "scale_attn_by_inverse_layer_idx"),
                                               ({"tie_word_embeddings": False}, "tie_word_embeddings")])
def test_a_folder_that_is_not_gpt2_shaped_names_the_field(gpt2_folder, tmp_path, fields, named):
    with pytest.raises(UserError) as refused:
        read_init_source(_edited(gpt2_folder, tmp_path, **fields))
    assert f"{named} = " in refused.value.message


def test_a_missing_tokenizer_or_folder_is_one_clear_line(gpt2_folder, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(gpt2_folder, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(UserError) as refused:
        read_init_source(bare)
    assert "has no tokenizer" in refused.value.message
    with pytest.raises(UserError) as refused:
        read_init_source(tmp_path / "nowhere")
    assert "no such folder" in refused.value.message
    assert "~/.cache/huggingface/hub/models--gpt2/snapshots/<hash>/" in refused.value.hint


def test_a_vocabulary_beyond_the_token_cache_ids_is_refused():
    check_vocab_fits(2**32, "here")
    with pytest.raises(UserError) as refused:
        check_vocab_fits(2**32 + 1, "here")
    assert "uint32" in refused.value.message


def test_flags_that_contradict_the_source_are_refused_and_the_rest_taken_from_it(gpt2_folder):
    from tui_trainer.config import RunConfig

    cfg = RunConfig().replace(model=replace(ModelConfig(), init_from=str(gpt2_folder)))
    taken = check_init_from(cfg, {"model.block_size": 32})
    assert (taken.model.n_layer, taken.model.n_embd, taken.model.block_size, taken.model.gelu) == (2, 32, 32, "tanh")
    assert taken.model.dropout == 0.1
    for given, flag in (({"model.n_layer": 6}, "--n-layer 6"), ({"model.gelu": "exact"}, "--gelu exact"),
                        ({"data.tokenizer": "char"}, "--tokenizer"), ({"model.block_size": 65}, "--block-size 65")):
        with pytest.raises(UserError) as refused:
            check_init_from(cfg, given)
        assert refused.value.message.startswith(flag)


def test_the_cli_refuses_a_contradicting_flag_with_one_line(gpt2_folder, tmp_path, capsys):
    code = main(["--no-ui", "--init-from", str(gpt2_folder), "--n-embd", "64", "--n-head", "2",
                 "--run-dir", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--n-embd 64 contradicts --init-from" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_run_started_from_a_gpt2_folder_trains_from_its_weights_and_exports_back(gpt2_folder, tmp_path, capsys):
    """A near-zero learning rate keeps the weights: the run's checkpoint is the source (first 32
    positions), its tokenizer.json is the source's, and its export computes what the source computes."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    run_dir = tmp_path / "run"
    assert main(["--no-ui", "--init-from", str(gpt2_folder), "--block-size", "32", "--data", str(corpus),
                 "--run-dir", str(run_dir), "--epochs", "1", "--micro-batch", "4", "--accum", "1", "--lr", "1e-12",
                 "--weight-decay", "0", "--threads", "1", "--limit-train-batches", "1", "--limit-val-batches", "2",
                 "--sample-tokens", "0", "--precision", "fp32", "--dropout", "0"]) == 0
    assert f"started from GPT-2 folder {gpt2_folder}" in capsys.readouterr().out
    weights = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)["model"]
    source = init_state_dict(read_init_source(gpt2_folder), 32)
    assert all(torch.allclose(weights[name], source[name], atol=1e-9) for name in source)
    assert (run_dir / "tokenizer.json").read_text() == (gpt2_folder / "tokenizer.json").read_text()
    assert main(["export", str(run_dir), "--hf", str(tmp_path / "back")]) == 0
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    original = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    assert back.config.activation_function == "gelu_new"
    batch = batch_of(gpt2_folder, 32)
    with torch.no_grad():
        assert (back(batch).logits - original(batch).logits).abs().max().item() <= 1e-4


def test_a_padded_vocabulary_trains_resumes_and_keeps_its_rows(gpt2_folder, tmp_path):
    """Embedding rows beyond the tokenizer's ids (a vocabulary padded as nanoGPT pads GPT-2's): kept, and resumable."""
    padded = tmp_path / "padded"
    padded.mkdir()
    shutil.copy(gpt2_folder / "tokenizer.json", padded)
    config = transformers.GPT2Config(vocab_size=VOCAB + 4, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=None, eos_token_id=None)
    transformers.GPT2LMHeadModel(config).save_pretrained(padded)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    common = ["--no-ui", "--micro-batch", "4", "--accum", "1", "--threads", "1", "--limit-train-batches", "2",
              "--limit-val-batches", "1", "--sample-tokens", "0"]
    run_dir = tmp_path / "run"
    assert main([*common, "--init-from", str(padded), "--block-size", "32", "--data", str(corpus),
                 "--run-dir", str(run_dir), "--epochs", "1"]) == 0
    assert main(["--resume", str(run_dir), "--epochs", "2", "--no-ui"]) == 0
    weights = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["model"]
    assert weights["token_embedding.weight"].shape[0] == VOCAB + 4
