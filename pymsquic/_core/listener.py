"""The listener state and the non-blocking steps both worlds share.

:class:`ListenerCore` opens and starts a native listener, takes a connection
whose handshake completed (never waiting), starts a stop, and runs the
low-level hooks. :mod:`pymsquic.asyncio.listener` and
:mod:`pymsquic.sync.listener` add the waiting. The records a listener reports
(:class:`ListenerState`, :class:`ListenerStats`, :class:`NewConnectionInfo`)
and msquic's process-wide retry limit are world-independent and exported at
the top of the package.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, TypeVar

from .. import _native
from .._msquic import ffi, lib
from ..addresses import Address, AddressLike, any_address, free_udp_port, from_native, resolve, split_host_port
from ..configuration import AlpnLike, Configuration, decode_alpns, encode_alpns
from ..errors import AlreadyStarted, Failed, Finished, NotStarted, failed
from ..keylog import KeyLogLike
from ..keylog import native as native_keylog
from ..keylog import resolve as resolve_keylog
from ..registration import Registration
from .certificates import BAD_CERTIFICATE, HandshakeLogger, run_check
from .connection import ConnectionCore

logger = logging.getLogger("pymsquic")


class ListenerState(enum.Enum):
    """Where a listener is in its life (``Listener.state``)."""

    OPEN = "open"                            # created, not started
    START_COMPLETE = "start_complete"        # listening
    SHUTDOWN = "shutdown"                    # stop requested, STOP_COMPLETE pending
    SHUTDOWN_COMPLETE = "shutdown_complete"  # stopped (or closed)


_STATES = {
    lib.PMQ_LISTENER_IDLE: ListenerState.OPEN,
    lib.PMQ_LISTENER_STARTING: ListenerState.OPEN,
    lib.PMQ_LISTENER_STARTED: ListenerState.START_COMPLETE,
    lib.PMQ_LISTENER_STOPPING: ListenerState.SHUTDOWN,
    lib.PMQ_LISTENER_STOPPED: ListenerState.SHUTDOWN_COMPLETE,
    lib.PMQ_LISTENER_CLOSED: ListenerState.SHUTDOWN_COMPLETE,
}
_STOPPED = (lib.PMQ_LISTENER_IDLE, lib.PMQ_LISTENER_STOPPED, lib.PMQ_LISTENER_CLOSED)


@dataclass(frozen=True)
class NewConnectionInfo:
    """What a listener knows of a connection when it arrives (``on_new_connection``)."""

    remote_address: Address | None
    local_address: Address | None
    server_name: str | None
    client_alpns: tuple[str, ...]


@dataclass(frozen=True)
class ListenerStats:
    """What became of the connections that reached a listener (``Listener.stats()``).

    Every connection msquic offers the listener is counted once as refused
    (``refused_*``) or, when its handshake ends, as ``accepted`` (completed and
    queued for :meth:`Listener.accept`, taken or not) or ``failed`` (the
    handshake failed or timed out). A connection handed over early, when its
    0-RTT request arrived (see :class:`ListenerCore`), counts in ``accepted``
    then, and in ``accepted_early``; if its handshake fails afterwards, its
    handler sees that (not ``failed``). A handshake that completes while the backlog
    is full counts in ``refused_backlog``. ``handshakes``, ``queued`` and
    ``early_waiting`` (of the handshakes, those whose 0-RTT request found the
    backlog full) are the numbers now. Connections msquic answered with a stateless Retry never reach
    the listener.
    """

    accepted: int            # handshake completed, queued for accept()
    refused_backlog: int     # refused because the backlog was full
    refused_hook: int        # refused by on_new_connection
    refused_other: int       # refused or ended by a stop, or msquic rejected the configuration
    expired: int             # queued but not accepted within backlog_timeout, shut down
    queued: int              # completed, waiting in the backlog now
    handshakes: int = 0      # handshakes in progress now
    refused_handshakes: int = 0  # refused because max_handshakes handshakes were in progress
    failed: int = 0          # the handshake failed or timed out
    refused_server_name: int = 0  # asked for a server name not served (refuse_unknown_names=True)
    accepted_early: int = 0  # of accepted: handed over before the handshake completed (0-RTT)
    early_waiting: int = 0   # of handshakes now: its 0-RTT request found the backlog full (see ListenerCore)
    # msquic's own QUIC_LISTENER_STATISTICS (msquic counts NEW_CONNECTION's answer, not
    # the handshake's end). Not compared by ==: they are msquic's view of the same events.
    msquic_accepted: int = field(default=0, compare=False)   # NEW_CONNECTION accepted
    msquic_rejected: int = field(default=0, compare=False)   # NEW_CONNECTION refused
    # Not msquic's BindingRecvDroppedPackets: msquic 2.5.1 never initialises that counter.


#: Handshakes in progress a listener allows by default: well above what msquic's
#: default retry memory limit lets through on small machines (about 0.1% of RAM,
#: at roughly 35 KB per handshake by msquic's own estimate).
DEFAULT_MAX_HANDSHAKES = 1024

#: Free ports tried for a listener on port 0 before its start fails (see start()).
_PORT_TRIES = 8

#: ``on_new_connection``: runs on a msquic thread; returning False refuses the connection.
NewConnectionHook = Callable[[NewConnectionInfo], "bool | None"]
#: ``on_stop_complete``: runs on a msquic thread when a stop completes.
StopCompleteHook = Callable[[], None]

C = TypeVar("C", bound=ConnectionCore[Any])  # the world's connection class
_REFUSALS = ("refused_backlog", "refused_hook", "refused_handshakes", "refused_other", "refused_server_name")


class ListenerCore(Generic[C]):
    """Accepts QUIC connections on a local address.

    ``backlog`` bounds the connections whose handshake completed and that wait
    for :meth:`accept`; ``max_handshakes`` separately bounds the handshakes in
    progress. Beyond either, new connections are refused (the client sees
    CONNECTION_REFUSED); a handshake that completes while the backlog is full
    is shut down. A connection not accepted within ``backlog_timeout`` seconds
    is shut down. Handshakes that never complete (a flood of replayed or spoofed
    client Initials) therefore never take a legitimate client's place in the
    backlog; they end at the handshake idle timeout
    (``Settings.handshake_idle_timeout_ms``, msquic's default 10 s). Before
    ``max_handshakes`` is reached, msquic itself answers new clients with a
    stateless Retry once handshakes use more memory than
    :func:`retry_memory_limit` allows: a client must then prove its address, and
    packets replayed from addresses that do not answer cost the server nothing.
    Keep ``max_handshakes`` above what that limit lets through (see
    :func:`set_retry_memory_limit`), or a flood can fill it first. When a stop
    completes, handshakes still in progress are shut down (counted in
    ``refused_other``); completed connections stay acceptable until
    :class:`~pymsquic.errors.Finished`.

    Hooks are low-level and run on a msquic worker thread, before the
    connection exists for Python:

    * ``on_new_connection(info)`` gets a :class:`NewConnectionInfo`; returning
      ``False`` refuses the connection. An exception refuses it and is logged.
    * ``on_stop_complete()`` runs when a stop completes.

    A hook must be quick and must not block: it holds up every connection on
    its thread. Blocking pymsquic calls made inside a hook raise
    :class:`~pymsquic.errors.HookContextError`.

    ``server_names`` maps server names to configurations (one credential each,
    the same ALPN as ``configuration``, else ValueError; each one's settings
    apply to the connections it gets): a client asking for one
    of them (SNI; ASCII or IDNA, case-insensitive, a trailing dot ignored;
    ``"*.example.com"`` matches one more label; a name that is not a host name,
    or the same name twice, raises ValueError) gets that configuration's certificate, chosen in C as the
    connection arrives. Other clients get ``configuration``, or are refused
    with ``refuse_unknown_names=True``.

    A credential's ``verify_client`` callable (client certificates checked in
    Python) runs in :meth:`accept` (and a server's accept loop), while the
    connection is still handshaking: keep accepting, or the handshake of a
    connection whose check nobody runs ends at the handshake idle timeout.

    0-RTT: with ``Settings.server_resumption_level`` RESUME_AND_ZERO_RTT, a
    resumed connection whose client sent a request in 0-RTT packets is handed
    to :meth:`accept` (and a server's handler) as that request arrives, before
    the handshake completed, so that the answer goes out one round trip
    earlier (0.5-RTT data). Such a connection has ``accepted_early`` True and
    ``is_connected`` False until its handshake completes (``wait_handshake()``
    waits for it, and raises if it fails; reads and writes then raise
    :class:`~pymsquic.ConnectionClosed`). Its request may be a replay (see
    :mod:`pymsquic.resumption`): answer early only what is safe to repeat, or
    ``wait_handshake()`` first (that still does not make the request fresh).
    Every other connection (full handshakes; level RESUME; credentials with a
    ``verify_client`` callable, whose check runs during the handshake) is
    handed over once its handshake completed. With the backlog full, an early
    connection waits for its handshake like the others (``stats().early_waiting``). Unlike a flood of
    Initials that never complete, a replayed 0-RTT flight is handed over: it
    takes a backlog place and a handler run until its handshake fails (at the
    handshake idle timeout). Level RESUME turns the early hand-off off (msquic
    2.5.1 still takes the early data, handed over after the handshake).

    ``keylog_file`` (a path, a file open for appending or a :class:`~pymsquic.KeyLog`;
    default: the file named by ``SSLKEYLOGFILE``) gets the TLS secrets of every accepted
    connection: see :mod:`pymsquic.keylog`, and mind that it decrypts them.
    """

    #: The world's connection class, for the connections this listener hands out.
    _connection_class: type[C]

    def __init__(self, registration: Registration, configuration: Configuration, *, backlog: int = 128,
                 backlog_timeout: float = 10.0, max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
                 on_new_connection: NewConnectionHook | None = None,
                 on_stop_complete: StopCompleteHook | None = None,
                 server_names: Mapping[str, Configuration] | None = None,
                 refuse_unknown_names: bool = False, keylog_file: KeyLogLike | None = None) -> None:
        if not isinstance(registration, Registration):
            raise TypeError(f"registration must be a Registration, not {type(registration).__name__}")
        if not isinstance(configuration, Configuration):
            raise TypeError(f"configuration must be a Configuration, not {type(configuration).__name__}")
        if configuration.credential.is_client:
            raise ValueError("a listener needs a server credential (Credential.from_files/from_pkcs12/self_signed)")
        _check_count("backlog", backlog)
        _check_count("max_handshakes", max_handshakes)
        if not isinstance(backlog_timeout, (int, float)) or not 0 < backlog_timeout <= 3600:
            raise ValueError(f"backlog_timeout must be seconds in (0, 3600], not {backlog_timeout!r}")
        for name, hook in (("on_new_connection", on_new_connection), ("on_stop_complete", on_stop_complete)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable")
        # Before anything native: an unopenable keylog_file raises OSError here,
        # a bad server name table ValueError/TypeError.
        names = checked_server_names(server_names or {}, refuse_unknown_names, configuration)
        self._keylog = resolve_keylog(keylog_file)
        self.registration = registration
        self.configuration = configuration
        self.on_new_connection = on_new_connection
        self.on_stop_complete = on_stop_complete
        hooks = (lib.PMQ_HOOK_NEW_CONNECTION if on_new_connection else 0) | (
            lib.PMQ_HOOK_STOP_COMPLETE if on_stop_complete else 0)
        hook_id = _native.register_hook_target(self) if hooks else 0
        out = ffi.new("pmq_listener **")
        _native.check(
            lib.pmq_listener_open(registration.handle, configuration.handle, backlog,
                                  int(backlog_timeout * 1000), max_handshakes,
                                  configuration.settings.stream_scheduling_scheme, hook_id, hooks, out),
            "ListenerOpen",
        )
        self._listener = out[0]
        self._native_obj = lib.pmq_listener_obj(self._listener)
        if self._keylog is not None:  # accepted connections' TLS secrets (pymsquic.keylog)
            lib.pmq_listener_set_keylog(self._listener, native_keylog(self._keylog))
        self._refusals_logged = 0
        # close() only closes; the native struct is freed once Python lets go of it.
        self._releaser = _native.Releaser(self, _close_and_release, self._listener)
        registration._listeners.add(self)
        self._configurations = [configuration]  # by native tag: 0 is the default
        self._set_server_names(names, refuse_unknown_names)

    # ---- start and addresses -------------------------------------------------

    def start(self, alpn: AlpnLike, address: AddressLike = None) -> None:
        """Start listening for ``alpn`` on ``address``: ``(host, port)``, ``"host:port"``
        or None for every local address. Port 0 picks a port no other socket holds (see
        :attr:`local_address`; not msquic's own pick, which may share one with another listener)."""
        alpn_wire = encode_alpns(alpn)
        host, port = split_host_port(address)
        native_address = any_address(port) if host is None else resolve(host, port, passive=True)
        for _ in range(_PORT_TRIES if port == 0 else 1):
            if port == 0:  # not msquic's own pick, which may share a port (addresses.free_udp_port)
                try:
                    native_address.port = free_udp_port(native_address)
                except OSError as exc:
                    raise Failed(f"cannot listen on {address!r}: no free UDP port ({exc})",
                                 lib.QUIC_STATUS_ADDRESS_IN_USE) from exc
            status = lib.pmq_listener_start(self._listener, alpn_wire, len(alpn_wire), native_address)
            if status != lib.QUIC_STATUS_ADDRESS_IN_USE:
                break  # (in use: another socket took the free port between the probe and msquic's bind)
        if status == lib.QUIC_STATUS_INVALID_STATE:
            raise AlreadyStarted("listener is already started (or still stopping)", status)
        if status == lib.QUIC_STATUS_ABORTED:
            raise Failed("listener is closed", status)
        if failed(status):
            raise Failed(f"cannot listen on {address!r}", status)
        logger.debug("listener started on %s for %s", self.local_address, decode_alpns(alpn_wire))

    @property
    def local_address(self) -> Address | None:
        """The bound ``(host, port)`` while started, else None."""
        addr = ffi.new("pmq_addr *")
        if failed(lib.pmq_listener_local_address(self._listener, addr)):
            return None
        return from_native(addr)

    @property
    def state(self) -> ListenerState:
        return _STATES[lib.pmq_listener_state(self._listener)]

    def stats(self) -> ListenerStats:
        """What became of the connections that reached the listener so far."""
        native = ffi.new("pmq_listener_stats *")
        lib.pmq_listener_get_stats(self._listener, native)
        msquic = self._msquic_stats()
        return ListenerStats(accepted=native.accepted, refused_backlog=native.refused_backlog,
                             refused_hook=native.refused_hook, refused_other=native.refused_other,
                             expired=native.expired, queued=native.queued, handshakes=native.handshakes,
                             refused_handshakes=native.refused_handshakes, failed=native.failed,
                             refused_server_name=native.refused_server_name,
                             accepted_early=native.accepted_early, early_waiting=native.early_waiting,
                             msquic_accepted=msquic.total_accepted, msquic_rejected=msquic.total_rejected)

    def _msquic_stats(self) -> Any:
        """msquic's QUIC_LISTENER_STATISTICS now, or once closed the last ones read
        (``close()`` reads them just before it releases the handle)."""
        native = ffi.new("pmq_listener_msquic_stats *")
        if not failed(lib.pmq_listener_get_msquic_stats(self._listener, native)):
            self._msquic_stats_kept = native
        return getattr(self, "_msquic_stats_kept", native)

    # ---- accept and stop (non-blocking steps) ---------------------------------------

    def _try_accept(self) -> C | None:
        """The next connection whose handshake completed (or whose 0-RTT request
        came, see the class docstring), None if there is none yet; NotStarted
        before start(), Finished once stopped and drained."""
        self._run_certificate_checks()
        out = _native.scratch.conn
        result = lib.pmq_listener_accept(self._listener, out)
        if logger.isEnabledFor(logging.DEBUG):
            self._log_refusals()
        if result == lib.PMQ_ACCEPT_OK:
            configuration = self._configurations[lib.pmq_conn_config_tag(out[0])]
            conn = self._connection_class(out[0], self.registration, configuration)
            conn._keylog = self._keylog  # its write failures are logged with the connection's
            if conn.accepted_early and not conn.is_connected:
                conn.logger.debug("handed over before its handshake completed (0-RTT request): %s, alpn %s",
                                  conn.remote_address, conn.alpn)
            else:
                conn._log_connected()
            return conn
        if result == lib.PMQ_ACCEPT_EMPTY:
            return None
        if result == lib.PMQ_ACCEPT_NOT_STARTED:
            raise NotStarted("accept() before start()")
        raise Finished("listener is stopped and no connection is left")

    def _log_refusals(self) -> None:
        # msquic's threads refuse connections without Python: report them here,
        # when Python next looks (each accept, and the stop).
        stats = self.stats()
        counts = {name: getattr(stats, name) for name in _REFUSALS}
        total = sum(counts.values())
        if total > self._refusals_logged:
            logger.debug("listener %s refused %d connection(s) (totals: %s)", self.local_address,
                         total - self._refusals_logged, ", ".join(f"{k}={v}" for k, v in counts.items() if v))
            self._refusals_logged = total

    def _stop_settled(self) -> bool | None:
        # pmq_listener_stop only acts on a started listener, so calling it again
        # while another thread's stop is in flight is harmless.
        settled = lib.pmq_listener_stop(self._listener) in _STOPPED
        if settled and logger.isEnabledFor(logging.DEBUG):
            self._log_refusals()
        return True if settled else None

    def _release(self) -> None:
        """Stop if needed and release the listener; connections still queued are shut down."""
        _native.forbid_in_callback("Listener.close()")
        self._msquic_stats()  # msquic's counters go with its handle: keep the last
        lib.pmq_listener_close(self._listener)

    # ---- hooks (msquic thread) -----------------------------------------------------

    def _run_hook(self, event: int, info: Any) -> bool:
        try:
            if event == lib.PMQ_HOOK_NEW_CONNECTION:
                hook = self.on_new_connection
                return hook is None or hook(_new_connection_info(info)) is not False
            if self.on_stop_complete is not None:
                self.on_stop_complete()
            return True
        except Exception:
            logger.exception("listener hook raised; refusing the connection" if event ==
                             lib.PMQ_HOOK_NEW_CONNECTION else "on_stop_complete raised")
            return False

    # ---- server names and certificate checks -----------------------------------------

    def _set_server_names(self, names: list[tuple[bytes, Configuration]], refuse_unknown: bool) -> None:
        for wire, configuration in names:
            self._configurations.append(configuration)  # kept alive as long as the listener
            _native.check(lib.pmq_listener_add_server_name(self._listener, wire, configuration.handle,
                                                           len(self._configurations) - 1,
                                                           configuration.credential.cert_check_mode),
                          f"adding server name {wire.decode()!r}")
        self._checks_clients = any(c.credential.verify is not None for c in self._configurations)
        _native.check(lib.pmq_listener_set_default_name(self._listener, bool(refuse_unknown),
                                                        self.configuration.credential.cert_check_mode),
                      "setting the default server name")

    def _run_certificate_checks(self) -> None:
        """Runs the ``verify_client`` callables of connections still handshaking."""
        if not self._checks_clients:  # else every accept would walk the handshakes for nothing
            return
        conn = ffi.new("pmq_conn **")
        taken = ffi.new("pmq_cert_taken *")
        while lib.pmq_listener_cert_take(self._listener, conn, taken):
            try:
                info = ffi.new("pmq_conn_info *")
                lib.pmq_conn_get_info(conn[0], info)
                credential = self._configurations[taken.tag].credential
                record = _new_connection_info(info)
                log = HandshakeLogger(logger, {"remote_address": record.remote_address})
                run_check(conn[0], taken, credential.verify, record.server_name, log)
            finally:
                # Whatever raised before run_check completed it (the lookup, an interrupt):
                # rejected now, not left to the handshake idle timeout. A no-op once completed.
                lib.pmq_cert_taken_clear(taken)
                lib.pmq_conn_cert_complete(conn[0], False, BAD_CERTIFICATE)
                lib.pmq_conn_cert_done(conn[0])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.state.value} {self.local_address} alpn={list(self.configuration.alpns)}>"


def _new_connection_info(info: Any) -> NewConnectionInfo:
    server_name = bytes(ffi.buffer(info.server_name, info.server_name_len)).decode("utf-8", "surrogateescape")
    return NewConnectionInfo(
        remote_address=from_native(info.remote),
        local_address=from_native(info.local),
        server_name=server_name or None,
        client_alpns=decode_alpns(bytes(ffi.buffer(info.client_alpn, info.client_alpn_len))),
    )


def checked_server_names(server_names: Mapping[str, Configuration], refuse_unknown: bool,
                         default: Configuration) -> list[tuple[bytes, Configuration]]:
    """The server name table as C gets it (:func:`encode_server_name`), every entry
    checked: TypeError/ValueError before anything native is opened."""
    if not isinstance(server_names, Mapping):
        raise TypeError(f"server_names must be a mapping, not {type(server_names).__name__}")
    if refuse_unknown and not server_names:
        raise ValueError("refuse_unknown_names=True needs server_names")
    names: dict[bytes, str] = {}
    table = []
    for name, configuration in server_names.items():
        if not isinstance(configuration, Configuration):
            raise TypeError(f"server_names[{name!r}] must be a Configuration, not {type(configuration).__name__}")
        if configuration.credential.is_client:
            raise ValueError(f"server_names[{name!r}] needs a server credential")
        if configuration.registration is not default.registration:
            raise ValueError(f"server_names[{name!r}] belongs to another registration")
        if configuration.alpns != default.alpns:  # the client's ALPN was matched against the listener's
            raise ValueError(f"server_names[{name!r}] has ALPN {list(configuration.alpns)}, the listener's "
                             f"configuration {list(default.alpns)}: they must be the same")
        wire = encode_server_name(name)
        if wire in names:  # the C table would silently keep the first
            raise ValueError(f"server names {names[wire]!r} and {name!r} are the same name")
        names[wire] = name
        table.append((wire, configuration))
    return table


_LABEL = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?")


def encode_server_name(name: str) -> bytes:
    """A server name as the table in C compares it: ASCII (IDNA), lower case, without
    a trailing dot (C drops the client's), host name labels, and at most one ``*``:
    a whole first label followed by two more (``*.example.com``, not ``*.com``)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"server names must be non-empty str, not {name!r}")
    wildcard = name.startswith("*.")
    host = name[2:] if wildcard else name
    host = host[:-1] if host.endswith(".") else host  # "example.com." is example.com
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"server name {name!r} is not a valid host name: {exc}") from None
    labels = ascii_host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"server name {name!r} is not a host name (letters, digits, '-' in dot-separated labels; "
                         "'*' only as a whole first label)")
    if wildcard and len(labels) < 2:
        raise ValueError(f"server name {name!r}: a wildcard needs two labels after '*.' ('*.example.com')")
    wire = ("*." if wildcard else "").encode() + ascii_host.encode()
    if len(wire) > 255:
        raise ValueError(f"server name {name!r} is longer than 255 bytes")
    return wire


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= 65535:
        raise ValueError(f"{name} must be 1-65535, not {value}")


def retry_memory_limit() -> float:
    """msquic's stateless retry threshold, as a fraction of the machine's memory.

    Once the handshakes in progress (all listeners of the process together)
    are estimated to use more memory than this, msquic answers every new client
    Initial with a stateless Retry instead of starting a handshake: the client
    must echo a token, proving it receives at its address (one more round
    trip). msquic's default is 65/65535, about 0.1%.
    """
    _native.ensure_open()
    value = ffi.new("uint16_t *")
    _native.check(lib.pmq_retry_memory_limit(0, value), "GetParam(QUIC_PARAM_GLOBAL_RETRY_MEMORY_PERCENT)")
    return int(value[0]) / 65535


def set_retry_memory_limit(fraction: float) -> None:
    """Set msquic's stateless retry threshold for the whole process (see
    :func:`retry_memory_limit`). ``0`` makes every new client go through a
    Retry; ``1`` practically never retries. Process-wide: it applies to every
    listener, in every registration, at once (QUIC_PARAM_GLOBAL_RETRY_MEMORY_PERCENT,
    stored in 65535ths)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a number, not {type(fraction).__name__}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction!r}")
    _native.ensure_open()
    value = ffi.new("uint16_t *", round(fraction * 65535))
    _native.check(lib.pmq_retry_memory_limit(1, value), "SetParam(QUIC_PARAM_GLOBAL_RETRY_MEMORY_PERCENT)")


def _close_and_release(native: Any) -> None:
    lib.pmq_listener_close(native)
    lib.pmq_listener_release(native)

