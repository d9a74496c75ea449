"""Exceptions, and the names of msquic's status codes."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

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
_CRYPTO_ERROR_BASE = 0x100  # QUIC transport error CRYPTO_ERROR(alert), RFC 9000 section 20.1

# The TLS alert registry (RFC 8446 section 6, IANA "TLS Alerts"; 121 from RFC 9849).
_ALERT_NAMES: dict[int, str] = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate",
    44: "certificate_revoked", 45: "certificate_expired", 46: "certificate_unknown",
    47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied", 50: "decode_error",
    51: "decrypt_error", 70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
    86: "inappropriate_fallback", 90: "user_canceled", 109: "missing_extension",
    110: "unsupported_extension", 112: "unrecognized_name", 113: "bad_certificate_status_response",
    115: "unknown_psk_identity", 116: "certificate_required", 120: "no_application_protocol",
    121: "ech_required",
}
_NO_APPLICATION_PROTOCOL = 120


def tls_alert_name(alert: int) -> str | None:
    """The registry name of a TLS alert, e.g. ``tls_alert_name(48) == "unknown_ca"``;
    None for a number the registry does not assign."""
    return _ALERT_NAMES.get(alert)


def _alert_text(alert: int) -> str:
    name = tls_alert_name(alert)
    return f"TLS_ALERT({alert})" if name is None else f"{name} ({alert})"


def status_name(status: int) -> str:
    """A readable name for a QUIC_STATUS value: msquic's name (``status_name(111) ==
    "CONNECTION_REFUSED"``), except that a TLS alert is spelled with its registry name
    and number, ``"unknown_ca (48)"`` for msquic's QUIC_STATUS_TLS_ALERT(48)
    (``TLS_ALERT(n)`` for a number the registry does not assign)."""
    status &= 0xFFFFFFFF
    if _TLS_ALERT_BASE <= status < _TLS_ALERT_BASE + 256:
        return _alert_text(status - _TLS_ALERT_BASE)
    if status in _STATUS_NAMES:
        return _STATUS_NAMES[status]
    if _CERT_ERROR_BASE <= status < _CERT_ERROR_BASE + 256:
        return f"CERT_ERROR({status - _CERT_ERROR_BASE})"
    return f"UNKNOWN_STATUS({status:#x})"


def failed(status: int) -> bool:
    """msquic's QUIC_FAILED, ``(int)status > 0``: PENDING and CONTINUE are successes."""
    return 0 < (status & 0xFFFFFFFF) < 0x80000000


class QuicError(Exception):
    """An msquic operation failed. ``status`` is the QUIC_STATUS, ``status_name`` its name
    (see :func:`status_name`)."""

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

    # The subclasses, also spelled ListenError.NotStarted etc. (set below).
    NotStarted: ClassVar[type[NotStarted]]
    AlreadyStarted: ClassVar[type[AlreadyStarted]]
    Finished: ClassVar[type[Finished]]
    Failed: ClassVar[type[Failed]]


class NotStarted(ListenError):
    """accept() on a listener that was never started."""


class AlreadyStarted(ListenError):
    """start() on a listener that is started (or still stopping)."""


class Finished(ListenError):
    """accept() after stop() or close(), once no queued connection is left."""


class Failed(ListenError):
    """msquic refused to start the listener (address in use, ALPN in use, ...)."""


# The seed API names them ListenError.NotStarted etc.; keep both spellings.
ListenError.NotStarted = NotStarted
ListenError.AlreadyStarted = AlreadyStarted
ListenError.Finished = Finished
ListenError.Failed = Failed


