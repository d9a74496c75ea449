"""Session resumption, 0-RTT, ticket keys and fleets (pymsquic.resumption).

Against pymsquic itself in both worlds, against aioquic (an implementation
nobody here wrote) in both roles, and across two server processes that share
a ticket key.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import ssl
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol
from aioquic.asyncio import connect as aioquic_connect
from aioquic.asyncio import serve as aioquic_serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, QuicEvent, StreamDataReceived
from aioquic.quic.logger import QuicLogger
from aioquic.tls import SessionTicket

import pymsquic
from pymsquic import ResumptionLevel, Settings, TicketKey

from conftest import ALPN
from worlds import (
    WAIT,
    AsyncioWorld,
    ServerHandle,
    SyncWorld,
    World,
    client_credential,
    worlds,
)

PEERS = Path(__file__).parent / "peers"
#: Larger than the first flight and than one 0-RTT packet: rejected early data
#: must come back whole, from several packets.
PAYLOAD = bytes(range(256)) * 800  # 200 KiB
SERVER_SETTINGS = Settings(peer_bidi_stream_count=16, idle_timeout_ms=20_000,
                           server_resumption_level=ResumptionLevel.RESUME_AND_ZERO_RTT)


# ---- a pymsquic server in either world ---------------------------------------------

class Seen:
    """What a server's handler saw of each connection, in order."""

    def __init__(self) -> None:
        self.connections: list[dict[str, Any]] = []


def echo_handler(seen: Seen, app_data: bytes | None):
    """Record the connection's resumption facts, send a ticket (with ``app_data``;
    None: send none), echo each stream until the peer closes."""

    async def handler(w: World, conn: Any) -> None:
        record = {"resumed": conn.session_resumed, "app_data": conn.resumption_app_data,
                  "early_streams": conn.early_data_streams, "opened_in_0rtt": None}
        seen.connections.append(record)
        if app_data is not None:
            conn.send_resumption_ticket(app_data)
        while True:
            try:
                stream = await w.wait(conn.accept_stream)
            except pymsquic.ConnectionClosed:
                return
            data = await w.wait(stream.read, -1)
            if data == b"another ticket":
                conn.send_resumption_ticket(b"second")
            stream.write(data, fin=True)
            record["early_streams"] = conn.early_data_streams  # opened by now
            record["opened_in_0rtt"] = stream.opened_in_0rtt  # the last stream's

    return handler


async def serve_in(w: World, handler: Any, registration: pymsquic.Registration,
                   credential: pymsquic.Credential, **kwargs: Any) -> ServerHandle:
    """``w.serve`` with 0-RTT server settings (``SERVER_SETTINGS``; ``settings=`` others)."""
    kwargs.setdefault("settings", SERVER_SETTINGS)
    return await w.serve(handler, registration, credential, **kwargs)


async def connect_in(w: World, port: int, registration: pymsquic.Registration, alpn: str = ALPN,
                     **kwargs: Any) -> Any:
    """``w.connect`` with another ALPN."""
    if w.name == "asyncio":
        return await pymsquic.asyncio.connect("127.0.0.1", port, alpn=alpn, credential=client_credential(),
                                              registration=registration, **kwargs)
    return pymsquic.sync.connect("127.0.0.1", port, alpn=alpn, credential=client_credential(),
                                 registration=registration, **kwargs)


class TicketBox:
    """An on_session_ticket callback that records the tickets and the thread it ran on."""

    def __init__(self, w: World) -> None:
        self.tickets: list[bytes] = []
        self.threads: set[str] = set()
        self.in_callback: set[int] = set()
        self._event: Any = asyncio.Event() if w.name == "asyncio" else threading.Event()

    def __call__(self, ticket: bytes) -> None:
        self.tickets.append(ticket)
        self.threads.add(threading.current_thread().name)
        self.in_callback.add(pymsquic.lib.pmq_in_callback())
        self._event.set()

    async def first(self) -> bytes:
        await self.wait_for(1)
        return self.tickets[0]

    async def wait_for(self, n: int) -> None:
        """Until ``n`` tickets came (the event is set after each append)."""
        while len(self.tickets) < n:
            if isinstance(self._event, asyncio.Event):
                await asyncio.wait_for(self._event.wait(), WAIT)
            else:
                assert self._event.wait(WAIT), f"{len(self.tickets)} session tickets came, not {n}"
            self._event.clear()


async def round_trip(w: World, conn: Any, data: bytes) -> bytes:
    stream = conn.open_stream()
    stream.write(data, fin=True)
    return await w.wait(stream.read, -1)  # type: ignore[no-any-return]


