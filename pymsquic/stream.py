"""QUIC streams: :class:`Stream` for asyncio and :class:`BlockingStream` for threads.

Both wrap the same native stream; only the waiting differs. Received bytes are
copied once, straight out of msquic's buffers. Unread data stays with msquic,
which stops delivery and flow-controls the peer, so a slow reader bounds memory.
Writes are copied once and queued at once; ``drain()`` waits while more than the
send limit (msquic's ideal send buffer size, or ``set_write_limit``) is in flight.
"""

from __future__ import annotations

import asyncio
import operator
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable, Iterator, TypeVar

from . import _native
from ._bridge import NativeWaitable
from ._buffers import BufferLike, c_buffer
from ._msquic import ffi, lib
from .errors import QuicError, StreamError, StreamReset, StreamStopped, failed

if TYPE_CHECKING:
    from .connection import Connection

BytesLike = BufferLike  # any object with the buffer protocol; every byte of it is sent

_READ_ALL_CHUNK = 1 << 20
_V = TypeVar("_V", bound="_StreamCore")
_MAX_WRITE = 0xFFFFFFFF  # one QUIC_BUFFER


def _count(n: object, what: str) -> int:
    """A byte count argument: an int (or index-like), never a bool or a float.
    Checked before any native state is touched."""
    if isinstance(n, bool):
        raise TypeError(f"{what}: n must be an int, not bool")
    try:
        return operator.index(n)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what}: n must be an int, not {type(n).__name__}") from None


class _GiveBack:
    """``with`` around the waits of a read in steps: if one raises (cancelled,
    timed out, interrupted), the bytes gathered go back in front of the stream."""

    __slots__ = ("_stream", "_chunks")

    def __init__(self, stream: "_StreamCore", chunks: "list[bytes]") -> None:
        self._stream = stream
        self._chunks = chunks

    def __enter__(self) -> None:
        pass

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._stream._unread(self._chunks)


