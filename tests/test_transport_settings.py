"""Settings pass-through (ECN, congestion control, pacing, MTU bounds, ...) read
back through GetParam; DSCP; the client's local address, migration, and the
server told of a peer's new address, against pymsquic and aioquic peers."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived

import pymsquic

from conftest import ALPN
from worlds import WAIT, World, client_credential, echo_streams, round_trip, worlds

#: One value per setting that differs from msquic's default, so a read-back
#: cannot pass by accident.
NEW_SETTINGS: dict[str, Any] = {
    "ecn_enabled": True,
    "initial_window_packets": 20,
    "send_idle_timeout_ms": 700,
    "minimum_mtu": 1280,
    "maximum_mtu": 1400,
    "mtu_discovery_search_complete_timeout_us": 5_000_000,
    "mtu_discovery_missing_probe_count": 5,
    "max_bytes_per_key": 1 << 30,
    "dest_cid_update_idle_timeout_ms": 15_000,
    "grease_quic_bit_enabled": True,
    "stream_recv_buffer_default": 8192,
    "stream_recv_window_bidi_local_default": 1 << 17,
    "stream_recv_window_bidi_remote_default": 1 << 18,
    "stream_recv_window_unidi_default": 1 << 15,
    "tls_client_max_send_buffer": 6000,
}
#: Settings that existed before, checked here too (item 8 of issue 10 names them).
OLDER_SETTINGS: dict[str, Any] = {
    "congestion_control": "bbr",
    "pacing_enabled": False,
    "keep_alive_interval_ms": 5000,
    "send_buffering_enabled": False,
    "migration_enabled": False,
}


def only(settings: pymsquic.Settings, names: Any) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in names}


@pytest.mark.parametrize("name, value", list(NEW_SETTINGS.items()) + list(OLDER_SETTINGS.items()))
def test_each_setting_reads_back_from_the_configuration(registration: pymsquic.Registration,
                                                        name: str, value: Any) -> None:
    given = pymsquic.Settings(**{name: value})
    with pymsquic.Configuration(registration, ALPN, client_credential(), given) as config:
        assert getattr(config.read_settings(), name) == value
        assert config.read_settings(only_set=True) == given  # nothing else reported as set


def test_default_transport_settings_are_msquic_defaults(registration: pymsquic.Registration) -> None:
    with pymsquic.Configuration(registration, ALPN, client_credential()) as config:
        settings = config.read_settings()
        unset = config.read_settings(only_set=True)
    assert all(getattr(unset, name) is None for name in NEW_SETTINGS)
    assert (settings.ecn_enabled, settings.grease_quic_bit_enabled) == (False, False)
    assert (settings.minimum_mtu, settings.maximum_mtu, settings.initial_window_packets) == (1288, 1500, 10)
    assert settings.max_bytes_per_key == 0x4000000000


@pytest.mark.parametrize("name, value, error", [
    ("ecn_enabled", 1, TypeError),
    ("grease_quic_bit_enabled", "yes", TypeError),
    ("minimum_mtu", 1200, ValueError),
    ("maximum_mtu", 9000, ValueError),
    ("initial_window_packets", 0, ValueError),
    ("initial_window_packets", 2.5, TypeError),
    ("max_bytes_per_key", 1 << 40, ValueError),
    ("stream_recv_window_unidi_default", 3000, ValueError),  # not a power of two
    ("stream_recv_buffer_default", 1024, ValueError),
    ("stream_recv_buffer_default", 6000, ValueError),  # msquic wants a power of two
    ("stream_recv_buffer_default", 1 << 17, ValueError),  # above the default stream window (64 KiB)
    ("initial_window_packets", 2**32 - 1, ValueError),  # times the packet size wraps msquic's uint32
    ("mtu_discovery_search_complete_timeout_us", 0, ValueError),  # would search again on every send
    ("mtu_discovery_missing_probe_count", 256, ValueError),
    ("send_idle_timeout_ms", -1, ValueError),
    ("congestion_control", "reno", ValueError),
])
def test_bad_values_name_the_setting(name: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=name):
        pymsquic.Settings(**{name: value})


def test_stream_recv_buffer_fits_the_stream_windows() -> None:
    # msquic allocates it per stream up front and asserts it fits the stream's window.
    pymsquic.Settings(stream_recv_buffer_default=1 << 17, stream_recv_window_default=1 << 17)
    with pytest.raises(ValueError, match="stream_recv_window_unidi_default"):
        pymsquic.Settings(stream_recv_buffer_default=1 << 17, stream_recv_window_default=1 << 17,
                          stream_recv_window_unidi_default=1 << 16)
    pymsquic.Settings(initial_window_packets=(2**32 - 1) // 1500)  # the largest allowed
    pymsquic.Settings(mtu_discovery_search_complete_timeout_us=1_000_000)


def test_mtu_bounds_must_be_in_order() -> None:
    with pytest.raises(ValueError, match="minimum_mtu"):
        pymsquic.Settings(minimum_mtu=1450, maximum_mtu=1300)


# ---- on live connections, with aioquic as the peer -----------------------------------

class AioquicEcho(QuicConnectionProtocol):
    """Echo each stream with FIN (aioquic's server and client alike)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffers: dict[int, bytearray] = {}
        self.answers: dict[int, asyncio.Future[bytes]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            buf = self.buffers.setdefault(event.stream_id, bytearray())
            buf.extend(event.data)
            if event.end_stream:
                answer = self.answers.get(event.stream_id)
                if answer is not None:  # a client's request: the answer came
                    answer.set_result(bytes(buf))
                else:
                    self._quic.send_stream_data(event.stream_id, bytes(buf), end_stream=True)
                    self.transmit()

    async def request(self, data: bytes) -> bytes:
        stream_id = self._quic.get_next_available_stream_id()
        self.answers[stream_id] = asyncio.get_running_loop().create_future()
        self._quic.send_stream_data(stream_id, data, end_stream=True)
        self.transmit()
        return await asyncio.wait_for(self.answers[stream_id], WAIT)


async def aioquic_server(cert_files: tuple[Path, Path]) -> tuple[Any, int, list[AioquicEcho]]:
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    config.load_cert_chain(str(cert_files[0]), str(cert_files[1]))
    protocols: list[AioquicEcho] = []

    def create(*args: Any, **kwargs: Any) -> AioquicEcho:
        protocols.append(AioquicEcho(*args, **kwargs))
        return protocols[-1]

    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=create)
    return server, server._transport.get_extra_info("sockname")[1], protocols


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def in_world(w: World, body: Any, *args: Any) -> Any:
    """Run a client body: on the loop in the asyncio world, in a thread in the sync one
    (the aioquic peer needs this loop running)."""
    if w.name == "asyncio":
        return await body(w, *args)
    return await asyncio.get_running_loop().run_in_executor(None, lambda: w.run(body(w, *args)))


@worlds
def test_connection_reads_back_settings_and_local_address_with_aioquic(
        w: World, registration: pymsquic.Registration, cert_files: tuple[Path, Path]) -> None:
    settings = pymsquic.Settings(**NEW_SETTINGS, **OLDER_SETTINGS)
    local_port = free_udp_port()

    async def client(w: World, port: int) -> tuple[pymsquic.Settings, Any, int]:
        conn = await w.connect(port, registration, settings=settings, local_addr=("127.0.0.1", local_port))
        try:
            assert await round_trip(w, conn, b"hello") == b"hello"
            assert conn.dscp == 0
            conn.dscp = 46  # expedited forwarding
            assert conn.dscp == 46
            assert await round_trip(w, conn, b"after dscp") == b"after dscp"
            with pytest.raises(ValueError, match="dscp"):
                conn.dscp = 64
            with pytest.raises(TypeError, match="dscp"):
                conn.dscp = "46"
            # Set on a started connection msquic would migrate (and 2.5.1 can abort
            # then): the native layer refuses, the connection stays where it is.
            with pytest.raises(pymsquic.QuicError) as refused:
                conn._set_local_address(("127.0.0.1", free_udp_port()))
            assert refused.value.status == pymsquic._msquic.lib.QUIC_STATUS_INVALID_STATE
            assert conn.local_address == ("127.0.0.1", local_port)
            return conn.read_settings(), conn.local_address, conn.stats().path_mtu
        finally:
            await w.call(conn.close)

    async def main() -> tuple[pymsquic.Settings, Any, int, Any]:
        server, port, protocols = await aioquic_server(cert_files)
        try:
            read, local, mtu = await in_world(w, client, port)
            return read, local, mtu, protocols[0]._quic._network_paths[0].addr
        finally:
            server.close()

    read, local, mtu, seen_by_aioquic = asyncio.run(main())
    assert only(read, NEW_SETTINGS) == NEW_SETTINGS
    assert only(read, OLDER_SETTINGS) == OLDER_SETTINGS
    assert local == ("127.0.0.1", local_port)
    assert tuple(seen_by_aioquic[:2]) == ("127.0.0.1", local_port)  # the peer saw that port
    assert 1248 <= mtu <= 1400  # maximum_mtu bounds discovery


def test_server_connection_reads_back_its_settings_with_aioquic_client(
        registration: pymsquic.Registration, server_credential: pymsquic.Credential) -> None:
    server_settings = {k: v for k, v in {**NEW_SETTINGS, **OLDER_SETTINGS}.items()
                       if k not in ("tls_client_max_send_buffer",)}
    settings = pymsquic.Settings(peer_bidi_stream_count=4, **server_settings)

    async def main() -> pymsquic.Settings:
        config = pymsquic.Configuration(registration, ALPN, server_credential, settings)
        listener = pymsquic.asyncio.Listener(registration, config)
        listener.start(ALPN, ("127.0.0.1", 0))
        try:
            cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                                    server_name="localhost")
            async with connect("127.0.0.1", listener.local_address[1], configuration=cfg):
                conn = await asyncio.wait_for(listener.accept(), WAIT)
                read = conn.read_settings()
                await conn.close()
                return read
        finally:
            await listener.close()

    read = asyncio.run(main())
    assert only(read, server_settings) == server_settings


