"""Each failure a caller handles differently has its own ConnectionClosed subclass.

Every case is provoked for real over loopback, against a pymsquic listener, an aioquic
server or a UDP socket that never answers; the tests match classes and attributes,
never message text.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import aioquic.tls
import pytest
from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicProtocolVersion
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12
from cryptography.x509.oid import NameOID

import pymsquic
from pymsquic._msquic import lib
from pymsquic.errors import transport_closed

from conftest import ALPN

NO_VERIFY = pymsquic.Credential.client(verify=False)
# A QUIC version no implementation uses (RFC 9000 reserves 0x?a?a?a?a for exercising negotiation).
UNKNOWN_VERSION = 0x1A2A3A4A


def connect(port: int, registration: pymsquic.Registration, **kwargs: Any) -> pymsquic.sync.Connection:
    options: dict[str, Any] = {"alpn": ALPN, "credential": NO_VERIFY, "open_timeout": 10}
    return pymsquic.sync.connect("127.0.0.1", port, registration=registration, **(options | kwargs))


# ---- names ----------------------------------------------------------------------------


def test_status_name_spells_tls_alerts() -> None:
    alert = lib.QUIC_STATUS_CLOSE_NOTIFY  # QUIC_STATUS_TLS_ALERT(0)
    assert pymsquic.status_name(alert + 48) == "unknown_ca (48)"
    assert pymsquic.status_name(lib.QUIC_STATUS_BAD_CERTIFICATE) == "bad_certificate (42)"
    assert pymsquic.status_name(alert + 120) == "no_application_protocol (120)"
    assert pymsquic.status_name(alert + 255) == "TLS_ALERT(255)"  # unassigned
    assert pymsquic.status_name(lib.QUIC_STATUS_CONNECTION_REFUSED) == "CONNECTION_REFUSED"
    assert pymsquic.status_name(lib.QUIC_STATUS_CERT_UNTRUSTED_ROOT) == "CERT_UNTRUSTED_ROOT"


@pytest.mark.parametrize(("status", "error_code", "cls", "alert"), [
    # a certificate msquic rejected locally: the status names the check, the wire code the alert
    (lib.QUIC_STATUS_CERT_UNTRUSTED_ROOT, 0x130, pymsquic.HandshakeError, 48),
    # alerts the peer sent that msquic turns into a status of their own (QuicErrorCodeToStatus)
    (lib.QUIC_STATUS_HANDSHAKE_FAILURE, 0x128, pymsquic.HandshakeError, 40),
    (lib.QUIC_STATUS_USER_CANCELED, 0x15A, pymsquic.HandshakeError, 90),
    (lib.QUIC_STATUS_CLOSE_NOTIFY + 120, 0x178, pymsquic.AlpnMismatch, 120),
    # APPLICATION_ERROR during the handshake also maps to USER_CANCELED: no alert, no handshake error
    (lib.QUIC_STATUS_USER_CANCELED, 0xC, pymsquic.ConnectionClosed, None),
    (lib.QUIC_STATUS_PROTOCOL_ERROR, 0xA, pymsquic.ConnectionClosed, None),
])
def test_transport_close_classes_for_codes_hard_to_provoke(status: int, error_code: int, cls: type,
                                                          alert: int | None) -> None:
    exc = transport_closed(status, error_code)
    assert type(exc) is cls and exc.by_transport and exc.error_code == error_code
    assert getattr(exc, "alert", None) == alert


# ---- refused, silent, unreachable ---------------------------------------------------------


def test_refused(registration, server_config) -> None:
    with pymsquic.sync.Listener(registration, server_config, on_new_connection=lambda info: False) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        with pytest.raises(pymsquic.ConnectionRefused) as info:
            connect(lst.local_address[1], registration)
    assert info.value.by_transport and info.value.status_name == "CONNECTION_REFUSED"
    assert isinstance(info.value, pymsquic.ConnectionClosed) and isinstance(info.value, pymsquic.QuicError)
    assert not isinstance(info.value, OSError)


def test_refused_when_the_backlog_is_full(registration, server_config) -> None:
    with pymsquic.sync.Listener(registration, server_config, backlog=1) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        with connect(lst.local_address[1], registration):
            deadline = time.monotonic() + 10
            while lst.stats().queued < 1 and time.monotonic() < deadline:  # the server's side completes last
                time.sleep(0.01)
            with pytest.raises(pymsquic.ConnectionRefused):
                connect(lst.local_address[1], registration)
            lst.accept(timeout=10)._abandon()
    assert lst.stats().refused_backlog == 1


def test_idle_timeout_after_the_handshake(registration, listener) -> None:
    with connect(listener.local_address[1], registration, settings=pymsquic.Settings(idle_timeout_ms=300)) as conn:
        server = listener.accept(timeout=10)
        try:
            with pytest.raises(pymsquic.IdleTimeout) as info:
                conn.accept_stream(timeout=30)  # nobody sends: the idle timer ends the wait
        finally:
            server._abandon()
    assert info.value.by_transport and info.value.status_name == "CONNECTION_IDLE"
    assert isinstance(conn.close_reason, pymsquic.IdleTimeout)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port that receives and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_no_answer_to_the_handshake_is_an_idle_timeout(registration, silent_port) -> None:
    with pytest.raises(pymsquic.IdleTimeout) as info:
        connect(silent_port, registration, settings=pymsquic.Settings(handshake_idle_timeout_ms=300), open_timeout=30)
    assert info.value.status_name == "CONNECTION_IDLE"


def test_unreachable(registration) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing bound there now: the kernel answers with ICMP port unreachable
    with pytest.raises(pymsquic.Unreachable) as info:
        connect(port, registration, open_timeout=30)
    assert info.value.status_name == "UNREACHABLE"


# ---- TLS ------------------------------------------------------------------------------------


def test_unknown_ca(registration, listener) -> None:
    with pytest.raises(pymsquic.HandshakeError) as info:
        connect(listener.local_address[1], registration, credential=pymsquic.Credential.client(),
                server_name="localhost")
    exc = info.value
    assert not isinstance(exc, pymsquic.AlpnMismatch)
    assert (exc.alert, exc.alert_name) == (48, "unknown_ca")
    assert exc.status_name == "unknown_ca (48)"


def write_certificate(directory: Path, *, expired: bool) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (its own CA), expired a day ago or valid."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("expired", [True, False])
def test_certificate_expired(registration, tmp_path, expired: bool) -> None:
    cert, key = write_certificate(tmp_path, expired=expired)
    config = pymsquic.Configuration(registration, ALPN, pymsquic.Credential.from_files(cert, key))
    with pymsquic.sync.Listener(registration, config) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        trusting = pymsquic.Credential.client(ca_file=cert)
        if not expired:  # the same certificate, valid: the failure below is the expiry alone
            with connect(lst.local_address[1], registration, credential=trusting, server_name="localhost"):
                lst.accept(timeout=10)._abandon()
            return
        with pytest.raises(pymsquic.HandshakeError) as info:
            connect(lst.local_address[1], registration, credential=trusting, server_name="localhost")
    assert (info.value.alert, info.value.alert_name) == (45, "certificate_expired")


def test_client_certificate_required(registration, server_credential) -> None:
    """In TLS 1.3 the server checks the client's certificate after the client's handshake
    is done: the alert may end connect() or, a moment later, the connection it returned."""
    config = pymsquic.Configuration(registration, ALPN, server_credential.requiring_client_auth())
    with pymsquic.sync.Listener(registration, config) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        with pytest.raises(pymsquic.HandshakeError) as info:
            with connect(lst.local_address[1], registration) as conn:
                conn.accept_stream(timeout=30)
    assert (info.value.alert, info.value.alert_name) == (116, "certificate_required")


def test_alpn_mismatch(registration, listener) -> None:
    with pytest.raises(pymsquic.AlpnMismatch) as info:
        connect(listener.local_address[1], registration, alpn="not-served")
    exc = info.value
    assert isinstance(exc, pymsquic.HandshakeError)  # ALPN is negotiated by TLS
    assert exc.status_name == "ALPN_NEG_FAILURE"
    assert (exc.alert, exc.alert_name) == (120, "no_application_protocol")  # what went on the wire


# ---- against aioquic servers ---------------------------------------------------------------


@pytest.fixture
def cert_files(tmp_path, server_credential) -> tuple[str, str]:
    key, cert, _ = pkcs12.load_key_and_certificates(server_credential.pkcs12, None)
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")


class MutableProtocol(QuicConnectionProtocol):
    """An aioquic server connection that can go silent: drops every datagram once muted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.muted = False
        MUTABLE.append(self)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if not self.muted:
            super().datagram_received(data, addr)


