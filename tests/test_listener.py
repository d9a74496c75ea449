"""Listener against real msquic, in both worlds (pymsquic.sync and pymsquic.asyncio),
with aioquic (PyPI) as the independent client."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aioquic.quic.packet import QuicErrorCode

import pymsquic
from pymsquic import sync
from pymsquic.addresses import Address

from conftest import ALPN, RecordingProtocol, aioquic_handshake

T = TypeVar("T")
AnyListener = sync.Listener | pymsquic.asyncio.Listener
AnyConnection = sync.Connection | pymsquic.asyncio.Connection

#: What a timed-out asyncio.wait_for raises: not the builtin TimeoutError on 3.10.
TIMEOUTS = (TimeoutError, asyncio.TimeoutError)


# ---- one test body, both worlds ----------------------------------------------------
#
# A test written as a coroutine drives either world through these adapters: the
# asyncio world is awaited directly, the blocking world's waits run in worker
# threads (a blocking wait on the loop's own thread is refused).


class Blocking:
    """Drives pymsquic.sync objects from a coroutine."""

    Listener = sync.Listener

    @staticmethod
    async def call(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    @classmethod
    async def accept(cls, lst: sync.Listener, timeout: float = 10.0) -> sync.Connection:
        return await cls.call(lst.accept, timeout)

    @classmethod
    async def stop(cls, lst: sync.Listener) -> None:
        await cls.call(lst.stop, 10.0)

    @classmethod
    async def close(cls, obj: sync.Listener | sync.Connection) -> None:
        await cls.call(obj.close)

    @classmethod
    async def drain(cls, lst: sync.Listener) -> list[sync.Connection]:
        return await cls.call(list, lst)

    @staticmethod
    async def stop_concurrently(lst: sync.Listener, count: int) -> None:
        """``count`` threads call stop() at the same moment."""
        barrier = threading.Barrier(count)

        def stopper() -> None:
            barrier.wait(10)
            lst.stop(timeout=10)

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(count) as pool:
            await asyncio.gather(*(loop.run_in_executor(pool, stopper) for _ in range(count)))

    @classmethod
    async def echo_through(cls, lst: sync.Listener, host: str, port: int,
                           client_config: pymsquic.Configuration) -> Address | None:
        return await cls.call(_echo_through_sync, lst, host, port, client_config)


class Async:
    """Drives pymsquic.asyncio objects: awaited, timeouts by asyncio.wait_for."""

    Listener = pymsquic.asyncio.Listener

    @staticmethod
    async def accept(lst: pymsquic.asyncio.Listener, timeout: float = 10.0) -> pymsquic.asyncio.Connection:
        return await asyncio.wait_for(lst.accept(), timeout)

    @staticmethod
    async def stop(lst: pymsquic.asyncio.Listener) -> None:
        await asyncio.wait_for(lst.stop(), 10)

    @staticmethod
    async def close(obj: pymsquic.asyncio.Listener | pymsquic.asyncio.Connection) -> None:
        await asyncio.wait_for(obj.close(), 10)

    @staticmethod
    async def drain(lst: pymsquic.asyncio.Listener) -> list[pymsquic.asyncio.Connection]:
        return [conn async for conn in lst]

    @staticmethod
    async def stop_concurrently(lst: pymsquic.asyncio.Listener, count: int) -> None:
        """``count`` tasks await stop() at once."""
        await asyncio.wait_for(asyncio.gather(*(lst.stop() for _ in range(count))), 10)

    @staticmethod
    async def echo_through(lst: pymsquic.asyncio.Listener, host: str, port: int,
                           client_config: pymsquic.Configuration) -> Address | None:
        async with pymsquic.asyncio.connect(host, port, configuration=client_config) as client:
            stream = client.open_stream()
            stream.write(b"ping", fin=True)
            async with await asyncio.wait_for(lst.accept(), 10) as conn:
                peer = await asyncio.wait_for(conn.accept_stream(), 10)
                peer.write(await asyncio.wait_for(peer.read(), 10), fin=True)
                assert await asyncio.wait_for(stream.read(), 10) == b"ping"
                assert client.remote_address == conn.local_address
                assert conn.remote_address == client.local_address
                return conn.local_address


World = type[Blocking] | type[Async]


def _echo_through_sync(lst: sync.Listener, host: str, port: int,
                       client_config: pymsquic.Configuration) -> Address | None:
    """A sync client on ``host`` echoes one stream through a connection ``lst``
    accepts; returns the server side's local address."""
    with sync.connect(host, port, configuration=client_config) as client:
        stream = client.open_stream()
        stream.write(b"ping", fin=True)
        with lst.accept(timeout=10) as conn:
            peer = conn.accept_stream(timeout=10)
            peer.write(peer.read(timeout=10), fin=True)
            assert stream.read(timeout=10) == b"ping"
            assert client.remote_address == conn.local_address
            assert conn.remote_address == client.local_address
            return conn.local_address


