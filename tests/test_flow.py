"""Flow of written data, in both worlds, over loopback (issue 8, "Must show").

Connection.wait_sent(); Stream.set_write_limit(), bytes_in_flight, write_limit
and drain(); Stream.writelines(); the connection logger. The client is the
world under test; the peer is the same in both: a blocking listener and a
thread reading each stream to its FIN, once the test lets it read.
"""

from __future__ import annotations

import array
import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

import pymsquic

from worlds import WAIT, World, worlds

T = TypeVar("T")

PAYLOAD = bytes(range(256)) * (16 << 10)  # 4 MiB: far beyond what the peer takes without reading


class Peer:
    """A thread accepting one connection on ``listener`` and reading each of its
    streams to FIN, in turn, once ``reading`` is set (at once with ``read=True``)."""

    def __init__(self, listener: pymsquic.sync.Listener, read: bool = True) -> None:
        self.listener = listener
        self.port: int = listener.local_address[1]  # type: ignore[index]
        self.accepted = threading.Event()
        self.reading = threading.Event()
        if read:
            self.reading.set()
        self.conn: pymsquic.sync.Connection | None = None
        self.received: list[bytes] = []
        self.reads = threading.Semaphore(0)  # released once per stream read to its FIN
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-peer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.listener.accept(timeout=WAIT) as conn:
                self.conn = conn
                self.accepted.set()
                for stream in conn:  # until the client closes with 0
                    assert self.reading.wait(WAIT)
                    self.received.append(stream.read(timeout=WAIT))
                    self.reads.release()
        except BaseException as exc:  # noqa: BLE001  # reported by join()
            self.error = exc

    def client(self, w: World, registration: pymsquic.Registration,
               body: Callable[[Any], Coroutine[Any, Any, T]], reads: int = 1) -> T:
        """``await body(conn)`` with a client of world ``w`` connected to the peer;
        the client is closed (gracefully, with 0) after it, once the peer has read
        ``reads`` streams to their FIN. Not before: closing a QUIC connection
        discards what the peer's msquic acknowledged but its application has not
        read yet (see ``Connection.close()``)."""
        async def run() -> T:
            conn = await w.connect(self.port, registration)
            try:
                result = await body(conn)
                for _ in range(reads):  # blocks an event loop briefly: msquic's threads carry on
                    if not self.reads.acquire(timeout=WAIT):
                        raise TimeoutError(f"the peer read {len(self.received)} streams, not {reads}")
                return result
            finally:
                await w.call(conn.close)

        return w.run(run())

    def connection(self) -> pymsquic.sync.Connection:
        assert self.accepted.wait(WAIT) and self.conn is not None, self.error
        return self.conn

    def join(self) -> list[bytes]:
        """What the peer read, stream by stream, once the client has closed."""
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the peer still reads"
        if self.error is not None:
            raise self.error
        return self.received


# ---- wait_sent -------------------------------------------------------------------------

@worlds
def test_wait_sent_returns_once_the_peer_has_received_everything(registration, listener, w: World) -> None:
    peer = Peer(listener, read=False)

    async def main(conn: Any) -> None:
        stream = conn.open_stream()
        stream.write(PAYLOAD, fin=True)
        with pytest.raises(TimeoutError):  # the peer does not read: it cannot have it all
            await w.wait(conn.wait_sent, timeout=0.5)
        assert peer.connection().stats().stream_bytes_received < len(PAYLOAD)
        peer.reading.set()
        await w.wait(conn.wait_sent)
        # Everything, FIN included, was acknowledged: the peer's msquic holds every byte.
        assert peer.connection().stats().stream_bytes_received >= len(PAYLOAD)

    peer.client(w, registration, main)
    assert peer.join() == [PAYLOAD]


