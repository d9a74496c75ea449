"""serve() and Server in both worlds, over loopback (issue 8, "Must show").

asyncio: serve_forever() and its cancellation, start_serving=False, ``async
with serve(...)`` and ``await serve(...)``, wait_closed() only waiting. Both
worlds: close(grace=...) letting a handler finish first, close() without grace
shutting the handler's connection down, a failing handler closing with
EXCEPTION_ERROR_CODE. sync: serve_forever() in a thread until shutdown(), and
close(timeout) raising TimeoutError while a handler ignores the shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import pytest

import pymsquic

from conftest import ALPN
from worlds import (
    WAIT,
    AsyncioWorld,
    SyncWorld,
    World,
    client_credential,
    round_trip,
    worlds,
)

ASYNC = AsyncioWorld()
SYNC = SyncWorld()


class Boom(Exception):
    pass


async def echo_until_bye(w: World, conn: Any) -> None:
    """Echo each stream the client opens, one at a time; return after echoing b"bye"."""
    while True:
        stream = await w.wait(conn.accept_stream)
        data = await w.wait(stream.read, -1)
        stream.write(data, fin=True)
        if data == b"bye":
            return


class Recording:
    """A handler echoing until b"bye" that records how it ended: "finished" or
    the exception's class name (then re-raised only if it is not ConnectionClosed)."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    async def __call__(self, w: World, conn: Any) -> None:
        try:
            await echo_until_bye(w, conn)
        except pymsquic.ConnectionClosed:
            self.outcomes.append("ConnectionClosed")
            return
        except BaseException as exc:
            self.outcomes.append(type(exc).__name__)
            raise
        self.outcomes.append("finished")


async def closed_by_peer(w: World, conn: Any, error_code: int) -> None:
    """Wait until ``conn`` is closed; check the peer closed it with ``error_code``; release it."""
    await w.wait(conn.wait_closed)
    reason = conn.close_reason
    assert reason is not None and reason.by_peer and reason.error_code == error_code, reason
    await w.call(conn.close)


def assert_closed(server: Any) -> None:
    assert server.listener.state is pymsquic.ListenerState.SHUTDOWN_COMPLETE
    assert not getattr(server, "is_serving", lambda: False)()


def asyncio_serve(handler: Callable[[Any], Any], registration: pymsquic.Registration,
                  credential: pymsquic.Credential, **kwargs: Any) -> pymsquic.asyncio.serve:
    return pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=credential,
                                  registration=registration, **kwargs)


def asyncio_echo(recording: Recording) -> Callable[[Any], Any]:
    return lambda conn: recording(ASYNC, conn)


async def until(listener: pymsquic.asyncio.Listener, check: Callable[[], bool]) -> None:
    """Wait on the listener's own native changes (a handshake completing and the
    connection queued is one) until ``check()`` holds."""
    await asyncio.wait_for(listener._wait(lambda: True if check() else None, "until()"), WAIT)


# ---- asyncio: serve_forever, start_serving, the two ways into serve ---------------------

@pytest.mark.parametrize("end", ["close", "cancel"])
def test_serve_forever_serves_until_closed_or_cancelled(registration, server_credential, end: str) -> None:
    recording = Recording()

    async def main() -> None:
        server = await asyncio_serve(asyncio_echo(recording), registration, server_credential)
        forever = asyncio.create_task(server.serve_forever())
        conn = await ASYNC.connect(server.addresses[0][1], registration)
        assert await round_trip(ASYNC, conn, b"served") == b"served"
        assert not forever.done() and server.is_serving()
        if end == "close":
            server.close()
            await asyncio.wait_for(forever, WAIT)  # returns (not raises) once the server is closed
        else:
            forever.cancel()
            with pytest.raises(asyncio.CancelledError):
                await forever
            # It closed the server and waited for that before it went on cancelling.
            assert recording.outcomes == ["ConnectionClosed"]
        await asyncio.wait_for(server.wait_closed(), WAIT)
        assert_closed(server)
        assert recording.outcomes == ["ConnectionClosed"]  # its connection was shut down by the close
        await closed_by_peer(ASYNC, conn, 0)

    asyncio.run(main())


