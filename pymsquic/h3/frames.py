"""HTTP/3 framing (RFC 9114 sections 6.2 and 7): variable-length integers,
frame, stream and setting types, and an incremental frame reader with limits.

Nothing here does I/O: :class:`FrameReader` takes bytes as they come from a
stream (any split) and hands back whole frames, DATA payloads in pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .errors import ErrorCode, H3ConnectionError, H3StreamError

#: The largest value a QUIC variable-length integer holds (RFC 9000 section 16).
VARINT_MAX = 2**62 - 1


class FrameType(IntEnum):
    """Frame types of RFC 9114 section 7.2."""

    DATA = 0x0
    HEADERS = 0x1
    CANCEL_PUSH = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    GOAWAY = 0x7
    MAX_PUSH_ID = 0xD


#: HTTP/2 frame types with no HTTP/3 meaning: receiving one is H3_FRAME_UNEXPECTED (section 7.2.8).
HTTP2_FRAME_TYPES = frozenset({0x2, 0x6, 0x8, 0x9})


class StreamType(IntEnum):
    """Unidirectional stream types (RFC 9114 section 6.2, RFC 9204 section 4.2)."""

    CONTROL = 0x0
    PUSH = 0x1
    QPACK_ENCODER = 0x2
    QPACK_DECODER = 0x3


class Setting(IntEnum):
    """SETTINGS identifiers (RFC 9114 section 7.2.4.1, RFC 9204, RFC 9220, RFC 9297)."""

    QPACK_MAX_TABLE_CAPACITY = 0x1
    MAX_FIELD_SECTION_SIZE = 0x6
    QPACK_BLOCKED_STREAMS = 0x7
    ENABLE_CONNECT_PROTOCOL = 0x8
    H3_DATAGRAM = 0x33


#: Settings reserved by RFC 9114 section 11.2.2 (0x0 and the HTTP/2 ones with no
#: HTTP/3 meaning): receiving one is H3_SETTINGS_ERROR (section 7.2.4.1).
HTTP2_SETTINGS = frozenset({0x0, 0x2, 0x3, 0x4, 0x5})


class StreamKind(IntEnum):
    """What a frame reader reads: decides which frames are allowed."""

    CONTROL = 0
    REQUEST = 1  # a request stream, read by the server
    RESPONSE = 2  # a request stream, read by the client


# Known frame types allowed on each kind of stream (section 7.2, table 1). PUSH_PROMISE
# never: this implementation sends no MAX_PUSH_ID, so a promise is an error either way.
_ALLOWED = {
    StreamKind.CONTROL: frozenset({FrameType.SETTINGS, FrameType.GOAWAY, FrameType.MAX_PUSH_ID,
                                   FrameType.CANCEL_PUSH}),
    StreamKind.REQUEST: frozenset({FrameType.DATA, FrameType.HEADERS}),
    StreamKind.RESPONSE: frozenset({FrameType.DATA, FrameType.HEADERS}),
}

#: Default limit on a control frame's payload (SETTINGS, GOAWAY, ...).
MAX_CONTROL_FRAME_SIZE = 16 * 1024
#: Default limit on a HEADERS frame's payload (the encoded field section).
MAX_HEADERS_FRAME_SIZE = 64 * 1024


def encode_varint(value: int) -> bytes:
    """``value`` as a QUIC variable-length integer (the shortest form)."""
    if value < 0 or value > VARINT_MAX:
        raise ValueError(f"{value} does not fit a QUIC varint (0 to 2**62-1)")
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


# The value bits of a varint of 1, 2, 4 or 8 bytes.
_VARINT_MASK = {1: 0x3F, 2: 0x3FFF, 4: 0x3FFFFFFF, 8: 0x3FFFFFFFFFFFFFFF}


def varint_length(first_byte: int) -> int:
    """How many bytes the varint starting with ``first_byte`` takes (1, 2, 4 or 8)."""
    return 1 << (first_byte >> 6)


def decode_varint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """The varint at ``data[offset:]`` and the offset after it, or None if
    ``data`` ends before the varint does (more input is needed)."""
    if offset >= len(data):
        return None
    size = varint_length(data[offset])
    end = offset + size
    if end > len(data):
        return None
    value = int.from_bytes(data[offset:end], "big") & ((1 << (8 * size - 2)) - 1)
    return value, end


def is_reserved(type_: int) -> bool:
    """Whether ``type_`` is a reserved (grease) frame, stream type or setting:
    ``0x1f * N + 0x21`` (sections 6.2.3, 7.2.8, 7.2.4.1)."""
    return type_ >= 0x21 and (type_ - 0x21) % 0x1F == 0


def encode_frame(frame_type: int, payload: bytes = b"") -> bytes:
    """A whole frame: type, length, payload."""
    return encode_varint(frame_type) + encode_varint(len(payload)) + payload


def encode_frame_header(frame_type: int, length: int) -> bytes:
    """A frame's type and length, for a payload written separately (DATA)."""
    if frame_type < 0x40 and length < 0x4000:  # the common case, once per message: in one step
        return bytes((frame_type, 0x40 | (length >> 8), length & 0xFF)) if length >= 0x40 else \
            bytes((frame_type, length))
    return encode_varint(frame_type) + encode_varint(length)


