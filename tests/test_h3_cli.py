"""``python -m pymsquic.h3 module:app`` serving examples/h3/hello_app.py, fetched
by examples/h3/fetch.py, stopped by SIGINT/SIGTERM: processes as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_examples import _read_line

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "examples" / "h3"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def fetch(*args: str) -> str:
    result = subprocess.run([sys.executable, str(FOLDER / "fetch.py"), *args], check=False, capture_output=True,
                            text=True, timeout=60, env=ENV)
    assert result.returncode == 0 and result.stderr == "", result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_the_example_app(stop_signal: signal.Signals, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    server = subprocess.Popen([sys.executable, "-m", "pymsquic.h3", "hello_app:app", "--port", "0", "--ca-out",
                               str(ca)], cwd=FOLDER,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = _read_line(server, 30)
        match = re.match(r"serving hello_app:app over HTTP/3 on https://127\.0\.0\.1:(\d+)/ \(certificate SHA-256 "
                         r"[0-9A-F:]{95}\)\n", line)
        assert match, line
        url = f"https://127.0.0.1:{match.group(1)}"
        assert fetch(f"{url}/", "--ca", str(ca), "--server-name", "localhost").endswith("hello over HTTP/3\n")
        out = fetch(f"{url}/echo", "--insecure", "--data", "echo me")
        assert out.startswith("200 ") and out.endswith("echo me")
        server.send_signal(stop_signal)
        out, err = server.communicate(timeout=30)
        assert server.returncode == 0, err
        assert '"GET / HTTP/3" 200' in err and '"POST /echo HTTP/3" 200' in err  # the access log
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def test_cli_refuses_an_app_it_cannot_load() -> None:
    result = subprocess.run([sys.executable, "-m", "pymsquic.h3", "no_such_module:app"], cwd=FOLDER, check=False,
                            capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == 2 and "cannot load no_such_module:app" in result.stderr


def test_cli_exits_cleanly_when_the_lifespan_startup_fails(tmp_path: Path) -> None:
    (tmp_path / "failing_app.py").write_text(
        "async def app(scope, receive, send):\n"
        "    await receive()\n"
        "    await send({'type': 'lifespan.startup.failed', 'message': 'no database'})\n"
        "    await receive()\n")
    result = subprocess.run([sys.executable, "-m", "pymsquic.h3", "failing_app:app", "--port", "0"], cwd=tmp_path,
                            check=False, capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == 3, result.stderr
    assert "startup failed: no database" in result.stderr and "Traceback" not in result.stderr