def test_ecn_enabled_on_both_sides_makes_the_path_ecn_capable(registration: pymsquic.Registration,
                                                              server_credential: pymsquic.Credential) -> None:
    """ECN marks survive loopback: with the setting on, msquic validates ECN on the path."""

    async def run(ecn: bool) -> bool:
        settings = pymsquic.Settings(ecn_enabled=ecn, peer_bidi_stream_count=4)

        async def handler(conn: pymsquic.asyncio.Connection) -> None:
            async for stream in conn:
                stream.write(await stream.read(), fin=True)

        async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential,
                                          settings=settings, registration=registration) as server:
            async with pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                                credential=client_credential(), registration=registration,
                                                settings=pymsquic.Settings(ecn_enabled=ecn)) as conn:
                stream = conn.open_stream()
                stream.write(b"x" * 100_000, fin=True)
                assert len(await asyncio.wait_for(stream.read(), WAIT)) == 100_000
                return conn.stats().ecn_capable

    assert asyncio.run(run(True)) is True
    assert asyncio.run(run(False)) is False


# ---- the server told of a peer's new address --------------------------------------------

@pytest.mark.skipif(pymsquic.execution_mode() == "loop",
                    reason="execution mode 'loop' sets the address inline on the loop, not on the executor")
def test_open_timeout_bounds_the_local_addr_step() -> None:
    """Setting local_addr runs on the loop's default executor: a busy one must
    not hold connect() past open_timeout."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        release = threading.Event()
        busy = loop.run_in_executor(None, release.wait)  # the only worker, taken
        try:
            with pytest.raises(asyncio.TimeoutError, match="connect"):
                await asyncio.wait_for(pymsquic.asyncio.connect(
                    "127.0.0.1", free_udp_port(), alpn=ALPN, credential=client_credential(),
                    local_addr=("127.0.0.1", 0), open_timeout=0.5), WAIT)
        finally:
            release.set()
            await busy

    asyncio.run(main())


def test_local_addr_refuses_what_is_not_an_ip_and_port() -> None:
    for bad, error in [(("localhost", 0), ValueError), (("127.0.0.1", 70000), ValueError),
                       ("nonsense", ValueError), (("127.0.0.1",), TypeError)]:
        with pytest.raises(error):
            pymsquic.asyncio.connect("127.0.0.1", 4433, alpn=ALPN, local_addr=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local_addr"):
        pymsquic.asyncio.connect("127.0.0.1", 4433, alpn=ALPN, local_addr=("example.org", 0))


@pytest.mark.parametrize("new_cid", [False, True], ids=["rebinding", "migration-with-new-cid"])
def test_aioquic_client_moving_to_a_new_socket(registration: pymsquic.Registration,
                                               server_credential: pymsquic.Credential,
                                               caplog: pytest.LogCaptureFixture, new_cid: bool) -> None:
    """NAT rebinding as an independent peer does it: aioquic's client goes on
    from a new UDP socket (with its old connection id, or a new one as in a
    deliberate migration); pymsquic's server follows and says so (the wait, the
    callback on the loop, the log)."""
    changes: list[Any] = []
    called: list[tuple[Any, bool]] = []
    caplog.set_level(logging.INFO, logger="pymsquic")

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        loop_thread = threading.get_ident()
        conn.set_peer_address_callback(lambda new: called.append((new, threading.get_ident() == loop_thread)))
        async for stream in conn:
            data = await stream.read()
            if data == b"where am I?":
                new = await conn.wait_peer_address_change()
                changes.append((new, conn.remote_address, conn.peer_address_changes))
                data = f"{new[0]}:{new[1]}".encode()
            stream.write(data, fin=True)

    async def main() -> tuple[int, int, bytes]:
        async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential,
                                          registration=registration) as server:
            cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                                    server_name="localhost")
            async with connect("127.0.0.1", server.addresses[0][1], configuration=cfg,
                               create_protocol=AioquicEcho) as client:
                assert isinstance(client, AioquicEcho)
                assert await client.request(b"hello") == b"hello"
                old_transport = client._transport
                old_port = old_transport.get_extra_info("sockname")[1]
                # The rebinding: the same protocol (connection) now sends from a new socket.
                # Dual-stack like aioquic's own socket: it sends to v4-mapped addresses.
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", 0))
                new_transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    lambda: client, sock=sock)
                new_port = new_transport.get_extra_info("sockname")[1]
                old_transport.close()
                if new_cid:
                    client.change_connection_id()
                answer = await client.request(b"where am I?")
                assert await client.request(b"still here") == b"still here"
                return old_port, new_port, answer

    old_port, new_port, answer = asyncio.run(main())
    assert new_port != old_port
    assert answer == f"127.0.0.1:{new_port}".encode()
    assert changes == [(("127.0.0.1", new_port), ("127.0.0.1", new_port), 1)]
    assert called == [(("127.0.0.1", new_port), True)]  # once, on the loop's thread
    logged = [r.getMessage() for r in caplog.records if "peer address changed" in r.getMessage()]
    assert len(logged) == 1  # once, by whichever noticed first
    assert logged[0].endswith(f"peer address changed to ('127.0.0.1', {new_port}) (change 1)")


@worlds
def test_local_addr_already_in_use_is_a_clear_error(w: World, registration: pymsquic.Registration,
                                                    server_credential: pymsquic.Credential) -> None:
    async def handler(w: World, conn: Any) -> None:
        await w.wait(conn.wait_closed)

    async def body() -> None:
        async with await w.serve(handler, registration, server_credential) as server:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
                busy.bind(("127.0.0.1", 0))
                with pytest.raises(pymsquic.ConnectionClosed) as caught:
                    await w.connect(server.port, registration, local_addr=busy.getsockname())
                assert caught.value.status_name == "ADDRESS_IN_USE"

    w.run(body())


class TosProxy(threading.Thread):
    """A UDP relay between a client and a server that records the IP TOS byte
    (DSCP << 2 | ECN) of each packet the client sends: what is on the wire."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(name="test-tos-proxy", daemon=True)
        self.target = target
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.port: int = self.front.getsockname()[1]
        self.client: Any = None
        self.tos: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.front, self.back], [], [], 0.05)
            if self.front in ready:
                data, ancillary, _, self.client = self.front.recvmsg(65536, socket.CMSG_SPACE(4))
                self.tos += [value[0] for level, kind, value in ancillary
                             if level == socket.IPPROTO_IP and kind == socket.IP_TOS]
                self.back.sendto(data, self.target)
            if self.back in ready:
                data = self.back.recv(65536)
                if self.client is not None:
                    self.front.sendto(data, self.client)

    def close(self) -> None:
        self.stopping.set()
        self.join()
        self.front.close()
        self.back.close()


