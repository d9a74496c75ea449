"""aioquic, and the packages that copy its API (qh3, aiopquic): server and client.

They share aioquic's protocol-and-events API, so one adapter serves all three;
``FLAVOR`` names the package. Sending is throttled on each package's own notion
of queued bytes, since aioquic's send_stream_data buffers without bound.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import os
import ssl
import time
from typing import Any

from bench.protocol import (
    ALPN, CHUNK, DATA, FOREVER, HEADER, HPS_PARALLEL, HS_REQUEST, HS_WORKLOADS, IDLE_CONNECTIONS, RPS_DOWN,
    RPS_PARALLEL, RPS_UP, UPLOAD, Clock, Result, rss_kb, run_handshake_loops, wait_for_stdin_close,
)

FLAVOR = os.environ.get("BENCH_FLAVOR", "aioquic")
_asyncio = importlib.import_module(f"{FLAVOR}.asyncio")
_config = importlib.import_module(f"{FLAVOR}.quic.configuration")
_events = importlib.import_module(f"{FLAVOR}.quic.events")

_MAX_QUEUED = 4 << 20
REQUEST = HEADER.pack(RPS_DOWN) + b"u" * RPS_UP


def configuration(is_client: bool, cert: str | None = None, key: str | None = None) -> Any:
    kwargs: dict[str, Any] = {"is_client": is_client, "alpn_protocols": [ALPN], "idle_timeout": 30.0}
    if FLAVOR == "aiopquic":
        kwargs["max_connections"] = IDLE_CONNECTIONS + 100
        if cert:
            kwargs.update(certificate_file=cert, private_key_file=key)
    if is_client:
        kwargs["verify_mode"] = ssl.CERT_NONE
    config = _config.QuicConfiguration(**kwargs)
    if cert and FLAVOR != "aiopquic":
        config.load_cert_chain(cert, key)
    return config


class PerfProtocol(_asyncio.QuicConnectionProtocol):  # type: ignore[misc,name-defined]
    """Both roles: the server answers requests; the client counts what arrives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers: dict[int, bytearray] = {}
        self.done: dict[int, asyncio.Future[int]] = {}
        self.received: dict[int, int] = {}
        self.stopped: set[int] = set()
        self.closed = False
        self.bytes = 0
        self.first_byte: dict[int, float] = {}  # client: when each stream's first reply byte arrived

    def flush(self) -> None:
        transmit = getattr(self, "transmit", None)
        if transmit is not None:
            transmit()

    async def send(self, stream_id: int, data: Any, end: bool) -> None:
        quic = self._quic
        if FLAVOR == "aiopquic":
            await quic.send_stream_data_drained(stream_id, data, end_stream=end)
            return
        quic.send_stream_data(stream_id, data, end_stream=end)
        self.flush()
        while not self.closed and stream_id not in self.stopped and self.queued(stream_id) > _MAX_QUEUED:
            await asyncio.sleep(0.001)

    def queued(self, stream_id: int) -> int:
        quic = self._quic
        if FLAVOR == "qh3":
            return quic.get_send_buffer_size(stream_id)
        stream = quic._streams.get(stream_id)  # aioquic has no public measure of its send buffer
        return len(stream.sender._buffer) if stream is not None else 0

    async def respond(self, stream_id: int, n: int) -> None:
        if n == 0:
            await self.send(stream_id, b"", True)
        while n and not self.closed and stream_id not in self.stopped:
            k = min(n, CHUNK)
            n -= k
            await self.send(stream_id, DATA if k == CHUNK else DATA[:k], n == 0)  # aiopquic takes bytes only

    def quic_event_received(self, event: Any) -> None:
        if isinstance(event, _events.StreamDataReceived):
            sid = event.stream_id
            self.bytes += len(event.data)
            if self._quic.configuration.is_client:
                if sid not in self.first_byte:
                    self.first_byte[sid] = time.perf_counter()
                self.received[sid] = self.received.get(sid, 0) + len(event.data)
                if event.end_stream and sid in self.done and not self.done[sid].done():
                    self.done[sid].set_result(self.received.pop(sid))
                return
            header = self.headers.setdefault(sid, bytearray())
            if len(header) < 8:
                header += event.data[: 8 - len(header)]
            if event.end_stream:
                asyncio.ensure_future(self.respond(sid, HEADER.unpack(bytes(self.headers.pop(sid)))[0]))
        elif isinstance(event, (_events.StreamReset, _events.StopSendingReceived)):
            self.stopped.add(event.stream_id)
        elif isinstance(event, _events.ConnectionTerminated):
            self.closed = True

    async def request(self, data: bytes, end: bool) -> tuple[int, asyncio.Future[int]]:
        while True:
            sid = self._quic.get_next_available_stream_id()
            try:
                self._quic.send_stream_data(sid, data, end_stream=end)
                break
            except ValueError:  # qh3: the peer's stream limit is reached until its MAX_STREAMS arrives
                await asyncio.sleep(0.0005)
        fut = self.done[sid] = asyncio.get_running_loop().create_future()
        self.flush()
        return sid, fut