@pytest.mark.parametrize("start", ["start_serving", "serve_forever"])
def test_start_serving_false_accepts_nothing_until_started(registration, server_credential, start: str) -> None:
    recording = Recording()

    async def main() -> None:
        server = await asyncio_serve(asyncio_echo(recording), registration, server_credential,
                                     start_serving=False)
        listener = server.listener
        assert not server.is_serving()
        # Listening all the same: msquic completes the handshake and the connection
        # waits in the backlog, so the client's connect succeeds; its request waits.
        assert listener.state is pymsquic.ListenerState.START_COMPLETE
        conn = await ASYNC.connect(server.addresses[0][1], registration)
        stream = conn.open_stream()
        stream.write(b"waiting", fin=True)
        await until(listener, lambda: listener.stats().accepted == 1)
        stats = listener.stats()
        assert stats.queued == 1, stats  # completed, not taken
        assert not server.is_serving() and recording.outcomes == []
        assert not stream.at_eof()

        forever = None
        if start == "start_serving":
            await server.start_serving()
        else:
            forever = asyncio.create_task(server.serve_forever())
        assert await asyncio.wait_for(stream.read(), WAIT) == b"waiting"  # the handler runs now
        assert server.is_serving()
        assert listener.stats().queued == 0
        assert await round_trip(ASYNC, conn, b"bye") == b"bye"
        server.close()
        await asyncio.wait_for(server.wait_closed(), WAIT)
        if forever is not None:
            await asyncio.wait_for(forever, WAIT)
        assert recording.outcomes == ["finished"]
        await conn.close()

    asyncio.run(main())


@pytest.mark.parametrize("form", ["async with", "await"])
def test_serve_is_an_async_context_manager_and_awaitable(registration, server_credential, form: str) -> None:
    recording = Recording()

    async def check(server: pymsquic.asyncio.Server) -> None:
        assert isinstance(server, pymsquic.asyncio.Server)
        assert server.is_serving()
        conn = await ASYNC.connect(server.addresses[0][1], registration)
        assert await round_trip(ASYNC, conn, b"bye") == b"bye"
        await conn.close()

    async def main() -> None:
        if form == "async with":
            async with asyncio_serve(asyncio_echo(recording), registration, server_credential) as server:
                await check(server)
        else:
            server = await asyncio_serve(asyncio_echo(recording), registration, server_credential)
            await check(server)
            server.close()
            await asyncio.wait_for(server.wait_closed(), WAIT)
        assert_closed(server)
        assert recording.outcomes == ["finished"]

    asyncio.run(main())


def test_wait_closed_only_waits(registration, server_credential) -> None:
    recording = Recording()

    async def main() -> None:
        server = await asyncio_serve(asyncio_echo(recording), registration, server_credential)
        waiter = asyncio.create_task(server.wait_closed())
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 0.2)  # and cancelling it closes nothing
        conn = await ASYNC.connect(server.addresses[0][1], registration)
        assert await round_trip(ASYNC, conn, b"still serving") == b"still serving"
        assert not waiter.done()
        assert server.is_serving()
        assert server.listener.state is pymsquic.ListenerState.START_COMPLETE
        server.close()
        await asyncio.wait_for(waiter, WAIT)
        assert not server.is_serving()
        await conn.close()

    asyncio.run(main())


# ---- both worlds: close(grace), close() without grace, a failing handler ---------------

@worlds
def test_close_with_grace_lets_the_handler_finish_first(registration, server_credential, w: World) -> None:
    recording = Recording()

    async def main() -> None:
        async with await w.serve(recording, registration, server_credential) as server:
            conn = await w.connect(server.port, registration)
            assert await round_trip(w, conn, b"before") == b"before"
            server.close(grace=3 * WAIT)
            await server.stopped()
            # Closing, not accepting: yet the connection whose handler runs stays up.
            # (Many round trips: without the grace, its shutdown comes during the first few.)
            for i in range(20):
                assert await round_trip(w, conn, b"during grace %d" % i) == b"during grace %d" % i
            assert conn.close_reason is None
            assert await round_trip(w, conn, b"bye") == b"bye"
            # The handler returned: the close goes on at once, not after the whole grace.
            await server.wait_closed(timeout=WAIT)
            assert recording.outcomes == ["finished"]
            await closed_by_peer(w, conn, 0)

    w.run(main())


@worlds
def test_close_without_grace_shuts_the_handlers_connection_down(registration, server_credential,
                                                                 w: World) -> None:
    recording = Recording()

    async def main() -> None:
        async with await w.serve(recording, registration, server_credential) as server:
            conn = await w.connect(server.port, registration)
            assert await round_trip(w, conn, b"before") == b"before"  # the handler waits for a stream now
            server.close()
            await server.wait_closed()
            assert recording.outcomes == ["ConnectionClosed"]
            await closed_by_peer(w, conn, 0)

    w.run(main())


