"""Connection lifecycle under misuse (issue 7, items 1 datagram part, 5, 6, 13, 14), and
the close and iteration semantics of issue 8.

The close code the peer sees, handles that must be closed once, the datagram send
bound, open_stream after close, errors after a local Registration.close(), empty
datagrams, negotiated values after the peer left; iteration over peer streams
ending quietly only on a clean close, the graceful close() and its bound, and
connect()'s open timeout, in both worlds.
"""

from __future__ import annotations

import array
import asyncio
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aioquic.asyncio import connect as aioquic_connect
from aioquic.asyncio import serve as aioquic_serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived

import pymsquic

from conftest import ALPN, RecordingProtocol, aioquic_config

RUNS = 10  # the lost close code showed in 2-4 of 5 runs before the fix
APP_CODE = 0x88
EXCEPTION_CODE = getattr(pymsquic, "EXCEPTION_ERROR_CODE", None)

AnyConnection = pymsquic.sync.Connection | pymsquic.asyncio.Connection


class Boom(Exception):
    pass


def client_credential() -> pymsquic.Credential:
    return pymsquic.Credential.client(verify=False)


def assert_closed_by_peer(conn: AnyConnection, code: int | None) -> None:
    """After wait_closed: the peer closed ``conn`` with ``code``; releases it."""
    reason = conn.close_reason
    assert reason is not None and reason.by_peer and reason.error_code == code, reason
    conn._abandon()  # closed already: only the release is left, in either world


# ---- item 5: only the first shutdown reaches msquic --------------------------------

def test_async_with_connect_keeps_the_shutdown_code(registration, async_listener) -> None:
    port = async_listener.local_address[1]

    async def main() -> None:
        for _ in range(RUNS):
            async with pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                                registration=registration, open_timeout=10) as conn:
                server = await asyncio.wait_for(async_listener.accept(), 10)
                conn.shutdown(APP_CODE)
            await asyncio.wait_for(server.wait_closed(), 10)
            assert_closed_by_peer(server, APP_CODE)

    asyncio.run(main())


def test_with_sync_connect_keeps_the_shutdown_code(registration, listener) -> None:
    port = listener.local_address[1]
    for _ in range(RUNS):
        with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                   registration=registration, open_timeout=10) as conn:
            server = listener.accept(timeout=10)
            conn.shutdown(APP_CODE)
        server.wait_closed(timeout=10)
        assert_closed_by_peer(server, APP_CODE)


def test_serve_handler_keeps_the_shutdown_code(server_credential) -> None:
    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        conn.shutdown(APP_CODE)

    async def main() -> None:
        async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            port = server.addresses[0][1]
            for _ in range(RUNS):
                conn = await pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                                      open_timeout=10)
                await asyncio.wait_for(conn.wait_closed(), 10)
                assert_closed_by_peer(conn, APP_CODE)

    asyncio.run(main())


def test_serve_handler_shutdown_code_seen_by_aioquic(server_credential) -> None:
    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        await asyncio.sleep(0.05)  # let the aioquic client finish its handshake bookkeeping
        conn.shutdown(APP_CODE)

    async def main() -> None:
        async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            port = server.addresses[0][1]
            for _ in range(RUNS):
                protocols: list[RecordingProtocol] = []

                def create(*args: Any, **kwargs: Any) -> RecordingProtocol:
                    protocols.append(RecordingProtocol(*args, **kwargs))
                    return protocols[-1]

                async with aioquic_connect("127.0.0.1", port, configuration=aioquic_config(),
                                           create_protocol=create) as client:
                    await asyncio.wait_for(client.wait_closed(), 10)
                terminated = protocols[0].terminated
                assert terminated is not None and terminated.error_code == APP_CODE, terminated

    asyncio.run(main())


def test_sync_serve_handler_keeps_the_shutdown_code(server_credential) -> None:
    def handler(conn: pymsquic.sync.Connection) -> None:
        conn.shutdown(APP_CODE)

    with pymsquic.sync.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.addresses[0][1]
        for _ in range(RUNS):
            conn = pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                         open_timeout=10)
            conn.wait_closed(timeout=10)
            assert_closed_by_peer(conn, APP_CODE)


