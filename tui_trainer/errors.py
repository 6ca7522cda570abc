"""Errors a user can cause: printed as one line with a hint, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a problem and how to fix it.

    The CLI prints ``error: <message> (<hint>)`` on one line and exits with 2.
    Bugs are ordinary exceptions and are never turned into a UserError.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f" — {self.hint}"
        return " ".join(text.split())  # never more than one line


class PeerLost(RuntimeError):
    """Several processes: a collective failed or timed out — another process of the run died or
    stopped answering (distributed.py). One line and exit 1, never a hang."""


class DataChanged(RuntimeError):
    """A file a running run reads changed under it (its token cache cut short): the run saves
    where it stands and ends with one line and exit 1, as after a lost peer, never a crash."""
