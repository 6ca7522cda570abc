"""``--serve [HOST:]PORT``: the viewer in a browser, through textual-serve.

textual-serve starts one app process per browser connection, so what it serves is always
``tui-trainer view RUN_DIR`` — a viewer attached to the one training process through its
control socket, never a second trainer. Two tabs are two viewers. ``train --serve`` runs the
server as a child process for as long as the run runs.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from tui_trainer.errors import UserError

DEFAULT_HOST = "127.0.0.1"


def parse_serve(spec: str) -> tuple[str, int, bool]:
    """``PORT`` or ``HOST:PORT`` → (host, port, host_given); checked before anything starts."""
    try:
        import textual_serve  # noqa: F401
    except ImportError:
        raise UserError("--serve needs the textual-serve package, which is not installed",
                        "install it with: pip install 'tui-trainer[serve]'") from None
    host, _, port_text = spec.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise UserError(f"--serve {spec}: not a port", "pass --serve 8000 or --serve 0.0.0.0:8000")
    return (host or DEFAULT_HOST), port, bool(host)


def warn_if_exposed(host: str, host_given: bool) -> None:
    if host_given and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach it can watch and steer the run",
              file=sys.stderr, flush=True)


def serve_viewer(run_dirs: list[str | Path], spec: str) -> int:
    """Serve ``tui-trainer view RUN_DIR...`` until Ctrl+C (blocks)."""
    from textual_serve.server import Server

    host, port, given = parse_serve(spec)
    warn_if_exposed(host, given)
    shown = " ".join(shlex.quote(str(run_dir)) for run_dir in run_dirs)
    command = f"{shlex.quote(sys.executable)} -m tui_trainer view {shown}"
    print(f"serving the viewer of {shown} on http://{host}:{port} (Ctrl+C to stop)", flush=True)
    Server(command, host=host, port=port, title=f"tui-trainer view {shown}").serve()
    return 0


def start_served_viewer(run_dir: str | Path, spec: str) -> subprocess.Popen:
    """``train --serve``: the server as a child process (the trainer stays the only trainer)."""
    parse_serve(spec)  # bad input before anything starts
    return subprocess.Popen([sys.executable, "-m", "tui_trainer", "view", str(run_dir), "--serve", spec],
                            stdin=subprocess.DEVNULL)


def stop_served_viewer(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
