"""The guard in front of textual-serve, as a hostile page would try it: a real server on 127.0.0.1
and a raw WebSocket client (aiohttp's). The viewer here is a stand-in process that speaks
textual-serve's prelude and sleeps, so that four of them cost nothing; test_serve.py serves the
real viewer.

Classes of hostile input covered: no token, a wrong or truncated token, a token in a cookie for
another port; a Host header that is a foreign name (DNS rebinding), another port, malformed,
with userinfo, missing; an Origin of another site, of another port, ``null``, ``file://``; a fifth
concurrent connection; a malformed WebSocket message; a server shut down or killed with viewers open.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Self

import pytest

pytest.importorskip("textual_serve")

import aiohttp
from aiohttp import web

from tui_trainer.cli.serve import die_with_parent, open_listener
from tui_trainer.cli.serve_guard import Gate, GuardedServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_with(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if marker.encode() not in cmdline.read():
                    continue
            with open(f"/proc/{entry}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] == "Z":
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


class Served:
    """A GuardedServer on a free loopback port, its stand-in viewers marked by a unique string."""

    def __init__(self, max_viewers: int = 4, host: str = "127.0.0.1") -> None:
        self.marker = f"stand-in-viewer-{uuid.uuid4().hex}"
        stand_in = ("import sys, time; sys.stdout.write('__GANGLION__\\n'); sys.stdout.flush(); "
                    f"time.sleep(120)  # {self.marker}")
        self.listener = open_listener(f"{host}:{free_port()}")
        self.port, self.token = self.listener.port, self.listener.token
        self.server = GuardedServer([sys.executable, "-c", stand_in], self.listener.sock, self.listener.gate(),
                                    title="tui-trainer view test", max_viewers=max_viewers)
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    async def __aenter__(self) -> Self:
        self.runner, self.down = web.AppRunner(await self.server._make_app(), shutdown_timeout=5), False
        await self.runner.setup()
        await web.SockSite(self.runner, self.listener.sock).start()
        self.client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # (unsafe: IP hosts)
        return self

    async def shut_down(self) -> None:
        """What SIGTERM or Ctrl+C does to serve(): the runner's cleanup (its on_shutdown included)."""
        if not self.down:
            self.down = True
            await self.runner.cleanup()

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.shut_down()
        for pid in processes_with(self.marker):  # (only if a test failed: leave nothing behind)
            os.kill(pid, 9)

    def viewers(self) -> list[int]:
        return processes_with(self.marker)

    def places_taken(self) -> int:
        """The server's own count against its cap: viewers running and viewers starting."""
        return len(self.server.viewers) + self.server.starting

    async def wait_for_viewers(self, count: int, timeout: float = 60) -> None:
        """Until `count` stand-in viewers run and the server counts that many (a deadline, not a
        wait: four Python starts can take over 20 s on two loaded cores). Both, because a viewer
        that has exited is gone from /proc (a zombie) a moment before the server has reaped it and
        freed its place: a tab opened in that moment is refused (CI, 2026-12-06)."""
        deadline = time.monotonic() + timeout
        while ((len(self.viewers()), self.places_taken()) != (count, count)
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        assert (len(self.viewers()), self.places_taken()) == (count, count)


class Tab:
    """A WebSocket read all the time, as a browser tab reads it. aiohttp's client answers the
    server's heartbeat pings only inside ``receive()``: a socket nobody reads is closed by the
    server ~22 s after it opened (heartbeat 15 s + half of it for the pong), and its viewer with
    it, which on two loaded cores is within the time four viewers take to start."""

    def __init__(self, websocket: aiohttp.ClientWebSocketResponse) -> None:
        self.websocket = websocket
        self.messages: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, served: Served, url: str, **headers: str) -> Tab:
        return cls(await served.client.ws_connect(url, headers=headers))

    async def _read(self) -> None:
        while True:
            message = await self.websocket.receive()
            await self.messages.put(message)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR):
                return

    async def next(self, timeout: float = 10) -> aiohttp.WSMessage:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def close(self) -> None:
        await self.websocket.close()
        await asyncio.wait_for(self.reader, 10)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def status_of(session: aiohttp.ClientSession, url: str, **headers: str) -> int:
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        return response.status


