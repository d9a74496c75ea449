"""Connection lifecycle under misuse (issue 7, items 1 datagram part, 5, 6, 13, 14).

The close code the peer sees, handles that must be closed once, the datagram send
bound, open_stream after close, errors after a local Registration.close(), empty
datagrams, negotiated values after the peer left.
"""

from __future__ import annotations

import array
import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from aioquic.asyncio import connect as aioquic_connect

import pymsquic
from conftest import ALPN, RecordingProtocol, aioquic_config

RUNS = 10  # the lost close code showed in 2-4 of 5 runs before the fix
APP_CODE = 0x88
EXCEPTION_CODE = getattr(pymsquic, "EXCEPTION_ERROR_CODE", None)


class Boom(Exception):
    pass


def client_credential() -> pymsquic.Credential:
    return pymsquic.Credential.client(verify=False)


def assert_closed_by_peer(conn: pymsquic.Connection, code: int | None) -> None:
    """After wait_closed: the peer closed ``conn`` with ``code``; releases it."""
    reason = conn.close_reason
    assert reason is not None and reason.by_peer and reason.error_code == code, reason
    conn.close()


# ---- item 5: only the first shutdown reaches msquic --------------------------------

def test_async_with_connect_keeps_the_shutdown_code(registration, listener) -> None:
    port = listener.local_address[1]

    async def main() -> None:
        for _ in range(RUNS):
            async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                        registration=registration, timeout=10) as conn:
                server = await listener.accept_async(timeout=10)
                conn.shutdown(APP_CODE)
            await server.wait_closed_async(timeout=10)
            assert_closed_by_peer(server, APP_CODE)

    asyncio.run(main())


def test_with_sync_connect_keeps_the_shutdown_code(registration, listener) -> None:
    port = listener.local_address[1]
    for _ in range(RUNS):
        with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                   registration=registration, timeout=10) as conn:
            server = listener.accept(timeout=10)
            conn.shutdown(APP_CODE)
        server.wait_closed(timeout=10)
        assert_closed_by_peer(server, APP_CODE)


def test_serve_handler_keeps_the_shutdown_code(server_credential) -> None:
    async def handler(conn: pymsquic.Connection) -> None:
        conn.shutdown(APP_CODE)

    async def main() -> None:
        async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            port = server.addresses[0][1]
            for _ in range(RUNS):
                conn = await pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(), timeout=10)
                await conn.wait_closed_async(timeout=10)
                assert_closed_by_peer(conn, APP_CODE)

    asyncio.run(main())


def test_serve_handler_shutdown_code_seen_by_aioquic(server_credential) -> None:
    async def handler(conn: pymsquic.Connection) -> None:
        await asyncio.sleep(0.05)  # let the aioquic client finish its handshake bookkeeping
        conn.shutdown(APP_CODE)

    async def main() -> None:
        async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
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
    def handler(conn: pymsquic.Connection) -> None:
        conn.shutdown(APP_CODE)

    with pymsquic.sync.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.addresses[0][1]
        for _ in range(RUNS):
            conn = pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(), timeout=10)
            conn.wait_closed(timeout=10)
            assert_closed_by_peer(conn, APP_CODE)


def test_exception_in_async_with_closes_with_the_exception_code(registration, listener) -> None:
    assert EXCEPTION_CODE, "pymsquic.EXCEPTION_ERROR_CODE must be a non-zero application error code"
    port = listener.local_address[1]

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(Boom):
                async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                            registration=registration, timeout=10):
                    server = await listener.accept_async(timeout=10)
                    raise Boom()
            await server.wait_closed_async(timeout=10)
            assert_closed_by_peer(server, EXCEPTION_CODE)

    asyncio.run(main())


def test_exception_in_with_closes_with_the_exception_code(registration, listener) -> None:
    assert EXCEPTION_CODE
    port = listener.local_address[1]
    for _ in range(3):
        with pytest.raises(Boom):
            with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                       registration=registration, timeout=10):
                server = listener.accept(timeout=10)
                raise Boom()
        server.wait_closed(timeout=10)
        assert_closed_by_peer(server, EXCEPTION_CODE)