async def first_ticket(w: World, port: int, registration: pymsquic.Registration) -> tuple[bytes, TicketBox, Any]:
    """A full handshake; the ticket the server sent, the box, and the closed connection."""
    box = TicketBox(w)
    conn = await w.connect(port, registration, on_session_ticket=box)
    assert await round_trip(w, conn, b"hello") == b"hello"
    ticket = await box.first()
    assert not conn.session_resumed and conn.early_data_accepted is False
    assert conn.session_ticket == ticket  # the latest, also readable on the connection
    await w.call(conn.close)
    return ticket, box, conn


@worlds
def test_resumption_with_app_data(w: World, registration, server_credential) -> None:
    async def body() -> None:
        seen = Seen()
        async with await serve_in(w, echo_handler(seen, b"user=42"), registration, server_credential) as server:
            ticket, box, _ = await first_ticket(w, server.port, registration)
            # on_session_ticket ran in Python, never on a msquic thread: on the
            # loop (asyncio) or on the connection's ticket thread (sync)
            assert box.in_callback == {0}
            expected = {"MainThread"} if w.name == "asyncio" else {"pymsquic-session-tickets"}
            assert box.threads == expected
            # a ticket sent long after the handshake reaches the callback too
            later = TicketBox(w)
            conn = await w.connect(server.port, registration, on_session_ticket=later)
            await later.wait_for(1)
            assert await round_trip(w, conn, b"another ticket") == b"another ticket"
            await later.wait_for(2)
            assert later.tickets[1] != later.tickets[0] and conn.session_ticket == later.tickets[1]
            await w.call(conn.close)
            conn = await w.connect(server.port, registration, session_ticket=ticket)
            assert conn.session_resumed
            assert conn.early_data_accepted is False  # resumed, but no early data asked for
            assert await round_trip(w, conn, b"again") == b"again"
            await w.call(conn.close)
        assert [c["resumed"] for c in seen.connections] == [False, False, True]
        assert seen.connections[0]["app_data"] is None
        assert seen.connections[2]["app_data"] == b"user=42"

    w.run(body())


@worlds
def test_zero_rtt_accepted(w: World, registration) -> None:
    """0-RTT to a pymsquic server in another process (no shared msquic workers)
    that holds its first flight until the client wrote. Data written after
    connect() returned travels in 0-RTT packets only when msquic's worker takes
    it before it sends the client's first flight (README), which the deferred
    start makes so (test_early_data_first_flight.py checks every connection):
    the test retries until the server's msquic flags a stream as opened by
    0-RTT packets, and checks on every try that the session resumed and every
    byte arrived."""

    async def body() -> None:
        server = ServerProcess("held", TicketKey.generate(), "--hold")
        try:
            server.release()  # the first, full handshake
            box = TicketBox(w)
            conn = await connect_in(w, server.port, registration, alpn=FLEET_ALPN, on_session_ticket=box)
            full = json.loads(await round_trip(w, conn, b"full"))
            assert full["resumed"] is False and full["opened_in_0rtt"] is False
            ticket = await box.first()
            await w.call(conn.close)
            for _ in range(50):
                conn = await connect_in(w, server.port, registration, alpn=FLEET_ALPN, session_ticket=ticket,
                                        early_data=True)
                assert not conn.is_connected and conn.early_data_accepted is None  # the server holds its answer
                stream = conn.open_stream()  # before the handshake: may go out as 0-RTT data
                stream.write(PAYLOAD, fin=True)
                server.release()
                await w.wait(conn.wait_handshake)
                assert conn.session_resumed and conn.early_data_accepted is True
                answer = json.loads(await w.wait(stream.read, -1))
                await w.call(conn.close)
                assert answer["resumed"] and answer["app_data"] == "held" and answer["received"] == len(PAYLOAD)
                assert answer["opened_in_0rtt"] is (answer["early_streams"] >= 1)  # the one stream
                assert not stream.opened_in_0rtt  # a local stream
                if answer["early_streams"] >= 1:
                    break
            else:
                pytest.fail("no stream opened in 0-RTT packets in 50 resumed connections")
        finally:
            server.stop()

    w.run(body())


@worlds
def test_zero_rtt_rejected_by_a_server_without_the_key(w: World, registration, server_credential) -> None:
    """A ticket from a server with one key, used on a server with another: no
    resumption, early data rejected, and msquic resends every byte in 1-RTT."""

    async def body() -> None:
        seen_a, seen_b = Seen(), Seen()
        async with await serve_in(w, echo_handler(seen_a, b"a"), registration, server_credential,
                                  ticket_keys=TicketKey.generate()) as a, \
                await serve_in(w, echo_handler(seen_b, b"b"), registration, server_credential,
                               ticket_keys=TicketKey.generate()) as b:
            ticket, _, _ = await first_ticket(w, a.port, registration)
            conn = await w.connect(b.port, registration, session_ticket=ticket, early_data=True)
            streams = [conn.open_stream() for _ in range(3)]
            for i, stream in enumerate(streams):
                stream.write(PAYLOAD[i:], fin=True)
            await w.wait(conn.wait_handshake)
            assert not conn.session_resumed
            assert conn.early_data_accepted is False
            for i, stream in enumerate(streams):
                assert await w.wait(stream.read, -1) == PAYLOAD[i:]  # no byte lost
            await w.call(conn.close)
        assert seen_b.connections == [{"resumed": False, "app_data": None, "early_streams": 0,
                                       "opened_in_0rtt": False}]

    w.run(body())