async def handshake_status(session: aiohttp.ClientSession, url: str, **headers: str) -> int:
    try:
        async with session.ws_connect(url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=5)):
            return 101
    except aiohttp.WSServerHandshakeError as error:
        return error.status


# -- the gate, header by header (no I/O) ----------------------------------------------------------

def test_gate_refuses_hosts_a_rebound_name_or_a_malformed_header_would_send():
    gate = Gate.for_bind("127.0.0.1", 8140, "t", also="127.0.0.1")
    for good in ("127.0.0.1:8140", "localhost:8140", "LOCALHOST:8140", "[::1]:8140"):
        assert gate.host_refusal(good) is None, good
    for bad in ("attacker.example.com:8140", "127.0.0.1.nip.io:8140", "localhost.attacker.com:8140",
                "127.0.0.1:8141", "127.0.0.1", "127.0.0.1:8140@evil.com", "evil.com#@127.0.0.1:8140",
                "127.0.0.1:80a", "", None, "[::1", "127.0.0.1:8140/x", "lоcalhost:8140"):  # (a Cyrillic о)
        assert gate.host_refusal(bad) is not None, bad


def test_gate_on_a_wildcard_bind_takes_this_machines_ip_literals_not_foreign_names():
    gate = Gate.for_bind("0.0.0.0", 8140, "t", also="0.0.0.0")
    assert gate.host_refusal("192.168.1.77:8140") is None
    assert gate.host_refusal("localhost:8140") is None
    assert gate.host_refusal("rebound.attacker.example:8140") is not None
    assert gate.host_refusal("192.168.1.77:9999") is not None


def test_gate_takes_only_the_pages_own_origin():
    gate = Gate.for_bind("127.0.0.1", 8140, "t", also="127.0.0.1")
    assert gate.origin_refusal(None, "127.0.0.1:8140") is None  # (a non-browser client: the token still applies)
    assert gate.origin_refusal("http://127.0.0.1:8140", "127.0.0.1:8140") is None
    for bad in ("http://evil.example.com", "http://127.0.0.1:8141", "http://localhost:8140", "null",
                "file://", "http://127.0.0.1:8140/path", "javascript:alert(1)"):
        assert gate.origin_refusal(bad, "127.0.0.1:8140") is not None, bad


def test_gate_token_must_match_whole():
    gate = Gate.for_bind("127.0.0.1", 8140, "secret-token")
    assert gate.token_ok("secret-token")
    for bad in (None, "", "secret-toke", "secret-token ", "SECRET-TOKEN", "secret-tokenx"):
        assert not gate.token_ok(bad)


# -- a real server on 127.0.0.1 ------------------------------------------------------------------

async def test_requests_without_the_token_get_403_and_start_no_viewer():
    async with Served() as served:
        client = served.client
        assert await status_of(client, f"{served.base}/") == 403
        assert await status_of(client, f"{served.base}/?token={served.token[:-1]}") == 403
        assert await status_of(client, f"{served.base}/static/js/textual.js") == 403
        assert await status_of(client, f"{served.base}/download/x") == 403
        assert await handshake_status(client, served.ws_url) == 403
        assert await handshake_status(client, f"{served.ws_url}?token=wrong") == 403
        other_port_cookie = {"Cookie": f"tui-trainer-token-{served.port + 1}={served.token}"}
        assert await handshake_status(client, served.ws_url, **other_port_cookie) == 403
        await asyncio.sleep(0.3)
        assert served.viewers() == []


async def test_a_foreign_origin_or_host_is_refused_even_with_the_token():
    async with Served() as served:
        url = f"{served.ws_url}?token={served.token}"
        assert await handshake_status(served.client, url, Origin="http://evil.example.com") == 403
        assert await handshake_status(served.client, url, Origin="null") == 403
        assert await handshake_status(served.client, url, Host=f"attacker.example.com:{served.port}") == 403
        assert await status_of(served.client, f"{served.base}/?token={served.token}",
                               Host=f"attacker.example.com:{served.port}") == 403
        await asyncio.sleep(0.3)
        assert served.viewers() == []