def encode_settings(settings: dict[int, int]) -> bytes:
    """A SETTINGS frame's payload."""
    return b"".join(encode_varint(key) + encode_varint(value) for key, value in settings.items())


def parse_settings(payload: bytes) -> dict[int, int]:
    """A SETTINGS payload as a dict. H3ConnectionError: H3_FRAME_ERROR when
    truncated, H3_SETTINGS_ERROR for a duplicate or an HTTP/2 setting."""
    settings: dict[int, int] = {}
    offset = 0
    while offset < len(payload):
        key_end = decode_varint(payload, offset)
        value_end = None if key_end is None else decode_varint(payload, key_end[1])
        if key_end is None or value_end is None:
            raise H3ConnectionError(ErrorCode.H3_FRAME_ERROR, "truncated SETTINGS frame")
        key, (value, offset) = key_end[0], value_end
        if key in HTTP2_SETTINGS:
            raise H3ConnectionError(ErrorCode.H3_SETTINGS_ERROR, f"HTTP/2 setting {key:#x} in SETTINGS")
        if key in settings:
            raise H3ConnectionError(ErrorCode.H3_SETTINGS_ERROR, f"setting {key:#x} given twice")
        settings[key] = value
    return settings


def parse_single_varint(payload: bytes, what: str) -> int:
    """The one varint a GOAWAY, MAX_PUSH_ID or CANCEL_PUSH payload is
    (H3_FRAME_ERROR if it is not exactly that)."""
    parsed = decode_varint(payload)
    if parsed is None or parsed[1] != len(payload):
        raise H3ConnectionError(ErrorCode.H3_FRAME_ERROR, f"malformed {what} frame")
    return parsed[0]


@dataclass
class Frame:
    """A frame read from a stream. ``type`` is a :class:`FrameType` value.
    DATA comes in pieces (``data`` a piece, ``end`` True on the last one);
    every other frame whole, with ``end`` True."""

    type: int
    data: bytes
    end: bool = True