@worlds
def test_a_failing_handler_closes_with_the_exception_code(registration, server_credential, w: World,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    async def handler(hw: World, conn: Any) -> None:
        raise Boom("the handler failed")

    async def main() -> None:
        async with await w.serve(handler, registration, server_credential) as server:
            conn = await w.connect(server.port, registration)
            with pytest.raises(pymsquic.ConnectionClosed) as closed:
                await w.wait(conn.accept_stream)
            assert closed.value.by_peer and closed.value.error_code == pymsquic.EXCEPTION_ERROR_CODE
            await closed_by_peer(w, conn, pymsquic.EXCEPTION_ERROR_CODE)

    with caplog.at_level(logging.ERROR, logger="pymsquic"):
        w.run(main())
    failures = [r for r in caplog.records if "connection handler failed" in r.getMessage()]
    assert len(failures) == 1, caplog.records
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is Boom
    assert isinstance(getattr(failures[0], "connection_id", None), int)


# ---- sync: serve_forever() in a thread, shutdown(), close(timeout) --------------------------

def sync_serve(handler: Callable[[Any], Any], registration: pymsquic.Registration,
               credential: pymsquic.Credential) -> pymsquic.sync.Server:
    return pymsquic.sync.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=credential,
                               registration=registration)


def serving_thread(server: pymsquic.sync.Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="test-serve-forever")
    thread.start()
    return thread


def test_sync_serve_forever_returns_after_shutdown_and_open_connections_go_on(registration,
                                                                               server_credential) -> None:
    recording = Recording()
    with sync_serve(lambda conn: SYNC.run(recording(SYNC, conn)), registration, server_credential) as server:
        port = server.addresses[0][1]
        thread = serving_thread(server)
        with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                   registration=registration) as conn:
            assert SYNC.run(round_trip(SYNC, conn, b"served")) == b"served"
            server.shutdown(timeout=WAIT)
            thread.join(WAIT)
            assert not thread.is_alive()
            assert_closed(server)
            assert SYNC.run(round_trip(SYNC, conn, b"still open")) == b"still open"
            assert SYNC.run(round_trip(SYNC, conn, b"bye")) == b"bye"
            SYNC.run(closed_by_peer(SYNC, conn, 0))
        server.close(timeout=WAIT)  # the handler is done: returns at once
    assert recording.outcomes == ["finished"]


def test_sync_close_timeout_raises_while_a_handler_ignores_the_shutdown(registration,
                                                                         server_credential) -> None:
    entered, release = threading.Event(), threading.Event()

    def stubborn(conn: pymsquic.sync.Connection) -> None:
        entered.set()
        release.wait(3 * WAIT)  # ignores the connection and its shutdown

    server = sync_serve(stubborn, registration, server_credential)
    thread = serving_thread(server)
    try:
        with pymsquic.sync.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN, credential=client_credential(),
                                   registration=registration) as conn:
            assert entered.wait(WAIT)
            with pytest.raises(TimeoutError):
                server.close(timeout=0.5)
            # The listener is released all the same, and the connection was shut down.
            assert_closed(server)
            SYNC.run(closed_by_peer(SYNC, conn, 0))
        thread.join(WAIT)
        assert not thread.is_alive()
    finally:
        release.set()
    server.close(timeout=WAIT)  # returns once the handler thread has finished
    assert not server._threads


# ---- a registration closed under a serving asyncio server ----------------------------------

REGISTRATION_CLOSED_UNDER_SERVER = textwrap.dedent("""
    import asyncio
    import pymsquic

    async def handler(conn):
        await conn.accept_stream()

    async def main():
        registration = pymsquic.Registration("closed-under-server")
        credential = pymsquic.Credential.self_signed(("localhost",))
        server = await pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn="x", credential=credential,
                                              registration=registration)
        registration.close()  # releases the listener: it must not wait for it
        print(server.listener.state.value)

    asyncio.run(main())
""")


def test_closing_the_registration_releases_a_serving_asyncio_listener() -> None:
    # A subprocess: a RegistrationClose that waits for a listener never released blocks in C, for ever.
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", REGISTRATION_CLOSED_UNDER_SERVER],
                          check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "shutdown_complete"
    assert "never awaited" not in done.stderr