@worlds
def test_wait_sent_does_not_wait_for_streams_never_written(registration, listener, w: World) -> None:
    # A stream never written to has nothing to send, yet close() waited for it
    # until close_timeout: a server that never answered a request.
    peer = Peer(listener)

    async def main(conn: Any) -> Any:
        idle = conn.open_stream()  # opened, never written (and kept: a dropped stream is reset)
        stream = conn.open_stream()
        stream.write(b"request", fin=True)
        await w.wait(conn.wait_sent)
        assert idle.bytes_in_flight == 0
        assert peer.reads.acquire(timeout=WAIT), peer.error
        peer.reads.release()  # for peer.client()
        # The peer read the request and never answered it: nothing to send on its side.
        outcome: list[BaseException | None] = []

        def server_wait_sent() -> None:
            try:
                peer.connection().wait_sent(WAIT)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001  # reported below
                outcome.append(exc)

        waiter = threading.Thread(target=server_wait_sent)
        waiter.start()
        waiter.join()  # blocks an event loop briefly: the peer's msquic carries on
        assert outcome == [None]
        return idle

    idle = peer.client(w, registration, main)
    assert peer.join() == [b"request"]
    assert idle.bytes_in_flight == 0  # never started, never seen by the peer


# ---- set_write_limit, bytes_in_flight, write_limit, drain ----------------------------------

@worlds
def test_drain_waits_while_more_than_the_write_limit_is_in_flight(registration, listener, w: World) -> None:
    peer = Peer(listener, read=False)

    async def main(conn: Any) -> None:
        stream = conn.open_stream()
        assert stream.bytes_in_flight == 0
        stream.set_write_limit(len(PAYLOAD))
        assert stream.write_limit == len(PAYLOAD)
        stream.write(PAYLOAD, fin=True)
        assert stream.bytes_in_flight == len(PAYLOAD)  # one write, completed only once acknowledged
        await w.wait(stream.drain)  # at the limit: no wait, though the peer does not read

        stream.set_write_limit(4096)
        assert stream.write_limit == 4096
        with pytest.raises(TimeoutError):  # the peer does not read: nothing can drain
            await w.wait(stream.drain, timeout=0.5)
        assert stream.bytes_in_flight > stream.write_limit
        peer.reading.set()
        await w.wait(stream.drain)
        assert stream.bytes_in_flight <= 4096

    peer.client(w, registration, main)
    assert peer.join() == [PAYLOAD]


@worlds
def test_set_write_limit_none_restores_msquics_value(registration, listener, w: World) -> None:
    peer = Peer(listener)

    async def main(conn: Any) -> None:
        stream = conn.open_stream()
        before = stream.write_limit  # nothing reported yet: pymsquic's default
        stream.set_write_limit(1)
        assert stream.write_limit == 1
        stream.set_write_limit(None)
        assert stream.write_limit == before

        stream.set_write_limit(4096)
        stream.write(PAYLOAD, fin=True)
        await w.wait(conn.wait_sent)  # all acknowledged: msquic reports nothing more now
        reported = stream.write_limit
        assert reported == 4096  # msquic's reports while data flowed did not change the fixed limit
        stream.set_write_limit(None)
        assert stream.write_limit > 4096  # the last of them
        stream.set_write_limit(2**64 - 1)
        assert stream.write_limit == 2**64 - 1
        stream.set_write_limit(None)
        assert stream.write_limit > 4096

    peer.client(w, registration, main)
    assert peer.join() == [PAYLOAD]


@worlds
def test_set_write_limit_refuses_bad_values(registration, listener, w: World) -> None:
    peer = Peer(listener)

    async def main(conn: Any) -> None:
        stream = conn.open_stream()
        before = stream.write_limit
        for bad in (0, -1, 2**64):
            with pytest.raises(ValueError):
                stream.set_write_limit(bad)
        for wrong in ("4096", 4096.0, True, b"1"):
            with pytest.raises(TypeError):
                stream.set_write_limit(wrong)  # type: ignore[arg-type]
        assert stream.write_limit == before  # nothing was applied
        stream.write(b"still fine", fin=True)

    peer.client(w, registration, main)
    assert peer.join() == [b"still fine"]


# ---- writelines ------------------------------------------------------------------------

