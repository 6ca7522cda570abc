"""`tui-trainer sample RUN_DIR`: load a run's model and tokenizer and print what it writes.

The prompt and then the generated text go to stdout as they are generated: each piece at once on
a terminal (control characters escaped, the prompt's too), a line at a time to a pipe or a file
(the text as it is). What was written stays written: Ctrl-C, SIGTERM or SIGHUP ends the command
with the text so far flushed (and a final newline on a terminal), exit 128 + N; a reader that goes
away (``| head``, a terminal that closes) ends the generation, exit 0; a write that fails (a full
disk) is one line on stderr, exit 1. Notes (a fallback from `best` to `latest`) go to stderr, so a
pipe gets only the text.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tui_trainer.cli.console import point_at_devnull, write_replacing
from tui_trainer.config import RunConfig
from tui_trainer.errors import UserError
from tui_trainer.rundir.reader import not_a_run_dir_folder
from tui_trainer.shown_text import escaped_controls

if TYPE_CHECKING:  # torch is imported when a command runs, not when the parser is built
    from tui_trainer.model.gpt import GPT
    from tui_trainer.model.sampling import GenerationClock, SamplingSettings, Tokenizer

DEFAULT_PROMPT = "\n"
DEFAULT_TOKENS = 500
DEFAULT_TEMPERATURE = 0.8
DEFAULT_SEED = 1337


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """The `sample` subcommand's arguments."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with checkpoints/best.pt or latest.pt")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="which weights: best (lowest val loss; falls back to latest) or latest (default: best)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to continue (default: a newline)")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                        help=f"new tokens to generate, at most 1,000,000 (default: {DEFAULT_TOKENS})")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help=f"sampling temperature; 0 (or below 1e-6) = greedy (default: {DEFAULT_TEMPERATURE})")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample among the K most likely tokens only (default: all of them)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of the sampler: same seed, same text (default: {DEFAULT_SEED})")
    parser.add_argument("--no-kv-cache", action="store_true",
                        help="recompute the context for every token instead of caching keys and values (slower)")
    parser.add_argument("--stats", action="store_true",
                        help="say on stderr at the end how fast the tokens came (tokens/s, the first token's time)")


def settings_from_args(args: argparse.Namespace) -> SamplingSettings:
    from tui_trainer.model.sampling import SamplingSettings, check_settings

    settings = SamplingSettings(max_new_tokens=args.tokens, temperature=args.temperature, top_k=args.top_k,
                                seed=args.seed, kv_cache=not args.no_kv_cache)
    check_settings(settings)
    return settings


@dataclass(frozen=True)
class LoadedRun:
    model: GPT  # in eval mode, on the CPU
    tokenizer: Tokenizer
    config: RunConfig
    checkpoint: Path  # the file the weights came from
    note: str | None  # what the user should know about the choice of file (a fallback), or None
    untrained_ids: tuple[int, ...] = ()  # ids the training text never held: never sampled


def tokenizer_from_checkpoint(state: dict, run_dir: Path) -> Tokenizer:
    """The tokenizer a checkpoint was trained with: its characters, or the run's tokenizer.json (BPE)."""
    from tui_trainer.data.tokenizer import tokenizer_from_record

    return tokenizer_from_record(state, run_dir)


def find_checkpoint(run_dir: Path, which: str) -> tuple[Path, str | None]:
    """The checkpoint file to sample from, and a note when it is not the one asked for."""
    from tui_trainer.rundir import checkpoints as ckpt
    from tui_trainer.rundir.summary import refuse_a_folder_of_runs

    if not run_dir.is_dir():
        raise not_a_run_dir_folder(run_dir)
    refuse_a_folder_of_runs(run_dir, "sample")  # `sample runs`: the runs inside named
    wanted = ckpt.checkpoint_path(run_dir, which)
    if wanted.is_file():
        return wanted, None
    latest = ckpt.checkpoint_path(run_dir, "latest")
    if which == "best" and latest.is_file():
        return latest, f"note: {run_dir} has no best.pt yet; sampling from latest.pt"
    if which == "latest" and ckpt.checkpoint_path(run_dir, "best").is_file():
        raise UserError(f"{run_dir} has no checkpoints/latest.pt", "use --checkpoint best")
    raise UserError(f"{run_dir} has no checkpoint (checkpoints/{which}.pt)",
                    "sample from a run that has finished at least one epoch or saved with `s`")


