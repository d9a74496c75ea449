"""High-level blocking entry points, the same shape as :mod:`pymsquic.server`:
``serve(handler, ...)`` runs ``handler(connection)`` in a thread per
connection; ``connect(...)`` returns a connection whose streams block."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from .addresses import Address
from .configuration import AlpnLike, Credential, Settings
from .connection import Connection, exit_error_code
from .errors import Finished
from .listener import Listener
from .registration import Registration
from .server import make_configuration, start_listener

logger = logging.getLogger("pymsquic")

Handler = Callable[[Connection], Any]


class Server:
    """A QUIC server running ``handler(connection)`` in a thread per connection.

    ``serve_forever()`` accepts in the calling thread until ``shutdown()`` (from
    another thread) or ``close()``; leaving ``with`` closes the server and the
    connections still open, then waits for the handler threads.
    """

    def __init__(self, handler: Handler, listener: Listener, linger: float) -> None:
        self.listener = listener
        self._handler = handler
        self._linger = linger
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._connections: set[Connection] = set()

    @property
    def addresses(self) -> list[Address]:
        address = self.listener.local_address
        return [address] if address is not None else []

    def serve_forever(self) -> None:
        """Accept connections until the server is shut down."""
        while True:
            try:
                conn = self.listener.accept()
            except Finished:
                return
            thread = threading.Thread(target=self._run_handler, args=(conn,),
                                      name=f"pymsquic-handler-{conn.remote_address}", daemon=True)
            with self._lock:
                self._threads.add(thread)
                self._connections.add(conn)
            thread.start()

    def _run_handler(self, conn: Connection) -> None:
        failure: type | None = None  # a handler that fails closes with EXCEPTION_ERROR_CODE
        try:
            self._handler(conn)
        except Exception as exc:
            failure = type(exc)
            logger.exception("connection handler failed for %s", conn.remote_address)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: close the same way, then go on
            failure = type(exc)
            raise
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())
            conn.close_gracefully(self._linger, exit_error_code(failure))

    def shutdown(self) -> None:
        """Stop accepting: ``serve_forever()`` returns. Open connections go on."""
        self.listener.stop()

    def close(self, timeout: float | None = None) -> None:
        """Shut down, shut down open connections, wait for handler threads
        (up to ``timeout`` seconds each), release the listener."""
        self.shutdown()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            conn.shutdown()
        for thread in threads:
            thread.join(timeout)
        self.listener.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(self._linger * 2)


def serve(handler: Handler, host: str, port: int, *, alpn: AlpnLike, credential: Credential,
          settings: Settings | None = None, registration: Registration | None = None,
          backlog: int = 128, linger: float = 5.0) -> Server:
    """Listen on ``host:port``; call ``serve_forever()`` to run ``handler(connection)``
    in a thread per connection. The connection is closed gracefully when the handler
    returns (error code 0) or raises (:data:`~pymsquic.EXCEPTION_ERROR_CODE`)."""
    return Server(handler, start_listener(host, port, alpn, credential, settings, registration, backlog), linger)


def connect(host: str, port: int, *, alpn: AlpnLike, credential: Credential | None = None,
            settings: Settings | None = None, server_name: str | None = None,
            registration: Registration | None = None, timeout: float | None = None) -> Connection:
    """Connect (blocking) and return the connection; ``with`` closes it gracefully
    (with :data:`~pymsquic.EXCEPTION_ERROR_CODE` when left by an exception).
    The server's certificate is verified unless ``credential`` says otherwise."""
    configuration = make_configuration(registration, alpn, credential or Credential.client(), settings)
    return Connection.connect(configuration.registration, configuration, host, port,
                              server_name=server_name, timeout=timeout)
