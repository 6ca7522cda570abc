"""--serve: the viewer answered over HTTP on 127.0.0.1 (textual-serve)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import free_port
from test_view import recorded_run_dir

from tui_trainer.cli.serve import parse_serve
from tui_trainer.errors import UserError

pytest.importorskip("textual_serve")


def test_view_serve_answers_http_on_localhost(tmp_path):
    run_dir = recorded_run_dir(tmp_path, epochs=1)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tui_trainer", "view", str(run_dir), "--serve", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    body = response.read().decode()
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.3)
        assert "<html" in body.lower() and "tui-trainer view" in body
    finally:
        server.terminate()
        server.wait(10)


def test_serve_binds_to_localhost_unless_a_host_is_given():
    assert parse_serve("8000") == ("127.0.0.1", 8000, False)
    assert parse_serve("0.0.0.0:8123") == ("0.0.0.0", 8123, True)
    with pytest.raises(UserError):
        parse_serve("host:notaport")