class FrameReader:
    """Parse the frames of one stream from input in any split.

    :meth:`feed` returns the frames now complete (DATA payload as it comes,
    without buffering a whole DATA frame). Unknown and reserved frame types
    are skipped, whatever their length (section 9). Raises
    :class:`H3ConnectionError` for a frame not allowed on this stream kind
    (H3_FRAME_UNEXPECTED) or a control frame over ``max_frame_size``
    (H3_EXCESSIVE_LOAD), :class:`H3StreamError` (H3_EXCESSIVE_LOAD) for a
    HEADERS frame over ``max_headers_size``. :meth:`check_end` at the
    stream's FIN raises H3_FRAME_ERROR if it cut a frame.
    """

    def __init__(self, kind: StreamKind, *, max_frame_size: int = MAX_CONTROL_FRAME_SIZE,
                 max_headers_size: int = MAX_HEADERS_FRAME_SIZE) -> None:
        self.kind = kind
        self.max_frame_size = max_frame_size
        self.max_headers_size = max_headers_size
        self._buffer = bytearray()
        self._type: int | None = None  # of the frame being read, once its header is in
        self._remaining = 0  # payload bytes of that frame still to come
        self._skipping = False  # an unknown frame: drop its payload
        self._message_stream = kind != StreamKind.CONTROL  # DATA and HEADERS allowed

    def feed(self, data: bytes) -> list[Frame]:
        """The frames that ``data`` completes (and DATA pieces it carries)."""
        buffer = self._buffer
        if buffer:  # the start of a frame came before
            if (self._type is not None and not self._skipping and self._type != FrameType.DATA
                    and len(buffer) + len(data) < self._remaining):
                buffer += data  # a HEADERS or control frame still incomplete: gather on
                return []
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        # Parsed in place, with an offset: no copy of what is read but the payloads. The
        # reader's state is kept in locals while parsing (written back at the end).
        frames: list[Frame] = []
        pos, size = 0, len(data)
        frame_type, remaining, skipping = self._type, self._remaining, self._skipping
        while True:
            if frame_type is None:  # a frame header: type and length varints
                if pos >= size:
                    break
                first = data[pos]
                if first < 0x40 and pos + 1 < size and data[pos + 1] < 0x40:  # both one byte: most frames
                    frame_type, length, at = first, data[pos + 1], pos + 2
                else:
                    n = 1 << (first >> 6)
                    if pos + n >= size:  # the type, and at least the first byte of the length
                        break
                    ftype = first if n == 1 else int.from_bytes(data[pos:pos + n], "big") & _VARINT_MASK[n]
                    at = pos + n
                    first = data[at]
                    n = 1 << (first >> 6)
                    if at + n > size:  # the length is cut: the header waits whole in the buffer
                        break
                    length = first if n == 1 else int.from_bytes(data[at:at + n], "big") & _VARINT_MASK[n]
                    frame_type, at = ftype, at + n
                pos = at
                if frame_type <= 1 and self._message_stream and (frame_type == 0 or length <= self.max_headers_size):
                    skipping = False  # DATA or HEADERS on a request stream: allowed
                else:
                    self._type = None  # nothing of this frame taken if the check raises
                    self._check_type(frame_type, length)
                    skipping = self._skipping
                remaining = length
            if skipping or frame_type == 0:  # DATA (or a frame skipped): as it comes
                if pos >= size and remaining:
                    break
                take = remaining if remaining <= size - pos else size - pos
                if not skipping:
                    frames.append(Frame(frame_type, data[pos:pos + take], take == remaining))
                pos += take
                remaining -= take
                if remaining:
                    break  # all input taken
                frame_type = None
            else:  # whole
                if size - pos < remaining:
                    break
                frames.append(Frame(frame_type, data[pos:pos + remaining]))
                pos += remaining
                frame_type = None
        self._type, self._remaining, self._skipping = frame_type, remaining, skipping
        if pos < size:
            buffer += memoryview(data)[pos:]
        return frames

    def _check_type(self, frame_type: int, length: int) -> None:
        known = frame_type in FrameType._value2member_map_
        self._skipping = not known and frame_type not in HTTP2_FRAME_TYPES
        if self._skipping:
            return
        if frame_type == FrameType.PUSH_PROMISE and self.kind == StreamKind.RESPONSE:
            # Section 7.2.5: a push id over the client's MAX_PUSH_ID, and none was ever sent.
            raise H3ConnectionError(ErrorCode.H3_ID_ERROR, "PUSH_PROMISE, but no MAX_PUSH_ID was sent")
        if frame_type in HTTP2_FRAME_TYPES or frame_type not in _ALLOWED[self.kind]:
            name = FrameType(frame_type).name if known else f"HTTP/2 type {frame_type:#x}"
            raise H3ConnectionError(ErrorCode.H3_FRAME_UNEXPECTED,
                                    f"{name} frame on a {self.kind.name.lower()} stream")
        if frame_type == FrameType.HEADERS and length > self.max_headers_size:
            raise H3StreamError(ErrorCode.H3_EXCESSIVE_LOAD,
                                f"HEADERS frame of {length} bytes (limit {self.max_headers_size})")
        if frame_type != FrameType.DATA and frame_type != FrameType.HEADERS and length > self.max_frame_size:
            raise H3ConnectionError(ErrorCode.H3_EXCESSIVE_LOAD,
                                    f"{FrameType(frame_type).name} frame of {length} bytes "
                                    f"(limit {self.max_frame_size})")

    def check_end(self) -> None:
        """At the stream's FIN: H3_FRAME_ERROR if a frame was cut short."""
        if self._buffer or self._type is not None:
            raise H3ConnectionError(ErrorCode.H3_FRAME_ERROR, "stream ended inside a frame")
