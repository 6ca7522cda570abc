"""Samples of a byte-level BPE run: no U+FFFD. Ids the training text never holds are never sampled
(their embeddings are untrained), a character split over tokens is never shown half, and a BPE
that learnt fewer tokens than asked says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CORPUS, TINY_MODEL, ScriptedSink, tiny_config, train

from tui_trainer.cli.main import main
from tui_trainer.config import DataConfig
from tui_trainer.data.dataset import load_corpus
from tui_trainer.data.tokenizer import CharTokenizer, train_bpe
from tui_trainer.data.untrained import untrained_ids
from tui_trainer.events import EpochEvent, SampleEvent
from tui_trainer.model.next_token import NextTokenRule, untrained_mask
from tui_trainer.model.sampling import TextStream, decode_text, pick_next

ACCENTED = "naïve café — thé déjà vu, größer Ünïcödé 東京 €5\n"


@pytest.fixture
def accented_corpus(tmp_path: Path) -> Path:
    """Shakespeare with accented letters and multi-byte punctuation all through it (~60 KB)."""
    text = CORPUS.read_text(encoding="utf-8")[:50_000]
    text = text.replace("the", "thé").replace("and", "änd").replace("o", "ö").replace(",", " —")
    path = tmp_path / "accented.txt"
    path.write_text(text, encoding="utf-8")
    return path


# -- the sampler keeps to ids the model was trained on ---------------------------------------------

def test_a_masked_id_is_never_picked_greedy_or_sampled():
    logits = torch.tensor([0.0, 5.0, 1.0, 4.9])
    banned = untrained_mask([1], 4)
    assert pick_next(logits, 0.0, None, torch.Generator().manual_seed(0)) == 1
    assert pick_next(logits, 0.0, None, torch.Generator().manual_seed(0), banned) == 3
    generator = torch.Generator().manual_seed(0)
    picks = {pick_next(logits, 1.0, None, generator, banned) for _ in range(300)}
    assert 1 not in picks and picks == {0, 2, 3}
    assert pick_next(logits, 1.0, 1, generator, banned) == 3  # top-k among the allowed


def test_no_untrained_ids_means_no_mask_and_the_same_choices():
    assert untrained_mask([], 4) is None
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    assert pick_next(logits, 0.0, None, torch.Generator(), None) == int(torch.argmax(logits))


def test_untrained_ids_are_those_the_training_split_never_holds(tmp_path):
    # "Z" occurs only in the last tenth (the validation split): its id is untrained.
    text = "abc abc\n" * 200 + "Z" * 40
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(DataConfig(path=str(path), cache_dir=str(tmp_path / "cache")), 8)
    assert corpus.untrained_ids == (corpus.vocab.chars.index("Z"),)
    every = "abcZ \n" * 300
    assert untrained_ids(CharTokenizer.from_text(every).encode(every).numpy(), 6) == ()


def test_a_bpe_corpus_of_ascii_text_leaves_most_bytes_untrained(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    corpus = load_corpus(DataConfig(path=str(path), tokenizer="bpe", vocab_size=400,
                                    cache_dir=str(tmp_path / "cache")), 16)
    untrained = set(corpus.untrained_ids)
    nul = corpus.vocab.encode("\x00").tolist()
    assert len(nul) == 1 and nul[0] in untrained  # NUL: never in the text
    assert not untrained & set(np.asarray(corpus.train_tokens).tolist())
    again = load_corpus(DataConfig(path=str(path), tokenizer="bpe", vocab_size=400,
                                   cache_dir=str(tmp_path / "cache")), 16)
    assert again.untrained_ids == corpus.untrained_ids  # (remembered beside the cache)


# -- a character is shown whole or not at all ------------------------------------------------------

def test_a_byte_level_bpe_spells_each_id_as_its_exact_bytes():
    bpe = train_bpe(iter([ACCENTED * 20]), 300)
    id_bytes = bpe.id_bytes()
    for text in (ACCENTED, "ü\x00\x1b😀"):
        assert b"".join(id_bytes[i] for i in bpe.encode(text).tolist()) == text.encode("utf-8")


def test_the_stream_drops_a_character_its_last_token_leaves_incomplete():
    bpe = train_bpe(iter([ACCENTED * 20]), 256)  # bytes only: each multi-byte character is split
    ids = bpe.encode("a€b€").tolist()[:-1]  # ends one byte short of the last €
    pieces: list[str] = []
    stream = TextStream(bpe, pieces.append)
    for i in ids:
        stream(i)
    stream.flush()
    assert "".join(pieces) == "a€b" == decode_text(bpe, ids)
    assert bpe.decode(ids).endswith("\ufffd")  # what the tokenizer alone says


# -- ids that would make the text invalid UTF-8 -----------------------------------------------------

def test_after_half_a_character_only_ids_that_continue_it_may_follow():
    id_bytes = [b"a", b"\xc3", b"\xa9", b"\xc3\xa9", b"\xa9b", b"\xe2\x82"]
    rule = NextTokenRule(len(id_bytes), untrained_ids=[5], id_bytes=id_bytes)
    assert rule.mask().tolist() == [False, False, True, False, True, True]  # no lone continuation; 5 untrained
    rule.took(1)  # "\xc3": half of é
    assert rule.mask().tolist() == [True, True, False, True, False, True]  # only a continuation byte
    rule.took(4)  # "\xa9b": é completed, then b
    assert rule.mask().tolist() == [False, False, True, False, True, True]


def test_a_beginning_no_byte_can_finish_is_never_picked():
    """ED A0 would begin a surrogate: Python's incremental decoder takes it, UTF-8 has no end for it."""
    id_bytes = [b"a", b"\xed", b"\xa0", b"\x80", b"\xe0", b"\xe0\x80"]
    rule = NextTokenRule(len(id_bytes), id_bytes=id_bytes)
    assert rule.mask().tolist() == [False, False, True, True, False, True]  # E0 80: overlong, never finished
    rule.took(1)
    assert rule.mask().tolist() == [True, True, True, False, True, True]  # ED 80 may go on; ED A0 may not


