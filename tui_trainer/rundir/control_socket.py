"""Steering a run from another process: a Unix domain socket in the run dir (mode 0600, so only
its owner can steer it) that turns one JSON line per command into the same ``Control`` calls the
app's keys make. No Textual import: the engine side runs in every training process.

Commands, one JSON object per line, each answered by one line ``{"ok": true, "status": {...}}``
or ``{"ok": false, "error": "..."}``::

    {"command": "accum", "value": 16}      {"command": "accum_up"}     {"command": "accum_down"}
    {"command": "pause"}   {"command": "resume"}   {"command": "toggle_pause"}
    {"command": "save"}    {"command": "sample"}   {"command": "stop"}     {"command": "status"}

The server's thread only puts commands into ``Control`` (thread-safe) and reads a few plain
fields for the status; everything else stays the engine's. ``RemoteControl`` is the client: the
viewer app calls it exactly where the training app calls ``Control``.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tui_trainer.control import Control
from tui_trainer.errors import UserError

SOCKET_FILE = "control.sock"
from tui_trainer.config import ACCUM_MAX, ACCUM_MIN  # the bounds: one definition, in config.py
MAX_LINE = 4096  # a command is a few dozen bytes; anything longer is not one of ours
CLIENT_TIMEOUT_S = 2.0


def socket_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SOCKET_FILE


class ControlServer:
    """Listens on ``RUN_DIR/control.sock`` on a daemon thread until ``close()``.

    ``status()`` returns the run's state as plain values (read from the engine's fields; ints and
    bools, so reading them from this thread is safe)."""

    def __init__(self, run_dir: str | Path, control: Control, status: Callable[[], dict[str, Any]]) -> None:
        self.path = socket_path(run_dir)
        self.control = control
        self.status = status
        self._closed = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under a temporary name, made 0600, then renamed into place: the socket is never
        # reachable under its real name with looser permissions. The caller holds the run dir's
        # lock, so a socket file already there is a dead run's.
        tmp = self.path.with_name(f".{SOCKET_FILE}.{os.getpid()}")
        try:
            for leftover in (tmp, self.path):
                if leftover.is_socket():
                    leftover.unlink()
            self._server.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except OSError:
            self._server.close()
            tmp.unlink(missing_ok=True)
            raise
        self._server.listen(8)
        self._server.settimeout(0.25)
        self._thread = threading.Thread(target=self._serve, name="tui-trainer-control-socket", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # closed under us
            with connection:
                connection.settimeout(CLIENT_TIMEOUT_S)
                try:
                    self._converse(connection)
                except OSError:
                    pass  # a viewer that went away mid-line: nothing to answer

    def _converse(self, connection: socket.socket) -> None:
        buffer = b""
        while b"\n" not in buffer and len(buffer) <= MAX_LINE:
            chunk = connection.recv(MAX_LINE)
            if not chunk:
                break
            buffer += chunk
        for line in buffer.split(b"\n"):
            if line.strip():
                connection.sendall((json.dumps(self.handle(line)) + "\n").encode())

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
            command = message["command"]
        except (ValueError, TypeError, KeyError):
            return {"ok": False, "error": "not a command: expected one JSON object with a \"command\""}
        status = self.status()
        target = status.get("pending_accum") or status.get("accum", 1)
        if command == "accum":
            value = message.get("value")
            if not isinstance(value, int) or not ACCUM_MIN <= value <= ACCUM_MAX:
                return {"ok": False, "error": f"accum must be an integer from {ACCUM_MIN} to {ACCUM_MAX}"}
            self.control.set_accum(value)
        elif command in ("accum_up", "accum_down"):
            self.control.set_accum(min(ACCUM_MAX, target * 2) if command == "accum_up" else max(ACCUM_MIN, target // 2))
        elif command in ("pause", "resume", "toggle_pause", "save", "sample"):
            getattr(self.control, command)()
        elif command == "stop":
            self.control.stop("interrupted")
        elif command != "status":
            return {"ok": False, "error": f"unknown command {command!r}"}
        return {"ok": True, "status": self.status()}

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.close()
        self._thread.join(1.0)
        try:
            if self.path.is_socket():
                self.path.unlink()
        except OSError:
            pass


# -- the client side (viewers) ------------------------------------------------------------------

def check_socket_is_ours(path: Path) -> None:
    """A control socket we would talk to: a socket, owned by us, 0600. Anything else is refused
    (someone else's run, or a file planted where a run's socket should be)."""
    info = path.lstat()
    if not stat.S_ISSOCK(info.st_mode):
        raise UserError(f"{path} is not a control socket", "remove it if no run is training in that run dir")
    if info.st_uid != os.getuid():
        raise UserError(f"{path} belongs to another user (uid {info.st_uid})",
                        "only the user who started a run can steer it; view it read-only as that user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise UserError(f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}, not 600)",
                        "it was not made by tui-trainer; remove it")


def send_command(path: Path, message: dict[str, Any], timeout: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """One command, one answer. OSError when no run listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(path))
        client.sendall((json.dumps(message) + "\n").encode())
        buffer = b""
        while b"\n" not in buffer:
            chunk = client.recv(MAX_LINE)
            if not chunk:
                break
            buffer += chunk
    return json.loads(buffer.split(b"\n")[0] or b"{}")


class RemoteControl:
    """``Control``'s methods, sent to a run through its socket. A failed send (the run ended, the
    socket went away) is reported to ``on_error`` instead of raised: a key press must not crash
    the viewer."""

    def __init__(self, path: Path, on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_error = on_error
        self.stop_signal: int | None = None  # (Control's; a viewer never stops on a signal)
        self.stop_reason: str | None = None

    @property
    def stop_requested(self) -> bool:
        return self.stop_reason is not None

    def send(self, message: dict[str, Any]) -> dict[str, Any] | None:
        try:
            answer = send_command(self.path, message)
        except (OSError, ValueError) as exc:
            self._fail(f"the run did not answer ({exc}); it may have ended")
            return None
        if not answer.get("ok"):
            self._fail(str(answer.get("error", "refused")))
            return None
        return answer

    def _fail(self, text: str) -> None:
        if self.on_error is not None:
            self.on_error(text)

    def status(self) -> dict[str, Any] | None:
        try:
            answer = send_command(self.path, {"command": "status"}, timeout=1.0)
        except (OSError, ValueError):
            return None
        return answer.get("status") if answer.get("ok") else None

    def set_accum(self, accum: int) -> None:
        self.send({"command": "accum", "value": int(accum)})

    def toggle_pause(self) -> None:
        self.send({"command": "toggle_pause"})

    def pause(self) -> None:
        self.send({"command": "pause"})

    def resume(self) -> None:
        self.send({"command": "resume"})

    def save(self) -> None:
        self.send({"command": "save"})

    def sample(self) -> None:
        self.send({"command": "sample"})

    def stop(self, reason: str = "interrupted", signal_number: int | None = None) -> None:
        if self.send({"command": "stop"}) is not None:
            self.stop_reason = reason
