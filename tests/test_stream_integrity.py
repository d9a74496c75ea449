"""No byte lost, no hang (issue 7): buffers of every shape, cancelled and timed-out
reads, per-call deadlines, drain() after data was cut off, bad arguments.

pymsquic on both ends over 127.0.0.1; the asyncio tests run the server on the
client's loop, the blocking ones use pymsquic.sync in threads.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import hashlib
import random
import threading
import time
from typing import Any, Awaitable, Callable, Iterator

import pytest

import pymsquic

ALPN = "integrity"
SETTINGS = pymsquic.Settings(peer_bidi_stream_count=64, peer_unidi_stream_count=16, idle_timeout_ms=20_000)
CLIENT = pymsquic.Credential.client(verify=False)
CREDENTIAL = pymsquic.Credential.self_signed()
GO = b"go"


def run_async(handler: Callable[[pymsquic.asyncio.Connection], Awaitable[None]],
              client: Callable[[int], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with pymsquic.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=CREDENTIAL,
                                  settings=SETTINGS) as server:
            return await asyncio.wait_for(client(server.addresses[0][1]), 90)

    return asyncio.run(main())


@contextlib.contextmanager
def blocking_server(handler: Callable[[pymsquic.sync.Connection], None]) -> Iterator[int]:
    with pymsquic.sync.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=CREDENTIAL,
                             settings=SETTINGS, close_timeout=2.0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server.addresses[0][1]


def blocking_connect(port: int) -> pymsquic.sync.Connection:
    return pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS,
                                 open_timeout=10)


async def echo_all(conn: pymsquic.asyncio.Connection) -> None:
    """Each stream: read until FIN, send it all back with FIN."""
    async for stream in conn:
        stream.write(await stream.read(), fin=True)


# ---- 1. every buffer-protocol object sends all its bytes ----------------------------

def _buffers() -> list[Any]:
    c_matrix = ((ctypes.c_uint16 * 3) * 2)()  # a 2-D, multi-byte buffer like numpy's
    for i in range(2):
        for j in range(3):
            c_matrix[i][j] = 0x0101 * (3 * i + j + 1)
    return [
        memoryview(array.array("I", [1, 2, 3, 4])),     # 4 items, 16 bytes
        memoryview(b"abcdefghijkl").cast("B", (3, 4)),  # 2-D: 3 rows, 12 bytes
        array.array("d", [1.5, -2.25, 3.0]),           # not bytes/bytearray/memoryview at all
        c_matrix,
        memoryview(bytes(range(40)))[::3],              # not contiguous: copied
        memoryview(bytearray(b"xy" * 8)).cast("H").cast("B", (4, 4)),
        bytearray(b"plain"),
        b"bytes",
    ]


def test_write_and_writelines_send_every_byte_of_any_buffer() -> None:
    expected = [memoryview(b).tobytes() for b in _buffers()]

    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            streams = []
            for buf in _buffers():
                s = conn.open_stream()
                s.write(buf, fin=True)
                streams.append(s)
            lines = conn.open_stream()
            lines.writelines(iter(_buffers()))  # any iterable of any buffers
            lines.finish()
            got = [await s.read() for s in streams]
            assert got == expected
            assert await lines.read() == b"".join(expected)
            bad = conn.open_stream()
            for wrong in ("text", 42, None, [1, 2]):
                with pytest.raises(TypeError):
                    bad.write(wrong)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                bad.writelines([b"ok", "text"])  # type: ignore[list-item]
            bad.write(b"", fin=True)
            assert await bad.read() == b""  # checked first: nothing of a bad batch goes out

    run_async(echo_all, client)


# ---- 2. cancelled / timed-out reads keep what they had collected ----------------------

async def ten_go_ten(conn: pymsquic.asyncio.Connection) -> None:
    """Each stream: 10 bytes, wait for the client's go, 10 more and FIN."""

    async def one(stream: pymsquic.asyncio.Stream) -> None:
        stream.write(b"0123456789")
        assert await stream.readexactly(len(GO)) == GO
        stream.write(b"abcdefghij", fin=True)
        await asyncio.wait_for(stream.wait_closed(), 10)

    tasks = [asyncio.create_task(one(s)) async for s in conn]
    await asyncio.gather(*tasks)


def test_timed_out_readexactly_and_read_to_fin_keep_the_bytes_asyncio() -> None:
    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            s = conn.open_stream()  # reading starts it: the server speaks first
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(s.readexactly(20), 0.5)
            s.write(GO)
            assert await s.read() == b"0123456789abcdefghij"

            s = conn.open_stream()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(s.read(), 0.5)  # until FIN
            s.write(GO)
            assert await s.readexactly(20) == b"0123456789abcdefghij"
            assert await s.read() == b""

            s = conn.open_stream()
            task = asyncio.create_task(s.readexactly(15))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 0.5)
            task.cancel()  # cancelled by hand, not by wait_for
            with pytest.raises(asyncio.CancelledError):
                await task
            s.write(GO)
            buf = bytearray(4)
            assert await s.readinto(buf) == 4 and buf == b"0123"  # readinto sees them first too
            assert await s.readexactly(16) == b"456789abcdefghij"

    run_async(ten_go_ten, client)


