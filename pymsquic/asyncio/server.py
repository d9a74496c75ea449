"""asyncio servers: :func:`serve` and :class:`Server`, shaped like
``asyncio.start_server``: a handler coroutine runs as a task per connection."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generator

from .._core.connection import exit_error_code
from .._core.server import ServerCore, log_handler_failure, start_listener
from ..configuration import AlpnLike, Configuration, Credential, Settings
from ..registration import Registration
from ..resumption import TicketKeys, serve_configuration
from .connection import Connection
from .listener import Listener

if TYPE_CHECKING:
    from typing_extensions import Self

#: What :func:`serve` runs for each connection: ``await handler(connection)``.
Handler = Callable[[Connection], Awaitable[Any]]


class Server(ServerCore):
    """A QUIC server running ``await handler(connection)`` as a task per connection.

    :meth:`close` stops accepting and closes the connections (after ``grace``
    seconds for the handlers to finish); :meth:`wait_closed` waits for that to
    be over. ``async with server:`` does both on the way out.
    """

    listener: Listener

    def __init__(self, handler: Handler, listener: Listener, close_timeout: float) -> None:
        super().__init__(listener, close_timeout)
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._accepting: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()

    def is_serving(self) -> bool:
        """True while the server accepts connections."""
        return self._accepting is not None and not self._accepting.done()

    async def start_serving(self) -> None:
        """Start accepting connections (``serve(..., start_serving=False)`` does not)."""
        if self._accepting is None and self._closing is None:
            self._accepting = self._loop.create_task(self._accept_loop(), name="pymsquic-accept")

    async def serve_forever(self) -> None:
        """Accept until the server is closed. Cancelled, it closes the server
        and waits for that, then goes on cancelling."""
        await self.start_serving()
        if self._accepting is None:
            raise RuntimeError(f"{self!r} is closed")
        try:
            await asyncio.shield(self._accepting)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    async def _accept_loop(self) -> None:
        async for conn in self.listener:
            task = self._loop.create_task(self._run_handler(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _run_handler(self, conn: Connection) -> None:
        self._handler_started(conn)
        failure: type[BaseException] | None = None  # a handler that fails closes with EXCEPTION_ERROR_CODE
        try:
            await self._handler(conn)
        except Exception as exc:
            failure = type(exc)
            log_handler_failure(conn)
        except BaseException as exc:  # cancelled: close the same way, then go on cancelling
            failure = type(exc)
            raise
        finally:
            self._connections.discard(conn)
            await conn.close(exit_error_code(failure))

    def close(self, grace: float = 0.0) -> None:
        """Stop accepting; after ``grace`` seconds, shut down the connections whose
        handlers still run (they see :class:`~pymsquic.ConnectionClosed`); a
        handler still running ``close_timeout`` seconds later is cancelled. Does
        not wait: see :meth:`wait_closed`. Safe more than once, and from a handler."""
        if self._closing is None:
            caller = asyncio.current_task(self._loop)  # a handler closing its server is not waited for
            self._closing = self._loop.create_task(self._close(grace, caller), name="pymsquic-server-close")

    async def _close(self, grace: float, caller: asyncio.Task[Any] | None) -> None:
        try:
            await self.listener.stop()
            if self._accepting is not None:  # drains what completed its handshake before the stop
                await asyncio.gather(self._accepting, return_exceptions=True)
            handlers = {task for task in self._handlers if task is not caller}
            if grace > 0 and handlers:
                await asyncio.wait(handlers, timeout=grace)
            self._shut_down_connections()
            if handlers:
                # Handlers see ConnectionClosed and close; one that ignores it for
                # close_timeout is cancelled, so that the server's close ends.
                _, pending = await asyncio.wait(handlers, timeout=self.close_timeout)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*handlers, return_exceptions=True)
            await self.listener.close()
        except asyncio.CancelledError:
            self._closed.cancel()
            raise
        except BaseException as exc:  # wait_closed() raises it
            self._closed.set_exception(exc)
            raise
        else:
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until the server is closed: the listener released and every
        handler finished. Only waits, as ``asyncio.Server.wait_closed()`` does:
        :meth:`close` starts the closing."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class serve:
    """Listen on ``host:port`` and run ``await handler(connection)`` for each
    connection: ``async with serve(...) as server`` or ``server = await serve(...)``.

    Give ``alpn`` and ``credential`` (with ``settings``, ``registration`` as
    needed) or a server :class:`~pymsquic.Configuration`. ``settings`` defaults
    to :data:`~pymsquic.DEFAULT_SETTINGS` (peers may open streams, datagrams
    on). ``host`` None or ``""`` listens on every local address; port 0 picks a
    free port (see :attr:`Server.addresses`). The connection is closed
    gracefully when the handler returns (error code 0, unless the handler shut
    it down itself) or raises (:data:`~pymsquic.EXCEPTION_ERROR_CODE`);
    ``close_timeout`` bounds that close. With ``start_serving=False`` the
    server accepts only once :meth:`Server.start_serving` or
    :meth:`Server.serve_forever` is awaited. ``ticket_keys``
    (:class:`~pymsquic.TicketKey`) are the session-ticket keys this server
    shares with others, so that each resumes the others' sessions; resumption
    needs ``Settings.server_resumption_level`` and a ticket sent by the handler
    (``connection.send_resumption_ticket()``).
    """

    def __init__(self, handler: Handler, host: str | None, port: int, *, alpn: AlpnLike | None = None,
                 credential: Credential | None = None, settings: Settings | None = None,
                 configuration: Configuration | None = None, registration: Registration | None = None,
                 backlog: int = 128, close_timeout: float = 5.0, start_serving: bool = True,
                 ticket_keys: TicketKeys | None = None) -> None:
        self._handler = handler
        self._configuration = serve_configuration(configuration, registration, alpn, credential, settings,
                                                  ticket_keys)
        self._host, self._port, self._backlog = host, port, backlog
        self._close_timeout, self._start_serving = close_timeout, start_serving
        self._server: Server | None = None

    async def _create(self) -> Server:
        listener = start_listener(self._handler, Listener, self._host, self._port, self._configuration, self._backlog)
        server = Server(self._handler, listener, self._close_timeout)
        if self._start_serving:
            await server.start_serving()
        return server

    def __await__(self) -> Generator[Any, None, Server]:
        return self._create().__await__()

    async def __aenter__(self) -> Server:
        self._server = await self._create()
        return self._server

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self._server.__aexit__(*exc)
