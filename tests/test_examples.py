"""The examples run as a user would run them, each server with the echo client."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("server_script", ["echo_server.py", "threaded_server.py"])
def test_example_server_with_echo_client(server_script: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    server = subprocess.Popen([sys.executable, str(EXAMPLES / server_script), "--port", "0", "--ca-out", str(ca)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + server.stderr.read()
        port = line.rsplit(":", 1)[1].strip()
        client = subprocess.run([sys.executable, str(EXAMPLES / "echo_client.py"), "--port", port, "--ca", str(ca),
                                 "--streams", "4"], capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stdout + client.stderr
        assert client.stdout.count("hello from stream") == 4
        assert "datagram: hello datagram" in client.stdout and "all echoes match" in client.stdout
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
        assert server.returncode == 0, err
        assert "stopped" in out
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
