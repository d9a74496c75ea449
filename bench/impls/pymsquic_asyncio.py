"""pymsquic with asyncio (pymsquic.asyncio), server and client: the binding as most users will use it."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pymsquic
from bench.protocol import (
    ALPN, CHUNK, DATA, FOREVER, HEADER, HPS_PARALLEL, HS_DOWN, HS_REQUEST, HS_WORKLOADS, IDLE_CONNECTIONS,
    RPS_DOWN, RPS_PARALLEL, RPS_UP, UPLOAD, Clock, Result, rss_kb, run_handshake_loops, wait_for_stdin_close,
)

# "fifo" or "round_robin" (pymsquic's default): the pymsquic-asyncio-fifo variant sets it.
SCHEDULING = os.environ.get("BENCH_STREAM_SCHEDULING") or None

# "protocol": the rps and latency requests go through StreamProtocols (Connection.create_stream),
# chained by callbacks, instead of a coroutine per request loop (the default, "await").
CLIENT_STYLE = os.environ.get("BENCH_ASYNCIO_CLIENT", "await")

# The server allows resumption and 0-RTT (for the hs-* workloads; the others make no use of it).
SETTINGS = pymsquic.Settings(peer_bidi_stream_count=1000, idle_timeout_ms=30_000, stream_scheduling=SCHEDULING,
                             server_resumption_level="resume_and_zero_rtt")
CLIENT_SETTINGS = pymsquic.Settings(idle_timeout_ms=30_000, stream_scheduling=SCHEDULING)
REQUEST = HEADER.pack(RPS_DOWN) + b"u" * RPS_UP


_SINK = bytearray(CHUNK)  # uploads are read and dropped: one buffer for every stream


async def respond(stream: pymsquic.asyncio.Stream) -> None:
    try:
        n = HEADER.unpack(await stream.readexactly(8))[0]
        sink = _SINK
        while await stream.readinto(sink):
            pass
        if n == 0:
            stream.finish()
        data = memoryview(DATA)
        while n:
            k = min(n, CHUNK)
            n -= k
            stream.write(data[:k], fin=n == 0)
            await stream.drain()
    except (pymsquic.StreamError, pymsquic.ConnectionClosed):
        pass  # the client stopped reading (download) or went away


def send_ticket(conn: pymsquic.asyncio.Connection | pymsquic.sync.Connection) -> None:
    """A session ticket for every client (msquic sends none by itself), as the native server does;
    final: the only one, so msquic frees the connection's TLS state after it."""
    try:
        conn.send_resumption_ticket(final=True)
    except pymsquic.QuicError:
        pass  # the client has gone already