@pytest.fixture(params=[Blocking, Async], ids=["sync", "asyncio"])
def world(request: pytest.FixtureRequest) -> World:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def world_listener(world: World, request: pytest.FixtureRequest) -> AnyListener:
    """conftest's started listener on 127.0.0.1, of the world under test."""
    return request.getfixturevalue("listener" if world is Blocking else "async_listener")  # type: ignore[no-any-return]


async def accept_during(world: World, lst: Any, port: int, *, hold: float = 0.2,
                        host: str = "127.0.0.1") -> tuple[Any, RecordingProtocol]:
    """Accept one connection while an aioquic client connects (and holds it ``hold`` s)."""
    client = asyncio.create_task(aioquic_handshake(port, hold=hold, host=host))
    conn = await world.accept(lst, 10)
    return conn, await client


def test_msquic_version_is_the_built_one() -> None:
    assert pymsquic.msquic_version().startswith("2.5.")


def test_one_handshake_with_aioquic(world: World, world_listener: AnyListener) -> None:
    listener = world_listener
    host, port = listener.local_address
    assert host == "127.0.0.1" and port > 0
    assert listener.state is pymsquic.ListenerState.START_COMPLETE

    async def main() -> None:
        conn, proto = await accept_during(world, listener, port)
        try:
            assert proto.handshake is not None and proto.handshake.alpn_protocol == ALPN
            assert conn.alpn == ALPN
            assert conn.server_name == "localhost"
            assert conn.client_alpns == (ALPN,)
            assert conn.local_address == ("127.0.0.1", port)
            assert conn.remote_address is not None and conn.remote_address[0] == "127.0.0.1"
            assert listener.stats().accepted == 1
        finally:
            await world.close(conn)

    asyncio.run(main())


@pytest.mark.slow  # fifty aioquic handshakes per world: a load test, run once (under 3.11)
def test_fifty_concurrent_aioquic_clients_through_iteration(world: World, world_listener: AnyListener) -> None:
    listener = world_listener
    port = listener.local_address[1]
    count = 50

    async def main() -> tuple[list[AnyConnection], list[RecordingProtocol]]:
        accepted: list[AnyConnection] = []

        def take_blocking() -> None:
            for conn in listener:  # sync.Listener
                accepted.append(conn)
                if len(accepted) == count:
                    return

        async def acceptor() -> None:
            if world is Blocking:
                await Blocking.call(take_blocking)
                return
            async for conn in listener:  # asyncio.Listener
                accepted.append(conn)
                if len(accepted) == count:
                    return

        clients = asyncio.gather(*(aioquic_handshake(port, hold=1.0) for _ in range(count)))
        protos, _ = await asyncio.wait_for(asyncio.gather(clients, acceptor()), 60)
        await asyncio.gather(*(world.close(conn) for conn in accepted))
        return accepted, protos

    accepted, protos = asyncio.run(main())
    assert all(p.handshake is not None for p in protos)
    client_ports = {p._transport.get_extra_info("sockname")[1] for p in protos}
    assert {c.remote_address[1] for c in accepted} == client_ports