@worlds
def test_writelines_sends_every_byte_in_order(registration, listener, w: World) -> None:
    peer = Peer(listener)
    # Many buffers of many kinds and sizes, empty ones included; each one distinct.
    lines: list[Any] = []
    for i in range(600):
        chunk = i.to_bytes(2, "big") * (i % 97)
        lines.append((bytes, bytearray, memoryview, lambda c: array.array("B", c))[i % 4](chunk))
    expected = b"".join(bytes(line) for line in lines)

    async def main(conn: Any) -> None:
        stream = conn.open_stream()
        stream.writelines(iter(lines))  # any iterable
        stream.writelines([PAYLOAD[:70_000], b"", PAYLOAD[70_000:140_000]])
        stream.finish()
        failing = conn.open_stream()
        for bad in ([b"first", "text", b"last"], [b"first", 42], [b"first", None]):
            with pytest.raises(TypeError):
                failing.writelines(bad)  # type: ignore[arg-type]
        failing.writelines(line for line in [b"only ", b"this"])
        failing.finish()

    peer.client(w, registration, main, reads=2)
    # Both streams, one after the other, the first of them complete and in order;
    # of the second, nothing that a TypeError stopped.
    assert peer.join() == [expected + PAYLOAD[:140_000], b"only this"]


# ---- the connection logger -----------------------------------------------------------------

@worlds
def test_connection_logger_carries_the_connection_id(registration, listener, w: World,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pymsquic")
    peer = Peer(listener)

    async def main(conn: Any) -> tuple[int, int]:
        server_conn = peer.connection()
        conn.logger.info("said by the test")
        conn.shutdown(7)
        return conn.id, server_conn.id

    client_id, server_id = peer.client(w, registration, main, reads=0)
    with pytest.raises(pymsquic.ConnectionClosed):  # closed with 7, not cleanly: the peer's iteration raises
        peer.join()
    assert client_id != server_id
    records: dict[int, list[str]] = {client_id: [], server_id: []}
    for record in caplog.records:
        connection_id = getattr(record, "connection_id", None)
        if connection_id in records:
            message = record.getMessage()
            assert message.startswith(f"[conn {connection_id}] "), message
            records[connection_id].append(message)
    client, server = records[client_id], records[server_id]
    assert any("handshake done" in m for m in client), client
    assert any("handshake done" in m for m in server), server
    assert any("said by the test" in m for m in client), client
    # The close line says who closed and with which code.
    assert any("closed:" in m and "closed locally" in m and "error 7" in m for m in client), client
    assert any("closed:" in m and "closed by peer" in m and "error 7" in m for m in server), server


def test_stream_protocol_pause_reading_holds_data_back_until_resumed(registration: pymsquic.Registration) -> None:
    """A protocol that cannot keep up pauses its input: msquic then keeps the
    bytes and flow-controls the sender, and resume_reading() delivers them all."""
    class Pausing(pymsquic.asyncio.StreamProtocol):
        def connection_made(self, stream: pymsquic.asyncio.Stream) -> None:
            self.stream = stream
            self.chunks: list[bytes] = []
            self.eof = asyncio.get_running_loop().create_future()
            protocols.append(self)

        def data_received(self, data: bytes) -> None:
            self.chunks.append(data)
            self.stream.pause_reading()  # one chunk, then nothing until resumed

        def eof_received(self) -> None:
            self.eof.set_result(None)

    protocols: list[Pausing] = []

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        conn.set_stream_protocol(Pausing)
        await conn.wait_closed()

    async def main() -> None:
        async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn="pause", registration=registration,
                                          credential=pymsquic.Credential.self_signed()) as server:
            async with pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn="pause",
                                                registration=registration,
                                                credential=pymsquic.Credential.client(verify=False)) as conn:
                conn.open_stream().write(PAYLOAD, fin=True)
                # Paused after its first chunk, the server takes no more: the stream's
                # flow-control window stops the sender short of the 4 MiB.
                with pytest.raises((TimeoutError, asyncio.TimeoutError)):
                    await asyncio.wait_for(conn.wait_sent(), 0.5)
                (protocol,) = protocols
                held = b"".join(protocol.chunks)
                assert 0 < len(held) < len(PAYLOAD)
                protocol.data_received = protocol.chunks.append  # type: ignore[method-assign]  # no more pausing
                protocol.stream.resume_reading()
                await asyncio.wait_for(protocol.eof, WAIT)
                assert b"".join(protocol.chunks) == PAYLOAD

    asyncio.run(main())