@worlds
def test_ticket_keys_shared_by_two_servers(w: World, registration, server_credential) -> None:
    """In one process (the fleet test below does two): a ticket of server a
    resumes, with 0-RTT, on server b that shares a's key."""

    async def body() -> None:
        key = TicketKey.generate()
        seen_a, seen_b = Seen(), Seen()
        async with await serve_in(w, echo_handler(seen_a, b"from a"), registration, server_credential,
                                  ticket_keys=key) as a, \
                await serve_in(w, echo_handler(seen_b, b"from b"), registration, server_credential,
                               ticket_keys=[key]) as b:
            ticket, _, _ = await first_ticket(w, a.port, registration)
            conn = await w.connect(b.port, registration, session_ticket=ticket, early_data=True)
            stream = conn.open_stream()
            stream.write(b"early", fin=True)
            await w.wait(conn.wait_handshake)
            assert conn.session_resumed and conn.early_data_accepted
            assert await w.wait(stream.read, -1) == b"early"
            await w.call(conn.close)
        assert [c["resumed"] for c in seen_b.connections] == [True]
        assert seen_b.connections[0]["app_data"] == b"from a"

    w.run(body())


@worlds
def test_early_data_without_a_ticket_is_a_normal_connect(w: World, registration, server_credential) -> None:
    async def body() -> None:
        async with await serve_in(w, echo_handler(Seen(), None), registration, server_credential) as server:
            conn = await w.connect(server.port, registration, early_data=True)
            assert conn.is_connected  # connect waited for the handshake
            assert conn.early_data_accepted is False and not conn.session_resumed
            await w.wait(conn.wait_handshake)  # returns at once
            # (the round trip also lets the server's handler start before its close:
            # pymsquic.sync.Server.close() can race a handler thread being started)
            assert await round_trip(w, conn, b"x") == b"x"
            await w.call(conn.close)

    w.run(body())


@worlds
def test_early_connect_reports_a_failed_handshake(w: World, registration, server_credential) -> None:
    """connect() returned before the handshake: wait_handshake raises what connect would have."""

    async def body() -> None:
        async with await serve_in(w, echo_handler(Seen(), b""), registration, server_credential) as server:
            ticket, _, _ = await first_ticket(w, server.port, registration)
            port = server.port
        # the server is gone: nobody answers, the handshake fails (refused or timed out)
        conn = await w.connect(port, registration, session_ticket=ticket, early_data=True,
                               settings=Settings(handshake_idle_timeout_ms=1000))
        with pytest.raises(pymsquic.ConnectionClosed):
            await w.wait(conn.wait_handshake)
        assert conn.early_data_accepted is None
        await w.call(conn.close)

    w.run(body())


def test_resumption_level_none_sends_no_ticket(registration, server_credential) -> None:
    async def main() -> None:
        failures: list[BaseException] = []

        async def handler(conn: pymsquic.asyncio.Connection) -> None:
            try:
                conn.send_resumption_ticket(b"x")
            except pymsquic.QuicError as exc:
                failures.append(exc)
            async for stream in conn:
                stream.write(await stream.read(), fin=True)

        settings = Settings(peer_bidi_stream_count=4, server_resumption_level="none")
        async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential,
                                          settings=settings, registration=registration) as server:
            async with pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                                credential=pymsquic.Credential.client(verify=False),
                                                registration=registration) as conn:
                stream = conn.open_stream()
                stream.write(b"x", fin=True)
                assert await stream.read() == b"x"
                assert conn.session_ticket is None
        assert len(failures) == 1 and failures[0].status == pymsquic.lib.QUIC_STATUS_INVALID_STATE

    asyncio.run(main())


def test_sync_connection_with_a_ticket_callback_is_collected(registration, server_credential) -> None:
    """A sync connection given on_session_ticket and dropped without close() is
    garbage-collected like any other (its ticket thread holds it weakly), and
    its ticket thread then ends."""

    async def handler(w: World, conn: Any) -> None:
        conn.send_resumption_ticket(b"")
        await w.wait(conn.wait_closed, timeout=None)  # never closes the connection itself

    async def main() -> None:
        async with await serve_in(w, handler, registration, server_credential) as server:
            before = set(threading.enumerate())
            box = TicketBox(w)
            # keep-alive: never idle, so only being collected can end it in time
            conn = await w.connect(server.port, registration, on_session_ticket=box,
                                   settings=Settings(keep_alive_interval_ms=1000))
            await box.first()
            threads = [t for t in set(threading.enumerate()) - before if t.name == "pymsquic-session-tickets"]
            assert len(threads) == 1
            ref = weakref.ref(conn)
            del conn
            gc.collect()
            for thread in threads:  # each ends once its connection is gone and shut down
                thread.join(WAIT)
            assert not any(t.is_alive() for t in threads)
            assert ref() is None

    w = SyncWorld()
    w.run(main())


