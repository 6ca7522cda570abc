"""Generate text from a model: temperature / top-k sampling, with or without the KV cache.

The context window is the one policy both paths share, so greedy output is the same with
and without the cache. The model has learned absolute positions and a context of
``block_size``: the window grows from the prompt until it is full, then *slides* — it
restarts from the last ``block_size // 2`` tokens (one prefill forward) and grows again.
Without the cache every token recomputes the whole current window; with it, a token costs
one position's forward plus, once per half window, a prefill.

Sampling draws from its own ``torch.Generator`` seeded by ``seed``, on the CPU: the global
RNG (and so training's dropout and data order) is never touched, and the same seed gives the
same text whatever the device. Ids the training text never held (data/untrained.py) are never
picked: their embeddings are untrained (a byte-level BPE's unused bytes wrote control characters
and broken UTF-8); nor are ids that would make the text invalid UTF-8 (next_token.py). Text is decoded from each id's bytes where the tokenizer has them, so a
character split over two ids is shown once it is whole, and one the sample ends inside is left out.
"""

from __future__ import annotations

import codecs
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from tui_trainer.errors import UserError
from tui_trainer.events import SampleEvent
from tui_trainer.model.gpt import GPT, KVCache
from tui_trainer.model.next_token import NextTokenRule
from tui_trainer.model.one_position import torch_at_one_thread


class Tokenizer(Protocol):
    """What sampling needs of a tokenizer: the char ``Vocabulary`` in data.py has this shape,
    and so can a BPE tokenizer."""

    def encode(self, text: str) -> torch.Tensor | Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 500  # tokens to generate after the prompt
    temperature: float = 0.8  # logits are divided by it; 0 (or below GREEDY_BELOW) = greedy (the most likely token)
    top_k: int | None = None  # sample only among the k most likely tokens; None = all of them
    seed: int = 1337  # seeds sampling's own generator: same seed, same text
    kv_cache: bool = True  # reuse each layer's keys and values (False: recompute the window per token)


# Generation slides its window, so the model sets no limit; the text does: each token is kept as
# an id and decoded with the rest, and at the ~1-5 ms a token costs on a CPU a million is already
# an hour or more. Beyond it a typo (an extra zero or twenty) is far likelier than a wish.
MAX_SAMPLE_TOKENS = 1_000_000
# Below this a temperature samples as greedy (the most likely token). Dividing logits by 1e-40
# overflows them to inf (and inf - inf is NaN); at 1e-6 any two logits 1e-4 apart already have
# odds below e^-100, so the choice is the greedy one whenever the top two differ at all.
GREEDY_BELOW = 1e-6


def check_settings(settings: SamplingSettings) -> None:
    """Raise a UserError naming the flag for a setting a user could get wrong."""
    if not 1 <= settings.max_new_tokens <= MAX_SAMPLE_TOKENS:
        raise UserError(f"--tokens must be between 1 and {MAX_SAMPLE_TOKENS:,} (got {settings.max_new_tokens:,})",
                        "ask for a number of new tokens such as --tokens 500")
    if not 0 <= settings.temperature < float("inf"):  # also refuses NaN
        raise UserError(f"--temperature must be a finite number, 0 or more (got {settings.temperature})",
                        "use 0 for greedy, about 0.8 for varied text")
    if not 0 <= settings.seed < 2**63:
        raise UserError(f"--seed must be between 0 and 2**63 - 1 (got {settings.seed})", "use e.g. --seed 1337")
    if settings.top_k is not None and settings.top_k < 1:
        raise UserError(f"--top-k must be at least 1 (got {settings.top_k})",
                        "leave it out to sample from every token, or use e.g. --top-k 40")


class NonFiniteOutputs(UserError):
    """Next-token logits of NaN or inf: weights that diverged (a far too high learning rate)
    cannot be sampled from."""


