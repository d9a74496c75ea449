"""TLS key log: NSS key log lines (the ``SSLKEYLOGFILE`` format) for Wireshark.

A connection with a key log appends five lines to it once its handshake
completed (``CLIENT_HANDSHAKE_TRAFFIC_SECRET``, ``SERVER_HANDSHAKE_TRAFFIC_SECRET``,
``CLIENT_TRAFFIC_SECRET_0``, ``SERVER_TRAFFIC_SECRET_0`` and, with 0-RTT,
``CLIENT_EARLY_TRAFFIC_SECRET``), or what it got of them if the handshake
failed. msquic fills the secrets on its own threads; the native layer writes
them there, one ``write()`` per connection on a file opened for appending, so
lines of concurrent connections (and processes) never interleave.

**Anyone holding a key log can decrypt every connection it logged**, captured
before or after: use it for debugging only, keep it private (pymsquic creates
it with mode 0600) and delete it afterwards.

Where the secrets go: ``keylog_file=`` of ``connect()`` and ``serve()`` (a path,
a file object open for appending or a :class:`KeyLog`) or, when that is not
given, the file named by the ``SSLKEYLOGFILE`` environment variable, as curl,
browsers and aioquic do. A key log that cannot be written never fails a
connection: the failure is logged (logger ``pymsquic``). An explicit
``keylog_file`` that cannot be opened raises :class:`OSError` at once; an
``SSLKEYLOGFILE`` that cannot be opened is logged and ignored, and remembered
as such for the rest of the process (it is opened once per process, at the
first connection): create the file's directory before, or restart.

msquic 2.5.1 loses the secrets of a client connection that restarts its
handshake after a Version Negotiation packet (``Settings(versions=...)``
offering a version the server does not speak first): such a connection
writes no lines, and counts and logs a failure saying so.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
from typing import IO, Any, Union

from . import _native
from ._msquic import ffi, lib

logger = logging.getLogger("pymsquic")

#: What ``keylog_file=`` accepts: a path, an open file (append mode) or a KeyLog.
KeyLogLike = Union[str, "os.PathLike[str]", "IO[Any]", "KeyLog"]


class KeyLog:
    """An open NSS key log file that connections append their TLS secrets to.

    ``KeyLog(path)`` opens ``path`` for appending (created with mode 0600);
    :class:`OSError` if it cannot be opened. ``KeyLog(file)`` writes to a file
    object opened in append mode (``open(path, "a")`` or ``"ab"``), through a
    duplicate of its descriptor: the lines go straight to the file, past the
    object's own buffer; anything without a file descriptor (``io.StringIO``)
    raises :class:`TypeError`, another mode :class:`ValueError`, and so does a
    FIFO, pipe or socket (a slow reader would block msquic's threads). Pass a KeyLog
    as ``keylog_file=`` to share one open file between many ``connect()``
    calls. Connections keep the file open until they end, also after
    :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str] | IO[Any]) -> None:
        if isinstance(path, (str, os.PathLike)):
            self.path = os.fspath(path)
            fd = _open(self.path)
        else:
            fd = _duplicate(path)
            self.path = str(getattr(path, "name", f"<fd {fd}>"))
        try:
            _check_kind(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        native = lib.pmq_keylog_new(fd)
        if native == ffi.NULL:
            os.close(fd)
            raise MemoryError("cannot allocate a key log")
        self._native = native
        self._reported = 0
        self._final: tuple[int, int] | None = None  # (written, failures) saved by close()
        self._lock = threading.Lock()
        self._releaser = _native.Releaser(self, lib.pmq_keylog_release, native)

    @property
    def written(self) -> int:
        """How many connections have written their lines here (until :meth:`close`)."""
        with self._lock:
            if self._final is not None:
                return self._final[0]
            return int(lib.pmq_keylog_written(self._native))

    @property
    def failures(self) -> int:
        """How many connections could not write their lines here (until :meth:`close`)."""
        with self._lock:
            if self._final is not None:
                return self._final[1]
            return int(lib.pmq_keylog_failures(self._native, ffi.NULL))

    def _report_failures(self) -> None:
        """Log write failures not logged yet (the native layer only counts them)."""
        err = ffi.new("int *")
        with self._lock:
            if self._final is not None:
                return  # closed: the native counters may be freed
            failures = int(lib.pmq_keylog_failures(self._native, err))
            new, self._reported = failures - self._reported, failures
        if new > 0:
            # ENODATA: the handshake completed but msquic never filled the secrets
            # (msquic 2.5.1 loses them when a client restarts after Version Negotiation).
            why = ("msquic did not hand over the secrets (version negotiation?)" if err[0] == errno.ENODATA
                   else os.strerror(err[0]))
            logger.warning("key log %s: %d connection(s) could not write their TLS secrets: %s",
                           self.path, new, why)

    def close(self) -> None:
        """Let go of the file; connections that use it keep it open until they end.

        The counts stop here: the native counters are freed once the last
        connection ends, so :attr:`written` and :attr:`failures` then give the
        values they had at close."""
        with self._lock:
            if self._final is None:
                self._final = (int(lib.pmq_keylog_written(self._native)),
                               int(lib.pmq_keylog_failures(self._native, ffi.NULL)))
        self._releaser()

    @property
    def closed(self) -> bool:
        return not self._releaser.alive

    def __repr__(self) -> str:
        return f"<KeyLog {self.path!r} written={self.written} failures={self.failures}>"


def _open(path: str) -> int:
    """``path`` opened for appending (created 0600), without blocking on a FIFO."""
    try:
        # O_NONBLOCK: a FIFO without a reader fails (ENXIO) instead of blocking the caller.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise ValueError(f"key log {path!r} must be a regular file, not a FIFO or socket") from exc
        raise
    os.set_blocking(fd, True)  # a regular file's writes never wait anyway
    return fd


def _check_kind(fd: int, name: str) -> None:
    """Refuse what write() can block on (FIFOs, pipes, sockets): msquic's workers write.
    Character devices (/dev/null, a terminal) are let through."""
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        raise ValueError(f"key log {name!r} must be a regular file, not a FIFO, pipe or socket")


def _duplicate(file: object) -> int:
    """A descriptor of its own for an open file object in append mode."""
    fileno = getattr(file, "fileno", None)
    if not callable(fileno):
        raise TypeError(f"keylog_file must be a path, a KeyLog or a file opened for appending, "
                        f"not {type(file).__name__}")
    try:
        fd = int(fileno())
    except (OSError, ValueError) as exc:  # io.UnsupportedOperation is both
        raise TypeError(f"keylog_file {file!r} has no file descriptor: pymsquic writes the lines "
                        "from msquic's threads, straight to a file") from exc
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & os.O_APPEND or flags & os.O_ACCMODE == os.O_RDONLY:
        # Only appends keep the lines of concurrent writers whole and in one piece.
        raise ValueError(f"keylog_file {file!r} must be open for appending (mode 'a' or 'ab')")
    flush = getattr(file, "flush", None)
    if callable(flush):
        flush()  # what the caller wrote before comes first
    return os.dup(fd)  # close-on-exec, as os.dup makes it


_env_lock = threading.Lock()
_env_keylogs: dict[str, KeyLog | None] = {}  # SSLKEYLOGFILE value -> its KeyLog (None: cannot open)


def _from_environment() -> KeyLog | None:
    path = os.environ.get("SSLKEYLOGFILE")
    if not path:
        return None
    with _env_lock:
        if path not in _env_keylogs:
            try:
                _env_keylogs[path] = KeyLog(path)
                logger.warning("SSLKEYLOGFILE is set: TLS secrets of every connection go to %s", path)
            except OSError as exc:
                logger.warning("SSLKEYLOGFILE=%s cannot be opened, no key log written: %s", path, exc)
                _env_keylogs[path] = None
        return _env_keylogs[path]


def resolve(keylog_file: KeyLogLike | None) -> KeyLog | None:
    """The key log a new connection or listener writes to: ``keylog_file``, else
    ``SSLKEYLOGFILE``'s (opened once per process), else None."""
    if keylog_file is None:
        return _from_environment()
    if isinstance(keylog_file, KeyLog):
        if keylog_file.closed:
            raise ValueError("keylog_file is closed")
        return keylog_file
    return KeyLog(keylog_file)


def native(keylog: KeyLog | None) -> Any:
    """The pmq_keylog * to hand to C (NULL for none)."""
    return ffi.NULL if keylog is None else keylog._native
