"""Connection: a QUIC connection, accepted by a Listener or opened as a client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any, AsyncIterator, Callable, Iterator, Union

from . import _native
from ._bridge import NativeWaitable
from ._buffers import BufferLike, c_buffer
from ._msquic import ffi, lib
from .addresses import Address, from_native, is_ip_literal, resolve, resolve_async
from .configuration import STREAM_SCHEDULING, Configuration, decode_alpns
from .errors import EXCEPTION_ERROR_CODE, ConnectionClosed, DatagramQueueFull, QuicError, failed, transport_closed
from .registration import Registration
from .stream import BlockingStream, Stream, StreamProtocol

AnyStream = Union[Stream, BlockingStream]


@dataclasses.dataclass(frozen=True)
class ConnectionStats:
    """Counters msquic keeps for a connection (``Connection.stats()``)."""

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


class Connection(NativeWaitable):
    """A QUIC connection.

    Server side, :meth:`Listener.accept` returns connections whose handshake is
    complete. Client side, :meth:`connect` / :meth:`connect_async` open one and
    wait for the handshake. The handle is released by msquic's own shutdown: call
    :meth:`shutdown` or :meth:`close` (or use ``with``/``async with``).

    A connection made by a blocking call (``connect``, ``Listener.accept``) hands
    out :class:`BlockingStream` objects; one made by an asyncio call hands out
    :class:`Stream` objects. ``open_stream(blocking=...)`` overrides that.

    Only the first shutdown (:meth:`shutdown`, :meth:`close`, a graceful close,
    ``Registration.close()``) reaches the wire: its error code is the one the
    peer sees. Leaving ``with``/``async with`` by an exception closes with
    :data:`~pymsquic.EXCEPTION_ERROR_CODE` instead of 0.
    """

    def __init__(self, native: Any, registration: Registration, configuration: Configuration,
                 blocking: bool = False) -> None:
        # Internal: wrap a pmq_conn * whose Python reference we now own.
        self._conn = native
        self._init_waitable(lib.pmq_conn_obj(native))
        self.registration = registration
        self.configuration = configuration
        self.blocking = blocking
        self._closed = False
        self._stream_protocol: Callable[[], StreamProtocol] | None = None
        self._protocol_streams: set[Stream] = set()  # streams run by protocols, until connection_lost
        registration._track_connection(self)

    def __del__(self) -> None:
        # close() only abandons; the native struct goes with the Python object.
        if hasattr(self, "_conn"):
            self._forget_bridge()
            registration = getattr(self, "registration", None)  # None if __init__ failed early
            if registration is not None:
                registration._forget_connection(self)
            _native.release_now_or_later(lib.pmq_conn_release, self._conn)

    # ---- client ----------------------------------------------------------

    @classmethod
    def connect(cls, registration: Registration, configuration: Configuration, host: str, port: int, *,
                server_name: str | None = None, timeout: float | None = None) -> "Connection":
        """Open a connection to ``host:port`` and wait for its handshake (blocking).

        ``server_name`` (SNI, and the name the certificate must carry) defaults
        to ``host``. Raises ConnectionClosed if the handshake fails (refused,
        ALPN mismatch, bad certificate, timeout) and TimeoutError after ``timeout``.
        """
        _native.forbid_in_callback("Connection.connect()")
        _check_endpoint(host, port)
        conn = cls._open(registration, configuration, blocking=True)
        try:
            direct = is_ip_literal(host) and server_name in (None, host)
            conn._start(configuration, host, port, server_name, None if direct else resolve(host, port))
            conn.wait_connected(timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    async def connect_async(cls, registration: Registration, configuration: Configuration, host: str,
                            port: int, *, server_name: str | None = None,
                            timeout: float | None = None) -> "Connection":
        """Like :meth:`connect`, for asyncio: never blocks the event loop."""
        _check_endpoint(host, port)
        conn = cls._open(registration, configuration, blocking=False)
        try:
            if is_ip_literal(host) and server_name in (None, host):
                conn._start(configuration, host, port, server_name, None)  # non-blocking
            else:
                remote = await resolve_async(host, port)
                # Setting the address waits for a msquic worker: not on the loop's thread.
                await asyncio.get_running_loop().run_in_executor(None, conn._start, configuration, host, port,
                                                                 server_name, remote)
            await conn.wait_connected_async(timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def _open(cls, registration: Registration, configuration: Configuration, blocking: bool) -> "Connection":
        if not isinstance(configuration, Configuration):
            raise TypeError(f"configuration must be a Configuration, not {type(configuration).__name__}")
        if not configuration.credential.is_client:
            raise ValueError("a client connection needs a Credential.client(...) configuration")
        out = _native.scratch.conn
        status = lib.pmq_conn_open(registration.handle, out)
        native = out[0]  # at once: any Python call in between may reuse this thread's scratch
        _native.check(status, "ConnectionOpen")
        conn = cls(native, registration, configuration, blocking)
        # Not started yet: recorded here, applied by msquic's worker at CONNECTED.
        lib.pmq_conn_set_stream_scheduling(conn._conn, configuration.settings.stream_scheduling_scheme)
        return conn

    def _start(self, configuration: Configuration, host: str, port: int, server_name: str | None,
               remote: Any) -> None:
        """Start the handshake. With ``remote`` None, ``host`` is an IP literal that
        msquic takes as the address (and sends no SNI): this never blocks."""
        sni = server_name or host
        name = sni.encode() if is_ip_literal(sni) else sni.encode("idna")
        status = lib.pmq_conn_start(self._conn, configuration.handle, remote if remote is not None else ffi.NULL,
                                    name, port)
        if failed(status):
            raise QuicError("ConnectionStart failed", status)

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
        """msquic's counters for this connection (RTT, bytes, packets, losses).

        Asks msquic's worker and waits for its answer, briefly."""
        _native.forbid_in_callback("Connection.stats()")
        out = ffi.new("pmq_conn_stats *")
        status = lib.pmq_conn_get_stats(self._conn, out)
        if failed(status):
            raise self._closed_error()
        return ConnectionStats(**{f.name: getattr(out, f.name) for f in dataclasses.fields(ConnectionStats)})

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

    def _wrap_stream(self, native: Any, blocking: bool) -> AnyStream:
        return (BlockingStream if blocking else Stream)(native, self)

    def open_stream(self, unidirectional: bool = False, *, blocking: bool | None = None) -> AnyStream:
        """Open a stream (never blocks: data written before the peer allows the
        stream is queued). Returns a BlockingStream on a blocking connection,
        else a Stream, unless ``blocking`` says otherwise. ConnectionClosed once
        a shutdown began (:meth:`shutdown`, :meth:`close`, the peer)."""
        out = _native.scratch.stream
        status = lib.pmq_stream_open(self._conn, bool(unidirectional), out)
        native = out[0]  # at once: any Python call in between may reuse this thread's scratch
        if failed(status):
            if self.close_reason is not None:
                raise self._closed_error()
            raise QuicError("StreamOpen failed", status)
        return self._wrap_stream(native, self.blocking if blocking is None else blocking)

    def _try_accept_stream(self, blocking: bool) -> AnyStream | None:
        out = _native.scratch.stream
        result = lib.pmq_conn_accept_stream(self._conn, out)
        if result == lib.PMQ_ACCEPT_OK:
            return self._wrap_stream(out[0], blocking)
        if result == lib.PMQ_ACCEPT_EMPTY:
            return None
        raise self._closed_error()

    def accept_stream(self, timeout: float | None = None) -> BlockingStream:
        """Wait for the next stream the peer opens (blocking). ConnectionClosed once
        the connection is shutting down and no stream is left."""
        return _native.wait_blocking(self._native_obj, lambda: self._try_accept_stream(True), timeout,
                                     "accept_stream()")  # type: ignore[return-value]

    async def accept_stream_async(self, timeout: float | None = None) -> Stream:
        """asyncio :meth:`accept_stream`. Cancelling it never loses a stream."""
        stream = self._try_accept_stream(False)
        if stream is None:
            stream = await self._wait_async(lambda: self._try_accept_stream(False), timeout, "accept_stream_async()")
        return stream  # type: ignore[return-value]

    def __iter__(self) -> Iterator[BlockingStream]:
        """Peer streams, blocking, until the connection closes."""
        while True:
            try:
                yield self.accept_stream()
            except ConnectionClosed:
                return

    def set_stream_protocol(self, factory: "Callable[[], StreamProtocol]") -> None:
        """Handle the streams the peer opens with callbacks instead of tasks: each gets
        ``factory()``, a :class:`StreamProtocol` run on this event loop. Cheaper per
        stream than ``async for stream in conn`` when there are many small ones."""
        self._stream_protocol = factory
        self._attach_to_running_loop()
        self._native_changed()

    def _native_changed(self) -> None:
        factory = self._stream_protocol
        if factory is not None:
            while True:
                try:
                    stream = self._try_accept_stream(False)
                except ConnectionClosed:
                    break
                if stream is None:
                    break
                stream._set_protocol(factory())  # type: ignore[union-attr]
        if self._waiters:
            self._wake_waiters()

    def __aiter__(self) -> AsyncIterator[Stream]:
        return self

    async def __anext__(self) -> Stream:
        try:
            return await self.accept_stream_async()
        except ConnectionClosed:
            raise StopAsyncIteration from None

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

    def receive_datagram(self, timeout: float | None = None) -> bytes:
        """The oldest received datagram (blocking)."""
        return _native.wait_blocking(self._native_obj, self._try_receive_datagram, timeout, "receive_datagram()")

    async def receive_datagram_async(self, timeout: float | None = None) -> bytes:
        """asyncio :meth:`receive_datagram`."""
        return await self._wait_async(self._try_receive_datagram, timeout, "receive_datagram_async()")

    # ---- waiting -------------------------------------------------------------

    def _connected_or_raise(self) -> bool | None:
        flags = self._flags()
        if flags & lib.PMQ_CONN_CONNECTED:
            return True
        if flags & (_SHUTTING_DOWN | lib.PMQ_CONN_SHUTDOWN_COMPLETE):
            reason = self.close_reason
            assert reason is not None
            raise reason
        return None

    def _closed_now(self) -> bool | None:
        return True if self._flags() & lib.PMQ_CONN_SHUTDOWN_COMPLETE else None

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until the handshake completes; ConnectionClosed if it fails."""
        _native.wait_blocking(self._native_obj, self._connected_or_raise, timeout, "wait_connected()")

    async def wait_connected_async(self, timeout: float | None = None) -> None:
        """Wait until the handshake completes; ConnectionClosed if it fails."""
        await self._wait_async(self._connected_or_raise, timeout, "wait_connected_async()")

    def _all_sent(self) -> bool | None:
        return True if lib.pmq_conn_all_sent(self._conn) else None

    def wait_sent(self, timeout: float | None = None) -> None:
        """Block until every stream has finished sending (FIN or reset acknowledged).

        Shutting a connection down ends its streams at once; wait here first
        so that a response written just before is not cut off."""
        _native.wait_blocking(self._native_obj, self._all_sent, timeout, "wait_sent()")

    async def wait_sent_async(self, timeout: float | None = None) -> None:
        """asyncio :meth:`wait_sent`."""
        await self._wait_async(self._all_sent, timeout, "wait_sent_async()")

    def wait_closed(self, timeout: float | None = None) -> None:
        """Block until msquic finished shutting the connection down."""
        _native.wait_blocking(self._native_obj, self._closed_now, timeout, "wait_closed()")

    async def wait_closed_async(self, timeout: float | None = None) -> None:
        """Wait until msquic finished shutting the connection down."""
        await self._wait_async(self._closed_now, timeout, "wait_closed_async()")

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

    def close(self) -> None:
        """Shut down (if still up) and release the connection at once. Does not
        block; stream data not yet sent is cut off (see :meth:`close_gracefully`)."""
        if not self._closed:
            self._closed = True
            lib.pmq_conn_abandon(self._conn)

    def close_gracefully(self, linger: float = 5.0, error_code: int = 0) -> None:
        """Let streams finish sending, shut down with ``error_code`` (unless a
        shutdown came first), wait for msquic to finish, release. Each wait is
        bounded by ``linger`` seconds. Blocking. Interrupted (Ctrl-C), it still
        shuts down with ``error_code`` and releases the connection."""
        try:
            with contextlib.suppress(TimeoutError):
                self.wait_sent(linger)
            self.shutdown(error_code)
            with contextlib.suppress(TimeoutError):
                self.wait_closed(linger)
        finally:
            self.shutdown(error_code)  # nothing if done above; never a later 0 (item 5)
            self.close()

    async def close_gracefully_async(self, linger: float = 5.0, error_code: int = 0) -> None:
        """asyncio :meth:`close_gracefully`. Cancelled, it still shuts down with
        ``error_code`` and releases the connection."""
        try:
            with contextlib.suppress(TimeoutError):
                if self._all_sent() is None:  # no waiting machinery when nothing is left to send
                    await self.wait_sent_async(linger)
            self.shutdown(error_code)
            with contextlib.suppress(TimeoutError):
                if self._closed_now() is None:
                    await self.wait_closed_async(linger)
        finally:
            self.shutdown(error_code)  # nothing if done above; never a later 0 (item 5)
            self.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        """Close gracefully: with 0, or EXCEPTION_ERROR_CODE when leaving by an exception."""
        self.close_gracefully(error_code=exit_error_code(exc_type))

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, exc_type: type | None, *exc: object) -> None:
        """Close gracefully: with 0, or EXCEPTION_ERROR_CODE when leaving by an exception."""
        await self.close_gracefully_async(error_code=exit_error_code(exc_type))

    def __repr__(self) -> str:
        if self.is_closed:
            state = "closed"
        elif self.is_connected:
            state = "connected"
        else:
            state = "connecting" if not self._flags() & _SHUTTING_DOWN else "shutting down"
        return f"<Connection {state} remote={self.remote_address} alpn={self.alpn}>"


_SHUTTING_DOWN = lib.PMQ_CONN_SHUTDOWN_BY_PEER | lib.PMQ_CONN_SHUTDOWN_BY_TRANSPORT | lib.PMQ_CONN_SHUTDOWN_BY_APP


def exit_error_code(exc_type: type | None) -> int:
    """The code a connection closes with when its owner exits, normally or by an exception."""
    return 0 if exc_type is None else EXCEPTION_ERROR_CODE


def _queue_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1 << 20:
        raise ValueError(f"size must be an int from 1 to {1 << 20}, not {size!r}")
    return size



def _check_endpoint(host: str, port: int) -> None:
    if not isinstance(host, str) or not host:
        raise TypeError(f"host must be a non-empty str, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 < port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