def pick_next(logits: torch.Tensor, temperature: float, top_k: int | None,
              generator: torch.Generator, untrained: torch.Tensor | None = None) -> int:
    """One token id from next-token ``logits`` (vocab,): greedy at temperature 0 (and below
    ``GREEDY_BELOW``), else sampled; never an id ``untrained`` marks (a mask: next_token.py)."""
    logits = logits.float().cpu()  # the generator lives on the CPU
    if temperature < GREEDY_BELOW:
        return int(torch.argmax(logits if untrained is None else logits.masked_fill(untrained, float("-inf"))))
    logits = logits / temperature
    if untrained is not None:
        logits = logits.masked_fill(untrained, float("-inf"))
    if top_k is not None and top_k < logits.numel():
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    # One uniform draw located among the cumulative probabilities (inverse transform sampling):
    # a few us at any vocabulary, where torch.multinomial cost 13 us at 65 tokens and ~1-2 ms at
    # GPT-2's 50,257 (its exponential draw per token), more than a token's forward (benchmarks/README.md).
    cumulative = F.softmax(logits, dim=-1).cumsum_(dim=-1)
    total = float(cumulative[-1])  # 1 up to rounding; NaN if a logit is NaN or +inf, or all are -inf
    if not math.isfinite(total):  # (a NaN draw would pick a token silently)
        raise NonFiniteOutputs("the model's outputs are not finite numbers: its weights have diverged",
                               "sample a checkpoint from before the divergence, or train again with a lower --lr")
    draw = float(torch.rand((), dtype=torch.float64, generator=generator)) * total
    # right=True: the first position whose cumulative probability exceeds the draw, so a token of
    # probability 0 (top-k's masked ones) is never chosen
    index = int(torch.searchsorted(cumulative, draw, right=True))
    if index == cumulative.numel():  # the draw rounded up to the total: the last token with any probability
        index = int(torch.searchsorted(cumulative, total))
    return index


