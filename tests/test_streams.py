"""Streams and datagrams between pymsquic endpoints: integrity, semantics, errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import random
import threading
import time
from typing import Any, Awaitable, Callable, Iterator

import pytest

import pymsquic

ALPN = "streams"
SETTINGS = pymsquic.Settings(peer_bidi_stream_count=64, peer_unidi_stream_count=16, datagram_receive_enabled=True,
                             idle_timeout_ms=15_000)
CLIENT = pymsquic.Credential.client(verify=False)


async def sha_echo(conn: pymsquic.asyncio.Connection) -> None:
    """Per stream: read all (hashing), answer with the same bytes and FIN."""

    async def one(stream: pymsquic.asyncio.Stream) -> None:
        async for chunk in stream:
            stream.write(chunk)
            await stream.drain()
        stream.finish()

    tasks = [asyncio.create_task(one(s)) async for s in conn]
    await asyncio.gather(*tasks)


async def pump(stream: pymsquic.asyncio.Stream, seed: int, size: int) -> tuple[str, str]:
    """Send ``size`` pseudo-random bytes and read the echo; return (sent, received) SHA-256."""
    rng = random.Random(seed)
    sent, received = hashlib.sha256(), hashlib.sha256()

    async def writer() -> None:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 256 * 1024))
            sent.update(chunk)
            stream.write(chunk)
            await stream.drain()
            left -= len(chunk)
        stream.finish()

    async def reader() -> None:
        async for chunk in stream:
            received.update(chunk)

    await asyncio.gather(writer(), reader())
    return sent.hexdigest(), received.hexdigest()


def run_echo_server(coro_factory, handler=sha_echo, settings=SETTINGS):
    async def main():
        async with pymsquic.serve(handler, "127.0.0.1", 0, alpn=ALPN,
                                  credential=pymsquic.Credential.self_signed(),
                                  settings=settings) as server:
            return await asyncio.wait_for(coro_factory(server.addresses[0][1]), 120)

    return asyncio.run(main())


def test_100_mib_over_20_streams_of_one_connection_intact() -> None:
    async def client(port: int) -> list[tuple[str, str]]:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            return await asyncio.gather(*(pump(conn.open_stream(), i, 5 * 2**20) for i in range(20)))

    results = run_echo_server(client)
    assert len(results) == 20 and all(sent == received for sent, received in results)
    assert len({sent for sent, _ in results}) == 20


def test_100_mib_over_10_connections_intact() -> None:
    async def one_connection(port: int, i: int) -> tuple[str, str]:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            return await pump(conn.open_stream(), 100 + i, 10 * 2**20)

    async def clients(port: int) -> list[tuple[str, str]]:
        return await asyncio.gather(*(one_connection(port, i) for i in range(10)))

    results = run_echo_server(clients)
    assert len(results) == 10 and all(sent == received for sent, received in results)


def test_cancelled_read_loses_no_data() -> None:
    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        stream = await conn.accept_stream()
        await stream.read(1)  # the client's go-ahead
        stream.write(b"first part|")
        await asyncio.sleep(0.2)
        stream.write(b"second part", fin=True)
        await asyncio.wait_for(stream.wait_closed(), 10)

    async def client(port: int) -> bytes:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            stream = conn.open_stream()
            stream.write(b"!", fin=True)
            got = []
            cancelled = 0
            for _ in range(20):  # cancel reads over and over while data arrives
                pending = asyncio.create_task(stream.read(4))
                await asyncio.sleep(0)
                pending.cancel()
                try:
                    got.append(await pending)  # it may have finished before the cancel
                except asyncio.CancelledError:
                    cancelled += 1
                await asyncio.sleep(0.02)
            assert cancelled > 0
            return b"".join(got) + await stream.read()

    assert run_echo_server(client, handler) == b"first part|second part"


def test_stream_semantics() -> None:
    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        async for stream in conn:
            data = await stream.readexactly(4)
            if data == b"stop":
                stream.stop_sending(21)
                stream.finish()  # the client's cue: msquic sends the STOP_SENDING ahead of this FIN
                continue
            data += await stream.read()
            if data == b"exact":
                stream.write(b"12345", fin=True)
            else:
                stream.write(data.upper(), fin=True)
            await asyncio.wait_for(stream.wait_closed(), 10)

    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            s = conn.open_stream()
            assert isinstance(s, pymsquic.asyncio.Stream) and s.is_local and not s.is_unidirectional
            s.write(b"hello", fin=True)
            with pytest.raises(pymsquic.StreamError):
                s.write(b"after fin")
            buf = bytearray(3)
            assert await s.readinto(buf) == 3 and buf == b"HEL"
            assert await s.readexactly(2) == b"LO"
            assert await s.read() == b""  # FIN
            assert s.id is not None and s.id % 4 == 0

            s = conn.open_stream()
            s.write(b"exact", fin=True)
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await s.readexactly(10)
            assert info.value.partial == b"12345"

            s = conn.open_stream()
            s.write(b"stop")
            assert await s.read() == b""  # the server's FIN: its STOP_SENDING came before
            with pytest.raises(pymsquic.StreamStopped) as stopped:
                s.write(b"more")
                await s.drain()
            assert stopped.value.error_code == 21

            uni = conn.open_stream(unidirectional=True)
            assert await uni.read() == b""  # nothing ever comes back on our own uni stream
            with pytest.raises(TypeError):
                uni.write("text")  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                uni.reset(-1)
            uni.reset(3)

    run_echo_server(client, handler)


def test_peer_reset_reaches_the_reader_with_its_code() -> None:
    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        stream = await conn.accept_stream()
        stream.write(b"partial answer")
        await asyncio.sleep(0.1)
        stream.reset(99)
        await asyncio.wait_for(stream.wait_closed(), 10)

    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            s = conn.open_stream()
            s.write(b"go", fin=True)
            with pytest.raises(pymsquic.StreamReset) as info:
                while await s.read(100):
                    pass
            assert info.value.error_code == 99

    run_echo_server(client, handler)


def test_datagrams_queue_drops_the_oldest_and_counts() -> None:
    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        go = await conn.accept_stream()  # the client's go-ahead (a stream: a datagram may be lost)
        assert await go.read() == b"go"
        for i in range(60):
            conn.send_datagram(f"dgram {i:03}".encode())
        # msquic sends queued datagrams ahead of stream data: once the client reads
        # this, every datagram that was not lost has arrived.
        done = conn.open_stream(unidirectional=True)
        done.write(b"sent", fin=True)
        await asyncio.wait_for(conn.wait_closed(), 10)

    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            conn.set_datagram_queue_size(10)
            assert 1000 < conn.max_datagram_size < 65536
            with pytest.raises(ValueError):
                # Larger than any QUIC datagram: max_datagram_size may still grow meanwhile
                # (msquic reports the path's real size after the handshake).
                conn.send_datagram(b"x" * 65536)
            with pytest.raises(TypeError):
                conn.send_datagram("text")  # type: ignore[arg-type]
            conn.open_stream(unidirectional=True).write(b"go", fin=True)
            assert await (await asyncio.wait_for(conn.accept_stream(), 10)).read() == b"sent"
            received = []
            while True:
                try:
                    received.append(await asyncio.wait_for(conn.receive_datagram(), 0.05))
                except (TimeoutError, asyncio.TimeoutError):
                    break
            assert len(received) == 10 and conn.datagrams_dropped >= 40
            assert received == sorted(received) and received[-1] == b"dgram 059" or conn.datagrams_dropped > 50

    run_echo_server(client, handler)


def test_datagrams_refused_when_the_peer_did_not_enable_them() -> None:
    no_datagrams = pymsquic.Settings(peer_bidi_stream_count=4)

    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            assert conn.max_datagram_size == 0
            with pytest.raises(pymsquic.QuicError, match="did not enable datagrams"):
                conn.send_datagram(b"nope")

    run_echo_server(client, settings=no_datagrams)


def test_blocking_streams_in_threads(registration, server_credential) -> None:
    config = pymsquic.Configuration(registration, ALPN, server_credential, SETTINGS)

    def handler(conn: pymsquic.sync.Connection) -> None:
        for stream in conn:
            assert isinstance(stream, pymsquic.sync.Stream)
            stream.write(stream.read()[::-1], fin=True)
            stream.wait_closed(10)

    with pymsquic.sync.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential,
                             settings=SETTINGS, registration=registration) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.addresses[0][1]
        with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS,
                                   registration=registration, open_timeout=10) as conn:
            results = []

            def talk(i: int) -> None:
                stream = conn.open_stream()
                assert isinstance(stream, pymsquic.sync.Stream)
                stream.write(f"message {i}".encode(), fin=True)
                results.append(stream.read(timeout=10))

            threads = [threading.Thread(target=talk, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert sorted(results) == sorted(f"message {i}".encode()[::-1] for i in range(8))
            with conn.open_stream() as stream:
                start = time.monotonic()
                with pytest.raises(TimeoutError):
                    stream.read(timeout=0.2)
                assert time.monotonic() - start < 2
    del config


def test_peer_error_code_and_idle_timeout_reach_python() -> None:
    short_idle = pymsquic.Settings(peer_bidi_stream_count=4, idle_timeout_ms=300)

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        stream = await conn.accept_stream()
        if await stream.read() == b"close with 1234":
            conn.shutdown(1234)
        await asyncio.wait_for(conn.wait_closed(), 10)

    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            conn.open_stream().write(b"close with 1234", fin=True)
            with pytest.raises(pymsquic.ConnectionClosed) as info:
                await asyncio.wait_for(conn.accept_stream(), 10)
            assert info.value.by_peer and info.value.error_code == 1234
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=short_idle) as conn:
            await asyncio.wait_for(conn.wait_closed(), 10)  # nobody says anything: idle timeout
            reason = conn.close_reason
            assert reason.by_transport and reason.status_name == "CONNECTION_IDLE"
            with pytest.raises(pymsquic.ConnectionClosed):
                conn.open_stream()

    run_echo_server(client, handler)


def test_connection_stats() -> None:
    async def client(port: int) -> pymsquic.ConnectionStats:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            await pump(conn.open_stream(), 1, 2**20)
            return conn.stats()

    stats = run_echo_server(client)
    assert stats.stream_bytes_sent >= 2**20 and stats.stream_bytes_received >= 2**20
    assert stats.bytes_sent > stats.stream_bytes_sent and stats.packets_received > 0
    assert 0 < stats.rtt_us < 1_000_000 and stats.handshake_us > 0


def test_stream_protocol_callbacks() -> None:
    events: list[tuple] = []
    half_received, all_lost = asyncio.Event(), asyncio.Event()  # set by the server's protocols

    class Upper(pymsquic.asyncio.StreamProtocol):
        def connection_made(self, stream: pymsquic.asyncio.Stream) -> None:
            self.stream, self.data = stream, b""

        def data_received(self, data: bytes) -> None:
            self.data += data
            if self.data == b"half":
                half_received.set()

        def eof_received(self) -> None:
            events.append(("eof", self.data))
            self.stream.write(self.data.upper(), fin=True)

        def connection_lost(self, exc: Exception | None) -> None:
            events.append(("lost", type(exc).__name__ if exc else None, getattr(exc, "error_code", None)))
            if sum(e[0] == "lost" for e in events) == 21:
                all_lost.set()

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        conn.set_stream_protocol(Upper)
        await asyncio.wait_for(conn.wait_closed(), 10)

    async def client(port: int) -> list[bytes]:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            streams = [conn.open_stream() for _ in range(20)]
            for i, s in enumerate(streams):
                s.write(f"request {i}".encode(), fin=True)
            answers = [await s.read() for s in streams]
            aborted = conn.open_stream()
            aborted.write(b"half")
            await asyncio.wait_for(half_received.wait(), 10)  # a reset now reaches a stream the server has
            aborted.reset(5)
            # Every stream ended on the server before the client closes: a close
            # coming first would end the last ones with ConnectionClosed instead.
            await asyncio.wait_for(all_lost.wait(), 10)
            return answers

    answers = run_echo_server(client, handler)
    assert answers == [f"REQUEST {i}".encode() for i in range(20)]
    assert sorted(e[1] for e in events if e[0] == "eof") == sorted(f"request {i}".encode() for i in range(20))
    lost = [e for e in events if e[0] == "lost"]
    assert lost.count(("lost", None, None)) == 20
    assert ("lost", "StreamReset", 5) in lost


# ---- the stream API of both worlds: readuntil, readline, at_eof, close, abort, with ------------
#
# One test body for both worlds: the client side is the stream under test
# (pymsquic.asyncio or pymsquic.sync) behind WorldStream; the peer is a
# pymsquic.sync server in threads running a scenario the client names in its
# first line, and reports what it saw through a queue.

TIMEOUTS = (TimeoutError, asyncio.TimeoutError)  # asyncio.wait_for's differs from the builtin on 3.10


class WorldStream:
    """Either world's stream with the asyncio stream's awaitable waits, each
    bounded by ``timeout=`` (10 s): a sync stream's wait is its own blocking
    call with ``timeout=``, made in a worker thread (pymsquic refuses to block
    an event loop's thread); an asyncio stream's is awaited under
    asyncio.wait_for. ``async with`` is the stream's own ``async with`` or
    ``with``. Every other attribute is the stream's own."""

    WAITS = frozenset({"read", "readexactly", "readuntil", "readline", "readinto", "drain", "wait_closed"})

    def __init__(self, stream: pymsquic.asyncio.Stream | pymsquic.sync.Stream) -> None:
        self.stream = stream
        self.is_sync = isinstance(stream, pymsquic.sync.Stream)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.stream, name)
        if name not in self.WAITS:
            return method

        async def wait(*args: Any, timeout: float = 10.0, **kwargs: Any) -> Any:
            if self.is_sync:
                return await asyncio.to_thread(method, *args, timeout=timeout, **kwargs)
            return await asyncio.wait_for(method(*args, **kwargs), timeout)

        return wait

    async def __aenter__(self) -> WorldStream:
        if self.is_sync:
            self.stream.__enter__()
        else:
            await self.stream.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.is_sync:
            self.stream.__exit__(*exc)
        else:
            await self.stream.__aexit__(*exc)