async def server(port: int, cert: str, key: str) -> None:
    # Tickets (and with them 0-RTT, which aioquic offers with every ticket) for the hs-*
    # workloads; like msquic's, a ticket may be used more than once (no anti-replay).
    tickets: dict[bytes, Any] = {}

    def keep(ticket: Any) -> None:
        tickets[ticket.ticket] = ticket

    # aiopquic's serve() has no ticket hooks (and runs no hs-* workload: protocol.HS_IMPLS).
    ticket_hooks = {} if FLAVOR == "aiopquic" else {"session_ticket_fetcher": tickets.get,
                                                     "session_ticket_handler": keep}
    srv = await _asyncio.serve("127.0.0.1", port, configuration=configuration(False, cert, key),
                               create_protocol=PerfProtocol, **ticket_hooks)
    transport = getattr(srv, "_transport", None)
    bound = transport.get_extra_info("sockname")[1] if transport is not None else port
    print("ready", bound, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, wait_for_stdin_close)
    srv.close()


async def handshake_client(port: int, workload: str, duration: float) -> Result:
    """hs-*: one connection after another (HS_PARALLEL loops), one small request each."""
    config = configuration(True)
    latest: list[Any] = []  # the newest ticket any connection received
    closing: set[asyncio.Future[Any]] = set()

    async def one(result: Result, warmup: bool) -> None:
        cfg = copy.copy(config)
        if workload != "hs-full" and latest:
            cfg.session_ticket = latest[-1]
        early = workload == "hs-0rtt"
        start = time.perf_counter()
        # wait_connected=False: the request leaves with the first flight, as 0-RTT when the ticket allows it
        context = _asyncio.connect("127.0.0.1", port, configuration=cfg, create_protocol=PerfProtocol,
                                   session_ticket_handler=latest.append, wait_connected=not early)
        proto = await context.__aenter__()
        sid, fut = await proto.request(HS_REQUEST, True)
        await fut
        result.latencies_us.append((proto.first_byte[sid] - start) * 1e6)
        for _ in range(5000 if warmup and workload != "hs-full" else 0):  # the first ticket may follow the reply
            if latest:
                break
            await asyncio.sleep(0.001)
        tls = proto._quic.tls
        result.resumed += bool(getattr(tls, "session_resumed", False))
        # (a client holding a 0-RTT ticket offers early data in every ClientHello: count only where it sent some)
        result.early_data += early and bool(getattr(tls, "early_data_accepted", False))
        del latest[:-1]
        # The next connection starts now; this one's close (CONNECTION_CLOSE, then
        # aioquic's closing period of 3 PTO) completes in the background.
        closing.add(asyncio.ensure_future(context.__aexit__(None, None, None)))
        closing.difference_update([task for task in closing if task.done()])

    return await run_handshake_loops(one, duration)


async def client(port: int, workload: str, duration: float) -> Result:
    if workload in HS_WORKLOADS:
        return await handshake_client(port, workload, duration)
    result = Result()
    config = configuration(True)

    def connect() -> Any:
        return _asyncio.connect("127.0.0.1", port, configuration=config, create_protocol=PerfProtocol)

    if workload == "hps":
        clock = Clock(duration)

        async def handshakes() -> None:
            while clock.running():
                async with connect():
                    result.handshakes += 1

        await asyncio.gather(*(handshakes() for _ in range(HPS_PARALLEL)))
        return clock.finish(result)

    if workload == "idle":
        before = rss_kb()
        contexts = [connect() for _ in range(IDLE_CONNECTIONS)]
        for i in range(0, len(contexts), 50):
            await asyncio.gather(*(c.__aenter__() for c in contexts[i:i + 50]))
        result.connections, result.rss_delta_kb = len(contexts), rss_kb() - before
        return result

    async with connect() as proto:
        clock = Clock(duration)
        if workload == "download":
            await proto.request(HEADER.pack(FOREVER), True)
            while clock.running():
                await asyncio.sleep(0.05)
            result.bytes = proto.bytes
            clock.finish(result)
        elif workload == "upload":
            sid, fut = await proto.request(HEADER.pack(0), False)
            while clock.running():
                await proto.send(sid, UPLOAD, False)
                result.bytes += CHUNK
            await proto.send(sid, b"", True)
            await fut
            clock.finish(result)
        else:

            async def requests() -> None:
                while clock.running():
                    start = time.perf_counter()
                    _, fut = await proto.request(REQUEST, True)
                    result.bytes += await fut
                    result.latencies_us.append((time.perf_counter() - start) * 1e6)
                    result.requests += 1

            await asyncio.gather(*(requests() for _ in range(RPS_PARALLEL if workload == "rps" else 1)))
            clock.finish(result)
    return result


def run_server(port: int, cert: str, key: str) -> None:
    asyncio.run(server(port, cert, key))


def run_client(port: int, workload: str, duration: float) -> Result:
    return asyncio.run(client(port, workload, duration))
