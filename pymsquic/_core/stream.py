"""The stream state and the non-blocking steps both worlds share.

:class:`StreamCore` wraps one native stream: its state, writes (which never
wait), and reads of what is there now. :mod:`pymsquic.asyncio.stream` and
:mod:`pymsquic.sync.stream` add only the waiting. Received bytes are copied
once, straight out of msquic's buffers. Unread data stays with msquic, which
stops delivery and flow-controls the peer, so a slow reader bounds memory.
Writes are copied once and queued at once; ``drain()`` waits while more than
the send limit (msquic's ideal send buffer size, or ``set_write_limit``) is in
flight.

A read that needs several waits (``readexactly``, ``readuntil``, ``read()``
until FIN) is a generator here: it yields each time it must wait, and the world
drives it. If the wait raises (cancelled, timed out, interrupted), the world
closes the generator, and what it had gathered goes back in front of the
stream (``_pushback``), which every read path takes from first.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Generator, Iterable

from .. import _native
from .._buffers import BufferLike, c_buffer
from .._msquic import ffi, lib
from ..errors import (
    EXCEPTION_ERROR_CODE,
    IncompleteReadError,
    LimitOverrunError,
    QuicError,
    StreamError,
    StreamReset,
    StreamStopped,
    failed,
)
from ..statistics import StreamStats

if TYPE_CHECKING:
    from .connection import ConnectionCore

READ_CHUNK = 1 << 20  # what iteration and read() until FIN take per step
DEFAULT_LIMIT = 1 << 16  # readuntil()'s default bound, as asyncio's StreamReader
_MAX_WRITE = 0xFFFFFFFF  # one QUIC_BUFFER

#: A read in steps: yields whenever it must wait for the stream, returns the result.
ReadSteps = Generator[None, None, bytes]


def separator_and_limit(separator: object, limit: object) -> tuple[bytes, int]:
    """``readuntil()``'s arguments, checked: a non-empty bytes-like separator
    (not an int, which bytes() would turn into NUL bytes) and a positive limit."""
    if isinstance(separator, int):
        raise TypeError("readuntil(): separator must be a bytes-like object, not int")
    try:
        sep = memoryview(separator).tobytes()  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"readuntil(): separator must be a bytes-like object, not {type(separator).__name__}") \
            from None
    if not sep:
        raise ValueError("readuntil(): separator must not be empty")
    n = count(limit, "readuntil()")
    if n < 1:
        raise ValueError(f"readuntil(): limit must be at least 1, not {n}")
    return sep, n


def count(n: object, what: str) -> int:
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

    def __init__(self, stream: "StreamCore", chunks: "list[bytes]") -> None:
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
        raise IncompleteReadError(data, n)  # FIN first: the partial is handed over
    return data


class StreamCore:
    """What a stream is and does without waiting; see the module docstring."""

    def __init__(self, native: Any, connection: "ConnectionCore[Any]") -> None:
        # Internal: wrap a pmq_stream * whose Python reference we now own.
        self._stream = native
        self._native_obj = lib.pmq_stream_obj(native)
        self._connection = connection
        # Bytes a cancelled or failed read in steps had taken and not returned:
        # every read path takes them first.
        self._pushback = bytearray()
        # Every byte up to the peer's FIN was read (learnt with the last data):
        # later reads return b"" without asking msquic again. Final, as natively.
        self._eof_read = False

    def __del__(self) -> None:
        # Not a weakref finalizer: streams are the hottest objects, and the
        # release never blocks (see _native.release_now_or_later).
        if hasattr(self, "_stream"):
            _native.release_now_or_later(lib.pmq_stream_release, self._stream)

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
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
            if not 0 < limit < 2**64:
                raise ValueError(f"limit must be a positive 64-bit int or None, not {limit!r}")
        lib.pmq_stream_set_send_limit(self._stream, limit or 0)

    def _failure(self, status: int) -> QuicError:
        local = self._connection._registration_closed()  # not "reset by peer" after our own close
        if local is not None:
            return local
        st = self._state()
        if status == lib.PMQ_READ_RESET:
            return StreamReset(f"stream reset by peer with error {st.reset_code}", st.reset_code)
        if st.flags & lib.PMQ_STREAM_CONN_SHUTDOWN:
            reason = self._connection.close_reason
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
        """Append what is readable now to a read of ``n`` bytes (n < 0: until
        FIN) that has ``got`` bytes in ``chunks``. Returns the new count, or -1
        once the read is complete (n bytes, or FIN)."""
        while n < 0 or got < n:
            chunk = self._read_now(READ_CHUNK if n < 0 else n - got)
            if chunk is None:
                return got
            if not chunk:
                return -1
            chunks.append(chunk)
            got += len(chunk)
        return -1

    def _read_steps(self, n: int, first: bytes | None = None, checked: bool = False) -> ReadSteps:
        """``readexactly(n)``, or with n < 0 ``read()`` until FIN, in steps.
        ``checked``: ``_read_now`` just took ``first`` for it (None: nothing was
        there, b"": the FIN), so the first step waits; ``first`` is given back
        like the rest if the read fails."""
        chunks: list[bytes] = [first] if first else []
        with _GiveBack(self, chunks):
            if checked:  # what was there is taken: wait (a FIN or an error known ends the wait at once)
                got = -1 if first == b"" else len(first or b"")
            else:
                got = self._gather_ready(chunks, n, 0)
            while got >= 0:
                yield
                got = self._gather_ready(chunks, n, got)
        return _joined(chunks, n)

    def _readuntil_steps(self, separator: bytes, limit: int) -> ReadSteps:
        """``readuntil(separator)`` in steps, asyncio's semantics: the bytes up
        to and including ``separator``; IncompleteReadError with what came
        (consumed) at FIN; LimitOverrunError, consuming nothing, when more than
        ``limit`` bytes come without it, or it ends beyond ``limit``."""
        pushback = self._pushback
        if pushback:  # a line already taken in (readline() after readline()): cut it off in place
            end = pushback.find(separator, 0, limit) + len(separator)
            if end >= len(separator):
                line = bytes(pushback[:end])
                del pushback[:end]  # cheap at the front of a bytearray
                return line
        buffer = bytearray()
        chunks: list[bytes] = [buffer]  # type: ignore[list-item]  # a bytearray joins as well
        searched = 0
        with _GiveBack(self, chunks):
            while True:
                found = buffer.find(separator, searched)
                if found >= 0:
                    end = found + len(separator)
                    if end > limit:
                        raise LimitOverrunError(
                            f"separator is found, but chunk is longer than limit ({limit})", found)
                    self._pushback[:0] = buffer[end:]
                    chunks.clear()
                    return bytes(buffer[:end])
                if len(buffer) > limit:
                    raise LimitOverrunError(f"separator is not found, and chunk exceed the limit ({limit})",
                                                    len(buffer))
                searched = max(0, len(buffer) - len(separator) + 1)
                chunk = self._read_now(READ_CHUNK)
                if chunk is None:
                    yield
                elif chunk:
                    buffer += chunk
                else:  # FIN first: the partial is handed over, and so consumed
                    chunks.clear()
                    raise IncompleteReadError(bytes(buffer), None)

    def _readline_steps(self, limit: int) -> ReadSteps:
        """``readline()`` in steps: a line, or what is left at FIN; ValueError
        (nothing consumed) for a line longer than ``limit``."""
        try:
            return (yield from self._readuntil_steps(b"\n", limit))
        except IncompleteReadError as exc:
            return exc.partial
        except LimitOverrunError as exc:
            raise ValueError(exc.args[0]) from None

    def _readable(self) -> bool | None:
        """True when a read would not wait (data, FIN or an error to report);
        consumes nothing."""
        if self._pushback or self._eof_read:
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
        if self._eof_read:
            return b""
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
                after = lib.PMQ_READ_DATA
                have = len(chunks)
                try:
                    status = lib.pmq_stream_peek(stream, scratch.data, scratch.size)
                    if status == lib.PMQ_READ_DATA:
                        chunks.append(ffi.buffer(scratch.data[0], min(scratch.size[0], n - got))[:])
                finally:
                    if status == lib.PMQ_READ_DATA:
                        # The consume also tells what follows: no peek just to learn of the FIN.
                        after = lib.pmq_stream_consume_next(stream, len(chunks[-1]) if len(chunks) > have else 0)
                if status == lib.PMQ_READ_DATA:
                    got += len(chunks[-1])
                    if after == lib.PMQ_READ_DATA:
                        continue
                    self._eof_read = after == lib.PMQ_READ_EOF
                    break  # nothing more now (an error is reported by the next read)
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

    def _read_chunk_now(self) -> bytes | None:
        """``_read_now`` of a read until FIN's step: a wait's check."""
        return self._read_now(READ_CHUNK)

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
        if self._eof_read:
            return 0
        scratch = _native.scratch
        copied = scratch.size
        status = lib.pmq_stream_read_into_next(self._stream, target, size, copied, scratch.next_status)
        if status == lib.PMQ_READ_DATA:
            self._eof_read = scratch.next_status[0] == lib.PMQ_READ_EOF
            return int(copied[0])
        if status == lib.PMQ_READ_WOULD_BLOCK:
            return None
        if status == lib.PMQ_READ_EOF:
            return 0
        raise self._failure(status)

    # ---- writing ------------------------------------------------------------------

    def write(self, data: BufferLike, fin: bool = False) -> None:
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
        local = self._connection._registration_closed()  # not "stopped" after our own close
        if local is not None:
            return local
        st = self._state()
        if st.flags & lib.PMQ_STREAM_STOP_SENDING_RECEIVED:
            return StreamStopped(f"peer asked to stop sending with error {st.stop_sending_code}",
                                 st.stop_sending_code)
        reason = self._connection.close_reason
        if reason is not None:
            return reason
        if st.flags & lib.PMQ_STREAM_FIN_SENT:
            return StreamError("write after finish()")
        if st.flags & lib.PMQ_STREAM_RESET_SENT:
            return StreamError("write after reset()")
        if st.flags & lib.PMQ_STREAM_UNIDIRECTIONAL and not st.flags & lib.PMQ_STREAM_LOCAL:
            return StreamError("cannot write to the peer's unidirectional stream")
        return StreamError("cannot write to the stream", status)

    def writelines(self, lines: Iterable[BufferLike]) -> None:
        """Write each buffer of ``lines`` (any iterable). All are checked first:
        a TypeError leaves nothing of them written."""
        for cdata, nbytes in [c_buffer(data) for data in lines]:
            self._write_c(cdata, nbytes, False)

    def finish(self) -> None:
        """End our side of the stream (FIN) once written data is sent, like ``write_eof``."""
        self.write(b"", fin=True)

    def reset(self, error_code: int = 0) -> None:
        """Abort sending (RESET_STREAM with ``error_code``); unsent data is dropped.
        Writing after it raises :class:`~pymsquic.StreamError`."""
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
            local = self._connection._registration_closed()  # not "stopped" after our own close
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
            return StreamError("the stream was reset (reset() or abort()): written data was not delivered")
        reason = self._connection.close_reason
        if reason is not None:
            return reason
        return StreamError("the stream was aborted: written data was not delivered")

    def _closed_now(self) -> bool | None:
        return True if self._state().flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE else None

    def _stop_sending_now(self) -> tuple[int | None] | None:
        # wait_stop_sending()'s predicate: (the peer's STOP_SENDING code,) or (None,) once
        # the stream is over without one; None while neither.
        st = self._state()
        if st.flags & lib.PMQ_STREAM_STOP_SENDING_RECEIVED:
            return (st.stop_sending_code,)
        return (None,) if st.flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE else None

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

    def _open_directions(self) -> tuple[bool, bool]:
        """Whether our sending and the peer's sending to us are still going on."""
        flags = self._state().flags
        if flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE:
            return False, False
        uni = flags & lib.PMQ_STREAM_UNIDIRECTIONAL
        local = flags & lib.PMQ_STREAM_LOCAL
        sending = not flags & (lib.PMQ_STREAM_FIN_SENT | lib.PMQ_STREAM_RESET_SENT) and not (uni and not local)
        receiving = not flags & (lib.PMQ_STREAM_FIN_RECEIVED | lib.PMQ_STREAM_RESET_RECEIVED |
                                 lib.PMQ_STREAM_STOP_SENDING_SENT) and not (uni and local)
        return sending, receiving

    def at_eof(self) -> bool:
        """True once the peer finished its side and every byte of it was read."""
        return not self._pushback and bool(self._state().flags & lib.PMQ_STREAM_FIN_RECEIVED)

    def close(self) -> None:
        """Finish gracefully, like ``StreamWriter.close()``: our side ends with a
        FIN after the data written (which is still delivered), and if the peer
        is still sending, it is asked to stop (STOP_SENDING with 0). Never
        waits; ``wait_closed()`` waits for the end. See :meth:`abort`."""
        sending, receiving = self._open_directions()
        if sending:
            try:
                self._write_c(ffi.NULL, 0, True)
            except QuicError:  # the stream or its connection ended meanwhile: nothing left to finish
                pass
        if receiving:
            self.stop_sending(0)

    def abort(self, error_code: int = 0) -> None:
        """Reset both ways: RESET_STREAM (unsent data dropped) and STOP_SENDING,
        each with ``error_code``, on the directions still open."""
        sending, receiving = self._open_directions()
        flags = (lib.QUIC_STREAM_SHUTDOWN_FLAG_ABORT_SEND if sending else 0) | (
            lib.QUIC_STREAM_SHUTDOWN_FLAG_ABORT_RECEIVE if receiving else 0)
        if flags:
            self._shutdown(flags, error_code)

    def _exit(self, exc_type: type | None) -> None:
        """Leaving ``with``/``async with``: close, or abort when left by an exception."""
        if exc_type is None:
            self.close()
        else:
            self.abort(EXCEPTION_ERROR_CODE)

    def __repr__(self) -> str:
        st = self._state()
        kind = "uni" if st.flags & lib.PMQ_STREAM_UNIDIRECTIONAL else "bidi"
        side = "local" if st.flags & lib.PMQ_STREAM_LOCAL else "peer"
        state = "closed" if st.flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE else "open"
        return f"<{type(self).__name__} id={self.id} {kind} {side} {state}>"

    def stats(self) -> StreamStats:
        """Where this stream's sending waited, and why (msquic's
        QUIC_STREAM_STATISTICS). Asks msquic's worker and waits for its answer,
        briefly. StreamError before the stream started (its first write) and
        once it is closed."""
        _native.forbid_in_callback("Stream.stats()")
        out = ffi.new("pmq_stream_stats *")
        status = lib.pmq_stream_get_stats(self._stream, out)
        if failed(status):
            flags = self._state().flags
            if not flags & (lib.PMQ_STREAM_ID_KNOWN | lib.PMQ_STREAM_SHUTDOWN_COMPLETE):
                raise StreamError("the stream has not started yet (nothing was written)", status)
            if flags & lib.PMQ_STREAM_SHUTDOWN_COMPLETE and not flags & lib.PMQ_STREAM_CONN_SHUTDOWN:
                raise StreamError("the stream is closed: its statistics went with it", status)
            raise self._failure(status)
        return StreamStats._from_native(out)

    @property
    def opened_in_0rtt(self) -> bool:
        """True for a peer's stream whose first packet was a 0-RTT one (msquic's
        QUIC_STREAM_OPEN_FLAG_0_RTT): its first bytes may be a replay (see
        :mod:`pymsquic.resumption`). False for local streams and for streams
        whose first packet was a 1-RTT one; such a stream may still get 0-RTT
        data that arrived reordered, after it (msquic does not tell)."""
        return bool(self._state().flags & lib.PMQ_STREAM_OPENED_IN_0RTT)