def test_timed_out_readexactly_and_read_to_fin_keep_the_bytes_blocking() -> None:
    def handler(conn: pymsquic.sync.Connection) -> None:
        for stream in conn:
            stream.write(b"0123456789")
            assert stream.readexactly(len(GO), timeout=10) == GO
            stream.write(b"abcdefghij", fin=True)

    with blocking_server(handler) as port, blocking_connect(port) as conn:
        s = conn.open_stream()
        with pytest.raises(TimeoutError):
            s.readexactly(20, timeout=0.5)
        s.write(GO)
        assert s.read(timeout=10) == b"0123456789abcdefghij"

        s = conn.open_stream()
        with pytest.raises(TimeoutError):
            s.read(timeout=0.5)  # until FIN
        s.write(GO)
        assert b"".join(s) == b"0123456789abcdefghij"  # iteration sees them first


def test_readexactly_at_fin_hands_back_the_partial_in_both_worlds() -> None:
    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        async for stream in conn:
            await stream.read()
            stream.write(b"short", fin=True)

    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            s = conn.open_stream()
            s.write(b"?", fin=True)
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await s.readexactly(10)
            assert info.value.partial == b"short" and info.value.expected == 10
            assert await s.read() == b""

        def blocking() -> None:
            with blocking_connect(port) as conn:
                b = conn.open_stream()
                b.write(b"?", fin=True)
                with pytest.raises(asyncio.IncompleteReadError) as info:
                    b.readexactly(10, timeout=10)
                assert isinstance(info.value, EOFError)  # what it raised before
                assert info.value.partial == b"short" and info.value.expected == 10
                assert b.read(timeout=10) == b""

        await asyncio.to_thread(blocking)

    run_async(handler, client)


SIZE = 4 * 2**20


def _payload(seed: int) -> bytes:
    return random.Random(seed).randbytes(SIZE)


async def send_payload(conn: pymsquic.asyncio.Connection) -> None:
    """Each stream: the client names a seed; the server sends that payload in
    uneven chunks with FIN, draining, so data arrives over time."""

    async def one(stream: pymsquic.asyncio.Stream) -> None:
        seed = int(await stream.read())
        data = _payload(seed)
        rng = random.Random(seed + 1)
        pos = 0
        while pos < len(data):
            n = rng.randint(1, 200_000)
            stream.write(memoryview(data)[pos:pos + n])
            await stream.drain()
            pos += n
        stream.finish()
        await asyncio.wait_for(stream.wait_closed(), 30)

    tasks = [asyncio.create_task(one(s)) async for s in conn]
    await asyncio.gather(*tasks)


def test_random_cancellations_during_a_transfer_lose_no_byte_asyncio() -> None:
    seed = 7
    rng = random.Random(seed)

    async def client(port: int) -> tuple[str, int]:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            s = conn.open_stream()
            s.write(str(seed).encode(), fin=True)
            digest = hashlib.sha256()
            interrupted = 0
            total = 0

            async def readinto() -> bytes:
                buf = bytearray(rng.randint(1, 100_000))
                n = await s.readinto(buf)
                return bytes(buf[:n])

            async def anext_chunk() -> bytes:
                try:
                    return await s.__anext__()
                except StopAsyncIteration:
                    return b""

            while True:
                op = rng.choice(["readexactly", "readexactly", "read_all", "read", "readinto", "anext"])
                if op == "readexactly":
                    coro = s.readexactly(rng.randint(1, 150_000))
                elif op == "read_all":
                    coro = s.read()
                elif op == "read":
                    coro = s.read(rng.randint(1, 300_000))
                elif op == "readinto":
                    coro = readinto()
                else:
                    coro = anext_chunk()
                task = asyncio.ensure_future(coro)
                for _ in range(rng.randint(0, 6)):  # cancel at a random await point
                    await asyncio.sleep(0)
                if rng.random() < 0.7:
                    task.cancel()
                try:
                    data = await task
                except asyncio.CancelledError:
                    interrupted += 1
                    continue
                except asyncio.IncompleteReadError as exc:
                    data = exc.partial  # FIN came first: the rest is handed back here
                    digest.update(data)
                    total += len(data)
                    assert await s.read() == b""
                    break
                if not data and op != "readexactly":
                    break
                digest.update(data)
                total += len(data)
            return digest.hexdigest(), total, interrupted

    digest, total, interrupted = run_async(send_payload, client)
    assert total == SIZE
    assert digest == hashlib.sha256(_payload(seed)).hexdigest()
    assert interrupted >= 3  # the cancellations did interrupt reads


