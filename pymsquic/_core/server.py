"""What ``serve`` and ``connect`` share in both worlds: configurations built
from keyword arguments (and cached), the started listener, and the server's
bookkeeping of handlers. :mod:`pymsquic.asyncio.server` runs handlers as
tasks, :mod:`pymsquic.sync.server` in threads."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, TypeVar, Union

from ..addresses import Address
from ..configuration import AlpnLike, Configuration, Credential, Settings, encode_alpns
from ..keylog import KeyLogLike
from ..registration import Registration, default_registration
from ..resumption import TicketKeys
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
    # Keyed without the verify callable: a closure made per call (or an unhashable
    # callable) would otherwise miss, or break, the cache; it only decides in Python.
    key = (encode_alpns(alpn), credential_key(credential), settings)
    with registration._lock:
        cache = registration._configuration_cache
        configuration: Configuration | None = cache.pop(key, None)
        if configuration is None or configuration.closed:
            configuration = Configuration(registration, alpn, credential, settings)
        cache[key] = configuration  # most recently used last
        while len(cache) > _CACHED_CONFIGURATIONS:
            cache.pop(next(iter(cache)))
    if configuration.credential.verify is not credential.verify:
        configuration = configuration._for_verify(credential)
    return configuration


def credential_key(credential: Credential) -> tuple[Any, ...]:
    """What msquic loads of a credential (all but its verify callable, whose presence
    the deferral flag already tells)."""
    return tuple(getattr(credential, field.name) for field in dataclasses.fields(credential)
                 if field.name != "verify")


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


#: ``credential=`` of serve(): one credential, or server names mapped to credentials.
ServerCredential = Union[Credential, Mapping[str, Credential]]


@dataclasses.dataclass
class ServerConfigurations:
    """What serve() listens with: the default configuration and, for a
    credential per server name, one configuration per name."""

    default: Configuration
    by_name: dict[str, Configuration] = dataclasses.field(default_factory=dict)
    refuse_unknown: bool = False


def server_configurations(configuration: Configuration | None, registration: Registration | None,
                          alpn: AlpnLike | None, credential: ServerCredential | None, settings: Settings | None,
                          default_credential: Credential | None,
                          ticket_keys: TicketKeys | None = None) -> ServerConfigurations:
    """serve()'s configurations. With a mapping of server names to credentials,
    each name gets a configuration of its own (same ALPN and settings); a client
    asking for another name (or none) gets ``default_credential``, or is refused
    if there is none. With ``ticket_keys`` each configuration is a new one, not
    a cached one that other listeners may share with other keys."""
    def make(configuration: Configuration | None, credential: Credential | None) -> Configuration:
        if ticket_keys is None:
            return chosen_configuration(configuration, registration, alpn, credential, settings, None)
        if configuration is not None:
            raise TypeError("give ticket_keys to Configuration(...), not beside configuration=")
        if alpn is None or credential is None:
            raise TypeError("a server needs alpn= and credential= (or configuration=)")
        return Configuration(registration or default_registration(), alpn, credential,
                             DEFAULT_SETTINGS if settings is None else settings, ticket_keys=ticket_keys)

    if not isinstance(credential, Mapping):
        if default_credential is not None:
            raise TypeError("default_credential= goes with a mapping of server names to credentials")
        return ServerConfigurations(make(configuration, credential))
    if configuration is not None:
        raise TypeError("give configuration= or a mapping of server names to credentials, not both")
    if not credential:
        raise ValueError("credential= maps no server name")
    by_name = {name: make(None, cred) for name, cred in credential.items()}
    if default_credential is not None:
        default = make(None, default_credential)
    else:  # the listener needs one; names it does not know are refused before it is used
        default = next(iter(by_name.values()))
    return ServerConfigurations(default, by_name, refuse_unknown=default_credential is None)


def start_listener(handler: object, listener_class: type[L], host: str | None, port: int,
                   configuration: Configuration | ServerConfigurations, backlog: int,
                   keylog_file: KeyLogLike | None = None) -> L:
    """A started listener of the world's class for ``serve(handler, ...)``."""
    if not callable(handler):  # else every connection would fail in its handler
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")
    if not isinstance(configuration, ServerConfigurations):
        configuration = ServerConfigurations(configuration)
    listener = listener_class(configuration.default.registration, configuration.default, backlog=backlog,
                              server_names=configuration.by_name,
                              refuse_unknown_names=configuration.refuse_unknown, keylog_file=keylog_file)
    configuration = configuration.default
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
