"""Text → character tokens → contiguous train/val split → fixed windows → micro-batches.

Each training example is one non-overlapping window of ``block_size`` tokens with its
next-token targets. An epoch visits every training window once in an order shuffled
by (seed, epoch) at the level of *examples*, so a constant ``micro_batch × accum``
gives the same examples in every optimizer step whatever the split between the two.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from .config import DataConfig
from .errors import UserError

DEFAULT_CORPUS_NAME = "tinyshakespeare.txt"


def default_corpus_path() -> Path:
    """The bundled corpus: ``datasets/`` of a source checkout, or the copy in an installed wheel."""
    checkout = Path(__file__).resolve().parent.parent / "datasets" / DEFAULT_CORPUS_NAME
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


@dataclass(frozen=True)
class Vocabulary:
    """Character-level vocabulary; index = position in ``chars`` (sorted, so it is stable)."""

    chars: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        return cls(tuple(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        lookup = {c: i for i, c in enumerate(self.chars)}
        return torch.tensor([lookup[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def read_text(path: Path) -> str:
    """Read a UTF-8 text file or raise a UserError that says what is wrong with it."""
    if not path.exists():
        raise UserError(f"data file {path} does not exist", "check the path given to --data")
    if not path.is_file():
        raise UserError(f"data path {path} is not a file", "pass a UTF-8 text file to --data")
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError(f"data file {path} is empty", "pass a UTF-8 text file with some text in it")
    if b"\x00" in raw[:65536]:
        raise UserError(f"data file {path} looks binary (it contains NUL bytes)",
                        "pass a UTF-8 text file to --data")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"data file {path} is not valid UTF-8 (byte {exc.start})",
                        "convert it with e.g. `iconv -t utf-8` or pass another file") from None


@dataclass(frozen=True)
class Corpus:
    vocab: Vocabulary
    train_tokens: torch.Tensor  # first (1 - val_split) of the text
    val_tokens: torch.Tensor  # the rest: no training window ever reaches into it
    path: str
    sha256: str


def load_corpus(cfg: DataConfig, block_size: int) -> Corpus:
    path = Path(cfg.path) if cfg.path else default_corpus_path()
    text = read_text(path)
    vocab = Vocabulary.from_text(text)
    tokens = vocab.encode(text)
    n_val = int(round(len(tokens) * cfg.val_split))
    n_train = len(tokens) - n_val
    # A window needs block_size inputs plus one more token for the last target.
    need = block_size + 1
    if n_train < need or n_val < need:
        fits = max(0, min(n_train, n_val) - 1)
        if fits < 8:
            raise UserError(
                f"data file {path} is too short ({len(tokens)} characters) for a train/validation split",
                f"use a file of at least {int(2 * need / min(cfg.val_split, 1 - cfg.val_split)) + 1} characters",
            )
        raise UserError(
            f"--block-size {block_size} is larger than the validation split can hold ({n_val} tokens)",
            f"use --block-size {fits} or less, or a larger --val-split or data file",
        )
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Corpus(vocab, tokens[:n_train].clone(), tokens[n_train:].clone(), str(path.resolve()), digest)


def window_count(n_tokens: int, block_size: int) -> int:
    """Non-overlapping windows of ``block_size`` inputs (each needs one more token for its last target)."""
    return (n_tokens - 1) // block_size


class WindowDataset:
    """Non-overlapping windows over one token tensor, sliced without per-example Python."""

    def __init__(self, tokens: torch.Tensor, block_size: int, device: torch.device | str = "cpu") -> None:
        n = window_count(len(tokens), block_size)
        if n < 1:
            raise ValueError("token tensor shorter than one window")
        tokens = tokens.to(device)
        # Views into the one tensor: inputs and their next-token targets.
        self.inputs = tokens[: n * block_size].view(n, block_size)
        self.targets = tokens[1 : n * block_size + 1].view(n, block_size)
        self.block_size = block_size

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs.index_select(0, indices), self.targets.index_select(0, indices)


def epoch_order(n_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of the examples fixed by (seed, epoch) and nothing else."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_examples, generator=generator)


def epoch_examples(n_examples: int, seed: int, epoch: int, micro_batch: int,
                   limit_batches: int | None) -> torch.Tensor:
    """The example indices an epoch visits, in order (capped at ``limit_batches`` micro-batches)."""
    order = epoch_order(n_examples, seed, epoch)
    if limit_batches is not None:
        order = order[: limit_batches * micro_batch]
    return order


def plan_windows(n_examples: int, micro_batch: int, accum: int) -> list[list[tuple[int, int]]]:
    """Split an epoch's examples into optimizer-step windows of micro-batch (start, stop) ranges.

    Every window but the last holds ``accum`` micro-batches of ``micro_batch`` examples;
    the last one may hold fewer micro-batches, and its last micro-batch may be short.
    """
    per_step = micro_batch * accum
    windows = []
    for step_start in range(0, n_examples, per_step):
        step_stop = min(step_start + per_step, n_examples)
        windows.append([(s, min(s + micro_batch, step_stop)) for s in range(step_start, step_stop, micro_batch)])
    return windows


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
