"""Text → tokens (read from the token cache) → contiguous train/val split → windows → micro-batches.

Each training example is one non-overlapping window of ``block_size`` tokens with its
next-token targets. An epoch visits every training window once in an order shuffled
by (seed, epoch) at the level of *examples*, so a constant ``micro_batch × accum``
gives the same examples in every optimizer step whatever the split between the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from tui_trainer.config import DataConfig
from tui_trainer.data.text_source import CancelFn, ProgressFn, find_source
from tui_trainer.data.token_cache import default_cache_dir, prepare_ids
from tui_trainer.data.token_file import TokenFile
from tui_trainer.data.tokenizer import DEFAULT_BPE_VOCAB, CharTokenizer, Tokenizer, load_tokenizer_file
from tui_trainer.data.untrained import remembered_untrained_ids
from tui_trainer.errors import DataChanged, UserError

DEFAULT_CORPUS_NAME = "tinyshakespeare.txt"


def default_corpus_path() -> Path:
    """The bundled corpus: ``datasets/`` of a source checkout, or the copy in an installed wheel."""
    checkout = Path(__file__).resolve().parents[2] / "datasets" / DEFAULT_CORPUS_NAME
    if checkout.is_file():
        return checkout
    try:
        packaged = resources.files("tui_trainer.data_files") / DEFAULT_CORPUS_NAME
        if packaged.is_file():
            return Path(str(packaged))
    except ModuleNotFoundError:
        pass
    raise UserError("the bundled corpus datasets/tinyshakespeare.txt is missing",
                    "reinstall with `pip install -e .` from the repository, or pass --data PATH")


# The char tokenizer keeps its old name here: runs, tests and benchmarks know it as the vocabulary.
Vocabulary = CharTokenizer


@dataclass(frozen=True)
class Corpus:
    vocab: Tokenizer  # the tokenizer (char or BPE); ``vocab.size`` ids
    train_tokens: TokenFile  # first (1 - val_split) of the tokens: a view of the cache file (read as needed)
    val_tokens: TokenFile  # the rest: no training window ever reaches into it
    path: str
    sha256: str  # content fingerprint (of a single file: the sha256 of its bytes)
    cache_path: str = ""  # the token cache the ids are read from
    tokenized: bool = False  # True when this load tokenized; False when it reused the cache
    notes: tuple[str, ...] = ()  # what the user should know about the data (a damaged cache rebuilt)
    untrained_ids: tuple[int, ...] = ()  # ids the training split never holds (never sampled: data/untrained.py)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.vocab


def choose_tokenizer(cfg: DataConfig) -> str | Tokenizer:
    """``--tokenizer``: "char", "bpe", or a tokenizers file to load."""
    name = cfg.tokenizer
    if name in ("char", "bpe"):
        return name
    return load_tokenizer_file(name)


def load_corpus(cfg: DataConfig, block_size: int, progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, tokenizer: Tokenizer | None = None) -> Corpus:
    """The data as token ids read from the cache, split 90/10 (``val_split``), from the cache when it holds them.

    ``tokenizer``: the one a resumed run was trained with (instead of ``cfg.tokenizer``).
    The char split is on characters (= tokens); a BPE corpus is split on its text, so that the
    tokenizer, learnt from the training text, never sees the validation text.
    """
    path = Path(cfg.path) if cfg.path else default_corpus_path()
    source = find_source(path)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    chosen: str | Tokenizer = "char" if isinstance(tokenizer, CharTokenizer) else tokenizer or choose_tokenizer(cfg)
    prepared = prepare_ids(source, chosen, cache_dir, cfg.val_split,
                           cfg.vocab_size or DEFAULT_BPE_VOCAB, progress, cancel)
    tokens = prepared.ids
    if prepared.n_train is None:
        n_val = int(round(len(tokens) * cfg.val_split))
        n_train = len(tokens) - n_val
    else:
        n_train = prepared.n_train
        n_val = len(tokens) - n_train
    unit = "characters" if prepared.tokenizer.kind == "char" else "tokens"
    # A window needs block_size inputs plus one more token for the last target.
    need = block_size + 1
    if n_train < need or n_val < need:
        fits = max(0, min(n_train, n_val) - 1)
        if fits < 8:
            raise UserError(
                f"data {path} is too short ({len(tokens)} {unit}) for a train/validation split",
                f"use at least {int(2 * need / min(cfg.val_split, 1 - cfg.val_split)) + 1} {unit}",
            )
        raise UserError(
            f"--block-size {block_size} is larger than the validation split can hold ({n_val} tokens)",
            f"use --block-size {fits} or less, or a larger --val-split or data file",
        )
    untrained = remembered_untrained_ids(prepared.cache_path, tokens[:n_train], prepared.tokenizer.size)
    return Corpus(prepared.tokenizer, tokens[:n_train], tokens[n_train:], str(source.path),
                  prepared.data_fingerprint, str(prepared.cache_path), prepared.built, prepared.notes, untrained)


def window_count(n_tokens: int, block_size: int) -> int:
    """Non-overlapping windows of ``block_size`` inputs (each needs one more token for its last target)."""
    return (n_tokens - 1) // block_size


class WindowDataset:
    """Non-overlapping windows over one array of token ids (a view of the cache file, or an array).

    A batch gathers its windows from the array and only then becomes an int64 tensor on the
    device: memory follows the batch, not the corpus.
    """

    def __init__(self, tokens: np.ndarray | TokenFile | torch.Tensor, block_size: int,
                 device: torch.device | str = "cpu", vocab_size: int | None = None) -> None:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.cpu().numpy()
        n = window_count(len(tokens), block_size)
        if n < 1:
            raise ValueError("token array shorter than one window")
        self.tokens = tokens
        self.block_size = block_size
        self.device = torch.device(device)
        self._count = n
        self._offsets = np.arange(block_size + 1)
        self.vocab_size = vocab_size  # ids read from the cache file are checked against it

    def __len__(self) -> int:
        return self._count

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        starts = indices.cpu().numpy().astype(np.int64) * self.block_size
        if isinstance(self.tokens, TokenFile):  # the cache file: one read per window, no memory map
            picked = self.tokens.windows(starts, self.block_size + 1)
            # A cache rewritten in place under the run (same length) can hold ids the embedding
            # lacks: one max() per batch turns that into DataChanged, not an IndexError mid-step.
            # (Valid ids in the wrong order cannot be told from the right ones this cheaply.)
            if self.vocab_size is not None and picked.size and int(picked.max()) >= self.vocab_size:
                raise DataChanged(f"the token cache {self.tokens.path} was changed while the run read it "
                                  f"(it holds id {int(picked.max()):,}, outside the vocabulary of {self.vocab_size:,})")
        else:
            picked = self.tokens[starts[:, None] + self._offsets]
        rows = torch.from_numpy(picked.astype(np.int64))
        if self.device.type == "cuda":  # pinned, so the copy runs behind the host (no sync); the CPU: as is
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        else:
            rows = rows.to(self.device)
        # Inputs and their next-token targets, each contiguous (as index_select made them before).
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    # Every window at once: for tests and small corpora only (it materialises the split).
    @property
    def inputs(self) -> torch.Tensor:
        return self.batch(torch.arange(len(self)))[0]

    @property
    def targets(self) -> torch.Tensor:
        return self.batch(torch.arange(len(self)))[1]


def epoch_order(n_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of the examples fixed by (seed, epoch) and nothing else."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    # int32 halves the memory of a big corpus's permutation; randperm draws the same order either way.
    dtype = torch.int32 if n_examples < 2 ** 31 else torch.int64
    return torch.randperm(n_examples, generator=generator, dtype=dtype)


def epoch_examples(n_examples: int, seed: int, epoch: int, micro_batch: int,
                   limit_batches: int | None) -> torch.Tensor:
    """The example indices an epoch visits, in order (capped at ``limit_batches`` micro-batches)."""
    order = epoch_order(n_examples, seed, epoch)
    if limit_batches is not None:
        order = order[: limit_batches * micro_batch]
    return order


MicroBatch = tuple[int, int]  # (start, stop): positions in the epoch's order of examples


@dataclass(frozen=True)
class Window:
    """The micro-batches of one optimizer step, as (start, stop) ranges of the epoch's order: the
    ranges follow one another, every one ``micro_batch`` long but the last, which may be short.
    A rank's share of a window (``rank_share``) keeps every ``world_size``-th, and may be empty."""

    micro_batches: tuple[MicroBatch, ...]

    @property
    def start(self) -> int:
        """The first example of the window (its position in the epoch's order)."""
        return self.micro_batches[0][0]

    @property
    def stop(self) -> int:
        """One past its last example: the epoch's cursor once this window's step is taken."""
        return self.micro_batches[-1][1]

    @property
    def examples(self) -> int:
        return sum(stop - start for start, stop in self.micro_batches)

    def tokens(self, block_size: int) -> int:
        return self.examples * block_size

    def __len__(self) -> int:
        return len(self.micro_batches)

    def __iter__(self):
        return iter(self.micro_batches)