def test_sync_ticket_handler_raising_system_exit_keeps_its_thread(registration, server_credential,
                                                               caplog) -> None:
    """What on_session_ticket raises, SystemExit included, is logged, and the
    sync ticket thread goes on delivering."""

    class Raising(TicketBox):
        def __call__(self, ticket: bytes) -> None:
            super().__call__(ticket)
            raise SystemExit("from the handler")

    async def body() -> None:
        async with await serve_in(w, echo_handler(Seen(), b""), registration, server_credential) as server:
            box = Raising(w)
            conn = await w.connect(server.port, registration, on_session_ticket=box)
            await box.wait_for(1)
            assert await round_trip(w, conn, b"another ticket") == b"another ticket"
            await box.wait_for(2)  # the thread survived the first SystemExit
            await w.call(conn.close)
            # the box's event is set before the handler raises: the second record is
            # logged a moment later, by the ticket thread, which ends after the close
            for thread in threading.enumerate():
                if thread.name == "pymsquic-session-tickets":
                    thread.join(WAIT)
        assert [r.exc_info[0] for r in caplog.records if r.getMessage().endswith("on_session_ticket failed")
                and r.exc_info][:2] == [SystemExit, SystemExit]

    w = SyncWorld()
    w.run(body())


def test_resumption_api_types(tmp_path) -> None:
    """mypy --strict accepts a bytes-like session_ticket in both worlds and
    pymsquic.SessionTicketHandler (exported), and still rejects a str ticket."""
    pytest.importorskip("mypy")
    from test_typing import run_mypy

    good = tmp_path / "good.py"  # line 10: the str ticket
    good.write_text("import pymsquic\n\n"
                    "def keep(ticket: bytes) -> None:\n    pass\n\n"
                    "handler: pymsquic.SessionTicketHandler = keep\n"
                    "ticket = bytearray(b'x')\n"
                    "pymsquic.sync.connect('127.0.0.1', 1, alpn='a', session_ticket=ticket,on_session_ticket=handler)\n"
                    "pymsquic.asyncio.connect('127.0.0.1', 1, alpn='a', session_ticket=memoryview(ticket))\n"
                    "pymsquic.sync.connect('127.0.0.1', 1, alpn='a', session_ticket='text')\n",
                    encoding="utf-8")
    result = run_mypy(["pymsquic", str(good)], tmp_path)
    errors = [line for line in result.stdout.splitlines() if "error:" in line]
    assert len(errors) == 1 and "good.py:10:" in errors[0] and "session_ticket" in errors[0], result.stdout


def test_configuration_ticket_keys_is_read_only(registration, server_credential) -> None:
    """Configuration.ticket_keys tells the keys given; writing to it, which msquic
    would never see, raises."""
    key = TicketKey.generate()
    with pymsquic.Configuration(registration, ALPN, server_credential, ticket_keys=key) as config:
        assert config.ticket_keys == (key,)
        with pytest.raises(AttributeError):
            config.ticket_keys = (TicketKey.generate(),)  # type: ignore[misc]
        assert config.ticket_keys == (key,)
    with pymsquic.Configuration(registration, ALPN, server_credential) as config:
        assert config.ticket_keys is None


# ---- bad input -------------------------------------------------------------------------

def test_bad_input(registration, server_credential) -> None:
    client = pymsquic.Credential.client(verify=False)
    with pytest.raises(ValueError, match="not a ticket msquic can resume with"):
        pymsquic.sync.connect("127.0.0.1", 9, alpn=ALPN, credential=client, registration=registration,
                              session_ticket=b"\x01garbage")
    with pytest.raises(TypeError):
        pymsquic.sync.connect("127.0.0.1", 9, alpn=ALPN, credential=client, session_ticket="text")  # type: ignore
    with pytest.raises(ValueError):
        pymsquic.sync.connect("127.0.0.1", 9, alpn=ALPN, credential=client, session_ticket=b"")
    with pytest.raises(TypeError):
        pymsquic.sync.connect("127.0.0.1", 9, alpn=ALPN, credential=client, early_data=1)  # type: ignore
    with pytest.raises(TypeError):
        pymsquic.asyncio.connect("127.0.0.1", 9, alpn=ALPN, credential=client, on_session_ticket=3)  # type: ignore
    with pytest.raises(ValueError):
        TicketKey(b"short", bytes(32))
    with pytest.raises(ValueError):
        TicketKey(bytes(16), bytes(31))
    with pytest.raises(TypeError):
        pymsquic.Configuration(registration, ALPN, server_credential, ticket_keys=["k"])  # type: ignore
    with pytest.raises(ValueError, match="no key rotation"):  # msquic 2.5.1 would ignore the second
        pymsquic.Configuration(registration, ALPN, server_credential,
                               ticket_keys=[TicketKey.generate(), TicketKey.generate()])
    with pytest.raises(ValueError, match="exactly one"):
        pymsquic.Configuration(registration, ALPN, server_credential, ticket_keys=[])
    with pytest.raises(pymsquic.QuicError):  # msquic: ticket keys are for servers
        pymsquic.Configuration(registration, ALPN, client, ticket_keys=TicketKey.generate())
    with pytest.raises(ValueError):
        Settings(server_resumption_level=3)
    with pytest.raises(ValueError):
        Settings(server_resumption_level="sometimes")
    with pytest.raises(ValueError):
        pymsquic.set_load_balancing_mode("round robin")
    with pytest.raises(ValueError):
        pymsquic.set_stateless_reset_key(bytes(31))
    assert "material" not in repr(TicketKey.generate())


