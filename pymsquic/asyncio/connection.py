"""asyncio connections: :class:`Connection` and :func:`connect`.

Everything but the waiting is in :class:`pymsquic._core.connection.ConnectionCore`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Generator, TypeVar

from .._buffers import BufferLike
from .._core.connection import ConnectionCore, check_endpoint, exit_error_code, local_address_native
from .._core.server import client_configuration
from .._native import loop_mode
from ..addresses import Address, AddressLike, from_native, is_ip_literal, resolve_async
from ..configuration import AlpnLike, Configuration, Credential, Settings
from ..errors import EXCEPTION_ERROR_CODE, ConnectionClosed
from ..keylog import KeyLogLike
from ..registration import Registration
from ..resumption import SessionTicketHandler, check_resumption_args
from .bridge import NativeWaitable, bridge_for
from .stream import Stream, StreamProtocol, StreamProtocolFactory

if TYPE_CHECKING:
    from typing_extensions import Self

P = TypeVar("P", bound=StreamProtocol)

#: How long :func:`connect` waits for the handshake by default, as websockets does.
DEFAULT_OPEN_TIMEOUT = 10.0


class Connection(ConnectionCore[Stream], NativeWaitable):
    """A QUIC connection for asyncio.

    :func:`connect` opens one; a server's handler (:func:`serve`) or
    :meth:`Listener.accept` gets one whose handshake is complete (or, with
    0-RTT, one whose early request arrived: :attr:`accepted_early`). Streams:
    :meth:`open_stream`, :meth:`accept_stream` or ``async for stream in
    connection``, or :meth:`set_stream_protocol` and :meth:`create_stream` for
    callbacks. Datagrams: :meth:`send_datagram`, :meth:`receive_datagram`.

    :meth:`shutdown` starts a shutdown; ``await close()`` lets streams finish
    sending, shuts down and waits (up to :attr:`close_timeout` seconds), then
    releases the connection; ``async with`` does that on the way out. Only the
    first shutdown reaches the wire: its error code is the one the peer sees.
    Leaving ``async with`` by an exception closes with
    :data:`~pymsquic.EXCEPTION_ERROR_CODE` instead of 0. Cancelling any wait
    loses nothing (a stream or datagram not returned stays queued).
    """

    _stream_class = Stream
    _stream_protocol: StreamProtocolFactory | None = None
    _protocol_streams: set[Stream]  # streams run by protocols, until connection_lost (_keep_protocol_streams)
    _peer_address_callback: Callable[[Address], object] | None = None
    _peer_address_seen = 0  # changes the callback was run for

    # ---- streams ---------------------------------------------------------------

    async def accept_stream(self) -> Stream:
        """The next stream the peer opens. :class:`~pymsquic.ConnectionClosed`
        once the connection is shutting down and no stream is left."""
        stream = self._try_accept_stream()
        if stream is None:
            stream = await self._wait(self._try_accept_stream, "accept_stream()")
        return stream

    def __aiter__(self) -> AsyncIterator[Stream]:
        return self

    async def __anext__(self) -> Stream:
        """The next peer stream. The iteration ends once the connection is closed
        cleanly (error code 0 from the peer, or closed here); it raises the
        :class:`~pymsquic.ConnectionClosed` of a transport error or idle timeout."""
        try:
            return await self.accept_stream()
        except ConnectionClosed as exc:
            if self._closed_cleanly(exc):
                raise StopAsyncIteration from None
            raise

    def set_stream_protocol(self, factory: StreamProtocolFactory) -> None:
        """Handle the streams the peer opens with callbacks instead of tasks: each
        gets ``factory()``, a :class:`StreamProtocol` run on this event loop.
        Cheaper per stream than ``async for stream in connection`` when there are
        many small ones. Call it from a coroutine on the connection's loop."""
        self._keep_protocol_streams()
        self._stream_protocol = factory
        self._attach_to_running_loop()
        self._native_changed()

    def create_stream(self, protocol_factory: Callable[[], P], unidirectional: bool = False, *,
                      data: BufferLike | None = None, fin: bool = False) -> tuple[Stream, P]:
        """Open a stream run by a protocol, as ``loop.create_connection()`` does
        for a connection: ``protocol_factory()`` (a :class:`StreamProtocol`) gets
        ``connection_made(stream)``, then ``data_received``, ``eof_received``
        and ``connection_lost`` on this event loop, with no task or future per
        stream. ``data`` and ``fin`` go with the open in one native call, as in
        :meth:`open_stream`, whose errors it raises (the factory runs first: if
        it raises, nothing opens). Returns ``(stream, protocol)``. A
        unidirectional stream of ours receives nothing: its ``eof_received``
        comes at once. Call it from the connection's loop."""
        # RuntimeError off the loop, or (loop mode) on a loop that may not drive
        # msquic, before anything opens: the request must not go out unowned.
        bridge_for(asyncio.get_running_loop())
        protocol = protocol_factory()
        stream = self.open_stream(unidirectional, data=data, fin=fin)
        self._keep_protocol_streams()
        stream._set_protocol(protocol)
        return stream, protocol

    def _keep_protocol_streams(self) -> None:
        # Streams run by protocols are held here until connection_lost: nothing else does.
        if not hasattr(self, "_protocol_streams"):
            self._protocol_streams = set()

    def _native_changed(self) -> None:
        if self._peer_address_callback is not None:
            self._run_peer_address_callback()
        self._deliver_tickets()  # on_session_ticket, on this loop
        factory = self._stream_protocol
        if factory is not None:
            while True:
                try:
                    stream = self._try_accept_stream()
                except ConnectionClosed:
                    break
                if stream is None:
                    break
                try:
                    stream._set_protocol(factory())
                except Exception as exc:
                    # As asyncio's servers when a protocol factory fails: report it, end
                    # this stream and serve the others (raised, they would wait here
                    # for the connection's next event, which may never come).
                    stream.abort(EXCEPTION_ERROR_CODE)
                    asyncio.get_running_loop().call_exception_handler(
                        {"message": "pymsquic: stream protocol factory or connection_made failed", "exception": exc,
                         "connection": self, "stream": stream})
        if self._waiters:
            self._wake_waiters()

    # ---- datagrams ---------------------------------------------------------------

    async def receive_datagram(self) -> bytes:
        """The oldest datagram received and not yet taken."""
        return await self._wait(self._try_receive_datagram, "receive_datagram()")

    # ---- waiting and closing ----------------------------------------------------------

    async def wait_sent(self) -> None:
        """Wait until every stream written to has finished sending (FIN or reset
        acknowledged). A stream never written to (a request left unanswered, a
        stream opened and not used) has nothing to send and is not waited for.

        A shutdown ends the streams at once; :meth:`close` waits here first so
        that a response written just before is not cut off."""
        if self._all_sent() is None:
            await self._wait(self._all_sent, "wait_sent()")

    async def wait_closed(self) -> None:
        """Wait until msquic finished shutting the connection down."""
        if self._closed_now() is None:
            await self._wait(self._closed_now, "wait_closed()")

    async def close(self, error_code: int = 0) -> None:
        """Close gracefully: let streams finish sending, shut down with
        ``error_code`` (unless a shutdown came first), wait for msquic to finish,
        release. :attr:`close_timeout` bounds the whole; then the connection is
        cut off. Cancelled, it still shuts down with ``error_code`` and releases.

        "Finish sending" means the peer's msquic acknowledged every byte. What
        its application has not read yet is discarded with the connection (QUIC
        closes every stream with it): when the peer must have read the data, wait
        for its answer (a reply, its FIN) before closing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        steps = self._close_steps(error_code)
        try:
            for check in steps:
                if check() is None:  # no waiting machinery when there is nothing to wait for
                    with contextlib.suppress(asyncio.TimeoutError):
                        await self._wait(check, "close()", deadline - loop.time())
        finally:
            steps.close()

    def set_peer_address_callback(self, callback: Callable[[Address], object] | None) -> None:
        """Run ``callback(new_remote_address)`` on this event loop whenever the
        peer's address changes from now on (NAT rebinding, or the peer migrated;
        see :attr:`peer_address_changes`); None stops it. Never on msquic's
        thread; several changes between two turns of the loop make one call.
        An exception it raises is logged and dropped. Call it from a coroutine
        on the connection's loop."""
        self._peer_address_seen = self.peer_address_changes
        self._peer_address_callback = callback
        if callback is not None:
            self._attach_to_running_loop()

    def _run_peer_address_callback(self) -> None:
        callback = self._peer_address_callback
        info = self._refresh()
        count = int(info.peer_address_changes)
        if callback is None or count <= self._peer_address_seen:
            return
        self._peer_address_seen = count
        self._log_address_changes(count)
        address = from_native(info.remote)
        assert address is not None
        try:
            callback(address)
        except Exception:  # a callback's bug must not break the loop's dispatch
            self.logger.exception("peer address callback failed")

    async def wait_peer_address_change(self, seen: int = 0) -> Address:
        """Wait until the peer's address changed more than ``seen`` times (see
        :attr:`peer_address_changes`; 0: the first change) and return the new
        remote address. ConnectionClosed if the connection ends first."""
        return await self._wait(lambda: self._peer_address_changed(seen), "wait_peer_address_change()")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Close gracefully: with 0, or EXCEPTION_ERROR_CODE when left by an exception."""
        await self.close(exit_error_code(exc_type))

    async def wait_handshake(self) -> None:
        """Wait until the handshake completed; raise what :func:`connect` would
        have raised if it failed. For a connection that :func:`connect` returned
        early (``early_data=True`` with a ticket), or a server connection handed
        over early for its 0-RTT request (:attr:`accepted_early`); returns at
        once otherwise."""
        if self._connected_or_raise() is None:
            await self._wait(self._connected_or_raise, "wait_handshake()")


class connect:
    """Connect to a QUIC server: ``async with connect(...) as connection`` or
    ``connection = await connect(...)``.

    Give ``alpn`` (with ``credential``, ``settings``, ``registration`` as
    needed) or a client :class:`~pymsquic.Configuration`. The server's
    certificate is verified unless the credential says otherwise (default
    ``Credential.client()``: the system CA store). ``server_name`` (SNI, and the
    name the certificate must carry) defaults to ``host``. The name lookup and
    the handshake must complete within ``open_timeout`` seconds (None: no
    limit), else :class:`asyncio.TimeoutError` (the builtin TimeoutError from
    3.11 on; in :mod:`pymsquic.sync`, the builtin TimeoutError, and the lookup,
    a blocking getaddrinfo, is not bounded). A failed handshake raises a
    :class:`~pymsquic.ConnectionClosed` subclass saying why (refused, TLS alert,
    ALPN mismatch, ...); an unknown host raises :class:`socket.gaierror`.
    ``local_addr=(ip, port)`` sends from that local address (port 0: any).
    Leaving ``async with`` closes the connection gracefully (see
    :meth:`Connection.close`; ``close_timeout`` bounds it). ``keylog_file``
    (a path, a file open for appending or a :class:`~pymsquic.KeyLog`; default:
    ``SSLKEYLOGFILE``'s file) gets the connection's TLS secrets, which decrypt
    its traffic: see :mod:`pymsquic.keylog`.

    Resumption: ``session_ticket`` (bytes from an earlier connection's
    :attr:`Connection.session_ticket` or ``on_session_ticket``) resumes that
    session: a shorter handshake, :attr:`Connection.session_resumed` tells
    whether the server took it (else a full handshake is made; a ticket msquic
    cannot decode raises ValueError). ``on_session_ticket(ticket)`` is called
    with every ticket the server sends, also long after the handshake, always
    on this event loop (never on msquic's threads); an exception it raises is
    logged. With ``early_data=True`` and a ticket, ``connect`` returns the
    connection before msquic's ConnectionStart: streams opened and written
    then are queued first, and the connection starts at the first of: the
    first wait on the connection or its streams (and ``stats()``,
    ``send_datagram()``), :meth:`Connection.close` once something was
    written (with nothing written it sends nothing), and the next turn of the
    event loop (``connect`` schedules it with ``loop.call_soon``, so a
    connection nobody waits on handshakes too). So everything written before
    the first ``await`` goes in the first flight, as 0-RTT data: msquic sends
    early only what it took before its first flight (README, "Resumption,
    0-RTT and fleets"). Awaiting ``connect`` from another task, or through
    ``asyncio.wait_for`` before Python 3.12, passes a turn of the loop first.
    Await
    :meth:`Connection.wait_handshake` for the handshake's outcome (the open
    timeout does not apply then; msquic's handshake idle timeout does);
    :attr:`Connection.early_data_accepted` then says whether 0-RTT was
    attempted and the session resumed (inferred: not that bytes went early).
    Rejected early data is not lost: msquic sends it again after the
    handshake. A datagram sent before the handshake (:meth:`Connection.send_datagram`)
    is accepted and queued, and goes out after it, never as 0-RTT data.

    0-RTT data can be replayed by an attacker (the server may see it twice, or
    on two servers of a fleet): send early only what is safe to repeat.
    """

    def __init__(self, host: str, port: int, *, alpn: AlpnLike | None = None, credential: Credential | None = None,
                 settings: Settings | None = None, configuration: Configuration | None = None,
                 server_name: str | None = None, registration: Registration | None = None,
                 open_timeout: float | None = DEFAULT_OPEN_TIMEOUT, close_timeout: float = 5.0,
                 keylog_file: KeyLogLike | None = None, local_addr: AddressLike | None = None,
                 session_ticket: BufferLike | None = None, early_data: bool = False,
                 on_session_ticket: SessionTicketHandler | None = None) -> None:
        check_endpoint(host, port)
        check_resumption_args(session_ticket, early_data, on_session_ticket)
        ticket = None if session_ticket is None else bytes(session_ticket)  # a copy: used later, in the task
        self._resumption = (ticket, early_data, on_session_ticket)
        self._keylog_file = keylog_file
        if local_addr is not None:
            local_address_native(local_addr)  # bad input fails here, not in the task
        self._local_addr = local_addr
        self._configuration = client_configuration(configuration, registration, alpn, credential, settings)
        self._host, self._port, self._server_name = host, port, server_name
        self._open_timeout, self._close_timeout = open_timeout, close_timeout
        self._connection: Connection | None = None

    async def _connect(self) -> Connection:
        conn = Connection._open_client(self._configuration, self._keylog_file)
        conn.close_timeout = self._close_timeout
        host, port, server_name = self._host, self._port, self._server_name
        loop = asyncio.get_running_loop()
        deadline = None if self._open_timeout is None else loop.time() + self._open_timeout

        async def off_loop(step: Callable[..., Any], *args: Any) -> None:
            # A step that waits for a msquic worker, on the default executor (whose
            # queue can be long): bounded by open_timeout like the rest of connect().
            if loop_mode():
                # msquic runs its blocking calls inline on the calling thread in this mode:
                # only the loop's thread may make them, and they wait for no other thread.
                step(*args)
                return
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await asyncio.wait_for(loop.run_in_executor(None, step, *args), left)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(f"connect() timed out after {self._open_timeout} s") from None

        try:
            if self._local_addr is not None:
                # Setting the address waits for a msquic worker: not on the loop's thread.
                await off_loop(conn._set_local_address, self._local_addr)
            early = conn._prepare_resumption(*self._resumption)
            if self._resumption[2] is not None:
                conn._attach_to_running_loop(loop)  # tickets wake this loop from now on
            if is_ip_literal(host) and server_name in (None, host) and not conn._start_blocks:
                if self._resumption[0] is not None:
                    # Setting the ticket waits for a msquic worker: not on the loop's thread.
                    await off_loop(conn._apply_resumption)
                conn._start(host, port, server_name, None, early)  # never blocks
            else:
                # open_timeout covers the name lookup too, as websockets' does.
                remote = await asyncio.wait_for(resolve_async(host, port), self._open_timeout)
                # Setting the address (and a ticket) waits for a msquic worker: not on the loop's thread.
                await off_loop(conn._start_resuming, host, port, server_name, remote, early)
            if early:
                # 0-RTT: ConnectionStart waits for this turn of the loop (or a wait
                # before): whatever the caller writes until then goes in the first
                # flight, and a connection nobody waits on handshakes too.
                loop.call_soon(conn._start_deferred)
                return conn  # the handshake goes on (wait_handshake)
            await conn._wait(conn._connected_or_raise, "connect()",
                             None if deadline is None else deadline - loop.time())
        except BaseException:
            conn._abandon()
            raise
        conn._log_connected()
        return conn

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._connect().__await__()

    async def __aenter__(self) -> Connection:
        self._connection = await self._connect()
        return self._connection

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        assert self._connection is not None
        await self._connection.close(exit_error_code(exc_type))

