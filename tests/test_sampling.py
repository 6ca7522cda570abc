"""Generation: the KV cache against a full recompute, greedy identity, seeds, top-k, the RNG."""

from __future__ import annotations

import pytest
import torch

from tui_trainer.config import ModelConfig
from tui_trainer.data.dataset import Vocabulary
from tui_trainer.errors import UserError
from tui_trainer.model.gpt import GPT
from tui_trainer.model.sampling import (
    ContextWindow,
    SamplingSettings,
    TextStream,
    check_settings,
    generate,
    live_sample,
    pick_next,
    sample_text,
)

BLOCK = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(block_size: int = BLOCK, vocab_size: int = 23, dropout: float = 0.1, gelu: str = "exact") -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, dropout=dropout,
                            vocab_size=vocab_size, gelu=gelu))
    # Larger weights than the init's (whose logits are near-uniform and whose greedy text repeats
    # one token): the choices are clear and the text varies, so the context matters.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, param.shape[-1] ** -0.5)
    return model


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_cached_logits_match_a_full_recompute_at_every_step_including_after_slides(gelu):
    model = tiny_model(gelu=gelu).eval()
    generator = torch.Generator().manual_seed(3)
    cached = ContextWindow(model, use_cache=True)
    tokens = [1, 5, 7, 2, 9]
    starts = set()
    with torch.inference_mode():
        for _ in range(5 * BLOCK):
            logits = cached.next_logits(tokens)
            # The reference: the training forward over the very same window, from scratch.
            full = model(torch.tensor([tokens[cached.start:]]))[0, -1]
            assert torch.allclose(logits, full, atol=1e-5, rtol=0), (len(tokens), cached.start)
            assert len(tokens) - cached.start <= BLOCK
            starts.add(cached.start)
            tokens.append(pick_next(logits, 1.0, None, generator))
    assert len(starts) >= 8  # the window slid many times


