"""A request in one native call (issue 11): ``conn.open_stream(data=..., fin=True)``
opens the stream and sends its first bytes through pmq_stream_open_send.

Real msquic over 127.0.0.1, both worlds: the bytes and the FIN arrive, errors
are those of open_stream() then write(), a stream beyond the peer's MAX_STREAMS
waits with its data, an early-data client's request still goes in the first
flight, and loop execution mode works the same.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from test_early_data_first_flight import a_ticket, recording_handler, serve_in

import pymsquic
from pymsquic._msquic import lib

from conftest import ALPN
from worlds import WAIT, AsyncioServerHandle, AsyncioWorld, ServerHandle, SyncServerHandle, World, worlds
from worlds import echo_streams as echo

PACKAGE_ROOT = str(Path(pymsquic.__file__).resolve().parent.parent)


async def serve_with(w: World, handler: Any, registration: pymsquic.Registration,
                     credential: pymsquic.Credential, settings: pymsquic.Settings) -> ServerHandle:
    """A server of this world with its own settings (the world's serve() takes the defaults)."""
    if w.name == "asyncio":
        server = await pymsquic.asyncio.serve(lambda conn: handler(w, conn), "127.0.0.1", 0, alpn=ALPN,
                                              credential=credential, registration=registration, settings=settings)
        return AsyncioServerHandle(w, server)
    server = pymsquic.sync.serve(lambda conn: w.run(handler(w, conn)), "127.0.0.1", 0, alpn=ALPN,
                                 credential=credential, registration=registration, settings=settings)
    return SyncServerHandle(w, server)


async def serve_echo(w: World, registration: pymsquic.Registration, credential: pymsquic.Credential,
                     settings: pymsquic.Settings | None = None) -> ServerHandle:
    if settings is None:
        return await w.serve(echo, registration, credential)
    return await serve_with(w, echo, registration, credential, settings)


def with_echo_client(w: World, registration: pymsquic.Registration, credential: pymsquic.Credential,
                     client: Callable[[Any], Awaitable[None]], settings: pymsquic.Settings | None = None) -> None:
    """Run ``await client(conn)`` against an echo server of world ``w``, then close."""
    async def body() -> None:
        async with await serve_echo(w, registration, credential, settings) as server:
            conn = await w.connect(server.port, registration)
            await client(conn)
            await w.call(conn.close)

    w.run(body())


async def set_in_time(w: World, event: threading.Event) -> bool:
    """Wait for a threading.Event set by a server handler (of either world)."""
    if w.name == "asyncio":
        return await asyncio.get_running_loop().run_in_executor(None, event.wait, WAIT)
    return event.wait(WAIT)


@worlds
def test_data_and_fin_arrive_intact(w: World, registration, server_credential) -> None:
    payloads: list[Any] = [b"q", os.urandom(1200), os.urandom(300_000), bytearray(b"mutable"),
                           memoryview(b"0123456789")[::2]]  # non-contiguous: sent in logical order

    async def client(conn: Any) -> None:
        for payload in payloads:
            stream = conn.open_stream(data=payload, fin=True)
            assert await w.wait(stream.read, -1) == bytes(payload)
            assert stream.at_eof()
            assert stream.is_local and not stream.is_unidirectional

    with_echo_client(w, registration, server_credential, client)


@worlds
def test_fin_alone_and_data_alone(w: World, registration, server_credential) -> None:
    async def client(conn: Any) -> None:
        empty = conn.open_stream(fin=True)  # an empty request: FIN only
        assert await w.wait(empty.read, -1) == b""
        assert empty.at_eof()
        also_empty = conn.open_stream(data=b"", fin=True)
        assert await w.wait(also_empty.read, -1) == b""
        # Data without FIN: the stream stays open for more writes.
        stream = conn.open_stream(data=b"head ")
        stream.write(b"tail")
        stream.finish()
        assert await w.wait(stream.read, -1) == b"head tail"
        # Neither: a plain open_stream(), started by the first write.
        plain = conn.open_stream(data=None, fin=False)
        assert plain.id is None
        plain.write(b"later", fin=True)
        assert await w.wait(plain.read, -1) == b"later"

    with_echo_client(w, registration, server_credential, client)


@worlds
def test_a_unidirectional_request(w: World, registration, server_credential) -> None:
    settings = pymsquic.Settings(peer_unidi_stream_count=4, peer_bidi_stream_count=4)
    got: list[bytes] = []

    arrived = threading.Event()

    async def collect(w: World, conn: Any) -> None:
        stream = await w.wait(conn.accept_stream)
        got.append(await w.wait(stream.read, -1))
        arrived.set()

    async def body() -> None:
        async with await serve_with(w, collect, registration, server_credential, settings) as server:
            conn = await w.connect(server.port, registration)
            stream = conn.open_stream(True, data=b"one way", fin=True)
            assert stream.is_unidirectional
            assert await set_in_time(w, arrived)
            await w.call(conn.close)
        assert got == [b"one way"]

    w.run(body())


@worlds
def test_bad_data_raises_before_anything_opens(w: World, registration, server_credential) -> None:
    async def client(conn: Any) -> None:
        with pytest.raises(TypeError, match="bytes-like"):
            conn.open_stream(data="text", fin=True)
        with pytest.raises(TypeError):
            conn.open_stream(data=12, fin=True)
        # The connection goes on: the next request is its first stream (id 0).
        stream = conn.open_stream(data=b"after", fin=True)
        assert await w.wait(stream.read, -1) == b"after"
        assert stream.id == 0

    with_echo_client(w, registration, server_credential, client)


@worlds
def test_a_closed_connection_refuses_as_open_stream_does(w: World, registration, server_credential) -> None:
    async def client(conn: Any) -> None:
        assert await w.wait(conn.open_stream(data=b"x", fin=True).read, -1) == b"x"
        conn.shutdown(5)
        with pytest.raises(pymsquic.ConnectionClosed) as plain:
            conn.open_stream()
        with pytest.raises(pymsquic.ConnectionClosed) as combined:
            conn.open_stream(data=b"request", fin=True)
        assert type(combined.value) is type(plain.value)
        assert combined.value.error_code == plain.value.error_code == 5
        await w.call(conn.close)
        with pytest.raises(pymsquic.ConnectionClosed):
            conn.open_stream(data=b"request", fin=True)

    with_echo_client(w, registration, server_credential, client)


@worlds
def test_a_connection_the_peer_closed(w: World, registration, server_credential) -> None:
    async def close_at_once(w: World, conn: Any) -> None:
        stream = await w.wait(conn.accept_stream)
        await w.wait(stream.read, -1)
        conn.shutdown(9)
        await w.wait(conn.wait_closed)

    async def body() -> None:
        server = await w.serve(close_at_once, registration, server_credential)
        async with server:
            conn = await w.connect(server.port, registration)
            first = conn.open_stream(data=b"bye", fin=True)
            with pytest.raises(pymsquic.ConnectionClosed):
                await w.wait(first.read, -1)
            await w.wait(conn.wait_closed)
            with pytest.raises(pymsquic.ConnectionClosed) as info:
                conn.open_stream(data=b"too late", fin=True)
            assert info.value.by_peer and info.value.error_code == 9
            await w.call(conn.close)

    w.run(body())


@worlds
def test_beyond_the_peers_stream_limit_requests_wait_and_arrive(w: World, registration, server_credential) -> None:
    # The server allows one bidirectional stream at a time: the others are opened
    # and written at once, wait inside msquic for MAX_STREAMS with their data,
    # and all are answered in full (as open_stream() then write() behave).
    count = 6

    async def client(conn: Any) -> None:
        payloads = [os.urandom(100 + 5000 * i) for i in range(count)]
        streams = [conn.open_stream(data=p, fin=True) for p in payloads]
        plain = conn.open_stream()
        plain.write(b"the old way", fin=True)
        for stream, payload in zip(streams, payloads):
            assert await w.wait(stream.read, -1) == payload
        assert await w.wait(plain.read, -1) == b"the old way"
        assert sorted(s.id for s in streams) == [4 * i for i in range(count)]

    with_echo_client(w, registration, server_credential, client,
                     pymsquic.Settings(peer_bidi_stream_count=1, idle_timeout_ms=20_000))


@worlds
def test_the_first_request_goes_in_0rtt(w: World, registration, server_credential) -> None:
    # The deferred ConnectionStart of an early-data client: open_stream(data=, fin=)
    # queues the request before it, so it goes in the first flight, every time.
    rounds = 10

    async def body() -> None:
        seen: list[dict[str, Any]] = []
        async with await serve_in(w, recording_handler(seen), registration, server_credential) as server:
            ticket = await a_ticket(w, server.port, registration)
            for i in range(rounds):
                request = b"early %d " % i * 300
                conn = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
                stream = conn.open_stream(data=request, fin=True)
                assert await w.wait(stream.read, -1) == request
                await w.wait(conn.wait_handshake)
                assert conn.session_resumed and conn.early_data_accepted is True
                await w.call(conn.close)
        assert seen[1:] == [{"resumed": True, "opened_in_0rtt": True, "early_streams": 1}] * rounds

    w.run(body())


@worlds
def test_an_early_connection_closed_after_the_request_still_sends_it(w: World, registration,
                                                                    server_credential) -> None:
    # close() right after the combined call, with no wait between: close starts the
    # deferred connection because a stream was written, and the request is delivered.
    seen: list[dict[str, Any]] = []
    arrived = threading.Event()

    def handler(w: World, conn: Any) -> Any:
        inner = recording_handler(seen)

        async def run(w: World, conn: Any) -> None:
            try:
                await inner(w, conn)
            finally:
                if len(seen) >= 2:
                    arrived.set()
        return run(w, conn)

    async def body() -> None:
        async with await serve_in(w, handler, registration, server_credential) as server:
            ticket = await a_ticket(w, server.port, registration)
            conn = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
            conn.open_stream(data=b"fire and forget", fin=True)
            await w.call(conn.close)
            assert await set_in_time(w, arrived)
        assert len(seen) == 2 and seen[1]["opened_in_0rtt"]

    w.run(body())


async def readable(w: World, stream: Any, n: int) -> None:
    """Until ``n`` bytes of ``stream`` are with msquic, unread (nothing is taken)."""
    def check() -> bool | None:
        return True if stream._state().readable >= n else None

    if w.name == "asyncio":
        await asyncio.wait_for(stream._wait(check, "readable()"), WAIT)
    else:
        stream._wait(check, WAIT, "readable()")


async def pause(w: World, seconds: float) -> None:
    if w.name == "asyncio":
        await asyncio.sleep(seconds)
    else:
        time.sleep(seconds)


@worlds
def test_reading_the_answer_to_fin_loses_nothing(w: World, registration, server_credential) -> None:
    # read() until FIN waits for the first bytes themselves, then (no FIN with
    # them) reads on in steps. A timeout (asyncio: a cancellation) in either
    # part keeps every byte for the next read; a reply in two parts comes whole.
    async def handler(w: World, conn: Any) -> None:
        try:
            answer = await w.wait(conn.accept_stream)
            await w.wait(answer.read, -1)
            for part in (b"first|", b"second"):  # each after the client's go-ahead stream
                go = await w.wait(conn.accept_stream)
                await w.wait(go.read, -1)
                answer.write(part, fin=part == b"second")
            split = await w.wait(conn.accept_stream)
            await w.wait(split.read, -1)
            split.write(b"part one|")
            await pause(w, 0.1)  # the client is most likely waiting by now (either way, nothing is lost)
            split.write(b"part two", fin=True)
            await w.wait(conn.wait_closed)
        except pymsquic.ConnectionClosed:
            pass

    timeouts = (TimeoutError, asyncio.TimeoutError)

    async def body() -> None:
        async with await serve_with(w, handler, registration, server_credential,
                                    pymsquic.Settings(peer_bidi_stream_count=8)) as server:
            conn = await w.connect(server.port, registration)
            stream = conn.open_stream(data=b"request", fin=True)
            with pytest.raises(timeouts):  # nothing came: the first wait times out
                await w.wait(stream.read, -1, timeout=0.2)
            conn.open_stream(data=b"go", fin=True)
            await readable(w, stream, 6)
            with pytest.raises(timeouts):  # "first|" taken, then the wait for more times out
                await w.wait(stream.read, -1, timeout=0.2)
            conn.open_stream(data=b"go", fin=True)
            assert await w.wait(stream.read, -1) == b"first|second"
            assert stream.at_eof()
            split = conn.open_stream(data=b"split", fin=True)
            assert await w.wait(split.read, -1) == b"part one|part two"
            await w.call(conn.close)

    w.run(body())


def test_one_native_call_opens_and_writes(registration, server_credential) -> None:
    # White-box: the open and the first write cross into C once (plus the
    # pmq_stream_obj every new Stream asks for), not open then write.
    w = AsyncioWorld()
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__self__", None) is lib:
            calls.append(arg.__name__)

    async def client(conn: Any) -> None:
        sys.setprofile(profile)
        try:
            stream = conn.open_stream(data=b"counted", fin=True)
        finally:
            sys.setprofile(None)
        assert await asyncio.wait_for(stream.read(), WAIT) == b"counted"

    with_echo_client(w, registration, server_credential, client)
    assert "pmq_stream_open_send" in calls and "pmq_stream_write" not in calls and "pmq_stream_open" not in calls
    assert len(calls) <= 2, calls


LOOP_MODE_CHILD = """
import asyncio, os, threading
import pymsquic
from pymsquic import asyncio as pa

ALPN = "open-send"
CREDENTIAL = pymsquic.Credential.self_signed(("localhost", "127.0.0.1"))
CLIENT = pymsquic.Credential.client(verify=False)
SETTINGS = pymsquic.Settings(peer_bidi_stream_count=2, idle_timeout_ms=10_000)

async def echo(conn):
    async for stream in conn:
        stream.write(await stream.read(), fin=True)

async def main():
    async with pa.serve(echo, "127.0.0.1", 0, alpn=ALPN, credential=CREDENTIAL, settings=SETTINGS) as server:
        port = server.addresses[0][1]
        async with pa.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT) as conn:
            for i in range(20):
                payload = os.urandom(1 + 3001 * i)
                assert await conn.open_stream(data=payload, fin=True).read() == payload
            # Beyond the server's limit of 2: queued with their data, all answered.
            payloads = [os.urandom(500 + i) for i in range(8)]
            streams = [conn.open_stream(data=p, fin=True) for p in payloads]
            assert [await s.read() for s in streams] == payloads
        # The blocking world beside the loop: a client in an executor thread.
        def blocking():
            with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT) as bconn:
                for i in range(5):
                    payload = b"b%d" % i * 1000
                    assert bconn.open_stream(data=payload, fin=True).read(timeout=10) == payload
        await asyncio.get_running_loop().run_in_executor(None, blocking)
    print("ok", pymsquic.execution_mode())

asyncio.run(main())
"""


def run_in_loop_mode(code: str) -> None:
    """Run ``code`` in a child process with PYMSQUIC_EXECUTION=loop; it must print "ok loop"."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYMSQUIC_EXECUTION="loop")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "ok loop" in proc.stdout


def test_loop_execution_mode() -> None:
    run_in_loop_mode(LOOP_MODE_CHILD)
