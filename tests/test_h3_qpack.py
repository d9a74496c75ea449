"""pymsquic.h3.qpack over pylsqpack: round trips, the dynamic table's bound, blocked streams, bad input."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from pymsquic.h3 import qpack
from pymsquic.h3.errors import ErrorCode, H3ConnectionError
from pymsquic.h3.qpack import Decoder, Encoder, _prefixed_int

HEADERS = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
           (b":path", b"/index.html"), (b"x-custom", b"a value long enough to be worth indexing" * 2)]


def pair(capacity: int = 4096, blocked: int = 16) -> tuple[Encoder, Decoder, list[bytes], bytes]:
    sent: list[bytes] = []
    decoder = Decoder(sent.append, capacity, blocked)
    encoder = Encoder()
    settings_data = encoder.apply_settings(decoder.max_table_capacity, decoder.blocked_streams)
    return encoder, decoder, sent, settings_data


def test_round_trip_with_dynamic_table() -> None:
    async def main() -> None:
        encoder, decoder, sent, settings_data = pair()
        decoder.feed_encoder(settings_data)
        for stream_id in (0, 4, 8):
            encoder_data, block = encoder.encode(stream_id, HEADERS)
            decoder.feed_encoder(encoder_data)
            assert await decoder.decode(stream_id, block) == HEADERS
        assert sent  # acknowledgements for the dynamic table's entries
        for data in sent:
            encoder.feed_decoder(data)
        _, block = encoder.encode(12, HEADERS)
        assert len(block) < 10  # all from the acknowledged dynamic table
    asyncio.run(main())


def test_blocked_stream_waits_for_encoder_stream() -> None:
    async def main() -> None:
        encoder, decoder, _, settings_data = pair()
        _, first = encoder.encode(0, HEADERS)  # ls-qpack indexes what it saw before
        assert await decoder.decode(0, first) == HEADERS
        encoder_data, block = encoder.encode(4, HEADERS)
        assert encoder_data
        assert decoder.feed_header(4, block) is None  # blocked: its table entries have not come yet
        waiting = decoder.unblocked(4)
        assert not waiting.done()
        decoder.feed_encoder(settings_data + encoder_data)
        assert waiting.done() and waiting.result() == HEADERS  # unblocked by that very feed
    asyncio.run(main())


def test_too_many_blocked_streams_is_decompression_failed() -> None:
    async def main() -> None:
        encoder, decoder, _, _ = pair(blocked=1)
        # an encoder told 2 streams may block, a decoder that allows 1
        encoder.apply_settings(4096, 2)
        waits = []
        for stream_id in (0, 4, 8):  # 0 plain, 4 blocked (indexed now), 8 a second blocked one
            _, block = encoder.encode(stream_id, [(b"x-n", b"v" * 40)])
            waits.append(asyncio.ensure_future(decoder.decode(stream_id, block)))
        done, _ = await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if t.exception() is not None]
        assert failed and isinstance(failed[0].exception(), H3ConnectionError)
        assert failed[0].exception().error_code == ErrorCode.QPACK_DECOMPRESSION_FAILED  # type: ignore[union-attr]
        for t in waits:
            t.cancel()
    asyncio.run(main())


def test_table_larger_than_our_capacity_is_encoder_stream_error() -> None:
    _, decoder, _, _ = pair(capacity=100)
    big = Encoder(max_table_capacity=10_000).apply_settings(10_000, 16)  # "Set Dynamic Table Capacity 10000"
    with pytest.raises(H3ConnectionError) as info:
        decoder.feed_encoder(big)
    assert info.value.error_code == ErrorCode.QPACK_ENCODER_STREAM_ERROR


def test_encoder_bounded_by_its_own_limit() -> None:
    encoder = Encoder(max_table_capacity=0)  # peer allows 4096, we use none: nothing goes to the encoder stream
    assert encoder.apply_settings(4096, 16) == b""
    encoder_data, _ = encoder.encode(0, HEADERS)
    assert encoder_data == b""


def test_bad_header_block_and_decoder_stream() -> None:
    async def main() -> None:
        encoder, decoder, _, _ = pair()
        with pytest.raises(H3ConnectionError) as info:
            await decoder.decode(0, b"\xff\xff\xff\xff\xff\xff")
        assert info.value.error_code == ErrorCode.QPACK_DECOMPRESSION_FAILED
        with pytest.raises(H3ConnectionError) as info:
            encoder.feed_decoder(b"\x80")  # acknowledgement of a stream that sent nothing
        assert info.value.error_code == ErrorCode.QPACK_DECODER_STREAM_ERROR
    asyncio.run(main())


def test_missing_pylsqpack_says_how_to_get_it() -> None:
    code = ("import sys; sys.modules['pylsqpack'] = None\n"
            "try:\n    import pymsquic.h3\nexcept ImportError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True)
    assert result.stdout.strip() == "pymsquic.h3 needs pylsqpack: pip install 'pymsquic[h3]'"


def test_abandoned_blocked_block_is_cancelled_on_the_decoder_stream() -> None:
    """RFC 9204 4.4.2: a stream reset while its header block waits gets a Stream
    Cancellation instruction, and the block is not decoded later."""
    async def main() -> None:
        encoder, decoder, sent, settings_data = pair()
        _, first = encoder.encode(0, HEADERS)
        assert await decoder.decode(0, first) == HEADERS
        encoder_data, block = encoder.encode(4, HEADERS)
        assert decoder.feed_header(4, block) is None
        before = len(sent)
        decoder.cancel(4)  # what a reset request stream does
        assert sent[before:] == [b"\x44"]  # Stream Cancellation (01xxxxxx) of stream 4
        encoder.feed_decoder(b"".join(sent))  # the peer's encoder takes it
        decoder.feed_encoder(settings_data + encoder_data)  # no block of stream 4 left to finish
        assert not any(chunk.startswith(b"\x84") for chunk in sent[before + 1:])  # no Section Ack for it
    asyncio.run(main())


@pytest.mark.parametrize("stream_id, wire", [(4, b"\x44"), (62, b"\x7e"), (63, b"\x7f\x00"), (64, b"\x7f\x01"),
                                             (200, b"\x7f\x89\x01")])
def test_stream_cancellation_encoding(stream_id: int, wire: bytes) -> None:
    """The Stream Cancellation pymsquic writes itself where pylsqpack (< 1.0) has no
    cancel_stream: RFC 9204 4.4.2's 01 pattern and a 6-bit prefixed integer (RFC 7541 5.1)."""
    assert _prefixed_int(0x40, 6, stream_id) == wire


@pytest.mark.skipif(not qpack._PYLSQPACK_VERSION.startswith("0."), reason="pylsqpack 1.0 encodes large fields")
def test_a_field_old_pylsqpack_cannot_encode_says_why() -> None:
    # pylsqpack 0.3, the last for Python 3.10, encodes no field of ~4 KB or more.
    with pytest.raises(ValueError, match="need pylsqpack 1.0, on Python 3.11"):
        qpack.Encoder().encode(0, [(b"x-big", b"b" * 5000)])
