"""Review of session 16's range (0ab625b..): hostile use of the new APIs.

``conn.open_stream(data=, fin=)`` in both worlds, asyncio's
``conn.create_stream(factory, data=, fin=)`` and its StreamProtocol, a peer that
dies mid-request, and loop execution mode's loops. Real msquic over 127.0.0.1;
every case must end in a clear Python exception or the documented behaviour,
never an abort, a hang or lost bytes. The whole file also runs with
``PYMSQUIC_EXECUTION=loop``.
"""

from __future__ import annotations

import array
import asyncio
import mmap
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_create_stream import run
from test_open_send import run_in_loop_mode, with_echo_client

import pymsquic
from pymsquic._msquic import lib
from pymsquic._native import loop_mode
from pymsquic.asyncio import Connection, Stream, StreamProtocol

from worlds import WAIT, World, worlds

PACKAGE_ROOT = str(Path(pymsquic.__file__).resolve().parent.parent)
ALPN = "review-s17"
SETTINGS = pymsquic.Settings(peer_bidi_stream_count=16, idle_timeout_ms=20_000)
CLIENT = pymsquic.Credential.client(verify=False)
CREDENTIAL = pymsquic.Credential.self_signed()


# ---- open_stream(data=) with odd buffers ----------------------------------------


@worlds
def test_open_stream_sends_every_byte_of_typed_and_shaped_buffers(w: World, registration,
                                                                   server_credential) -> None:
    ints = array.array("i", range(-500, 1500))
    flat = memoryview(ints)
    payloads: list[Any] = [
        flat,                                   # format 'i': 4 bytes an item, len() counts items
        flat.cast("B").cast("i", (50, 40)),     # 2-D
        flat[::3],                              # non-contiguous ints: copied in logical order
        memoryview(array.array("d", [1.5] * 333)),
    ]

    async def client(conn: Any) -> None:
        for payload in payloads:
            stream = conn.open_stream(data=payload, fin=True)
            assert await w.wait(stream.read, -1) == payload.tobytes()
        # Data without FIN, then more writes of other formats.
        stream = conn.open_stream(data=flat[:10])
        stream.write(array.array("h", [7, 8]))
        stream.write(b"", fin=True)
        assert await w.wait(stream.read, -1) == flat[:10].tobytes() + array.array("h", [7, 8]).tobytes()

    with_echo_client(w, registration, server_credential, client)


@worlds
def test_open_stream_refuses_more_than_one_write_holds_and_opens_nothing(w: World, registration,
                                                                        server_credential) -> None:
    # 4 GiB + 1 of untouched anonymous memory: no RAM is used, the size alone is refused.
    huge = mmap.mmap(-1, (1 << 32) + 1)
    big = os.urandom(8 << 20)

    async def client(conn: Any) -> None:
        try:
            with pytest.raises(ValueError, match="at most"):
                conn.open_stream(data=huge, fin=True)
            with pytest.raises(ValueError, match="at most"):
                conn.open_stream(data=memoryview(huge), fin=False)
        finally:
            huge.close()
        stream = conn.open_stream(data=big, fin=True)
        assert await w.wait(stream.read, -1) == big
        assert stream.id == 0  # the refused calls opened nothing

    with_echo_client(w, registration, server_credential, client)


@worlds
def test_open_stream_with_released_or_text_data(w: World, registration, server_credential) -> None:
    async def client(conn: Any) -> None:
        view = memoryview(b"gone")
        view.release()
        with pytest.raises(ValueError, match="released"):
            conn.open_stream(data=view, fin=True)
        with pytest.raises(TypeError, match="bytes-like"):
            conn.open_stream(data="text")
        stream = conn.open_stream(data=b"ok", fin=True)
        assert await w.wait(stream.read, -1) == b"ok"
        assert stream.id == 0

    with_echo_client(w, registration, server_credential, client)


# ---- create_stream: protocols that raise ------------------------------------------


async def echo(conn: Connection) -> None:
    async for stream in conn:
        try:
            stream.write(await stream.read(), fin=True)
        except (pymsquic.StreamReset, pymsquic.StreamStopped):
            pass  # a client protocol that failed aborted its request


async def with_peer(port: int, client: Any) -> Any:
    async with pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=CLIENT, settings=SETTINGS) as conn:
        return await asyncio.wait_for(client(conn), 60)


def hold_loop_until(obj: Any, ready: Any) -> None:
    """Block the loop's thread until ``ready()`` (re-checked at each change of
    native object ``obj``), so that the loop then sees all that happened
    meanwhile in one batch (loop mode: step msquic here, nobody else does)."""
    for _ in range(int(WAIT * 100)):
        seq = lib.pmq_obj_seq(obj)
        if ready():
            return
        if loop_mode():
            lib.pmq_execution_step()
        lib.pmq_obj_wait(obj, seq, 10)
    raise AssertionError("not ready in time")