def other_checkpoint_hint(run_dir: Path, unusable: Path) -> str:
    """What to sample from instead of an unusable checkpoint file: the run's other one, if it loads."""
    from tui_trainer.rundir import checkpoints as ckpt

    for which in ("latest", "best"):
        other = ckpt.checkpoint_path(run_dir, which)
        if other != unusable and other.is_file():
            try:
                ckpt.load_checkpoint(other)
            except UserError:
                continue
            return f"use --checkpoint {which}"
    return "sample from another run dir"


def load_run(run_dir: str | Path, which: str = "best") -> LoadedRun:
    from tui_trainer.model.gpt import GPT
    from tui_trainer.rundir import checkpoints as ckpt

    path, note = find_checkpoint(Path(run_dir), which)
    try:
        state = ckpt.load_checkpoint(path)
    except UserError as exc:  # its hint is resume's; here the other checkpoint may well do
        raise UserError(exc.message, other_checkpoint_hint(Path(run_dir), path)) from None
    config = RunConfig.from_dict(state["config"])
    weights = state["model"]
    # The weights say how many tokens the model knows; the config's own count agrees in any run we wrote.
    vocab_size = weights["token_embedding.weight"].shape[0]
    model = GPT(replace(config.model, vocab_size=vocab_size))
    model.load_state_dict(weights)
    model.eval()
    return LoadedRun(model, tokenizer_from_checkpoint(state, Path(run_dir)), config, path, note,
                     untrained_ids_of(state, vocab_size))


def untrained_ids_of(state: dict, vocab_size: int) -> tuple[int, ...]:
    """The ids a checkpoint says its training text never held (none in one written before they were saved)."""
    ids = state.get("untrained_ids")
    if not isinstance(ids, list) or not all(type(i) is int and 0 <= i < vocab_size for i in ids):
        return ()  # (not ours: every id may be sampled, as before)
    return tuple(ids)


def check_prompt(tokenizer: Tokenizer, prompt: str) -> None:
    """A prompt must give at least one token, and a character vocabulary must know its characters."""
    from tui_trainer.data.dataset import Vocabulary

    if not prompt:
        raise UserError("--prompt is empty", "give it at least one character, or leave it out for a newline")
    if isinstance(tokenizer, Vocabulary):
        unknown = sorted(set(prompt) - set(tokenizer.chars))
        if unknown:
            names = ", ".join(repr(c) for c in unknown)
            raise UserError(f"the prompt has characters the run's vocabulary does not: {names}",
                            "use only characters of the training text")


def for_a_terminal(text: str) -> str:
    """Control characters a model wrote (a byte-level BPE can write ESC or NUL) shown escaped, as
    the headless log does, so they cannot drive the terminal; newlines and tabs stay. A pipe gets
    the text as it is."""
    return escaped_controls(text)


class ReaderGone(Exception):
    """Nobody reads stdout any more (a closed pipe, a terminal that went away): stop writing."""


class OutputFailed(UserError):
    """The text could not be written (a full disk): the command failed, exit 1."""

    exit_code = 1