class ConnectionClosed(QuicError):
    """The connection is shut down, or failed before completing its handshake.

    ``by_peer`` with ``error_code`` (the peer's application error code), or
    ``by_transport`` with ``status``/``status_name`` and ``error_code`` (the wire code),
    or ``by_app`` with ``error_code`` when this side shut it down.

    A transport close a caller handles differently has its own subclass:
    :class:`ConnectionRefused`, :class:`IdleTimeout`, :class:`HandshakeError` (and its
    :class:`AlpnMismatch`), :class:`VersionNegotiationError`, :class:`Unreachable`;
    match on the class, never on the message. They are deliberately not also the
    builtin ``ConnectionRefusedError``/``TimeoutError``/``OSError`` subclasses: those
    carry errno semantics msquic's statuses do not share across platforms (TLS alerts
    are no errno at all), ``except OSError`` around socket code would start catching
    QUIC failures, and ``TimeoutError`` already means "a ``timeout=`` wait ran out",
    with the connection still alive, the opposite of a connection that timed out.
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


class ConnectionRefused(ConnectionClosed):
    """The server refused the connection (CONNECTION_REFUSED): its new-connection hook
    said no, or its backlog or handshake limit was full. Retrying later may work."""


class IdleTimeout(ConnectionClosed):
    """The peer went silent: nothing heard from it within the idle timeout
    (CONNECTION_IDLE: ``Settings.idle_timeout_ms``, or ``handshake_idle_timeout_ms``
    before the handshake completed, so a server that never answers ends up here), or
    what this side sent stayed unacknowledged for ``disconnect_timeout_ms``
    (CONNECTION_TIMEOUT). One class for both, as a caller handles them alike (the
    peer is gone, or the path to it is); ``status_name`` tells them apart."""


class HandshakeError(ConnectionClosed):
    """The TLS handshake failed: a TLS alert either side sent (``unknown_ca``,
    ``certificate_expired``, ...), or a certificate msquic rejected (CERT_UNTRUSTED_ROOT,
    CERT_EXPIRED, ...), or HANDSHAKE_FAILURE/TLS_ERROR.

    ``alert`` is the TLS alert number that ended the handshake (from the status, or
    else from the wire's CRYPTO_ERROR code) and ``alert_name`` its registry name
    (``"unknown_ca"`` for 48); both None when no alert is known.
    """

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.alert: int | None = _alert_of(self.status, self.error_code)
        self.alert_name: str | None = None if self.alert is None else tls_alert_name(self.alert)


class AlpnMismatch(HandshakeError):
    """Client and server have no ALPN protocol in common (ALPN_NEG_FAILURE, or the TLS
    alert no_application_protocol (120), which is how a peer reports it)."""


class VersionNegotiationError(ConnectionClosed):
    """Client and server have no QUIC version in common (VER_NEG_ERROR): the server
    answered with a Version Negotiation packet listing only versions msquic lacks."""


class Unreachable(ConnectionClosed):
    """Nothing answers at that address (UNREACHABLE: an ICMP port or host unreachable,
    e.g. no server listening on that UDP port)."""


def _alert_of(status: int | None, error_code: int | None) -> int | None:
    if status is not None and _TLS_ALERT_BASE <= status < _TLS_ALERT_BASE + 256:
        return status - _TLS_ALERT_BASE
    if error_code is not None and _CRYPTO_ERROR_BASE <= error_code < _CRYPTO_ERROR_BASE + 256:
        return error_code - _CRYPTO_ERROR_BASE
    return None


# Statuses with a class of their own; TLS and certificate ones are found by range below.
_TRANSPORT_CLOSES: dict[int, tuple[type[ConnectionClosed], str]] = {
    lib.QUIC_STATUS_CONNECTION_REFUSED: (ConnectionRefused, "the server refused the connection"),
    lib.QUIC_STATUS_CONNECTION_IDLE: (IdleTimeout, "idle timeout: nothing heard from the peer"),
    lib.QUIC_STATUS_CONNECTION_TIMEOUT: (IdleTimeout, "the peer stopped acknowledging (disconnect timeout)"),
    lib.QUIC_STATUS_ALPN_NEG_FAILURE: (AlpnMismatch, "no ALPN protocol in common with the peer"),
    lib.QUIC_STATUS_VER_NEG_ERROR: (VersionNegotiationError, "no QUIC version in common with the peer"),
    lib.QUIC_STATUS_UNREACHABLE: (Unreachable, "the peer is unreachable (nothing listening there?)"),
}
_HANDSHAKE_STATUSES = {lib.QUIC_STATUS_HANDSHAKE_FAILURE, lib.QUIC_STATUS_TLS_ERROR}


def transport_closed(status: int, error_code: int) -> ConnectionClosed:
    """The exception for a connection the transport shut down (msquic's
    SHUTDOWN_INITIATED_BY_TRANSPORT, with its ``status`` and wire ``error_code``):
    the :class:`ConnectionClosed` subclass a caller handles, with a readable message."""
    status &= 0xFFFFFFFF
    cls, message = _TRANSPORT_CLOSES.get(status, (ConnectionClosed, "closed by the transport"))
    alert = _alert_of(status, error_code)
    if alert == _NO_APPLICATION_PROTOCOL:  # how a peer reports ALPN_NEG_FAILURE
        cls, message = _TRANSPORT_CLOSES[lib.QUIC_STATUS_ALPN_NEG_FAILURE]
    elif cls is ConnectionClosed and (alert is not None or status in _HANDSHAKE_STATUSES
                                      or _CERT_ERROR_BASE <= status < _CERT_ERROR_BASE + 256):
        cls, message = HandshakeError, "TLS handshake failed"
        if alert is not None and not _TLS_ALERT_BASE <= status < _TLS_ALERT_BASE + 256:
            # The status does not name the alert (CERT_UNTRUSTED_ROOT, ...): say which went on the wire.
            message += f", alert {_alert_text(alert)}"
    return cls(message, status=status, by_transport=True, error_code=error_code)


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


class IncompleteReadError(asyncio.IncompleteReadError):
    """The stream ended (the peer's FIN) before ``readexactly()`` or
    ``readuntil()`` had what it needed; ``partial`` holds what came (consumed).
    Raised in both worlds; being an :class:`asyncio.IncompleteReadError` (an
    EOFError), asyncio code catches it as it does for asyncio's streams, and
    blocking code needs no asyncio import."""


class LimitOverrunError(asyncio.LimitOverrunError):
    """``readuntil()`` met ``limit`` bytes without the separator, or found it
    beyond ``limit``; nothing was consumed. ``consumed`` is asyncio's hint of
    how many bytes to skip. An :class:`asyncio.LimitOverrunError`, raised in
    both worlds."""