def test_a_char_vocabulary_needs_no_rule_so_its_choices_stay_exactly_as_they_were():
    vocab = CharTokenizer.from_text("héllo wörld\n")
    assert NextTokenRule(vocab.size, (), vocab.id_bytes()).mask() is None


def test_a_byte_vocabulary_samples_valid_utf8_even_from_an_untrained_model():
    from tui_trainer.config import ModelConfig
    from tui_trainer.model.gpt import GPT
    from tui_trainer.model.sampling import SamplingSettings, sample_text

    bpe = train_bpe(iter([ACCENTED * 20]), 256)  # bytes only
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, dropout=0.0, vocab_size=bpe.size))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, param.shape[-1] ** -0.5)  # random weights: any byte after any byte
    for seed in range(3):
        text = sample_text(model, bpe, "é", SamplingSettings(max_new_tokens=300, temperature=1.0, seed=seed))
        assert "\ufffd" not in text and len(text) > 50


# -- a run on text with accents ---------------------------------------------------------------------

def test_a_bpe_run_on_accented_text_samples_no_replacement_characters(accented_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = ["--no-ui", "--data", str(accented_corpus), "--tokenizer", "bpe", "--vocab-size", "320",
             *TINY_MODEL, "--limit-train-batches", "20", "--log-every", "off", "--sample-tokens", "300"]
    assert main([*flags, "--run-dir", str(run_dir), "--epochs", "2"]) == 0
    log = capsys.readouterr().out
    samples = [line for line in log.splitlines() if line.startswith("sample after epoch")]
    assert len(samples) == 2 and not any("\ufffd" in line for line in samples), samples
    assert "\\x00" not in log  # a NUL byte token (untrained) was sampled before
    for seed in ("1", "2", "3"):
        assert main(["sample", str(run_dir), "--tokens", "400", "--seed", seed]) == 0
        assert "\ufffd" not in capsys.readouterr().out
    # The loop's own samples (the app's panel shows these): after each epoch, and `g`.
    cfg = tiny_config(accented_corpus, tmp_path / "run2", epochs=2, sample_tokens=300)
    cfg = cfg.replace(data=DataConfig(path=str(accented_corpus), tokenizer="bpe", vocab_size=320,
                                      limit_train_batches=20, limit_val_batches=4))
    sink = ScriptedSink({5: lambda trainer: trainer.control.sample()})
    trainer, sink, _ = train(cfg, sink)
    texts = [e.sample for e in sink.events if isinstance(e, EpochEvent)]
    texts += [e.text for e in sink.events if isinstance(e, SampleEvent)]
    assert len(texts) == 3 and not any("\ufffd" in t for t in texts), texts
    assert trainer.session.untrained_ids  # (bytes the text never has)


def test_a_bpe_that_learnt_fewer_tokens_than_asked_says_why_once(tmp_path, capsys):
    path = tmp_path / "small.txt"
    path.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    flags = ["--no-ui", "--data", str(path), "--tokenizer", "bpe", "--vocab-size", "8192", *TINY_MODEL,
             "--limit-train-batches", "2", "--log-every", "off", "--sample-tokens", "0"]
    assert main([*flags, "--run-dir", str(tmp_path / "run"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "BPE learnt" in line]
    assert len(lines) == 1, out
    assert "of the 8,192 asked" in lines[0] and "nothing left to merge" in lines[0]
    assert main(["--no-ui", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 0
    assert "BPE learnt" not in capsys.readouterr().out  # said once, when the run began


async def test_the_app_shows_a_samples_control_characters_escaped_not_raw():
    # (a cold trial: C1 controls, bidi overrides and unassigned code points reached the screen, and a
    # sample panel's border doubled where a width was counted wrong)
    from tui_trainer.ui.view import RunView, SampleShown
    from tui_trainer.ui.widgets.samples import sample_text

    view = RunView()
    view.sample = SampleShown(text="a\x9bb\u202ec\U0001fcfa\nd\te", epoch=1, step=1, asked=False)
    shown = sample_text(view).plain
    assert shown == "a\\x9bb\\u202ec\\U0001fcfa\nd\te"