class Stopped(Exception):
    """SIGTERM or SIGHUP during `sample`: the text so far is kept, exit 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def signals_end_sampling() -> Iterator[None]:
    """SIGTERM and SIGHUP end `sample` as Ctrl-C does (Python raises KeyboardInterrupt for that one),
    so the text written so far is flushed rather than lost with the process."""
    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None:
                previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _is_a_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


class TextOut:
    """stdout as `sample` writes it (the module doc): pieces as they come, escaped and flushed each
    on a terminal, flushed at each newline on a pipe or a file."""

    READER_GONE = (errno.EPIPE, errno.EIO, errno.ENXIO, errno.ECONNRESET)

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.terminal = _is_a_terminal(stream)
        self.ends_a_line = True  # nothing written yet

    def __call__(self, text: str) -> None:
        if not text:
            return
        shown = for_a_terminal(text) if self.terminal else text
        self._guard(lambda: self._write(shown))
        self.ends_a_line = text.endswith("\n")

    def _write(self, text: str) -> None:
        write_replacing(self.stream, text)
        if self.terminal or "\n" in text:
            self.stream.flush()

    def end(self) -> None:
        """The last newline (the shell's prompt on a line of its own) and what is still buffered."""
        def close() -> None:
            if not self.ends_a_line:
                self.stream.write("\n")
            self.stream.flush()

        self._guard(close)
        self.ends_a_line = True

    def _guard(self, write) -> None:
        try:
            write()
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno not in self.READER_GONE:
                point_at_devnull(self.stream)  # (the interpreter's last flush must not fail again)
                raise OutputFailed(f"could not write the text: {exc.strerror or exc}",
                                   "free some space, or send the text elsewhere") from None
            point_at_devnull(self.stream)
            raise ReaderGone from None


def _took(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{1000 * seconds:.1f} ms"


def stats_line(clock: GenerationClock, kv_cache: bool) -> str:
    """``sample --stats``: how fast the tokens came, the text's writing included (as a reader sees it)."""
    if clock.started is None or clock.first is None or clock.last is None:
        return "stats: no token was generated"
    prompt = f"{clock.prompt_tokens:,} prompt token{'s' if clock.prompt_tokens != 1 else ''}"
    how = f"({'KV cache' if kv_cache else 'no KV cache'}, CPU)"
    if clock.tokens == 1:
        return f"stats: 1 token in {_took(clock.first - clock.started)}, with the {prompt} {how}"
    line = (f"stats: {clock.tokens:,} tokens in {_took(clock.last - clock.started)}; "
            f"the first (with the {prompt}) in {_took(clock.first - clock.started)}")
    rate = clock.tokens_per_s_after_the_first()
    if rate is not None:
        line += f", then {rate:,.0f} tokens/s"
    return f"{line} {how}"


def run_sample(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """The `sample` subcommand; bad input raises UserError (the caller prints it, exit 2)."""
    import torch

    from tui_trainer.model.sampling import GREEDY_BELOW, GenerationClock, sample_text

    if stdout is None and sys.stdout is None:  # (started with stdout closed: `>&-`)
        raise UserError("stdout is closed: the text has nowhere to go",
                        "run it with stdout on a terminal, a file (> out.txt) or a pipe")
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    settings = settings_from_args(args)
    run = load_run(args.run_dir, args.checkpoint)
    check_prompt(run.tokenizer, args.prompt)
    if run.note:
        print(run.note, file=stderr, flush=True)
    if 0 < settings.temperature < GREEDY_BELOW:
        print(f"note: --temperature {settings.temperature:g} is below {GREEDY_BELOW:g}: sampling greedily "
              "(the most likely token each time)", file=stderr, flush=True)
    out = TextOut(stdout)
    clock = GenerationClock() if getattr(args, "stats", False) else None
    code, reader_gone = 0, False
    try:
        with signals_end_sampling():
            out(args.prompt)
            with torch.no_grad():
                sample_text(run.model, run.tokenizer, args.prompt, settings, on_text=out,
                            untrained_ids=run.untrained_ids, clock=clock)
    except ReaderGone:
        reader_gone = True
    except KeyboardInterrupt:
        code = 130
    except Stopped as stopped:
        code = 128 + stopped.signum
    if not reader_gone:
        try:
            out.end()
        except ReaderGone:
            pass
    if clock is not None:  # (also after a stop: the tokens that came)
        # after Ctrl-C the terminal shows "^C" where the cursor was: its own line (out.end() gave the
        # text's, when the text went to the same terminal)
        after_ctrl_c = code == 130 and not out.terminal and _is_a_terminal(stderr)
        print(("\n" if after_ctrl_c else "") + stats_line(clock, settings.kv_cache), file=stderr, flush=True)
    return code