def test_random_timeouts_during_a_transfer_lose_no_byte_blocking() -> None:
    seed = 11
    rng = random.Random(seed)

    async def server_and_client(port: int) -> tuple[str, int, int]:
        def client() -> tuple[str, int, int]:
            with blocking_connect(port) as conn:
                s = conn.open_stream()
                s.write(str(seed).encode(), fin=True)
                digest = hashlib.sha256()
                total = timeouts = 0
                while True:
                    op = rng.choice(["readexactly", "readexactly", "read_all", "read", "readinto"])
                    timeout = rng.choice([0.0, 0.0, 0.0005, 0.002])
                    try:
                        if op == "readexactly":
                            data = s.readexactly(rng.randint(1, 300_000), timeout=timeout)
                        elif op == "read_all":
                            data = s.read(timeout=timeout)
                        elif op == "read":
                            data = s.read(rng.randint(1, 300_000), timeout=timeout)
                        else:
                            buf = bytearray(rng.randint(1, 100_000))
                            data = bytes(buf[:s.readinto(buf, timeout=timeout)])
                    except TimeoutError:
                        timeouts += 1
                        continue
                    except asyncio.IncompleteReadError as exc:
                        digest.update(exc.partial)
                        total += len(exc.partial)
                        assert s.read(timeout=10) == b""
                        break
                    if not data:
                        break
                    digest.update(data)
                    total += len(data)
                return digest.hexdigest(), total, timeouts

        return await asyncio.to_thread(client)

    digest, total, timeouts = run_async(send_payload, server_and_client)
    assert total == SIZE
    assert digest == hashlib.sha256(_payload(seed)).hexdigest()
    assert timeouts >= 3


# ---- 3. one deadline per blocking call ---------------------------------------------------

def trickle(conn: pymsquic.sync.Connection) -> None:
    """One byte every 0.3 s (the pacing is the point of the test), then FIN."""
    for stream in conn:
        for byte in b"abcdefgh":
            stream.write(bytes([byte]))
            time.sleep(0.3)
        stream.finish()


def test_blocking_timeout_is_one_deadline_per_call() -> None:
    slack = 0.8  # generous: the unfixed code never timed out at all
    with blocking_server(trickle) as port, blocking_connect(port) as conn:
        s = conn.open_stream()
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            s.readexactly(5, timeout=1.0)  # 5 bytes take 1.2 s or more
        assert time.monotonic() - start < 1.0 + slack
        assert s.readexactly(5, timeout=10) == b"abcde"  # and nothing was lost
        assert s.read(timeout=10) == b"fgh"  # the server goes on to the next stream

        s = conn.open_stream()
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            s.read(timeout=1.0)  # until FIN: 2.4 s
        assert time.monotonic() - start < 1.0 + slack
        assert s.read(timeout=10) == b"abcdefgh"


# ---- 4. drain() raises when written data can no longer be delivered ---------------------

async def hold_unread(conn: pymsquic.asyncio.Connection) -> None:
    """Accept streams and never read them."""
    streams = [s async for s in conn]
    del streams


BIG = 16 * 2**20


def test_drain_raises_when_the_connection_dies_with_data_unsent_asyncio() -> None:
    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            s = conn.open_stream()
            s.write(bytes(BIG))
            drain = asyncio.create_task(s.drain())
            await asyncio.sleep(0)  # the drain is waiting (the peer does not read)
            conn._abandon()  # dropped at once (close() would wait for the data to be sent)
            with pytest.raises(pymsquic.ConnectionClosed):
                await drain
            with pytest.raises(pymsquic.ConnectionClosed):
                await s.drain()  # and every later one

        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            s = conn.open_stream()
            s.write(bytes(BIG))
            s.reset(7)
            with pytest.raises(pymsquic.StreamError, match="not delivered"):
                await s.drain()

    run_async(hold_unread, client)


def test_drain_raises_when_the_connection_dies_with_data_unsent_blocking() -> None:
    def handler(conn: pymsquic.sync.Connection) -> None:
        streams = list(conn)
        del streams

    with blocking_server(handler) as port:
        with blocking_connect(port) as conn:
            s = conn.open_stream()
            s.write(bytes(BIG))
            closer = threading.Timer(0.2, conn._abandon)  # while drain() waits; dropped at once
            closer.start()
            with pytest.raises(pymsquic.ConnectionClosed):
                s.drain(timeout=10)
            closer.join()
            with pytest.raises(pymsquic.ConnectionClosed):
                s.drain(timeout=10)
        with blocking_connect(port) as conn:
            s = conn.open_stream()
            s.write(bytes(BIG))
            s.abort()  # resets the send side (close() would finish gracefully)
            with pytest.raises(pymsquic.StreamError, match="not delivered"):
                s.drain(timeout=10)


