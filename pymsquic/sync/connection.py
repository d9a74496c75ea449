"""Blocking connections: :class:`Connection` and :func:`connect`.

Everything but the waiting is in :class:`pymsquic._core.connection.ConnectionCore`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from .. import _native
from .._buffers import BufferLike
from .._core.connection import ConnectionCore, check_endpoint, exit_error_code
from .._core.server import client_configuration
from ..addresses import Address, AddressLike, is_ip_literal, resolve
from ..configuration import AlpnLike, Configuration, Credential, Settings
from ..errors import ConnectionClosed
from ..keylog import KeyLogLike
from ..registration import Registration
from ..resumption import SessionTicketHandler, check_resumption_args
from .stream import Stream

if TYPE_CHECKING:
    from typing_extensions import Self

T = TypeVar("T")

#: How long :func:`connect` waits for the handshake by default, as websockets does.
DEFAULT_OPEN_TIMEOUT = 10.0


class Connection(ConnectionCore[Stream]):
    """A QUIC connection for threads.

    :func:`connect` opens one; a server's handler (:func:`serve`) or
    :meth:`Listener.accept` gets one whose handshake is complete (or, with
    0-RTT, one whose early request arrived: :attr:`accepted_early`). Streams:
    :meth:`open_stream`, :meth:`accept_stream` or ``for stream in
    connection``. Datagrams: :meth:`send_datagram`, :meth:`receive_datagram`.
    Every wait takes ``timeout`` (seconds for the whole call, None for ever)
    and releases the GIL; a TimeoutError loses nothing.

    :meth:`shutdown` starts a shutdown; :meth:`close` lets streams finish
    sending, shuts down and waits (up to :attr:`close_timeout` seconds), then
    releases the connection; ``with`` does that on the way out. Only the first
    shutdown reaches the wire: its error code is the one the peer sees. Leaving
    ``with`` by an exception closes with :data:`~pymsquic.EXCEPTION_ERROR_CODE`
    instead of 0.
    """

    _stream_class = Stream

    def _wait(self, check_ready: Callable[[], T | None], timeout: float | None, what: str) -> T:
        self._start_deferred()  # an early-data client starts at its first wait
        return _native.wait_blocking(self._native_obj, check_ready, timeout, what)

    # ---- streams ---------------------------------------------------------------

    def accept_stream(self, timeout: float | None = None) -> Stream:
        """The next stream the peer opens. :class:`~pymsquic.ConnectionClosed`
        once the connection is shutting down and no stream is left."""
        return self._wait(self._try_accept_stream, timeout, "accept_stream()")

    def __iter__(self) -> Iterator[Stream]:
        """Peer streams until the connection is closed cleanly (error code 0 from
        the peer, or closed here); raises the :class:`~pymsquic.ConnectionClosed`
        of a transport error or idle timeout."""
        while True:
            try:
                yield self.accept_stream()
            except ConnectionClosed as exc:
                if self._closed_cleanly(exc):
                    return
                raise

    # ---- datagrams ---------------------------------------------------------------

    def receive_datagram(self, timeout: float | None = None) -> bytes:
        """The oldest datagram received and not yet taken."""
        return self._wait(self._try_receive_datagram, timeout, "receive_datagram()")

    # ---- waiting and closing ----------------------------------------------------------

    def wait_sent(self, timeout: float | None = None) -> None:
        """Wait until every stream written to has finished sending (FIN or reset
        acknowledged). A stream never written to (a request left unanswered, a
        stream opened and not used) has nothing to send and is not waited for.

        A shutdown ends the streams at once; :meth:`close` waits here first so
        that a response written just before is not cut off."""
        self._wait(self._all_sent, timeout, "wait_sent()")

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until msquic finished shutting the connection down."""
        self._wait(self._closed_now, timeout, "wait_closed()")

    def close(self, error_code: int = 0) -> None:
        """Close gracefully: let streams finish sending, shut down with
        ``error_code`` (unless a shutdown came first), wait for msquic to finish,
        release. :attr:`close_timeout` bounds the whole; then the connection is
        cut off. Interrupted (Ctrl-C), it still shuts down with ``error_code``
        and releases.

        "Finish sending" means the peer's msquic acknowledged every byte. What
        its application has not read yet is discarded with the connection (QUIC
        closes every stream with it): when the peer must have read the data, wait
        for its answer (a reply, its FIN) before closing."""
        deadline = _native.Deadline(self.close_timeout)
        steps = self._close_steps(error_code)
        try:
            for check in steps:
                with contextlib.suppress(TimeoutError):
                    _native.wait_until(self._native_obj, check, deadline, "close()")
        finally:
            steps.close()

    def wait_peer_address_change(self, seen: int = 0, timeout: float | None = None) -> Address:
        """Wait until the peer's address changed more than ``seen`` times (see
        :attr:`peer_address_changes`; 0: the first change) and return the new
        remote address. ConnectionClosed if the connection ends first."""
        return self._wait(lambda: self._peer_address_changed(seen), timeout, "wait_peer_address_change()")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Close gracefully: with 0, or EXCEPTION_ERROR_CODE when left by an exception."""
        self.close(exit_error_code(exc_type))

    def wait_handshake(self, timeout: float | None = None) -> None:
        """Wait until the handshake completed; raise what :func:`connect` would
        have raised if it failed. For a connection that :func:`connect` returned
        early (``early_data=True`` with a ticket), or a server connection handed
        over early for its 0-RTT request (:attr:`accepted_early`); returns at
        once otherwise."""
        self._wait(self._connected_or_raise, timeout, "wait_handshake()")


def connect(host: str, port: int, *, alpn: AlpnLike | None = None, credential: Credential | None = None,
            settings: Settings | None = None, configuration: Configuration | None = None,
            server_name: str | None = None, registration: Registration | None = None,
            open_timeout: float | None = DEFAULT_OPEN_TIMEOUT, close_timeout: float = 5.0,
            keylog_file: KeyLogLike | None = None, local_addr: AddressLike | None = None,
            session_ticket: BufferLike | None = None, early_data: bool = False,
            on_session_ticket: SessionTicketHandler | None = None) -> Connection:
    """Connect to a QUIC server and return the connection once its handshake
    completed; ``with connect(...) as connection:`` closes it on the way out.
    The arguments, defaults and errors are those of :class:`pymsquic.asyncio.connect`,
    resumption and 0-RTT included (``early_data=True`` with a ticket returns
    before msquic's ConnectionStart: see :meth:`Connection.wait_handshake`),
    except that the start of such a connection happens at the first call that
    waits on the connection or its streams (reads, ``drain``,
    ``wait_handshake``, ``accept_stream``... and ``stats()``,
    ``send_datagram()``), or at :meth:`Connection.close` once something was
    written (or at the close of its :class:`~pymsquic.Configuration`):
    everything written before goes in the first flight, as 0-RTT data.
    There is no event loop to start it otherwise: a connection nobody
    waits on stays unstarted, and :meth:`Connection.close` (or dropping it)
    with nothing written sends nothing. And except that
    ``on_session_ticket`` runs on a daemon thread of its own (one per
    connection given one, started with it, ending once the connection is
    closed), never on msquic's threads: a handler touching state the caller
    also uses needs a lock. close() does not wait for that thread: the handler
    may still run (with a ticket that came with the close) after close()
    returned. Whatever it raises, SystemExit included, is logged and the
    thread goes on. 0-RTT data can be replayed by an attacker: send
    early only what is safe to repeat.
    """
    _native.forbid_in_callback("connect()")
    check_endpoint(host, port)
    check_resumption_args(session_ticket, early_data, on_session_ticket)
    conn = Connection._open_client(client_configuration(configuration, registration, alpn,
                                                                    credential, settings), keylog_file)
    conn.close_timeout = close_timeout
    try:
        if local_addr is not None:
            conn._set_local_address(local_addr)
        early = conn._prepare_resumption(session_ticket, early_data, on_session_ticket)
        direct = is_ip_literal(host) and server_name in (None, host)
        conn._start_resuming(host, port, server_name, None if direct else resolve(host, port), early)
        conn._start_ticket_thread()
        if early:
            return conn  # 0-RTT: the handshake goes on (wait_handshake)
        conn._wait(conn._connected_or_raise, open_timeout, "connect()")
    except BaseException:
        conn._abandon()
        raise
    conn._log_connected()
    return conn
