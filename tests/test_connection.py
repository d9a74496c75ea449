"""pymsquic's own client against the pymsquic listener: handshakes, failures, shutdown."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable

import pytest

import pymsquic

from conftest import ALPN


def test_blocking_client_to_listener(listener, client_config) -> None:
    port = listener.local_address[1]
    start = time.perf_counter()
    with pymsquic.sync.connect("127.0.0.1", port, configuration=client_config, server_name="localhost",
                               open_timeout=10) as client:
        elapsed = time.perf_counter() - start
        server = listener.accept(timeout=10)
        assert client.is_connected and server.is_connected
        assert client.alpn == server.alpn == ALPN
        assert client.remote_address == ("127.0.0.1", port)
        assert server.remote_address == client.local_address
        assert server.server_name == "localhost"
        assert elapsed < 5

        client.shutdown(42)
        server.wait_closed(timeout=10)
        reason = server.close_reason
        assert reason is not None and reason.by_peer and reason.error_code == 42
        client.wait_closed(timeout=10)
        assert client.is_closed and client.close_reason.by_app
        server.close()


def test_async_client_to_listener(async_listener, client_config) -> None:
    port = async_listener.local_address[1]

    async def main() -> None:
        client_task = asyncio.ensure_future(pymsquic.asyncio.connect("localhost", port, configuration=client_config,
                                                                     open_timeout=10))
        server = await asyncio.wait_for(async_listener.accept(), 10)
        async with await client_task as client:
            assert client.is_connected and client.alpn == ALPN
            assert server.remote_address == client.local_address
            server.shutdown(7)
            await asyncio.wait_for(client.wait_closed(), 10)
            assert client.close_reason.by_peer and client.close_reason.error_code == 7
        await asyncio.wait_for(server.wait_closed(), 10)
        await server.close()

    asyncio.run(main())


def test_connect_refused_by_hook(registration, server_config, client_config) -> None:
    with pymsquic.sync.Listener(registration, server_config, on_new_connection=lambda info: False) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        with pytest.raises(pymsquic.ConnectionClosed) as info:
            pymsquic.sync.connect("127.0.0.1", lst.local_address[1], configuration=client_config, open_timeout=10)
    assert info.value.by_transport and info.value.status_name == "CONNECTION_REFUSED"


def test_connect_with_unknown_alpn_fails(registration, listener) -> None:
    other = pymsquic.Configuration(registration, "not-served", pymsquic.Credential.client(verify=False))
    with pytest.raises(pymsquic.ConnectionClosed) as info:
        pymsquic.sync.connect("127.0.0.1", listener.local_address[1], configuration=other, open_timeout=10)
    assert info.value.status_name == "ALPN_NEG_FAILURE"


def test_connect_verifies_certificates(registration, listener, server_credential, tmp_path) -> None:
    port = listener.local_address[1]
    strict = pymsquic.Configuration(registration, ALPN, pymsquic.Credential.client())
    with pytest.raises(pymsquic.ConnectionClosed) as info:
        pymsquic.sync.connect("localhost", port, configuration=strict, open_timeout=10)
    assert info.value.by_transport

    ca = tmp_path / "ca.pem"
    ca.write_bytes(server_credential.certificate_pem)
    trusting = pymsquic.Configuration(registration, ALPN, pymsquic.Credential.client(ca_file=ca))
    with pymsquic.sync.connect("localhost", port, configuration=trusting, open_timeout=10) as conn:
        assert conn.is_connected
        listener.accept(timeout=10).close()


def test_connect_times_out_against_a_silent_port(registration, client_config) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            pymsquic.sync.connect("127.0.0.1", silent.getsockname()[1], configuration=client_config,
                                  open_timeout=0.5)
        assert time.monotonic() - start < 3

        async def main() -> None:
            with pytest.raises(asyncio.TimeoutError):  # asyncio's class: not the builtin on 3.10
                await pymsquic.asyncio.connect("127.0.0.1", silent.getsockname()[1], configuration=client_config,
                                               open_timeout=0.5)

        asyncio.run(main())


def _connect_now(connect: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call either world's connect() and, for asyncio's, await it."""
    pending = connect(*args, **kwargs)
    if inspect.isawaitable(pending):
        async def wait() -> None:
            await pending
        asyncio.run(wait())


@pytest.mark.parametrize("connect", [pymsquic.sync.connect, pymsquic.asyncio.connect], ids=["sync", "asyncio"])
def test_bad_client_arguments(connect, registration, server_config, client_config) -> None:
    with pytest.raises(ValueError):
        _connect_now(connect, "127.0.0.1", 4433, configuration=server_config)
    with pytest.raises(ValueError):
        _connect_now(connect, "127.0.0.1", 0, configuration=client_config)
    with pytest.raises(TypeError):
        _connect_now(connect, "127.0.0.1", "4433", configuration=client_config)
    with pytest.raises(TypeError):
        _connect_now(connect, None, 4433, configuration=client_config)


def test_shutdown_argument_checks(listener, client_config) -> None:
    with pymsquic.sync.connect("127.0.0.1", listener.local_address[1], configuration=client_config,
                               open_timeout=10) as conn:
        with pytest.raises(ValueError):
            conn.shutdown(-1)
        with pytest.raises(ValueError):
            conn.shutdown(2**62)
        with pytest.raises(TypeError):
            conn.shutdown("0")  # type: ignore[arg-type]
        listener.accept(timeout=10).close()


@pytest.mark.parametrize("world", ["sync", "asyncio"])
def test_registration_close_releases_everything_left_open(world, server_credential) -> None:
    reg = pymsquic.Registration("left-open")
    server_cfg = pymsquic.Configuration(reg, ALPN, server_credential)
    client_cfg = pymsquic.Configuration(reg, ALPN, pymsquic.Credential.client(verify=False))
    if world == "sync":
        lst = pymsquic.sync.Listener(reg, server_cfg)
        lst.start(ALPN, ("127.0.0.1", 0))
        client = pymsquic.sync.connect("127.0.0.1", lst.local_address[1], configuration=client_cfg, open_timeout=10)
        server = lst.accept(timeout=10)
    else:
        lst = pymsquic.asyncio.Listener(reg, server_cfg)  # its close() is a coroutine: not what reg.close() calls
        lst.start(ALPN, ("127.0.0.1", 0))

        async def open_both() -> tuple[pymsquic.asyncio.Connection, pymsquic.asyncio.Connection]:
            client = await pymsquic.asyncio.connect("127.0.0.1", lst.local_address[1], configuration=client_cfg,
                                                    open_timeout=10)
            return client, await asyncio.wait_for(lst.accept(), 10)

        client, server = asyncio.run(open_both())
    start = time.monotonic()
    reg.close()
    assert time.monotonic() - start < 5
    assert client.is_closed and server.is_closed
    assert lst.state is pymsquic.ListenerState.SHUTDOWN_COMPLETE
    with pytest.raises(pymsquic.QuicError):
        pymsquic.Configuration(reg, ALPN, server_credential)
