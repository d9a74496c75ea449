"""High-level asyncio entry points: :func:`serve` and :func:`connect`.

Shaped like ``asyncio.start_server``/``open_connection``: a handler coroutine
runs as a task per connection; ``async with`` closes everything gracefully,
waiting (up to ``linger`` seconds) for streams to finish sending first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Generator

from .addresses import Address
from .configuration import AlpnLike, Configuration, Credential, Settings, encode_alpns
from .connection import Connection, exit_error_code
from .errors import Finished
from .listener import Listener
from .registration import Registration, default_registration

logger = logging.getLogger("pymsquic")

#: Settings for serve()/connect() when none are given: unlike msquic's defaults,
#: the peer may open streams and send datagrams.
DEFAULT_SETTINGS = Settings(peer_bidi_stream_count=128, peer_unidi_stream_count=128,
                            datagram_receive_enabled=True)

Handler = Callable[[Connection], Awaitable[Any]]


_CACHED_CONFIGURATIONS = 32


def make_configuration(registration: Registration | None, alpn: AlpnLike, credential: Credential,
                       settings: Settings | None) -> Configuration:
    """A configuration for these arguments, reused across calls: loading a
    credential (a CA store above all) costs milliseconds per connection otherwise."""
    registration = registration or default_registration()
    settings = DEFAULT_SETTINGS if settings is None else settings
    key = (encode_alpns(alpn), credential, settings)
    with registration._lock:
        cache = registration._configuration_cache
        configuration = cache.pop(key, None)
        if configuration is None or configuration.closed:
            configuration = Configuration(registration, alpn, credential, settings)
        cache[key] = configuration  # most recently used last
        while len(cache) > _CACHED_CONFIGURATIONS:
            cache.pop(next(iter(cache)))
    return configuration


def start_listener(host: str, port: int, alpn: AlpnLike, credential: Credential, settings: Settings | None,
                   registration: Registration | None, backlog: int) -> Listener:
    """A started listener for serve() in either world."""
    configuration = make_configuration(registration, alpn, credential, settings)
    listener = Listener(configuration.registration, configuration, backlog=backlog)
    try:
        listener.start(alpn, (host, port))
    except BaseException:
        listener.close()
        raise
    return listener


class Server:
    """A QUIC server running ``handler(connection)`` as a task per connection.

    ``close()`` stops accepting and shuts down the connections still open;
    ``wait_closed()`` waits for the listener and every handler to finish.
    """

    def __init__(self, handler: Handler, listener: Listener, linger: float) -> None:
        self.listener = listener
        self._handler = handler
        self._linger = linger
        self._accepting: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._connections: set[Connection] = set()
        self._closing = False

    @property
    def addresses(self) -> list[Address]:
        """The bound ``(host, port)`` addresses, like ``asyncio.Server.sockets``."""
        address = self.listener.local_address
        return [address] if address is not None else []

    def is_serving(self) -> bool:
        return self._accepting is not None and not self._accepting.done()

    async def start_serving(self) -> None:
        if self._accepting is None and not self._closing:
            self._accepting = asyncio.create_task(self._accept_loop(), name="pymsquic-accept")

    async def serve_forever(self) -> None:
        """Accept until :meth:`close` (or cancellation, which closes the server)."""
        await self.start_serving()
        assert self._accepting is not None
        try:
            await asyncio.shield(self._accepting)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    async def _accept_loop(self) -> None:
        try:
            async for conn in self.listener:
                task = asyncio.create_task(self._run_handler(conn))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
        except Finished:
            pass

    async def _run_handler(self, conn: Connection) -> None:
        self._connections.add(conn)
        failure: type | None = None  # a handler that fails closes with EXCEPTION_ERROR_CODE
        try:
            await self._handler(conn)
        except Exception as exc:
            failure = type(exc)
            logger.exception("connection handler failed for %s", conn.remote_address)
        except BaseException as exc:  # cancelled: close the same way, then go on cancelling
            failure = type(exc)
            raise
        finally:
            self._connections.discard(conn)
            await conn.close_gracefully_async(self._linger, exit_error_code(failure))

    def close(self) -> None:
        """Stop accepting and shut down open connections (their handlers see ConnectionClosed)."""
        if self._closing:
            return
        self._closing = True
        self.listener._stop_settled()  # starts the stop without waiting for it
        for conn in list(self._connections):
            conn.shutdown()

    async def wait_closed(self) -> None:
        await self.listener.stop_async()
        if self._accepting is not None:
            await self._accepting
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        self.listener.close()

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        return f"<Server {self.addresses} serving={self.is_serving()} connections={len(self._connections)}>"


async def serve(handler: Handler, host: str, port: int, *, alpn: AlpnLike, credential: Credential,
                settings: Settings | None = None, registration: Registration | None = None,
                backlog: int = 128, linger: float = 5.0, start_serving: bool = True) -> Server:
    """Listen on ``host:port`` and run ``await handler(connection)`` for each connection.

    The connection is closed gracefully when the handler returns (error code 0,
    unless the handler shut it down itself) or raises (:data:`EXCEPTION_ERROR_CODE`). ``settings``
    defaults to :data:`DEFAULT_SETTINGS` (peers may open streams, datagrams on).
    """
    server = Server(handler, start_listener(host, port, alpn, credential, settings, registration, backlog), linger)
    if start_serving:
        await server.start_serving()
    return server


class connect:
    """Connect to a QUIC server; ``async with connect(...) as conn`` or ``conn = await connect(...)``.

    The server's certificate is verified unless ``credential`` says otherwise
    (default ``Credential.client()``: the system CA store). Leaving the ``async
    with`` block closes the connection gracefully, with error code 0, or with
    :data:`EXCEPTION_ERROR_CODE` when it is left by an exception.
    """

    def __init__(self, host: str, port: int, *, alpn: AlpnLike, credential: Credential | None = None,
                 settings: Settings | None = None, server_name: str | None = None,
                 registration: Registration | None = None, timeout: float | None = None,
                 linger: float = 5.0) -> None:
        self._args = (host, port, alpn, credential, settings, server_name, registration, timeout)
        self._linger = linger
        self._conn: Connection | None = None

    async def _connect(self) -> Connection:
        host, port, alpn, credential, settings, server_name, registration, timeout = self._args
        configuration = make_configuration(registration, alpn, credential or Credential.client(), settings)
        return await Connection.connect_async(configuration.registration, configuration, host, port,
                                              server_name=server_name, timeout=timeout)

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._connect().__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await self._connect()
        return self._conn

    async def __aexit__(self, exc_type: type | None, *exc: object) -> None:
        assert self._conn is not None
        await self._conn.close_gracefully_async(self._linger, exit_error_code(exc_type))
