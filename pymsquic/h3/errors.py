"""HTTP/3 error codes (RFC 9114 section 8.1, RFC 9204 section 6) and the
exceptions that carry them."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """HTTP/3 and QPACK application error codes, as sent in RESET_STREAM,
    STOP_SENDING and CONNECTION_CLOSE."""

    H3_NO_ERROR = 0x100
    H3_GENERAL_PROTOCOL_ERROR = 0x101
    H3_INTERNAL_ERROR = 0x102
    H3_STREAM_CREATION_ERROR = 0x103
    H3_CLOSED_CRITICAL_STREAM = 0x104
    H3_FRAME_UNEXPECTED = 0x105
    H3_FRAME_ERROR = 0x106
    H3_EXCESSIVE_LOAD = 0x107
    H3_ID_ERROR = 0x108
    H3_SETTINGS_ERROR = 0x109
    H3_MISSING_SETTINGS = 0x10A
    H3_REQUEST_REJECTED = 0x10B
    H3_REQUEST_CANCELLED = 0x10C
    H3_REQUEST_INCOMPLETE = 0x10D
    H3_MESSAGE_ERROR = 0x10E
    H3_CONNECT_ERROR = 0x10F
    H3_VERSION_FALLBACK = 0x110
    H3_DATAGRAM_ERROR = 0x33  # RFC 9297
    QPACK_DECOMPRESSION_FAILED = 0x200
    QPACK_ENCODER_STREAM_ERROR = 0x201
    QPACK_DECODER_STREAM_ERROR = 0x202


def code_name(code: int) -> str:
    """``H3_FRAME_UNEXPECTED (0x105)`` for a known code, the hex number otherwise."""
    try:
        return f"{ErrorCode(code).name} ({code:#x})"
    except ValueError:
        return f"{code:#x}"


class H3Error(Exception):
    """An HTTP/3 protocol error with its RFC 9114 / 9204 ``error_code``."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(f"{code_name(error_code)}: {reason}")
        self.error_code = error_code
        self.reason = reason


class H3ConnectionError(H3Error):
    """A connection error: the whole HTTP/3 connection is closed with ``error_code``."""


class H3StreamError(H3Error):
    """A stream error: only the request stream is reset with ``error_code``;
    other requests on the connection carry on."""