def test_blocking_accept_in_a_thread_while_the_loop_runs(listener: sync.Listener) -> None:
    port = listener.local_address[1]

    async def main() -> tuple[sync.Connection, RecordingProtocol]:
        loop = asyncio.get_running_loop()
        accepted = loop.run_in_executor(None, listener.accept, 10.0)
        await asyncio.sleep(0.05)  # the thread is now blocked in C with the GIL released
        proto = await aioquic_handshake(port, hold=0.2)
        return await accepted, proto

    conn, proto = asyncio.run(main())
    with conn:
        assert proto.handshake is not None
        assert conn.remote_address[1] == proto._transport.get_extra_info("sockname")[1]


def test_blocking_iteration_ends_when_stopped(listener: sync.Listener) -> None:
    threading.Timer(0.3, listener.stop).start()
    assert list(listener) == []


def test_async_iteration_ends_when_stopped(async_listener: pymsquic.asyncio.Listener) -> None:
    async def main() -> list[pymsquic.asyncio.Connection]:
        iterating = asyncio.create_task(Async.drain(async_listener))
        while not async_listener._waiters:  # until the iteration waits in accept()
            await asyncio.sleep(0)
        assert not iterating.done()
        await async_listener.stop()
        return await asyncio.wait_for(iterating, 10)

    assert asyncio.run(main()) == []


def test_accept_timeout_blocking(listener: sync.Listener) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        listener.accept(timeout=0.2)
    assert 0.15 <= time.monotonic() - start < 2


def test_accept_timeout_asyncio(async_listener: pymsquic.asyncio.Listener) -> None:
    async def main() -> None:
        start = time.monotonic()
        with pytest.raises(TIMEOUTS):
            await asyncio.wait_for(async_listener.accept(), 0.2)
        assert 0.15 <= time.monotonic() - start < 2

    asyncio.run(main())


def test_cancelled_accept_loses_no_connection(async_listener: pymsquic.asyncio.Listener) -> None:
    listener = async_listener
    port = listener.local_address[1]

    async def main() -> None:
        waiting = asyncio.create_task(listener.accept())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        client = asyncio.create_task(aioquic_handshake(port, hold=0.3))
        await asyncio.sleep(0.2)  # the connection arrives while nobody is accepting
        conn = await asyncio.wait_for(listener.accept(), 10)
        await client
        await conn.close()

    asyncio.run(main())


def test_wakeups_reach_a_second_event_loop(async_listener: pymsquic.asyncio.Listener) -> None:
    listener = async_listener
    port = listener.local_address[1]

    async def first_loop() -> None:
        with pytest.raises(TIMEOUTS):
            await asyncio.wait_for(listener.accept(), 0.05)
        # Start the stop without waiting: its STOP_COMPLETE is reported to this
        # loop's waker, which nobody drains once this loop is gone.
        listener._stop_settled()

    asyncio.run(first_loop())

    async def second_loop() -> float:
        await listener.stop()
        listener.start(ALPN, ("127.0.0.1", port))
        client = asyncio.create_task(aioquic_handshake(port, hold=0.2))
        start = time.monotonic()
        conn = await asyncio.wait_for(listener.accept(), 8)
        elapsed = time.monotonic() - start
        await client
        await conn.close()
        return elapsed

    # Woken by the second loop's waker (a lost wake-up would end in the 8 s timeout).
    assert asyncio.run(second_loop()) < 4


def test_not_started_already_started_finished(world: World, registration, server_config) -> None:
    async def main() -> None:
        lst = world.Listener(registration, server_config)
        try:
            assert lst.state is pymsquic.ListenerState.OPEN
            with pytest.raises(pymsquic.NotStarted):
                await world.accept(lst, 1)
            lst.start(ALPN, "127.0.0.1:0")
            with pytest.raises(pymsquic.AlreadyStarted):
                lst.start(ALPN, "127.0.0.1:0")
            assert isinstance(pymsquic.AlreadyStarted("x"), pymsquic.ListenError.AlreadyStarted)
            await world.stop(lst)
            assert lst.state is pymsquic.ListenerState.SHUTDOWN_COMPLETE
            with pytest.raises(pymsquic.Finished):
                await world.accept(lst, 1)
            assert await world.drain(lst) == []  # iteration ends at once
        finally:
            await world.close(lst)

    asyncio.run(main())


