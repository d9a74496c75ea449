"""Certificate checks in Python (verify= callables through msquic's deferred
validation) and certificates chosen by server name, against aioquic both ways
and in both worlds."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StreamDataReceived
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12

import pymsquic
from pymsquic._msquic import lib
from pymsquic.configuration import generate_self_signed

from conftest import ALPN
from worlds import WAIT, World, worlds

CRYPTO_ERROR = 0x100  # + TLS alert: the QUIC transport error code (RFC 9000 section 20.1)
BAD_CERTIFICATE = 42
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Cert:
    """A self-signed certificate: as a pymsquic credential, as PEM files, as DER."""

    credential: pymsquic.Credential
    certfile: Path
    keyfile: Path
    der: bytes


def make_cert(tmp_path: Path, *hostnames: str) -> Cert:
    pem, blob = generate_self_signed(hostnames, 1)
    key, cert, _ = pkcs12.load_key_and_certificates(blob, None)
    assert key is not None and cert is not None
    name = hostnames[0].replace("*", "star")
    certfile, keyfile = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    certfile.write_bytes(pem)
    keyfile.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))  # type: ignore[union-attr]
    return Cert(pymsquic.Credential.from_pkcs12(blob), certfile, keyfile, cert.public_bytes(Encoding.DER))


class Recorder:
    """A verify callable that records what it got and answers as told."""

    def __init__(self, answer: Any = True) -> None:
        self.answer = answer
        self.checks: list[pymsquic.CertificateCheck] = []

    def __call__(self, check: pymsquic.CertificateCheck) -> Any:
        self.checks.append(check)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


# ---- aioquic peers -----------------------------------------------------------------

class AioquicPeer(QuicConnectionProtocol):
    """aioquic, either role: echoes stream data with FIN, records how it ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.terminated: ConnectionTerminated | None = None
        self.handshake: HandshakeCompleted | None = None
        self.ended = asyncio.Event()
        self.echoed = asyncio.Event()
        self.buffers: dict[int, bytearray] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
            self.ended.set()
        elif isinstance(event, HandshakeCompleted):
            self.handshake = event
        elif isinstance(event, StreamDataReceived):
            buf = self.buffers.setdefault(event.stream_id, bytearray())
            buf.extend(event.data)
            if event.end_stream:
                if self._quic.configuration.is_client:
                    self.echoed.set()
                else:
                    self._quic.send_stream_data(event.stream_id, bytes(buf), end_stream=True)
                    self.transmit()

    @property
    def peer_certificate_der(self) -> bytes | None:
        """The certificate the peer presented, from aioquic's TLS context."""
        cert = self._quic.tls._peer_certificate
        return None if cert is None else cert.public_bytes(Encoding.DER)


async def aioquic_server(cert: Cert) -> tuple[Any, int, list[AioquicPeer]]:
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], idle_timeout=10.0)
    config.load_cert_chain(str(cert.certfile), str(cert.keyfile))
    peers: list[AioquicPeer] = []

    def create(*args: Any, **kwargs: Any) -> AioquicPeer:
        peers.append(AioquicPeer(*args, **kwargs))
        return peers[-1]

    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=create)
    return server, server._transport.get_extra_info("sockname")[1], peers


