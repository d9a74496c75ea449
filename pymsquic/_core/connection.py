"""The connection state and the non-blocking steps both worlds share.

:class:`ConnectionCore` wraps one native connection: its state, opening
streams, sending datagrams, starting a shutdown, and the checks the worlds'
waits re-run (a stream to accept, a datagram to receive, connected, all sent,
closed). :mod:`pymsquic.asyncio.connection` and :mod:`pymsquic.sync.connection`
add only the waiting, the client's ``connect`` and the context managers.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import TYPE_CHECKING, Any, Callable, Generator, Generic, MutableMapping, TypeVar

from .. import _native
from .._buffers import BufferLike, c_buffer
from .._msquic import ffi, lib
from ..addresses import Address, AddressLike, from_native, is_ip_literal, resolve, split_host_port
from ..configuration import STREAM_SCHEDULING, Configuration, Settings, decode_alpns
from ..errors import (
    EXCEPTION_ERROR_CODE,
    ConnectionClosed,
    DatagramQueueFull,
    HandshakeError,
    QuicError,
    failed,
    transport_closed,
)
from ..keylog import KeyLog, KeyLogLike
from ..keylog import native as native_keylog
from ..keylog import resolve as resolve_keylog
from ..registration import Registration
from ..resumption import ResumptionMixin
from ..versions import HandshakeInfo
from .certificates import BAD_CERTIFICATE, Refusal, run_check
from .stream import _MAX_WRITE, StreamCore

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger("pymsquic")
S = TypeVar("S", bound=StreamCore)  # the world's stream class
_connection_ids = itertools.count(1)


class ConnectionLogger(logging.LoggerAdapter):  # type: ignore[type-arg]  # generic only in typeshed
    """``logging.getLogger("pymsquic")`` with the connection's id in front of each
    message, and as ``connection_id`` on each record (for filters and formatters)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(kwargs.get("extra") or {}), **(self.extra or {})}
        return f"[conn {(self.extra or {})['connection_id']}] {msg}", kwargs


@dataclasses.dataclass(frozen=True)
class ConnectionStats:
    """Counters msquic keeps for a connection (``Connection.stats()``): every
    field of msquic's QUIC_STATISTICS_V2, plus ``handshake_us``, pymsquic's
    own measure of the handshake. Times ending in ``_us`` are microseconds
    (``timing_*_us`` are msquic's monotonic clock, comparable with each other
    only); ``packets_*`` count QUIC packets (several may share a UDP datagram),
    ``bytes_*`` UDP payload bytes, ``stream_bytes_*`` stream payload bytes.
    """

    rtt_us: int
    min_rtt_us: int
    max_rtt_us: int
    rtt_variance_us: int
    congestion_window: int
    congestion_events: int
    path_mtu: int
    packets_sent: int
    packets_lost: int
    packets_received: int
    bytes_sent: int
    bytes_received: int
    stream_bytes_sent: int
    stream_bytes_received: int
    handshake_us: int
    # The rest of QUIC_STATISTICS_V2 (defaults only so that older constructions still work).
    correlation_id: int = 0                  # msquic's id of the connection, as in its traces
    version_negotiation: bool = False        # a Version Negotiation took place
    stateless_retry: bool = False            # the server asked for a Retry
    resumption_attempted: bool = False
    resumption_succeeded: bool = False
    grease_bit_negotiated: bool = False      # both sides grease the QUIC bit (RFC 9287)
    ecn_capable: bool = False                # the path carries ECN marks
    encryption_offloaded: bool = False
    timing_start_us: int = 0
    timing_initial_flight_end_us: int = 0    # all of the peer's Initial packets processed
    timing_handshake_flight_end_us: int = 0  # all of the peer's Handshake packets processed
    handshake_client_flight1_bytes: int = 0  # TLS bytes of each handshake flight
    handshake_server_flight1_bytes: int = 0
    handshake_client_flight2_bytes: int = 0
    packets_retransmittable: int = 0         # sent packets that carried retransmittable frames
    packets_spurious_lost: int = 0           # suspected lost, then acknowledged after all
    persistent_congestion_events: int = 0
    packets_reordered: int = 0               # received with a packet number below the highest seen
    packets_dropped: int = 0                 # received and dropped (duplicates included)
    packets_duplicate: int = 0
    decryption_failures: int = 0
    ack_frames_received: int = 0
    key_updates: int = 0
    dest_cid_updates: int = 0                # times the destination connection id changed
    ecn_congestion_events: int = 0           # congestion events caused by ECN marks
    handshake_hop_limit_ttl: int = 0         # TTL / hop limit of the handshake's first packet


