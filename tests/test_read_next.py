"""Fewer native calls and loop wakes per request (issue 11, "what the profile
shows"): the consume and the read that also tell what the next read would find
(pmq_stream_consume_next, pmq_stream_read_into_next), so a read sees the data
and the FIN together, and no wake-ups of the event loop for changes nobody waits
for (the last written bytes acknowledged, a stream's send side done, the peer's
MAX_STREAMS).

Real msquic over 127.0.0.1, pymsquic on both ends; the native functions are
called through the streams' own handles.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable

import pymsquic
from pymsquic._msquic import ffi, lib

ALPN = "read-next"
SETTINGS = pymsquic.Settings(peer_bidi_stream_count=64, idle_timeout_ms=20_000)
CLIENT = pymsquic.Credential.client(verify=False)
CREDENTIAL = pymsquic.Credential.self_signed()


def run(handler: Callable[[pymsquic.asyncio.Connection], Awaitable[None]],
        client: Callable[[pymsquic.asyncio.Connection], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with pymsquic.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=CREDENTIAL,
                                  settings=SETTINGS) as server:
            conn = await pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                                  credential=CLIENT, settings=SETTINGS, open_timeout=10)
            try:
                return await asyncio.wait_for(client(conn), 60)
            finally:
                await conn.close()

    return asyncio.run(main())


def answer(reply: bytes, fin: bool = True) -> Callable[[pymsquic.asyncio.Connection], Awaitable[None]]:
    """Each stream: read its request to FIN, then write ``reply`` (with FIN unless told)."""
    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        async for stream in conn:
            await stream.read()
            stream.write(reply, fin=fin)
            if not fin:
                await stream.wait_closed()  # the client resets or the connection ends
    return handler


async def arrived(stream: pymsquic.asyncio.Stream, n: int) -> None:
    """Until ``n`` bytes are with msquic, unread. The replies here are one small
    write with FIN: its bytes and the FIN arrive in one packet, one receive."""
    await stream._wait(lambda: True if stream._state().readable >= n else None, "arrived()")


def peek(stream: pymsquic._core.stream.StreamCore) -> tuple[int, bytes]:
    data = ffi.new("uint8_t **")
    size = ffi.new("uint64_t *")
    status = lib.pmq_stream_peek(stream._stream, data, size)
    return status, (ffi.buffer(data[0], size[0])[:] if status == lib.PMQ_READ_DATA else b"")


def test_consume_next_reports_the_fin_with_the_last_bytes() -> None:
    async def client(conn: pymsquic.asyncio.Connection) -> list[Any]:
        stream = conn.open_stream()
        stream.write(b"q", fin=True)
        await stream.read(1)  # the reply's first byte: the rest (and the FIN) come in the same packet
        status, chunk = peek(stream)
        assert status == lib.PMQ_READ_DATA
        partial = lib.pmq_stream_consume_next(stream._stream, 2)
        status, rest = peek(stream)
        last = lib.pmq_stream_consume_next(stream._stream, len(rest))
        again = lib.pmq_stream_consume_next(stream._stream, 5)  # no peek open: nothing is taken
        return [chunk[:2] + rest, partial, last, again, stream.at_eof(), await stream.read()]

    data, partial, last, again, at_eof, after = run(answer(b"0123456789"), client)
    assert data == b"123456789"
    assert partial == lib.PMQ_READ_DATA  # bytes still unread
    assert last == lib.PMQ_READ_EOF and again == lib.PMQ_READ_EOF
    assert at_eof and after == b""


def test_consume_takes_no_more_than_the_peek_showed() -> None:
    # A bad count (more than peeked) must not run the stream's accounting past
    # what arrived: the rest stays readable, nothing is lost or read twice.
    async def client(conn: pymsquic.asyncio.Connection) -> list[Any]:
        stream = conn.open_stream()
        stream.write(b"q", fin=True)
        first = await stream.read(3)
        status, chunk = peek(stream)
        took = lib.pmq_stream_consume_next(stream._stream, 1 << 40)
        return [first + chunk, status, took, await stream.read(), stream._state().bytes_read]

    data, status, took, after, bytes_read = run(answer(b"abcdefgh"), client)
    assert (data, status, took, after, bytes_read) == (b"abcdefgh", lib.PMQ_READ_DATA, lib.PMQ_READ_EOF, b"", 8)


def test_read_into_next_without_a_fin_and_after_a_reset() -> None:
    async def client(conn: pymsquic.asyncio.Connection) -> list[Any]:
        stream = conn.open_stream()
        stream.write(b"q", fin=True)
        buf = bytearray(64)
        n = await stream.readinto(memoryview(buf)[:1])  # waits for the reply
        head = bytes(buf[:1])
        copied = ffi.new("uint64_t *")
        after = ffi.new("int *")
        target = ffi.from_buffer(buf, require_writable=True)
        status = lib.pmq_stream_read_into_next(stream._stream, target, 64, copied, after)
        got = head + bytes(buf[:copied[0]])
        first = (status, after[0])
        stream.stop_sending(7)  # we read no more: a read now reports that, not data
        status2 = lib.pmq_stream_read_into_next(stream._stream, target, 64, copied, after)
        return [n, got, first, (status2, after[0], copied[0])]

    n, got, first, second = run(answer(b"xyz", fin=False), client)
    assert n == 1 and got == b"xyz"  # one write: its bytes arrive together
    # the bytes of the reply, then nothing yet: no FIN was sent
    assert first == (lib.PMQ_READ_DATA, lib.PMQ_READ_WOULD_BLOCK)
    assert second == (lib.PMQ_READ_ABORTED, lib.PMQ_READ_ABORTED, 0)


def test_read_into_next_on_a_closed_connection() -> None:
    async def client(conn: pymsquic.asyncio.Connection) -> list[Any]:
        stream = conn.open_stream()
        stream.write(b"q")  # no FIN: the server never answers
        await asyncio.sleep(0)
        await conn.close()
        await stream.wait_closed()
        copied = ffi.new("uint64_t *")
        after = ffi.new("int *")
        buf = bytearray(8)
        status = lib.pmq_stream_read_into_next(stream._stream, ffi.from_buffer(buf, require_writable=True), 8,
                                               copied, after)
        consumed = lib.pmq_stream_consume_next(stream._stream, 3)
        try:
            await stream.read()
        except pymsquic.QuicError as exc:
            return [status, after[0], copied[0], consumed, type(exc)]
        return [status, after[0], copied[0], consumed, None]

    async def silent(conn: pymsquic.asyncio.Connection) -> None:
        async for _stream in conn:
            pass

    status, after, copied, consumed, error = run(silent, client)
    assert status == after == consumed == lib.PMQ_READ_ABORTED and copied == 0
    assert error is not None and issubclass(error, pymsquic.QuicError)


def test_a_read_learns_the_fin_with_the_last_bytes() -> None:
    # White-box: after read(n) took the last bytes, the stream knows it is at
    # EOF without asking msquic again; every read path then returns the end.
    async def client(conn: pymsquic.asyncio.Connection) -> list[Any]:
        stream = conn.open_stream()
        stream.write(b"q", fin=True)
        first = await stream.read(1)
        await arrived(stream, 3)
        rest = await stream.read(100)
        known = stream._eof_read
        return [first + rest, known, await stream.read(), await stream.readinto(bytearray(4)), stream.at_eof()]

    assert run(answer(b"abcd"), client) == [b"abcd", True, b"", 0, True]


def test_readinto_learns_the_fin_with_the_last_bytes() -> None:
    async def client(conn: pymsquic.asyncio.Connection) -> list[Any]:
        stream = conn.open_stream()
        stream.write(b"q", fin=True)
        buf = bytearray(1)
        n = await stream.readinto(buf)
        await arrived(stream, 5)
        big = bytearray(16)
        m = await stream.readinto(big)
        return [n, bytes(buf) + bytes(big[:m]), stream._eof_read, await stream.readinto(big), await stream.read()]

    assert run(answer(b"hello!"), client) == [1, b"hello!", True, 0, b""]


def test_blocking_reads_to_fin() -> None:
    # The sync world shares the read paths: requests answered to the byte, FIN included.
    def handler(conn: pymsquic.sync.Connection) -> None:
        for stream in conn:
            data = stream.read()
            stream.write(data[::-1], fin=True)

    with pymsquic.sync.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=CREDENTIAL, settings=SETTINGS,
                             close_timeout=2.0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with pymsquic.sync.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN, credential=CLIENT,
                                   settings=SETTINGS, open_timeout=10) as conn:
            for i in range(30):
                request = bytes(range(i, i + 40)) * (i + 1)
                stream = conn.open_stream()
                stream.write(request, fin=True)
                assert stream.read(timeout=10) == request[::-1]
                assert stream.read(timeout=10) == b"" and stream.at_eof()
                buf = bytearray(4)
                assert stream.readinto(buf, timeout=10) == 0


def test_finished_requests_do_not_wake_the_connection() -> None:
    # Each request used to wake the client's event loop for its connection
    # (a stream's send side done, the server's MAX_STREAMS): nobody waits for those.
    requests = 40

    async def client(conn: pymsquic.asyncio.Connection) -> list[int]:
        wakes = [0]
        changed = conn._native_changed

        def counting() -> None:
            wakes[0] += 1
            changed()

        conn._native_changed = counting  # type: ignore[method-assign]
        for i in range(requests):
            stream = conn.open_stream()
            stream.write(b"%d" % i, fin=True)
            assert await stream.read() == b"ok"
        await conn.wait_sent()  # still works: returns once every stream's send side is done
        return [wakes[0]]

    (wakes,) = run(answer(b"ok"), client)
    assert wakes < requests // 4


def test_a_request_wakes_the_loop_once() -> None:
    # One request at a time: the reply wakes the client's loop; a released
    # stream's later events (SHUTDOWN_COMPLETE) must not wake it again for
    # nothing (the eventfd left set with nothing queued: a drain that finds none).
    requests = 40
    drains: list[int] = []

    async def client(conn: pymsquic.asyncio.Connection) -> list[int]:
        from pymsquic.asyncio import bridge as bridge_module

        bridge = bridge_module.bridge_for(asyncio.get_running_loop())
        waker, ids = bridge._waker, bridge._ids

        def drain(w: Any, out: Any, n: int) -> int:
            got: int = lib.pmq_waker_drain(w, out, n)
            drains.append(got)
            return got

        # The bridge's reader, with the count of what each drain found.
        loop = asyncio.get_running_loop()
        loop.remove_reader(bridge._fd)

        def on_readable() -> None:
            n = drain(waker, ids, 256)
            for i in range(n):
                ref = bridge._objects.get(ids[i])
                obj = ref() if ref is not None else None
                if obj is not None:
                    obj._native_changed()

        loop.add_reader(bridge._fd, on_readable)
        try:
            for i in range(requests):
                stream = conn.open_stream()
                stream.write(b"%d" % i, fin=True)
                assert await stream.read() == b"ok"
                del stream  # released here: its later events find nobody to wake
        finally:
            loop.remove_reader(bridge._fd)
            loop.add_reader(bridge._fd, bridge._on_readable)
        return [sum(1 for n in drains if n == 0)]

    (empty,) = run(answer(b"ok"), client)
    assert empty < requests // 4, drains
