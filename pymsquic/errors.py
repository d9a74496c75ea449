"""Exceptions, and the names of msquic's status codes."""

from __future__ import annotations

from ._msquic import lib

#: The application error code a connection closes with when the ``with``/``async with``
#: block that owns it, or the ``serve()`` handler running it, exits by an exception
#: (a clean exit closes with 0). To send your own code, call ``conn.shutdown(code)``
#: before leaving: only the first shutdown of a connection reaches the wire.
EXCEPTION_ERROR_CODE = 1

_STATUS_NAMES: dict[int, str] = {}
for _attr in dir(lib):
    if _attr.startswith("QUIC_STATUS_"):
        _STATUS_NAMES.setdefault(getattr(lib, _attr) & 0xFFFFFFFF, _attr[len("QUIC_STATUS_"):])

_TLS_ALERT_BASE = 0xBEBC300  # QUIC_STATUS_TLS_ALERT(0)
_CERT_ERROR_BASE = 0xBEBC400  # QUIC_STATUS_CERT_ERROR(0)


def status_name(status: int) -> str:
    """msquic's name for a QUIC_STATUS value, e.g. ``status_name(111) == "CONNECTION_REFUSED"``."""
    status &= 0xFFFFFFFF
    if status in _STATUS_NAMES:
        return _STATUS_NAMES[status]
    if _TLS_ALERT_BASE <= status < _TLS_ALERT_BASE + 256:
        return f"TLS_ALERT({status - _TLS_ALERT_BASE})"
    if _CERT_ERROR_BASE <= status < _CERT_ERROR_BASE + 256:
        return f"CERT_ERROR({status - _CERT_ERROR_BASE})"
    return f"UNKNOWN_STATUS({status:#x})"


def failed(status: int) -> bool:
    """msquic's QUIC_FAILED, ``(int)status > 0``: PENDING and CONTINUE are successes."""
    return 0 < (status & 0xFFFFFFFF) < 0x80000000


class QuicError(Exception):
    """An msquic operation failed. ``status`` is the QUIC_STATUS, ``status_name`` its msquic name."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = None if status is None else status & 0xFFFFFFFF
        self.status_name = None if status is None else status_name(status)
        if self.status is not None:
            message = f"{message}: {self.status_name} ({self.status:#x})"
            if lib.pmq_library_forked():  # every msquic call fails in such a child: say why
                message += " (forked after msquic started: pymsquic cannot be used in this process)"
        super().__init__(message)


class ListenError(QuicError):
    """A listener operation that cannot proceed; see the subclasses."""


class NotStarted(ListenError):
    """accept() on a listener that was never started."""


class AlreadyStarted(ListenError):
    """start() on a listener that is started (or still stopping)."""


class Finished(ListenError):
    """accept() after stop() or close(), once no queued connection is left."""


class Failed(ListenError):
    """msquic refused to start the listener (address in use, ALPN in use, ...)."""


# The seed API names them ListenError.NotStarted etc.; keep both spellings.
ListenError.NotStarted = NotStarted  # type: ignore[attr-defined]
ListenError.AlreadyStarted = AlreadyStarted  # type: ignore[attr-defined]
ListenError.Finished = Finished  # type: ignore[attr-defined]
ListenError.Failed = Failed  # type: ignore[attr-defined]


class ConnectionClosed(QuicError):
    """The connection is shut down, or failed before completing its handshake.

    ``by_peer`` with ``error_code`` (the peer's application error code), or
    ``by_transport`` with ``status``/``status_name`` (e.g. CONNECTION_IDLE,
    CONNECTION_REFUSED, ALPN_NEG_FAILURE) and ``error_code`` (the wire code),
    or ``by_app`` with ``error_code`` when this side shut it down.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        by_peer: bool = False,
        by_transport: bool = False,
        by_app: bool = False,
        error_code: int | None = None,
    ) -> None:
        super().__init__(message, status if by_transport else None)
        self.by_peer = by_peer
        self.by_transport = by_transport
        self.by_app = by_app
        self.error_code = error_code


class DatagramQueueFull(QuicError):
    """``send_datagram`` refused a datagram: as many as the connection's datagram send
    queue holds (``Connection.set_datagram_send_queue_size``) are in flight (queued, or
    sent and not yet acknowledged or lost).
    Nothing was queued; send again later or drop it, as datagrams are unreliable anyway."""


class StreamError(QuicError):
    """A stream operation failed (aborted stream, write after finish, ...)."""


class StreamReset(StreamError):
    """The peer reset the stream (RESET_STREAM); ``error_code`` is its application code."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.error_code = error_code


class StreamStopped(StreamError):
    """The peer asked us to stop sending (STOP_SENDING); ``error_code`` is its application code."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.error_code = error_code


class ForkedProcessError(QuicError):
    """pymsquic was used in a child forked after msquic had started in the parent.

    msquic's threads do not survive ``fork()``, and its state copied into the child
    cannot be reset there, so the child cannot use pymsquic at all: neither the
    parent's objects nor new ones. Fork before the first use of pymsquic, or start
    children with multiprocessing's "spawn" or "forkserver" method.
    """


class HookContextError(RuntimeError):
    """A blocking pymsquic call was made inside a hook running on a msquic thread.

    It would wait for the very thread it runs on; use the non-blocking calls there.
    """