class ConnectionCore(ResumptionMixin, Generic[S]):
    """What a connection is and does without waiting; see the module docstring."""

    #: The world's stream class, for the streams this connection hands out.
    _stream_class: type[S]

    def __init__(self, native: Any, registration: Registration, configuration: Configuration) -> None:
        # Internal: wrap a pmq_conn * whose Python reference we now own.
        self._conn = native
        self._native_obj = lib.pmq_conn_obj(native)
        self.registration = registration
        self.configuration = configuration
        self._released = False
        #: Seconds :meth:`close` waits for data to be delivered and the shutdown
        #: to complete before it cuts the connection off (``close_timeout=`` of
        #: ``connect``/``serve``).
        self.close_timeout: float = 5.0
        self.id = next(_connection_ids)
        #: This connection's logger: "pymsquic", with ``[conn <id>]`` in front.
        self.logger = ConnectionLogger(logger, {"connection_id": self.id})
        registration._track_connection(self)

    def __del__(self) -> None:
        # close() only abandons; the native struct goes with the Python object.
        if hasattr(self, "_conn"):
            registration = getattr(self, "registration", None)  # None if __init__ failed early
            if registration is not None:
                registration._forget_connection(self)
            _native.release_now_or_later(lib.pmq_conn_release, self._conn)

    # ---- client ----------------------------------------------------------------

    @classmethod
    def _open_client(cls, configuration: Configuration, keylog_file: KeyLogLike | None = None) -> Self:
        """A new, unstarted client connection of this class; its TLS secrets go to
        ``keylog_file`` (else ``SSLKEYLOGFILE``'s file, see :mod:`pymsquic.keylog`)."""
        if not isinstance(configuration, Configuration):
            raise TypeError(f"configuration must be a Configuration, not {type(configuration).__name__}")
        if not configuration.credential.is_client:
            raise ValueError("a client connection needs a Credential.client(...) configuration")
        registration = configuration.registration
        out = _native.scratch.conn
        status = lib.pmq_conn_open(registration.handle, out)
        native = out[0]  # at once: any Python call in between may reuse this thread's scratch
        _native.check(status, "ConnectionOpen")
        conn = cls(native, registration, configuration)
        # Not started yet: recorded here, applied by msquic's worker at CONNECTED.
        lib.pmq_conn_set_stream_scheduling(conn._conn, configuration.settings.stream_scheduling_scheme)
        lib.pmq_conn_set_cert_check(conn._conn, configuration.credential.cert_check_mode)
        conn._set_keylog(keylog_file)
        return conn

    def _start(self, host: str, port: int, server_name: str | None, remote: Any, defer: bool = False) -> None:
        """Start the handshake. With ``remote`` None, ``host`` is an IP literal that
        msquic takes as the address (and sends no SNI): this never blocks.
        ``defer`` (an early-data client): everything but msquic's ConnectionStart,
        which :meth:`_start_deferred` (or a stream's first read) makes."""
        sni = server_name or host
        name = sni.encode() if is_ip_literal(sni) else sni.encode("idna")
        self._sni = name.decode("ascii")  # the name sent (IDNA): what the certificate's SANs hold
        start = lib.pmq_conn_start_early if defer else lib.pmq_conn_start
        if defer:  # listed first: a Configuration.close() from now on starts us before it releases
            self.configuration._defer_start(self, True)
            self._start_listed = True
        status = start(self._conn, self.configuration.handle, remote if remote is not None else ffi.NULL, name, port)
        if failed(status):
            self._start_deferred()  # leaves the list (nothing deferred to start)
            raise QuicError("ConnectionStart failed", status)

    _start_listed = False  # in the configuration's deferred starts (see _start_deferred)

    def _start_deferred(self) -> None:
        """An early-data client's deferred start (see ``connect``), now: never
        blocks, does nothing once started (a stream's first read starts it in C)."""
        if not self._start_listed:
            # Never deferred, or started: every sync wait, send_datagram and stats()
            # comes here, so no native call for what has nothing to start.
            return
        # Started (or waited for another thread's start) before leaving the set:
        # a Configuration.close() meanwhile must not release the handle first.
        status = lib.pmq_conn_start_deferred(self._conn)
        if self._start_listed:  # once: every sync wait comes here
            self._start_listed = False
            self.configuration._defer_start(self, False)
        if failed(status):  # the connection is closed now: its waits say so
            self.logger.warning("ConnectionStart failed: %s", QuicError("ConnectionStart failed", status))

    def _log_connected(self) -> None:
        self._report_keylog()
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("handshake done: %s, alpn %s", self.remote_address, self.alpn)

    # ---- state -------------------------------------------------------------

    def _flags(self) -> int:
        return lib.pmq_conn_flags(self._conn)

    def _refresh(self) -> Any:
        info = _native.scratch.conn_info  # read at once by the caller, on this thread
        lib.pmq_conn_get_info(self._conn, info)
        return info

    @property
    def is_connected(self) -> bool:
        """True once the handshake completed and until shutdown began."""
        flags = self._flags()
        return bool(flags & lib.PMQ_CONN_CONNECTED) and not flags & _SHUTTING_DOWN

    @property
    def accepted_early(self) -> bool:
        """Server: True if the listener handed this connection over before its
        handshake completed, because a 0-RTT request arrived (see
        :class:`~pymsquic.asyncio.Listener`). Until :attr:`is_connected`, the
        handshake may still fail: ``wait_handshake()`` tells."""
        return bool(self._flags() & lib.PMQ_CONN_ACCEPTED_EARLY)

    @property
    def is_closed(self) -> bool:
        """True once msquic finished the shutdown and released the connection."""
        return bool(self._flags() & lib.PMQ_CONN_SHUTDOWN_COMPLETE)

    @property
    def remote_address(self) -> Address | None:
        return from_native(self._refresh().remote)

    @property
    def local_address(self) -> Address | None:
        return from_native(self._refresh().local)

    @property
    def server_name(self) -> str | None:
        """The SNI the client sent (server side); None if it sent none, as clients
        connecting to an IP literal usually do (RFC 6066; msquic clients send it anyway).
        Like :attr:`alpn`, it stays readable after the connection closed."""
        info = self._refresh()
        if not info.server_name_len:
            return None
        return bytes(ffi.buffer(info.server_name, info.server_name_len)).decode("utf-8", "surrogateescape")

    @property
    def alpn(self) -> str | None:
        """The negotiated ALPN id, once connected."""
        info = self._refresh()
        if not info.alpn_len:
            return None
        return bytes(ffi.buffer(info.alpn, info.alpn_len)).decode("utf-8", "surrogateescape")

    @property
    def client_alpns(self) -> tuple[str, ...]:
        """The ALPN ids the client offered (server side)."""
        info = self._refresh()
        return decode_alpns(bytes(ffi.buffer(info.client_alpn, info.client_alpn_len)))

    @property
    def close_reason(self) -> ConnectionClosed | None:
        """How the connection ended (or is ending), or None while it is up."""
        info = self._refresh()
        flags = info.flags
        if flags & lib.PMQ_CONN_REGISTRATION_CLOSED:  # first, whatever the peer did after it
            return ConnectionClosed("closed locally: its registration was closed", by_app=True, error_code=0)
        if flags & lib.PMQ_CONN_SHUTDOWN_BY_PEER:
            return ConnectionClosed(f"closed by peer with application error {info.error_code}",
                                    by_peer=True, error_code=info.error_code)
        if flags & lib.PMQ_CONN_SHUTDOWN_BY_TRANSPORT:
            return transport_closed(info.transport_status, info.error_code)
        if flags & lib.PMQ_CONN_SHUTDOWN_BY_APP:
            return ConnectionClosed(f"closed locally with application error {info.local_error_code}",
                                    by_app=True, error_code=info.local_error_code)
        if flags & lib.PMQ_CONN_SHUTDOWN_COMPLETE:
            return ConnectionClosed("connection closed")
        return None

    @property
    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER), as seen during the handshake: the server's on a
        client, a client certificate on a server that required one."""
        n = lib.pmq_conn_peer_certificate(self._conn, ffi.NULL, 0)
        if not n:
            return None
        buf = ffi.new("uint8_t[]", n)
        lib.pmq_conn_peer_certificate(self._conn, buf, n)
        return ffi.buffer(buf, n)[:]

    def stats(self) -> ConnectionStats:
        """msquic's counters for this connection (RTT, bytes, packets, losses):
        every field of QUIC_STATISTICS_V2, see :class:`ConnectionStats`.

        Asks msquic's worker and waits for its answer, briefly. Once closed, the
        final numbers, taken as msquic finished the connection (no traffic for
        one closed before it started: msquic finishes those too);
        ConnectionClosed while it is not started yet, or if msquic left none.
        An early-data client whose start is still deferred (see ``connect``)
        starts first."""
        _native.forbid_in_callback("Connection.stats()")
        self._start_deferred()  # an early-data client asking: it is meant to be running
        out = ffi.new("pmq_conn_stats_v2 *")
        status = lib.pmq_conn_get_stats_v2(self._conn, out)
        if failed(status):
            raise self._closed_error()
        values: dict[str, Any] = {name: kind(getattr(out, name)) for name, kind in _STATS_FIELDS}
        return ConnectionStats(**values)

    def read_settings(self, *, only_set: bool = False) -> Settings:
        """msquic's view of the settings this connection runs with
        (QUIC_PARAM_CONN_SETTINGS), as :meth:`Configuration.read_settings`
        (``versions`` stays None: :attr:`quic_version` is the one negotiated).
        Asks msquic's worker and waits for its answer, briefly;
        ConnectionClosed once the connection is closed."""
        _native.forbid_in_callback("Connection.read_settings()")
        self._start_deferred()
        out = ffi.new("pmq_settings *")
        status = lib.pmq_conn_get_settings(self._conn, out)
        if failed(status):
            raise self._closed_error() if status == lib.QUIC_STATUS_INVALID_STATE else \
                QuicError("reading the connection's settings failed", status)
        return Settings._from_native(out, only_set)

    @property
    def stream_scheduling(self) -> str:
        """How this connection shares sending between its streams: ``"round_robin"``
        (the default, from ``Settings.stream_scheduling``) or ``"fifo"``.
        Setting it waits briefly for msquic's worker; it applies at once."""
        return "round_robin" if lib.pmq_conn_stream_scheduling(self._conn) == lib.PMQ_SCHEDULING_ROUND_ROBIN \
            else "fifo"

    @stream_scheduling.setter
    def stream_scheduling(self, scheme: str) -> None:
        if not isinstance(scheme, str):
            raise TypeError(f"stream_scheduling must be a str, not {type(scheme).__name__}")
        if scheme not in STREAM_SCHEDULING:
            raise ValueError(f"stream_scheduling must be one of {sorted(STREAM_SCHEDULING)}, not {scheme!r}")
        _native.forbid_in_callback("setting Connection.stream_scheduling")
        status = lib.pmq_conn_set_stream_scheduling(self._conn, STREAM_SCHEDULING[scheme])
        if failed(status):
            raise self._closed_error() if status == lib.QUIC_STATUS_INVALID_STATE else \
                QuicError("setting the stream scheduling scheme failed", status)

    def _registration_closed(self) -> ConnectionClosed | None:
        """Why everything on this connection fails, if its registration was closed here."""
        return self.close_reason if self._flags() & lib.PMQ_CONN_REGISTRATION_CLOSED else None

    def _closed_error(self) -> ConnectionClosed:
        return self.close_reason or ConnectionClosed("connection is closed")

    # ---- streams ---------------------------------------------------------------

    def _closed_cleanly(self, exc: ConnectionClosed) -> bool:
        """Whether iteration over incoming streams ends quietly on ``exc``: after
        a shutdown by either application with error code 0 (or by this side,
        whatever its code), not after a transport error or an idle timeout."""
        return exc.by_app or (exc.by_peer and exc.error_code == 0)

    def open_stream(self, unidirectional: bool = False, *, data: BufferLike | None = None,
                    fin: bool = False) -> S:
        """Open a stream (never waits: data written before the peer allows the
        stream is queued). :class:`~pymsquic.ConnectionClosed` once a shutdown began.

        With ``data`` (any bytes-like object) and/or ``fin``, the stream's first
        write goes with the open, in one native call: ``open_stream(data=request,
        fin=True)`` does what ``open_stream()`` then ``write(request, fin=True)``
        does, with the same errors (a bad ``data`` raises before anything
        opens), for one call into msquic's layer instead of two: the shape for a
        request."""
        out = _native.scratch.stream
        if data is None and not fin:
            status = lib.pmq_stream_open(self._conn, bool(unidirectional), out)
            native = out[0]  # at once: any Python call in between may reuse this thread's scratch
            if failed(status):
                raise self._open_failure(status)
            return self._stream_class(native, self)
        # Bad data fails here, before any stream opens (as write() would fail).
        cdata, nbytes = (ffi.NULL, 0) if data is None else c_buffer(data)
        if nbytes > _MAX_WRITE:
            raise ValueError(f"a single write takes at most {_MAX_WRITE} bytes, not {nbytes}")
        status = lib.pmq_stream_open_send(self._conn, bool(unidirectional), cdata if nbytes else ffi.NULL, nbytes,
                                          bool(fin), out)
        native = out[0]
        if native == ffi.NULL:
            raise self._open_failure(status)
        stream = self._stream_class(native, self)
        if failed(status):
            raise stream._write_failure(status)  # opened, but not written: dropped, as after a failed write()
        return stream

    def _open_failure(self, status: int) -> QuicError:
        if self.close_reason is not None:
            return self._closed_error()
        return QuicError("StreamOpen failed", status)

    def _try_accept_stream(self) -> S | None:
        """The next peer stream, None if there is none yet; ConnectionClosed once
        the connection is shutting down and none is left."""
        out = _native.scratch.stream
        result = lib.pmq_conn_accept_stream(self._conn, out)
        if result == lib.PMQ_ACCEPT_OK:
            return self._stream_class(out[0], self)
        if result == lib.PMQ_ACCEPT_EMPTY:
            return None
        raise self._closed_error()

    # ---- datagrams -----------------------------------------------------------------

    @property
    def max_datagram_size(self) -> int:
        """The largest datagram the peer accepts now; 0 if it did not enable datagrams."""
        info = self._refresh()
        return info.max_datagram_size if info.datagram_send_enabled else 0

    @property
    def datagrams_dropped(self) -> int:
        """Datagrams received but dropped because the receive queue was full."""
        return int(self._refresh().datagrams_dropped)

    def set_datagram_queue_size(self, size: int) -> None:
        """How many received datagrams wait for ``receive_datagram`` before the oldest is dropped."""
        lib.pmq_conn_set_datagram_queue(self._conn, _queue_size(size))

    @property
    def datagrams_in_flight(self) -> int:
        """Datagrams given to :meth:`send_datagram` that are not yet acknowledged or lost."""
        return int(self._refresh().datagrams_in_flight)

    def set_datagram_send_queue_size(self, size: int) -> None:
        """How many datagrams may be in flight (queued, or sent and neither acknowledged
        nor declared lost; default 256) before :meth:`send_datagram` raises
        :class:`DatagramQueueFull`. This bounds memory and the datagrams sent per
        round trip, which leaves room for stream data."""
        lib.pmq_conn_set_datagram_send_queue(self._conn, _queue_size(size))

    def send_datagram(self, data: BufferLike) -> None:
        """Send an unreliable datagram: every byte of ``data``, any bytes-like object
        (copied at once; may be empty). ValueError if larger than
        :attr:`max_datagram_size`; QuicError if the peer did not enable datagrams;
        :class:`DatagramQueueFull` while the send queue is full (see
        :meth:`set_datagram_send_queue_size`): nothing is queued then."""
        buffer, nbytes = c_buffer(data)
        self._start_deferred()  # a write: never 0-RTT, yet it needs the connection running
        info = self._refresh()
        if info.flags & (_SHUTTING_DOWN | lib.PMQ_CONN_SHUTDOWN_COMPLETE):
            raise self._closed_error()
        if not info.datagram_send_enabled:
            raise QuicError("the peer did not enable datagrams (Settings.datagram_receive_enabled)")
        if nbytes > info.max_datagram_size:
            raise ValueError(f"datagram of {nbytes} bytes: at most {info.max_datagram_size} bytes fit")
        status = lib.pmq_conn_send_datagram(self._conn, buffer, nbytes)
        if status == lib.PMQ_STATUS_DATAGRAM_QUEUE_FULL:
            raise DatagramQueueFull(f"{self.datagrams_in_flight} datagrams are in flight")
        if failed(status):
            if self.close_reason is not None:
                raise self._closed_error()
            raise QuicError("DatagramSend failed", status)

    def _try_receive_datagram(self) -> bytes | None:
        datagram = lib.pmq_conn_pop_datagram(self._conn)
        if datagram != ffi.NULL:
            try:
                return ffi.buffer(datagram.data, datagram.len)[:]
            finally:
                lib.pmq_datagram_free(datagram)
        if self._flags() & (_SHUTTING_DOWN | lib.PMQ_CONN_SHUTDOWN_COMPLETE):
            raise self._closed_error()
        return None

    # ---- waiting -------------------------------------------------------------

    def _connected_or_raise(self) -> bool | None:
        self._run_certificate_check()
        flags = self._flags()
        if flags & lib.PMQ_CONN_CONNECTED:
            return True
        if flags & (_SHUTTING_DOWN | lib.PMQ_CONN_SHUTDOWN_COMPLETE):
            reason = self.close_reason
            assert reason is not None
            raise self._certificate_rejected(reason)
        return None

    def _closed_now(self) -> bool | None:
        return True if self._flags() & lib.PMQ_CONN_SHUTDOWN_COMPLETE else None

    def _all_sent(self) -> bool | None:
        return True if lib.pmq_conn_all_sent(self._conn) else None

    # ---- closing -------------------------------------------------------------

    def shutdown(self, error_code: int = 0) -> None:
        """Start a graceful shutdown, sending ``error_code`` to the peer (a 62-bit int).

        Does not wait; see :meth:`wait_closed`. Does nothing once closed.
        """
        if isinstance(error_code, bool) or not isinstance(error_code, int):
            raise TypeError(f"error_code must be an int, not {type(error_code).__name__}")
        if not 0 <= error_code < 2**62:
            raise ValueError(f"error_code {error_code} is not a 62-bit unsigned int")
        lib.pmq_conn_shutdown(self._conn, error_code)  # a closed connection has nothing to shut down

    def _close_steps(self, error_code: int) -> Generator[Callable[[], bool | None], None, None]:
        """``close()`` in steps: yields each check the world waits for (bounded
        by ``close_timeout``; a timeout moves on). Closed early (cancelled,
        interrupted), it still shuts down with ``error_code`` and releases."""
        try:
            pending = lib.pmq_conn_start_pending(self._conn)
            if pending == lib.PMQ_START_PENDING_WITH_DATA:
                self._start_deferred()  # an early-data client's writes: deliver them, then close
            elif pending:
                return  # an early-data client never started, nothing written: nothing to send or wait for
            yield self._all_sent  # a shutdown would cut off what streams still send
            self.shutdown(error_code)
            yield self._closed_now
        finally:
            self.shutdown(error_code)  # nothing if done above: never a later 0
            self._abandon()

    def _abandon(self) -> None:
        """Shut down (if still up) and let go of the connection at once: what
        every close ends with. Never blocks; stream data not yet sent is cut off."""
        if not self._released:
            self._released = True
            lib.pmq_conn_abandon(self._conn)
            self.logger.debug("closed: %s", self.close_reason or "shutting down")
            self._report_keylog()  # what SHUTDOWN_COMPLETE failed to write (a failed handshake's secrets)

    def __repr__(self) -> str:
        if self.is_closed:
            state = "closed"
        elif self.is_connected:
            state = "connected"
        else:
            state = "connecting" if not self._flags() & _SHUTTING_DOWN else "shutting down"
        return f"<{type(self).__name__} {state} remote={self.remote_address} alpn={self.alpn}>"

    # ---- TLS key log and handshake facts (pymsquic.keylog, pymsquic.versions) ----------

    _keylog: KeyLog | None = None

    def _set_keylog(self, keylog_file: KeyLogLike | None) -> None:
        """Before the start: where this client connection's TLS secrets go."""
        try:
            log = resolve_keylog(keylog_file)  # OSError for a keylog_file that cannot be opened
            if log is None:
                return
            _native.check(lib.pmq_conn_set_keylog(self._conn, native_keylog(log)), "setting the key log")
        except BaseException:
            self._abandon()
            raise
        self._keylog = log  # keeps Python's side open as long as the connection

    @property
    def _start_blocks(self) -> bool:
        """Whether :meth:`_start` waits for a msquic worker even for an IP literal
        (a key log is handed to msquic before the start)."""
        return self._keylog is not None

    def _report_keylog(self) -> None:
        if self._keylog is not None:
            self._keylog._report_failures()

    @property
    def handshake_info(self) -> HandshakeInfo | None:
        """What the handshake settled: QUIC version, TLS version, cipher suite and
        key exchange group (:class:`~pymsquic.HandshakeInfo`), copied by msquic's
        worker when the handshake completed; None before (and if it never did)."""
        out = ffi.new("pmq_handshake_info *")
        lib.pmq_conn_get_handshake_info(self._conn, out)
        return HandshakeInfo._from_native(out)

    @property
    def quic_version(self) -> int | None:
        """The negotiated QUIC version (:data:`~pymsquic.QUIC_V1`, :data:`~pymsquic.QUIC_V2`),
        None before the handshake completed."""
        info = self.handshake_info
        return None if info is None else info.quic_version


    # ---- certificate checks in Python (pymsquic._core.certificates) ------------

    _sni: str | None = None
    _certificate_refusal: Refusal | None = None

    def _run_certificate_check(self) -> None:
        """Runs the credential's ``verify`` callable on a check msquic deferred (client)."""
        taken = ffi.new("pmq_cert_taken *")
        if lib.pmq_conn_cert_take(self._conn, taken):
            try:
                verify = self.configuration.credential.verify
                self._certificate_refusal = run_check(self._conn, taken, verify, self._sni, self.logger)
            finally:  # completed even if something raised before run_check (a no-op once it did)
                lib.pmq_cert_taken_clear(taken)
                lib.pmq_conn_cert_complete(self._conn, False, BAD_CERTIFICATE)

    def _certificate_rejected(self, reason: ConnectionClosed) -> ConnectionClosed:
        """The handshake error to raise: says so when our own check rejected the certificate."""
        if self._certificate_refusal is None or not isinstance(reason, HandshakeError):
            return reason
        error = HandshakeError(f"the server's certificate was rejected: {self._certificate_refusal.reason}",
                               status=reason.status, by_transport=reason.by_transport, error_code=reason.error_code)
        error.__cause__ = self._certificate_refusal.error  # what the callable raised, if it did
        return error

    # ---- addresses, migration, DSCP (native/transport.c) ------------------------

    def _set_local_address(self, local_addr: AddressLike) -> None:
        """QUIC_PARAM_CONN_LOCAL_ADDRESS before the start: the address the client
        sends from. Waits for msquic's worker, briefly. (Set on a live connection
        it would migrate, which msquic 2.5.1 can abort on: not offered.)"""
        status = lib.pmq_conn_set_local_address(self._conn, local_address_native(local_addr))
        if failed(status):
            if self.close_reason is not None:
                raise self._closed_error()
            raise QuicError(f"setting the local address to {local_addr!r} failed", status)

    @property
    def peer_address_changes(self) -> int:
        """How often the peer's address changed (NAT rebinding, or the peer
        migrated): msquic validated the new path and moved the connection to it.
        :attr:`remote_address` is the newest one; ``wait_peer_address_change``
        waits for the next."""
        count = int(self._refresh().peer_address_changes)
        self._log_address_changes(count)
        return count

    @property
    def dscp(self) -> int:
        """The DSCP value (0-63) of the packets this connection sends
        (QUIC_PARAM_CONN_SEND_DSCP; 0 by default). Setting it waits briefly
        for msquic's worker and applies to the next packets."""
        _native.forbid_in_callback("Connection.dscp")
        value = ffi.new("uint8_t *")
        status = lib.pmq_conn_dscp(self._conn, 0, value)
        if failed(status):
            raise self._closed_error()
        return int(value[0])

    @dscp.setter
    def dscp(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"dscp must be an int, not {type(value).__name__}")
        if not 0 <= value <= 63:
            raise ValueError(f"dscp must be 0-63, not {value}")
        _native.forbid_in_callback("setting Connection.dscp")
        status = lib.pmq_conn_dscp(self._conn, 1, ffi.new("uint8_t *", value))
        if failed(status):
            raise self._closed_error() if self.close_reason is not None else \
                QuicError("setting the DSCP value failed", status)

    def _peer_address_changed(self, seen: int) -> Address | None:
        """The wait check of ``wait_peer_address_change``: the remote address once
        more than ``seen`` changes happened; ConnectionClosed once closed."""
        info = self._refresh()
        count = int(info.peer_address_changes)
        if count > seen:
            self._log_address_changes(count)
            return from_native(info.remote)
        if info.flags & (_SHUTTING_DOWN | lib.PMQ_CONN_SHUTDOWN_COMPLETE):
            raise self._closed_error()
        return None

    def _log_address_changes(self, count: int) -> None:
        # Logged by whoever notices first, in Python: msquic's thread never runs Python.
        if count > getattr(self, "_address_changes_logged", 0):
            self._address_changes_logged = count
            self.logger.info("peer address changed to %s (change %d)", self.remote_address, count)


