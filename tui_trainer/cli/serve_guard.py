"""The guard in front of textual-serve: who may open a viewer, how many, and that each one ends.

textual-serve 1.1.3 answers any request: any web page the user visits could open its WebSocket
(``Origin: http://evil.example``), type keys into the viewer (pause, accum, stop) and start a
~540 MB viewer process per connection; a DNS name rebound to 127.0.0.1 reached it too. So, as
Jupyter guards its server:

- every request carries the token printed in the URL (``?token=``), or the cookie set from it on
  the first page load (HttpOnly, SameSite=Strict, named for the port: cookies ignore ports);
- the ``Host`` header names the served address (loopback names for a loopback server; any IP
  literal for a wildcard bind, which a rebound DNS name is not), and an ``Origin``, when a browser
  sends one, is that same host — a page elsewhere is refused;
- at most ``max_viewers`` viewers at once: the next one gets a page (or a close reason) that says so;
- each viewer process is tracked and ended with the server, and dies with it if the server is
  killed (the viewer sets PR_SET_PDEATHSIG from ``TUI_TRAINER_SERVER_PID``, see serve.py).

A refused request starts no process.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import shlex
import signal
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import WSCloseCode, web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from tui_trainer.cli.serve import PARENT_PID_ENV

MAX_VIEWERS = 4
FULL = "{n} viewers are already open (the most this server runs at once): close one and reload"
NEEDS_TOKEN = ("403: this tui-trainer viewer needs its token: open the URL the server printed "
               "(http://HOST:PORT/?token=...)")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Gate:
    """The checks on one request, from its headers alone (no I/O): the served port, the host names
    a browser may use for it, the token."""

    token: str
    port: int
    names: frozenset[str]  # lower-case host names / IP literals a Host header may carry
    any_ip: bool = False  # a wildcard bind (0.0.0.0, ::): any IP literal of this machine reaches it

    @classmethod
    def for_bind(cls, host: str, port: int, token: str, also: str = "") -> Gate:
        """``also``: the address the host resolved to and was bound (a name's IP is a Host too)."""
        address = _ip(host)
        if address is not None and address.is_unspecified:
            names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
            return cls(token, port, frozenset(names | LOOPBACK_NAMES), any_ip=True)
        if host.lower() == "localhost" or (address is not None and address.is_loopback):
            return cls(token, port, LOOPBACK_NAMES | {host.lower()})
        return cls(token, port, frozenset({host.lower(), also.lower()} - {""}))

    @property
    def cookie_name(self) -> str:
        return f"tui-trainer-token-{self.port}"

    def host_refusal(self, host_header: str | None) -> str | None:
        """Why this ``Host`` header is refused (DNS rebinding: a name we were not served as), or None."""
        if not host_header:
            return "no Host header"
        where = _host_and_port(host_header, default_port=80)
        if where is None:
            return "a malformed Host header"
        name, port = where
        if port != self.port:
            return f"Host names port {port}, not {self.port}"
        if name in self.names or (self.any_ip and _ip(name) is not None):
            return None
        return f"Host {name!r} is not an address this server was started on"

    def origin_refusal(self, origin: str | None, host_header: str) -> str | None:
        """A browser's ``Origin`` must be the page's own host; none at all is a non-browser client
        (it still needs the token)."""
        if origin is None:
            return None
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.path or parts.query:
            return f"Origin {origin!r} is not this server"
        default = 443 if parts.scheme == "https" else 80
        if _host_and_port(parts.netloc, default) != _host_and_port(host_header, 80):
            return f"Origin {origin!r} is not this server"
        return None

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _host_and_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    if not netloc or any(c in netloc for c in "@/?#\\ \t") or not netloc.isascii():
        return None
    try:
        parts = urlsplit("//" + netloc)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), (default_port if port is None else port)


