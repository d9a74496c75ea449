"""QUIC streams: :class:`Stream` for asyncio and :class:`BlockingStream` for threads.

Both wrap the same native stream; only the waiting differs. Received bytes are
copied once, straight out of msquic's buffers. Unread data stays with msquic,
which stops delivery and flow-controls the peer, so a slow reader bounds memory.
Writes are copied once and queued at once; ``drain()`` waits while more than the
send limit (msquic's ideal send buffer size, or ``set_write_limit``) is in flight.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator, Union

from . import _native
from ._bridge import NativeWaitable
from ._msquic import ffi, lib
from .errors import QuicError, StreamError, StreamReset, StreamStopped

if TYPE_CHECKING:
    from .connection import Connection

BytesLike = Union[bytes, bytearray, memoryview]

_READ_ALL_CHUNK = 1 << 20


class StreamProtocol:
    """Callbacks for a stream, run on the event loop: asyncio.Protocol's shape,
    without a task or a future per stream. See Connection.set_stream_protocol."""

    def connection_made(self, stream: "Stream") -> None:
        """The stream is ready; keep ``stream`` to write to it."""

    def data_received(self, data: bytes) -> None:
        """Bytes arrived (never empty)."""

    def eof_received(self) -> None:
        """The peer finished its side (FIN)."""

    def connection_lost(self, exc: Exception | None) -> None:
        """The stream is over: ``exc`` is None when it ended cleanly, else why
        (StreamReset, ConnectionClosed, ...)."""


class _StreamCore(NativeWaitable):
    _owner = True  # False on a view (blocking()/asyncio()): the original releases
    _protocol: "StreamProtocol | None" = None

    def __init__(self, native: Any, connection: "Connection") -> None:
        # Internal: wrap a pmq_stream * whose Python reference we now own.
        self._stream = native
        self._init_waitable(lib.pmq_stream_obj(native))
        self.connection = connection

    def __del__(self) -> None:
        # Not a weakref finalizer: streams are the hottest objects, and the
        # release never blocks (see _native.release_now_or_later).
        if self._owner and hasattr(self, "_stream"):
            self._forget_bridge()
            _native.release_now_or_later(lib.pmq_stream_release, self._stream)

    def _view(self, cls: type) -> Any:
        # The other API over the same native stream (sharing its lifetime).
        other = cls.__new__(cls)
        other.__dict__.update(self.__dict__)
        other._init_waitable(self._native_obj)
        other._owner = False
        other._origin = self  # the original releases the native stream: keep it alive
        return other

    # ---- state ---------------------------------------------------------------

    def _state(self) -> Any:
        st = _native.scratch.stream_state
        lib.pmq_stream_get_state(self._stream, st)
        return st

    @property
    def id(self) -> int | None:
        """The QUIC stream id; None until msquic has started a stream we opened."""
        st = self._state()
        return st.id if st.flags & lib.PMQ_STREAM_ID_KNOWN else None

    @property
    def is_unidirectional(self) -> bool:
        return bool(self._state().flags & lib.PMQ_STREAM_UNIDIRECTIONAL)

    @property
    def is_local(self) -> bool:
        """True for a stream this side opened."""
        return bool(self._state().flags & lib.PMQ_STREAM_LOCAL)

    @property
    def is_closed(self) -> bool:
        """True once msquic finished with the stream in both directions."""
        return bool(self._state().flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE)

    @property
    def bytes_in_flight(self) -> int:
        """Bytes written that msquic has not yet taken off our hands."""
        return int(self._state().send_inflight)

    @property
    def write_limit(self) -> int:
        return int(self._state().send_limit)

    def set_write_limit(self, limit: int | None) -> None:
        """Make ``drain()`` wait while more than ``limit`` bytes are in flight
        (None: follow msquic's ideal send buffer size)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
            raise ValueError(f"limit must be a positive int or None, not {limit!r}")
        lib.pmq_stream_set_send_limit(self._stream, limit or 0)

    def _failure(self, status: int) -> QuicError:
        local = self.connection._registration_closed()  # not "reset by peer" after our own close
        if local is not None:
            return local
        st = self._state()
        if status == lib.PMQ_READ_RESET:
            return StreamReset(f"stream reset by peer with error {st.reset_code}", st.reset_code)
        if st.flags & lib.PMQ_STREAM_CONN_SHUTDOWN:
            reason = self.connection.close_reason
            if reason is not None:
                return reason
        if st.flags & lib.PMQ_STREAM_STOP_SENDING_SENT:
            return StreamError("reading was stopped with stop_sending()")
        if st.flags & lib.PMQ_STREAM_START_FAILED:
            return StreamError("the stream could not be started", st.start_status)
        return StreamError("stream was aborted")

    # ---- reading (non-blocking steps) ------------------------------------------

    def _read_now(self, n: int) -> bytes | None:
        """Up to n bytes available now; b"" at FIN; None when nothing is there yet."""
        chunks = []
        got = 0
        scratch = _native.scratch
        while got < n:
            status = lib.pmq_stream_peek(self._stream, scratch.data, scratch.size)
            if status == lib.PMQ_READ_DATA:
                take = min(scratch.size[0], n - got)
                try:
                    chunks.append(ffi.buffer(scratch.data[0], take)[:])
                finally:
                    lib.pmq_stream_consume(self._stream, take)
                got += take
                continue
            if got:
                break
            if status == lib.PMQ_READ_WOULD_BLOCK:
                return None
            if status == lib.PMQ_READ_EOF:
                return b""
            raise self._failure(status)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _readinto_now(self, buffer: Any) -> int | None:
        try:
            target = ffi.from_buffer(buffer, require_writable=True)
        except TypeError:
            raise TypeError("readinto() needs a writable buffer") from None
        size = ffi.sizeof(target)
        if not size:
            return 0
        copied = _native.scratch.size
        status = lib.pmq_stream_read_into(self._stream, target, size, copied)
        if status == lib.PMQ_READ_DATA:
            return copied[0]
        if status == lib.PMQ_READ_WOULD_BLOCK:
            return None
        if status == lib.PMQ_READ_EOF:
            return 0
        raise self._failure(status)

    # ---- writing ------------------------------------------------------------------

    def write(self, data: BytesLike, fin: bool = False) -> None:
        """Queue ``data`` (copied at once) and, with ``fin``, end the stream after it.
        Never blocks; use ``drain()`` to wait for the send buffer to empty."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if not data and not fin:
            return
        status = lib.pmq_stream_write(self._stream, ffi.from_buffer(data) if data else ffi.NULL, len(data), fin)
        if status != lib.QUIC_STATUS_SUCCESS and status != lib.QUIC_STATUS_PENDING:
            raise self._write_failure(status)

    def _write_failure(self, status: int) -> QuicError:
        local = self.connection._registration_closed()  # not "stopped" after our own close
        if local is not None:
            return local
        st = self._state()
        if st.flags & lib.PMQ_STREAM_STOP_SENDING_RECEIVED:
            return StreamStopped(f"peer asked to stop sending with error {st.stop_sending_code}",
                                 st.stop_sending_code)
        reason = self.connection.close_reason
        if reason is not None:
            return reason
        if st.flags & lib.PMQ_STREAM_FIN_SENT:
            return StreamError("write after finish()")
        if st.flags & lib.PMQ_STREAM_RESET_SENT:
            return StreamError("write after reset()")
        if st.flags & lib.PMQ_STREAM_UNIDIRECTIONAL and not st.flags & lib.PMQ_STREAM_LOCAL:
            return StreamError("cannot write to the peer's unidirectional stream")
        return StreamError("cannot write to the stream", status)

    def writelines(self, lines: "list[BytesLike]") -> None:
        for data in lines:
            self.write(data)

    def finish(self) -> None:
        """End our side of the stream (FIN) once written data is sent, like ``write_eof``."""
        self.write(b"", fin=True)

    def reset(self, error_code: int = 0) -> None:
        """Abort sending (RESET_STREAM with ``error_code``); unsent data is dropped."""
        self._shutdown(lib.QUIC_STREAM_SHUTDOWN_FLAG_ABORT_SEND, error_code)

    def stop_sending(self, error_code: int = 0) -> None:
        """Ask the peer to stop sending (STOP_SENDING with ``error_code``); unread data is dropped."""
        self._shutdown(lib.QUIC_STREAM_SHUTDOWN_FLAG_ABORT_RECEIVE, error_code)

    def _shutdown(self, flags: int, error_code: int) -> None:
        if isinstance(error_code, bool) or not isinstance(error_code, int):
            raise TypeError(f"error_code must be an int, not {type(error_code).__name__}")
        if not 0 <= error_code < 2**62:
            raise ValueError(f"error_code {error_code} is not a 62-bit unsigned int")
        lib.pmq_stream_shutdown(self._stream, flags, error_code)  # a closed stream has nothing left to stop

    def _drained(self) -> bool | None:
        st = self._state()
        if st.flags & lib.PMQ_STREAM_STOP_SENDING_RECEIVED:
            raise StreamStopped(f"peer asked to stop sending with error {st.stop_sending_code}",
                                st.stop_sending_code)
        if st.send_inflight <= st.send_limit or st.flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE:
            return True
        return None

    def _closed_now(self) -> bool | None:
        return True if self._state().flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE else None

    def close(self) -> None:
        """Done with the stream: the directions still open are aborted (a finished
        send side is left to complete)."""
        lib.pmq_stream_abandon(self._stream)

    def __repr__(self) -> str:
        st = self._state()
        kind = "uni" if st.flags & lib.PMQ_STREAM_UNIDIRECTIONAL else "bidi"
        side = "local" if st.flags & lib.PMQ_STREAM_LOCAL else "peer"
        state = "closed" if st.flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE else "open"
        return f"<{type(self).__name__} id={self.id} {kind} {side} {state}>"


class Stream(_StreamCore):
    """A QUIC stream for asyncio, shaped like asyncio's StreamReader/StreamWriter."""

    def _set_protocol(self, protocol: StreamProtocol) -> None:
        self._protocol = protocol
        self._eof_delivered = False
        self.connection._protocol_streams.add(self)  # only weak references lead here otherwise
        protocol.connection_made(self)
        self._attach_to_running_loop()
        self._native_changed()

    def _lose(self, protocol: StreamProtocol, exc: Exception | None) -> None:
        self._protocol = None
        self.connection._protocol_streams.discard(self)
        protocol.connection_lost(exc)

    def _native_changed(self) -> None:
        protocol = self._protocol
        if protocol is None:
            super()._native_changed()
            return
        try:
            while not self._eof_delivered:
                data = self._read_now(_READ_ALL_CHUNK)
                if data is None:
                    break
                if data:
                    protocol.data_received(data)
                else:
                    self._eof_delivered = True
                    protocol.eof_received()
            if self._state().flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE:
                self._lose(protocol, None)
        except QuicError as exc:
            self._lose(protocol, exc)
        if self._waiters:  # drain() and wait_closed() still work
            self._wake_waiters()

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (at least one, b"" at FIN); ``n=-1`` reads until FIN.

        Cancelling a read loses nothing: bytes not returned stay for the next read.
        Raises StreamReset if the peer reset the stream.
        """
        if n < 0:
            chunks = []
            while True:
                chunk = self._read_now(_READ_ALL_CHUNK)  # no coroutine when data is there
                if chunk is None:
                    chunk = await self._wait_async(lambda: self._read_now(_READ_ALL_CHUNK), None, "read()")
                if not chunk:
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.append(chunk)
        if n == 0:
            return b""
        data = self._read_now(n)
        if data is None:
            data = await self._wait_async(lambda: self._read_now(n), None, "read()")
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; asyncio.IncompleteReadError if FIN comes first."""
        chunks: list[bytes] = []
        got = 0
        while got < n:
            chunk = await self.read(n - got)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(chunks), n)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    async def readinto(self, buffer: Any) -> int:
        """Read into a writable buffer; returns the byte count, 0 at FIN."""
        n = self._readinto_now(buffer)
        if n is None:
            n = await self._wait_async(lambda: self._readinto_now(buffer), None, "readinto()")
        return n

    async def drain(self) -> None:
        """Wait until the bytes in flight fall to the write limit."""
        if self._drained() is None:
            await self._wait_async(self._drained, None, "drain()")

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the stream is shut down in both directions (and our data acknowledged)."""
        if self._closed_now() is None:
            await self._wait_async(self._closed_now, timeout, "wait_closed()")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read(_READ_ALL_CHUNK)  # never b"" before FIN
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def blocking(self) -> "BlockingStream":
        """The same stream with the blocking API."""
        return self._view(BlockingStream)


class BlockingStream(_StreamCore):
    """A QUIC stream for threads: the names of :class:`Stream`, blocking with timeouts
    (GIL released while waiting)."""

    def read(self, n: int = -1, timeout: float | None = None) -> bytes:
        """Up to ``n`` bytes (at least one, b"" at FIN); ``n=-1`` reads until FIN."""
        if n < 0:
            chunks = []
            while True:
                chunk = self.read(_READ_ALL_CHUNK, timeout)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        if n == 0:
            return b""
        return _native.wait_blocking(self._native_obj, lambda: self._read_now(n), timeout, "read()")

    def readexactly(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly ``n`` bytes; EOFError if FIN comes first."""
        chunks: list[bytes] = []
        got = 0
        while got < n:
            chunk = self.read(n - got, timeout)
            if not chunk:
                raise EOFError(f"stream ended after {got} of {n} bytes")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def readinto(self, buffer: Any, timeout: float | None = None) -> int:
        return _native.wait_blocking(self._native_obj, lambda: self._readinto_now(buffer), timeout, "readinto()")

    def drain(self, timeout: float | None = None) -> None:
        _native.wait_blocking(self._native_obj, self._drained, timeout, "drain()")

    def wait_closed(self, timeout: float | None = None) -> None:
        _native.wait_blocking(self._native_obj, self._closed_now, timeout, "wait_closed()")

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.read(_READ_ALL_CHUNK)
            if not chunk:
                return
            yield chunk

    def asyncio(self) -> Stream:
        """The same stream with the asyncio API."""
        return self._view(Stream)

    def __enter__(self) -> "BlockingStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