def test_a_chunk_after_cached_positions_sees_exactly_the_positions_before_it():
    # forward_cached with start > 0 and several new tokens uses an explicit offset mask.
    model = tiny_model().eval()
    ids = torch.randint(0, 23, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cache = model.new_kv_cache(batch=2)
        model.forward_cached(ids[:, :5], cache)
        chunk_logits = model.forward_cached(ids[:, 5:], cache)
        full = model(ids)[:, -1]
    assert cache.length == 12
    assert torch.allclose(chunk_logits, full, atol=1e-5, rtol=0)


def test_the_window_slides_to_its_last_half_when_full():
    model = tiny_model().eval()
    window = ContextWindow(model, use_cache=True)
    tokens = list(range(BLOCK))
    with torch.inference_mode():
        window.next_logits(tokens)
        assert window.start == 0 and window.cache.length == BLOCK
        tokens.append(3)
        window.next_logits(tokens)
    assert window.start == len(tokens) - BLOCK // 2
    assert window.cache.length == BLOCK // 2


@pytest.mark.parametrize("prompt_length", [1, 5, BLOCK + 7])
def test_greedy_output_is_identical_with_and_without_the_cache(prompt_length):
    model = tiny_model()
    prompt = [(3 * i + 1) % 23 for i in range(prompt_length)]
    settings = SamplingSettings(max_new_tokens=4 * BLOCK, temperature=0)
    with_cache = generate(model, prompt, settings)
    without = generate(model, prompt, SamplingSettings(max_new_tokens=4 * BLOCK, temperature=0, kv_cache=False))
    assert with_cache == without
    assert len(with_cache) == 4 * BLOCK
    assert len(set(with_cache)) > 1  # not a degenerate repeat of one token


def test_the_same_seed_gives_the_same_tokens_and_another_seed_others():
    model = tiny_model()
    settings = SamplingSettings(max_new_tokens=40, temperature=1.0, seed=7)
    first = generate(model, [1, 2, 3], settings)
    assert generate(model, [1, 2, 3], settings) == first
    assert generate(model, [1, 2, 3], SamplingSettings(max_new_tokens=40, temperature=1.0, seed=8)) != first


def test_top_k_never_picks_outside_the_k_most_likely_tokens():
    generator = torch.Generator().manual_seed(0)
    seen: set[int] = set()
    for trial in range(200):
        logits = torch.randn(50, generator=torch.Generator().manual_seed(trial))
        allowed = set(torch.topk(logits, 3).indices.tolist())
        choice = pick_next(logits, 2.0, 3, generator)  # a high temperature flattens the rest
        assert choice in allowed
        seen.add(sorted(allowed, key=lambda i: -logits[i]).index(choice))
    assert seen == {0, 1, 2}  # it does sample among the k, not just the top one


def test_sampled_tokens_follow_the_softmax_probabilities_and_never_a_zero_probability_one():
    probabilities = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probabilities.log()  # the last is -inf: probability 0, as top-k's masked tokens are
    generator = torch.Generator().manual_seed(0)
    draws = 20_000
    counts = torch.bincount(torch.tensor([pick_next(logits, 1.0, None, generator) for _ in range(draws)]),
                            minlength=5)
    assert counts[4] == 0
    # four standard deviations of a frequency at p = 0.5 over 20,000 draws is 0.014
    assert torch.allclose(counts / draws, probabilities, atol=0.014, rtol=0), counts.tolist()


def test_top_k_one_is_greedy():
    model = tiny_model()
    greedy = generate(model, [4], SamplingSettings(max_new_tokens=30, temperature=0))
    assert generate(model, [4], SamplingSettings(max_new_tokens=30, temperature=1.5, top_k=1)) == greedy


def test_sampling_leaves_the_global_rng_and_the_training_mode_as_they_were():
    model = tiny_model(dropout=0.2)
    model.train()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    generate(model, [1], SamplingSettings(max_new_tokens=20, temperature=1.0))
    generate(model, [1], SamplingSettings(max_new_tokens=20, temperature=1.0, kv_cache=False))
    assert torch.equal(torch.get_rng_state(), before)
    assert model.training and all(m.training for m in model.modules())


def test_sample_text_streams_the_same_text_it_returns():
    vocab = Vocabulary.from_text("hello world\n")
    model = tiny_model(vocab_size=vocab.size)
    pieces: list[str] = []
    text = sample_text(model, vocab, "he", SamplingSettings(max_new_tokens=25, temperature=0.8), on_text=pieces.append)
    assert "".join(pieces) == text and len(text) == 25
    assert set(text) <= set(vocab.chars)


class ByteTokenizer:
    """A tokenizer whose tokens can end mid-character, as byte-level BPE's can."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_the_text_stream_holds_back_a_character_until_its_bytes_are_complete():
    pieces: list[str] = []
    stream = TextStream(ByteTokenizer(), pieces.append)
    for byte in "aé€b".encode("utf-8"):
        stream(byte)
    stream.flush()
    assert pieces == ["a", "é", "€", "b"]


@pytest.mark.parametrize("settings, flag", [
    (SamplingSettings(max_new_tokens=0), "--tokens"),
    (SamplingSettings(temperature=-0.1), "--temperature"),
    (SamplingSettings(temperature=float("nan")), "--temperature"),
    (SamplingSettings(top_k=0), "--top-k"),
    (SamplingSettings(seed=-1), "--seed"),
    (SamplingSettings(seed=2**64), "--seed"),
])
def test_bad_settings_are_user_errors_naming_the_flag(settings, flag):
    with pytest.raises(UserError, match=flag):
        check_settings(settings)


def test_a_live_sample_starts_from_a_newline_or_from_the_first_token_when_there_is_none():
    with_newline = Vocabulary.from_text("ab\ncd")
    without = Vocabulary.from_text("abcd")
    for vocab in (with_newline, without):
        model = tiny_model(vocab_size=vocab.size).train()
        text = live_sample(model, vocab, 12, seed=5)
        assert len(text) == 12 and set(text) <= set(vocab.chars)
        assert live_sample(model, vocab, 12, seed=5) == text
        assert model.training


class CountingTokenizer(ByteTokenizer):
    """The byte tokenizer, recording how many ids each decode call was given."""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def decode(self, ids) -> str:
        self.lengths.append(len(ids))
        return super().decode(ids)


def test_a_long_stream_decodes_a_bounded_tail_per_token_and_still_adds_up_to_the_whole_text():
    text = "naïve café — €5, ünïcödé everywhere.\n" * 40  # 1- to 3-byte characters, ~1,900 bytes
    tokenizer = CountingTokenizer()
    pieces: list[str] = []
    stream = TextStream(tokenizer, pieces.append)
    for byte in text.encode("utf-8"):
        stream(byte)
    stream.flush()
    assert "".join(pieces) == text
    assert max(tokenizer.lengths) <= TextStream.CONTEXT + 3  # a held-back character is at most 3 more bytes


def test_a_diverged_model_is_one_line_not_a_multinomial_traceback():
    """--lr 1e308: the weights are finite but the logits are not; the epoch's sample (and the
    `sample` command) said `RuntimeError: probability tensor contains either inf, nan` before."""
    model = tiny_model(dropout=0.0)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(1e38)
    with pytest.raises(UserError, match="not finite numbers: its weights have diverged"):
        pick_next(torch.tensor([0.0, float("nan"), 1.0]), 1.0, None, torch.Generator().manual_seed(0))
    text = live_sample(model, Vocabulary(tuple(chr(ord("a") + i) for i in range(23))), 8, seed=1)
    assert text.startswith("(no sample: the model's outputs are not finite numbers")