def test_resumption_level_names_and_read_back(registration, server_credential) -> None:
    for given, level in [(0, ResumptionLevel.NONE), ("resume", ResumptionLevel.RESUME),
                         (ResumptionLevel.RESUME_AND_ZERO_RTT, ResumptionLevel.RESUME_AND_ZERO_RTT)]:
        settings = Settings(server_resumption_level=given)
        assert settings.server_resumption_level == level
        with pymsquic.Configuration(registration, ALPN, server_credential, settings) as config:
            assert config.read_settings().server_resumption_level is level


def test_send_resumption_ticket_checks(registration, server_credential) -> None:
    async def main() -> None:
        results: list[Any] = []

        async def handler(conn: pymsquic.asyncio.Connection) -> None:
            for app_data in (bytes(1001), b"ok"):
                try:
                    conn.send_resumption_ticket(app_data, final=True)
                    results.append("sent")
                except ValueError as exc:
                    results.append(exc)
            await conn.wait_closed()

        async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential,
                                          settings=SERVER_SETTINGS, registration=registration) as server:
            box = TicketBox(AsyncioWorld())
            async with pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                                credential=pymsquic.Credential.client(verify=False),
                                                registration=registration, on_session_ticket=box) as conn:
                with pytest.raises(pymsquic.QuicError):
                    conn.send_resumption_ticket()  # a client cannot send tickets
                await box.wait_for(1)  # the ticket sent with final=True arrives (bounded: WAIT)
        assert isinstance(results[0], ValueError) and results == [results[0], "sent"]
        assert len(box.tickets) == 1

    asyncio.run(main())


# ---- aioquic client, pymsquic server ---------------------------------------------------

class EchoClient(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data: dict[int, bytearray] = {}
        self.done: dict[int, asyncio.Event] = {}
        self.handshake: HandshakeCompleted | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
        elif isinstance(event, StreamDataReceived):
            self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self.done.setdefault(event.stream_id, asyncio.Event()).set()

    async def exchange(self, payload: bytes) -> bytes:
        sid = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(sid, payload, end_stream=True)
        self.transmit()
        await asyncio.wait_for(self.done.setdefault(sid, asyncio.Event()).wait(), WAIT)
        return bytes(self.data[sid])


def aioquic_client_config(ticket: SessionTicket | None = None) -> QuicConfiguration:
    return QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                             server_name="localhost", session_ticket=ticket)


async def aioquic_session(port: int, ticket: SessionTicket | None, payload: bytes,
                          tickets: list[SessionTicket]) -> EchoClient:
    """An aioquic connection that writes ``payload`` at once (0-RTT with a ticket)."""
    async with aioquic_connect("127.0.0.1", port, configuration=aioquic_client_config(ticket),
                               create_protocol=EchoClient, session_ticket_handler=tickets.append,
                               wait_connected=False) as client:
        assert isinstance(client, EchoClient)
        assert await client.exchange(payload) == payload
        for _ in range(int(WAIT * 100)):  # the ticket follows the handshake
            if tickets and client.handshake is not None:
                break
            await asyncio.sleep(0.01)
        return client


