"""asyncio streams: :class:`Stream`, shaped like asyncio's StreamReader and
StreamWriter together, and :class:`StreamProtocol` for callback-driven streams.

Everything but the waiting is in :class:`pymsquic._core.stream.StreamCore`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator, Callable

from .._buffers import BufferLike
from .._core.stream import DEFAULT_LIMIT, READ_CHUNK, ReadSteps, StreamCore, count, separator_and_limit
from .._msquic import lib
from ..errors import EXCEPTION_ERROR_CODE, QuicError
from .bridge import NativeWaitable

if TYPE_CHECKING:
    from typing_extensions import Self

    from .connection import Connection


class StreamProtocol:
    """Callbacks for a stream, run on the event loop: asyncio.Protocol's shape,
    without a task or a future per stream. See
    :meth:`Connection.set_stream_protocol` (the peer's streams) and
    :meth:`Connection.create_stream` (ours).

    A callback that raises ends its stream, as in asyncio's transports: the
    loop's exception handler gets the exception, the stream is aborted both
    ways with :data:`~pymsquic.EXCEPTION_ERROR_CODE`, and ``connection_lost``
    gets the exception (a failing ``connection_made`` gets no
    ``connection_lost``: ``create_stream`` raises it, a server's streams report it)."""

    def connection_made(self, stream: Stream) -> None:
        """The stream is ready; keep ``stream`` to write to it."""

    def data_received(self, data: bytes) -> None:
        """Bytes arrived (never empty)."""

    def eof_received(self) -> None:
        """The peer finished its side (FIN)."""

    def connection_lost(self, exc: Exception | None) -> None:
        """The stream is over: ``exc`` is None when it ended cleanly, else why
        (StreamReset, ConnectionClosed, ...)."""


#: What :meth:`Connection.set_stream_protocol` takes: called once per peer stream.
StreamProtocolFactory = Callable[[], StreamProtocol]


class Stream(StreamCore, NativeWaitable):
    """A QUIC stream for asyncio.

    Reads: :meth:`read`, :meth:`readexactly`, :meth:`readuntil`,
    :meth:`readline`, :meth:`readinto`, ``async for chunk in stream`` (ends at
    the peer's FIN). Writes never wait: :meth:`write` queues, :meth:`drain`
    waits for room. Cancelling any read (or ``asyncio.timeout()`` around it)
    loses nothing: bytes a read had gathered stay for the next one.

    :meth:`finish` sends FIN; :meth:`close` finishes gracefully and
    :meth:`abort` resets both ways. ``async with stream:`` closes on the way
    out (aborts with :data:`~pymsquic.EXCEPTION_ERROR_CODE` when left by an
    exception).
    """

    _protocol: StreamProtocol | None = None
    _reading_paused = False

    @property
    def connection(self) -> Connection:
        """The connection the stream belongs to."""
        return self._connection  # type: ignore[return-value]

    # ---- reading ---------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (at least one, b"" at FIN); ``n=-1`` reads until FIN.

        Raises :class:`~pymsquic.StreamReset` if the peer reset the stream, the
        connection's :class:`~pymsquic.ConnectionClosed` if it closed first,
        TypeError if ``n`` is not an int.
        """
        n = count(n, "read()")
        if n < 0:
            first = self._read_now(READ_CHUNK)
            if first is None:
                # Wait for the bytes themselves: a small answer comes with its FIN,
                # and is then returned without a read in steps.
                first = await self._wait(self._read_chunk_now, "read()")
            if not first or self._eof_read:
                return first  # all there, FIN included: no steps to drive
            return await self._run(self._read_steps(-1, first, checked=True), "read()")
        if n == 0:
            return b""
        data = self._read_now(n)  # no coroutine step when data is there
        if data is None:
            data = await self._wait(lambda: self._read_now(n), "read()")
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`~pymsquic.IncompleteReadError` (its
        ``partial`` then consumed) if FIN comes first."""
        n = count(n, "readexactly()")
        if n < 0:
            raise ValueError(f"readexactly() needs n >= 0, not {n}")
        first = self._read_now(n) if n else None
        if first is not None and len(first) == n:
            return first  # all there: no steps to drive
        return await self._run(self._read_steps(n, first, checked=n > 0), "readexactly()")

    async def readuntil(self, separator: bytes = b"\n", *, limit: int = DEFAULT_LIMIT) -> bytes:
        """The bytes up to and including ``separator``, as
        :meth:`asyncio.StreamReader.readuntil`: :class:`~pymsquic.IncompleteReadError`
        at FIN (``partial`` consumed), :class:`~pymsquic.LimitOverrunError` when
        ``limit`` bytes come without it (nothing is consumed then)."""
        return await self._run(self._readuntil_steps(*separator_and_limit(separator, limit)), "readuntil()")

    async def readline(self, *, limit: int = DEFAULT_LIMIT) -> bytes:
        """One line ending in ``b"\\n"``, or what is left at FIN (b"" at the end).
        ValueError when a line is longer than ``limit`` (it stays unread)."""
        return await self._run(self._readline_steps(separator_and_limit(b"\n", limit)[1]), "readline()")

    async def readinto(self, buffer: BufferLike) -> int:
        """Read into a writable, C-contiguous buffer; returns the byte count, 0 at FIN."""
        n = self._readinto_now(buffer)
        if n is None:
            n = await self._wait(lambda: self._readinto_now(buffer), "readinto()")
        return n

    async def _run(self, steps: ReadSteps, what: str) -> bytes:
        # Drives a read in steps (see _core.stream); closing it on an exception
        # (cancellation above all) puts what it gathered back.
        try:
            while True:
                next(steps)
                await self._wait(self._readable, what)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            steps.close()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        """The next chunk; the iteration ends at the peer's FIN and raises
        if the stream or its connection failed."""
        chunk = await self.read(READ_CHUNK)  # never b"" before FIN
        if not chunk:
            raise StopAsyncIteration
        return chunk

    # ---- writing and closing ------------------------------------------------------

    async def drain(self) -> None:
        """Wait until the bytes in flight fall to the write limit.

        Raises once written data can no longer be delivered, as asyncio's
        ``drain()`` raises ConnectionResetError: :class:`~pymsquic.StreamStopped`
        (the peer sent STOP_SENDING), the connection's
        :class:`~pymsquic.ConnectionClosed` (it closed first), or
        :class:`~pymsquic.StreamError` (the stream was reset or aborted).
        """
        if self._drained() is None:
            await self._wait(self._drained, "drain()")

    async def wait_closed(self) -> None:
        """Wait until the stream is over in both directions (our data acknowledged)."""
        if self._closed_now() is None:
            await self._wait(self._closed_now, "wait_closed()")

    async def wait_stop_sending(self) -> int | None:
        """Wait until the peer wants no more of what we send: returns the error
        code of its STOP_SENDING, or None once the stream is over without one
        (ended both ways, reset, or its connection closed). Never raises for
        those: a server answering a request waits on it to see the client leave."""
        result = self._stop_sending_now()
        if result is None:
            result = await self._wait(self._stop_sending_now, "wait_stop_sending()")
        return result[0]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._exit(exc_type)

    # ---- protocol mode ---------------------------------------------------------------

    def pause_reading(self) -> None:
        """Protocol mode: deliver no more ``data_received`` until
        :meth:`resume_reading`, as ``asyncio.ReadTransport.pause_reading``.
        Unread data stays with msquic, which flow-controls the peer; a protocol
        whose writes pile up (see :attr:`bytes_in_flight`) can pause its input."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        """Protocol mode: deliver what arrived meanwhile, and go on delivering."""
        self._reading_paused = False
        if self._protocol is not None:
            self._native_changed()

    def _set_protocol(self, protocol: StreamProtocol) -> None:
        self._protocol = protocol
        self._eof_delivered = False
        self.connection._protocol_streams.add(self)  # only weak references lead here otherwise
        try:
            protocol.connection_made(self)
        except BaseException:
            # Nothing would ever run this stream (its caller gets no handle on it):
            # end it both ways rather than hold it open for the connection's life.
            self._protocol = None
            self.connection._protocol_streams.discard(self)
            self.abort(EXCEPTION_ERROR_CODE)
            raise
        self._attach_to_running_loop()
        self._native_changed()

    def _lose(self, protocol: StreamProtocol, exc: Exception | None) -> None:
        self._protocol = None
        self.connection._protocol_streams.discard(self)
        protocol.connection_lost(exc)

    def _protocol_failed(self, protocol: StreamProtocol, exc: Exception) -> None:
        # As asyncio's transports when a protocol callback raises: report it, end the
        # stream (aborted both ways) and hand the exception to connection_lost. Left
        # to the bridge, the stream would wait for an event that may never come.
        loop = self._attached_loop
        if loop is not None and not loop.is_closed():
            loop.call_exception_handler({"message": "pymsquic: StreamProtocol callback failed", "exception": exc,
                                         "protocol": protocol, "stream": self})
        self.abort(EXCEPTION_ERROR_CODE)
        self._lose(protocol, exc)

    def _native_changed(self) -> None:
        protocol = self._protocol
        if protocol is None:
            super()._native_changed()
            return
        try:
            # The end is read before the data: all that came before it is delivered
            # below. Read after, it could be an end that came (with the last data and
            # the FIN) after a read found nothing: connection_lost, the answer unread.
            closed = self._state().flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE
            while not self._eof_delivered and not self._reading_paused:
                data = self._read_now(READ_CHUNK)
                if data is None:
                    break
                if data:
                    protocol.data_received(data)
                else:
                    self._eof_delivered = True
                    protocol.eof_received()
            if closed and (self._eof_delivered or not self._reading_paused):  # paused: after the rest
                self._lose(protocol, None)
        except Exception as exc:
            if self._protocol is not protocol:
                raise  # from connection_lost itself (run once): the bridge reports it
            if isinstance(exc, QuicError):
                self._lose(protocol, exc)
            else:
                self._protocol_failed(protocol, exc)
        if self._waiters:  # drain() and wait_closed() still work
            self._wake_waiters()