def test_exception_in_async_with_closes_with_the_exception_code(registration, async_listener) -> None:
    assert EXCEPTION_CODE, "pymsquic.EXCEPTION_ERROR_CODE must be a non-zero application error code"
    port = async_listener.local_address[1]

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(Boom):
                async with pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                                    registration=registration, open_timeout=10):
                    server = await asyncio.wait_for(async_listener.accept(), 10)
                    raise Boom()
            await asyncio.wait_for(server.wait_closed(), 10)
            assert_closed_by_peer(server, EXCEPTION_CODE)

    asyncio.run(main())


def test_exception_in_with_closes_with_the_exception_code(registration, listener) -> None:
    assert EXCEPTION_CODE
    port = listener.local_address[1]
    for _ in range(3):
        with pytest.raises(Boom):
            with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                       registration=registration, open_timeout=10):
                server = listener.accept(timeout=10)
                raise Boom()
        server.wait_closed(timeout=10)
        assert_closed_by_peer(server, EXCEPTION_CODE)


def test_failing_handlers_close_with_the_exception_code(server_credential) -> None:
    assert EXCEPTION_CODE

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        raise Boom()

    def sync_handler(conn: pymsquic.sync.Connection) -> None:
        raise Boom()

    async def main() -> None:
        async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            conn = await pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                                  credential=client_credential(), open_timeout=10)
            await asyncio.wait_for(conn.wait_closed(), 10)
            assert_closed_by_peer(conn, EXCEPTION_CODE)

    asyncio.run(main())
    with pymsquic.sync.serve(sync_handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        conn = pymsquic.sync.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                     credential=client_credential(), open_timeout=10)
        conn.wait_closed(timeout=10)
        assert_closed_by_peer(conn, EXCEPTION_CODE)


def test_second_shutdown_never_overrides_the_first(registration, listener, client_config) -> None:
    port = listener.local_address[1]
    for i in range(RUNS):
        conn = pymsquic.sync.connect("127.0.0.1", port, configuration=client_config, open_timeout=10)
        server = listener.accept(timeout=10)
        conn.shutdown(APP_CODE)
        conn.shutdown(0)
        if i % 2:
            conn.close()  # the graceful close shuts down with 0 too: still not on the wire
        else:
            conn.close(5)
        server.wait_closed(timeout=10)
        assert server.close_reason is not None and server.close_reason.error_code == APP_CODE
        assert conn.close_reason is not None and conn.close_reason.error_code == APP_CODE
        server.close()


# ---- item 6: a stream opened and never started must not hang the registration ---------

HANG_PRELUDE = """
import sys, time
import pymsquic
reg = pymsquic.Registration("unstarted")
cred = pymsquic.Credential.self_signed()
server_cfg = pymsquic.Configuration(reg, "u", cred, pymsquic.Settings(peer_bidi_stream_count=4))
client_cfg = pymsquic.Configuration(reg, "u", pymsquic.Credential.client(verify=False))
lst = pymsquic.sync.Listener(reg, server_cfg)
lst.start("u", ("127.0.0.1", 0))
conn = pymsquic.sync.connect("127.0.0.1", lst.local_address[1], configuration=client_cfg, open_timeout=5)
server = lst.accept(timeout=5)
"""

HANG_SCENARIOS = {
    "opened_never_used": """
        s = conn.open_stream()
        conn._abandon()
    """,
    "opened_never_used_closed_gracefully": """
        s = conn.open_stream()
        conn.close()
    """,
    "write_failed_its_type_check": """
        s = conn.open_stream()
        try:
            s.write("not bytes")
        except TypeError:
            pass
        conn._abandon()
    """,
    "closed_by_the_peer": """
        s = conn.open_stream(unidirectional=True)
        server.shutdown(3)
        conn.wait_closed(timeout=5)
    """,
    "registration_closed_under_it": """
        s = conn.open_stream()
    """,
    "released_after_the_close": """
        s = conn.open_stream()
        conn._abandon()
        conn.wait_closed(timeout=5)
        del s
    """,
}