def test_aioquic_client_resumes_with_pymsquic_server(registration, server_credential) -> None:
    async def main() -> None:
        seen = Seen()
        key = TicketKey.generate()
        handler = echo_handler(seen, b"aioquic's app data")
        w = AsyncioWorld()
        async with pymsquic.asyncio.serve(lambda conn: handler(w, conn), "127.0.0.1", 0, alpn=ALPN,
                                          credential=server_credential, settings=SERVER_SETTINGS,
                                          registration=registration, ticket_keys=key) as a, \
                pymsquic.asyncio.serve(lambda conn: handler(w, conn), "127.0.0.1", 0, alpn=ALPN,
                                       credential=server_credential, settings=SERVER_SETTINGS,
                                       registration=registration, ticket_keys=TicketKey.generate()) as b:
            tickets: list[SessionTicket] = []
            first = await aioquic_session(a.addresses[0][1], None, b"first", tickets)
            assert first.handshake is not None and not first.handshake.session_resumed
            assert tickets and tickets[0].max_early_data_size  # msquic's ticket allows 0-RTT
            # resumed with 0-RTT: accepted; and again with the same ticket (a replay:
            # msquic 2.5.1 keeps no record of used tickets)
            for _ in range(3):
                second = await aioquic_session(a.addresses[0][1], tickets[0], PAYLOAD, [])
                assert second.handshake is not None
                assert second.handshake.session_resumed and second.handshake.early_data_accepted
            # a server without the key: no resumption, 0-RTT rejected, every byte still echoed
            third = await aioquic_session(b.addresses[0][1], tickets[0], PAYLOAD, [])
            assert third.handshake is not None
            assert not third.handshake.session_resumed and not third.handshake.early_data_accepted
        assert [c["resumed"] for c in seen.connections] == [False, True, True, True, False]
        assert [c["app_data"] for c in seen.connections[1:4]] == [b"aioquic's app data"] * 3
        assert [c["early_streams"] for c in seen.connections] == [0, 1, 1, 1, 0]
        assert [c["opened_in_0rtt"] for c in seen.connections] == [False, True, True, True, False]

    asyncio.run(main())


def test_msquic_accepts_zero_rtt_at_level_resume(registration, server_credential) -> None:
    """msquic 2.5.1 does not act on RESUME vs RESUME_AND_ZERO_RTT: a server at
    RESUME accepts early data too (documented on ResumptionLevel). If this fails,
    msquic started telling the two apart: update the docs."""

    async def main() -> None:
        seen = Seen()
        handler = echo_handler(seen, b"")
        w = AsyncioWorld()
        settings = Settings(peer_bidi_stream_count=16, server_resumption_level="resume")
        async with pymsquic.asyncio.serve(lambda conn: handler(w, conn), "127.0.0.1", 0, alpn=ALPN,
                                          credential=server_credential, settings=settings,
                                          registration=registration) as server:
            tickets: list[SessionTicket] = []
            await aioquic_session(server.addresses[0][1], None, b"first", tickets)
            second = await aioquic_session(server.addresses[0][1], tickets[0], b"early", [])
            assert second.handshake is not None and second.handshake.session_resumed
            assert second.handshake.early_data_accepted

    asyncio.run(main())


# ---- pymsquic client, aioquic server ----------------------------------------------------

class EchoServer(QuicConnectionProtocol):
    """Echo each stream; remember how the handshake ended."""

    instances: list["EchoServer"] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffers: dict[int, bytearray] = {}
        self.handshake: HandshakeCompleted | None = None
        self._trace = self._quic._quic_logger  # kept: aioquic drops it at the close
        EchoServer.instances.append(self)

    def zero_rtt_packets(self) -> int:
        """0-RTT packets this server decrypted (its qlog: the wire's word)."""
        trace = self._trace
        assert trace is not None
        return sum(1 for e in trace.to_dict()["events"]
                   if e["name"] == "transport:packet_received" and e["data"]["header"]["packet_type"] == "0RTT")

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
        elif isinstance(event, StreamDataReceived):
            buf = self.buffers.setdefault(event.stream_id, bytearray())
            buf.extend(event.data)
            if event.end_stream:
                self._quic.send_stream_data(event.stream_id, bytes(buf), end_stream=True)
        self.transmit()


def _aioquic_server_sends_tickets_before_the_clients_finished() -> bool:
    """aioquic 1.3.0 (the newest for Python 3.10) sends its NewSessionTicket in its first
    1-RTT flight, before the client's Finished; later versions wait for the Finished
    (RFC 9001 section 4.5). Against aioquic 1.3.0 msquic 2.5.1's client reported no ticket
    at all in 20 s (three runs of three), so there is nothing to resume with; why msquic
    drops it is not investigated."""
    import inspect

    from aioquic.tls import Context

    return "new_session_ticket_cb" in inspect.getsource(Context._server_expect_finished)


@pytest.mark.skipif(_aioquic_server_sends_tickets_before_the_clients_finished(),
                    reason="this aioquic sends its ticket before the client's Finished; msquic reports none")
