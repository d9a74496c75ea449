"""Blocking servers: :func:`serve` and :class:`Server`, shaped like
``socketserver.ThreadingMixIn``: ``handler(connection)`` runs in a thread per
connection."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

from .. import _native
from .._core.connection import exit_error_code
from .._core.server import ServerCore, log_handler_failure, logger, start_listener
from ..configuration import AlpnLike, Configuration, Credential, Settings
from ..errors import EXCEPTION_ERROR_CODE
from ..registration import Registration
from ..resumption import TicketKeys, serve_configuration
from .connection import Connection
from .listener import Listener

if TYPE_CHECKING:
    from typing_extensions import Self

#: What :func:`serve` runs for each connection, in a thread of its own.
Handler = Callable[[Connection], Any]


class Server(ServerCore):
    """A QUIC server running ``handler(connection)`` in a thread per connection.

    :meth:`serve_forever` accepts in the calling thread until :meth:`shutdown`
    (from another thread) or :meth:`close`. ``with server:`` closes it on the
    way out.
    """

    listener: Listener

    def __init__(self, handler: Handler, listener: Listener, close_timeout: float) -> None:
        super().__init__(listener, close_timeout)
        self._handler = handler
        # _connections, _threads and _closing: shared by the accepting thread, the
        # handlers and whoever closes.
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._serving = False
        self._closing = False
        self._closed = threading.Event()

    def is_serving(self) -> bool:
        """True while :meth:`serve_forever` accepts connections."""
        return self._serving

    def serve_forever(self) -> None:
        """Accept connections until the server is shut down or closed."""
        self._serving = True
        try:
            for conn in self.listener:
                self._start_handler(conn)
        finally:
            self._serving = False

    def _start_handler(self, conn: Connection) -> None:
        thread = threading.Thread(target=self._run_handler, args=(conn,),
                                  name=f"pymsquic-handler-{conn.id}", daemon=True)
        with self._lock:
            refused = self._closing  # taken from the queue after close() shut the others down
            if not refused:
                self._threads.add(thread)
                self._handler_started(conn)
        if not refused:
            try:
                thread.start()
                return
            except RuntimeError:  # at interpreter exit: "can't create new thread at interpreter shutdown"
                logger.warning("cannot start a handler thread for %s; closing it", conn.remote_address)
                with self._lock:
                    self._threads.discard(thread)
                    self._connections.discard(conn)
        conn.shutdown(0 if refused else EXCEPTION_ERROR_CODE)
        conn._abandon()

    def _run_handler(self, conn: Connection) -> None:
        failure: type[BaseException] | None = None  # a handler that fails closes with EXCEPTION_ERROR_CODE
        try:
            self._handler(conn)
        except Exception as exc:
            failure = type(exc)
            log_handler_failure(conn)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: close the same way, then go on
            failure = type(exc)
            raise
        finally:
            with self._lock:  # before the close: the server's shutdown(0) must not take its code
                self._connections.discard(conn)
            try:
                conn.close(exit_error_code(failure))
            finally:  # only now is the handler done: close() waits for what it still sends
                with self._lock:
                    self._threads.discard(threading.current_thread())

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting: :meth:`serve_forever` returns once the connections that
        completed their handshake before are handed out. Open connections go on.
        Safe from any thread, a signal handler included."""
        self.listener.stop(timeout)

    def close(self, grace: float = 0.0, timeout: float | None = None) -> None:
        """Stop accepting; after ``grace`` seconds, shut down the connections whose
        handlers still run (they see :class:`~pymsquic.ConnectionClosed`); wait for
        the handler threads, their connections' close included; release the
        listener. Safe from a handler's own thread (it is not waited for).

        ``timeout`` bounds the whole call: TimeoutError if handler threads still
        run then (the listener is released all the same).
        """
        deadline = _native.Deadline(timeout)
        try:
            self.listener.stop(deadline.remaining())
            self._join(_native.Deadline(grace if timeout is None else min(grace, timeout)))
            with self._lock:
                self._closing = True  # serve_forever shuts down what it still takes from the queue
                self._shut_down_connections()
            left = self._join(deadline)
        finally:
            self.listener.close()
            self._closed.set()
        if left:
            raise TimeoutError(f"Server.close() timed out after {timeout} s with {left} handler(s) still running")

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until :meth:`close` has finished (called from another thread);
        only waits, as :meth:`pymsquic.asyncio.Server.wait_closed` does."""
        if not self._closed.wait(timeout):
            raise TimeoutError(f"Server.wait_closed() timed out after {timeout} s")

    def _join(self, deadline: _native.Deadline) -> int:
        """Join the other handler threads until ``deadline``; how many still run."""
        with self._lock:
            threads = list(self._threads - {threading.current_thread()})
        for thread in threads:
            thread.join(deadline.remaining())
        return sum(thread.is_alive() for thread in threads)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close(timeout=self.close_timeout * 2)
        except TimeoutError as timeout:  # leaving the block is not to fail, nor to hide its exception
            logger.warning("%s", timeout)


def serve(handler: Handler, host: str | None, port: int, *, alpn: AlpnLike | None = None,
          credential: Credential | None = None, settings: Settings | None = None,
          configuration: Configuration | None = None, registration: Registration | None = None,
          backlog: int = 128, close_timeout: float = 5.0, ticket_keys: TicketKeys | None = None) -> Server:
    """Listen on ``host:port``; :meth:`Server.serve_forever` then runs
    ``handler(connection)`` in a thread per connection.

    Give ``alpn`` and ``credential`` (with ``settings``, ``registration`` as
    needed) or a server :class:`~pymsquic.Configuration`. ``settings`` defaults
    to :data:`~pymsquic.DEFAULT_SETTINGS`. ``host`` None or ``""`` listens on
    every local address; port 0 picks a free port (see
    :attr:`Server.addresses`). The connection is closed gracefully when the
    handler returns (error code 0) or raises
    (:data:`~pymsquic.EXCEPTION_ERROR_CODE`); ``close_timeout`` bounds that close.
    ``ticket_keys`` as in :class:`pymsquic.asyncio.serve`.
    """
    configuration = serve_configuration(configuration, registration, alpn, credential, settings, ticket_keys)
    return Server(handler, start_listener(handler, Listener, host, port, configuration, backlog), close_timeout)