class ViewerProcess(AppService):
    """One browser tab's viewer: started by argv (no shell between), told the server's pid so it
    dies with the server, and ended on demand."""

    def __init__(self, argv: list[str], **kwargs: Any) -> None:
        super().__init__(shlex.join(argv), **kwargs)
        self.argv = argv

    def _build_environment(self, width: int = 80, height: int = 24) -> dict[str, str]:
        environment = super()._build_environment(width, height)
        environment[PARENT_PID_ENV] = str(os.getpid())
        return environment

    async def _open_app_process(self, width: int = 80, height: int = 24) -> asyncio.subprocess.Process:
        self._process = process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self._build_environment(width, height))
        self._stdin = process.stdin
        return process

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def end(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the process is reaped."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        try:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), grace)
        except ProcessLookupError:
            return
        except TimeoutError:
            process.kill()
            await process.wait()


class GuardedServer(Server):
    """textual-serve's server with the gate in front, a cap on viewers, and their end with it."""

    def __init__(self, argv: list[str], listener: socket.socket, gate: Gate, title: str,
                 max_viewers: int = MAX_VIEWERS) -> None:
        super().__init__(shlex.join(argv), host="127.0.0.1", port=gate.port, title=title)
        self.argv, self.listener, self.gate, self.max_viewers = argv, listener, gate, max_viewers
        self.viewers: set[ViewerProcess] = set()
        self.sockets: set[web.WebSocketResponse] = set()
        self.starting = 0  # viewers admitted whose process is not up yet: they count against the cap

    # -- the gate --------------------------------------------------------------------------------

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self.guard)
        return app

    @web.middleware
    async def guard(self, request: web.Request, handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        refusal = self.gate.host_refusal(host) or self.gate.origin_refusal(request.headers.get("Origin"), host)
        if refusal is not None:
            return web.Response(status=403, text=f"403: {refusal}\n")
        from_query = request.query.get("token")
        if not self.gate.token_ok(from_query) and not self.gate.token_ok(request.cookies.get(self.gate.cookie_name)):
            return web.Response(status=403, text=NEEDS_TOKEN + "\n")
        response = await handler(request)
        if not response.prepared:  # (a WebSocket's headers are gone already)
            response.headers["Referrer-Policy"] = "no-referrer"
            response.headers["X-Frame-Options"] = "DENY"
            if from_query is not None:
                response.set_cookie(self.gate.cookie_name, self.gate.token, httponly=True, samesite="Strict",
                                    path="/")
        return response

    def full(self) -> bool:
        return len(self.viewers) + self.starting >= self.max_viewers

    # -- the page and the viewers ----------------------------------------------------------------

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        """The page, its WebSocket URL built from the Host the browser used (checked by the gate):
        a server on 0.0.0.0 must not hand browsers ``ws://0.0.0.0:PORT``. The WebSocket carries the
        token in the cookie this response sets (textual.js appends its own ``?width=``)."""
        if self.full():
            return web.Response(status=503, text=FULL.format(n=self.max_viewers) + "\n")
        base = f"{request.scheme}://{request.host}"
        ws_scheme = "wss" if request.scheme == "https" else "ws"
        context = {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": f"{ws_scheme}://{request.host}{request.app.router['websocket'].url_for()}",
            "config": {"static": {"url": f"{base}/static/"}},
            "application": {"name": self.title},
        }
        return aiohttp_jinja2.render_template("app_index.html", request, context)

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        websocket = web.WebSocketResponse(heartbeat=15)
        await websocket.prepare(request)
        if self.full():
            await websocket.close(code=WSCloseCode.TRY_AGAIN_LATER, message=FULL.format(n=self.max_viewers)[:120].encode())
            return websocket
        self.starting += 1
        self.sockets.add(websocket)
        viewer = ViewerProcess(self.argv, write_bytes=websocket.send_bytes, write_str=websocket.send_str,
                               close=websocket.close, download_manager=self.download_manager)
        try:
            try:
                await viewer.start(to_int(request.query.get("width", "80"), 80),
                                   to_int(request.query.get("height", "24"), 24))
            finally:
                self.starting -= 1
            self.viewers.add(viewer)
            await self._process_messages(websocket, viewer)
        except asyncio.CancelledError:
            await websocket.close()
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError, OSError):
            # a malformed message (or a dead peer): this viewer ends, the server goes on
            await websocket.close(code=WSCloseCode.UNSUPPORTED_DATA)
        finally:
            try:  # asked to quit first (a closed tab), then ended whatever it does
                await asyncio.wait_for(viewer.stop(), 3)
            except (TimeoutError, OSError, RuntimeError):
                pass
            await viewer.end()
            self.viewers.discard(viewer)
            self.sockets.discard(websocket)
        return websocket

    async def on_startup(self, app: web.Application) -> None:
        """(textual-serve prints its logo and an unusable URL here; the caller prints the URLs.)"""

    async def on_shutdown(self, app: web.Application) -> None:
        """Every viewer ends with the server, its tab told why."""
        await asyncio.gather(*(viewer.end() for viewer in list(self.viewers)))
        for websocket in list(self.sockets):
            await websocket.close(code=WSCloseCode.GOING_AWAY, message=b"the tui-trainer server stopped")

    def serve(self, debug: bool = False) -> None:
        """Serve on the listening socket bound before (so a busy port was refused before anything
        ran) until SIGINT or SIGTERM."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_exit)
        web.run_app(self._make_app(), sock=self.listener, handle_signals=False, loop=loop, print=None,
                    shutdown_timeout=5, access_log=None)