def _echo(stream: pymsquic.sync.Stream, results: queue.Queue) -> None:
    stream.write(stream.read(timeout=10), fin=True)  # one write: it arrives in one piece


def _split(stream: pymsquic.sync.Stream, results: queue.Queue) -> None:
    stream.write(b"xabc\r\n\r")
    assert stream.readexactly(2, timeout=10) == b"go"
    stream.write(b"\ndef", fin=True)


def _read_to_the_end(stream: pymsquic.sync.Stream) -> tuple:
    try:
        data = stream.read(timeout=10)
    except pymsquic.StreamReset as exc:
        return ("reset", exc.error_code)
    except Exception as exc:  # reported to the client's assertion, not lost in a handler thread
        return (type(exc).__name__, str(exc))
    return ("read", len(data), hashlib.sha256(data).hexdigest())


def _write_until_stopped(stream: pymsquic.sync.Stream) -> tuple:
    try:
        for _ in range(10_000):  # the client does not read: flow control stops this long before
            stream.write(bytes(4096))
            stream.drain(timeout=5)
    except pymsquic.StreamStopped as exc:
        return ("stopped", exc.error_code)
    except Exception as exc:
        return (type(exc).__name__, str(exc))
    return ("never stopped",)


def _watch(stream: pymsquic.sync.Stream, results: queue.Queue) -> None:
    """Keep our side open (it has sent something), report how the client's side
    ended (all read, or reset), then write until the client stops us."""
    stream.write(b"talk!")
    results.put(_read_to_the_end(stream))
    results.put(_write_until_stopped(stream))