async def handle(conn: pymsquic.asyncio.Connection) -> None:
    send_ticket(conn)
    tasks = set()
    try:
        async for stream in conn:
            task = asyncio.create_task(respond(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except pymsquic.ConnectionClosed:
        pass  # a client that exited without closing: its connection timed out


async def server(port: int, cert: str, key: str) -> None:
    credential = pymsquic.Credential.from_files(cert, key)
    async with pymsquic.asyncio.serve(handle, "127.0.0.1", port, alpn=ALPN, credential=credential,
                                      settings=SETTINGS, backlog=4096, close_timeout=0.5) as srv:
        print("ready", srv.addresses[0][1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, wait_for_stdin_close)


async def handshake_client(port: int, workload: str, config: pymsquic.Configuration, duration: float) -> Result:
    """hs-*: one connection after another (HS_PARALLEL loops), one small request each."""
    latest: list[bytes] = []  # the newest ticket any connection received
    resume, early = workload != "hs-full", workload == "hs-0rtt"
    closing: set[asyncio.Task[None]] = set()

    async def one(result: Result, warmup: bool) -> None:
        options: dict[str, Any] = {}
        if resume and latest:
            options = {"session_ticket": latest[-1], "early_data": early}
        start = time.perf_counter()
        # with early_data connect returns before the handshake: the request goes out as 0-RTT
        conn = await pymsquic.asyncio.connect("127.0.0.1", port, configuration=config, open_timeout=10, **options)
        stream = conn.open_stream()
        stream.write(HS_REQUEST, fin=True)
        answer = await stream.read(HS_DOWN)
        result.latencies_us.append((time.perf_counter() - start) * 1e6)
        while answer:
            answer = await stream.read(HS_DOWN)
        if resume:
            await conn.wait_handshake()
            for _ in range(5000 if warmup else 0):  # the first ticket may follow the reply
                if conn.session_ticket is not None:
                    break
                await asyncio.sleep(0.001)
            result.resumed += bool(conn.session_resumed)
            result.early_data += bool(conn.early_data_accepted)
            if conn.session_ticket is not None:
                latest[:] = [conn.session_ticket]
        # the next connection starts now; this one's close completes in the background
        closing.add(asyncio.create_task(conn.close()))
        closing.difference_update([task for task in closing if task.done()])

    return await run_handshake_loops(one, duration)


async def client(port: int, workload: str, duration: float) -> Result:
    registration = pymsquic.default_registration()
    config = pymsquic.Configuration(registration, ALPN, pymsquic.Credential.client(verify=False), CLIENT_SETTINGS)
    if workload in HS_WORKLOADS:
        return await handshake_client(port, workload, config, duration)
    result = Result()

    async def connect() -> pymsquic.asyncio.Connection:
        return await pymsquic.asyncio.connect("127.0.0.1", port, configuration=config, open_timeout=10)

    if workload == "hps":
        clock = Clock(duration)

        async def handshakes() -> None:
            while clock.running():
                conn = await connect()
                result.handshakes += 1
                await conn.close()  # until msquic's SHUTDOWN_COMPLETE, as the native client waits

        await asyncio.gather(*(handshakes() for _ in range(HPS_PARALLEL)))
        return clock.finish(result)

    if workload == "idle":
        before = rss_kb()
        conns = []
        for start in range(0, IDLE_CONNECTIONS, 50):  # 50 handshakes at a time
            conns += await asyncio.gather(*(connect() for _ in range(min(50, IDLE_CONNECTIONS - start))))
        result.connections, result.rss_delta_kb = len(conns), rss_kb() - before
        return result

    conn = await connect()
    clock = Clock(duration)
    if workload == "download":
        stream = conn.open_stream()
        stream.write(HEADER.pack(FOREVER), fin=True)
        sink = bytearray(CHUNK)
        while clock.running():
            result.bytes += await stream.readinto(sink)
        clock.finish(result)
    elif workload == "upload":
        stream = conn.open_stream()
        stream.write(HEADER.pack(0))
        chunk = memoryview(UPLOAD)
        while clock.running():
            stream.write(chunk)
            result.bytes += CHUNK
            await stream.drain()
        stream.finish()
        await stream.read()  # the server's FIN: it has read everything
        clock.finish(result)
    elif workload == "fairness":
        await fairness(conn, duration, result)
    elif CLIENT_STYLE == "protocol":  # rps, latency
        await protocol_requests(conn, RPS_PARALLEL if workload == "rps" else 1, clock, result)
        clock.finish(result)
    else:  # rps, latency

        async def requests() -> None:
            while clock.running():
                start = time.perf_counter()
                stream = conn.open_stream(data=REQUEST, fin=True)  # open, send, FIN: one native call
                answer = await stream.read()
                result.latencies_us.append((time.perf_counter() - start) * 1e6)
                result.requests += 1
                result.bytes += len(answer)

        await asyncio.gather(*(requests() for _ in range(RPS_PARALLEL if workload == "rps" else 1)))
        clock.finish(result)
    await conn.close()
    return result


class _Answer(pymsquic.asyncio.StreamProtocol):
    """One request of a chain: the answer's FIN records it and sends the next one."""

    def __init__(self, chain: "_Chain") -> None:
        self.chain = chain
        self.size = 0

    def data_received(self, data: bytes) -> None:
        self.size += len(data)

    def eof_received(self) -> None:
        self.chain.answered(self.size)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.chain.failed(exc)


class _Chain:
    """Requests one after another on callbacks alone: no task, no future per request."""

    def __init__(self, conn: pymsquic.asyncio.Connection, clock: Clock, result: Result) -> None:
        self.conn, self.clock, self.result = conn, clock, result
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.start = 0.0

    def send(self) -> None:
        self.start = time.perf_counter()
        self.conn.create_stream(lambda: _Answer(self), data=REQUEST, fin=True)

    def answered(self, size: int) -> None:
        result = self.result
        result.latencies_us.append((time.perf_counter() - self.start) * 1e6)
        result.requests += 1
        result.bytes += size
        if self.clock.running():
            self.send()
        elif not self.done.done():
            self.done.set_result(None)

    def failed(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def protocol_requests(conn: pymsquic.asyncio.Connection, parallel: int, clock: Clock, result: Result) -> None:
    chains = [_Chain(conn, clock, result) for _ in range(parallel)]
    for chain in chains:
        chain.send()
    await asyncio.gather(*(chain.done for chain in chains))


async def fairness(conn: pymsquic.asyncio.Connection, duration: float, result: Result) -> None:
    """Requests one at a time beside a saturating download on the same connection.
    A request still waiting at the deadline counts with the time it waited so far."""
    started = asyncio.Event()
    bulk = asyncio.create_task(saturate(conn, started))
    await started.wait()
    clock = Clock(duration)

    async def request() -> None:
        stream = conn.open_stream(data=REQUEST, fin=True)
        result.bytes += len(await stream.read())

    while clock.running():
        start = time.perf_counter()
        try:
            await asyncio.wait_for(request(), max(clock.deadline - start, 0.001))
        except asyncio.TimeoutError:
            result.latencies_us.append((time.perf_counter() - start) * 1e6)
            break
        result.latencies_us.append((time.perf_counter() - start) * 1e6)
        result.requests += 1
    clock.finish(result)
    bulk.cancel()


async def saturate(conn: pymsquic.asyncio.Connection, started: asyncio.Event) -> None:
    """Reads a download stream for as long as the connection lasts."""
    stream = conn.open_stream()
    stream.write(HEADER.pack(FOREVER), fin=True)
    sink = bytearray(CHUNK)
    moved = 0
    while True:
        moved += await stream.readinto(sink)
        if moved >= 8 * CHUNK:
            started.set()


def run_server(port: int, cert: str, key: str) -> None:
    asyncio.run(server(port, cert, key))


def run_client(port: int, workload: str, duration: float) -> Result:
    return asyncio.run(client(port, workload, duration))