def test_queued_connections_can_be_accepted_after_stop(world: World, world_listener: AnyListener) -> None:
    listener = world_listener
    port = listener.local_address[1]

    async def main() -> None:
        client = asyncio.create_task(aioquic_handshake(port, hold=0.5))
        while listener.stats().queued == 0 or listener.stats().accepted == 0:
            await asyncio.sleep(0.01)
        await world.stop(listener)
        conn = await world.accept(listener, 10)  # queued before the stop
        with pytest.raises(pymsquic.Finished):
            await world.accept(listener, 10)
        await client
        await world.close(conn)

    asyncio.run(main())


def test_stop_then_restart_on_the_same_port(world: World, world_listener: AnyListener) -> None:
    listener = world_listener
    port = listener.local_address[1]

    async def main() -> None:
        await world.stop(listener)
        await world.stop(listener)  # again: nothing to do
        assert listener.local_address is None
        listener.start(ALPN, ("127.0.0.1", port))
        assert listener.local_address == ("127.0.0.1", port)
        conn, proto = await accept_during(world, listener, port)
        assert proto.handshake is not None
        await world.close(conn)

    asyncio.run(main())


def test_concurrent_stops(world: World, registration, server_config) -> None:
    # sync: 9 threads stop at once; asyncio: 9 tasks await stop() at once.
    completions = []

    async def main() -> None:
        lst = world.Listener(registration, server_config, on_stop_complete=lambda: completions.append(1))
        try:
            for _ in range(3):  # stop/restart cycles, each stopped by many callers at once
                lst.start(ALPN, ("127.0.0.1", 0))
                await world.stop_concurrently(lst, 9)
                assert lst.state is pymsquic.ListenerState.SHUTDOWN_COMPLETE
        finally:
            await world.close(lst)

    asyncio.run(main())
    assert len(completions) == 3


def test_refused_by_hook_is_seen_by_the_client(registration, server_config) -> None:
    seen: list[pymsquic.NewConnectionInfo] = []

    def refuse(info: pymsquic.NewConnectionInfo) -> bool:
        seen.append(info)
        return False

    with sync.Listener(registration, server_config, on_new_connection=refuse) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        port = lst.local_address[1]
        proto = asyncio.run(aioquic_handshake(port))
        assert proto.handshake is None
        assert proto.terminated is not None and proto.terminated.error_code == QuicErrorCode.CONNECTION_REFUSED
        assert lst.stats().refused_hook == 1 and lst.stats().accepted == 0
    info = seen[0]
    assert info.server_name == "localhost" and info.client_alpns == (ALPN,)
    assert info.remote_address[0] == "127.0.0.1"
    assert info.local_address == ("127.0.0.1", port)


def test_hook_that_raises_refuses_and_logs(registration, server_config, caplog) -> None:
    def broken(info: pymsquic.NewConnectionInfo) -> bool:
        raise RuntimeError("hook bug")

    with sync.Listener(registration, server_config, on_new_connection=broken) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        with caplog.at_level(logging.ERROR, logger="pymsquic"):
            proto = asyncio.run(aioquic_handshake(lst.local_address[1]))
        assert proto.terminated.error_code == QuicErrorCode.CONNECTION_REFUSED
    assert any("hook bug" in (r.exc_text or "") or (r.exc_info and "hook bug" in str(r.exc_info[1]))
               for r in caplog.records)