MUTABLE: list[MutableProtocol] = []


async def aioquic_server(cert_files: tuple[str, str], **options: Any) -> tuple[Any, int]:
    config = QuicConfiguration(is_client=False, alpn_protocols=options.pop("alpn", [ALPN]), **options)
    config.load_cert_chain(*cert_files)
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=MutableProtocol)
    return server, server._transport.get_extra_info("sockname")[1]


def run_against_aioquic(cert_files: tuple[str, str], client: Any, **options: Any) -> Any:
    """Run ``await client(port)`` against an aioquic server built from ``options``."""
    async def main() -> Any:
        server, port = await aioquic_server(cert_files, **options)
        try:
            return await client(port)
        finally:
            server.close()

    MUTABLE.clear()
    return asyncio.run(main())


async def open_connection(port: int, **kwargs: Any) -> pymsquic.asyncio.Connection:
    return await pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=NO_VERIFY, **kwargs)


def test_alpn_mismatch_against_aioquic(cert_files) -> None:
    if hasattr(aioquic.tls, "AlertNoApplicationProtocol"):
        with pytest.raises(pymsquic.AlpnMismatch) as info:
            run_against_aioquic(cert_files, open_connection, alpn=["something-else"])
        assert info.value.alert == 120  # aioquic's CRYPTO_ERROR(no_application_protocol)
    else:
        # aioquic up to 1.3 (the last for Python 3.10) reports it as handshake_failure (40):
        # pymsquic classifies by what the peer said, without guessing it was ALPN.
        with pytest.raises(pymsquic.HandshakeError) as info:
            run_against_aioquic(cert_files, open_connection, alpn=["something-else"])
        assert not isinstance(info.value, pymsquic.AlpnMismatch)
        assert (info.value.alert, info.value.alert_name) == (40, "handshake_failure")


