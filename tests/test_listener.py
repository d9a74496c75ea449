"""Listener against real msquic, with aioquic (PyPI) as the independent client."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest
from aioquic.quic.packet import QuicErrorCode

import pymsquic
from conftest import ALPN, aioquic_handshake


def test_msquic_version_is_the_built_one() -> None:
    assert pymsquic.msquic_version().startswith("2.5.")


def test_one_handshake_with_aioquic(listener: pymsquic.Listener) -> None:
    host, port = listener.local_address
    assert host == "127.0.0.1" and port > 0
    assert listener.state is pymsquic.ListenerState.START_COMPLETE

    async def main() -> tuple[pymsquic.Connection, object]:
        client = asyncio.create_task(aioquic_handshake(port, hold=0.2))
        conn = await listener.accept_async(timeout=10)
        return conn, await client

    conn, proto = asyncio.run(main())
    with conn:
        assert proto.handshake is not None and proto.handshake.alpn_protocol == ALPN
        assert conn.alpn == ALPN
        assert conn.server_name == "localhost"
        assert conn.client_alpns == (ALPN,)
        assert conn.local_address == ("127.0.0.1", port)
        assert conn.remote_address is not None and conn.remote_address[0] == "127.0.0.1"
        assert listener.stats.accepted == 1


def test_fifty_concurrent_aioquic_clients_through_async_for(listener: pymsquic.Listener) -> None:
    port = listener.local_address[1]
    count = 50

    async def main() -> tuple[list[pymsquic.Connection], list[object]]:
        accepted: list[pymsquic.Connection] = []

        async def acceptor() -> None:
            async for conn in listener:
                accepted.append(conn)
                if len(accepted) == count:
                    return

        clients = asyncio.gather(*(aioquic_handshake(port, hold=1.0) for _ in range(count)))
        protos, _ = await asyncio.wait_for(asyncio.gather(clients, acceptor()), 60)
        return accepted, protos

    accepted, protos = asyncio.run(main())
    assert all(p.handshake is not None for p in protos)
    client_ports = {p._transport.get_extra_info("sockname")[1] for p in protos}
    assert {c.remote_address[1] for c in accepted} == client_ports
    for conn in accepted:
        conn.close()


def test_blocking_accept_in_a_thread_while_the_loop_runs(listener: pymsquic.Listener) -> None:
    port = listener.local_address[1]

    async def main() -> tuple[pymsquic.Connection, object]:
        loop = asyncio.get_running_loop()
        accepted = loop.run_in_executor(None, listener.accept, 10.0)
        await asyncio.sleep(0.05)  # the thread is now blocked in C with the GIL released
        proto = await aioquic_handshake(port, hold=0.2)
        return await accepted, proto

    conn, proto = asyncio.run(main())
    with conn:
        assert proto.handshake is not None
        assert conn.remote_address[1] == proto._transport.get_extra_info("sockname")[1]


def test_blocking_iteration_ends_when_stopped(listener: pymsquic.Listener) -> None:
    threading.Timer(0.3, listener.stop).start()
    assert list(listener) == []


def test_accept_timeout_blocking_and_async(listener: pymsquic.Listener) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        listener.accept(timeout=0.2)
    assert 0.15 <= time.monotonic() - start < 2

    async def main() -> None:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await listener.accept_async(timeout=0.2)
        assert 0.15 <= time.monotonic() - start < 2

    asyncio.run(main())


def test_cancelled_accept_loses_no_connection(listener: pymsquic.Listener) -> None:
    port = listener.local_address[1]

    async def main() -> pymsquic.Connection:
        waiting = asyncio.create_task(listener.accept_async())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        client = asyncio.create_task(aioquic_handshake(port, hold=0.3))
        await asyncio.sleep(0.2)  # the connection arrives while nobody is accepting
        conn = await listener.accept_async(timeout=10)
        await client
        return conn

    asyncio.run(main()).close()


def test_wakeups_reach_a_second_event_loop(listener: pymsquic.Listener) -> None:
    port = listener.local_address[1]

    async def first_loop() -> None:
        with pytest.raises(TimeoutError):
            await listener.accept_async(timeout=0.05)

    asyncio.run(first_loop())
    listener.stop()  # a change reported to the first loop's waker, which nobody drains now
    listener.start(ALPN, ("127.0.0.1", port))

    async def second_loop() -> float:
        client = asyncio.create_task(aioquic_handshake(port, hold=0.2))
        start = time.monotonic()
        conn = await listener.accept_async(timeout=8)
        elapsed = time.monotonic() - start
        await client
        conn.close()
        return elapsed

    # Woken by the second loop's waker, not rescued by the 8 s timeout's final check.
    assert asyncio.run(second_loop()) < 4


def test_not_started_already_started_finished(registration, server_config) -> None:
    with pymsquic.Listener(registration, server_config) as lst:
        assert lst.state is pymsquic.ListenerState.OPEN
        with pytest.raises(pymsquic.NotStarted):
            lst.accept(timeout=1)
        lst.start(ALPN, "127.0.0.1:0")
        with pytest.raises(pymsquic.AlreadyStarted):
            lst.start(ALPN, "127.0.0.1:0")
        assert isinstance(pymsquic.AlreadyStarted("x"), pymsquic.ListenError.AlreadyStarted)
        lst.stop()
        assert lst.state is pymsquic.ListenerState.SHUTDOWN_COMPLETE
        with pytest.raises(pymsquic.Finished):
            lst.accept(timeout=1)

        async def after_stop() -> list[pymsquic.Connection]:
            with pytest.raises(pymsquic.Finished):
                await lst.accept_async(timeout=1)
            return [conn async for conn in lst]

        assert asyncio.run(after_stop()) == []


def test_queued_connections_can_be_accepted_after_stop(listener: pymsquic.Listener) -> None:
    port = listener.local_address[1]

    async def main() -> pymsquic.Connection:
        client = asyncio.create_task(aioquic_handshake(port, hold=0.5))
        while listener.stats.queued == 0 or listener.stats.accepted == 0:
            await asyncio.sleep(0.01)
        await listener.stop_async()
        conn = await listener.accept_async(timeout=10)  # queued before the stop
        with pytest.raises(pymsquic.Finished):
            await listener.accept_async(timeout=10)
        await client
        return conn

    asyncio.run(main()).close()


def test_stop_then_restart_on_the_same_port(listener: pymsquic.Listener) -> None:
    port = listener.local_address[1]
    listener.stop()
    listener.stop()  # again: nothing to do
    assert listener.local_address is None
    listener.start(ALPN, ("127.0.0.1", port))
    assert listener.local_address == ("127.0.0.1", port)

    async def main() -> pymsquic.Connection:
        client = asyncio.create_task(aioquic_handshake(port, hold=0.2))
        conn = await listener.accept_async(timeout=10)
        assert (await client).handshake is not None
        return conn

    asyncio.run(main()).close()


def test_concurrent_stops_from_threads_and_asyncio(registration, server_config) -> None:
    completions = []
    lst = pymsquic.Listener(registration, server_config, on_stop_complete=lambda: completions.append(1))
    with lst:
        for _ in range(3):  # stop/restart cycles, each stopped by many callers at once
            lst.start(ALPN, ("127.0.0.1", 0))
            barrier = threading.Barrier(9)
            errors: list[BaseException] = []

            def stopper() -> None:
                barrier.wait()
                try:
                    lst.stop(timeout=10)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=stopper) for _ in range(8)]
            for t in threads:
                t.start()

            async def async_stopper() -> None:
                await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
                await lst.stop_async(timeout=10)

            asyncio.run(async_stopper())
            for t in threads:
                t.join(15)
                assert not t.is_alive()
            assert errors == []
            assert lst.state is pymsquic.ListenerState.SHUTDOWN_COMPLETE
    assert len(completions) == 3


def test_refused_by_hook_is_seen_by_the_client(registration, server_config) -> None:
    seen: list[pymsquic.NewConnectionInfo] = []

    def refuse(info: pymsquic.NewConnectionInfo) -> bool:
        seen.append(info)
        return False

    with pymsquic.Listener(registration, server_config, on_new_connection=refuse) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        port = lst.local_address[1]
        proto = asyncio.run(aioquic_handshake(port))
        assert proto.handshake is None
        assert proto.terminated is not None and proto.terminated.error_code == QuicErrorCode.CONNECTION_REFUSED
        assert lst.stats.refused_hook == 1 and lst.stats.accepted == 0
    info = seen[0]
    assert info.server_name == "localhost" and info.client_alpns == (ALPN,)
    assert info.remote_address[0] == "127.0.0.1"
    assert info.local_address == ("127.0.0.1", port)


def test_hook_that_raises_refuses_and_logs(registration, server_config, caplog) -> None:
    def broken(info: pymsquic.NewConnectionInfo) -> bool:
        raise RuntimeError("hook bug")

    with pymsquic.Listener(registration, server_config, on_new_connection=broken) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        with caplog.at_level(logging.ERROR, logger="pymsquic"):
            proto = asyncio.run(aioquic_handshake(lst.local_address[1]))
        assert proto.terminated.error_code == QuicErrorCode.CONNECTION_REFUSED
    assert any("hook bug" in (r.exc_text or "") or (r.exc_info and "hook bug" in str(r.exc_info[1]))
               for r in caplog.records)


def test_blocking_call_inside_a_hook_raises_instead_of_deadlocking(registration, server_config) -> None:
    errors: list[BaseException] = []

    def hook(info: pymsquic.NewConnectionInfo) -> bool:
        try:
            lst.stop()
        except pymsquic.HookContextError as exc:
            errors.append(exc)
        try:
            lst.accept(timeout=1)
        except pymsquic.HookContextError as exc:
            errors.append(exc)
        return True

    with pymsquic.Listener(registration, server_config, on_new_connection=hook) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))

        async def main() -> pymsquic.Connection:
            client = asyncio.create_task(aioquic_handshake(lst.local_address[1], hold=0.2))
            conn = await lst.accept_async(timeout=10)
            await client
            return conn

        asyncio.run(main()).close()
    assert len(errors) == 2


def test_full_backlog_refuses_new_connections(registration, server_config) -> None:
    with pymsquic.Listener(registration, server_config, backlog=2) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        port = lst.local_address[1]

        async def main() -> tuple[object, list[pymsquic.Connection]]:
            held = [asyncio.create_task(aioquic_handshake(port, hold=1.5)) for _ in range(2)]
            while lst.stats.queued < 2:
                await asyncio.sleep(0.01)
            third = await aioquic_handshake(port)
            accepted = [await lst.accept_async(timeout=10) for _ in range(2)]
            await asyncio.gather(*held)
            return third, accepted

        third, accepted = asyncio.run(main())
        assert third.handshake is None
        assert third.terminated is not None and third.terminated.error_code == QuicErrorCode.CONNECTION_REFUSED
        assert lst.stats.refused_backlog == 1 and len(accepted) == 2
        for conn in accepted:
            conn.close()


def test_unaccepted_connections_are_shut_down_after_backlog_timeout(registration, server_config) -> None:
    with pymsquic.Listener(registration, server_config, backlog_timeout=0.3) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        proto = asyncio.run(aioquic_handshake(lst.local_address[1], hold=2.0))
        assert proto.handshake is not None
        assert proto.terminated is not None  # the server closed it before the client did
        assert lst.stats.expired == 1 and lst.stats.queued == 0
        with pytest.raises(TimeoutError):
            lst.accept(timeout=0.1)


def test_closing_the_listener_shuts_down_queued_connections(registration, server_config) -> None:
    lst = pymsquic.Listener(registration, server_config)
    lst.start(ALPN, ("127.0.0.1", 0))

    async def main() -> object:
        client = asyncio.create_task(aioquic_handshake(lst.local_address[1], hold=3.0))
        while lst.stats.queued == 0 or lst.stats.accepted == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        lst.close()
        return await client

    proto = asyncio.run(main())
    assert proto.handshake is not None and proto.terminated is not None
    with pytest.raises(pymsquic.Finished):
        lst.accept(timeout=1)
    with pytest.raises(pymsquic.Failed):
        lst.start(ALPN, ("127.0.0.1", 0))


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
    with pymsquic.Listener(registration, server_config) as lst:
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
    with pymsquic.Listener(registration, server_config) as lst:
        with pytest.raises(error):
            lst.start(ALPN, address)


def test_port_already_in_use(registration, server_config, listener) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        with pymsquic.Listener(registration, server_config) as lst:
            with pytest.raises(pymsquic.Failed) as info:
                lst.start(ALPN, udp.getsockname())
            assert info.value.status_name == "ADDRESS_IN_USE"
            assert "ADDRESS_IN_USE" in str(info.value)
    # A second listener for the same ALPN on the same port: msquic says ALPN_IN_USE.
    with pymsquic.Listener(registration, server_config) as lst:
        with pytest.raises(pymsquic.Failed) as info:
            lst.start(ALPN, listener.local_address)
        assert info.value.status_name == "ALPN_IN_USE"


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


def test_wrong_types_and_values(registration, server_config, client_config) -> None:
    with pytest.raises(TypeError):
        pymsquic.Listener(registration, "configuration")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pymsquic.Listener("registration", server_config)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pymsquic.Listener(registration, client_config)
    with pytest.raises(ValueError):
        pymsquic.Listener(registration, server_config, backlog=0)
    with pytest.raises(TypeError):
        pymsquic.Listener(registration, server_config, on_new_connection="yes")  # type: ignore[arg-type]
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