def _joined(chunks: "list[bytes]", n: int) -> bytes:
    """The result of a read of ``n`` bytes (n < 0: until FIN) that gathered ``chunks``."""
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if 0 <= n != len(data):
        raise asyncio.IncompleteReadError(data, n)  # FIN first: the partial is handed over
    return data


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
    _origin: "_StreamCore | None" = None  # on a view: the original, kept alive
    _protocol: "StreamProtocol | None" = None

    def __init__(self, native: Any, connection: "Connection") -> None:
        # Internal: wrap a pmq_stream * whose Python reference we now own.
        self._stream = native
        self._init_waitable(lib.pmq_stream_obj(native))
        self.connection = connection
        # Bytes a cancelled or failed multi-step read had taken and not returned:
        # every read path takes them first. Mutated in place only, so that the
        # views (blocking()/asyncio()) share it.
        self._pushback = bytearray()

    def __del__(self) -> None:
        # Not a weakref finalizer: streams are the hottest objects, and the
        # release never blocks (see _native.release_now_or_later).
        if self._owner and hasattr(self, "_stream"):
            self._forget_bridge()
            _native.release_now_or_later(lib.pmq_stream_release, self._stream)

    def _view(self, cls: "type[_V]") -> "_V":
        # The other API over the same native stream (sharing its lifetime; the
        # pushback buffer is shared too, being the same bytearray).
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
        """True for a stream that carries data one way only (from its opener)."""
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
        """The bytes in flight above which ``drain()`` waits (see :meth:`set_write_limit`)."""
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

    def _unread(self, chunks: "list[bytes]") -> None:
        """Put bytes taken but not returned back in front of everything unread
        (and empty ``chunks``, so that a second call adds nothing)."""
        if chunks:
            self._pushback[:0] = b"".join(chunks)
            chunks.clear()

    def _gather_ready(self, chunks: "list[bytes]", n: int, got: int) -> int:
        """One step of a read of ``n`` bytes (n < 0: until FIN) that has ``got``
        bytes in ``chunks``: append what is readable now. Returns the new count,
        or -1 once the read is complete (n bytes, or FIN). On an exception the
        chunks go back in front of the stream."""
        try:
            while n < 0 or got < n:
                chunk = self._read_now(_READ_ALL_CHUNK if n < 0 else n - got)
                if chunk is None:
                    return got
                if not chunk:
                    return -1
                chunks.append(chunk)
                got += len(chunk)
            return -1
        except BaseException:
            self._unread(chunks)
            raise

    def _readable(self) -> bool | None:
        """True when a read would not wait (data, FIN or an error to report);
        consumes nothing."""
        if self._pushback:
            return True
        status = lib.pmq_stream_read_into(self._stream, ffi.NULL, 0, _native.scratch.size)
        return None if status == lib.PMQ_READ_WOULD_BLOCK else True

    def _take_pushback(self, n: int) -> bytes:
        pushback = self._pushback
        data = bytes(pushback[:n])
        del pushback[:len(data)]
        return data

    def _read_now(self, n: int) -> bytes | None:
        """Up to n bytes available now; b"" at FIN; None when nothing is there yet."""
        if self._pushback:
            return self._take_pushback(n)
        chunks: list[bytes] = []
        got = 0
        scratch = _native.scratch
        stream = self._stream
        try:
            while got < n:
                # Every peek is followed by its consume, whatever is raised in
                # between (MemoryError, KeyboardInterrupt): a peek left open would
                # block every later read. Exactly the bytes appended are consumed.
                status = lib.PMQ_READ_WOULD_BLOCK
                have = len(chunks)
                try:
                    status = lib.pmq_stream_peek(stream, scratch.data, scratch.size)
                    if status == lib.PMQ_READ_DATA:
                        chunks.append(ffi.buffer(scratch.data[0], min(scratch.size[0], n - got))[:])
                finally:
                    if status == lib.PMQ_READ_DATA:
                        lib.pmq_stream_consume(stream, len(chunks[-1]) if len(chunks) > have else 0)
                if status == lib.PMQ_READ_DATA:
                    got += len(chunks[-1])
                    continue
                if got:
                    break
                if status == lib.PMQ_READ_WOULD_BLOCK:
                    return None
                if status == lib.PMQ_READ_EOF:
                    return b""
                raise self._failure(status)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except BaseException:
            self._unread(chunks)  # consumed natively, not returned: keep them
            raise

    def _readinto_now(self, buffer: Any) -> int | None:
        try:
            target = ffi.from_buffer(buffer, require_writable=True)
        except (TypeError, BufferError):
            raise TypeError("readinto() needs a writable, C-contiguous buffer, "
                            f"not {type(buffer).__name__}") from None
        size = len(target)
        if not size:
            return 0
        pushback = self._pushback
        if pushback:
            take = min(size, len(pushback))
            ffi.memmove(target, pushback, take)
            del pushback[:take]
            return take
        copied = _native.scratch.size
        status = lib.pmq_stream_read_into(self._stream, target, size, copied)
        if status == lib.PMQ_READ_DATA:
            return int(copied[0])
        if status == lib.PMQ_READ_WOULD_BLOCK:
            return None
        if status == lib.PMQ_READ_EOF:
            return 0
        raise self._failure(status)

    # ---- writing ------------------------------------------------------------------

    def write(self, data: BytesLike, fin: bool = False) -> None:
        """Queue ``data`` (copied at once) and, with ``fin``, end the stream after it.
        Never blocks; use ``drain()`` to wait for the send buffer to empty.

        ``data`` is any object with the buffer protocol (bytes, bytearray,
        memoryview of any format and shape, array.array, numpy arrays...): all
        of its bytes are sent, as ``socket.send`` would; a non-contiguous buffer
        is copied in logical order. TypeError for anything else (str included).
        """
        self._write_c(*c_buffer(data), fin)

    def _write_c(self, cdata: Any, nbytes: int, fin: bool) -> None:
        if not nbytes and not fin:
            return
        if nbytes > _MAX_WRITE:
            raise ValueError(f"a single write takes at most {_MAX_WRITE} bytes, not {nbytes}")
        status = lib.pmq_stream_write(self._stream, cdata if nbytes else ffi.NULL, nbytes, fin)
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

    def writelines(self, lines: Iterable[BytesLike]) -> None:
        """Write each buffer of ``lines`` (any iterable). All are checked first:
        a TypeError leaves nothing of them written."""
        for cdata, nbytes in [c_buffer(data) for data in lines]:
            self._write_c(cdata, nbytes, False)

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
        if st.flags & (lib.PMQ_STREAM_STOP_SENDING_RECEIVED | lib.PMQ_STREAM_SEND_INCOMPLETE):
            local = self.connection._registration_closed()  # not "stopped" after our own close
            if local is not None:
                raise local
        if st.flags & lib.PMQ_STREAM_STOP_SENDING_RECEIVED:
            raise StreamStopped(f"peer asked to stop sending with error {st.stop_sending_code}",
                                st.stop_sending_code)
        if st.flags & lib.PMQ_STREAM_SEND_INCOMPLETE:
            raise self._undelivered(st.flags)
        if st.send_inflight <= st.send_limit or st.flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE:
            return True
        return None

    def _undelivered(self, flags: int) -> QuicError:
        # Why written data will not reach the peer (see drain()).
        if flags & lib.PMQ_STREAM_RESET_SENT:
            return StreamError("the stream was reset (reset() or close()): written data was not delivered")
        reason = self.connection.close_reason
        if reason is not None:
            return reason
        return StreamError("the stream was aborted: written data was not delivered")

    def _closed_now(self) -> bool | None:
        return True if self._state().flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE else None

    @property
    def priority(self) -> int:
        """Send priority, 0 (lowest) to 65535 (highest), default 32767: msquic
        sends a higher-priority stream's data first, whatever the connection's
        scheduling scheme. Reading or setting it waits briefly for msquic's worker."""
        _native.forbid_in_callback("Stream.priority")
        value = ffi.new("uint16_t *")
        status = lib.pmq_stream_get_priority(self._stream, value)
        if failed(status):
            raise self._failure(status)
        return int(value[0])

    @priority.setter
    def priority(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"priority must be an int, not {type(value).__name__}")
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"priority must be 0-65535, not {value}")
        _native.forbid_in_callback("Stream.priority")
        status = lib.pmq_stream_set_priority(self._stream, value)
        if failed(status):
            raise self._failure(status)

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

        Cancelling a read loses nothing: bytes not returned (also those a read
        until FIN had gathered) stay for the next read. Raises StreamReset if the
        peer reset the stream, TypeError if ``n`` is not an int.
        """
        n = _count(n, "read()")
        if n < 0:
            return await self._read_until(-1, "read()")
        if n == 0:
            return b""
        data = self._read_now(n)  # no coroutine when data is there
        if data is None:
            data = await self._wait_async(lambda: self._read_now(n), None, "read()")
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; asyncio.IncompleteReadError (with ``partial``, which
        is then consumed) if FIN comes first. Cancelled, it loses nothing: what it
        had gathered stays for the next read."""
        n = _count(n, "readexactly()")
        if n < 0:
            raise ValueError(f"readexactly() needs n >= 0, not {n}")
        return await self._read_until(n, "readexactly()")

    async def _read_until(self, n: int, what: str) -> bytes:
        chunks: list[bytes] = []
        got = self._gather_ready(chunks, n, 0)  # no waiting machinery when all is there
        if got >= 0:
            with _GiveBack(self, chunks):
                while got >= 0:
                    await self._wait_async(self._readable, None, what)
                    got = self._gather_ready(chunks, n, got)
        return _joined(chunks, n)

    async def readinto(self, buffer: Any) -> int:
        """Read into a writable, C-contiguous buffer; returns the byte count, 0 at FIN."""
        n = self._readinto_now(buffer)
        if n is None:
            n = await self._wait_async(lambda: self._readinto_now(buffer), None, "readinto()")
        return n

    async def drain(self) -> None:
        """Wait until the bytes in flight fall to the write limit.

        Raises once written data can no longer be delivered: StreamStopped (the
        peer sent STOP_SENDING), the connection's ConnectionClosed (it closed
        first), or StreamError (the stream was reset, closed or aborted), like
        asyncio's drain() raising ConnectionResetError.
        """
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
        """Up to ``n`` bytes (at least one, b"" at FIN); ``n=-1`` reads until FIN.

        ``timeout`` bounds the whole call. A timeout (or any exception) loses
        nothing: bytes a read until FIN had gathered stay for the next read.
        """
        n = _count(n, "read()")
        if n < 0:
            return self._read_until(-1, timeout, "read()")
        if n == 0:
            return b""
        return _native.wait_blocking(self._native_obj, lambda: self._read_now(n), timeout, "read()")

    def readexactly(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly ``n`` bytes within ``timeout`` seconds for the whole call.

        If FIN comes first: asyncio.IncompleteReadError with ``partial`` (a
        subclass of EOFError, as raised here before). On TimeoutError the bytes
        gathered so far stay for the next read.
        """
        n = _count(n, "readexactly()")
        if n < 0:
            raise ValueError(f"readexactly() needs n >= 0, not {n}")
        return self._read_until(n, timeout, "readexactly()")

    def _read_until(self, n: int, timeout: float | None, what: str) -> bytes:
        # Stream._read_until's steps, with one deadline for all of them.
        deadline = _native.Deadline(timeout)
        chunks: list[bytes] = []
        got = self._gather_ready(chunks, n, 0)
        with _GiveBack(self, chunks):
            while got >= 0:
                _native.wait_until(self._native_obj, self._readable, deadline, what)
                got = self._gather_ready(chunks, n, got)
        return _joined(chunks, n)

    def readinto(self, buffer: Any, timeout: float | None = None) -> int:
        """Read into a writable, C-contiguous buffer; returns the byte count, 0 at FIN."""
        return _native.wait_blocking(self._native_obj, lambda: self._readinto_now(buffer), timeout, "readinto()")

    def drain(self, timeout: float | None = None) -> None:
        """Wait until the bytes in flight fall to the write limit; raises as
        :meth:`Stream.drain` does when written data can no longer be delivered."""
        _native.wait_blocking(self._native_obj, self._drained, timeout, "drain()")

    def wait_closed(self, timeout: float | None = None) -> None:
        """Block until the stream is shut down in both directions (and our data acknowledged)."""
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