def hold_loop_until_closed(stream: Stream) -> None:
    """:func:`hold_loop_until` ``stream`` ended natively (its data, FIN and end then come in one batch)."""
    hold_loop_until(stream._native_obj, lambda: stream._state().flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE)


class Failing(StreamProtocol):
    """Raises from one callback; records the rest."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, stream: Stream) -> None:
        self.events.append("made")
        if self.where == "made":
            raise ValueError("connection_made failed")

    def data_received(self, data: bytes) -> None:
        self.events.append("data")
        if self.where == "data":
            raise ValueError("data_received failed")

    def eof_received(self) -> None:
        self.events.append("eof")
        if self.where == "eof":
            raise ValueError("eof_received failed")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


# REVIEW: a protocol callback that raised left its stream without connection_lost
# (and held by the connection for ever) when the stream's end came in the same batch.
@pytest.mark.parametrize("where", ["data", "eof"])
def test_a_protocol_callback_that_raises_still_gets_connection_lost(where: str) -> None:
    async def client(conn: Connection) -> Any:
        reports: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reports.append(context))
        stream, protocol = conn.create_stream(lambda: Failing(where), data=b"answer me", fin=True)
        hold_loop_until_closed(stream)
        exc = await asyncio.wait_for(protocol.lost, WAIT)
        # As asyncio's transports: the exception reaches connection_lost and the
        # loop's exception handler, and the protocol hears nothing more.
        assert isinstance(exc, ValueError) and f"{where}" in str(exc)
        assert protocol.events[-1] == "lost" and protocol.events.count("lost") == 1
        assert any(r.get("exception") is exc for r in reports), reports
        assert not conn._protocol_streams
        # The connection goes on.
        assert await conn.open_stream(data=b"next", fin=True).read() == b"next"
        return protocol.events

    # The server in a process of its own: it answers while this loop's thread is held.
    peer = PeerProcess("echo")
    try:
        events = asyncio.run(with_peer(peer.port, client))
    finally:
        peer.kill()
    assert events[:2] == ["made", "data"]


def test_a_protocol_that_raises_mid_answer_aborts_its_stream() -> None:
    # data_received raises on the first chunk of a long answer: the stream is aborted
    # both ways (the server sees STOP_SENDING), connection_lost gets the exception.
    stopped: asyncio.Future[int | None] | None = None

    async def handler(conn: Connection) -> None:
        async for stream in conn:
            await stream.read()
            stream.write(b"z" * (1 << 20))
            assert stopped is not None
            stopped.set_result(await stream.wait_stop_sending())

    async def client(conn: Connection) -> Any:
        nonlocal stopped
        stopped = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().set_exception_handler(lambda _loop, _context: None)
        stream, protocol = conn.create_stream(lambda: Failing("data"), data=b"long", fin=True)
        exc = await asyncio.wait_for(protocol.lost, WAIT)
        code = await asyncio.wait_for(stopped, WAIT)
        return [type(exc), code, protocol.events]

    exc_type, code, events = run(handler, client)
    assert exc_type is ValueError and code == pymsquic.EXCEPTION_ERROR_CODE
    assert events == ["made", "data", "lost"]


# REVIEW: connection_made raising left the stream open, unattached and held by the
# connection for its whole life (the caller never got it to close).
def test_connection_made_that_raises_leaves_no_stream_behind() -> None:
    async def client(conn: Connection) -> Any:
        protocols: list[Failing] = []

        def factory() -> Failing:
            protocols.append(Failing("made"))
            return protocols[-1]

        with pytest.raises(ValueError, match="connection_made failed"):
            conn.create_stream(factory, data=b"request", fin=True)
        assert not conn._protocol_streams
        # Nothing was ever delivered to it: it heard connection_made only.
        assert protocols[0].events == ["made"]
        return await conn.open_stream(data=b"still fine", fin=True).read()

    assert run(echo, client) == b"still fine"


# ---- the peer dies mid-request -------------------------------------------------------

PEER = """
import sys, pymsquic
credential = pymsquic.Credential.self_signed()
kept = []  # a stream collected would be reset
def handler(conn):
    for stream in conn:
        request = stream.read(timeout=30)
        if sys.argv[2] == "echo":
            stream.write(request, fin=True)
        else:
            kept.append(stream)
            print("got", flush=True)  # and never answers
server = pymsquic.sync.serve(handler, "127.0.0.1", 0, alpn=sys.argv[1], credential=credential,
                             settings=pymsquic.Settings(peer_bidi_stream_count=8))