@pytest.mark.parametrize("name", sorted(HANG_SCENARIOS))
def test_unstarted_stream_never_hangs_registration_close(name: str) -> None:
    code = HANG_PRELUDE + textwrap.dedent(HANG_SCENARIOS[name]) + textwrap.dedent("""
        start = time.monotonic()
        lst.close()
        server.close()
        reg.close()
        print("closed in %.3f s" % (time.monotonic() - start), flush=True)
    """)
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("Registration.close() hung with a stream opened and never started")
    assert proc.returncode == 0, proc.stderr
    assert "closed in" in proc.stdout, proc.stderr
    assert "did not shut down" not in proc.stderr, proc.stderr
    assert time.monotonic() - start < 20  # the exit teardown gives up after 10 s


def test_unstarted_stream_reports_the_connection_close(registration, listener, client_config) -> None:
    conn = pymsquic.sync.connect("127.0.0.1", listener.local_address[1], configuration=client_config,
                                 open_timeout=10)
    server = listener.accept(timeout=10)
    s = conn.open_stream()
    conn.shutdown(5)
    conn.wait_closed(timeout=10)
    assert s.is_closed
    with pytest.raises(pymsquic.ConnectionClosed):
        s.write(b"late")
    with pytest.raises(pymsquic.ConnectionClosed):
        s.read(timeout=5)
    conn.close()
    server.close()


# ---- items 1 (datagram part), 13, 14c: datagrams -------------------------------------

def datagram_pair(registration, listener) -> tuple[pymsquic.sync.Connection, pymsquic.sync.Connection]:
    cfg = pymsquic.Configuration(registration, ALPN, client_credential(),
                                 pymsquic.Settings(datagram_receive_enabled=True))
    conn = pymsquic.sync.connect("127.0.0.1", listener.local_address[1], configuration=cfg, open_timeout=10)
    return conn, listener.accept(timeout=10)


@pytest.fixture
def dgram_listener(registration, server_credential):
    cfg = pymsquic.Configuration(registration, ALPN, server_credential,
                                 pymsquic.Settings(peer_bidi_stream_count=4, datagram_receive_enabled=True))
    with pymsquic.sync.Listener(registration, cfg) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        yield lst


def test_send_datagram_sends_every_byte_of_any_buffer(registration, dgram_listener) -> None:
    conn, server = datagram_pair(registration, dgram_listener)
    with conn:
        ints = array.array("I", [1, 2, 3, 4])
        two_d = memoryview(bytes(range(12))).cast("B", (3, 4))
        strided = memoryview(bytes(range(20)))[::2]
        for data in (memoryview(ints), ints, two_d, strided, bytearray(b"abc")):
            conn.send_datagram(data)
            assert server.receive_datagram(timeout=10) == memoryview(data).tobytes()
        with pytest.raises(TypeError):
            conn.send_datagram("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            conn.send_datagram(12)  # type: ignore[arg-type]
        server.close()


def test_send_empty_datagram(registration, dgram_listener) -> None:
    conn, server = datagram_pair(registration, dgram_listener)
    with conn:
        conn.send_datagram(b"")
        assert server.receive_datagram(timeout=10) == b""
        server.send_datagram(memoryview(b""))
        assert conn.receive_datagram(timeout=10) == b""
        server.close()


def test_send_datagram_queue_is_bounded(registration, dgram_listener) -> None:
    conn, server = datagram_pair(registration, dgram_listener)
    full = getattr(pymsquic, "DatagramQueueFull", None)
    assert full is not None and issubclass(full, pymsquic.QuicError)
    with conn:
        conn.set_datagram_send_queue_size(1)
        with pytest.raises(full):
            for _ in range(10_000):
                conn.send_datagram(b"x" * 1000)
        with pytest.raises(ValueError):
            conn.set_datagram_send_queue_size(0)
        server.close()


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_datagram_flood_keeps_memory_bounded_and_streams_flowing(server_credential) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        async for stream in conn:
            data = await stream.read()
            stream.write(len(data).to_bytes(8, "big"), fin=True)
            await asyncio.wait_for(stream.wait_closed(), 30)

    async def main() -> None:
        async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            async with pymsquic.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                        credential=client_credential(), open_timeout=10) as conn:
                async def transfer() -> int:
                    stream = conn.open_stream()
                    stream.write(payload, fin=True)
                    return int.from_bytes(await stream.read(), "big")

                size = min(conn.max_datagram_size, 1000)
                datagram = b"d" * size
                before = rss_bytes()
                task = asyncio.create_task(transfer())
                refused = 0
                full = getattr(pymsquic, "DatagramQueueFull", pymsquic.QuicError)
                for i in range(400_000):
                    try:
                        conn.send_datagram(datagram)
                    except full:
                        refused += 1
                    if i % 1000 == 0:
                        await asyncio.sleep(0)
                grown = rss_bytes() - before
                assert await asyncio.wait_for(task, 60) == len(payload)
                assert grown < 100 * 1024 * 1024, f"RSS grew {grown / 2**20:.0f} MiB"
                assert refused > 0

    asyncio.run(main())


