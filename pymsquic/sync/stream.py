"""Blocking streams: :class:`Stream`, the names and behaviour of
:class:`pymsquic.asyncio.Stream`, with ``timeout=`` on every wait.

Everything but the waiting is in :class:`pymsquic._core.stream.StreamCore`.
Waits release the GIL; each call has one deadline for all of its waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from .. import _native
from .._buffers import BufferLike
from .._core.stream import DEFAULT_LIMIT, READ_CHUNK, ReadSteps, StreamCore, count, separator_and_limit

if TYPE_CHECKING:
    from typing_extensions import Self

    from .connection import Connection

T = TypeVar("T")


class Stream(StreamCore):
    """A QUIC stream for threads.

    Reads: :meth:`read`, :meth:`readexactly`, :meth:`readuntil`,
    :meth:`readline`, :meth:`readinto`, ``for chunk in stream`` (ends at the
    peer's FIN). Writes never wait: :meth:`write` queues, :meth:`drain` waits
    for room. Every wait takes ``timeout`` (seconds, None for ever) for the
    whole call; a TimeoutError loses nothing: bytes a read had gathered stay
    for the next one.

    :meth:`finish` sends FIN; :meth:`close` finishes gracefully and
    :meth:`abort` resets both ways. ``with stream:`` closes on the way out
    (aborts with :data:`~pymsquic.EXCEPTION_ERROR_CODE` when left by an
    exception).
    """

    @property
    def connection(self) -> Connection:
        """The connection the stream belongs to."""
        return self._connection  # type: ignore[return-value]

    def _wait(self, check_ready: Callable[[], T | None], timeout: float | None, what: str) -> T:
        self._connection._start_deferred()  # an early-data client starts at its first wait
        return _native.wait_blocking(self._native_obj, check_ready, timeout, what)

    # ---- reading ---------------------------------------------------------------

    def read(self, n: int = -1, timeout: float | None = None) -> bytes:
        """Up to ``n`` bytes (at least one, b"" at FIN); ``n=-1`` reads until FIN.

        Raises :class:`~pymsquic.StreamReset` if the peer reset the stream, the
        connection's :class:`~pymsquic.ConnectionClosed` if it closed first,
        TimeoutError after ``timeout`` seconds.
        """
        n = count(n, "read()")
        if n < 0:
            deadline = _native.Deadline(timeout)
            first = self._read_now(READ_CHUNK)
            if first is None:
                # Wait for the bytes themselves: a small answer comes with its FIN,
                # and is then returned without a read in steps.
                first = self._wait(self._read_chunk_now, timeout, "read()")
            if not first or self._eof_read:
                return first  # all there, FIN included: no steps to drive
            return self._run(self._read_steps(-1, first, checked=True), deadline, "read()")
        if n == 0:
            return b""
        return self._wait(lambda: self._read_now(n), timeout, "read()")

    def readexactly(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly ``n`` bytes; :class:`~pymsquic.IncompleteReadError` (its
        ``partial`` then consumed) if FIN comes first."""
        n = count(n, "readexactly()")
        if n < 0:
            raise ValueError(f"readexactly() needs n >= 0, not {n}")
        return self._run(self._read_steps(n), timeout, "readexactly()")

    def readuntil(self, separator: bytes = b"\n", *, limit: int = DEFAULT_LIMIT,
                  timeout: float | None = None) -> bytes:
        """The bytes up to and including ``separator``, as
        :meth:`asyncio.StreamReader.readuntil`: :class:`~pymsquic.IncompleteReadError`
        at FIN (``partial`` consumed), :class:`~pymsquic.LimitOverrunError` when
        ``limit`` bytes come without it (nothing is consumed then)."""
        return self._run(self._readuntil_steps(*separator_and_limit(separator, limit)), timeout, "readuntil()")

    def readline(self, *, limit: int = DEFAULT_LIMIT, timeout: float | None = None) -> bytes:
        """One line ending in ``b"\\n"``, or what is left at FIN (b"" at the end).
        ValueError when a line is longer than ``limit`` (it stays unread)."""
        return self._run(self._readline_steps(separator_and_limit(b"\n", limit)[1]), timeout, "readline()")

    def readinto(self, buffer: BufferLike, timeout: float | None = None) -> int:
        """Read into a writable, C-contiguous buffer; returns the byte count, 0 at FIN."""
        return self._wait(lambda: self._readinto_now(buffer), timeout, "readinto()")

    def _run(self, steps: ReadSteps, timeout: float | None | _native.Deadline, what: str) -> bytes:
        # Drives a read in steps (see _core.stream) under one deadline; closing
        # it on an exception (a timeout above all) puts what it gathered back.
        deadline = timeout if isinstance(timeout, _native.Deadline) else _native.Deadline(timeout)
        self._connection._start_deferred()  # an early-data client starts at its first wait
        try:
            while True:
                next(steps)
                _native.wait_until(self._native_obj, self._readable, deadline, what)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            steps.close()

    def __iter__(self) -> Iterator[bytes]:
        """Chunks until the peer's FIN; raises if the stream or its connection failed."""
        while True:
            chunk = self.read(READ_CHUNK)
            if not chunk:
                return
            yield chunk

    # ---- writing and closing ------------------------------------------------------

    def drain(self, timeout: float | None = None) -> None:
        """Wait until the bytes in flight fall to the write limit; raises as
        :meth:`pymsquic.asyncio.Stream.drain` does once written data can no
        longer be delivered."""
        self._wait(self._drained, timeout, "drain()")

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the stream is over in both directions (our data acknowledged)."""
        self._wait(self._closed_now, timeout, "wait_closed()")

    def wait_stop_sending(self, timeout: float | None = None) -> int | None:
        """Wait until the peer wants no more of what we send: returns the error
        code of its STOP_SENDING, or None once the stream is over without one
        (ended both ways, reset, or its connection closed)."""
        result = self._stop_sending_now()
        if result is None:
            result = self._wait(self._stop_sending_now, timeout, "wait_stop_sending()")
        return result[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._exit(exc_type)
