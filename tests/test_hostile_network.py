"""A hostile network: replayed client Initials flooding a listener, and one bulk
stream trying to starve the others on its connection.

The flood is one real client Initial (made by aioquic's QuicConnection, so it
carries a real TLS ClientHello), replayed from many UDP sockets: every source
port makes msquic start a new server handshake that nobody will ever finish.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

import pymsquic

from conftest import ALPN


def client_initial(port: int, alpn: str = ALPN) -> bytes:
    """One real client Initial datagram (a ClientHello padded to 1200 bytes)."""
    config = QuicConfiguration(is_client=True, alpn_protocols=[alpn], verify_mode=ssl.CERT_NONE,
                               server_name="localhost")
    quic = QuicConnection(configuration=config)
    quic.connect(("127.0.0.1", port), now=time.time())
    datagram, _ = quic.datagrams_to_send(now=time.time())[0]
    return datagram


class Flood:
    """Replays one datagram from ``count`` sockets, each bound to its own port.

    The sockets stay open (an attacker's, or spoofed addresses, never answer),
    so msquic keeps each handshake until its handshake idle timeout. With
    ``batch``, sends that many at a time and waits for their answers before the
    next batch."""

    def __init__(self, datagram: bytes, port: int, count: int, batch: int | None = None) -> None:
        self.sockets = []
        self.replies: list[bytes] = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            self.sockets.append(sock)
        batch = batch or count
        for i in range(0, count, batch):
            for sock in self.sockets[i:i + batch]:
                sock.sendto(datagram, ("127.0.0.1", port))
            if batch < count:
                self._receive(self.sockets[i:i + batch])

    def _receive(self, sockets: list[socket.socket], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for sock in sockets:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            self.replies.append(sock.recv(65536))

    def first_replies(self) -> list[bytes]:
        """Waits for the server's first answer on every socket (handshake flight,
        Retry or refusal): then msquic has processed every replayed Initial."""
        if len(self.replies) < len(self.sockets):
            self._receive(self.sockets[len(self.replies):])
        return self.replies

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def flood_settings() -> pymsquic.Settings:
    return pymsquic.Settings(idle_timeout_ms=10_000, peer_bidi_stream_count=4)


def connect_timed(registration: pymsquic.Registration, port: int, timeout: float) -> float:
    """Connects a pymsquic client; returns how long the handshake took."""
    config = pymsquic.Configuration(registration, ALPN, pymsquic.Credential.client(verify=False))
    start = time.monotonic()
    with pymsquic.sync.connect("127.0.0.1", port, configuration=config, open_timeout=timeout):
        elapsed = time.monotonic() - start
    config.close()
    return elapsed


@pytest.fixture
def flood_listener(registration: pymsquic.Registration,
                   server_config: pymsquic.Configuration) -> Iterator[pymsquic.sync.Listener]:
    with pymsquic.sync.Listener(registration, server_config, backlog=128) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        yield lst


def test_replayed_initial_flood_does_not_lock_out_a_client(registration, flood_listener, never_retry) -> None:
    port = flood_listener.local_address[1]
    flood = Flood(client_initial(port), port, 300)  # more than the backlog
    try:
        flood.first_replies()
        stats = flood_listener.stats()
        # Unfinished handshakes are not connections waiting for accept().
        assert stats.accepted == 0 and stats.queued == 0
        assert stats.handshakes > 128 and stats.refused_backlog == 0
        elapsed = connect_timed(registration, port, timeout=5.0)
        print(f"legitimate client connected in {elapsed * 1000:.1f} ms beside "
              f"{stats.handshakes} flooded handshakes")
        conn = flood_listener.accept(timeout=5)
        conn.close()
        assert flood_listener.stats().accepted == 1
    finally:
        flood.close()


async def wait_for_stats(listener: pymsquic.sync.Listener, done: Callable[[pymsquic.ListenerStats], bool],
                         timeout: float = 20.0) -> pymsquic.ListenerStats:
    """Polls listener.stats() until done(stats) (stats have no event of their own)."""
    deadline = time.monotonic() + timeout
    while not done(listener.stats()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"stats stayed at {listener.stats()}")
        await asyncio.sleep(0.02)
    return listener.stats()


def test_max_handshakes_bounds_handshakes_in_progress(registration, server_credential, never_retry) -> None:
    settings = pymsquic.Settings(handshake_idle_timeout_ms=1500, peer_bidi_stream_count=4)
    with pymsquic.Configuration(registration, ALPN, server_credential, settings) as config, \
            pymsquic.sync.Listener(registration, config, max_handshakes=20) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        port = lst.local_address[1]
        flood = Flood(client_initial(port), port, 60)
        try:
            flood.first_replies()
            stats = lst.stats()
            assert stats.handshakes == 20 and stats.refused_handshakes == 40
            assert stats.accepted == 0 and stats.refused_backlog == 0
            # Documented: beyond max_handshakes a client is refused...
            with pytest.raises(pymsquic.ConnectionClosed):
                connect_timed(registration, port, timeout=5.0)
            # ...until the flooded handshakes time out, and count as failed.
            stats = asyncio.run(wait_for_stats(lst, lambda s: s.handshakes == 0))
            assert stats.failed == 20 and stats.accepted == 0
            connect_timed(registration, port, timeout=5.0)
            lst.accept(timeout=5).close()
            assert lst.stats().accepted == 1
        finally:
            flood.close()


def retry_limit(fraction: float) -> Iterator[None]:
    before = pymsquic.retry_memory_limit()
    pymsquic.set_retry_memory_limit(fraction)
    try:
        yield
    finally:
        pymsquic.set_retry_memory_limit(before)


@pytest.fixture
def always_retry() -> Iterator[None]:
    yield from retry_limit(0)


@pytest.fixture
def never_retry() -> Iterator[None]:
    # msquic retries beyond about 0.1% of RAM in handshakes (~35 KB each): a
    # small machine would answer part of the flood with Retries. The listener
    # must hold without that help.
    yield from retry_limit(1)


def test_stateless_retry_answers_a_flood_without_handshakes(registration, flood_listener, always_retry) -> None:
    port = flood_listener.local_address[1]
    # msquic drops stateless work beyond 16 queued per worker and 100 per
    # binding within 100 ms (its own defence against Retry floods): send in
    # batches it answers in full, so that every packet is accounted for.
    flood = Flood(client_initial(port), port, 80, batch=10)
    try:
        replies = flood.first_replies()
        # A QUIC v1 Retry: long header, fixed bit, type 3.
        assert all(reply[0] & 0xF0 == 0xF0 for reply in replies)
        assert flood_listener.stats().handshakes == 0
        elapsed = connect_timed(registration, port, timeout=5.0)  # through a Retry
        print(f"legitimate client connected through a Retry in {elapsed * 1000:.1f} ms")
        flood_listener.accept(timeout=5).close()
        stats = flood_listener.stats()
        assert stats.accepted == 1 and stats.handshakes == 0 and stats.failed == 0
    finally:
        flood.close()


def test_retry_memory_limit_round_trips_and_checks_its_argument(always_retry) -> None:
    assert pymsquic.retry_memory_limit() == 0
    pymsquic.set_retry_memory_limit(0.5)
    assert abs(pymsquic.retry_memory_limit() - 0.5) < 1e-4
    with pytest.raises(ValueError):
        pymsquic.set_retry_memory_limit(1.5)
    with pytest.raises(TypeError):
        pymsquic.set_retry_memory_limit("0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize("listener_class", [pymsquic.sync.Listener, pymsquic.asyncio.Listener])
def test_max_handshakes_is_checked(registration, server_config, listener_class) -> None:
    with pytest.raises(ValueError):
        listener_class(registration, server_config, max_handshakes=0)
    with pytest.raises(TypeError):
        listener_class(registration, server_config, max_handshakes=1.5)  # type: ignore[arg-type]


# ---- fairness: one bulk stream beside small request/responses ----------------

FAIR_ALPN = "fairness"
BLOCK = bytes(256 * 1024)


async def fairness_handler(conn: pymsquic.asyncio.Connection) -> None:
    """b"D": write until the peer stops us; b"U": read until reset/FIN; b"E": echo to FIN."""

    async def one(stream: pymsquic.asyncio.Stream) -> None:
        try:
            kind = await stream.readexactly(1)
            if kind == b"D":
                while True:
                    stream.write(BLOCK)
                    await stream.drain()
            elif kind == b"U":
                while await stream.read(1 << 20):
                    pass
            else:
                stream.write(await stream.read(), fin=True)
        except (pymsquic.StreamError, pymsquic.ConnectionClosed):
            pass  # the bulk stream ends by a stop or a reset

    tasks = [asyncio.create_task(one(s)) async for s in conn]
    await asyncio.gather(*tasks)


async def small_exchanges_beside_bulk(port: int, directions: tuple[str, ...], count: int, *,
                                      settings: pymsquic.Settings | None = None,
                                      priority: int | None = None) -> list[float]:
    """Opens a bulk stream saturating each of ``directions`` ("download",
    "upload"), then makes ``count`` 1 KiB request/responses one after the other
    on the same connection; returns their round-trip times."""
    async with pymsquic.connect("127.0.0.1", port, alpn=FAIR_ALPN, settings=settings,
                                credential=pymsquic.Credential.client(verify=False), close_timeout=1.0) as conn:

        async def download(bulk: pymsquic.asyncio.Stream, saturating: asyncio.Event) -> None:
            moved = 0
            bulk.write(b"D", fin=True)
            while chunk := await bulk.read(1 << 20):
                moved += len(chunk)
                if moved >= 8 << 20:
                    saturating.set()

        async def upload(bulk: pymsquic.asyncio.Stream, saturating: asyncio.Event) -> None:
            moved = 0
            bulk.write(b"U")
            while True:
                bulk.write(BLOCK)
                await bulk.drain()
                moved += len(BLOCK)
                if moved >= 8 << 20:
                    saturating.set()

        bulks = []
        for direction in directions:
            bulk, saturating = conn.open_stream(), asyncio.Event()
            pump = asyncio.create_task((download if direction == "download" else upload)(bulk, saturating))
            bulks.append((direction, bulk, pump))
            await asyncio.wait_for(saturating.wait(), 20)
        times = []
        payload = bytes(range(256)) * 4
        for _ in range(count):
            start = time.monotonic()
            stream = conn.open_stream()
            if priority is not None:
                stream.priority = priority
            stream.write(b"E" + payload, fin=True)
            assert await stream.read() == payload
            times.append(time.monotonic() - start)
        for direction, bulk, pump in bulks:
            assert not pump.done()  # the bulk stream was still saturating throughout
            pump.cancel()
            if direction == "download":
                bulk.stop_sending(1)
            else:
                bulk.reset(1)
        return times


def run_fairness(directions: tuple[str, ...], count: int = 50, timeout: float = 10.0,
                 **kwargs: Any) -> list[float]:
    async def main() -> list[float]:
        async with await pymsquic.serve(fairness_handler, "127.0.0.1", 0, alpn=FAIR_ALPN,
                                        credential=pymsquic.Credential.self_signed(), close_timeout=1.0) as server:
            port = server.addresses[0][1]
            return await asyncio.wait_for(small_exchanges_beside_bulk(port, directions, count, **kwargs), timeout)

    return asyncio.run(main())


def test_small_requests_are_not_starved_by_bulk_streams() -> None:
    # msquic schedules FIFO by default: the 1 KiB exchanges waited behind a bulk
    # stream for as long as it had data (seen: >120 s), so the wait_for in
    # run_fairness timed out. serve()/connect() now schedule round-robin.
    times = run_fairness(("download", "upload"))
    times.sort()
    print(f"small request/response beside saturating streams both ways: "
          f"median {times[len(times) // 2] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms")


def test_stream_priority_lets_small_requests_past_a_fifo_bulk_upload() -> None:
    fifo = pymsquic.Settings(peer_bidi_stream_count=128, stream_scheduling="fifo")
    times = run_fairness(("upload",), settings=fifo, priority=0xFFFF)
    print(f"FIFO with priority 65535: median {sorted(times)[len(times) // 2] * 1000:.1f} ms")


def test_stream_scheduling_and_priority_api() -> None:
    seen: list[str] = []

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        seen.append(conn.stream_scheduling)
        async for stream in conn:
            stream.write(await stream.read(), fin=True)

    async def main() -> None:
        async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn=FAIR_ALPN,
                                        credential=pymsquic.Credential.self_signed()) as server:
            port = server.addresses[0][1]
            client = pymsquic.Credential.client(verify=False)
            async with pymsquic.connect("127.0.0.1", port, alpn=FAIR_ALPN, credential=client) as conn:
                assert conn.stream_scheduling == "round_robin"
                conn.stream_scheduling = "fifo"
                assert conn.stream_scheduling == "fifo"
                with pytest.raises(ValueError):
                    conn.stream_scheduling = "lifo"
                with pytest.raises(TypeError):
                    conn.stream_scheduling = 1  # type: ignore[assignment]
                stream = conn.open_stream()
                assert stream.priority == 0x7FFF
                stream.priority = 5  # before the stream started
                assert stream.priority == 5
                stream.write(b"x", fin=True)
                stream.priority = 0xFFFF  # while sending
                assert stream.priority == 0xFFFF
                assert await stream.read() == b"x"
                for bad, error in ((-1, ValueError), (0x10000, ValueError), (1.0, TypeError), (True, TypeError)):
                    with pytest.raises(error):
                        stream.priority = bad  # type: ignore[assignment]
            fifo = pymsquic.Settings(stream_scheduling="fifo")
            async with pymsquic.connect("127.0.0.1", port, alpn=FAIR_ALPN, credential=client, settings=fifo) as conn:
                assert conn.stream_scheduling == "fifo"
        assert seen == ["round_robin", "round_robin"]

    asyncio.run(main())
    with pytest.raises(ValueError):
        pymsquic.Settings(stream_scheduling="lifo")


@pytest.mark.slow  # the soak harness: bench-like, run once (under 3.11)
def test_soak_runs_briefly() -> None:
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--connections", "40", "--parallel", "4",
                           "--flood", "100", "--max-seconds", "60"], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "40 connections: server RSS" in proc.stdout and "0 failed" in proc.stdout
    assert "flood of 100 replayed Initials: a legitimate client connected in" in proc.stdout


def test_stop_ends_half_open_handshakes(registration, flood_listener, never_retry) -> None:
    # Without this, accept() after stop() kept answering "wait" until the flood's
    # handshakes timed out (10 s): a server could not close under a flood.
    port = flood_listener.local_address[1]
    flood = Flood(client_initial(port), port, 50)
    try:
        flood.first_replies()
        assert flood_listener.stats().handshakes == 50
        flood_listener.stop()
        with pytest.raises(pymsquic.Finished):
            flood_listener.accept(timeout=3)
        stats = flood_listener.stats()
        assert stats.handshakes == 0 and stats.refused_other == 50 and stats.accepted == 0
    finally:
        flood.close()