async def test_the_first_page_load_sets_a_strict_cookie_that_opens_the_websocket():
    async with Served() as served:
        async with served.client.get(f"{served.base}/?token={served.token}") as page:
            assert page.status == 200
            cookie = page.headers["Set-Cookie"]
            body = await page.text()
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and served.token in cookie
        assert f'data-session-websocket-url="ws://127.0.0.1:{served.port}/ws"' in body
        assert page.headers["Referrer-Policy"] == "no-referrer"
        # the WebSocket as textual.js opens it: no token in its URL, the cookie and the page's Origin
        async with await Tab.open(served, f"{served.ws_url}?width=80&height=24", Origin=served.base) as tab:
            await served.wait_for_viewers(1)
            await tab.websocket.send_json(["ping", "x"])
            assert (await tab.next()).json() == ["pong", "x"]
        await served.wait_for_viewers(0)  # the tab closed: its viewer ended


async def test_a_wildcard_server_builds_the_pages_websocket_url_from_the_host_the_browser_used():
    async with Served(host="0.0.0.0") as served:
        for host in (f"127.0.0.1:{served.port}", f"localhost:{served.port}"):
            async with served.client.get(f"{served.base}/?token={served.token}", headers={"Host": host}) as page:
                assert page.status == 200
                body = await page.text()
            assert f'data-session-websocket-url="ws://{host}/ws"' in body and "0.0.0.0" not in body
        assert await status_of(served.client, f"{served.base}/?token={served.token}",
                               Host=f"rebound.attacker.example:{served.port}") == 403


async def test_the_fifth_concurrent_viewer_is_refused_with_a_reason_and_no_process():
    async with Served(max_viewers=4) as served:
        url = f"{served.ws_url}?token={served.token}"
        open_ones = [await Tab.open(served, url) for _ in range(4)]
        await served.wait_for_viewers(4)
        async with served.client.ws_connect(url) as fifth:
            message = await fifth.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert message.data == aiohttp.WSCloseCode.TRY_AGAIN_LATER and "4 viewers" in message.extra
        async with served.client.get(f"{served.base}/?token={served.token}") as page:
            assert page.status == 503 and "close one" in await page.text()
        assert len(served.viewers()) == 4
        await open_ones[0].close()
        await served.wait_for_viewers(3)
        async with await Tab.open(served, url):  # a freed place is a place again
            await served.wait_for_viewers(4)
        for tab in open_ones[1:]:
            await tab.close()


async def test_a_malformed_message_ends_that_viewer_and_the_server_goes_on():
    async with Served() as served:
        url = f"{served.ws_url}?token={served.token}"
        async with await Tab.open(served, url) as tab:
            await served.wait_for_viewers(1)
            await tab.websocket.send_str("[[[[not json")
            assert (await tab.next()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await served.wait_for_viewers(0)
        assert await status_of(served.client, f"{served.base}/?token={served.token}") == 200


async def test_every_viewer_ends_when_the_server_shuts_down():
    async with Served() as served:
        url = f"{served.ws_url}?token={served.token}"
        tabs = [await Tab.open(served, url) for _ in range(2)]
        await served.wait_for_viewers(2)
        started = time.monotonic()
        await served.shut_down()
        assert time.monotonic() - started < 10
        assert served.viewers() == []
        for tab in tabs:
            message = await tab.next(timeout=5)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_process_that_asked_to_die_with_its_parent_dies_when_the_parent_is_killed(tmp_path):
    """PR_SET_PDEATHSIG, as a served viewer sets it: its server killed with SIGKILL, it goes too."""
    pid_file, ready = tmp_path / "child.pid", tmp_path / "ready"
    child = ("import os, sys, time\n"
             "from tui_trainer.cli.serve import die_with_parent\n"
             "die_with_parent(int(sys.argv[1]))\n"
             f"open({str(ready)!r}, 'w').close()\n"
             "time.sleep(120)\n")
    parent_code = ("import os, subprocess, sys, time\n"
                   f"child = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())])\n"
                   f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
                   "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    child_pid = None
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        assert ready.exists() and alive(child_pid)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child_pid)
    finally:
        parent.kill()
        if child_pid is not None and alive(child_pid):
            os.kill(child_pid, 9)


def test_die_with_parent_leaves_at_once_when_the_parent_is_already_gone():
    with pytest.raises(SystemExit):
        die_with_parent(os.getppid() + 1 if os.getppid() != 1 else 2)
