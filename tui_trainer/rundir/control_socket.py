"""Steering a run from another process: a Unix domain socket in the run dir (mode 0600, so only
its owner can steer it) that turns one JSON line per command into the same ``Control`` calls the
app's keys make. No Textual import: the engine side runs in every training process.

Commands, one JSON object per line, each answered by one line ``{"ok": true, "applied": true,
"status": {...}}`` (the status once the run has applied the command) or ``{"ok": false, "error": "..."}``::

    {"command": "accum", "value": 16}      {"command": "accum_up"}     {"command": "accum_down"}
    {"command": "pause"}   {"command": "resume"}   {"command": "toggle_pause"}
    {"command": "save"}    {"command": "sample"}   {"command": "stop"}     {"command": "status"}

A line is input, not trust: at most ``MAX_LINE`` bytes, nested at most ``MAX_DEPTH`` deep
(checked before ``json.loads``), no key given twice, an accum value an int in bounds (a bool is not one); clients are
served side by side, each with a deadline, and no line or client can stop the server.

The server's threads only put commands into ``Control`` (thread-safe) and read a few plain
fields for the status; everything else stays the engine's. ``RemoteControl`` is the client: the
viewer app calls it exactly where the training app calls ``Control``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tui_trainer.config import ACCUM_MAX, ACCUM_MIN  # the bounds: one definition, in config.py
from tui_trainer.control import Control
from tui_trainer.errors import UserError

SOCKET_FILE = "control.sock"

MAX_LINE = 4096  # a command is a few dozen bytes; anything longer is not one of ours
MAX_DEPTH = 2  # a command is one flat object: `{"command": ..., "value": ...}` is depth 1
CLIENT_TIMEOUT_S = 2.0
MAX_ANSWER = 1 << 16  # a status is a few hundred bytes: a viewer reads no more than this
MAX_CLIENTS = 64  # connections served at once (a thread each); more are answered "busy" and closed at once
APPLIED_WAIT_S = 1.0  # how long an answer waits for the run to apply its command (below the client's timeout)
BUSY = {"ok": False, "error": "busy: too many connections to this run's control socket; try again"}


def socket_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SOCKET_FILE


def json_depth_exceeds(line: bytes, limit: int) -> bool:
    """Whether the JSON text nests arrays/objects deeper than ``limit`` (brackets inside strings
    do not count). Checked before ``json.loads``, whose recursion a few KB of ``[[[[`` exhausts."""
    depth, in_string, escaped = 0, False, False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


class RepeatedKey(ValueError):
    """A JSON object that names a key twice (`{"command": "status", "command": "stop"}`): which
    one was meant is a guess, and a command is not guessed."""


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        raise RepeatedKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return record


def parse_command(line: bytes) -> dict[str, Any] | str:
    """The command object of one line, or why it is not one."""
    if len(line) > MAX_LINE:
        return f"a command is one line of at most {MAX_LINE} bytes"
    if json_depth_exceeds(line, MAX_DEPTH):
        return "not a command: nested too deep"
    try:
        message = json.loads(line, object_pairs_hook=_no_repeated_keys)
    except RepeatedKey as exc:
        return f"not a command: the key {str(exc)[:40]!r} is given twice"
    except (ValueError, RecursionError):
        message = None
    if not isinstance(message, dict) or not isinstance(message.get("command"), str):
        return 'not a command: expected one JSON object with a "command"'
    return message


def accum_value(value: Any) -> int | None:
    """An accumulation count from a command: an int in bounds (a bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int) or not ACCUM_MIN <= value <= ACCUM_MAX:
        return None
    return value


class ControlServer:
    """Listens on ``RUN_DIR/control.sock`` on a daemon thread until ``close()``.

    Each connection is served on a thread of its own (at most ``MAX_CLIENTS`` at once), with a
    deadline of ``CLIENT_TIMEOUT_S`` for its whole line: an idle or slow client holds only its own
    thread, never the next viewer's command. Nothing a client sends can end the server: any
    exception is answered on that connection, or dropped with it.

    ``status()`` returns the run's state as plain values (read from the engine's fields; ints and
    bools, so reading them from this thread is safe). A command's answer carries the status once
    the run has applied it (``"applied": true``), or, when the run is busy in a long micro-step
    for ``APPLIED_WAIT_S``, the status as it stands with ``"applied": false``."""

    def __init__(self, run_dir: str | Path, control: Control, status: Callable[[], dict[str, Any]]) -> None:
        self.path = socket_path(run_dir)
        self.control = control
        self.status = status
        self._closed = threading.Event()
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
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
            # Listening before it has its name: a client that sees the file connects at once, and a
            # socket bound but not yet listening refuses it (a viewer's first command failed).
            self._server.listen(64)
            os.replace(tmp, self.path)
            # Which file is ours, and the folder it is in (by descriptor, not by name): a run dir
            # moved away and replaced by another run's must not lose that run's socket when this
            # server closes.
            mine = os.lstat(self.path)
            self._identity = (mine.st_dev, mine.st_ino)
            self._dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            self._server.close()
            tmp.unlink(missing_ok=True)
            raise
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
            if not self._clients.acquire(blocking=False):
                self._refuse_busy(connection)
                continue
            try:
                threading.Thread(target=self._client, args=(connection,), name="tui-trainer-control-client",
                                 daemon=True).start()
            except RuntimeError:  # no thread to be had
                self._clients.release()
                self._refuse_busy(connection)

    @staticmethod
    def _refuse_busy(connection: socket.socket) -> None:
        with connection:
            try:
                connection.setblocking(False)
                connection.send((json.dumps(BUSY) + "\n").encode())
            except OSError:
                pass

    def _client(self, connection: socket.socket) -> None:
        # A client's fault (or ours) ends its connection, never the server.
        try:
            with connection, contextlib.suppress(Exception):
                self._converse(connection)
        finally:
            self._clients.release()

    def _converse(self, connection: socket.socket) -> None:
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        buffer = b""
        while b"\n" not in buffer and len(buffer) <= MAX_LINE:
            left = deadline - time.monotonic()
            if left <= 0:
                return  # a client that does not finish its line in time gets no answer
            connection.settimeout(left)
            chunk = connection.recv(MAX_LINE + 1)
            if not chunk:
                break
            buffer += chunk
        connection.settimeout(CLIENT_TIMEOUT_S)
        lines = [line for line in buffer.split(b"\n") if line.strip()]  # (an overlong one is refused)
        for line in lines[:8]:
            connection.sendall((json.dumps(self.handle(line)) + "\n").encode())

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            return self._apply(parse_command(line))
        except Exception as exc:  # noqa: BLE001 — a status that failed to read, say: one answer, not a dead server
            return {"ok": False, "error": f"the command failed ({type(exc).__name__})"}

    def _apply(self, message: dict[str, Any] | str) -> dict[str, Any]:
        if isinstance(message, str):
            return {"ok": False, "error": message}
        command = message["command"]
        before = self.status()
        target = before.get("pending_accum") or before.get("accum", 1)
        if command == "accum":
            value = accum_value(message.get("value"))
            if value is None:
                return {"ok": False, "error": f"accum must be an integer from {ACCUM_MIN} to {ACCUM_MAX}"}
            self.control.set_accum(value)
        elif command in ("accum_up", "accum_down"):
            value = min(ACCUM_MAX, target * 2) if command == "accum_up" else max(ACCUM_MIN, target // 2)
            self.control.set_accum(value)
        elif command in ("pause", "resume", "toggle_pause", "save", "sample"):
            getattr(self.control, command)()
        elif command == "stop":
            self.control.stop("interrupted")
        elif command != "status":
            return {"ok": False, "error": f"unknown command {command[:40]!r}"}
        done = applied_check(command, message, before)
        status, applied = self.status(), True
        if done is not None:
            deadline = time.monotonic() + APPLIED_WAIT_S
            while not (applied := done(status)) and time.monotonic() < deadline and not self._closed.is_set():
                time.sleep(0.01)
                status = self.status()
        return {"ok": True, "applied": applied, "status": status}

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.close()
        self._thread.join(1.0)
        try:
            self._unlink_own_socket()
        finally:
            os.close(self._dir_fd)

    def _unlink_own_socket(self) -> None:
        """Removes the socket this server bound, where it now is (the run dir may have been moved):
        only if the name in that folder is still that very file, never whatever took its place."""
        try:
            found = os.lstat(SOCKET_FILE, dir_fd=self._dir_fd)
            if stat.S_ISSOCK(found.st_mode) and (found.st_dev, found.st_ino) == self._identity:
                os.unlink(SOCKET_FILE, dir_fd=self._dir_fd)
        except OSError:
            pass


def applied_check(command: str, message: dict[str, Any], before: dict[str, Any]
                  ) -> Callable[[dict[str, Any]], bool] | None:
    """How to tell from the run's status that it has applied ``command`` (None: nothing to wait
    for — a stop is seen at once, a save or sample shows in the run's records, not its status)."""
    if command in ("pause", "resume"):
        return lambda status: status.get("paused") is (command == "pause")
    if command == "toggle_pause":
        return lambda status: status.get("paused") is not before.get("paused")
    if command in ("accum", "accum_up", "accum_down"):
        target = before.get("pending_accum") or before.get("accum", 1)
        wanted = message["value"] if command == "accum" else (
            min(ACCUM_MAX, target * 2) if command == "accum_up" else max(ACCUM_MIN, target // 2))
        return lambda status: (status.get("pending_accum") or status.get("accum")) == wanted
    return None


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
        try:
            client.sendall((json.dumps(message) + "\n").encode())
        except BrokenPipeError:
            pass  # a server that answered at once ("busy") and closed: its answer is still there to read
        buffer = b""
        while b"\n" not in buffer and len(buffer) <= MAX_ANSWER:
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