PEER_SCENARIOS = {b"echo\n": _echo, b"split\n": _split, b"watch\n": _watch}


class World:
    """A connection in one world to a peer running PEER_SCENARIOS."""

    def __init__(self, name: str, port: int, results: queue.Queue) -> None:
        self.name, self.port, self._results = name, port, results

    def run(self, scenario: bytes, body: Callable[[WorldStream], Awaitable[None]]) -> None:
        """Open a stream in this world, ask the peer for ``scenario``, run ``body`` with it."""
        async def main() -> None:
            async with contextlib.AsyncExitStack() as stack:
                kwargs: dict[str, Any] = dict(alpn=ALPN, credential=CLIENT, settings=SETTINGS)
                if self.name == "asyncio":
                    conn = await stack.enter_async_context(pymsquic.asyncio.connect("127.0.0.1", self.port, **kwargs))
                else:  # blocking calls, so in a worker thread
                    conn = await asyncio.to_thread(pymsquic.sync.connect, "127.0.0.1", self.port, **kwargs)
                    stack.push_async_callback(asyncio.to_thread, conn.close)
                stream = WorldStream(conn.open_stream())
                stream.write(scenario)
                await body(stream)

        asyncio.run(main())

    async def peer_saw(self) -> tuple:
        """The peer's next report."""
        return await asyncio.to_thread(self._results.get, True, 20)


