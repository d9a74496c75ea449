"""What ``serve`` and ``connect`` share in both worlds: configurations built
from keyword arguments (and cached), the started listener, and the server's
bookkeeping of handlers. :mod:`pymsquic.asyncio.server` runs handlers as
tasks, :mod:`pymsquic.sync.server` in threads."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from ..addresses import Address
from ..configuration import AlpnLike, Configuration, Credential, Settings, encode_alpns
from ..keylog import KeyLogLike
from ..registration import Registration, default_registration
from .connection import ConnectionCore
from .listener import ListenerCore

logger = logging.getLogger("pymsquic")
L = TypeVar("L", bound=ListenerCore[Any])

#: Settings for serve()/connect() when none are given: unlike msquic's defaults,
#: the peer may open streams and send datagrams.
DEFAULT_SETTINGS = Settings(peer_bidi_stream_count=128, peer_unidi_stream_count=128,
                            datagram_receive_enabled=True)

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
        configuration: Configuration | None = cache.pop(key, None)
        if configuration is None or configuration.closed:
            configuration = Configuration(registration, alpn, credential, settings)
        cache[key] = configuration  # most recently used last
        while len(cache) > _CACHED_CONFIGURATIONS:
            cache.pop(next(iter(cache)))
    return configuration


def chosen_configuration(configuration: Configuration | None, registration: Registration | None,
                         alpn: AlpnLike | None, credential: Credential | None, settings: Settings | None,
                         default_credential: Credential | None) -> Configuration:
    """``configuration=``, or one made of ``alpn``/``credential``/``settings``/``registration``
    (``default_credential`` when none is given; a server has none)."""
    if configuration is not None:
        if alpn is not None or credential is not None or settings is not None or registration is not None:
            raise TypeError("give configuration= or alpn=/credential=/settings=/registration=, not both")
        if not isinstance(configuration, Configuration):
            raise TypeError(f"configuration must be a Configuration, not {type(configuration).__name__}")
        return configuration
    if alpn is None:
        raise TypeError("alpn= (or configuration=) is required")
    credential = credential or default_credential
    if credential is None:
        raise TypeError("a server needs credential= (or configuration=)")
    return make_configuration(registration, alpn, credential, settings)


def client_configuration(configuration: Configuration | None, registration: Registration | None,
                         alpn: AlpnLike | None, credential: Credential | None,
                         settings: Settings | None) -> Configuration:
    """The configuration ``connect()`` uses; the credential defaults to
    ``Credential.client()`` (the system CA store, certificates verified)."""
    default = Credential.client() if credential is None and configuration is None else None
    return chosen_configuration(configuration, registration, alpn, credential, settings, default)


def start_listener(handler: object, listener_class: type[L], host: str | None, port: int,
                   configuration: Configuration, backlog: int, keylog_file: KeyLogLike | None = None) -> L:
    """A started listener of the world's class for ``serve(handler, ...)``."""
    if not callable(handler):  # else every connection would fail in its handler
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")
    listener = listener_class(configuration.registration, configuration, backlog=backlog, keylog_file=keylog_file)
    try:
        listener.start(configuration.alpns, (host or "", port))
    except BaseException:
        listener._release()
        raise
    return listener


class ServerCore:
    """The listener and the connections whose handlers still run."""

    def __init__(self, listener: ListenerCore[Any], close_timeout: float) -> None:
        self.listener = listener
        self.close_timeout = close_timeout
        self._connections: set[Any] = set()

    @property
    def addresses(self) -> list[Address]:
        """The bound ``(host, port)`` addresses, like ``asyncio.Server.sockets``."""
        address = self.listener.local_address
        return [address] if address is not None else []

    def _handler_started(self, conn: ConnectionCore[Any]) -> None:
        conn.close_timeout = self.close_timeout
        self._connections.add(conn)

    def _shut_down_connections(self) -> None:
        for conn in list(self._connections):
            conn.shutdown()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.addresses} connections={len(self._connections)}>"


def log_handler_failure(conn: ConnectionCore[Any]) -> None:
    conn.logger.exception("connection handler failed for %s", conn.remote_address)