def test_blocking_call_inside_a_hook_raises_instead_of_deadlocking(world: World, registration,
                                                                  server_config) -> None:
    errors: list[BaseException] = []

    def waits(lst: Any) -> list[Callable[[], object]]:
        """Calls that wait for the listener: for its msquic thread, in a hook.
        (asyncio: a loop run in the hook; bounded, so a deadlock fails instead of hanging.)"""
        if world is Blocking:
            return [lst.stop, lambda: lst.accept(timeout=1)]
        return [lambda: asyncio.run(asyncio.wait_for(lst.stop(), 5)),
                lambda: asyncio.run(asyncio.wait_for(lst.accept(), 5))]

    def hook(info: pymsquic.NewConnectionInfo) -> bool:
        for call in waits(lst):
            try:
                call()
            except pymsquic.HookContextError as exc:
                errors.append(exc)
            except RuntimeError as exc:
                # Execution mode "loop": the hook runs on the event loop's own
                # thread, where asyncio refuses a nested loop before we can.
                if pymsquic.execution_mode() != "loop" or "running event loop" not in str(exc):
                    raise
                errors.append(exc)
        return True

    lst = world.Listener(registration, server_config, on_new_connection=hook)

    async def main() -> None:
        try:
            lst.start(ALPN, ("127.0.0.1", 0))
            conn, _ = await accept_during(world, lst, lst.local_address[1])
            await world.close(conn)
        finally:
            await world.close(lst)

    asyncio.run(main())
    assert len(errors) == 2


def test_full_backlog_refuses_new_connections(world: World, registration, server_config) -> None:
    async def main() -> None:
        lst = world.Listener(registration, server_config, backlog=2)
        try:
            lst.start(ALPN, ("127.0.0.1", 0))
            port = lst.local_address[1]
            held = [asyncio.create_task(aioquic_handshake(port, hold=1.5)) for _ in range(2)]
            while lst.stats().queued < 2:
                await asyncio.sleep(0.01)
            third = await aioquic_handshake(port)
            accepted = [await world.accept(lst, 10) for _ in range(2)]
            await asyncio.gather(*held)
            assert third.handshake is None
            assert third.terminated is not None and third.terminated.error_code == QuicErrorCode.CONNECTION_REFUSED
            assert lst.stats().refused_backlog == 1 and len(accepted) == 2
            await asyncio.gather(*(world.close(conn) for conn in accepted))
        finally:
            await world.close(lst)

    asyncio.run(main())


def test_unaccepted_connections_are_shut_down_after_backlog_timeout(registration, server_config) -> None:
    with sync.Listener(registration, server_config, backlog_timeout=0.3) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        proto = asyncio.run(aioquic_handshake(lst.local_address[1], hold=2.0))
        assert proto.handshake is not None
        assert proto.terminated is not None  # the server closed it before the client did
        assert lst.stats().expired == 1 and lst.stats().queued == 0
        with pytest.raises(TimeoutError):
            lst.accept(timeout=0.1)


def test_closing_the_listener_shuts_down_queued_connections(world: World, registration, server_config) -> None:
    lst = world.Listener(registration, server_config)
    lst.start(ALPN, ("127.0.0.1", 0))

    async def main() -> RecordingProtocol:
        client = asyncio.create_task(aioquic_handshake(lst.local_address[1], hold=3.0))
        while lst.stats().queued == 0 or lst.stats().accepted == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        await world.close(lst)
        return await client

    proto = asyncio.run(main())
    assert proto.handshake is not None and proto.terminated is not None

    async def after_close() -> None:
        with pytest.raises(pymsquic.Finished):
            await world.accept(lst, 1)

    asyncio.run(after_close())
    with pytest.raises(pymsquic.Failed):
        lst.start(ALPN, ("127.0.0.1", 0))



def test_closing_the_registration_closes_its_listeners(world: World, server_credential) -> None:
    # Registration.close() closes what is still open, in either world (an
    # asyncio.Listener's close() is a coroutine: calling it closed nothing and
    # RegistrationClose then waited for ever).
    registration = pymsquic.Registration("listener-test")
    configuration = pymsquic.Configuration(registration, ALPN, server_credential)
    lst = world.Listener(registration, configuration)
    lst.start(ALPN, ("127.0.0.1", 0))
    closing = threading.Thread(target=registration.close, daemon=True)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "Registration.close() hangs on an open listener"
    assert lst.state is pymsquic.ListenerState.SHUTDOWN_COMPLETE and lst.local_address is None