async def aioquic_client(port: int, server_name: str = "localhost", client_cert: Cert | None = None,
                         exchange: bool = True) -> AioquicPeer:
    """An aioquic client: handshake, then (``exchange``) a stream echoed by the
    pymsquic server, which runs only once the server accepted the connection."""
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                               server_name=server_name, idle_timeout=5.0)
    if client_cert is not None:
        config.load_cert_chain(str(client_cert.certfile), str(client_cert.keyfile))
    peers: list[AioquicPeer] = []

    def create(*args: Any, **kwargs: Any) -> AioquicPeer:
        peers.append(AioquicPeer(*args, **kwargs))
        return peers[-1]

    try:
        async with connect("127.0.0.1", port, configuration=config, create_protocol=create) as client:
            if exchange:
                stream_id = client._quic.get_next_available_stream_id()
                client._quic.send_stream_data(stream_id, b"ping", end_stream=True)
                client.transmit()
                done = asyncio.ensure_future(client.echoed.wait())
                ended = asyncio.ensure_future(client.ended.wait())
                await asyncio.wait([done, ended], timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
                done.cancel()
                ended.cancel()
    except ConnectionError:
        pass  # terminated during the handshake: .terminated says how
    return peers[0]


async def echo_handler(w: World, conn: Any) -> None:
    stream = await w.wait(conn.accept_stream)
    stream.write(await w.wait(stream.read), fin=True)
    await w.wait(conn.wait_sent)  # Connection.wait_sent: streams have none
    await w.wait(conn.wait_closed)


async def serve_with(w: World, registration: pymsquic.Registration, **kwargs: Any) -> Any:
    """``w.serve`` with any serve() keyword (credential mappings, default_credential)."""
    if w.name == "asyncio":
        from worlds import AsyncioServerHandle
        server = await pymsquic.asyncio.serve(lambda conn: echo_handler(w, conn), "127.0.0.1", 0, alpn=ALPN,
                                              registration=registration, **kwargs)
        return AsyncioServerHandle(w, server)
    from worlds import SyncServerHandle
    server = pymsquic.sync.serve(lambda conn: w.run(echo_handler(w, conn)), "127.0.0.1", 0, alpn=ALPN,
                                 registration=registration, **kwargs)
    return SyncServerHandle(w, server)


def run_world(w: World, client: Callable[[int], Any], port: int) -> Any:
    """Run a pymsquic client of world ``w`` from inside an asyncio test (the
    sync world's blocking client in a thread, as the aioquic peer needs the loop)."""
    if w.name == "asyncio":
        return client(port)
    return asyncio.get_running_loop().run_in_executor(None, lambda: w.run(client(port)))


async def pymsquic_connect(w: World, port: int, registration: pymsquic.Registration,
                           credential: pymsquic.Credential, server_name: str = "localhost") -> Any:
    """Connect (world ``w``), read the peer certificate, close; returns it."""
    kwargs = dict(alpn=ALPN, credential=credential, registration=registration, server_name=server_name,
                  open_timeout=WAIT)
    if w.name == "asyncio":
        conn = await pymsquic.asyncio.connect("127.0.0.1", port, **kwargs)
    else:
        conn = pymsquic.sync.connect("127.0.0.1", port, **kwargs)
    certificate = conn.peer_certificate
    await w.call(conn.close)
    return certificate


# ---- the client checks the server's certificate ---------------------------------------

@worlds
def test_client_verify_accepts_aioquic_server(w: World, tmp_path: Path,
                                              registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost", "127.0.0.1")
    recorder = Recorder(True)

    async def main() -> None:
        server, port, _ = await aioquic_server(server_cert)
        try:
            got = await run_world(w, lambda p: pymsquic_connect(
                w, p, registration, pymsquic.Credential.client(verify=recorder)), port)
        finally:
            server.close()
        assert got == server_cert.der

    asyncio.run(main())
    [check] = recorder.checks
    assert check.chain == [server_cert.der] and check.leaf == server_cert.der
    assert check.server_name == "localhost"
    # Self-signed, not in ca_file nor the system store: msquic's own check failed, the callable decided.
    assert check.chain_error == "CERT_UNTRUSTED_ROOT" and not check.chain_verified


def test_client_verify_sees_chain_verified_with_ca_file(tmp_path: Path, registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    recorder = Recorder(True)

    async def main() -> None:
        server, port, _ = await aioquic_server(server_cert)
        try:
            credential = pymsquic.Credential.client(verify=recorder, ca_file=server_cert.certfile)
            assert await pymsquic_connect(worlds_asyncio(), port, registration, credential) == server_cert.der
        finally:
            server.close()

    asyncio.run(main())
    assert recorder.checks[0].chain_error is None and recorder.checks[0].chain_verified


def worlds_asyncio() -> World:
    from worlds import WORLDS
    return WORLDS[0]


@worlds
@pytest.mark.parametrize("answer", [False, None, 0, ValueError("no such pin")], ids=repr)
def test_client_verify_rejects_aioquic_server(w: World, answer: Any, tmp_path: Path, caplog: Any,
                                              registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost", "127.0.0.1")
    recorder = Recorder(answer)

    async def main() -> AioquicPeer:
        server, port, peers = await aioquic_server(server_cert)
        try:
            with pytest.raises(pymsquic.HandshakeError) as raised:
                await run_world(w, lambda p: pymsquic_connect(
                    w, p, registration, pymsquic.Credential.client(verify=recorder)), port)
            assert "certificate was rejected" in str(raised.value)
            assert raised.value.alert == BAD_CERTIFICATE and raised.value.alert_name == "bad_certificate"
            await asyncio.wait_for(peers[0].ended.wait(), WAIT)
            return peers[0]
        finally:
            server.close()

    with caplog.at_level(logging.INFO, logger="pymsquic"):
        peer = asyncio.run(main())
    assert len(recorder.checks) == 1
    # aioquic, the independent side, got the alert as the QUIC CRYPTO_ERROR.
    assert peer.terminated is not None and peer.terminated.error_code == CRYPTO_ERROR + BAD_CERTIFICATE
    assert peer.handshake is None
    if isinstance(answer, BaseException):
        logged = [r for r in caplog.records if r.exc_info and r.exc_info[1] is answer]
        assert logged and logged[0].levelno == logging.ERROR
        assert getattr(logged[0], "connection_id", None) is not None  # through the connection's logger


def test_verify_must_be_bool_or_callable() -> None:
    with pytest.raises(TypeError):
        pymsquic.Credential.client(verify="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pymsquic.Credential.self_signed().requiring_client_auth(verify=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pymsquic.Credential.self_signed().requiring_client_auth(required=False)


# ---- the server checks client certificates ----------------------------------------

@worlds
@pytest.mark.parametrize("accept", [True, False])
def test_server_verify_client_certificate_from_aioquic(w: World, accept: bool, tmp_path: Path,
                                                       registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    client_cert = make_cert(tmp_path, "client.example")
    recorder = Recorder(accept)
    credential = server_cert.credential.requiring_client_auth(verify=recorder)

    async def main() -> AioquicPeer:
        async with await serve_with(w, registration, credential=credential) as server:
            return await aioquic_client(server.port, "localhost", client_cert)

    peer = asyncio.run(main())
    [check] = recorder.checks
    assert check.chain == [client_cert.der]
    assert check.server_name == "localhost"  # the name the client asked the server for
    assert check.chain_error is not None  # no CA given: msquic could not verify it, the callable decided
    if accept:
        assert peer.buffers and list(peer.buffers.values())[0] == b"ping"  # the handler ran
    else:
        assert not peer.buffers
        assert peer.terminated is not None and peer.terminated.error_code == CRYPTO_ERROR + BAD_CERTIFICATE


def test_server_verify_client_sees_chain_verified_with_ca_file(tmp_path: Path,
                                                               registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    client_cert = make_cert(tmp_path, "client.example")
    recorder = Recorder(True)
    credential = server_cert.credential.requiring_client_auth(ca_file=client_cert.certfile, verify=recorder)

    async def main() -> AioquicPeer:
        async with await serve_with(worlds_asyncio(), registration, credential=credential) as server:
            return await aioquic_client(server.port, "localhost", client_cert)

    peer = asyncio.run(main())
    assert list(peer.buffers.values()) == [b"ping"]
    [check] = recorder.checks
    assert check.chain_verified and check.chain == [client_cert.der]

@worlds
def test_server_verify_client_raising_rejects(w: World, tmp_path: Path, caplog: Any,
                                              registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    client_cert = make_cert(tmp_path, "client.example")
    error = RuntimeError("checker broke")
    credential = server_cert.credential.requiring_client_auth(verify=Recorder(error))

    async def main() -> AioquicPeer:
        async with await serve_with(w, registration, credential=credential) as server:
            return await aioquic_client(server.port, "localhost", client_cert)

    with caplog.at_level(logging.ERROR, logger="pymsquic"):
        peer = asyncio.run(main())
    assert peer.terminated is not None and peer.terminated.error_code == CRYPTO_ERROR + BAD_CERTIFICATE
    assert any(r.exc_info and r.exc_info[1] is error for r in caplog.records)


@pytest.mark.parametrize("required", [True, False])
def test_server_client_without_certificate(required: bool, tmp_path: Path,
                                           registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    recorder = Recorder(True)
    credential = server_cert.credential.requiring_client_auth(verify=recorder, required=required)
    w = worlds_asyncio()

    async def main() -> AioquicPeer:
        async with await serve_with(w, registration, credential=credential) as server:
            return await aioquic_client(server.port, "localhost", None)

    peer = asyncio.run(main())
    assert recorder.checks == []  # no certificate: decided without the callable
    if required:
        assert not peer.buffers
        assert peer.terminated is not None and peer.terminated.error_code == CRYPTO_ERROR + 116  # certificate_required
    else:
        assert list(peer.buffers.values()) == [b"ping"]


# ---- certificates by server name --------------------------------------------------------

@pytest.fixture
def named(tmp_path: Path) -> dict[str, Cert]:
    return {name: make_cert(tmp_path, name) for name in ("a.example", "b.example", "default.example",
                                                          "*.wild.example")}


@worlds
@pytest.mark.parametrize("with_default", [True, False], ids=["default", "refuse"])
def test_two_names_two_certificates(w: World, with_default: bool, named: dict[str, Cert],
                                    registration: pymsquic.Registration) -> None:
    mapping = {"a.example": named["a.example"].credential, "B.Example": named["b.example"].credential,
               "*.wild.example": named["*.wild.example"].credential}
    default = named["default.example"].credential if with_default else None
    client = pymsquic.Credential.client(verify=False)

    async def main() -> None:
        async with await serve_with(w, registration, credential=mapping, default_credential=default) as server:
            port = server.port
            cases = {"a.example": "a.example", "b.example": "b.example", "A.EXAMPLE": "a.example",
                     "x.wild.example": "*.wild.example"}
            for asked, expected in cases.items():
                # pymsquic client: Connection.peer_certificate
                got = await run_world(w, lambda p, name=asked: pymsquic_connect(w, p, registration, client,
                                                                                 name), port)
                assert got == named[expected].der, asked
                # aioquic client: the certificate in its TLS context
                peer = await aioquic_client(port, asked)
                assert peer.peer_certificate_der == named[expected].der, asked
                assert list(peer.buffers.values()) == [b"ping"]
            for unknown in ("c.example", "wild.example", "a.b.wild.example"):
                if with_default:
                    got = await run_world(w, lambda p, name=unknown: pymsquic_connect(
                        w, p, registration, client, name), port)
                    assert got == named["default.example"].der
                    peer = await aioquic_client(port, unknown)
                    assert peer.peer_certificate_der == named["default.example"].der
                else:
                    with pytest.raises(pymsquic.ConnectionRefused):
                        await run_world(w, lambda p, name=unknown: pymsquic_connect(
                            w, p, registration, client, name), port)
                    peer = await aioquic_client(port, unknown)
                    assert peer.handshake is None and peer.peer_certificate_der is None

    asyncio.run(main())


def test_server_name_check_per_name(named: dict[str, Cert], tmp_path: Path,
                                    registration: pymsquic.Registration) -> None:
    # Each name's credential brings its own client-certificate check.
    client_cert = make_cert(tmp_path, "client.example")
    rec_a, rec_b = Recorder(True), Recorder(False)
    mapping = {"a.example": named["a.example"].credential.requiring_client_auth(verify=rec_a),
               "b.example": named["b.example"].credential.requiring_client_auth(verify=rec_b)}
    w = worlds_asyncio()

    async def main() -> tuple[AioquicPeer, AioquicPeer]:
        async with await serve_with(w, registration, credential=mapping) as server:
            return (await aioquic_client(server.port, "a.example", client_cert),
                    await aioquic_client(server.port, "b.example", client_cert))

    peer_a, peer_b = asyncio.run(main())
    assert [c.server_name for c in rec_a.checks] == ["a.example"]
    assert [c.server_name for c in rec_b.checks] == ["b.example"]
    assert list(peer_a.buffers.values()) == [b"ping"]
    assert peer_b.terminated is not None and peer_b.terminated.error_code == CRYPTO_ERROR + BAD_CERTIFICATE


def test_listener_server_names_low_level(named: dict[str, Cert], registration: pymsquic.Registration) -> None:
    # Listener(server_names=...): the accepted connection carries the configuration it got.
    default = pymsquic.Configuration(registration, ALPN, named["default.example"].credential)
    config_b = pymsquic.Configuration(registration, ALPN, named["b.example"].credential)
    client = pymsquic.Credential.client(verify=False)
    with pymsquic.sync.Listener(registration, default, server_names={"b.example": config_b}) as listener:
        listener.start(ALPN, ("127.0.0.1", 0))
        port = listener.local_address[1]  # type: ignore[index]
        for asked, configuration in (("b.example", config_b), ("c.example", default)):
            with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client, registration=registration,
                                       server_name=asked, open_timeout=WAIT) as conn:
                accepted = listener.accept(timeout=WAIT)
                assert accepted.configuration is configuration and accepted.server_name == asked
                expected = "b.example" if configuration is config_b else "default.example"
                assert conn.peer_certificate == named[expected].der
                accepted.close()
        # Names are fixed once started (NEW_CONNECTION reads the table without a lock).
        assert lib.pmq_listener_add_server_name(listener._listener, b"d.example", config_b.handle, 9,
                                                0) == lib.QUIC_STATUS_INVALID_STATE

def test_server_names_bad_input(registration: pymsquic.Registration, named: dict[str, Cert]) -> None:
    cred = named["a.example"].credential
    with pytest.raises(ValueError):
        pymsquic.sync.serve(lambda c: None, "127.0.0.1", 0, alpn=ALPN, credential={}, registration=registration)
    with pytest.raises(TypeError):
        pymsquic.sync.serve(lambda c: None, "127.0.0.1", 0, alpn=ALPN, credential={"a": "x"},  # type: ignore[dict-item]
                            registration=registration)
    with pytest.raises(ValueError):
        pymsquic.sync.serve(lambda c: None, "127.0.0.1", 0, alpn=ALPN, credential={"a.*.example": cred},
                            registration=registration)
    with pytest.raises(TypeError):
        pymsquic.sync.serve(lambda c: None, "127.0.0.1", 0, alpn=ALPN, credential=cred, default_credential=cred,
                            registration=registration)
    configuration = pymsquic.Configuration(registration, ALPN, cred)
    with pytest.raises(TypeError):
        pymsquic.sync.serve(lambda c: None, "127.0.0.1", 0, credential={"a.example": cred},
                            configuration=configuration)


# ---- the name check msquic 2.5.1 lacks -----------------------------------------------------

def test_server_name_matches(tmp_path: Path) -> None:
    der = make_cert(tmp_path, "www.example.com", "*.api.example.com", "127.0.0.1", "::1").der
    yes = ["www.example.com", "WWW.Example.COM", "www.example.com.", "v1.api.example.com", "127.0.0.1", "::1"]
    no = ["example.com", "api.example.com", "a.b.api.example.com", "other.com", "127.0.0.2", "::2",
          "xwww.example.com"]
    assert [n for n in yes if not pymsquic.server_name_matches(der, n)] == []
    assert [n for n in no if pymsquic.server_name_matches(der, n)] == []
    assert not pymsquic.server_name_matches(b"not a certificate", "www.example.com")


# ---- the deferred path under load (msquic 2.5.1, issue 6138) --------------------------------

def test_many_clients_checked_accept_and_reject(tmp_path: Path, registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    fingerprint = hashlib.sha256(server_cert.der).digest()

    async def main() -> None:
        async with pymsquic.asyncio.serve(lambda conn: echo_handler(worlds_asyncio(), conn), "127.0.0.1", 0,
                                          alpn=ALPN, credential=server_cert.credential,
                                          registration=registration) as server:
            port = server.addresses[0][1]
            good = pymsquic.Credential.client(verify=lambda c: hashlib.sha256(c.leaf).digest() == fingerprint)
            bad = pymsquic.Credential.client(verify=lambda c: False)

            async def one(i: int) -> bool:
                try:
                    async with pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, registration=registration,
                                                        credential=good if i % 2 else bad, server_name="localhost",
                                                        open_timeout=WAIT) as conn:
                        stream = conn.open_stream()
                        stream.write(b"x", fin=True)
                        return await stream.read() == b"x"
                except pymsquic.HandshakeError:
                    return False

            results = await asyncio.gather(*(one(i) for i in range(60)))
            assert results == [bool(i % 2) for i in range(60)]

    asyncio.run(main())


def test_server_checks_pending_when_clients_leave_and_listener_closes(
        tmp_path: Path, registration: pymsquic.Registration) -> None:
    # Connections whose check is pending on the server: some clients close
    # before the check runs (the check then must not complete them: the 2.5.1
    # crash), the others are still waiting when the listener closes.
    server_cert = make_cert(tmp_path, "localhost")
    client_cert = make_cert(tmp_path, "client.example")
    recorder = Recorder(True)
    config = pymsquic.Configuration(registration, ALPN, server_cert.credential.requiring_client_auth(verify=recorder),
                                    pymsquic.Settings(peer_bidi_stream_count=4))
    client = pymsquic.Credential.client(verify=False, certfile=client_cert.certfile, keyfile=client_cert.keyfile)
    listener = pymsquic.sync.Listener(registration, config)
    listener.start(ALPN, ("127.0.0.1", 0))
    port = listener.local_address[1]  # type: ignore[index]
    # The client completes its side of the handshake before the server checked
    # its certificate (TLS 1.3): connect returns, the server's check waits.
    conns = [pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client, registration=registration,
                                   server_name="localhost", open_timeout=WAIT) for _ in range(20)]
    # No handshake can complete before its check ran, and nobody accepted yet.
    assert listener.stats().handshakes == 20 and listener.stats().accepted == 0
    leaving = conns[:10]
    for conn in leaving:
        conn.close()
    # Checks run now (accept): the 10 closed ones must be skipped, not completed.
    accepted = []
    for _ in range(10):
        accepted.append(listener.accept(timeout=WAIT))
    assert 10 <= len(recorder.checks) <= 20  # a closed client's check runs only if its close is not in yet
    # The accepted ones are exactly the clients still up.
    assert {c.remote_address for c in accepted} == {c.local_address for c in conns[10:]}
    for conn in accepted:
        conn.close()
    for conn in conns[10:]:
        conn.close()

    # Pending checks when the listener closes: more clients, nobody accepts.
    late = [pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client, registration=registration,
                                  server_name="localhost", open_timeout=WAIT) for _ in range(10)]
    listener.close()
    for conn in late:
        conn.wait_closed(timeout=WAIT)  # the server ended them: no hang
        conn.close()


def test_clients_leave_while_server_checks_run(tmp_path: Path, registration: pymsquic.Registration) -> None:
    # Blocking clients in threads connect and shut down at once while the
    # server's accept loop runs slow checks: checks meet connections in every
    # state (still up, shut down by the peer, closed). None may crash or hang.
    import concurrent.futures
    import time

    server_cert = make_cert(tmp_path, "localhost")
    client_cert = make_cert(tmp_path, "client.example")
    client = pymsquic.Credential.client(verify=False, certfile=client_cert.certfile, keyfile=client_cert.keyfile)
    checks = []

    def slow(check: pymsquic.CertificateCheck) -> bool:
        checks.append(check)
        time.sleep(0.002)  # a slow check: connections pile up behind it
        return len(checks) % 4 != 0

    def one(port: int) -> None:
        conn = pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client, registration=registration,
                                     server_name="localhost", open_timeout=WAIT)
        conn.shutdown(5)
        conn.close()

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        await conn.close()

    async def main() -> None:
        credential = server_cert.credential.requiring_client_auth(verify=slow)
        async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=credential,
                                          registration=registration) as server:
            port = server.addresses[0][1]
            loop = asyncio.get_running_loop()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                await asyncio.gather(*(loop.run_in_executor(pool, one, port) for _ in range(150)))
        stats = server.listener.stats()  # closed: every connection is counted once
        assert stats.accepted + stats.failed + stats.refused_other == 150
        # Only a check saying True lets a handshake complete; every 4th said False.
        assert 0 < len(checks) <= 150
        assert stats.accepted <= len(checks) - len(checks) // 4

    asyncio.run(main())

def test_interrupted_check_still_rejects(tmp_path: Path, registration: pymsquic.Registration) -> None:
    # A KeyboardInterrupt in the callable leaves accept(), and the connection is
    # rejected at once, not left to its handshake timeout.
    server_cert = make_cert(tmp_path, "localhost")
    client_cert = make_cert(tmp_path, "client.example")
    config = pymsquic.Configuration(registration, ALPN,
                                    server_cert.credential.requiring_client_auth(verify=Recorder(KeyboardInterrupt())))
    client = pymsquic.Credential.client(verify=False, certfile=client_cert.certfile, keyfile=client_cert.keyfile)
    with pymsquic.sync.Listener(registration, config) as listener:
        listener.start(ALPN, ("127.0.0.1", 0))
        conn = pymsquic.sync.connect("127.0.0.1", listener.local_address[1], alpn=ALPN,  # type: ignore[index]
                                     credential=client, registration=registration, server_name="localhost",
                                     open_timeout=WAIT)
        with pytest.raises(KeyboardInterrupt):
            listener.accept(timeout=WAIT)
        conn.wait_closed(timeout=WAIT)
        reason = conn.close_reason
        assert isinstance(reason, pymsquic.HandshakeError) and reason.alert == BAD_CERTIFICATE, reason
        conn.close()

def test_check_nobody_runs_ends_at_handshake_timeout(tmp_path: Path, registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    client_cert = make_cert(tmp_path, "client.example")
    recorder = Recorder(True)
    config = pymsquic.Configuration(registration, ALPN, server_cert.credential.requiring_client_auth(verify=recorder),
                                    pymsquic.Settings(handshake_idle_timeout_ms=1000))
    client = pymsquic.Credential.client(verify=False, certfile=client_cert.certfile, keyfile=client_cert.keyfile)
    with pymsquic.sync.Listener(registration, config) as listener:
        listener.start(ALPN, ("127.0.0.1", 0))
        port = listener.local_address[1]  # type: ignore[index]
        conn = pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client, registration=registration,
                                     server_name="localhost", settings=pymsquic.Settings(idle_timeout_ms=3000),
                                     open_timeout=WAIT)
        conn.wait_closed(timeout=WAIT)  # never accepted: the server's handshake timed out, then the client's idle
        assert listener.stats().failed == 1 and listener.stats().handshakes == 0
        assert recorder.checks == []
        conn.close()


# ---- the example ---------------------------------------------------------------------------

def test_pinned_client_example_rejects_another_certificate(tmp_path: Path) -> None:
    # The example pins the certificate given as --ca: a server with another one is refused.
    server_cert = make_cert(tmp_path, "localhost")
    other = make_cert(tmp_path, "other.example")

    async def main() -> subprocess.CompletedProcess[str]:
        server, port, _ = await aioquic_server(server_cert)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
                [sys.executable, str(REPO / "examples" / "pinned_client.py"), "--port", str(port), "--alpn", ALPN,
                 "--ca", str(other.certfile)], capture_output=True, text=True, timeout=60,
                env={**os.environ, "PYTHONPATH": str(REPO)}))
        finally:
            server.close()

    result = asyncio.run(main())
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refused: the server's certificate was rejected" in result.stdout



# ---- verify=True: msquic's chain check plus the name check in Python ---------------------

@worlds
@pytest.mark.parametrize("asked", ["localhost", "LOCALHOST", "wrong.example", "127.0.0.2"])
def test_default_verify_checks_the_name(w: World, asked: str, tmp_path: Path,
                                        registration: pymsquic.Registration) -> None:
    # msquic 2.5.1 verifies the chain but not the name (microsoft/msquic#6274).
    server_cert = make_cert(tmp_path, "localhost", "127.0.0.1")
    credential = pymsquic.Credential.client(ca_file=server_cert.certfile)  # verify=True

    async def main() -> None:
        server, port, peers = await aioquic_server(server_cert)
        try:
            connecting = run_world(w, lambda p: pymsquic_connect(w, p, registration, credential, asked), port)
            if asked.lower() == "localhost":
                assert await connecting == server_cert.der
                return
            with pytest.raises(pymsquic.HandshakeError) as raised:
                await connecting
            assert f"not valid for {asked!r}" in str(raised.value)
            assert raised.value.alert_name == "bad_certificate"
            await asyncio.wait_for(peers[0].ended.wait(), WAIT)
            assert peers[0].terminated is not None
            assert peers[0].terminated.error_code == CRYPTO_ERROR + BAD_CERTIFICATE
        finally:
            server.close()

    asyncio.run(main())


def test_default_verify_untrusted_chain(tmp_path: Path, registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    other = make_cert(tmp_path, "other.example")

    async def main() -> None:
        server, port, _ = await aioquic_server(server_cert)
        try:
            with pytest.raises(pymsquic.HandshakeError) as raised:
                await pymsquic_connect(worlds_asyncio(), port, registration,
                                       pymsquic.Credential.client(ca_file=other.certfile))
            assert "chain did not verify (CERT_UNTRUSTED_ROOT)" in str(raised.value)
            assert raised.value.alert_name == "unknown_ca"  # what msquic's own check answers
        finally:
            server.close()

    asyncio.run(main())