@pytest.fixture(params=["asyncio", "sync"])
def world(request: pytest.FixtureRequest, server_credential: pymsquic.Credential) -> Iterator[World]:
    results: queue.Queue = queue.Queue()

    def handler(conn: pymsquic.sync.Connection) -> None:
        for stream in conn:
            PEER_SCENARIOS[stream.readline(timeout=10)](stream, results)

    with pymsquic.sync.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential,
                             settings=SETTINGS) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield World(request.param, server.addresses[0][1], results)


def test_readuntil_returns_through_the_separator_then_the_partial_at_fin(world: World) -> None:
    async def body(s: WorldStream) -> None:
        s.write(b"alpha\r\nbeta\r\nno separator", fin=True)
        assert await s.readuntil(b"\r\n") == b"alpha\r\n"
        assert await s.readuntil(b"\r\n") == b"beta\r\n"
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await s.readuntil(b"\r\n")
        assert info.value.partial == b"no separator" and info.value.expected is None
        assert s.at_eof()  # the partial was consumed
        assert await s.read() == b""

    world.run(b"echo\n", body)


@pytest.mark.parametrize("timed_out_first", [False, True], ids=["waiting", "after-a-timeout"])
@pytest.mark.parametrize("method", ["readuntil", "readexactly"])
def test_a_read_split_across_arrivals_gets_every_byte(world: World, method: str, timed_out_first: bool) -> None:
    separator = b"\r\n\r\n"  # longer than 2: a search resumed one byte too late misses it

    async def body(s: WorldStream) -> None:
        def take(**timeout: float) -> Awaitable[bytes]:  # both end with the separator's last byte
            return s.readuntil(separator, **timeout) if method == "readuntil" else s.readexactly(7, **timeout)

        assert await s.readexactly(1) == b"x"  # "xabc\r\n\r" came in one piece: the rest is here now
        if timed_out_first:
            # What the timed-out (asyncio: cancelled) read gathered goes back in front
            # of the stream: the next read finds it there, and the rest on the wire.
            with pytest.raises(TIMEOUTS):
                await take(timeout=0.2)
        s.write(b"go", fin=True)  # only now does the peer send the separator's last byte
        assert await take() == b"abc\r\n\r\n"
        assert await s.read() == b"def"

    world.run(b"split\n", body)


