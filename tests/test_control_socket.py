"""The control socket as a hostile or clumsy client meets it, over a real Unix socket: lines too
long or nested too deep, values of the wrong type, idle and slow clients, more clients than it
serves at once, a status that fails. None of them stops the server or delays another viewer's
command; a command is answered with the status after the run applied it."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tui_trainer.control import Control, SetAccum, SetPaused, TogglePause
from tui_trainer.rundir import control_socket as cs


class LoopStandIn:
    """What the server sees of a run: a thread that drains ``Control`` every 20 ms, as the loop
    does between micro-steps, and keeps the fields ``steering_status`` reports."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.fields = {"paused": False, "accum": 2, "pending_accum": None, "epoch": 1, "step": 0, "stopping": False}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.done.is_set():
            for command in self.control.drain(timeout=0.02):
                if isinstance(command, SetPaused):
                    self.fields["paused"] = command.paused
                elif isinstance(command, TogglePause):
                    self.fields["paused"] = not self.fields["paused"]
                elif isinstance(command, SetAccum):
                    self.fields["pending_accum"] = None if command.accum == self.fields["accum"] else command.accum

    def status(self) -> dict:
        return {**self.fields, "stopping": self.control.stop_requested}


@pytest.fixture
def served(tmp_path):
    control = Control()
    run = LoopStandIn(control)
    server = cs.ControlServer(tmp_path, control, run.status)
    yield server, run
    server.close()
    run.done.set()


def raw_exchange(path, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(path))
        client.sendall(payload)
        answer = b""
        while b"\n" not in answer:
            chunk = client.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


PROMPTLY_S = 0.9 * cs.CLIENT_TIMEOUT_S  # served before a held client's deadline could have freed its place


def still_serving(server) -> None:
    """Served promptly: a place freed by clients that left (their threads end at their EOF, a
    moment later on a loaded machine: "busy" until then) rather than at their deadline."""
    started = time.monotonic()
    answer = cs.send_command(server.path, {"command": "status"})
    while answer == cs.BUSY and time.monotonic() - started < PROMPTLY_S:
        time.sleep(0.02)
        answer = cs.send_command(server.path, {"command": "status"})
    assert answer["ok"] and "paused" in answer["status"]
    assert time.monotonic() - started < PROMPTLY_S


@pytest.mark.parametrize("payload", [
    b"[" * 3000 + b"\n",
    b'{"command": "status", "value": ' + b"[" * 3000 + b"]" * 3000 + b"}\n",
    b"{" * 2000 + b"\n",
], ids=["bare-brackets", "deep-value", "braces"])
def test_a_line_nested_too_deep_is_refused_and_the_server_serves_on(served, payload):
    server, _ = served
    answer = cs.json.loads(raw_exchange(server.path, payload))
    assert answer["ok"] is False and ("nested" in answer["error"] or "at most" in answer["error"])
    still_serving(server)


def test_brackets_inside_a_string_are_not_nesting():
    assert not cs.json_depth_exceeds(b'{"command": "[[[[[[[[\\"]]]"}', 2)
    assert cs.json_depth_exceeds(b'{"command": [[["x"]]]}', 2)


@pytest.mark.parametrize("payload", [b"x" * 100_000, b'{"command": "status", "pad": "' + b"y" * 5000 + b'"}\n',
                                     b"\xff\xfe\x00garbage\n", b"[1, 2, 3]\n", b'{"command": ["pause"]}\n',
                                     b"null\n", b'{"command": "status"' + b"\n"],
                         ids=["endless", "overlong", "not-utf8", "a-list", "command-not-a-string", "null", "torn"])
def test_anything_but_a_command_line_is_refused_with_one_answer(served, payload):
    server, _ = served
    answer = cs.json.loads(raw_exchange(server.path, payload))
    assert answer["ok"] is False and answer["error"]
    still_serving(server)


@pytest.mark.parametrize("value", [True, False, 4.0, "4", None, [4], 0, 1025, 2 ** 70])
def test_an_accum_value_must_be_an_integer_in_bounds_not_a_bool(served, value):
    server, run = served
    answer = cs.send_command(server.path, {"command": "accum", "value": value})
    assert answer["ok"] is False and "integer" in answer["error"]
    time.sleep(0.1)
    assert run.fields["pending_accum"] is None and server.control.drain() == []


def test_pause_is_answered_with_the_status_after_the_run_applied_it(served):
    server, _ = served
    paused = cs.send_command(server.path, {"command": "pause"})
    assert paused["ok"] and paused["applied"] and paused["status"]["paused"] is True
    toggled = cs.send_command(server.path, {"command": "toggle_pause"})
    assert toggled["applied"] and toggled["status"]["paused"] is False
    accum = cs.send_command(server.path, {"command": "accum", "value": 8})
    assert accum["applied"] and accum["status"]["pending_accum"] == 8
    up = cs.send_command(server.path, {"command": "accum_up"})
    assert up["status"]["pending_accum"] == 16