@worlds
def test_dscp_and_ecn_marks_are_on_the_wire(w: World, registration: pymsquic.Registration,
                                            server_credential: pymsquic.Credential) -> None:
    handler = echo_streams

    async def body() -> tuple[list[int], list[int]]:
        async with await w.serve(handler, registration, server_credential) as server:
            proxy = TosProxy(("127.0.0.1", server.port))
            proxy.start()
            try:
                conn = await w.connect(proxy.port, registration, settings=pymsquic.Settings(ecn_enabled=True))
                try:
                    assert await round_trip(w, conn, b"default") == b"default"
                    before = list(proxy.tos)
                    conn.dscp = 46
                    # The request went through the proxy before its answer came back.
                    assert await round_trip(w, conn, b"expedited") == b"expedited"
                    return before, proxy.tos[len(before):]
                finally:
                    await w.call(conn.close)
            finally:
                proxy.close()

    before, after = w.run(body())
    assert before and after
    assert {tos >> 2 for tos in before} == {0}
    # Packets sent before the change may still reach the proxy after it (ACKs);
    # from the first one marked on, every packet carries DSCP 46 (EF).
    dscps = [tos >> 2 for tos in after]
    assert 46 in dscps and set(dscps[dscps.index(46):]) == {46} and set(dscps) <= {0, 46}
    assert any(tos & 3 == 2 for tos in before + after)  # ECT(0): ecn_enabled marks packets
