"""``--serve [HOST:]PORT``: the viewer in a browser, through textual-serve, behind a guard.

textual-serve starts one app process per browser connection, so what it serves is always
``tui-trainer view RUN_DIR`` — a viewer attached to the one training process through its
control socket, never a second trainer. Two tabs are two viewers (at most four at once).
``train --serve`` runs the server as a child process for as long as the run runs.

The address is bound here, before the run starts (a bad host or a busy port is one line, exit 2,
nothing created), and the listening socket handed to the server. The URLs printed carry a random
token that every request must present (serve_guard.py says what else is checked).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tui_trainer.errors import UserError

DEFAULT_HOST = "127.0.0.1"
PARENT_PID_ENV = "TUI_TRAINER_SERVER_PID"  # set for a served viewer: the server it must die with
TOKEN_ENV = "TUI_TRAINER_SERVE_TOKEN"  # the token, parent → server child (not in argv: ps shows argv)
PR_SET_PDEATHSIG = 1


def parse_serve(spec: str) -> tuple[str, int, bool]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` → (host, port, host_given); checked before anything starts."""
    try:
        import textual_serve  # noqa: F401
    except ImportError:
        raise UserError("--serve needs the textual-serve package, which is not installed",
                        "install it with: pip install 'tui-trainer[serve]'") from None
    host, _, port_text = spec.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise UserError(f"--serve {spec}: not a port", "pass --serve 8000 or --serve 0.0.0.0:8000")
    return (host or DEFAULT_HOST), port, bool(host)


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


@dataclass
class ServeListener:
    """The bound, listening socket and the token for its URLs."""

    host: str
    port: int
    given: bool
    sock: socket.socket
    token: str

    @property
    def bound_address(self) -> str:
        return self.sock.getsockname()[0]

    def gate(self):
        from tui_trainer.cli.serve_guard import Gate

        return Gate.for_bind(self.host, self.port, self.token, also=self.bound_address)

    def urls(self) -> list[str]:
        """Addresses a browser can use: for 0.0.0.0 this machine's own, never ``0.0.0.0``."""
        hosts = [DEFAULT_HOST, *local_addresses()] if is_wildcard(self.host) else [self.host]
        return [f"http://{f'[{h}]' if ':' in h else h}:{self.port}/?token={self.token}" for h in hosts]

    def close(self) -> None:
        self.sock.close()


def open_listener(spec: str) -> ServeListener:
    """Parse ``--serve``, bind and listen: every refusal is a UserError before anything runs."""
    host, port, given = parse_serve(spec)
    return ServeListener(host, port, given, bind_listener(host, port, spec), secrets.token_urlsafe(32))


def bind_listener(host: str, port: int, spec: str) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError):
        raise UserError(f"--serve {spec}: no such host '{host}'",
                        "pass an address of this machine: --serve 127.0.0.1:8000, or 0.0.0.0:8000 for all") from None
    family, kind, proto, _, address = min(infos, key=lambda info: info[0] != socket.AF_INET)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as aiohttp does: a TIME_WAIT is no conflict)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"--serve {spec}: port {port} is already in use on {host}",
                            "pick another port, or stop what listens there") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--serve {spec}: {host} is not an address of this machine",
                            "pass one of its addresses, 127.0.0.1, or 0.0.0.0 for all") from None
        if exc.errno == errno.EACCES:
            raise UserError(f"--serve {spec}: port {port} needs privileges here", "pick a port above 1023") from None
        raise UserError(f"--serve {spec}: cannot listen there ({exc.strerror})",
                        "pass another address or port") from None
    return sock


def local_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses, as far as the standard library can tell."""
    found: list[str] = []
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # (a UDP connect sends nothing: it picks the outgoing address)
            found.append(probe.getsockname()[0])
        except OSError:
            pass
    return [a for a in dict.fromkeys(found) if not ipaddress.ip_address(a).is_loopback]


def warn_if_exposed(listener: ServeListener) -> None:
    if listener.given and not (listener.host == "localhost" or _is_loopback(listener.bound_address)):
        print(f"warning: serving on {listener.host}: anyone who can reach it and has the URL can watch and steer "
              "the run", file=sys.stderr, flush=True)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def announce(listener: ServeListener, shown: str, after: str = "") -> None:
    """The URLs on stdout: the token in them is the key to the run (keep them to yourself)."""
    urls = listener.urls()
    print(f"serving the viewer of {shown} at {urls[0]}{after}", flush=True)
    for url in urls[1:]:
        print(f"  also at {url}", flush=True)


def viewer_argv(run_dirs: list[str | Path]) -> list[str]:
    return [sys.executable, "-m", "tui_trainer", "view", *(str(run_dir) for run_dir in run_dirs)]


def serve_viewer(run_dirs: list[str | Path], spec: str) -> int:
    """``view --serve``: serve ``tui-trainer view RUN_DIR...`` until Ctrl+C (blocks)."""
    from tui_trainer.cli.serve_guard import GuardedServer

    listener = open_listener(spec)
    warn_if_exposed(listener)
    shown = " ".join(shlex.quote(str(run_dir)) for run_dir in run_dirs)
    announce(listener, shown, after=" (Ctrl+C to stop)")
    GuardedServer(viewer_argv(run_dirs), listener.sock, listener.gate(), title=f"tui-trainer view {shown}").serve()
    return 0


def start_served_viewer(run_dir: str | Path, listener: ServeListener) -> subprocess.Popen:
    """``train --serve``: the server as a child process (the trainer stays the only trainer), in a
    process group of its own with its viewers, so that stop_served_viewer ends them all."""
    warn_if_exposed(listener)
    fd = listener.sock.fileno()
    process = subprocess.Popen(
        [sys.executable, "-m", "tui_trainer.cli.serve_child", "--fd", str(fd), "--parent", str(os.getpid()),
         "--host", listener.host, str(run_dir)],
        pass_fds=(fd,), env={**os.environ, TOKEN_ENV: listener.token}, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # (its viewers' stray output is no log line of ours)
    announce(listener, shlex.quote(str(run_dir)))
    listener.close()  # the child holds it now
    return process


def stop_served_viewer(process: subprocess.Popen | None, grace: float = 8.0) -> None:
    """SIGTERM the server (it ends its viewers), then SIGKILL whatever is left of its process group.
    The group is killed before the server is reaped, so its id cannot have been reused."""
    if process is None or process.returncode is not None:
        return
    try:
        process.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not _exited_unreaped(process.pid):
        time.sleep(0.05)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # a viewer that outlived the server, or a stuck server
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _exited_unreaped(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux for SIGTERM when the parent dies (PR_SET_PDEATHSIG), and leave now if it already
    has: a served viewer or server never outlives what started it, even a killed one."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        raise SystemExit(0)