def test_a_run_busy_in_a_long_micro_step_answers_applied_false_in_time(tmp_path):
    control = Control()  # nobody drains it: the run is inside one long micro-step
    status = {"paused": False, "accum": 2, "pending_accum": None, "epoch": 1, "step": 0, "stopping": False}
    server = cs.ControlServer(tmp_path, control, lambda: dict(status))
    try:
        started = time.monotonic()
        answer = cs.send_command(server.path, {"command": "pause"})
        assert answer["ok"] and answer["applied"] is False and answer["status"]["paused"] is False
        assert time.monotonic() - started < cs.CLIENT_TIMEOUT_S
        assert control.drain() == [SetPaused(True)]  # it is queued: the run takes it at its next micro-step
    finally:
        server.close()


def test_idle_connections_and_a_slow_sender_do_not_hold_up_a_viewer(served):
    server, _ = served
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(str(server.path))
    slow.sendall(b'{"comm')
    idle = []
    for _ in range(20):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(server.path))
        idle.append(client)
    try:
        for command in ("status", "pause", "resume"):
            started = time.monotonic()
            answer = cs.send_command(server.path, {"command": command})
            assert answer["ok"] and answer["applied"] and time.monotonic() - started < PROMPTLY_S
        slow.settimeout(cs.CLIENT_TIMEOUT_S + 2)
        slow.sendall(b'mand": "pause"}')  # a byte now and then does not extend its deadline
        assert slow.recv(100) == b""  # cut off at its deadline, unanswered
    finally:
        for client in [*idle, slow]:
            client.close()
    assert not server.status()["paused"]
    still_serving(server)


def test_beyond_the_cap_a_client_is_told_busy_at_once_and_served_when_one_leaves(served):
    server, _ = served
    held = []
    try:
        for _ in range(cs.MAX_CLIENTS):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(server.path))
            held.append(client)
        time.sleep(0.2)
        started = time.monotonic()
        answer = cs.send_command(server.path, {"command": "status"})
        assert answer == cs.BUSY and time.monotonic() - started < PROMPTLY_S
        for client in held:
            client.close()  # (their threads end at EOF, long before their deadline)
        still_serving(server)
    finally:
        for client in held:
            client.close()


def test_a_failing_status_is_answered_and_the_server_serves_on(tmp_path):
    calls = []

    def status() -> dict:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a field read mid-update")
        return {"paused": False, "accum": 1, "pending_accum": None, "epoch": 1, "step": 0, "stopping": False}

    server = cs.ControlServer(tmp_path, Control(), status)
    try:
        assert cs.send_command(server.path, {"command": "status"}) == {
            "ok": False, "error": "the command failed (RuntimeError)"}
        assert cs.send_command(server.path, {"command": "status"})["ok"]
    finally:
        server.close()


def test_a_run_whose_dir_was_moved_leaves_the_new_runs_socket_alone_when_it_closes(tmp_path):
    """Run A on X; X moved to Xm; run B on a new X: A's close must not remove B's socket (it
    removes its own, where it now is) and B stays steerable."""
    first_dir, moved = tmp_path / "X", tmp_path / "Xm"
    first_dir.mkdir()
    a_run, b_run = LoopStandIn(Control()), LoopStandIn(Control())
    a = cs.ControlServer(first_dir, a_run.control, a_run.status)
    first_dir.rename(moved)
    first_dir.mkdir()
    b = cs.ControlServer(first_dir, b_run.control, b_run.status)
    try:
        assert cs.send_command(moved / cs.SOCKET_FILE, {"command": "stop"})["ok"]
        a.close()
        assert (first_dir / cs.SOCKET_FILE).is_socket()
        assert not (moved / cs.SOCKET_FILE).exists()
        still_serving(b)
    finally:
        b.close()
        a_run.done.set()
        b_run.done.set()
    assert not (first_dir / cs.SOCKET_FILE).exists()


def test_a_socket_put_in_place_of_ours_is_not_removed_on_close(tmp_path):
    a = cs.ControlServer(tmp_path, Control(), dict)
    (tmp_path / cs.SOCKET_FILE).unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(tmp_path / cs.SOCKET_FILE))
        a.close()
        assert (tmp_path / cs.SOCKET_FILE).is_socket()


def test_a_key_given_twice_is_refused_not_guessed(served):
    server, run = served
    answer = cs.json.loads(raw_exchange(server.path, b'{"command": "status", "command": "stop"}\n'))
    assert answer == {"ok": False, "error": "not a command: the key 'command' is given twice"}
    assert not run.control.stop_requested
    still_serving(server)
