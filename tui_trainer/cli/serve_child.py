"""``train --serve``'s server process: ``python -m tui_trainer.cli.serve_child --fd N --parent PID
--host HOST RUN_DIR``, started by serve.start_served_viewer with the socket it bound and the token
in the environment. It dies with the trainer (PR_SET_PDEATHSIG) and ends its viewers as it goes."""

from __future__ import annotations

import argparse
import os
import shlex
import socket

from tui_trainer.cli.serve import TOKEN_ENV, die_with_parent, viewer_argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tui_trainer.cli.serve_child")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    token = os.environ.pop(TOKEN_ENV)  # (the viewers inherit this environment: they do not need it)
    from tui_trainer.cli.serve_guard import Gate, GuardedServer

    listener = socket.socket(fileno=args.fd)
    gate = Gate.for_bind(args.host, listener.getsockname()[1], token, also=listener.getsockname()[0])
    title = f"tui-trainer view {shlex.quote(args.run_dir)}"
    GuardedServer(viewer_argv([args.run_dir]), listener, gate, title=title).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
