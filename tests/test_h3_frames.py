"""pymsquic.h3.frames: varints, frames and the incremental reader, on good and malformed input."""

from __future__ import annotations

import random

import pytest

from pymsquic.h3.errors import ErrorCode, H3ConnectionError, H3StreamError
from pymsquic.h3.frames import (
    Frame,
    FrameReader,
    FrameType,
    StreamKind,
    decode_varint,
    encode_frame,
    encode_settings,
    encode_varint,
    is_reserved,
    parse_settings,
    parse_single_varint,
)


@pytest.mark.parametrize("value, size", [(0, 1), (63, 1), (64, 2), (16383, 2), (16384, 4),
                                         (2**30 - 1, 4), (2**30, 8), (2**62 - 1, 8)])
def test_varint_round_trip(value: int, size: int) -> None:
    data = encode_varint(value)
    assert len(data) == size
    assert decode_varint(b"x" + data, 1) == (value, 1 + size)


def test_varint_rfc_examples() -> None:
    # RFC 9000 appendix A.1
    assert decode_varint(bytes.fromhex("c2197c5eff14e88c")) == (151288809941952652, 8)
    assert decode_varint(bytes.fromhex("9d7f3e7d")) == (494878333, 4)
    assert decode_varint(bytes.fromhex("7bbd")) == (15293, 2)
    assert decode_varint(bytes.fromhex("25")) == (37, 1)
    assert decode_varint(bytes.fromhex("4025")) == (37, 2)


def test_varint_truncated_and_out_of_range() -> None:
    assert decode_varint(b"") is None
    assert decode_varint(bytes.fromhex("c2197c5eff14e8")) is None  # 7 of 8 bytes
    assert decode_varint(b"\x40") is None
    for bad in (-1, 2**62):
        with pytest.raises(ValueError):
            encode_varint(bad)


def test_reserved_types() -> None:
    assert is_reserved(0x21) and is_reserved(0x21 + 0x1F * 1000)
    assert not is_reserved(0x20) and not is_reserved(0x22) and not is_reserved(FrameType.HEADERS)


def feed_bytewise(reader: FrameReader, data: bytes) -> list[Frame]:
    frames: list[Frame] = []
    for i in range(len(data)):
        frames.extend(reader.feed(data[i:i + 1]))
    return frames


def test_reader_any_split_and_data_streamed() -> None:
    wire = (encode_frame(FrameType.HEADERS, b"h" * 70) + encode_frame(0x21 + 0x1F * 3, b"grease" * 50)
            + encode_frame(FrameType.DATA, b"d" * 300) + encode_frame(FrameType.DATA, b"")
            + encode_frame(FrameType.HEADERS, b"trailers"))
    whole = FrameReader(StreamKind.REQUEST).feed(wire)
    assert whole == [Frame(FrameType.HEADERS, b"h" * 70), Frame(FrameType.DATA, b"d" * 300),
                     Frame(FrameType.DATA, b""), Frame(FrameType.HEADERS, b"trailers")]
    reader = FrameReader(StreamKind.REQUEST)
    pieces = feed_bytewise(reader, wire)
    reader.check_end()
    # HEADERS whole, DATA as it comes (never buffered whole), the reserved frame skipped
    assert [f for f in pieces if f.type == FrameType.HEADERS] == [whole[0], whole[3]]
    data = [f for f in pieces if f.type == FrameType.DATA]
    assert len(data) > 2 and b"".join(f.data for f in data) == b"d" * 300
    assert [f.end for f in data].count(True) == 2


def test_reader_random_splits_and_every_varint_size() -> None:
    """Frames whose type and length take 1, 2, 4 or 8 bytes, cut anywhere (a varint
    too): the same frames as the whole input gives, DATA joined, grease skipped."""
    rng = random.Random(9114)
    for _ in range(300):
        expected: list[tuple[int, bytes]] = []
        wire = b""
        for _ in range(rng.randint(1, 6)):
            frame_type = rng.choice([FrameType.DATA, FrameType.HEADERS, 0x21, 0x21 + 0x1F * 600, 0x21 + 0x1F * 2**30])
            payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 63, 64, 300])))
            if rng.random() < 0.2:  # a length in a longer varint than it needs
                wire += encode_varint(frame_type) + (0x80000000 | len(payload)).to_bytes(4, "big") + payload
            else:
                wire += encode_frame(frame_type, payload)
            if frame_type == FrameType.DATA and expected and expected[-1][0] == FrameType.DATA:
                expected[-1] = (FrameType.DATA, expected[-1][1] + payload)
            elif frame_type in (FrameType.DATA, FrameType.HEADERS):
                expected.append((frame_type, payload))
        cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(0, 10))))
        reader = FrameReader(StreamKind.REQUEST)
        got: list[tuple[int, bytes]] = []
        for start, end in zip([0, *cuts], [*cuts, len(wire)]):
            for frame in reader.feed(wire[start:end]):
                if frame.type == FrameType.DATA and got and got[-1][0] == FrameType.DATA:
                    got[-1] = (FrameType.DATA, got[-1][1] + frame.data)
                else:
                    got.append((frame.type, frame.data))
        reader.check_end()
        assert got == expected


