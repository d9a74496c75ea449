"""Fixtures: a real msquic registration, a listener on loopback, and aioquic as the peer."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any, Iterator

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent

import pymsquic

ALPN = "pymsquic-test"


@pytest.fixture(scope="session")
def server_credential() -> pymsquic.Credential:
    return pymsquic.Credential.self_signed(("localhost", "127.0.0.1", "::1"))


def write_cert_files(folder: Path, credential: pymsquic.Credential) -> tuple[Path, Path]:
    """The certificate and key of a PKCS#12 credential as PEM files (what aioquic loads)."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12

    assert credential.pkcs12 is not None
    key, cert, _ = pkcs12.load_key_and_certificates(credential.pkcs12, None)
    assert key is not None and cert is not None
    (folder / "cert.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def cert_files(tmp_path: Path, server_credential: pymsquic.Credential) -> tuple[Path, Path]:
    """The server credential as PEM certificate and key files, for aioquic servers."""
    return write_cert_files(tmp_path, server_credential)


@pytest.fixture
def registration() -> Iterator[pymsquic.Registration]:
    # One per test: closing it proves the test left nothing msquic still holds
    # (RegistrationClose would hang, and pytest-timeout would fail the test).
    with pymsquic.Registration("pymsquic-tests") as reg:
        yield reg


@pytest.fixture
def server_config(registration: pymsquic.Registration,
                  server_credential: pymsquic.Credential) -> pymsquic.Configuration:
    return pymsquic.Configuration(registration, ALPN, server_credential,
                                  pymsquic.Settings(idle_timeout_ms=10_000, peer_bidi_stream_count=4))


@pytest.fixture
def client_config(registration: pymsquic.Registration) -> pymsquic.Configuration:
    return pymsquic.Configuration(registration, ALPN, pymsquic.Credential.client(verify=False))


@pytest.fixture
def listener(registration: pymsquic.Registration,
             server_config: pymsquic.Configuration) -> Iterator[pymsquic.sync.Listener]:
    """A started blocking listener on 127.0.0.1."""
    with pymsquic.sync.Listener(registration, server_config) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        yield lst


@pytest.fixture
def async_listener(registration: pymsquic.Registration,
                   server_config: pymsquic.Configuration) -> Iterator[pymsquic.asyncio.Listener]:
    """A started asyncio listener on 127.0.0.1 (use it inside the test's asyncio.run)."""
    lst = pymsquic.asyncio.Listener(registration, server_config)
    try:
        lst.start(ALPN, ("127.0.0.1", 0))
        yield lst
    finally:
        asyncio.run(lst.close())


class RecordingProtocol(QuicConnectionProtocol):
    """aioquic client protocol that remembers how the handshake ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.terminated: ConnectionTerminated | None = None
        self.handshake: HandshakeCompleted | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
        elif isinstance(event, HandshakeCompleted):
            self.handshake = event


def aioquic_config(alpn: str = ALPN, server_name: str = "localhost") -> QuicConfiguration:
    return QuicConfiguration(is_client=True, alpn_protocols=[alpn], verify_mode=ssl.CERT_NONE,
                             server_name=server_name, idle_timeout=5.0)


async def aioquic_handshake(port: int, alpn: str = ALPN, *, hold: float = 0.0,
                            host: str = "127.0.0.1") -> RecordingProtocol:
    """Connect an aioquic client; return its protocol once connected (and after
    ``hold`` seconds), or once the server terminated the handshake."""
    protocols: list[RecordingProtocol] = []

    def create(*args: Any, **kwargs: Any) -> RecordingProtocol:
        protocols.append(RecordingProtocol(*args, **kwargs))
        return protocols[-1]

    try:
        async with connect(host, port, configuration=aioquic_config(alpn), create_protocol=create) as client:
            await asyncio.sleep(hold)
            if protocols[0].terminated is None:
                await asyncio.wait_for(client.ping(), 5)
    except ConnectionError:
        pass  # terminated during the handshake: protocols[0].terminated says how
    return protocols[0]