# ---- addresses: IPv6 and every local address --------------------------------------


def listen_and_echo(world: World, registration: pymsquic.Registration, server_config: pymsquic.Configuration,
                    client_config: pymsquic.Configuration, address: Any,
                    hosts: tuple[str, ...]) -> tuple[Address | None, list[Address | None]]:
    """Start a listener of ``world`` on ``address``, echo a stream through a client
    of the same world on each of ``hosts``; the listener's address, and the
    server side's local address of each connection."""

    async def main() -> tuple[Address | None, list[Address | None]]:
        lst = world.Listener(registration, server_config)
        try:
            lst.start(ALPN, address)
            bound = lst.local_address
            assert bound is not None
            return bound, [await world.echo_through(lst, host, bound[1], client_config) for host in hosts]
        finally:
            await world.close(lst)

    return asyncio.run(main())


def test_listener_on_ipv6_loopback(world: World, registration, server_config, client_config) -> None:
    bound, seen = listen_and_echo(world, registration, server_config, client_config, ("::1", 0), ("::1",))
    assert bound is not None and bound[0] == "::1" and bound[1] > 0
    assert seen == [bound]


@pytest.mark.parametrize("address", [None, ("", 0), "*:0"], ids=["None", "empty-host", "star"])
def test_listener_on_every_local_address(world: World, registration, server_config, client_config,
                                         address: Any) -> None:
    # One listener, reached over IPv4 and IPv6 loopback; it reports its port.
    bound, seen = listen_and_echo(world, registration, server_config, client_config, address,
                                  ("127.0.0.1", "::1"))
    assert bound is not None and bound[0] == "" and bound[1] > 0
    assert seen == [("127.0.0.1", bound[1]), ("::1", bound[1])]


def _client_round_trip(host: str, port: int) -> Address | None:
    with sync.connect(host, port, alpn=ALPN, credential=pymsquic.Credential.client(verify=False)) as conn:
        stream = conn.open_stream()
        stream.write(host.encode(), fin=True)
        assert stream.read(timeout=10) == host.encode()
        return conn.remote_address


@pytest.mark.parametrize("host", [None, ""], ids=["None", "empty"])
def test_serve_on_every_local_address(world: World, host: str | None, server_credential) -> None:
    def echo_blocking(conn: sync.Connection) -> None:
        for stream in conn:
            stream.write(stream.read(timeout=10), fin=True)

    async def echo_async(conn: pymsquic.asyncio.Connection) -> None:
        async for stream in conn:
            stream.write(await stream.read(), fin=True)

    async def clients(addresses: list[Address]) -> list[Address | None]:
        assert len(addresses) == 1 and addresses[0][0] == "" and addresses[0][1] > 0
        return [await Blocking.call(_client_round_trip, peer, addresses[0][1]) for peer in ("127.0.0.1", "::1")]

    async def main() -> tuple[list[Address], list[Address | None]]:
        if world is Async:
            async with pymsquic.asyncio.serve(echo_async, host, 0, alpn=ALPN, credential=server_credential) as aserver:
                return aserver.addresses, await clients(aserver.addresses)
        with sync.serve(echo_blocking, host, 0, alpn=ALPN, credential=server_credential) as server:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                return server.addresses, await clients(server.addresses)
            finally:
                await Blocking.call(server.shutdown, 10)

    addresses, remotes = asyncio.run(main())
    port = addresses[0][1]
    assert remotes == [("127.0.0.1", port), ("::1", port)]


# ---- stats and logging ---------------------------------------------------------


