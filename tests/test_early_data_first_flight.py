"""0-RTT every time: an early-data client's first request goes in its first flight.

msquic sends a stream's data as 0-RTT only if the stream was started and its
data queued before the connection's worker built the first flight. With
``early_data=True`` and a ticket, ``connect`` therefore defers msquic's
ConnectionStart to the first wait on the connection or its streams (or, in
asyncio, the next turn of the loop; or close() once something was written):
whatever was written before is queued first, every time. These tests
check that on the server's side, a pymsquic server (its msquic flags the stream
as opened by a 0-RTT packet) and an aioquic server (its qlog shows the stream's
frames in 0-RTT packets), and that a deferred start never hangs or leaks.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from aioquic.asyncio import serve as aioquic_serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.logger import QuicLogger
from aioquic.tls import SessionTicket
from test_resumption import (
    EchoServer,
    TicketBox,
    _aioquic_server_sends_tickets_before_the_clients_finished,
    round_trip,
    serve_in,
)

import pymsquic

from conftest import ALPN
from worlds import (
    WAIT,
    AsyncioWorld,
    SyncWorld,
    World,
    client_credential,
    worlds,
)

#: Connections in a row that must all carry their request in 0-RTT packets.
ROUNDS = 50


def recording_handler(seen: list[dict[str, Any]]) -> Any:
    """Send a ticket; for each stream record whether msquic saw it open in a 0-RTT
    packet (before answering, so the client's read orders it), then echo it.
    The count of early streams is read once the handshake completed: the
    listener hands a 0-RTT connection over at its first early stream, while the
    client's later 0-RTT packets may still be on their way (they precede its
    Finished, so the count is final at CONNECTED)."""

    async def handler(w: World, conn: Any) -> None:
        conn.send_resumption_ticket(b"")
        while True:
            try:
                stream = await w.wait(conn.accept_stream)
                await w.wait(conn.wait_handshake)
            except pymsquic.ConnectionClosed:
                return
            seen.append({"resumed": conn.session_resumed, "opened_in_0rtt": stream.opened_in_0rtt,
                         "early_streams": conn.early_data_streams})
            stream.write(await w.wait(stream.read, -1), fin=True)

    return handler


async def a_ticket(w: World, port: int, registration: pymsquic.Registration) -> bytes:
    box = TicketBox(w)
    conn = await w.connect(port, registration, on_session_ticket=box)
    assert await round_trip(w, conn, b"full") == b"full"
    ticket = await box.first()
    await w.call(conn.close)
    return ticket


@worlds
def test_first_request_goes_in_0rtt_every_time(w: World, registration, server_credential) -> None:
    async def body() -> None:
        seen: list[dict[str, Any]] = []
        async with await serve_in(w, recording_handler(seen), registration, server_credential) as server:
            ticket = await a_ticket(w, server.port, registration)
            for i in range(ROUNDS):
                request = b"request %d " % i * 500  # several packets' worth: every byte must come back
                conn = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
                stream = conn.open_stream()
                stream.write(request, fin=True)
                assert await w.wait(stream.read, -1) == request
                await w.wait(conn.wait_handshake)
                assert conn.session_resumed and conn.early_data_accepted is True
                await w.call(conn.close)
        assert seen[0] == {"resumed": False, "opened_in_0rtt": False, "early_streams": 0}
        assert seen[1:] == [{"resumed": True, "opened_in_0rtt": True, "early_streams": 1}] * ROUNDS

    w.run(body())


@worlds
def test_everything_written_before_the_first_wait_goes_in_0rtt(w: World, registration, server_credential) -> None:
    """Two streams, each written in several calls (as an HTTP/3 client writes its
    control stream and then its request): all of it precedes the start."""

    async def body() -> None:
        seen: list[dict[str, Any]] = []
        async with await serve_in(w, recording_handler(seen), registration, server_credential) as server:
            ticket = await a_ticket(w, server.port, registration)
            for _ in range(ROUNDS // 5):
                conn = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
                streams = [conn.open_stream() for _ in range(2)]
                for stream in streams:
                    stream.write(b"head ")
                    stream.writelines([b"body ", b"more"])
                    stream.finish()
                for stream in streams:
                    assert await w.wait(stream.read, -1) == b"head body more"
                await w.call(conn.close)
        assert seen[1:] == [{"resumed": True, "opened_in_0rtt": True, "early_streams": 2}] * (2 * ROUNDS // 5)

    w.run(body())


@worlds
def test_write_then_close_before_the_start_delivers(w: World, registration, server_credential) -> None:
    """close() right after writing, before any wait: the connection starts and
    the data arrives before the close (as for any connection, close() waits
    until msquic delivered it)."""

    async def body() -> None:
        got: list[bytes] = []
        delivered: Any = asyncio.Event() if w.name == "asyncio" else threading.Event()

        async def handler(w: World, conn: Any) -> None:
            conn.send_resumption_ticket(b"")
            try:
                stream = await w.wait(conn.accept_stream)
                got.append(await w.wait(stream.read, -1))
                delivered.set()
            except pymsquic.ConnectionClosed:
                pass  # the ticket's connection: closed without a stream

        async with await serve_in(w, handler, registration, server_credential) as server:
            box = TicketBox(w)
            conn = await w.connect(server.port, registration, on_session_ticket=box)
            ticket = await box.first()
            await w.call(conn.close)
            conn = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
            conn.open_stream().write(b"fire and forget", fin=True)
            await w.call(conn.close)
            assert conn.session_resumed
            # the server's handler may run after the client's close: wait for it
            if w.name == "asyncio":
                await asyncio.wait_for(delivered.wait(), WAIT)
            else:
                assert delivered.wait(WAIT)
        assert got == [b"fire and forget"]

    w.run(body())


@worlds
def test_closing_the_configuration_before_the_start_delivers(w: World, registration, server_credential) -> None:
    """msquic takes its reference to the configuration only at ConnectionStart:
    closing the configuration starts the connections still waiting for it first,
    so their start uses a live handle and what they wrote arrives."""

    async def body() -> None:
        seen: list[dict[str, Any]] = []
        async with await serve_in(w, recording_handler(seen), registration, server_credential) as server:
            ticket = await a_ticket(w, server.port, registration)
            conn = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
            stream = conn.open_stream()
            stream.write(b"written before the close", fin=True)
            conn.configuration.close()  # the cached configuration connect() used
            assert conn.configuration.closed
            assert await w.wait(stream.read, -1) == b"written before the close"
            assert conn.session_resumed
            await w.call(conn.close)
        assert seen[1:] == [{"resumed": True, "opened_in_0rtt": True, "early_streams": 1}]

    w.run(body())


def test_configuration_closed_while_another_thread_starts(registration, server_credential) -> None:
    """A sync connection used from two threads: one's first read makes the
    deferred start while the other closes the connection's configuration. The
    close must not release the configuration before msquic holds it (the start
    in flight is waited for, not skipped), and every request arrives."""
    w = SyncWorld()

    async def body() -> None:
        seen: list[dict[str, Any]] = []
        async with await serve_in(w, recording_handler(seen), registration, server_credential) as server:
            ticket = await a_ticket(w, server.port, registration)
            for i in range(ROUNDS):
                configuration = pymsquic.Configuration(registration, ALPN, client_credential())
                conn = pymsquic.sync.connect("127.0.0.1", server.port, configuration=configuration,
                                             session_ticket=ticket, early_data=True)
                stream = conn.open_stream()
                stream.write(b"race %d" % i, fin=True)
                both = threading.Barrier(2)
                got: list[bytes] = []

                def reader(stream: Any, both: threading.Barrier, got: list[bytes]) -> None:
                    both.wait()
                    got.append(stream.read(-1, timeout=WAIT))

                thread = threading.Thread(target=reader, args=(stream, both, got))
                thread.start()
                both.wait()
                configuration.close()  # its last holder but msquic: the start must hold it first
                thread.join(WAIT)
                assert got == [b"race %d" % i]
                conn.close()
        assert len(seen) == ROUNDS + 1

    w.run(body())


def zero_rtt_stream_frames(server: EchoServer) -> list[int]:
    """The stream ids of the STREAM frames aioquic decrypted from 0-RTT packets (its qlog)."""
    trace = server._trace
    assert trace is not None
    return [frame["stream_id"] for e in trace.to_dict()["events"]
            if e["name"] == "transport:packet_received" and e["data"]["header"]["packet_type"] == "0RTT"
            for frame in e["data"]["frames"] if frame["frame_type"] == "stream"]


@pytest.mark.skipif(_aioquic_server_sends_tickets_before_the_clients_finished(),
                    reason="this aioquic sends its ticket before the client's Finished; msquic reports none")
@worlds
def test_first_request_reaches_aioquic_in_0rtt_every_time(w: World, registration, cert_files) -> None:
    """aioquic as the server: its own record of the packets it decrypted says the
    request's STREAM frames came in 0-RTT packets, on every connection."""
    certfile, keyfile = cert_files
    credential = pymsquic.Credential.client(ca_file=certfile)
    store: dict[bytes, SessionTicket] = {}
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve_forever() -> None:  # aioquic on a loop of its own: the sync world blocks its thread
        config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], quic_logger=QuicLogger())
        config.load_cert_chain(certfile, keyfile)
        server = await aioquic_serve("127.0.0.1", 0, configuration=config, create_protocol=EchoServer,
                                     session_ticket_fetcher=store.get,
                                     session_ticket_handler=lambda t: store.__setitem__(t.ticket, t))
        state["port"] = server._transport.get_extra_info("sockname")[1]
        state["stop"] = stop = asyncio.Event()
        state["loop"] = asyncio.get_running_loop()
        ready.set()
        await stop.wait()
        server.close()

    EchoServer.instances.clear()
    thread = threading.Thread(target=asyncio.run, args=(serve_forever(),), daemon=True)
    thread.start()
    assert ready.wait(WAIT)

    async def connect(**kwargs: Any) -> Any:
        if w.name == "asyncio":
            return await pymsquic.asyncio.connect("127.0.0.1", state["port"], alpn=ALPN, credential=credential,
                                                  server_name="localhost", registration=registration, **kwargs)
        return pymsquic.sync.connect("127.0.0.1", state["port"], alpn=ALPN, credential=credential,
                                     server_name="localhost", registration=registration, **kwargs)

    async def body() -> None:
        box = TicketBox(w)
        conn = await connect(on_session_ticket=box)
        assert await round_trip(w, conn, b"full") == b"full"
        ticket = await box.first()
        await w.call(conn.close)
        for i in range(20):
            request = b"GET /%d" % i
            conn = await connect(session_ticket=ticket, early_data=True)
            stream = conn.open_stream()
            stream.write(request, fin=True)
            assert await w.wait(stream.read, -1) == request
            await w.wait(conn.wait_handshake)
            assert conn.session_resumed and conn.early_data_accepted is True
            await w.call(conn.close)
            server = EchoServer.instances[-1]
            assert server.handshake is not None and server.handshake.early_data_accepted
            assert zero_rtt_stream_frames(server) == [stream.id], f"connection {i}"

    try:
        w.run(body())
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(WAIT)