def test_unknown_frame_of_any_size_is_skipped() -> None:
    reader = FrameReader(StreamKind.CONTROL, max_frame_size=10)
    frames = reader.feed(encode_frame(0x1234, b"u" * 100_000) + encode_frame(FrameType.GOAWAY, b"\x00"))
    assert frames == [Frame(FrameType.GOAWAY, b"\x00")]


def test_truncated_frame_at_fin() -> None:
    reader = FrameReader(StreamKind.REQUEST)
    assert reader.feed(encode_frame(FrameType.HEADERS, b"abcdef")[:-1]) == []
    with pytest.raises(H3ConnectionError) as info:
        reader.check_end()
    assert info.value.error_code == ErrorCode.H3_FRAME_ERROR
    half_header = FrameReader(StreamKind.REQUEST)
    half_header.feed(b"\x01\x40")  # HEADERS, then a 2-byte length cut after its first byte
    with pytest.raises(H3ConnectionError):
        half_header.check_end()


@pytest.mark.parametrize("kind, frame_type", [
    (StreamKind.CONTROL, FrameType.DATA), (StreamKind.CONTROL, FrameType.HEADERS),
    (StreamKind.REQUEST, FrameType.SETTINGS), (StreamKind.REQUEST, FrameType.GOAWAY),
    (StreamKind.REQUEST, FrameType.MAX_PUSH_ID), (StreamKind.REQUEST, FrameType.PUSH_PROMISE),
    (StreamKind.RESPONSE, FrameType.CANCEL_PUSH), (StreamKind.REQUEST, 0x2), (StreamKind.CONTROL, 0x9)])
def test_frame_not_allowed_on_stream_kind(kind: StreamKind, frame_type: int) -> None:
    with pytest.raises(H3ConnectionError) as info:
        FrameReader(kind).feed(encode_frame(frame_type, b"\x00"))
    assert info.value.error_code == ErrorCode.H3_FRAME_UNEXPECTED


def test_oversized_frames() -> None:
    with pytest.raises(H3ConnectionError) as conn_info:
        # only the header is needed: the limit is checked before the payload comes
        FrameReader(StreamKind.CONTROL, max_frame_size=100).feed(encode_varint(FrameType.SETTINGS)
                                                                  + encode_varint(101))
    assert conn_info.value.error_code == ErrorCode.H3_EXCESSIVE_LOAD
    with pytest.raises(H3StreamError) as stream_info:
        FrameReader(StreamKind.REQUEST, max_headers_size=1000).feed(encode_varint(FrameType.HEADERS)
                                                                     + encode_varint(2**40))
    assert stream_info.value.error_code == ErrorCode.H3_EXCESSIVE_LOAD
    # a large DATA frame is fine: it is streamed
    frames = FrameReader(StreamKind.REQUEST, max_frame_size=10).feed(encode_frame(FrameType.DATA, b"x" * 5000))
    assert frames == [Frame(FrameType.DATA, b"x" * 5000)]


def test_settings() -> None:
    settings = {0x1: 4096, 0x6: 16384, 0x7: 16, 0x21: 7}
    assert parse_settings(encode_settings(settings)) == settings
    assert parse_settings(b"") == {}
    for payload, code in [(encode_settings({0x1: 1}) + encode_varint(0x1) + encode_varint(2),
                           ErrorCode.H3_SETTINGS_ERROR),
                          (encode_settings({0x4: 100}), ErrorCode.H3_SETTINGS_ERROR),  # HTTP/2's window size
                          (encode_varint(0x6), ErrorCode.H3_FRAME_ERROR),
                          (encode_varint(0x6) + b"\x80\x00", ErrorCode.H3_FRAME_ERROR)]:
        with pytest.raises(H3ConnectionError) as info:
            parse_settings(payload)
        assert info.value.error_code == code


def test_single_varint_payloads() -> None:
    assert parse_single_varint(encode_varint(400), "GOAWAY") == 400
    for bad in (b"", b"\x40", b"\x01\x02"):
        with pytest.raises(H3ConnectionError) as info:
            parse_single_varint(bad, "GOAWAY")
        assert info.value.error_code == ErrorCode.H3_FRAME_ERROR