def test_pymsquic_client_resumes_with_aioquic_server(registration, cert_files) -> None:
    certfile, keyfile = cert_files

    async def main() -> None:
        config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], quic_logger=QuicLogger())
        config.load_cert_chain(certfile, keyfile)
        store: dict[bytes, SessionTicket] = {}
        lost = {"keys": False}

        def fetch(label: bytes) -> SessionTicket | None:
            return None if lost["keys"] else store.get(label)

        def keep(ticket: SessionTicket) -> None:
            store[ticket.ticket] = ticket

        EchoServer.instances.clear()
        server = await aioquic_serve("127.0.0.1", 0, configuration=config, create_protocol=EchoServer,
                                     session_ticket_fetcher=fetch, session_ticket_handler=keep)
        try:
            port = server._transport.get_extra_info("sockname")[1]
            credential = pymsquic.Credential.client(ca_file=certfile)

            async def session(ticket: bytes | None, early: bool) -> tuple[Any, list[bytes]]:
                got: list[bytes] = []
                conn = await pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=credential,
                                                      server_name="localhost", registration=registration,
                                                      session_ticket=ticket, early_data=early,
                                                      on_session_ticket=got.append)
                stream = conn.open_stream()
                stream.write(PAYLOAD, fin=True)
                await asyncio.wait_for(conn.wait_handshake(), WAIT)
                assert await asyncio.wait_for(stream.read(), WAIT) == PAYLOAD
                for _ in range(int(WAIT * 100)):
                    if got or ticket is not None:
                        break
                    await asyncio.sleep(0.01)
                await conn.close()
                return conn, got

            first, got = await session(None, False)
            assert not first.session_resumed and got
            assert first.session_ticket == got[-1]
            # resumption with 0-RTT, accepted
            second, _ = await session(got[-1], True)
            assert second.session_resumed and second.early_data_accepted is True
            assert EchoServer.instances[1].handshake.early_data_accepted  # aioquic's TLS took the early data
            # Data written right after connect() goes in 0-RTT packets: connect defers
            # msquic's start to the first wait (README; every time, see
            # test_early_data_first_flight.py). Without QUIC_SEND_FLAG_ALLOW_0_RTT it never does.
            for _ in range(30):
                await session(got[-1], True)
                if EchoServer.instances[-1].zero_rtt_packets() > 0:
                    break
            else:
                pytest.fail("no early data reached the server in 30 connections")
            # the server lost its tickets: full handshake, 0-RTT rejected, nothing lost
            lost["keys"] = True
            third, _ = await session(got[-1], True)
            assert not third.session_resumed and third.early_data_accepted is False
            assert not EchoServer.instances[-1].handshake.early_data_accepted
            assert EchoServer.instances[-1].zero_rtt_packets() == 0
        finally:
            server.close()

    asyncio.run(main())


# ---- a fleet: two server processes ------------------------------------------------------------

FLEET_ALPN = "pymsquic-fleet"


class ServerProcess:
    def __init__(self, name: str, key: TicketKey | None, *extra: str) -> None:
        key_hex = "none" if key is None else key.id.hex() + key.material.hex()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, str(PEERS / "ticket_server.py"), name, key_hex, *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def release(self) -> None:
        """With --hold: let one held handshake go on (or the next one through)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.stderr is not None
        errors = self.proc.stderr.read()
        assert self.proc.wait(WAIT) == 0, errors


def fleet_request(server: ServerProcess, ticket: bytes | None, registration: pymsquic.Registration,
                  early: bool = False) -> tuple[dict[str, Any], Any, list[bytes]]:
    """One request to a --hold server: with ``early``, written before the server may answer."""
    got: list[bytes] = []
    box = threading.Event()

    def on_ticket(ticket: bytes) -> None:
        got.append(ticket)
        box.set()

    if not early:
        server.release()
    with pymsquic.sync.connect("127.0.0.1", server.port, alpn=FLEET_ALPN, registration=registration,
                               credential=pymsquic.Credential.client(verify=False), session_ticket=ticket,
                               early_data=early, on_session_ticket=on_ticket) as conn:
        stream = conn.open_stream()
        stream.write(b"request", fin=True)
        if early:
            server.release()
        conn.wait_handshake(timeout=WAIT)
        answer = json.loads(stream.read(-1, timeout=WAIT))
        assert box.wait(WAIT)
    return answer, conn, got


@pytest.mark.slow  # server processes of a fleet: run once (under 3.11)
def test_fleet_two_processes_share_ticket_keys(registration) -> None:
    key = TicketKey.generate()
    servers = [ServerProcess("one", key, "--hold"), ServerProcess("two", key, "--hold"),
               ServerProcess("other", TicketKey.generate(), "--hold")]
    try:
        answer, conn, tickets = fleet_request(servers[0], None, registration)
        assert answer == {"server": "one", "resumed": False, "app_data": None, "early_streams": 0,
                          "received": 7, "opened_in_0rtt": False}
        # the ticket of process one resumes on process two, with 0-RTT
        answer, conn, _ = fleet_request(servers[1], tickets[0], registration, early=True)
        answer.pop("early_streams"), answer.pop("opened_in_0rtt")  # 0 or 1: see test_zero_rtt_accepted
        assert answer == {"server": "two", "resumed": True, "app_data": "one", "received": 7}
        assert conn.session_resumed and conn.early_data_accepted
        # and not on a process with another key
        answer, conn, _ = fleet_request(servers[2], tickets[0], registration, early=True)
        assert answer == {"server": "other", "resumed": False, "app_data": None, "early_streams": 0,
                          "received": 7, "opened_in_0rtt": False}
        assert not conn.session_resumed and conn.early_data_accepted is False
    finally:
        for server in servers:
            server.stop()


async def aioquic_server_cid(port: int) -> bytes:
    """The connection id the server chose, as an aioquic client sees it."""
    async with aioquic_connect("127.0.0.1", port, configuration=QuicConfiguration(
            is_client=True, alpn_protocols=[FLEET_ALPN], verify_mode=ssl.CERT_NONE)) as client:
        await client.ping()
        return bytes(client._quic._peer_cid.cid)


def test_fleet_load_balancing_mode_puts_the_server_id_in_connection_ids() -> None:
    balanced = ServerProcess("lb", None, "--lb", "--reset-key", os.urandom(32).hex())
    plain = ServerProcess("plain", None)
    try:
        cid_lb = asyncio.run(aioquic_server_cid(balanced.port))
        cid_plain = asyncio.run(aioquic_server_cid(plain.port))
    finally:
        balanced.stop()
        plain.stop()
    # server_id_ip: a random byte, then the server's IPv4 address, then msquic's own bytes
    assert cid_lb[1:5] == bytes([127, 0, 0, 1])
    assert len(cid_lb) == len(cid_plain) + 5


def test_load_balancing_mode_is_process_wide_and_early() -> None:
    """In a fresh process: readable, settable before use, refused once sockets exist."""
    code = """