# ---- item 14a: open_stream after close or shutdown ---------------------------------

def test_open_stream_after_close_or_shutdown_raises(registration, listener, client_config) -> None:
    port = listener.local_address[1]
    for i in range(3 * RUNS):
        conn = pymsquic.sync.connect("127.0.0.1", port, configuration=client_config, open_timeout=10)
        server = listener.accept(timeout=10)
        if i % 3 == 0:
            conn.shutdown(1)
        elif i % 3 == 1:
            conn.close()
        else:
            conn._abandon()
        with pytest.raises(pymsquic.ConnectionClosed):
            conn.open_stream()
        conn.close()
        server.close()


# ---- item 14b: errors after a local Registration.close() ---------------------------

def test_errors_after_registration_close_say_it_was_closed_locally(server_credential) -> None:
    server_reg = pymsquic.Registration("server-side")
    reg = pymsquic.Registration("closed-locally")
    try:
        server_cfg = pymsquic.Configuration(server_reg, ALPN, server_credential,
                                            pymsquic.Settings(peer_bidi_stream_count=4))
        client_cfg = pymsquic.Configuration(reg, ALPN, client_credential())
        with pymsquic.sync.Listener(server_reg, server_cfg) as lst:
            lst.start(ALPN, ("127.0.0.1", 0))
            conn = pymsquic.sync.connect("127.0.0.1", lst.local_address[1], configuration=client_cfg,
                                         open_timeout=10)
            server = lst.accept(timeout=10)
            stream = conn.open_stream()
            stream.write(b"x")
            server.accept_stream(timeout=10).read(1, timeout=10)  # the server has it, and sends nothing
            reg.close()
            for what in (lambda: conn.close_reason, lambda: stream.read(timeout=5), lambda: stream.write(b"y"),
                         conn.open_stream, lambda: conn.accept_stream(timeout=5)):
                try:
                    error = what()
                except pymsquic.QuicError as exc:
                    error = exc
                assert isinstance(error, pymsquic.ConnectionClosed), error
                assert error.by_app and not error.by_peer, error
                assert "registration" in str(error), error
            server.close()
    finally:
        reg.close()
        server_reg.close()


# ---- item 14d: what was negotiated stays readable after the peer left ---------------