def test_drain_still_succeeds_when_everything_was_delivered() -> None:
    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            s = conn.open_stream()
            s.write(bytes(2**20), fin=True)
            await s.drain()
            assert len(await s.read()) == 2**20
            await asyncio.wait_for(s.wait_closed(), 10)
            await s.drain()  # done and delivered: nothing to report

    run_async(echo_all, client)


# ---- 7. bad arguments are refused before any native state changes ------------------------

def test_bad_read_arguments_leave_the_stream_usable() -> None:
    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        async for stream in conn:
            await stream.read()
            stream.write(b"0123456789", fin=True)

    async def check_async(s: pymsquic.asyncio.Stream) -> None:
        await asyncio.wait_for(s.readexactly(1), 10)  # data is there
        for bad in (1.5, "3", None, b"x"):
            with pytest.raises(TypeError):
                await s.read(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await s.readexactly(bad)  # type: ignore[arg-type]
        for bad_bool in (True, False):
            with pytest.raises(TypeError):
                await s.read(bad_bool)
        with pytest.raises(ValueError):
            await s.readexactly(-1)
        for target in (b"immutable", memoryview(bytearray(8))[::2], "text"):
            with pytest.raises(TypeError):
                await s.readinto(target)
        assert await s.readexactly(0) == b""
        assert await asyncio.wait_for(s.read(), 10) == b"123456789"

    def check_blocking(port: int) -> None:
        with blocking_connect(port) as conn:
            s = conn.open_stream()
            s.write(b"?", fin=True)
            check_blocking_stream(s)

    def check_blocking_stream(s: pymsquic.sync.Stream) -> None:
        assert s.readexactly(1, timeout=10) == b"0"
        for bad in (1.5, "3", None, True):
            with pytest.raises(TypeError):
                s.read(bad, timeout=10)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                s.readexactly(bad, timeout=10)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            s.readexactly(-3, timeout=10)
        with pytest.raises(TypeError):
            s.readinto(b"immutable", timeout=10)
        assert s.read(timeout=10) == b"123456789"

    async def client(port: int) -> None:
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
            s = conn.open_stream()
            s.write(b"?", fin=True)
            await check_async(s)
        await asyncio.to_thread(check_blocking, port)

    run_async(handler, client)



_SIGNALLED_READER = """
import random, signal, sys, threading
import pymsquic
from tests.test_stream_integrity import blocking_server, blocking_connect

SIZE = 8 * 2**20

class Interrupted(Exception):
    pass

def handler(conn):
    for stream in conn:
        stream.read(timeout=10)
        for _ in range(SIZE // 2**16):
            stream.write(bytes(2**16))
            stream.drain(timeout=20)
        stream.finish()

armed = False
# Land only inside the read path (not in the test's own except clauses, nor in
# finalizers, where an exception is only printed and a release skipped).
READ_PATH = {"read", "readexactly", "_wait", "_run", "_read_steps", "_gather_ready", "_read_now", "_readable",
             "_joined", "_take_pushback", "_unread", "__exit__", "wait_blocking", "wait_until", "<lambda>",
             "remaining", "_state", "count"}

def interrupt(signum, frame):
    if armed and frame.f_code.co_name in READ_PATH and "pymsquic" in frame.f_code.co_filename:
        raise Interrupted

signal.signal(signal.SIGALRM, interrupt)
rng = random.Random(int(sys.argv[1]))
with blocking_server(handler) as port, blocking_connect(port) as conn:
    s = conn.open_stream()
    s.write(b"go", fin=True)
    interrupts = 0
    armed = True
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    while True:
        try:
            if rng.random() < 0.5:
                chunk = s.read(rng.randint(1, 2**17), timeout=10)
            else:
                chunk = s.readexactly(rng.randint(1, 2**17), timeout=10)
        except Interrupted:
            interrupts += 1
            continue
        except EOFError:
            chunk = b""
        if not chunk:
            break
    armed = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert s.read(timeout=10) == b""
    print("FIN after", interrupts, "interrupts", flush=True)
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reads_interrupted_by_signals_never_leave_the_stream_stuck(seed: int) -> None:
    # A KeyboardInterrupt-like exception from a signal handler lands at any
    # bytecode, also between the native peek and its consume: the stream must
    # still read on to FIN, and the process close. (A child process: such
    # exceptions also land in finalizers. Only "not stuck" is checked: an
    # exception landing inside the bookkeeping may lose or repeat a chunk.)
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run([sys.executable, "-c", _SIGNALLED_READER, str(seed)], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the interrupted reader hung: {exc.stdout!r} {exc.stderr!r}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    interrupts = int(proc.stdout.split()[2])
    assert interrupts > 20