def test_version_negotiation(cert_files) -> None:
    with pytest.raises(pymsquic.VersionNegotiationError) as info:
        run_against_aioquic(cert_files, open_connection, supported_versions=[UNKNOWN_VERSION])
    assert info.value.status_name == "VER_NEG_ERROR"


def test_compatible_version_negotiation_connects(cert_files) -> None:
    """The contrast: a server speaking only QUIC v2, which msquic also speaks, is reached."""
    async def client(port: int) -> str | None:
        async with await open_connection(port) as conn:
            return conn.alpn

    assert run_against_aioquic(cert_files, client, supported_versions=[QuicProtocolVersion.VERSION_2]) == ALPN


def test_peer_silent_with_data_in_flight(cert_files) -> None:
    """Unacknowledged data for ``disconnect_timeout_ms``: CONNECTION_TIMEOUT, an IdleTimeout too."""
    async def client(port: int) -> pymsquic.ConnectionClosed | None:
        settings = pymsquic.Settings(idle_timeout_ms=60_000, disconnect_timeout_ms=300)
        async with await open_connection(port, settings=settings) as conn:
            MUTABLE[0].muted = True
            conn.open_stream().write(b"x" * 1000)
            with pytest.raises(pymsquic.IdleTimeout) as info:
                await asyncio.wait_for(conn.accept_stream(), 30)
            return info.value

    reason = run_against_aioquic(cert_files, client)
    assert reason.status_name == "CONNECTION_TIMEOUT"


# ---- DNS ------------------------------------------------------------------------------------


def test_dns_failure_is_gaierror_sync(registration) -> None:
    with pytest.raises(socket.gaierror):
        pymsquic.sync.connect("no-such-host.invalid", 4433, alpn="x", registration=registration)


def test_dns_failure_is_gaierror_asyncio(registration) -> None:
    async def main() -> None:
        await pymsquic.connect("no-such-host.invalid", 4433, alpn="x", registration=registration)

    with pytest.raises(socket.gaierror):
        asyncio.run(main())


def test_dns_failure_is_gaierror_listener(registration, server_config) -> None:
    with pymsquic.sync.Listener(registration, server_config) as lst, pytest.raises(socket.gaierror):
        lst.start(ALPN, ("no-such-host.invalid", 0))
