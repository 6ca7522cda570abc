"""The run's tokenizer as its run dir records it: ``vocab`` in config.json and checkpoints
(``vocab_record``), the tokenizer read back from config.json (``vocabulary_of``: to decode samples,
to export), and a resume's check that its data is encoded as the run was trained
(``check_resumed_tokenizer``). Reading and checking only; lifecycle.py writes config.json.
"""

from __future__ import annotations

from pathlib import Path

from tui_trainer.data.tokenizer import Tokenizer, tokenizer_from_record
from tui_trainer.errors import UserError
from tui_trainer.rundir.files import CONFIG_FILE
from tui_trainer.rundir.reader import read_run_config


def vocabulary_of(run_dir: str | Path) -> Tokenizer:
    """The tokenizer a run was trained with (char or BPE), e.g. to decode samples; its config.json
    checked first (a damaged one is one line naming it, never a traceback)."""
    _, record = read_run_config(run_dir)
    vocab, info = record.get("vocab"), record.get("tokenizer")
    bpe = isinstance(info, dict) and info.get("kind") == "bpe"
    fits_char = isinstance(vocab, list) and bool(vocab) and all(isinstance(c, str) and c for c in vocab)
    fits_bpe = bpe and isinstance(info.get("fingerprint"), str)
    if not ((info is None or isinstance(info, dict) and info.get("kind") == "char") and fits_char or fits_bpe):
        raise UserError(f"{Path(run_dir) / CONFIG_FILE} does not describe the run's tokenizer",
                        f"`tui-trainer train --resume {run_dir}` rewrites it from the checkpoint")
    return tokenizer_from_record(record, run_dir)


def vocab_record(tokenizer: Tokenizer) -> list[str]:
    """``vocab`` in config.json and checkpoints: a char run's characters (a BPE run's tokenizer is
    its tokenizer.json)."""
    return list(tokenizer.chars) if tokenizer.kind == "char" else []


def check_resumed_tokenizer(state: dict, tokenizer: Tokenizer) -> None:
    """A resumed run must encode its data exactly as it was trained (checkpoints made before the
    BPE option hold only the characters)."""
    saved = state.get("tokenizer") or {"kind": "char", "vocab_size": len(state["vocab"])}
    same = (tokenizer.fingerprint == saved["fingerprint"] if "fingerprint" in saved
            else tokenizer.kind == "char" and list(tokenizer.chars) == list(state["vocab"]))
    if not same:
        raise UserError(f"the tokenizer ({tokenizer.kind}, {tokenizer.size} ids) differs from the one this run was "
                        f"trained with ({saved['kind']}, {saved['vocab_size']} ids)",
                        "resume with the run's own data and tokenizer, or start a new run")
