"""pymsquic with the blocking API (pymsquic.sync): a thread per connection and per stream (pooled)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pymsquic
from bench.protocol import (
    ALPN, CHUNK, DATA, FOREVER, HEADER, HPS_PARALLEL, HS_DOWN, HS_PARALLEL, HS_REQUEST, HS_WORKLOADS, IDLE_CONNECTIONS,
    RPS_PARALLEL, UPLOAD, Clock, Result, rss_kb, wait_for_stdin_close,
)
from bench.impls.pymsquic_asyncio import CLIENT_SETTINGS, REQUEST, SETTINGS, send_ticket

_pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="stream")


class _Sink(threading.local):
    """Uploads are read and dropped: one buffer per server thread (a shared one is a
    data race that ThreadSanitizer rightly reports, harmless as it is)."""

    def __init__(self) -> None:
        self.buffer = bytearray(CHUNK)


_SINK = _Sink()


def respond(stream: pymsquic.sync.Stream) -> None:
    try:
        n = HEADER.unpack(stream.readexactly(8))[0]
        sink = _SINK.buffer
        while stream.readinto(sink):
            pass
        if n == 0:
            stream.finish()
        data = memoryview(DATA)
        while n:
            k = min(n, CHUNK)
            n -= k
            stream.write(data[:k], fin=n == 0)
            stream.drain()
    except (pymsquic.StreamError, pymsquic.ConnectionClosed):
        pass


def handle(conn: pymsquic.sync.Connection) -> None:
    send_ticket(conn)
    try:
        for stream in conn:
            _pool.submit(respond, stream)
    except pymsquic.ConnectionClosed:
        pass  # a client that exited without closing: its connection timed out


def run_server(port: int, cert: str, key: str) -> None:
    credential = pymsquic.Credential.from_files(cert, key)
    with pymsquic.sync.serve(handle, "127.0.0.1", port, alpn=ALPN, credential=credential, settings=SETTINGS,
                             backlog=4096, close_timeout=0.5) as srv:
        print("ready", srv.addresses[0][1], flush=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        wait_for_stdin_close()


def in_threads(target: Any, count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def handshake_client(port: int, workload: str, config: pymsquic.Configuration, duration: float) -> Result:
    """hs-*: one connection after another (HS_PARALLEL threads), one small request each."""
    result = Result()
    lock = threading.Lock()
    latest: list[bytes] = []  # the newest ticket any connection received
    resume, early = workload != "hs-full", workload == "hs-0rtt"

    def one(warmup: bool = False) -> None:
        options: dict[str, Any] = {}
        if resume and latest:
            options = {"session_ticket": latest[-1], "early_data": early}
        start = time.perf_counter()
        # with early_data connect returns before the handshake: the request goes out as 0-RTT
        conn = pymsquic.sync.connect("127.0.0.1", port, configuration=config, open_timeout=10, **options)
        stream = conn.open_stream()
        stream.write(HS_REQUEST, fin=True)
        answer = stream.read(HS_DOWN)
        ttfb = (time.perf_counter() - start) * 1e6
        while answer:
            answer = stream.read(HS_DOWN)
        resumed = accepted = False
        if resume:
            conn.wait_handshake(timeout=10)
            for _ in range(5000 if warmup else 0):  # the first ticket may follow the reply
                if conn.session_ticket is not None:
                    break
                time.sleep(0.001)
            resumed, accepted = bool(conn.session_resumed), bool(conn.early_data_accepted)
            ticket = conn.session_ticket
        _pool.submit(conn.close)  # the next connection starts now; this one's close completes in the background
        with lock:
            result.latencies_us.append(ttfb)
            result.resumed += resumed
            result.early_data += accepted
            if resume and ticket is not None:
                latest[:] = [ticket]

    one(warmup=True)  # untimed, in every mode: the first ticket, warm caches
    result = Result()
    clock = Clock(duration)

    def loop() -> None:
        while clock.running():
            one()
            with lock:
                result.handshakes += 1

    in_threads(loop, HS_PARALLEL)
    return clock.finish(result)


def run_client(port: int, workload: str, duration: float) -> Result:
    registration = pymsquic.default_registration()
    config = pymsquic.Configuration(registration, ALPN, pymsquic.Credential.client(verify=False), CLIENT_SETTINGS)
    if workload in HS_WORKLOADS:
        return handshake_client(port, workload, config, duration)
    result = Result()
    lock = threading.Lock()

    def connect() -> pymsquic.sync.Connection:
        return pymsquic.sync.connect("127.0.0.1", port, configuration=config, open_timeout=10)

    if workload == "hps":
        clock = Clock(duration)

        def handshakes() -> None:
            while clock.running():
                connect().close()
                with lock:
                    result.handshakes += 1

        in_threads(handshakes, HPS_PARALLEL)
        return clock.finish(result)

    if workload == "idle":
        before = rss_kb()
        conns = [connect() for _ in range(IDLE_CONNECTIONS)]
        result.connections, result.rss_delta_kb = len(conns), rss_kb() - before
        return result

    conn = connect()
    clock = Clock(duration)
    if workload == "download":
        stream = conn.open_stream()
        stream.write(HEADER.pack(FOREVER), fin=True)
        sink = bytearray(CHUNK)
        while clock.running():
            result.bytes += stream.readinto(sink)
        clock.finish(result)
    elif workload == "upload":
        stream = conn.open_stream()
        stream.write(HEADER.pack(0))
        chunk = memoryview(UPLOAD)
        while clock.running():
            stream.write(chunk)
            result.bytes += CHUNK
            stream.drain()
        stream.finish()
        stream.read()
        clock.finish(result)
    else:

        def requests() -> None:
            while clock.running():
                start = time.perf_counter()
                stream = conn.open_stream(data=REQUEST, fin=True)  # open, send, FIN: one native call
                answer = stream.read()
                with lock:
                    result.latencies_us.append((time.perf_counter() - start) * 1e6)
                    result.requests += 1
                    result.bytes += len(answer)

        in_threads(requests, RPS_PARALLEL if workload == "rps" else 1)
        clock.finish(result)
    conn.close()
    return result