def test_negotiated_values_stay_readable_after_a_quick_client_left(server_credential) -> None:
    seen: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        await asyncio.wait_for(conn.wait_closed(), 10)  # the client is gone
        seen.put_nowait((conn.alpn, conn.server_name, conn.client_alpns, conn.remote_address))

    async def main() -> None:
        async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            port = server.addresses[0][1]
            for _ in range(RUNS):
                async with aioquic_connect("127.0.0.1", port, configuration=aioquic_config()):
                    pass
                conn = await pymsquic.connect("127.0.0.1", port, alpn=ALPN, server_name="localhost",
                                              credential=client_credential(), open_timeout=10)
                conn._abandon()  # leaves at once
            for _ in range(2 * RUNS):
                alpn, server_name, client_alpns, remote = await asyncio.wait_for(seen.get(), 10)
                assert alpn == ALPN and server_name == "localhost" and ALPN in client_alpns and remote

    asyncio.run(main())


# ---- issue 8: iteration over peer streams ends quietly only on a clean close ----------

IDLE_MS = 500
ENDINGS = ("peer_closed_with_0", "peer_closed_with_a_code", "idle_timeout")


@pytest.fixture
def idle_config(registration, server_credential) -> pymsquic.Configuration:
    # The idle timeout in effect is the smaller of the two sides'.
    return pymsquic.Configuration(registration, ALPN, server_credential,
                                  pymsquic.Settings(idle_timeout_ms=IDLE_MS, peer_bidi_stream_count=4))


def sync_pair(registration: pymsquic.Registration, listener: pymsquic.sync.Listener,
              **kwargs: Any) -> tuple[pymsquic.sync.Connection, pymsquic.sync.Connection]:
    """A blocking client connected to ``listener``, and the server's side."""
    client = pymsquic.sync.connect("127.0.0.1", listener.local_address[1], alpn=ALPN, credential=client_credential(),
                                   registration=registration, open_timeout=10, **kwargs)
    return client, listener.accept(timeout=10)


async def async_pair(registration: pymsquic.Registration, listener: pymsquic.asyncio.Listener,
                     **kwargs: Any) -> tuple[pymsquic.asyncio.Connection, pymsquic.asyncio.Connection]:
    """An asyncio client connected to ``listener``, and the server's side."""
    client = await pymsquic.asyncio.connect("127.0.0.1", listener.local_address[1], alpn=ALPN,
                                            credential=client_credential(), registration=registration,
                                            open_timeout=10, **kwargs)
    return client, await asyncio.wait_for(listener.accept(), 10)


def end_connection(client: AnyConnection, ending: str) -> None:
    """What the client does once the server received its streams."""
    if ending == "peer_closed_with_0":
        client.shutdown(0)
    elif ending == "peer_closed_with_a_code":
        client.shutdown(APP_CODE)
    # "idle_timeout": nothing more is sent, by either side


def assert_iteration_ending(ending: str, received: list[bytes], raised: BaseException | None) -> None:
    assert received == [b"0", b"1"]  # every stream the peer opened came first
    if ending == "peer_closed_with_0":
        assert raised is None, raised
        return
    assert isinstance(raised, pymsquic.ConnectionClosed), raised
    if ending == "peer_closed_with_a_code":
        assert raised.by_peer and raised.error_code == APP_CODE, raised
    else:
        assert raised.by_transport and raised.status_name == "CONNECTION_IDLE", raised


@pytest.mark.parametrize("ending", ENDINGS)
def test_sync_iteration_over_peer_streams_ends_quietly_only_on_a_clean_close(registration, idle_config,
                                                                            ending: str) -> None:
    with pymsquic.sync.Listener(registration, idle_config) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        client, server = sync_pair(registration, lst)
        streams = [client.open_stream() for _ in range(2)]  # kept: a collected stream is abandoned
        for i, stream in enumerate(streams):
            stream.write(b"%d" % i, fin=True)
        received: list[bytes] = []
        raised: BaseException | None = None
        try:
            for stream in server:
                received.append(stream.read(timeout=10))
                if len(received) == 2:
                    end_connection(client, ending)
        except pymsquic.ConnectionClosed as exc:
            raised = exc
        assert_iteration_ending(ending, received, raised)
        client.close()
        server.close()


