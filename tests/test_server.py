"""serve() and Server in both worlds, over loopback (issue 8, "Must show").

asyncio: serve_forever() and its cancellation, start_serving=False, ``async
with serve(...)`` and ``await serve(...)``, wait_closed() only waiting. Both
worlds: close(grace=...) letting a handler finish first, close() without grace
shutting the handler's connection down, a failing handler closing with
EXCEPTION_ERROR_CODE. sync: serve_forever() in a thread until shutdown(), and
close(timeout) raising TimeoutError while a handler ignores the shutdown,
is_serving() and wait_closed(timeout).

Closing completely (review of 6ef3d52): sync close() waits for a handler's
connection to finish closing, and works from a handler; asyncio close() and
wait_closed() from a handler, a handler ignoring its shutdown cancelled after
close_timeout, serve_forever() on a closed server; serve() refuses a handler
that is not callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
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
               credential: pymsquic.Credential, **kwargs: Any) -> pymsquic.sync.Server:
    return pymsquic.sync.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=credential,
                               registration=registration, **kwargs)


def sync_client(server: pymsquic.sync.Server, registration: pymsquic.Registration) -> pymsquic.sync.Connection:
    return SYNC.run(SYNC.connect(server.addresses[0][1], registration))  # type: ignore[no-any-return]


def serving_thread(server: pymsquic.sync.Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="test-serve-forever")
    thread.start()
    return thread


def test_sync_serve_forever_returns_after_shutdown_and_open_connections_go_on(registration,
                                                                               server_credential) -> None:
    recording = Recording()
    with sync_serve(lambda conn: SYNC.run(recording(SYNC, conn)), registration, server_credential) as server:
        thread = serving_thread(server)
        with sync_client(server, registration) as conn:
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
        with sync_client(server, registration) as conn:
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


# ---- closing completely: handlers still closing, a handler closing its server, a bad handler ----

def test_sync_close_waits_for_a_handler_still_delivering_its_response(registration, server_credential) -> None:
    payload = random.Random(8).randbytes(8 << 20)  # far beyond what the client takes in unread
    handler_thread: list[threading.Thread] = []
    returned = threading.Event()

    def respond(conn: pymsquic.sync.Connection) -> None:
        handler_thread.append(threading.current_thread())
        conn.accept_stream(timeout=WAIT).write(payload, fin=True)  # queued: conn.close() delivers it
        # And a stream the client reads only after the whole response: its flow
        # control holds conn.close() back until then. Else the close could come
        # while the client still reads, and QUIC's close discards what it has not
        # taken yet (see Connection.close()); of this one, the client needs nothing.
        conn.open_stream(unidirectional=True).write(bytes(4 << 20), fin=True)
        returned.set()

    # close_timeout: the handler's conn.close() waits for the client to read, never gives up on it.
    server = sync_serve(respond, registration, server_credential, close_timeout=3 * WAIT)
    serving = serving_thread(server)
    alive_when_closed: list[bool] = []

    def close() -> None:
        server.close(timeout=3 * WAIT)
        alive_when_closed.append(handler_thread[0].is_alive())

    with sync_client(server, registration) as conn:
        stream = conn.open_stream()
        stream.write(b"request")
        assert returned.wait(WAIT)
        closer = threading.Thread(target=close, name="test-server-close")
        closer.start()
        # A close() that does not wait for the handler's conn.close() returns now,
        # while the response is still unread: give it the chance. (The one that
        # waits cannot return before the client reads; the join merely times out.)
        closer.join(2.0)
        received = stream.read(timeout=WAIT)
        assert handler_thread[0].is_alive()  # still closing: the unread tail holds the close back
        tail = conn.accept_stream(timeout=WAIT)
        with contextlib.suppress(pymsquic.ConnectionClosed):  # its own last bytes may be cut off by the close
            while tail.read(1 << 20, timeout=WAIT):
                pass
        closer.join(WAIT)
    assert not closer.is_alive()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest(), len(received)
    assert alive_when_closed == [False]  # close() returned only after the handler's thread ended
    serving.join(WAIT)
    assert not serving.is_alive()


def test_sync_close_from_a_handler(registration, server_credential) -> None:
    outcome: list[str] = []

    def quit_command(conn: pymsquic.sync.Connection) -> None:
        try:
            server.close(timeout=WAIT)  # its own thread is not waited for
        except BaseException as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")
        else:
            outcome.append("closed")

    server = sync_serve(quit_command, registration, server_credential)
    serving = serving_thread(server)
    with sync_client(server, registration) as conn:
        SYNC.run(closed_by_peer(SYNC, conn, 0))  # the close shut the handler's own connection down
    serving.join(WAIT)
    assert not serving.is_alive()
    assert_closed(server)
    server.close(timeout=WAIT)  # joins the handler's thread
    assert outcome == ["closed"]


def test_sync_close_while_a_handler_thread_is_being_started(registration, server_credential,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """close() joins the handler threads it finds; one added but not started yet
    made it raise "cannot join thread before it is started". The join here runs
    in another thread at the worst moment: between the handler thread's creation
    and its start."""
    joined: list[str] = []
    joiners: list[threading.Thread] = []
    real_start = threading.Thread.start

    def start_after_a_join(thread: threading.Thread) -> None:
        if thread.name.startswith("pymsquic-handler-"):
            entering = threading.Event()

            def join() -> None:
                entering.set()
                try:
                    server._join(pymsquic._native.Deadline(WAIT))
                    joined.append("joined")
                except BaseException as exc:  # noqa: BLE001  # the regression: RuntimeError
                    joined.append(f"{type(exc).__name__}: {exc}")

            joiner = threading.Thread(target=join)
            real_start(joiner)
            assert entering.wait(WAIT)
            # Without the fix the join fails at once; with it, it waits for the lock
            # this start holds: either way, give it the moment it needs to show which.
            joiner.join(0.5)
            real_start(thread)
            joiners.append(joiner)  # with the fix, it joins once this start released the lock
        else:
            real_start(thread)

    def handler(conn: pymsquic.sync.Connection) -> None:
        stream = conn.accept_stream(timeout=WAIT)
        stream.write(stream.read(timeout=WAIT), fin=True)

    server = sync_serve(handler, registration, server_credential)
    serving = serving_thread(server)
    monkeypatch.setattr(threading.Thread, "start", start_after_a_join)
    with sync_client(server, registration) as conn:
        assert SYNC.run(round_trip(SYNC, conn, b"started")) == b"started"
    monkeypatch.undo()
    for joiner in joiners:
        joiner.join(WAIT)
    server.close(timeout=WAIT)
    serving.join(WAIT)
    assert joined == ["joined"]


def test_asyncio_close_and_wait_closed_from_a_handler(registration, server_credential) -> None:
    async def main() -> None:
        closed_in_handler = asyncio.Event()

        async def quit_command(conn: pymsquic.asyncio.Connection) -> None:
            server.close()
            await server.wait_closed()  # the close does not wait for this handler: no deadlock
            closed_in_handler.set()

        server = await asyncio_serve(quit_command, registration, server_credential)
        conn = await ASYNC.connect(server.addresses[0][1], registration)
        await asyncio.wait_for(closed_in_handler.wait(), WAIT)
        await asyncio.wait_for(server.wait_closed(), WAIT)
        assert_closed(server)
        await closed_by_peer(ASYNC, conn, 0)

    asyncio.run(main())


def test_asyncio_wait_closed_cancels_a_handler_that_ignores_its_shutdown(registration,
                                                                        server_credential) -> None:
    async def main() -> None:
        started = asyncio.Event()
        cancelled: list[bool] = []

        async def stubborn(conn: pymsquic.asyncio.Connection) -> None:
            started.set()
            try:
                await asyncio.Event().wait()  # ignores the connection and its shutdown
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        server = await asyncio_serve(stubborn, registration, server_credential, close_timeout=0.5)
        conn = await ASYNC.connect(server.addresses[0][1], registration)
        await asyncio.wait_for(started.wait(), WAIT)
        server.close()
        await asyncio.wait_for(server.wait_closed(), WAIT)  # close_timeout after the shutdown
        assert cancelled == [True]
        assert_closed(server)
        await closed_by_peer(ASYNC, conn, 0)

    asyncio.run(main())


def test_asyncio_serve_forever_on_a_closed_server_raises(registration, server_credential) -> None:
    async def main() -> None:
        server = await asyncio_serve(asyncio_echo(Recording()), registration, server_credential,
                                     start_serving=False)
        server.close()
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(server.serve_forever(), WAIT)
        await asyncio.wait_for(server.wait_closed(), WAIT)
        assert_closed(server)

    asyncio.run(main())


def test_sync_is_serving_and_wait_closed(registration, server_credential) -> None:
    recording = Recording()
    server = sync_serve(lambda conn: SYNC.run(recording(SYNC, conn)), registration, server_credential)
    assert not server.is_serving()
    serving = serving_thread(server)
    with sync_client(server, registration) as conn:
        assert SYNC.run(round_trip(SYNC, conn, b"served")) == b"served"  # a handler runs: serve_forever() serves
        assert server.is_serving()
        with pytest.raises(TimeoutError):
            server.wait_closed(timeout=0.2)  # only waits: closes nothing
        assert SYNC.run(round_trip(SYNC, conn, b"still serving")) == b"still serving"
        closer = threading.Thread(target=server.close, kwargs={"timeout": WAIT}, name="test-server-close")
        closer.start()
        server.wait_closed(timeout=WAIT)
        assert server.listener.state is pymsquic.ListenerState.SHUTDOWN_COMPLETE
        closer.join(WAIT)
        serving.join(WAIT)
        assert not serving.is_alive() and not server.is_serving()
    server.wait_closed(timeout=0)  # closed: returns at once
    assert recording.outcomes == ["ConnectionClosed"]


@pytest.mark.parametrize("form", ["sync", "await", "async with"])
def test_serve_refuses_a_handler_that_is_not_callable(registration, server_credential, form: str) -> None:
    # Each form closes what it made if serve() accepts None: a failure, not a leaked listener.
    async def main() -> None:
        with pytest.raises(TypeError, match="callable"):
            if form == "await":
                server = await asyncio_serve(None, registration, server_credential)  # type: ignore[arg-type]
                server.close()
                await server.wait_closed()
            else:
                async with asyncio_serve(None, registration, server_credential):  # type: ignore[arg-type]
                    pass

    if form == "sync":
        with pytest.raises(TypeError, match="callable"):
            sync_serve(None, registration, server_credential).close()  # type: ignore[arg-type]
    else:
        asyncio.run(main())


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
