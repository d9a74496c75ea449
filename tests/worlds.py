"""One test body for both worlds: pymsquic.asyncio and pymsquic.sync behind the same awaitable calls.

A test written as ``async def body()`` and run by ``w.run(body())`` runs
against either world: ``await w.wait(stream.read, -1)`` is ``await
stream.read(-1)`` under asyncio and ``stream.read(-1, timeout=...)`` in the
sync world. Everything that does not wait (write, finish, shutdown, stats...)
is called directly. The sync world runs the coroutine without an event loop
(pymsquic.sync refuses to block a thread that runs one): nothing in it ever
suspends, so a single ``send(None)`` runs it to the end, and every wait in it
is a real blocking call of pymsquic.sync. A server's handler is written once
in the same way (the sync world runs it so in its handler thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

import pymsquic

from conftest import ALPN

if TYPE_CHECKING:
    from typing_extensions import Self

T = TypeVar("T")

#: Seconds any single wait of a test may take before it counts as a hang.
WAIT = 20.0


def client_credential() -> pymsquic.Credential:
    return pymsquic.Credential.client(verify=False)


class World:
    """How a test body waits, connects and serves in one world."""

    name: str

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a test body (or a handler) to the end in this world."""
        raise NotImplementedError

    async def wait(self, method: Callable[..., Any], *args: Any, timeout: float | None = WAIT) -> Any:
        """Call a waiting method of this world with ``args``, bounded by ``timeout``
        (builtin TimeoutError after it, whatever the Python version)."""
        raise NotImplementedError

    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        """Call a method that is a coroutine in one world and blocking in the other
        (``Connection.close()``)."""
        raise NotImplementedError

    async def connect(self, port: int, registration: pymsquic.Registration, **kwargs: Any) -> Any:
        """A connected client of this world to 127.0.0.1:``port``."""
        raise NotImplementedError

    async def serve(self, handler: Handler, registration: pymsquic.Registration,
                    credential: pymsquic.Credential, **kwargs: Any) -> ServerHandle:
        """A serving server of this world on 127.0.0.1 running ``await handler(w, conn)``;
        ``kwargs``: any other keyword of the world's serve() (``settings=``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


#: A handler written once: ``await handler(world, connection)``.
Handler = Callable[[World, Any], Coroutine[Any, Any, None]]


class ServerHandle:
    """A world's server, closed the same way in both: ``close(grace)`` starts
    closing without waiting, ``await wait_closed()`` waits for the end."""

    def __init__(self, world: World, server: Any) -> None:
        self.world = world
        self.server = server
        self.port: int = server.addresses[0][1]

    def close(self, grace: float = 0.0) -> None:
        raise NotImplementedError

    async def wait_closed(self, timeout: float = WAIT) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    async def stopped(self) -> None:
        """Wait until the listener is stopped (as close() does first)."""
        await self.world.wait(self.server.listener.stop)


class AsyncioWorld(World):
    name = "asyncio"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(coro)

    async def wait(self, method: Callable[..., Any], *args: Any, timeout: float | None = WAIT) -> Any:
        try:
            return await asyncio.wait_for(method(*args), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
            raise TimeoutError(f"{method.__qualname__} timed out after {timeout} s") from None

    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        return await method(*args)

    async def connect(self, port: int, registration: pymsquic.Registration, **kwargs: Any) -> Any:
        return await pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                              registration=registration, **kwargs)

    async def serve(self, handler: Handler, registration: pymsquic.Registration,
                    credential: pymsquic.Credential, **kwargs: Any) -> ServerHandle:
        server = await pymsquic.asyncio.serve(lambda conn: handler(self, conn), "127.0.0.1", 0, alpn=ALPN,
                                              credential=credential, registration=registration, **kwargs)
        return AsyncioServerHandle(self, server)


class AsyncioServerHandle(ServerHandle):
    def close(self, grace: float = 0.0) -> None:
        self.server.close(grace)

    async def wait_closed(self, timeout: float = WAIT) -> None:
        await self.world.wait(self.server.wait_closed, timeout=timeout)


class SyncWorld(World):
    name = "sync"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        coro.close()
        raise RuntimeError("a sync-world body awaited something that suspends (asyncio API?)")

    async def wait(self, method: Callable[..., Any], *args: Any, timeout: float | None = WAIT) -> Any:
        return method(*args, timeout=timeout)

    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        return method(*args)

    async def connect(self, port: int, registration: pymsquic.Registration, **kwargs: Any) -> Any:
        return pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                     registration=registration, **kwargs)

    async def serve(self, handler: Handler, registration: pymsquic.Registration,
                    credential: pymsquic.Credential, **kwargs: Any) -> ServerHandle:
        server = pymsquic.sync.serve(lambda conn: self.run(handler(self, conn)), "127.0.0.1", 0, alpn=ALPN,
                                     credential=credential, registration=registration, **kwargs)
        return SyncServerHandle(self, server)


class SyncServerHandle(ServerHandle):
    """serve_forever() in a thread; close() in another (it blocks), its outcome
    reported by wait_closed()."""

    def __init__(self, world: World, server: Any) -> None:
        super().__init__(world, server)
        self._serving = threading.Thread(target=server.serve_forever, name="test-serve-forever")
        self._serving.start()
        self._closing: threading.Thread | None = None
        self._close_error: BaseException | None = None

    def close(self, grace: float = 0.0) -> None:
        if self._closing is None:
            self._closing = threading.Thread(target=self._close, args=(grace,), name="test-server-close")
            self._closing.start()

    def _close(self, grace: float) -> None:
        try:
            self.server.close(grace=grace, timeout=grace + WAIT)
        except BaseException as exc:  # noqa: BLE001  # handed to wait_closed()
            self._close_error = exc

    async def wait_closed(self, timeout: float = WAIT) -> None:
        assert self._closing is not None, "wait_closed() before close()"
        self._closing.join(timeout)
        if self._closing.is_alive():
            raise TimeoutError(f"sync Server.close() still runs after {timeout} s")
        self._serving.join(timeout)
        assert not self._serving.is_alive(), "serve_forever() did not return after close()"
        if self._close_error is not None:
            raise self._close_error


WORLDS = [AsyncioWorld(), SyncWorld()]

#: ``@worlds`` runs a test once per world, with ``w`` as its World.
worlds = pytest.mark.parametrize("w", WORLDS, ids=str)


async def echo_streams(w: World, conn: Any) -> None:
    """A handler: each stream read to FIN and answered with the same bytes and FIN."""
    while True:
        try:
            stream = await w.wait(conn.accept_stream)
        except pymsquic.ConnectionClosed:
            return
        stream.write(await w.wait(stream.read, -1), fin=True)


async def round_trip(w: World, conn: Any, data: bytes) -> bytes:
    """Send ``data`` on a new stream with FIN; what comes back until the peer's FIN."""
    stream = conn.open_stream()
    stream.write(data, fin=True)
    return await w.wait(stream.read, -1)  # type: ignore[no-any-return]