print(server.addresses[0][1], flush=True)
server.serve_forever()
"""


class PeerProcess:
    """A pymsquic sync server in a child process that reads each request and
    never answers it (``echo``: answers with the request)."""

    def __init__(self, behaviour: str = "silent") -> None:
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PEER), ALPN, behaviour], env=env,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def wait_request(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "got"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


SHORT_IDLE = pymsquic.Settings(idle_timeout_ms=1500)


def test_peer_killed_mid_request_asyncio() -> None:
    peer = PeerProcess()

    async def main() -> Any:
        async with pymsquic.asyncio.connect("127.0.0.1", peer.port, alpn=ALPN, credential=CLIENT,
                                            settings=SHORT_IDLE) as conn:
            plain = conn.open_stream(data=b"plain", fin=True)
            _, protocol = conn.create_stream(lambda: Failing(""), data=b"protocol", fin=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, peer.wait_request)
            await loop.run_in_executor(None, peer.wait_request)
            peer.kill()
            with pytest.raises(pymsquic.ConnectionClosed):
                await asyncio.wait_for(plain.read(), WAIT)
            lost = await asyncio.wait_for(protocol.lost, WAIT)
            with pytest.raises(pymsquic.ConnectionClosed):
                conn.open_stream(data=b"after", fin=True)
            return lost, protocol.events

    try:
        lost, events = asyncio.run(main())
    finally:
        peer.kill()
    assert isinstance(lost, pymsquic.ConnectionClosed) and events == ["made", "lost"]


def test_peer_killed_mid_request_sync() -> None:
    peer = PeerProcess()
    try:
        with pymsquic.sync.connect("127.0.0.1", peer.port, alpn=ALPN, credential=CLIENT,
                                   settings=SHORT_IDLE) as conn:
            stream = conn.open_stream(data=b"request", fin=True)
            peer.wait_request()
            peer.kill()
            with pytest.raises(pymsquic.ConnectionClosed):
                stream.read(timeout=WAIT)
            with pytest.raises(pymsquic.ConnectionClosed):
                conn.open_stream(data=b"after", fin=True)
    finally:
        peer.kill()


# ---- threads and loops -----------------------------------------------------------------


def test_open_stream_from_another_thread() -> None:
    # open_stream never waits: any thread may open and write (the answer is read on the loop).
    async def client(conn: Connection) -> Any:
        loop = asyncio.get_running_loop()
        def request(i: int) -> Stream:
            return conn.open_stream(data=b"thread %d" % i, fin=True)

        streams = await asyncio.gather(*(loop.run_in_executor(None, request, i) for i in range(8)))
        return sorted([await s.read() for s in streams])

    assert run(echo, client) == sorted(b"thread %d" % i for i in range(8))


LOOPS_CHILD = """
import asyncio, os, threading
import pymsquic
from pymsquic import asyncio as pa

CLIENT = pymsquic.Credential.client(verify=False)
big = os.urandom(3 << 20)
loop_a = asyncio.new_event_loop()
loop_b = asyncio.new_event_loop()

async def first():
    conn = await pa.connect("127.0.0.1", PORT, alpn=ALPN, credential=CLIENT)
    stream = conn.open_stream(data=big, fin=True)  # in flight when the loop closes
    return conn, stream

conn, stream = loop_a.run_until_complete(first())

# A second loop, on another thread, while loop A is open: refused clearly, and
# before anything opens (the stream would be the next one, id 4).
errors = []
def other():
    async def go():
        conn.create_stream(pa.StreamProtocol, data=b"x", fin=True)
    try:
        asyncio.run(go())
    except RuntimeError as exc:
        errors.append(exc)
t = threading.Thread(target=other)
t.start()
t.join(30)
assert errors and "another event loop drives msquic" in str(errors[0]), errors
assert not getattr(conn, "_protocol_streams", None), conn._protocol_streams
loop_a.close()  # msquic's work pending: the 3 MB echo

async def second():
    assert await asyncio.wait_for(stream.read(), 30) == big  # loop B drives now: nothing lost
    after = conn.open_stream(data=b"more", fin=True)
    assert await asyncio.wait_for(after.read(), 30) == b"more"
    assert after.id == 4, after.id
    await conn.close()