@worlds
def test_an_early_connection_nobody_writes_to_still_handshakes(w: World, registration, server_credential) -> None:
    """No write: the first wait starts it (and in asyncio the next turn of the loop)."""

    async def body() -> None:
        seen: list[dict[str, Any]] = []
        async with await serve_in(w, recording_handler(seen), registration, server_credential) as server:
            ticket = await a_ticket(w, server.port, registration)
            conn = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
            await w.wait(conn.wait_handshake)
            assert conn.session_resumed and conn.early_data_accepted is True
            # a stream written after the handshake: plain 1-RTT data, echoed whole
            assert await round_trip(w, conn, b"late") == b"late"
            await w.call(conn.close)
            assert conn.is_closed
        assert seen[-1] == {"resumed": True, "opened_in_0rtt": False, "early_streams": 0}

    w.run(body())


@worlds
def test_stats_of_an_early_connection_start_it(w: World, registration, server_credential) -> None:
    """stats() asks msquic about a running connection: it makes a deferred start
    first (else it would raise ConnectionClosed for a connection never started)."""

    async def body() -> None:
        async with await serve_in(w, recording_handler([]), registration, server_credential) as server:
            ticket = await a_ticket(w, server.port, registration)
            conn = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
            conn.stats()  # ConnectionClosed if it did not start the connection
            await w.wait(conn.wait_handshake)
            assert conn.session_resumed and conn.stats().handshake_us > 0
            await w.call(conn.close)

    w.run(body())