def test_readuntil_refuses_a_separator_or_limit_of_the_wrong_kind(world: World) -> None:
    async def body(s: WorldStream) -> None:
        s.write(b"abc\0\0\0\0\0x\n", fin=True)
        for separator in (5, "x"):  # 5 is not five NUL bytes
            with pytest.raises(TypeError):
                await s.readuntil(separator)
        for limit, error in ((0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError)):
            with pytest.raises(error):
                await s.readuntil(b"x", limit=limit)
        with pytest.raises(ValueError):
            await s.readline(limit=0)
        assert await s.readuntil(b"x") == b"abc\0\0\0\0\0x"  # none of it was consumed
        assert await s.read() == b"\n"

    world.run(b"echo\n", body)


def test_readline_over_many_lines_taken_in_at_once(world: World) -> None:
    # Short lines, one write: most readline() calls find their line in what an
    # earlier one took in. Every seventh is empty.
    lines = [b"\n" if i % 7 == 0 else b"line %d %s\n" % (i, b"-" * (i % 13)) for i in range(3000)]

    async def body(s: WorldStream) -> None:
        s.write(b"".join(lines) + b"no newline", fin=True)
        got = [await s.readline() for _ in lines]
        assert got == lines
        assert await s.readline() == b"no newline"
        assert await s.readline() == b"" and s.at_eof()

    world.run(b"echo\n", body)