def test_stats_is_a_method_counting_what_became_of_connections(world: World, world_listener: AnyListener) -> None:
    listener = world_listener
    port = listener.local_address[1]
    assert listener.stats() == pymsquic.ListenerStats(accepted=0, refused_backlog=0, refused_hook=0,
                                                      refused_other=0, expired=0, queued=0)

    async def main() -> None:
        client = asyncio.create_task(aioquic_handshake(port, hold=0.5))
        while listener.stats().queued == 0:  # completed, not yet accepted
            await asyncio.sleep(0.01)
        assert listener.stats() == pymsquic.ListenerStats(accepted=1, refused_backlog=0, refused_hook=0,
                                                          refused_other=0, expired=0, queued=1)
        conn = await world.accept(listener, 10)
        assert listener.stats().queued == 0 and listener.stats().accepted == 1
        await client
        await world.close(conn)

    asyncio.run(main())
    stats = listener.stats()
    assert isinstance(stats, pymsquic.ListenerStats)
    assert (stats.accepted, stats.queued, stats.handshakes, stats.failed) == (1, 0, 0, 0)


def _refusal_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "pymsquic" and r.levelno == logging.DEBUG and "refused" in r.getMessage()]


def test_refusals_are_logged_at_debug(world: World, registration, server_config,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pymsquic")

    async def refused(port: int) -> None:
        proto = await aioquic_handshake(port)
        assert proto.terminated is not None and proto.terminated.error_code == QuicErrorCode.CONNECTION_REFUSED

    async def main() -> None:
        lst = world.Listener(registration, server_config, on_new_connection=lambda info: False)
        try:
            lst.start(ALPN, ("127.0.0.1", 0))
            port = lst.local_address[1]
            await refused(port)
            # msquic's thread refused it without Python; it is reported when Python next looks.
            assert _refusal_records(caplog) == []
            with pytest.raises(TIMEOUTS):
                await world.accept(lst, 0.1)
            [record] = _refusal_records(caplog)
            assert "refused 1 connection(s)" in record.getMessage() and "refused_hook=1" in record.getMessage()
            with pytest.raises(TIMEOUTS):
                await world.accept(lst, 0.1)
            assert len(_refusal_records(caplog)) == 1  # each refusal is reported once
            await refused(port)
            await world.stop(lst)  # the stop reports what is new too
            _, second = _refusal_records(caplog)
            assert "refused 1 connection(s)" in second.getMessage() and "refused_hook=2" in second.getMessage()
        finally:
            await world.close(lst)

    asyncio.run(main())


# ---- bad input ---------------------------------------------------------------


@pytest.mark.parametrize("alpn", ["", b"", "a" * 300, [], ["ok", ""]])
def test_bad_alpn_values(registration, server_credential, alpn) -> None:
    with pytest.raises(ValueError, match="ALPN|alpn"):
        pymsquic.Configuration(registration, alpn, server_credential)


@pytest.mark.parametrize("alpn", [None, 42, [42], {"a": 1}])
def test_bad_alpn_types(registration, server_credential, alpn) -> None:
    with pytest.raises(TypeError):
        pymsquic.Configuration(registration, alpn, server_credential)


def test_bad_alpn_on_start(registration, server_config) -> None:
    with sync.Listener(registration, server_config) as lst:
        with pytest.raises(ValueError):
            lst.start("x" * 300, ("127.0.0.1", 0))
        with pytest.raises(ValueError):
            lst.start("", ("127.0.0.1", 0))
        assert lst.state is pymsquic.ListenerState.OPEN


@pytest.mark.parametrize("address, error", [
    ("no-port", ValueError),
    ("127.0.0.1:http", ValueError),
    ("127.0.0.1:70000", ValueError),
    (("127.0.0.1", 70000), ValueError),
    (("127.0.0.1", -1), ValueError),
    (("127.0.0.1", "80"), TypeError),
    ((b"127.0.0.1", 80), TypeError),
    (("127.0.0.1",), TypeError),
    (8080, TypeError),
])
def test_unparsable_addresses(registration, server_config, address, error) -> None:
    with sync.Listener(registration, server_config) as lst, pytest.raises(error):
        lst.start(ALPN, address)


def test_port_already_in_use(registration, server_config, listener) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        with sync.Listener(registration, server_config) as lst:
            with pytest.raises(pymsquic.Failed) as info:
                lst.start(ALPN, udp.getsockname())
            assert info.value.status_name == "ADDRESS_IN_USE"
            assert "ADDRESS_IN_USE" in str(info.value)
    # A second listener for the same ALPN on the same port: msquic says ALPN_IN_USE.
    with sync.Listener(registration, server_config) as lst:
        with pytest.raises(pymsquic.Failed) as info:
            lst.start(ALPN, listener.local_address)
        assert info.value.status_name == "ALPN_IN_USE"


# Run in a network namespace of its own (unshare -n, as root): there the ephemeral port range
# can be narrowed to one or two ports without touching the machine's.
_PORT_ZERO_CHILD = """
import socket, sys
import pymsquic
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("40000 40001")
foreign = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # another program's SO_REUSEPORT socket
foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
foreign.bind(("127.0.0.1", 0))
taken = foreign.getsockname()[1]
with pymsquic.Registration("port-zero") as reg:
    config = pymsquic.Configuration(reg, "a", pymsquic.Credential.self_signed(("127.0.0.1",)))
    for host in ["127.0.0.1", "", "127.0.0.1", "", "127.0.0.1", ""]:
        with pymsquic.sync.Listener(reg, config) as lst:
            lst.start("a", (host, 0))
            port = lst.local_address[1]
            assert port != taken, f"listener on {host!r} port 0 shares port {taken} with another socket"
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # now both ports of the range are held
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 40000 + 40001 - taken))
    with pymsquic.sync.Listener(reg, config) as lst:
        try:
            lst.start("a", ("127.0.0.1", 0))
        except pymsquic.Failed as exc:
            assert exc.status_name == "ADDRESS_IN_USE", exc
        else:
            raise AssertionError(f"listener shares port {lst.local_address[1]} with another socket")
print("ok")
"""


def test_port_zero_never_shares_a_port_with_another_socket() -> None:
    # msquic binds listeners with SO_REUSEPORT, and Linux gives such a port-0 bind a port that
    # another SO_REUSEPORT socket of the same user holds: two listeners on port 0 then split each
    # other's datagrams (seen as an AlpnMismatch while several test runs shared the machine).
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -n (root) for a network namespace with a narrow port range")
    repo = str(Path(pymsquic.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", _PORT_ZERO_CHILD], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_missing_and_broken_certificate_files(registration, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="certfile"):
        pymsquic.Credential.from_files(tmp_path / "missing.pem", tmp_path / "missing.key")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(pymsquic.QuicError) as info:
        pymsquic.Configuration(registration, ALPN, pymsquic.Credential.from_files(garbage, garbage))
    assert info.value.status_name is not None
    with pytest.raises(pymsquic.QuicError):
        pymsquic.Configuration(registration, ALPN, pymsquic.Credential.from_pkcs12(b"\x30\x03garbage"))


@pytest.mark.parametrize("listener_class", [sync.Listener, pymsquic.asyncio.Listener], ids=["sync", "asyncio"])
def test_wrong_types_and_values(registration, server_config, client_config, listener_class) -> None:
    with pytest.raises(TypeError):
        listener_class(registration, "configuration")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        listener_class("registration", server_config)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        listener_class(registration, client_config)
    with pytest.raises(ValueError):
        listener_class(registration, server_config, backlog=0)
    with pytest.raises(TypeError):
        listener_class(registration, server_config, on_new_connection="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pymsquic.Registration(profile="fastest")
    with pytest.raises(TypeError):
        pymsquic.Settings(idle_timeout_ms="1000")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pymsquic.Settings(peer_bidi_stream_count=70000)
    with pytest.raises(TypeError):
        pymsquic.Settings(datagram_receive_enabled=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pymsquic.Configuration(registration, ALPN, "credential")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pymsquic.Credential.from_pkcs12("text")  # type: ignore[arg-type]