def plan_windows(n_examples: int, micro_batch: int, accum: int, start: int = 0) -> list[Window]:
    """Split an epoch's examples (from ``start``) into optimizer-step windows.

    Every window but the last holds ``accum`` micro-batches of ``micro_batch`` examples;
    the last one may hold fewer micro-batches, and its last micro-batch may be short.
    """
    per_step = micro_batch * accum
    windows = []
    for step_start in range(start, n_examples, per_step):
        step_stop = min(step_start + per_step, n_examples)
        windows.append(Window(tuple((s, min(s + micro_batch, step_stop))
                                    for s in range(step_start, step_stop, micro_batch))))
    return windows


def epoch_windows(n_examples: int, micro_batch: int, per_step: int, cursor: int) -> tuple[list[Window], int]:
    """An epoch's windows of ``per_step`` micro-batches, and the index of the one that starts at
    ``cursor`` (the examples already consumed; ``len(windows)`` when none is left). A cursor that no
    window starts at (a resume with another world size) continues with windows planned from it."""
    windows = plan_windows(n_examples, micro_batch, per_step)
    if 0 < cursor < n_examples and cursor not in {w.start for w in windows}:
        windows = [w for w in windows if w.start < cursor] + plan_windows(n_examples, micro_batch, per_step, cursor)
    # (An epoch's last window may be short: the index is searched for, not divided out.)
    return windows, next((i for i, w in enumerate(windows) if w.start >= cursor), len(windows))


def val_batch_limit(cfg: DataConfig) -> int | None:
    """Micro-batches one validation pass may read: ``limit_val_batches`` when given; else, when
    ``limit_train_batches`` caps training, the same share of validation as the data's split,
    ``ceil(limit_train_batches * val_split / (1 - val_split))`` (50 train batches at a 0.1 split ->
    6): a quick run must not spend most of its time validating. None = every validation batch."""
    if cfg.limit_val_batches is not None:
        return cfg.limit_val_batches
    if cfg.limit_train_batches is None:
        return None
    return max(1, math.ceil(cfg.limit_train_batches * cfg.val_split / (1 - cfg.val_split) - 1e-9))


def val_batches(n_examples: int, batch_size: int, limit_batches: int | None) -> list[tuple[int, int]]:
    ranges = [(s, min(s + batch_size, n_examples)) for s in range(0, n_examples, batch_size)]
    return ranges[:limit_batches] if limit_batches is not None else ranges