def test_readuntil_over_the_limit_leaves_the_data_unread(world: World) -> None:
    async def body(s: WorldStream) -> None:
        s.write(b"0123456789|tail\n", fin=True)
        with pytest.raises(asyncio.LimitOverrunError) as info:
            await s.readuntil(b"|", limit=4)  # found, but ends beyond the limit
        assert info.value.consumed == 10
        with pytest.raises(asyncio.LimitOverrunError):
            await s.readuntil(b"#", limit=4)  # not found within the limit
        with pytest.raises(ValueError):
            await s.readline(limit=4)  # readline() says it as a ValueError
        assert not s.at_eof()  # all of it arrived with the FIN, and none was read
        assert await s.readuntil(b"|", limit=11) == b"0123456789|"
        assert await s.readline() == b"tail\n"
        assert await s.readline() == b"" and s.at_eof()

    world.run(b"echo\n", body)


def test_readline_and_at_eof(world: World) -> None:
    async def body(s: WorldStream) -> None:
        s.write(b"one\ntwo\n\nlast", fin=True)
        assert not s.at_eof()
        assert await s.readline() == b"one\n"
        assert not s.at_eof()  # the FIN came with the data, but bytes are left
        assert [await s.readline() for _ in range(3)] == [b"two\n", b"\n", b"last"]
        assert s.at_eof()
        assert await s.readline() == b"" and await s.read() == b""

    world.run(b"echo\n", body)


@pytest.mark.parametrize("how", ["close", "with"])
def test_close_finishes_gracefully(world: World, how: str) -> None:
    payload = random.Random(5).randbytes(3 * 2**20)

    async def body(s: WorldStream) -> None:
        assert await s.readexactly(5) == b"talk!"  # the peer is still sending to us
        if how == "close":
            s.write(payload)  # queued, far from delivered: close() must not drop it
            s.close()
        else:
            async with s:
                s.write(payload)
        assert await world.peer_saw() == ("read", len(payload), hashlib.sha256(payload).hexdigest())
        assert await world.peer_saw() == ("stopped", 0)  # asked to stop, with 0
        await s.wait_closed()

    world.run(b"watch\n", body)


@pytest.mark.parametrize("how", ["abort", "exception"])
def test_abort_resets_both_ways(world: World, how: str) -> None:
    async def body(s: WorldStream) -> None:
        assert await s.readexactly(5) == b"talk!"  # the peer is still sending to us
        s.write(b"dropped or not")
        if how == "abort":
            s.abort(77)
            code = 77
        else:
            with pytest.raises(KeyError):
                async with s:
                    raise KeyError("leaving the block by an exception")
            code = pymsquic.EXCEPTION_ERROR_CODE
        assert await world.peer_saw() == ("reset", code)
        assert await world.peer_saw() == ("stopped", code)
        with pytest.raises(pymsquic.StreamError):
            s.write(b"after the abort")
        await s.wait_closed()

    world.run(b"watch\n", body)