def test_failing_handlers_close_with_the_exception_code(server_credential) -> None:
    assert EXCEPTION_CODE

    async def handler(conn: pymsquic.Connection) -> None:
        raise Boom()

    def sync_handler(conn: pymsquic.Connection) -> None:
        raise Boom()

    async def main() -> None:
        async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            conn = await pymsquic.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                          credential=client_credential(), timeout=10)
            await conn.wait_closed_async(timeout=10)
            assert_closed_by_peer(conn, EXCEPTION_CODE)

    asyncio.run(main())
    with pymsquic.sync.serve(sync_handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        conn = pymsquic.sync.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                     credential=client_credential(), timeout=10)
        conn.wait_closed(timeout=10)
        assert_closed_by_peer(conn, EXCEPTION_CODE)


def test_second_shutdown_never_overrides_the_first(registration, listener, client_config) -> None:
    port = listener.local_address[1]
    for _ in range(RUNS):
        conn = pymsquic.Connection.connect(registration, client_config, "127.0.0.1", port, timeout=10)
        server = listener.accept(timeout=10)
        conn.shutdown(APP_CODE)
        conn.shutdown(0)
        conn.close()
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
lst = pymsquic.Listener(reg, server_cfg)
lst.start("u", ("127.0.0.1", 0))
conn = pymsquic.Connection.connect(reg, client_cfg, "127.0.0.1", lst.local_address[1], timeout=5)
server = lst.accept(timeout=5)
"""

HANG_SCENARIOS = {
    "opened_never_used": """
        s = conn.open_stream()
        conn.close()
    """,
    "write_failed_its_type_check": """
        s = conn.open_stream()
        try:
            s.write("not bytes")
        except TypeError:
            pass
        conn.close()
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
        conn.close()
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
    conn = pymsquic.Connection.connect(registration, client_config, "127.0.0.1", listener.local_address[1], timeout=10)
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

def datagram_pair(registration, listener) -> tuple[pymsquic.Connection, pymsquic.Connection]:
    cfg = pymsquic.Configuration(registration, ALPN, client_credential(),
                                 pymsquic.Settings(datagram_receive_enabled=True))
    conn = pymsquic.Connection.connect(registration, cfg, "127.0.0.1", listener.local_address[1], timeout=10)
    return conn, listener.accept(timeout=10)


@pytest.fixture
def dgram_listener(registration, server_credential):
    cfg = pymsquic.Configuration(registration, ALPN, server_credential,
                                 pymsquic.Settings(peer_bidi_stream_count=4, datagram_receive_enabled=True))
    with pymsquic.Listener(registration, cfg) as lst:
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

    async def handler(conn: pymsquic.Connection) -> None:
        async for stream in conn:
            data = await stream.read()
            stream.write(len(data).to_bytes(8, "big"), fin=True)
            await stream.wait_closed(timeout=30)

    async def main() -> None:
        async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            async with pymsquic.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                        credential=client_credential(), timeout=10) as conn:
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
    for i in range(2 * RUNS):
        conn = pymsquic.Connection.connect(registration, client_config, "127.0.0.1", port, timeout=10)
        server = listener.accept(timeout=10)
        if i % 2:
            conn.shutdown(1)
        else:
            conn.close()
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
        with pymsquic.Listener(server_reg, server_cfg) as lst:
            lst.start(ALPN, ("127.0.0.1", 0))
            conn = pymsquic.Connection.connect(reg, client_cfg, "127.0.0.1", lst.local_address[1], timeout=10)
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

    async def handler(conn: pymsquic.Connection) -> None:
        await conn.wait_closed_async(timeout=10)  # the client is gone
        seen.put_nowait((conn.alpn, conn.server_name, conn.client_alpns, conn.remote_address))

    async def main() -> None:
        async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            port = server.addresses[0][1]
            for _ in range(RUNS):
                async with aioquic_connect("127.0.0.1", port, configuration=aioquic_config()):
                    pass
                conn = await pymsquic.connect("127.0.0.1", port, alpn=ALPN, server_name="localhost",
                                              credential=client_credential(), timeout=10)
                conn.close()
            for _ in range(2 * RUNS):
                alpn, server_name, client_alpns, remote = await asyncio.wait_for(seen.get(), 10)
                assert alpn == ALPN and server_name == "localhost" and ALPN in client_alpns and remote

    asyncio.run(main())
