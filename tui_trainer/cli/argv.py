"""The command line as argparse should read it: a usage error in one line (``OneLineParser``), the
flag a misspelling meant (``nearest_flag``), and a value that begins with '-' kept as a value
(``dashed_values_attached``). main.py builds the parser and runs the subcommand.
"""

from __future__ import annotations

import argparse
import difflib
from typing import NoReturn

from tui_trainer.cli.console import say


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2, and a flag is spelt in
    full: a prefix (``--epoch`` for ``--epochs``) is an error with a suggestion, never silently
    taken for the longer flag."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def option_strings(self) -> list[str]:
        return [option for action in self._actions for option in action.option_strings]

    def error(self, message: str) -> NoReturn:
        say(f"error: {message} — see `{self.prog} --help`")
        raise SystemExit(2)


def nearest_flag(given: str, known: list[str]) -> str | None:
    """The flag a user most likely meant: the one flag that ``given`` begins (``--epoch`` →
    ``--epochs``), else the closest spelling (``--quik`` → ``--quick``), else None."""
    name = given.split("=", 1)[0]
    longer = [flag for flag in known if flag.startswith(name) and flag != name]
    if len(longer) == 1:
        return longer[0]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def refuse_unknown(parser: OneLineParser, extras: list[str]) -> NoReturn:
    """Unrecognized arguments: name them, and suggest the flag meant where one is close."""
    for given in extras:
        if given.startswith("-") and (guess := nearest_flag(given, parser.option_strings())):
            parser.error(f"unrecognized argument {given}: did you mean {guess}?")
    parser.error(f"unrecognized arguments: {' '.join(extras)}")


def dashed_values_attached(argv: list[str], command: argparse.ArgumentParser | None) -> list[str]:
    """``--flag -3m`` → ``--flag=-3m`` for an option that takes one value: argparse reads a value that
    begins with '-' (and is not a plain negative number) as an option and says "expected one argument";
    attached, it reaches the option's own check, which names the problem and the fix. A known option
    after ``--flag`` stays an option (``--data --epochs 3`` is still "--data: expected one argument")."""
    if command is None:  # (``command``: the parser of argv[0], the subcommand; None: none known)
        return argv
    takes_one = {option for action in command._actions if action.nargs is None and action.option_strings
                 for option in action.option_strings}
    known = set(command._option_string_actions)
    out: list[str] = []
    index = 0
    while index < len(argv):
        given = argv[index]
        if given == "--":
            return out + argv[index:]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if given in takes_one and following is not None and following.startswith("-") and len(following) > 1 \
                and following.split("=", 1)[0] not in known:
            out.append(f"{given}={following}")
            index += 2
            continue
        out.append(given)
        index += 1
    return out