loop_b.run_until_complete(second())
loop_b.close()
print("ok", pymsquic.execution_mode())
"""


def test_loop_mode_a_closed_loop_hands_pending_work_to_the_next() -> None:
    peer = PeerProcess("echo")
    try:
        run_in_loop_mode(f"PORT = {peer.port}\nALPN = {ALPN!r}\n" + LOOPS_CHILD)
    finally:
        peer.kill()


# REVIEW: a server's stream factory (or connection_made) that raised left every
# other stream accepted in the same batch without a protocol until the next event.
def test_a_stream_factory_that_raises_does_not_strand_the_other_streams() -> None:
    class Echo(StreamProtocol):
        def connection_made(self, stream: Stream) -> None:
            self.stream = stream
            self.data = b""

        def data_received(self, data: bytes) -> None:
            self.data += data

        def eof_received(self) -> None:
            self.stream.write(self.data, fin=True)

    reports: list[dict[str, Any]] = []

    server_side: list[asyncio.Future[Connection]] = []

    def accepted() -> asyncio.Future[Connection]:
        # Created by whichever comes first: the server's handler or the client's body.
        if not server_side:
            server_side.append(asyncio.get_running_loop().create_future())
        return server_side[0]

    async def handler(conn: Connection) -> None:
        calls = 0

        def factory() -> StreamProtocol:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("factory failed")
            return Echo()

        conn.set_stream_protocol(factory)
        accepted().set_result(conn)
        await conn.wait_closed()

    async def client(conn: Connection) -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reports.append(context))
        server = await asyncio.wait_for(accepted(), WAIT)
        streams = [conn.open_stream(data=b"request %d" % i, fin=True) for i in range(2)]
        # Both requests queued on the server before its loop runs: one batch for both.
        hold_loop_until(server._native_obj, lambda: server._refresh().streams_queued >= 2)
        results = await asyncio.wait_for(asyncio.gather(*(s.read() for s in streams), return_exceptions=True), WAIT)
        return sorted(repr(r) if isinstance(r, Exception) else r.decode() for r in results)

    results = run(handler, client)
    assert len(results) == 2 and results[0].startswith("StreamReset("), results
    assert results[1] in ("request 0", "request 1"), results
    assert any(isinstance(r.get("exception"), ValueError) for r in reports), reports


# REVIEW: connection_lost raising a QuicError (here: a late write to the stream that
# ended) was caught as the stream's own failure, and connection_lost ran a second time.
def test_connection_lost_that_raises_a_quic_error_runs_once() -> None:
    class LateWriter(Failing):
        def connection_made(self, stream: Stream) -> None:
            super().connection_made(stream)
            self.stream = stream

        def connection_lost(self, exc: Exception | None) -> None:
            self.events.append("lost")
            if not self.lost.done():
                self.lost.set_result(exc)
            self.stream.write(b"late")  # StreamError: the stream is over

    async def client(conn: Connection) -> Any:
        reports: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reports.append(context))
        _, protocol = conn.create_stream(lambda: LateWriter(""), data=b"request", fin=True)
        lost = await asyncio.wait_for(protocol.lost, WAIT)
        # The next request's answer comes after anything the first stream's end still did.
        assert await conn.open_stream(data=b"next", fin=True).read() == b"next"
        return lost, protocol.events, reports

    lost, events, reports = run(echo, client)
    assert lost is None and events == ["made", "data", "eof", "lost"], events
    assert any(isinstance(r.get("exception"), pymsquic.StreamError) for r in reports), reports


HUGE_VIEW_CHILD = """
import asyncio, mmap, resource, sys
import pymsquic
from pymsquic import asyncio as pa

# The process may not allocate 2 GiB more: a 4 GiB copy would fail (MemoryError), a
# refusal does not need it.
soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
resource.setrlimit(resource.RLIMIT_DATA, (2 << 30, hard))
with open(sys.argv[1], "rb") as f:  # a sparse file of 8 GiB + 2: no disk, no RAM
    huge = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
CREDENTIAL = pymsquic.Credential.self_signed()
CLIENT = pymsquic.Credential.client(verify=False)

async def echo(conn):
    async for stream in conn:
        stream.write(await stream.read(), fin=True)

async def main():
    async with pa.serve(echo, "127.0.0.1", 0, alpn="huge", credential=CREDENTIAL) as server:
        async with pa.connect("127.0.0.1", server.addresses[0][1], alpn="huge", credential=CLIENT) as conn:
            view = memoryview(huge)[::2]  # 4 GiB + 1 bytes, not contiguous: copied before it is sent
            kept = conn.open_stream()
            for call in (lambda: conn.open_stream(data=view, fin=True), lambda: kept.write(view)):
                try:
                    call()
                except ValueError as exc:
                    assert "at most" in str(exc), exc
                else:
                    raise AssertionError("a write of more than 4 GiB was accepted")
            kept.write(b"small", fin=True)  # nothing of the refused write went out
            assert await kept.read() == b"small"
            assert kept.id == 0  # and the refused open_stream opened nothing
    print("ok", pymsquic.execution_mode())

asyncio.run(main())
"""


# REVIEW: a non-contiguous buffer was copied whole before its size was checked: more
# than one write holds (4 GiB) took that much memory, then ValueError (or MemoryError).
def test_a_huge_non_contiguous_buffer_is_refused_before_it_is_copied(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate((8 << 30) + 2)
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", HUGE_VIEW_CHILD, str(sparse)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, f"{proc.returncode}\n{proc.stdout}\n{proc.stderr}"