def local_address_native(local_addr: AddressLike) -> Any:
    """A client's local address (IP literal and port) as a pmq_addr; no DNS."""
    host, port = split_host_port(local_addr)
    if host is None or not is_ip_literal(host):
        raise ValueError(f"local_addr must be (ip, port) with an IP address, not {local_addr!r}")
    return resolve(host, port)


# ConnectionStats field -> its type (bool or int), read from pmq_conn_stats_v2 by name.
_STATS_FIELDS = tuple((f.name, bool if f.default is False else int) for f in dataclasses.fields(ConnectionStats))

_SHUTTING_DOWN = lib.PMQ_CONN_SHUTDOWN_BY_PEER | lib.PMQ_CONN_SHUTDOWN_BY_TRANSPORT | lib.PMQ_CONN_SHUTDOWN_BY_APP


def exit_error_code(exc_type: type | None) -> int:
    """The code a connection closes with when its owner exits, normally or by an exception."""
    return 0 if exc_type is None else EXCEPTION_ERROR_CODE


def _queue_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1 << 20:
        raise ValueError(f"size must be an int from 1 to {1 << 20}, not {size!r}")
    return size


def check_endpoint(host: str, port: int) -> None:
    if not isinstance(host, str) or not host:
        raise TypeError(f"host must be a non-empty str, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 < port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
