"""--serve from the command line: the real viewer behind the guard on 127.0.0.1 (textual-serve),
refusals before the run starts, and no viewer left behind when the server or the run ends."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_view import recorded_run_dir

from tui_trainer.cli.serve import open_listener, parse_serve
from tui_trainer.errors import UserError

pytest.importorskip("textual_serve")

import aiohttp

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--micro-batch", "4",
        "--accum", "2", "--threads", "1", "--limit-train-batches", "4", "--limit-val-batches", "2", "--patience", "0"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(root: int) -> set[int]:
    """Every live process under ``root`` (by parent pid, from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def read_url(process: subprocess.Popen, timeout: float = 120) -> str:
    """The URL the server printed (its first line naming one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode()
        if match := re.search(r"http://\S+/\?token=\S+", line):
            return match.group(0)
        if not line and process.poll() is not None:
            pytest.fail(f"the server ended: {process.stderr.read().decode()}")
    pytest.fail("no URL printed")


def http_status(url: str, **headers: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def viewer_answers(ws_url: str, origin: str, viewers_of: int) -> set[int]:
    """Open the WebSocket as a browser page would and wait for the viewer's first screen; returns
    the server's processes while it is connected."""
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, headers={"Origin": origin}) as websocket:
        await websocket.send_json(["resize", {"width": 100, "height": 30}])
        received = 0
        while received < 1000:
            message = await websocket.receive(timeout=90)
            assert message.type == aiohttp.WSMsgType.BINARY, message
            received += len(message.data)
        return descendants(viewers_of)


def start_view_server(run_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tui_trainer", "view", str(run_dir), "--serve", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def test_view_serve_answers_only_with_its_token(tmp_path):
    run_dir, port = recorded_run_dir(tmp_path, epochs=1), free_port()
    server = start_view_server(run_dir, port)
    try:
        url = read_url(server)
        token = url.rpartition("token=")[2]
        assert url == f"http://127.0.0.1:{port}/?token={token}" and len(token) >= 40
        assert http_status(f"http://127.0.0.1:{port}/")[0] == 403
        assert http_status(url, Host=f"attacker.example.com:{port}")[0] == 403
        status, body = http_status(url)
        assert status == 200 and "<html" in body.lower() and "tui-trainer view" in body
        assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws"' in body
    finally:
        server.terminate()
        server.wait(20)


@pytest.mark.slow
def test_the_served_viewer_answers_a_good_client_and_ends_with_the_server(tmp_path):
    run_dir, port = recorded_run_dir(tmp_path, epochs=1), free_port()
    server = start_view_server(run_dir, port)
    viewers: set[int] = set()
    try:
        token = read_url(server).rpartition("token=")[2]
        viewers = asyncio.run(viewer_answers(f"ws://127.0.0.1:{port}/ws?token={token}", f"http://127.0.0.1:{port}",
                                             server.pid))
        assert viewers  # the viewer ran while connected
        server.send_signal(signal.SIGTERM)
        server.wait(20)
        assert server.returncode == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in viewers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in viewers)
    finally:
        server.kill()
        server.wait(10)
        for pid in viewers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_serve_binds_to_localhost_unless_a_host_is_given():
    assert parse_serve("8000") == ("127.0.0.1", 8000, False)
    assert parse_serve("0.0.0.0:8123") == ("0.0.0.0", 8123, True)
    assert parse_serve("[::1]:8123") == ("::1", 8123, True)
    for bad in ("host:notaport", "0", "65536", "-1", ""):
        with pytest.raises(UserError):
            parse_serve(bad)


def test_a_wildcard_bind_prints_addresses_a_browser_can_use():
    listener = open_listener(f"0.0.0.0:{free_port()}")
    try:
        urls = listener.urls()
    finally:
        listener.close()
    assert urls[0].startswith("http://127.0.0.1:")
    assert not any("0.0.0.0" in url for url in urls)
    assert all(url.endswith(f"/?token={listener.token}") for url in urls)


def test_a_busy_port_or_an_address_not_ours_is_refused_with_one_line():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(UserError, match="already in use"):
            open_listener(f"127.0.0.1:{port}")
    with pytest.raises(UserError, match="not an address of this machine"):
        open_listener(f"203.0.113.77:{free_port()}")  # (TEST-NET-3: documentation only)
    with pytest.raises(UserError, match="no such host"):
        open_listener("no-such-host.invalid:8000")


@pytest.mark.parametrize("serve", ["busy", pytest.param("no-such-host.invalid:8000", marks=pytest.mark.slow)])
def test_train_serve_refuses_a_busy_port_or_a_bad_host_before_the_run(small_corpus, tmp_path, serve):
    run_dir = tmp_path / "run"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        spec = str(holder.getsockname()[1]) if serve == "busy" else serve
        result = subprocess.run([sys.executable, "-m", "tui_trainer", "train", "--no-ui", "--data", str(small_corpus),
                                 *TINY, "--epochs", "1", "--run-dir", str(run_dir), "--serve", spec],
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --serve") and "Traceback" not in result.stderr
    assert not run_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("ending", [signal.SIGINT, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_run_that_ends_with_a_browser_open_leaves_no_viewer_behind(small_corpus, tmp_path, ending):
    """``train --serve``, a raw WebSocket client connected to a real viewer, the run stopped (or the
    trainer killed -9): the server and its viewer end with it (before: a viewer orphaned under pid 1)."""
    run_dir, port = tmp_path / "run", free_port()
    trainer = subprocess.Popen([sys.executable, "-m", "tui_trainer", "train", "--no-ui", "--data", str(small_corpus),
                                *TINY, "--epochs", "100000", "--run-dir", str(run_dir), "--serve", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    seen: set[int] = set()
    try:
        url = read_url(trainer)
        token = url.rpartition("token=")[2]

        async def connected_when_the_run_ends() -> None:
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    f"ws://127.0.0.1:{port}/ws?token={token}", headers={"Origin": f"http://127.0.0.1:{port}"}) as websocket:
                await websocket.send_json(["resize", {"width": 100, "height": 30}])
                received = 0
                while received < 1000:
                    message = await websocket.receive(timeout=90)
                    assert message.type == aiohttp.WSMsgType.BINARY, message
                    received += len(message.data)
                seen.update(descendants(trainer.pid))  # the server and its viewer
                trainer.send_signal(ending)  # the run ends with the tab open
                while (await websocket.receive(timeout=60)).type == aiohttp.WSMsgType.BINARY:
                    pass  # (the viewer's last screens) until the server closes the socket

        asyncio.run(connected_when_the_run_ends())
        trainer.wait(60)
        assert len(seen) >= 2
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in seen), [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in seen
                                                     if alive(pid)]
    finally:
        trainer.kill()
        trainer.wait(10)
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

