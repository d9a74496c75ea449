"""QUIC versions (v1, v2) as settings and the handshake facts a connection reports,
against aioquic in both roles: the negotiated version, the TLS cipher suite as
aioquic saw it, version mismatches failing clearly."""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import CipherSuite
from aioquic_peers import Client, Echo, server_port

import pymsquic
from pymsquic import QUIC_V1, QUIC_V2, Settings

ALPN = "versions-test"
CLIENT = pymsquic.Credential.client(verify=False)


# ---- aioquic peers ---------------------------------------------------------------------

def aioquic_version(protocol: QuicConnectionProtocol) -> int:
    return int(protocol._quic._version)


def aioquic_cipher_suite(protocol: QuicConnectionProtocol) -> int:
    key_schedule = protocol._quic.tls.key_schedule
    assert key_schedule is not None
    return int(key_schedule.cipher_suite)


IN_CHILD = "PYMSQUIC_TEST_VERSIONS_CHILD"


def in_child_process(test: Callable[..., None]) -> Callable[..., None]:
    """Run the test in a child pytest: set_server_versions() leaves msquic's
    version negotiation extension on for the rest of its process (msquic peers
    then meet in v2), which must not leak into the tests that follow."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        if os.environ.get(IN_CHILD):
            test(*args, **kwargs)
            return
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"{__file__}::{test.__name__}"],
            env={**os.environ, IN_CHILD: "1"}, cwd=Path(__file__).parent.parent,
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return run


async def against_aioquic_server(cert_files: tuple[Path, Path], settings: Settings | None,
                                 aioquic_versions: list[int],
                                 cipher_suites: list[CipherSuite] | None = None) -> tuple[Any, Echo]:
    """pymsquic client -> aioquic server: (pymsquic's handshake info, aioquic's protocol)."""
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], supported_versions=aioquic_versions)
    if cipher_suites is not None:
        config.cipher_suites = cipher_suites
    config.load_cert_chain(*cert_files)
    protocols: list[Echo] = []

    def create(*args: Any, **kwargs: Any) -> Echo:
        protocols.append(Echo(*args, **kwargs))
        return protocols[-1]

    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=create)
    try:
        port = server_port(server)
        async with pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=settings,
                                            open_timeout=10) as conn:
            stream = conn.open_stream()
            stream.write(b"ping", fin=True)
            assert await asyncio.wait_for(stream.read(), 10) == b"ping"
            info = conn.handshake_info
            assert info is not None and conn.quic_version == info.quic_version
            return info, protocols[0]
    finally:
        server.close()


async def aioquic_client(port: int, versions: list[int],
                         cipher_suites: list[CipherSuite] | None = None) -> Client:
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                               server_name="localhost", supported_versions=versions)
    if cipher_suites is not None:
        config.cipher_suites = cipher_suites
    async with connect("127.0.0.1", port, configuration=config, create_protocol=Client) as client:
        assert isinstance(client, Client)
        assert await client.request(b"ping") == b"ping"
        return client


async def pymsquic_server_exchange(server_credential: pymsquic.Credential, versions: list[int],
                                   cipher_suites: list[CipherSuite] | None = None
                                   ) -> tuple[pymsquic.HandshakeInfo, Client]:
    """aioquic client -> pymsquic server: (the server connection's handshake info, aioquic's protocol)."""
    seen: list[pymsquic.HandshakeInfo | None] = []

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        seen.append(conn.handshake_info)
        async for stream in conn:
            stream.write(await stream.read(), fin=True)
            await stream.wait_closed()

    async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
        client = await aioquic_client(server.addresses[0][1], versions, cipher_suites)
    info = seen[0]
    assert info is not None
    return info, client


# ---- settings ---------------------------------------------------------------------------

def test_versions_setting_is_checked_and_read_back(registration: pymsquic.Registration,
                                                   server_credential: pymsquic.Credential) -> None:
    assert Settings(versions=[QUIC_V2, QUIC_V1]).versions == (QUIC_V2, QUIC_V1)  # a tuple: hashable
    hash(Settings(versions=[QUIC_V1]))
    for bad in [(0xFF00001D,), (0,), (QUIC_V1, 7)]:
        with pytest.raises(ValueError, match="unknown QUIC version"):
            Settings(versions=bad)
    with pytest.raises(ValueError, match="at least one"):
        Settings(versions=())
    with pytest.raises(ValueError, match="twice"):
        Settings(versions=(QUIC_V1, QUIC_V1))
    with pytest.raises(TypeError):
        Settings(versions=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Settings(versions=("v1",))  # type: ignore[arg-type]
    with pymsquic.Configuration(registration, ALPN, CLIENT, Settings(versions=(QUIC_V2, QUIC_V1))) as conf:
        assert conf.read_settings().versions == (QUIC_V2, QUIC_V1)  # from msquic (GetParam)
        assert conf.read_settings(only_set=True) == Settings(versions=(QUIC_V2, QUIC_V1))
    with pymsquic.Configuration(registration, ALPN, CLIENT) as conf:
        assert conf.read_settings().versions is None  # msquic's defaults
    # msquic 2.5.1 takes a server's versions from the process, not its configuration.
    with pytest.raises(ValueError, match="set_server_versions"):
        pymsquic.Configuration(registration, ALPN, server_credential, Settings(versions=(QUIC_V1,)))


@in_child_process
def test_server_versions_read_back() -> None:
    assert pymsquic.server_versions() is None
    pymsquic.set_server_versions([QUIC_V1])
    assert pymsquic.server_versions() == (QUIC_V1,)
    pymsquic.set_server_versions((QUIC_V2, QUIC_V1))
    assert pymsquic.server_versions() == (QUIC_V2, QUIC_V1)
    with pytest.raises(ValueError):
        pymsquic.set_server_versions([0x12345678])
    assert pymsquic.server_versions() == (QUIC_V2, QUIC_V1)  # a refused list changes nothing
    pymsquic.set_server_versions(None)
    assert pymsquic.server_versions() is None


@in_child_process
def test_server_versions_refused_while_listening(server_credential: pymsquic.Credential) -> None:
    with pymsquic.sync.serve(lambda conn: None, "127.0.0.1", 0, alpn=ALPN, credential=server_credential):
        with pytest.raises(RuntimeError, match="configuration"):
            pymsquic.set_server_versions([QUIC_V1])
    assert pymsquic.server_versions() is None
    pymsquic.set_server_versions([QUIC_V1])  # once it stopped
    assert pymsquic.server_versions() == (QUIC_V1,)


@in_child_process
def test_server_versions_refused_while_a_configuration_is_open(registration: pymsquic.Registration) -> None:
    # msquic re-copies every configuration's version list without a lock while
    # workers copy it for new connections: only at start-up, before any.
    conf = pymsquic.Configuration(registration, ALPN, CLIENT)
    with pytest.raises(RuntimeError, match="1 configuration"):
        pymsquic.set_server_versions([QUIC_V1])
    assert pymsquic.server_versions() is None
    conf.close()
    pymsquic.set_server_versions([QUIC_V1])
    assert pymsquic.server_versions() == (QUIC_V1,)


# ---- v2 negotiated with aioquic, both ways ------------------------------------------------

def test_pymsquic_client_v2_with_aioquic_server(cert_files: tuple[Path, Path]) -> None:
    both = [QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1]
    info, server = asyncio.run(against_aioquic_server(cert_files, Settings(versions=(QUIC_V2, QUIC_V1)), both))
    assert info.quic_version == QUIC_V2 == aioquic_version(server)
    assert info.quic_version_name == "QUICv2"
    # The default starts in v1: the setting is what made it v2.
    info, server = asyncio.run(against_aioquic_server(cert_files, None, both))
    assert info.quic_version == QUIC_V1 == aioquic_version(server)


def test_aioquic_client_v2_with_pymsquic_server(server_credential: pymsquic.Credential) -> None:
    info, client = asyncio.run(pymsquic_server_exchange(
        server_credential, [QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1]))
    assert info.quic_version == QUIC_V2 == aioquic_version(client)
    info, client = asyncio.run(pymsquic_server_exchange(server_credential, [QuicProtocolVersion.VERSION_1]))
    assert info.quic_version == QUIC_V1 == aioquic_version(client)


def test_pymsquic_v2_both_sides_sync(server_credential: pymsquic.Credential) -> None:
    seen: list[int | None] = []

    def handler(conn: pymsquic.sync.Connection) -> None:
        seen.append(conn.quic_version)
        for stream in conn:
            stream.write(stream.read(), fin=True)
            stream.wait_closed()

    with pymsquic.sync.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        with pymsquic.sync.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN, credential=CLIENT,
                                   settings=Settings(versions=(QUIC_V2,))) as conn:
            assert conn.quic_version == QUIC_V2
            stream = conn.open_stream()
            stream.write(b"x", fin=True)
            assert stream.read() == b"x"
        server.close()
        thread.join(10)
    assert seen == [QUIC_V2]


# ---- versions in common with none fail clearly ----------------------------------------------

def test_pymsquic_client_v2_only_against_v1_only_server(cert_files: tuple[Path, Path]) -> None:
    with pytest.raises(pymsquic.VersionNegotiationError, match="no QUIC version in common"):
        asyncio.run(against_aioquic_server(cert_files, Settings(versions=(QUIC_V2,)),
                                           [QuicProtocolVersion.VERSION_1]))
    with pytest.raises(pymsquic.VersionNegotiationError):
        asyncio.run(against_aioquic_server(cert_files, Settings(versions=(QUIC_V1,)),
                                           [QuicProtocolVersion.VERSION_2]))


@in_child_process
def test_aioquic_v2_only_client_against_v1_only_pymsquic_server(server_credential: pymsquic.Credential) -> None:
    pymsquic.set_server_versions([QUIC_V1])
    with pytest.raises(ConnectionError):
        asyncio.run(pymsquic_server_exchange(server_credential, [QuicProtocolVersion.VERSION_2]))
    # and v1 clients still get in
    info, _ = asyncio.run(pymsquic_server_exchange(server_credential, [QuicProtocolVersion.VERSION_1]))
    assert info.quic_version == QUIC_V1


@in_child_process
def test_pymsquic_v1_only_client_against_v2_only_pymsquic_server(server_credential: pymsquic.Credential) -> None:
    pymsquic.set_server_versions([QUIC_V2])

    async def main() -> None:
        async with pymsquic.asyncio.serve(lambda conn: asyncio.sleep(0), "127.0.0.1", 0, alpn=ALPN,
                                          credential=server_credential) as server:
            with pytest.raises(pymsquic.VersionNegotiationError):
                await pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN, credential=CLIENT,
                                               settings=Settings(versions=(QUIC_V1,)), open_timeout=10)
            conn = await pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                                  credential=CLIENT, settings=Settings(versions=(QUIC_V2,)),
                                                  open_timeout=10)
            assert conn.quic_version == QUIC_V2
            await conn.close()

    asyncio.run(main())


# ---- the TLS facts match aioquic's ------------------------------------------------------------

SUITES = [
    (CipherSuite.CHACHA20_POLY1305_SHA256, "TLS_CHACHA20_POLY1305_SHA256"),
    (CipherSuite.AES_256_GCM_SHA384, "TLS_AES_256_GCM_SHA384"),
    (CipherSuite.AES_128_GCM_SHA256, "TLS_AES_128_GCM_SHA256"),
]


@pytest.mark.parametrize("suite,name", SUITES, ids=[name for _, name in SUITES])
def test_cipher_suite_forced_by_aioquic_server(cert_files: tuple[Path, Path], suite: CipherSuite,
                                               name: str) -> None:
    info, server = asyncio.run(against_aioquic_server(cert_files, None, [QuicProtocolVersion.VERSION_1],
                                                      [suite]))
    assert aioquic_cipher_suite(server) == suite == info.cipher_suite_id
    assert info.cipher_suite == name
    assert info.tls_version == "TLSv1.3"


@pytest.mark.parametrize("suite,name", SUITES, ids=[name for _, name in SUITES])
def test_cipher_suite_forced_by_aioquic_client(server_credential: pymsquic.Credential, suite: CipherSuite,
                                               name: str) -> None:
    info, client = asyncio.run(pymsquic_server_exchange(server_credential, [QuicProtocolVersion.VERSION_1],
                                                        [suite]))
    assert aioquic_cipher_suite(client) == suite == info.cipher_suite_id
    assert info.cipher_suite == name
    assert info.tls_version == "TLSv1.3"


def test_handshake_info_before_and_after(server_credential: pymsquic.Credential) -> None:
    """None until connected; kept once closed. The key exchange group: msquic
    2.5.1 builds quictls without IS_OPENSSL_3, so it never reports one."""

    async def main() -> None:
        async with pymsquic.asyncio.serve(lambda conn: conn.wait_closed(), "127.0.0.1", 0, alpn=ALPN,
                                          credential=server_credential) as server:
            conn = pymsquic.asyncio.Connection._open_client(pymsquic.Configuration(
                pymsquic.default_registration(), ALPN, CLIENT))
            assert conn.handshake_info is None and conn.quic_version is None
            conn._abandon()
            # (v1 named: with msquic's defaults the version depends on whether a
            # set_server_versions() ran in this process, see its docstring.)
            async with pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                                credential=CLIENT, settings=Settings(versions=(QUIC_V1,))) as conn:
                info = conn.handshake_info
            assert conn.is_closed and conn.handshake_info == info
            assert info is not None
            assert info.quic_version == QUIC_V1 and info.cipher_suite.startswith("TLS_")
            assert info.group is None and info.group_id == 0

    asyncio.run(main())


def test_this_process_kept_msquic_defaults(server_credential: pymsquic.Credential) -> None:
    """Last in the file: the set_server_versions() tests above left this process
    as it was (msquic's version negotiation extension off), so two pymsquic peers
    with default settings still meet in v1."""
    async def main() -> int | None:
        async with pymsquic.asyncio.serve(lambda conn: conn.wait_closed(), "127.0.0.1", 0, alpn=ALPN,
                                          credential=server_credential) as server:
            async with pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                                credential=CLIENT, open_timeout=10) as conn:
                return conn.quic_version

    assert asyncio.run(main()) == QUIC_V1
