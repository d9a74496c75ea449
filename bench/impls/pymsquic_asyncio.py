"""pymsquic with asyncio, server and client: the binding as most users will use it."""

from __future__ import annotations

import asyncio
import time

import pymsquic
from bench.protocol import (
    ALPN, CHUNK, DATA, FOREVER, HEADER, HPS_PARALLEL, IDLE_CONNECTIONS, RPS_DOWN, RPS_PARALLEL, RPS_UP, UPLOAD,
    Clock, Result, rss_kb, wait_for_stdin_close,
)

SETTINGS = pymsquic.Settings(peer_bidi_stream_count=1000, idle_timeout_ms=30_000)
CLIENT_SETTINGS = pymsquic.Settings(idle_timeout_ms=30_000)
REQUEST = HEADER.pack(RPS_DOWN) + b"u" * RPS_UP


_SINK = bytearray(CHUNK)  # uploads are read and dropped: one buffer for every stream


async def respond(stream: pymsquic.Stream) -> None:
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


async def handle(conn: pymsquic.Connection) -> None:
    tasks = set()
    async for stream in conn:
        task = asyncio.create_task(respond(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def server(port: int, cert: str, key: str) -> None:
    credential = pymsquic.Credential.from_files(cert, key)
    async with await pymsquic.serve(handle, "127.0.0.1", port, alpn=ALPN, credential=credential,
                                    settings=SETTINGS, backlog=4096, linger=0.5) as srv:
        print("ready", srv.addresses[0][1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, wait_for_stdin_close)


async def client(port: int, workload: str, duration: float) -> Result:
    registration = pymsquic.default_registration()
    config = pymsquic.Configuration(registration, ALPN, pymsquic.Credential.client(verify=False), CLIENT_SETTINGS)
    result = Result()

    async def connect() -> pymsquic.Connection:
        return await pymsquic.Connection.connect_async(registration, config, "127.0.0.1", port, timeout=10)

    if workload == "hps":
        clock = Clock(duration)

        async def handshakes() -> None:
            while clock.running():
                conn = await connect()
                result.handshakes += 1
                conn.close()

        await asyncio.gather(*(handshakes() for _ in range(HPS_PARALLEL)))
        return clock.finish(result)

    if workload == "idle":
        before = rss_kb()
        conns = []
        for _ in range(IDLE_CONNECTIONS // 50):
            conns += await asyncio.gather(*(connect() for _ in range(50)))
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
    else:  # rps, latency

        async def requests() -> None:
            while clock.running():
                start = time.perf_counter()
                stream = conn.open_stream()
                stream.write(REQUEST, fin=True)
                answer = await stream.read()
                result.latencies_us.append((time.perf_counter() - start) * 1e6)
                result.requests += 1
                result.bytes += len(answer)

        await asyncio.gather(*(requests() for _ in range(RPS_PARALLEL if workload == "rps" else 1)))
        clock.finish(result)
    conn.close()
    return result


def run_server(port: int, cert: str, key: str) -> None:
    asyncio.run(server(port, cert, key))


def run_client(port: int, workload: str, duration: float) -> Result:
    return asyncio.run(client(port, workload, duration))