@pytest.mark.parametrize("ending", ENDINGS)
def test_async_iteration_over_peer_streams_ends_quietly_only_on_a_clean_close(registration, idle_config,
                                                                             ending: str) -> None:
    async def main() -> None:
        async with pymsquic.asyncio.Listener(registration, idle_config) as lst:
            lst.start(ALPN, ("127.0.0.1", 0))
            client, server = await async_pair(registration, lst)
            streams = [client.open_stream() for _ in range(2)]  # kept: a collected stream is abandoned
            for i, stream in enumerate(streams):
                stream.write(b"%d" % i, fin=True)
            received: list[bytes] = []
            raised: BaseException | None = None

            async def iterate() -> None:
                async for stream in server:
                    received.append(await stream.read())
                    if len(received) == 2:
                        end_connection(client, ending)

            try:
                await asyncio.wait_for(iterate(), 30)
            except pymsquic.ConnectionClosed as exc:
                raised = exc
            assert_iteration_ending(ending, received, raised)
            await client.close()
            await server.close()

    asyncio.run(main())


# ---- issue 8: close() is graceful, and bounded by close_timeout ----------------------

PAYLOAD = bytes(range(256)) * (16 << 10)  # 4 MiB: far more than one flight, cut off by an immediate close
UNREAD = bytes(16 << 20)  # more than the peer's flow control lets through while it does not read