def slide_keep(block_size: int) -> int:
    """Tokens kept when a full window slides: half the context (at least one)."""
    return max(1, block_size // 2)


class ContextWindow:
    """Where the model's window starts in the growing token list, and the next-token logits
    for it — from a KV cache or by recomputing the window."""

    def __init__(self, model: GPT, use_cache: bool) -> None:
        self.model = model
        self.block_size = model.cfg.block_size
        self.use_cache = use_cache
        self.start = 0
        self.started = False
        self.cache: KVCache | None = None
        self.device = model.token_embedding.weight.device

    def next_logits(self, tokens: list[int]) -> torch.Tensor:
        """Next-token logits (vocab,) after ``tokens`` (the whole sequence so far)."""
        if not self.started:  # a prompt longer than the context keeps its last full window
            self.start = max(0, len(tokens) - self.block_size)
            self.started = True
        elif len(tokens) - self.start > self.block_size:
            # Full: restart the window from its last half. Absolute positions forbid dropping
            # just the oldest token and going on with the cache.
            self.start = len(tokens) - slide_keep(self.block_size)
            self.cache = None
        if not self.use_cache:
            window = torch.tensor([tokens[self.start:]], dtype=torch.long, device=self.device)
            return self.model(window)[0, -1]
        if self.cache is None:  # prefill the whole window in one forward
            self.cache = self.model.new_kv_cache(batch=1)
            ids = torch.tensor([tokens[self.start:]], dtype=torch.long, device=self.device)
        else:  # the cache holds all but the last token
            # torch.full, not torch.tensor([[id]]): parsing a nested list cost ~50 us a token
            # against ~3 us (benchmarks/README.md, section 8)
            ids = torch.full((1, 1), tokens[-1], dtype=torch.long, device=self.device)
        return self.model.forward_cached(ids, self.cache)[0]


def generate(model: GPT, prompt_ids: Sequence[int], settings: SamplingSettings,
             on_token: Callable[[int], None] | None = None, untrained_ids: Sequence[int] = (),
             id_bytes: Sequence[bytes] | None = None) -> list[int]:
    """The ``settings.max_new_tokens`` new token ids after ``prompt_ids``: none of ``untrained_ids``,
    and, given each id's bytes (``id_bytes``), none that would make the text invalid UTF-8
    (next_token.py). ``on_token`` sees each one as it is chosen. The model is put in eval mode for
    it and back as it was."""
    tokens = [int(i) for i in prompt_ids]
    if not tokens:
        raise ValueError("generation needs a prompt of at least one token")
    generator = torch.Generator().manual_seed(settings.seed)
    rule = NextTokenRule(model.cfg.vocab_size, untrained_ids, id_bytes)
    window = ContextWindow(model, settings.kv_cache)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(settings.max_new_tokens):
                logits = window.next_logits(tokens)
                # after a one-position step, the choice at one torch thread too (one_position.py)
                stepped = window.cache is not None and window.cache.one_position is not None
                with torch_at_one_thread() if stepped else nullcontext():
                    next_id = pick_next(logits, settings.temperature, settings.top_k, generator, rule.mask())
                rule.took(next_id)
                tokens.append(next_id)
                if on_token is not None:
                    on_token(next_id)
    finally:
        model.train(was_training)
    return tokens[len(prompt_ids):]


def exact_id_bytes(tokenizer: Tokenizer) -> list[bytes] | None:
    """Each id's exact bytes when the tokenizer has them (char; byte-level BPE), else None."""
    id_bytes = getattr(tokenizer, "id_bytes", None)
    return id_bytes() if id_bytes is not None else None


def decode_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of ``ids``, as ``TextStream`` shows it: from each id's bytes where the tokenizer has
    them, a character the ids end inside left out (it was never completed)."""
    id_bytes = exact_id_bytes(tokenizer)
    if id_bytes is None:
        return tokenizer.decode(ids)
    return codecs.getincrementaldecoder("utf-8")("replace").decode(b"".join(id_bytes[int(i)] for i in ids))


class TextStream:
    """Turns token ids, one at a time, into the text they add.

    With a tokenizer that spells each id as bytes (``id_bytes``: char, byte-level BPE) the bytes go
    through an incremental UTF-8 decoder: a character split over ids is shown once its last byte
    comes, and one the stream ends inside is never shown (no half character as U+FFFD).
    Any other tokenizer: a few ids already shown are decoded together with the new ones and what
    the new ones add is emitted (text that ends in U+FFFD is held back until the next token
    completes it). Each token decodes at most ``CONTEXT`` ids more than it adds, so a long stream
    costs the same per token at its end as at its start (decoding every id so far, each token, grew
    with the text: at 10,000 characters it cost more than a token's forward)."""

    CONTEXT = 8  # ids before the new ones that are decoded with them, so a token that joins its neighbour decodes right

    def __init__(self, tokenizer: Tokenizer, on_text: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.id_bytes = exact_id_bytes(tokenizer)
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.ids: list[int] = []
        self.shown = 0  # ids[:shown] are in the text emitted so far
        self.head = ""  # the decoded text of ids[anchor:shown], the context the new ids follow

    def __call__(self, token_id: int) -> None:
        if self.id_bytes is not None:
            text = self.utf8.decode(self.id_bytes[token_id])
            if text:
                self.on_text(text)
            return
        self.ids.append(token_id)
        self._emit(final=False)

    def flush(self) -> None:
        if self.id_bytes is None:  # (bytes: an unfinished character stays out)
            self._emit(final=True)

    def _emit(self, final: bool) -> None:
        anchor = max(0, self.shown - self.CONTEXT)
        text = self.tokenizer.decode(self.ids[anchor:])
        if not text.startswith(self.head) or (not final and text.endswith("\ufffd")):
            return  # the new ids change text already shown, or end mid-character: wait for more
        if len(text) > len(self.head):
            self.on_text(text[len(self.head):])
        self.shown = len(self.ids)
        self.head = self.tokenizer.decode(self.ids[max(0, self.shown - self.CONTEXT):])


@dataclass
class GenerationClock:
    """When a generation's new tokens came (``sample --stats``): the first one pays for the
    prompt's prefill, the others are one position's step each (and their text's write)."""

    started: float | None = None
    first: float | None = None  # when the first new token was chosen
    last: float | None = None  # when the last one was
    tokens: int = 0
    prompt_tokens: int = 0

    def start(self, prompt_tokens: int) -> None:
        self.started, self.prompt_tokens = time.perf_counter(), prompt_tokens

    def took_one(self) -> None:
        self.last = time.perf_counter()
        if self.first is None:
            self.first = self.last
        self.tokens += 1

    def tokens_per_s_after_the_first(self) -> float | None:
        if self.tokens < 2 or self.first is None or self.last is None or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)


def sample_text(model: GPT, tokenizer: Tokenizer, prompt: str, settings: SamplingSettings,
                on_text: Callable[[str], None] | None = None, untrained_ids: Sequence[int] = (),
                clock: GenerationClock | None = None) -> str:
    """The text generated after ``prompt`` (the prompt itself not included), never from
    ``untrained_ids``; ``on_text`` gets it piece by piece as it is generated; ``clock`` times it."""
    prompt_ids = [int(i) for i in tokenizer.encode(prompt)]
    stream = TextStream(tokenizer, on_text) if on_text is not None else None
    on_token: Callable[[int], None] | None = stream
    if clock is not None:
        def timed(token_id: int) -> None:
            clock.took_one()
            if stream is not None:
                stream(token_id)

        on_token = timed
        clock.start(len(prompt_ids))
    new_ids = generate(model, prompt_ids, settings, on_token=on_token, untrained_ids=untrained_ids,
                       id_bytes=exact_id_bytes(tokenizer))
    if stream is not None:
        stream.flush()
    return decode_text(tokenizer, new_ids)


LIVE_PROMPT = "\n"  # samples during training start from a new line, as the CLI's default does
LIVE_TEMPERATURE = 0.8
ASKED_SAMPLE_TOKENS = 200  # what `g` writes when the samples after each epoch are off


def live_sample(model: GPT, tokenizer: Tokenizer, max_new_tokens: int, seed: int,
                untrained_ids: Sequence[int] = ()) -> str:
    """A short sample from the weights as they are, for the training loop (after an epoch, or
    when asked), never from ``untrained_ids``. Its own generator seeded by ``seed``; the model goes
    back to its mode."""
    try:
        prompt_ids = [int(i) for i in tokenizer.encode(LIVE_PROMPT)]
    except (KeyError, ValueError):  # a character vocabulary without a newline
        prompt_ids = []
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=LIVE_TEMPERATURE, seed=seed)
    try:
        new_ids = generate(model, prompt_ids or [0], settings, untrained_ids=untrained_ids,
                           id_bytes=exact_id_bytes(tokenizer))
    except NonFiniteOutputs as exc:  # the run's own guards say the rest (non-finite steps, its end)
        return f"(no sample: {exc.message})"
    return decode_text(tokenizer, new_ids)


class LiveSampler:
    """The training loop's samples: one after each epoch's validation (``tokens`` of them,
    0 = none) and one whenever asked. Each is seeded by (run seed, step), so a run and its
    resumption write the same text, and none draws from the global RNG the loop uses."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, tokens: int, seed: int,
                 untrained_ids: Sequence[int] = ()) -> None:
        self.model = model  # the plain module, not a torch.compile wrapper: generation has its own forward
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.seed = seed
        self.untrained_ids = tuple(untrained_ids)  # never sampled (data/untrained.py)

    def _seed_for(self, step: int) -> int:
        return (self.seed * 1_000_003 + step) % 2**63  # any run seed gives a seed the generator takes

    def after_epoch(self, step: int) -> str | None:
        if not self.tokens:
            return None
        return live_sample(self.model, self.tokenizer, self.tokens, self._seed_for(step), self.untrained_ids)

    def asked(self, epoch: int, step: int) -> SampleEvent:
        started = time.perf_counter()
        text = live_sample(self.model, self.tokenizer, self.tokens or ASKED_SAMPLE_TOKENS, self._seed_for(step),
                           self.untrained_ids)
        return SampleEvent(epoch=epoch, step=step, text=text, seconds=time.perf_counter() - started)
