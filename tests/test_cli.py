"""The command line: ``pymsquic serve`` and ``pymsquic connect`` as subprocesses, against
each other and against aioquic; --help, --version and ``demo -v``."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol
from aioquic.asyncio import connect as aioquic_connect
from aioquic.asyncio import serve as aioquic_serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import DatagramFrameReceived, QuicEvent, StreamDataReceived

import pymsquic
from pymsquic.cli import pem_fingerprint

ALPN = "cli-test"
TIMEOUT = 60  # every subprocess wait is bounded by this (seconds); a hang fails, never blocks
# The worktree's package, whatever the subprocess's working directory.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(pymsquic.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
FINGERPRINT = re.compile(r"fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})")


def pymsquic_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pymsquic", *args]


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(pymsquic_cmd(*args), input=stdin, capture_output=True, timeout=TIMEOUT, env=ENV)


class ServeProcess:
    """A ``pymsquic serve`` subprocess whose stdout lines are read by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(pymsquic_cmd("serve", "--host", "127.0.0.1", "--port", "0", *args),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        listening = self.wait_for("listening on ")
        self.port = int(listening.rsplit(" (ALPN", 1)[0].rsplit(":", 1)[1])
        match = FINGERPRINT.search(self.wait_for("certificate SHA-256 fingerprint"))
        assert match is not None
        self.fingerprint = match.group(1)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str) -> str:
        """The next line containing ``text`` (the lines before it are kept in ``seen``)."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no line with {text!r} from serve; saw {self.seen}")
            if line is None:
                pytest.fail(f"serve exited before printing {text!r}; saw {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """SIGTERM as a service manager sends, or SIGINT as Ctrl-C does: it must stop cleanly."""
        self.proc.send_signal(signum)
        assert self.proc.wait(timeout=TIMEOUT) == 0, self.seen
        self.wait_for("stopped")


@contextmanager
def serving(*args: str) -> Iterator[ServeProcess]:
    server = ServeProcess("--alpn", ALPN, *args)
    try:
        yield server
        server.stop()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=TIMEOUT)


def connect_to(server: ServeProcess, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return run("connect", "127.0.0.1", str(server.port), "--alpn", ALPN, *args, stdin=stdin)


def stderr_fingerprint(result: subprocess.CompletedProcess[bytes]) -> str:
    match = FINGERPRINT.search(result.stderr.decode())
    assert match is not None, result.stderr
    return match.group(1)


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for localhost/127.0.0.1 and its key, as PEM files."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12

    credential = pymsquic.Credential.self_signed(("localhost", "127.0.0.1"))
    assert credential.pkcs12 is not None
    key, cert, _ = pkcs12.load_key_and_certificates(credential.pkcs12, None)
    assert key is not None and cert is not None
    folder = tmp_path_factory.mktemp("cli-cert")
    (folder / "cert.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


# ---- help, version, demo --------------------------------------------------------------

def test_help_names_the_entry_point_and_has_no_rest_markup() -> None:
    # The console script runs main() with argv[0] = .../bin/pymsquic.
    script = "import sys; sys.argv[0] = '/venv/bin/pymsquic'; from pymsquic.__main__ import main; sys.exit(main())"
    result = subprocess.run([sys.executable, "-c", script, "--help"], capture_output=True, text=True,
                            timeout=TIMEOUT, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: pymsquic "), result.stdout
    assert "``" not in result.stdout and ":func:" not in result.stdout
    for command in ("demo", "serve", "connect", "version"):
        assert command in result.stdout
    module = run("--help")
    assert module.stdout.decode().startswith("usage: python -m pymsquic "), module.stdout


def test_version() -> None:
    expected = f"pymsquic {pymsquic.__version__}, msquic {pymsquic.msquic_version()}"
    for args in (["--version"], ["version"]):
        result = run(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().strip() == expected


def test_subcommands_have_descriptions() -> None:
    for command, words in (("demo", "self-signed certificate"), ("serve", "fingerprint"),
                           ("connect", "stdin")):
        result = run(command, "--help")
        assert result.returncode == 0, result.stderr
        assert words in result.stdout.decode().replace("\n", " ")


@pytest.mark.parametrize("where", ["after", "before"])
def test_demo_verbose(where: str) -> None:
    args = ["demo", "--clients", "1", "--streams", "1", "--megabytes", "1"]
    args = [*args, "-v"] if where == "after" else ["-v", *args]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert "server closed cleanly" in result.stdout.decode()
    assert "DEBUG:pymsquic" in result.stderr.decode()  # the verbose flag reached logging


def test_serve_stops_on_ctrl_c() -> None:
    server = ServeProcess("--alpn", ALPN)
    try:
        server.stop(signal.SIGINT)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=TIMEOUT)


@pytest.mark.parametrize("args, message", [
    (["connect", "nonexistent.invalid", "4433", "--alpn", ALPN], "cannot resolve host"),
    (["serve", "--alpn", ALPN, "--cert", "/nonexistent.pem", "--key", "/nonexistent.pem"], "does not exist"),
    (["serve", "--alpn", ALPN, "--cert", "/nonexistent.pem"], "--cert and --key go together"),
])
def test_bad_input_is_a_message_not_a_traceback(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode in (1, 2)  # 2: argparse's usage error
    err = result.stderr.decode()
    assert message in err and "Traceback" not in err, err


# ---- pymsquic connect against pymsquic serve ---------------------------------------------

def test_echo_stream_and_fingerprint() -> None:
    payload = os.urandom(300_000) + b"\n\x00 end"
    with serving() as server:
        result = connect_to(server, "--insecure", stdin=payload)
        assert result.returncode == 0, result.stderr
        assert result.stdout == payload
        err = result.stderr.decode()
        assert re.search(r"connected to 127\.0\.0\.1:\d+: handshake [0-9.]+ ms, ALPN " + ALPN, err), err
        assert stderr_fingerprint(result) == server.fingerprint
        assert "closed: closed locally with application error 0" in err
        line = server.wait_for("connection from 127.0.0.1:")
        assert re.search(r"handshake [0-9.]+ ms", line), line
        assert "closed: closed by peer with application error 0" in server.wait_for(" closed: ")


def test_verified_with_ca_and_given_certificate(cert_files: tuple[Path, Path]) -> None:
    cert, key = cert_files
    with serving("--cert", str(cert), "--key", str(key), "--echo") as server:
        assert server.fingerprint == pem_fingerprint(cert.read_bytes())
        result = connect_to(server, "--ca", str(cert), "--server-name", "localhost", stdin=b"verified")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"verified"
        assert stderr_fingerprint(result) == server.fingerprint


def test_unverifiable_server_is_refused() -> None:
    with serving() as server:  # self-signed, and the client neither --insecure nor --ca
        result = connect_to(server, stdin=b"never sent")
        assert result.returncode == 1
        assert result.stdout == b""
        assert "failed" in result.stderr.decode()


def test_datagrams() -> None:
    lines = [b"one", b"two two", b"three three three"]
    with serving() as server:
        result = connect_to(server, "--insecure", "--datagram", stdin=b"\n".join(lines) + b"\n")
        assert result.returncode == 0, result.stderr
        assert sorted(result.stdout.splitlines()) == sorted(lines)  # datagrams need not keep order


def test_file_server(tmp_path: Path) -> None:
    served = tmp_path / "served"
    (served / "sub").mkdir(parents=True)
    content = os.urandom(200_000)
    (served / "sub" / "data.bin").write_bytes(content)
    (tmp_path / "secret.txt").write_bytes(b"not for you")
    with serving("--directory", str(served)) as server:
        result = connect_to(server, "--insecure", stdin=b"sub/data.bin\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout == content
        server.wait_for("sending ")
        # Outside the directory, or missing: the stream is reset, the client says so and fails.
        for name in (b"../secret.txt", b"missing.txt"):
            refused = connect_to(server, "--insecure", stdin=name + b"\n")
            assert refused.returncode == 1
            assert refused.stdout == b""
            assert "error" in refused.stderr.decode()
            assert "refused" in server.wait_for("request ")


# ---- against aioquic ----------------------------------------------------------------------

class AioquicEcho(QuicConnectionProtocol):
    """aioquic echo: stream data back on the same stream (FIN after FIN), datagrams as they came."""

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, event.data, end_stream=event.end_stream)
        elif isinstance(event, DatagramFrameReceived):
            self._quic.send_datagram_frame(event.data)
        self.transmit()


@pytest.mark.parametrize("mode", ["stream", "datagram"])
def test_connect_against_aioquic_server(cert_files: tuple[Path, Path], mode: str) -> None:
    cert, key = cert_files

    async def main() -> subprocess.CompletedProcess[bytes]:
        config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], max_datagram_frame_size=65536)
        config.load_cert_chain(str(cert), str(key))
        server = await aioquic_serve("127.0.0.1", 0, configuration=config, create_protocol=AioquicEcho)
        assert server._transport is not None
        port = server._transport.get_extra_info("sockname")[1]
        args = ["connect", "127.0.0.1", str(port), "--alpn", ALPN, "--ca", str(cert), "--server-name", "localhost"]
        stdin = b"hello aioquic\n" * 1000 if mode == "stream" else b"dgram one\ndgram two\n"
        if mode == "datagram":
            args.append("--datagram")
        try:
            proc = await asyncio.create_subprocess_exec(*pymsquic_cmd(*args), stdin=subprocess.PIPE,
                                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
            out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
            assert proc.returncode is not None
            return subprocess.CompletedProcess(args, proc.returncode, out, err)
        finally:
            server.close()

    result = asyncio.run(main())
    assert result.returncode == 0, result.stderr
    if mode == "stream":
        assert result.stdout == b"hello aioquic\n" * 1000
    else:
        assert sorted(result.stdout.splitlines()) == [b"dgram one", b"dgram two"]
    assert stderr_fingerprint(result) == pem_fingerprint(cert.read_bytes())


class AioquicClient(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data = bytearray()
        self.ended = asyncio.Event()
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.data.extend(event.data)
            if event.end_stream:
                self.ended.set()
        elif isinstance(event, DatagramFrameReceived):
            self.datagrams.put_nowait(event.data)


def test_aioquic_client_against_serve() -> None:
    payload = os.urandom(100_000)

    async def exchange(port: int) -> None:
        config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                                   max_datagram_frame_size=65536, server_name="localhost")
        async with aioquic_connect("127.0.0.1", port, configuration=config,
                                   create_protocol=AioquicClient) as client:
            assert isinstance(client, AioquicClient)
            stream_id = client._quic.get_next_available_stream_id()
            client._quic.send_stream_data(stream_id, payload, end_stream=True)
            client._quic.send_datagram_frame(b"aioquic datagram")
            client.transmit()
            await asyncio.wait_for(client.ended.wait(), TIMEOUT)
            assert bytes(client.data) == payload
            assert await asyncio.wait_for(client.datagrams.get(), TIMEOUT) == b"aioquic datagram"

    with serving() as server:
        asyncio.run(exchange(server.port))
        server.wait_for("connection from 127.0.0.1:")
        assert "closed by peer" in server.wait_for(" closed: ")