class Sink(RecordingProtocol):
    """An aioquic server connection keeping every stream byte it receives.

    The peer of the close-delivers tests: aioquic hands stream data to this
    protocol before it acknowledges it, so whatever a graceful close waited for
    is here, complete, even after the close. (A pymsquic peer's application
    could lose the last bytes it had not read yet: QUIC's close discards them,
    see ``Connection.close()``.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data = bytearray()
        self.fin = False
        self.closed = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        super().quic_event_received(event)
        if isinstance(event, StreamDataReceived):
            self.data += event.data
            self.fin = self.fin or event.end_stream
        elif isinstance(event, ConnectionTerminated):
            self.closed.set()


def close_just_after_writing(cert_files: tuple[Any, Any], client: Callable[[int], Awaitable[None]]) -> Sink:
    """Run ``await client(port)`` against an aioquic server; the Sink its
    connection left once aioquic saw it closed."""
    async def main() -> Sink:
        config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
        config.load_cert_chain(str(cert_files[0]), str(cert_files[1]))
        sinks: list[Sink] = []

        def create(*args: Any, **kwargs: Any) -> Sink:
            sinks.append(Sink(*args, **kwargs))
            return sinks[-1]

        server = await aioquic_serve("127.0.0.1", 0, configuration=config, create_protocol=create)
        try:
            await client(server._transport.get_extra_info("sockname")[1])
            (sink,) = sinks
            await asyncio.wait_for(sink.closed.wait(), 10)
            return sink
        finally:
            server.close()

    return asyncio.run(main())


def assert_delivered_then_closed(sink: Sink) -> None:
    assert sink.fin and sink.data == PAYLOAD, (sink.fin, len(sink.data))
    assert sink.terminated is not None and sink.terminated.error_code == APP_CODE, sink.terminated


def test_sync_close_delivers_what_was_written_just_before(registration, cert_files) -> None:
    def client(port: int) -> None:
        conn = pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                     registration=registration, open_timeout=10, close_timeout=60)
        stream = conn.open_stream()  # kept: the close, not a collected stream, must deliver it
        stream.write(PAYLOAD, fin=True)
        conn.close(APP_CODE)

    async def in_a_thread(port: int) -> None:  # aioquic runs on the loop meanwhile
        await asyncio.get_running_loop().run_in_executor(None, client, port)

    assert_delivered_then_closed(close_just_after_writing(cert_files, in_a_thread))


def test_async_close_delivers_what_was_written_just_before(registration, cert_files) -> None:
    async def client(port: int) -> None:
        conn = await pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                              registration=registration, open_timeout=10, close_timeout=60)
        stream = conn.open_stream()  # kept: the close, not a collected stream, must deliver it
        stream.write(PAYLOAD, fin=True)
        await conn.close(APP_CODE)

    assert_delivered_then_closed(close_just_after_writing(cert_files, client))


def assert_closed_here_and_released(client: AnyConnection, code: int) -> None:
    reason = client.close_reason
    assert reason is not None and reason.by_app and reason.error_code == code, reason
    assert client._released
    with pytest.raises(pymsquic.ConnectionClosed):
        client.open_stream()


def test_sync_close_to_a_peer_that_does_not_read_is_bounded_by_close_timeout(registration, listener) -> None:
    client, server = sync_pair(registration, listener, close_timeout=0.5)
    stream = client.open_stream()  # kept: a collected stream is reset, and counts as sent
    stream.write(UNREAD)  # the server never even accepts the stream
    closer = threading.Thread(target=client.close, args=(APP_CODE,), daemon=True)
    closer.start()
    closer.join(60)  # a guard against a hang, far beyond the close_timeout
    assert not closer.is_alive(), "close() did not return: it waited for data the peer never reads"
    assert_closed_here_and_released(client, APP_CODE)
    server.wait_closed(timeout=10)
    assert_closed_by_peer(server, APP_CODE)


def test_async_close_to_a_peer_that_does_not_read_is_bounded_by_close_timeout(registration, async_listener) -> None:
    async def main() -> None:
        client, server = await async_pair(registration, async_listener, close_timeout=0.5)
        stream = client.open_stream()  # kept: a collected stream is reset, and counts as sent
        stream.write(UNREAD)  # the server never even accepts the stream
        await asyncio.wait_for(client.close(APP_CODE), 60)  # a guard against a hang, far beyond close_timeout
        assert_closed_here_and_released(client, APP_CODE)
        await asyncio.wait_for(server.wait_closed(), 10)
        assert_closed_by_peer(server, APP_CODE)

    asyncio.run(main())


def test_cancelled_async_close_still_shuts_down_with_its_error_code(registration, async_listener) -> None:
    async def main() -> None:
        client, server = await async_pair(registration, async_listener)
        stream = client.open_stream()  # kept: a collected stream is reset, and counts as sent
        stream.write(UNREAD)  # the server never reads: close() waits for it to be sent
        closing = asyncio.create_task(client.close(APP_CODE))
        await asyncio.sleep(0)  # one loop turn: the task runs up to its first wait
        assert not closing.done() and client.close_reason is None  # still waiting, before its shutdown
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert_closed_here_and_released(client, APP_CODE)
        await asyncio.wait_for(server.wait_closed(), 10)
        assert_closed_by_peer(server, APP_CODE)

    asyncio.run(main())


# ---- issue 8: connect()'s open timeout --------------------------------------------

@pytest.fixture
def silent_udp_port() -> Iterator[tuple[socket.socket, int]]:
    """A UDP socket on loopback that receives and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock, sock.getsockname()[1]


def assert_initial_received(sock: socket.socket) -> None:
    # The connect did reach the silent socket: a QUIC long-header packet came.
    sock.settimeout(10)
    assert sock.recv(65536)[0] & 0x80


def test_sync_connect_open_timeout(registration, silent_udp_port) -> None:
    sock, port = silent_udp_port
    with pytest.raises(TimeoutError):
        pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                              registration=registration, open_timeout=0.5)
    assert_initial_received(sock)


def test_async_connect_open_timeout(registration, silent_udp_port) -> None:
    sock, port = silent_udp_port

    async def main() -> None:
        # asyncio's class, as asyncio.wait_for raises (the connect() docstring); the builtin
        # TimeoutError only from 3.11 on, where the two are one class.
        with pytest.raises(asyncio.TimeoutError):
            await pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                           registration=registration, open_timeout=0.5)
        with pytest.raises(asyncio.TimeoutError):
            async with pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                                registration=registration, open_timeout=0.5):
                pass

    asyncio.run(main())
    assert_initial_received(sock)