import pymsquic
assert pymsquic.load_balancing_mode() == "disabled"
pymsquic.set_load_balancing_mode("server_id_ip")
assert pymsquic.load_balancing_mode() == "server_id_ip"
pymsquic.set_load_balancing_mode("disabled")
server = pymsquic.sync.serve(lambda c: None, "127.0.0.1", 0, alpn="x", credential=pymsquic.Credential.self_signed())
try:
    pymsquic.set_load_balancing_mode("server_id_ip")
except pymsquic.QuicError as exc:
    print("refused", exc.status == pymsquic.lib.QUIC_STATUS_INVALID_STATE)
server.close()
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused True"


class Relay:
    """A UDP relay on 127.0.0.1 whose upstream can be switched: what a load
    balancer does when it sends a client's packets to another machine."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.client: Any = None
        self.front: Any = None
        self.back: Any = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                relay.client = addr
                relay.back.sendto(data, relay.upstream)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if relay.client is not None:
                    relay.front.sendto(data, relay.client)

        self.front, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        return int(self.front.get_extra_info("sockname")[1])

    def close(self) -> None:
        self.front.close()
        self.back.close()


@pytest.mark.slow  # server processes of a fleet: run once (under 3.11)
@pytest.mark.parametrize("shared", [True, False], ids=["shared-reset-key", "other-reset-key"])
def test_fleet_stateless_reset_key(shared: bool, registration) -> None:
    """A client's packets rerouted to another server process: with the same
    stateless-reset key that server's reset ends the connection at once; with
    another key the client cannot trust the reset and waits for its idle timeout."""
    key = os.urandom(32)
    a = ServerProcess("a", None, "--reset-key", key.hex())
    b = ServerProcess("b", None, "--reset-key", (key if shared else os.urandom(32)).hex())

    async def main() -> pymsquic.ConnectionClosed:
        relay = Relay(a.port)
        port = await relay.start()
        try:
            conn = await pymsquic.asyncio.connect(
                "127.0.0.1", port, alpn=FLEET_ALPN, credential=client_credential(), registration=registration,
                settings=Settings(idle_timeout_ms=3000, peer_bidi_stream_count=4))
            stream = conn.open_stream()
            stream.write(b"to a", fin=True)
            assert json.loads(await asyncio.wait_for(stream.read(), WAIT))["server"] == "a"
            relay.upstream = ("127.0.0.1", b.port)  # the load balancer loses track: b gets the packets
            stream = conn.open_stream()
            stream.write(b"to b", fin=True)
            with pytest.raises(pymsquic.ConnectionClosed):
                await asyncio.wait_for(stream.read(), WAIT)
            await conn.close()
            reason = conn.close_reason
            assert reason is not None
            return reason
        finally:
            relay.close()

    try:
        reason = asyncio.run(main())
    finally:
        a.stop()
        b.stop()
    if shared:
        assert reason.by_transport and reason.status == pymsquic.lib.QUIC_STATUS_ABORTED  # msquic: a reset
        assert not isinstance(reason, pymsquic.IdleTimeout)
    else:
        assert isinstance(reason, pymsquic.IdleTimeout)
