"""All the numbers: every field of QUIC_STATISTICS_V2 in Connection.stats(),
msquic's listener statistics in Listener.stats(), and the global performance
counters as pymsquic.perf_counters(); checked against transfers with aioquic."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived

import pymsquic
from pymsquic._msquic import ffi

from conftest import ALPN, aioquic_handshake

PAYLOAD = bytes(range(256)) * 600  # 153600 bytes, many packets


def msquic_header_fields(struct: str) -> list[str]:
    """The field names of a msquic struct, from the msquic.h the build used."""
    headers = sorted(Path.home().glob(".cache/pymsquic/*/include/msquic.h"))
    if not headers:
        pytest.skip("msquic.h not found in the libmsquic cache")
    text = headers[-1].read_text()
    body = re.search(rf"typedef struct {struct} {{(.*?)}} {struct};", text, re.S)
    assert body is not None
    names = re.findall(r"^\s*u?int\d+_t\s+(\w+)\s*(?::\s*\d+)?;", body.group(1), re.M)
    return [n for n in names if n != "RESERVED"]


def test_connection_stats_has_every_field_of_statistics_v2() -> None:
    msquic = msquic_header_fields("QUIC_STATISTICS_V2")
    assert len(msquic) == 40  # msquic 2.5: the field list grows only at the end
    record = [name for name, _ in ffi.typeof("pmq_conn_stats_v2").fields]
    ours = [f.name for f in dataclasses.fields(pymsquic.ConnectionStats)]
    assert sorted(record) == sorted(ours)
    assert len(ours) == len(msquic) + 1  # and pymsquic's handshake_us
    # The existing names stay (tests, bench, README use them).
    for name in ("rtt_us", "min_rtt_us", "max_rtt_us", "rtt_variance_us", "congestion_window",
                 "congestion_events", "path_mtu", "packets_sent", "packets_lost", "packets_received",
                 "bytes_sent", "bytes_received", "stream_bytes_sent", "stream_bytes_received", "handshake_us"):
        assert name in ours


def test_listener_stats_have_msquic_listener_statistics() -> None:
    assert msquic_header_fields("QUIC_LISTENER_STATISTICS") == [
        "TotalAcceptedConnections", "TotalRejectedConnections", "BindingRecvDroppedPackets"]
    names = {f.name for f in dataclasses.fields(pymsquic.ListenerStats)}
    assert {"msquic_accepted", "msquic_rejected"} <= names
    assert "binding_packets_dropped" not in names  # msquic 2.5.1 never initialises it


def check_transfer_stats(stats: pymsquic.ConnectionStats, *, sent: int, received: int, client: bool) -> None:
    """What must hold after ``sent`` stream bytes went out and ``received`` came in."""
    if stats.packets_lost:  # a retransmission (spurious or not) counts its stream bytes again
        assert stats.stream_bytes_sent >= sent
    else:
        assert stats.stream_bytes_sent == sent
    assert stats.stream_bytes_received == received
    assert stats.bytes_sent > stats.stream_bytes_sent and stats.bytes_received > stats.stream_bytes_received
    assert stats.packets_sent >= stats.packets_retransmittable > 0
    assert stats.packets_received > 0 and stats.ack_frames_received > 0
    assert 0 < stats.min_rtt_us <= stats.rtt_us <= stats.max_rtt_us
    assert 1200 <= stats.path_mtu <= 1500 and stats.congestion_window > 0
    assert 0 < stats.timing_start_us <= stats.timing_initial_flight_end_us <= stats.timing_handshake_flight_end_us
    assert stats.handshake_client_flight1_bytes > 0 and stats.handshake_server_flight1_bytes > 0
    assert stats.handshake_client_flight2_bytes > 0
    assert not stats.resumption_attempted and not stats.resumption_succeeded
    assert not stats.version_negotiation and not stats.stateless_retry
    assert stats.decryption_failures == 0
    for name, value in dataclasses.asdict(stats).items():
        # type(), not isinstance: a bool is an int, and an int must not pass for a flag.
        assert type(value) is (bool if isinstance(getattr(type(stats), name, 0), bool) else int), name
    if client:
        assert stats.handshake_us > 0


# ---- a pymsquic client and an aioquic echo server ----------------------------------

class AioquicEcho(QuicConnectionProtocol):
    """Echo each stream with FIN; count the stream bytes it received."""

    received = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffers: dict[int, bytearray] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            AioquicEcho.received += len(event.data)
            buf = self.buffers.setdefault(event.stream_id, bytearray())
            buf.extend(event.data)
            if event.end_stream:
                self._quic.send_stream_data(event.stream_id, bytes(buf), end_stream=True)
                self.transmit()


class AioquicStreamingEcho(QuicConnectionProtocol):
    """Echo stream data as it arrives, FIN with FIN."""

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, event.data, end_stream=event.end_stream)
            self.transmit()


async def aioquic_server(cert_files: tuple[Path, Path], protocol: type[QuicConnectionProtocol] = AioquicEcho,
                         **options: Any) -> tuple[Any, int]:
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], **options)
    config.load_cert_chain(str(cert_files[0]), str(cert_files[1]))
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=protocol)
    return server, server._transport.get_extra_info("sockname")[1]


def sync_exchange(port: int) -> tuple[pymsquic.ConnectionStats, pymsquic.ConnectionStats]:
    with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=pymsquic.Credential.client(verify=False),
                               open_timeout=10) as conn:
        stream = conn.open_stream()
        stream.write(PAYLOAD, fin=True)
        assert stream.read(timeout=20) == PAYLOAD
        stats = conn.stats()
    assert conn.is_closed
    return stats, conn.stats()


@pytest.mark.parametrize("world", ["asyncio", "sync"])
def test_client_stats_after_a_transfer_with_aioquic(cert_files: tuple[Path, Path], world: str) -> None:
    async def main() -> tuple[pymsquic.ConnectionStats, pymsquic.ConnectionStats]:
        AioquicEcho.received = 0
        server, port = await aioquic_server(cert_files)
        try:
            if world == "sync":
                return await asyncio.get_running_loop().run_in_executor(None, sync_exchange, port)
            async with pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN,
                                                credential=pymsquic.Credential.client(verify=False)) as conn:
                stream = conn.open_stream()
                stream.write(PAYLOAD, fin=True)
                assert await asyncio.wait_for(stream.read(), 20) == PAYLOAD
                stats = conn.stats()
            assert conn.is_closed
            return stats, conn.stats()
        finally:
            server.close()

    stats, final = asyncio.run(main())
    assert AioquicEcho.received == len(PAYLOAD)  # what the peer says it got
    check_transfer_stats(stats, sent=len(PAYLOAD), received=len(PAYLOAD), client=True)
    # Closed, stats() gives the numbers msquic had at the end: the same stream
    # bytes, the close's own packets on top.
    check_transfer_stats(final, sent=len(PAYLOAD), received=len(PAYLOAD), client=True)
    assert final.packets_sent > stats.packets_sent and final.correlation_id == stats.correlation_id


def test_correlation_ids_tell_connections_apart(cert_files: tuple[Path, Path]) -> None:
    """msquic numbers its connections: two connections never share a correlation_id,
    and one keeps its own once closed."""
    async def main() -> list[tuple[pymsquic.ConnectionStats, pymsquic.ConnectionStats]]:
        server, port = await aioquic_server(cert_files)
        try:
            return [await asyncio.get_running_loop().run_in_executor(None, sync_exchange, port)
                    for _ in range(2)]
        finally:
            server.close()

    (first, first_final), (second, second_final) = asyncio.run(main())
    assert first.correlation_id == first_final.correlation_id
    assert second.correlation_id == second_final.correlation_id
    assert first.correlation_id != second.correlation_id


# ---- an aioquic client and a pymsquic server ------------------------------------------

def test_server_and_listener_stats_with_aioquic_client(registration: pymsquic.Registration,
                                                      server_credential: pymsquic.Credential) -> None:
    before = pymsquic.perf_counters()
    refuse = {"on": False}

    def hook(info: pymsquic.NewConnectionInfo) -> bool:
        return not refuse["on"]

    config = pymsquic.Configuration(registration, ALPN, server_credential,
                                    pymsquic.Settings(peer_bidi_stream_count=4, idle_timeout_ms=10_000))
    listener = pymsquic.asyncio.Listener(registration, config, on_new_connection=hook)

    async def main() -> tuple[pymsquic.ConnectionStats, pymsquic.ListenerStats]:
        listener.start(ALPN, ("127.0.0.1", 0))
        port = listener.local_address[1]
        try:
            assert listener.stats().msquic_accepted == 0
            cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                                    server_name="localhost")
            async with connect("127.0.0.1", port, configuration=cfg) as client:
                conn = await asyncio.wait_for(listener.accept(), 10)
                reader, writer = await client.create_stream()
                writer.write(PAYLOAD)
                writer.write_eof()
                stream = await asyncio.wait_for(conn.accept_stream(), 10)
                data = await asyncio.wait_for(stream.read(), 20)
                stream.write(data[:1000], fin=True)
                assert await asyncio.wait_for(reader.read(), 10) == PAYLOAD[:1000]
                server_stats = conn.stats()
                await conn.close()
            accepted = listener.stats()
            refuse["on"] = True
            refused = await aioquic_handshake(port)
            assert refused.terminated is not None
            return server_stats, accepted
        finally:
            await listener.close()

    server_stats, accepted = asyncio.run(main())
    # Read after close: msquic's handle is gone, these are the values close() kept.
    refused = listener.stats()
    check_transfer_stats(server_stats, sent=1000, received=len(PAYLOAD), client=False)
    assert (accepted.msquic_accepted, accepted.msquic_rejected) == (1, 0)
    assert (refused.msquic_accepted, refused.msquic_rejected) == (1, 1)
    assert refused.refused_hook == 1  # pymsquic's own count agrees

    after = pymsquic.perf_counters()
    assert after["conn_created"] >= before["conn_created"] + 2
    assert after["conn_app_reject"] >= before["conn_app_reject"] + 1
    assert after["udp_recv_bytes"] - before["udp_recv_bytes"] >= len(PAYLOAD)
    assert after["app_recv_bytes"] - before["app_recv_bytes"] >= len(PAYLOAD)


def test_perf_counters_names_every_counter_of_the_enum() -> None:
    header = sorted(Path.home().glob(".cache/pymsquic/*/include/msquic.h"))
    if not header:
        pytest.skip("msquic.h not found in the libmsquic cache")
    enum = re.search(r"typedef enum QUIC_PERFORMANCE_COUNTERS {(.*?)}", header[-1].read_text(), re.S)
    assert enum is not None
    names = [n.lower() for n in re.findall(r"QUIC_PERF_COUNTER_(\w+),", enum.group(1)) if n != "MAX"]
    counters = pymsquic.perf_counters()
    assert list(counters) == names  # the enum's order, every one
    assert all(type(v) is int and v >= 0 for v in counters.values())


# ---- a stream's statistics ------------------------------------------------------------

@pytest.mark.parametrize("window", [2048, 1 << 20])
def test_stream_stats_show_the_peers_flow_control(cert_files: tuple[Path, Path], window: int) -> None:
    """aioquic's per-stream window (max_stream_data) decides whether msquic's
    sender ever waits for stream credit: a 2 KiB window blocks a 100 kB stream at
    least a round trip; a 1 MiB one never does."""
    payload = PAYLOAD[:100_000]

    async def main() -> pymsquic.StreamStats:
        server, port = await aioquic_server(cert_files, AioquicStreamingEcho, max_stream_data=window)
        try:
            async with pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN,
                                                credential=pymsquic.Credential.client(verify=False)) as conn:
                stream = conn.open_stream()
                with pytest.raises(pymsquic.StreamError, match="not started"):
                    stream.stats()
                stream.write(payload)  # no FIN: the stream (and its statistics) stays
                assert await asyncio.wait_for(stream.readexactly(len(payload)), 20) == payload
                # Every byte came back, so every byte was sent: the sender waits for the app now.
                stats = stream.stats()
                stream.finish()
                assert await asyncio.wait_for(stream.read(), 20) == b""
                await asyncio.wait_for(stream.wait_closed(), 20)
                with pytest.raises(pymsquic.StreamError, match="closed"):
                    stream.stats()  # gone with the stream
                return stats
        finally:
            server.close()

    stats = asyncio.run(main())
    assert all(type(v) is int and v >= 0 for v in dataclasses.asdict(stats).values())
    if window < len(payload):
        assert stats.stream_blocked_by_flow_control_us > 0
    else:
        assert stats.stream_blocked_by_flow_control_us == 0
    assert stats.stream_blocked_by_id_flow_control_us == 0  # aioquic allows 128 streams
    assert stats.stream_blocked_by_app_us > 0  # since its last byte went out