def test_asyncio_early_connection_starts_at_the_next_turn_of_the_loop(registration, server_credential) -> None:
    """The call_soon backstop: never written, never awaited, it handshakes anyway
    (here: the server's ticket, which comes only after a handshake, reaches the
    callback while the test waits on its own event, not on the connection)."""
    w = AsyncioWorld()

    async def body() -> None:
        async with await serve_in(w, recording_handler([]), registration, server_credential) as server:
            ticket = await a_ticket(w, server.port, registration)
            box = TicketBox(w)
            conn = await w.connect(server.port, registration, session_ticket=ticket, early_data=True,
                                   on_session_ticket=box)
            await box.first()
            assert conn.session_resumed
            await conn.close()

    w.run(body())


@worlds
def test_close_before_the_start(w: World, registration, server_credential) -> None:
    """close() before any write or wait: the connection never starts (the server
    sees nothing), its unwritten stream ends, nothing hangs or leaks (the
    registration fixture's close would hang on a handle left open)."""

    async def body() -> None:
        seen: list[dict[str, Any]] = []
        async with await serve_in(w, recording_handler(seen), registration, server_credential) as server:
            ticket = await a_ticket(w, server.port, registration)
            conn = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
            stream = conn.open_stream()  # opened, never written
            await w.call(conn.close)
            assert conn.is_closed and stream.is_closed
            assert conn.early_data_accepted is None  # no handshake happened
            assert conn.stats().packets_sent == 0  # msquic finished it all the same: its final numbers
            with pytest.raises(pymsquic.ConnectionClosed):
                conn.open_stream()
            with pytest.raises(pymsquic.QuicError):
                stream.write(b"too late")
            # a connection dropped unstarted, without close(), is released too
            dropped = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
            dropped.open_stream()
            del dropped
            assert await round_trip(w, await w.connect(server.port, registration), b"x") == b"x"
        assert len(seen) == 2  # the ticket's connection and the last one: none of the unstarted

    w.run(body())


def test_registration_close_with_an_unstarted_early_connection(server_credential) -> None:
    """Closing the registration while an early-data connection waits for its start
    (sync: nothing starts it until a write or wait) must not hang."""
    w = SyncWorld()
    registration = pymsquic.Registration("early-unstarted")
    try:

        async def body() -> Any:
            async with await serve_in(w, recording_handler([]), registration, server_credential) as server:
                ticket = await a_ticket(w, server.port, registration)
                early = await w.connect(server.port, registration, session_ticket=ticket, early_data=True)
                early.open_stream()
                return early

        early = w.run(body())
    finally:
        done = threading.Event()
        closer = threading.Thread(target=lambda: (registration.close(), done.set()), daemon=True)
        closer.start()
        assert done.wait(WAIT), "Registration.close() hung on an unstarted early-data connection"
    assert early.is_closed
