"""QPACK (RFC 9204) through pylsqpack: header compression with a bounded
dynamic table, the encoder and decoder streams' data, and header blocks that
wait ("blocked streams") until the encoder stream data they refer to comes.

The connection owns the streams: it writes what :class:`Encoder` and
:class:`Decoder` return (or pass to ``send``) on its encoder/decoder streams and
feeds them what the peer's streams carry.
"""

from __future__ import annotations

import asyncio
from typing import Callable, List, Tuple

try:
    import pylsqpack
except ImportError as exc:  # an optional dependency: say how to get it
    raise ImportError("pymsquic.h3 needs pylsqpack: pip install 'pymsquic[h3]'") from exc

from .errors import ErrorCode, H3ConnectionError

try:
    from importlib.metadata import version as _version

    _PYLSQPACK_VERSION = _version("pylsqpack")
except Exception:  # not installed as a distribution (a source tree on the path): say nothing of it
    _PYLSQPACK_VERSION = "unknown"

Headers = List[Tuple[bytes, bytes]]

#: Default dynamic table capacity we let the peer's encoder use (bytes), and
#: how many of our streams may wait for its encoder stream at once.
DEFAULT_MAX_TABLE_CAPACITY = 4096
DEFAULT_BLOCKED_STREAMS = 16


class Encoder:
    """Our encoder: compresses the header sections we send. Its dynamic table
    stays within the peer's QPACK_MAX_TABLE_CAPACITY and our own ``max_table_capacity``."""

    def __init__(self, max_table_capacity: int = DEFAULT_MAX_TABLE_CAPACITY) -> None:
        self._encoder = pylsqpack.Encoder()
        self._limit = max_table_capacity

    def apply_settings(self, peer_max_table_capacity: int, peer_blocked_streams: int) -> bytes:
        """Use the peer's settings; returns encoder stream data to send."""
        return self._encoder.apply_settings(min(peer_max_table_capacity, self._limit), peer_blocked_streams)

    def encode(self, stream_id: int, headers: Headers) -> tuple[bytes, bytes]:
        """(encoder stream data to send first, the header block for a HEADERS frame).
        ValueError for a field pylsqpack cannot encode: with pylsqpack 0.3 (the last
        for Python 3.10) a field of about 4 KB or more."""
        try:
            return self._encoder.encode(stream_id, headers)
        except ValueError as exc:
            if not _PYLSQPACK_VERSION.startswith("0."):
                raise
            raise ValueError(f"{exc} (pylsqpack {_PYLSQPACK_VERSION}: fields of ~4 KB or more need "
                             "pylsqpack 1.0, on Python 3.11+)") from exc

    def feed_decoder(self, data: bytes) -> None:
        """What the peer's decoder stream carried. QPACK_DECODER_STREAM_ERROR on bad input."""
        try:
            self._encoder.feed_decoder(data)
        except pylsqpack.DecoderStreamError as exc:
            raise H3ConnectionError(ErrorCode.QPACK_DECODER_STREAM_ERROR, str(exc) or "bad decoder stream") from exc


class Decoder:
    """Our decoder: a dynamic table of at most ``max_table_capacity`` bytes and at
    most ``blocked_streams`` header blocks waiting for encoder stream data.
    ``send(data)`` writes decoder stream data (acknowledgements) to the peer."""

    def __init__(self, send: Callable[[bytes], None], max_table_capacity: int = DEFAULT_MAX_TABLE_CAPACITY,
                 blocked_streams: int = DEFAULT_BLOCKED_STREAMS) -> None:
        self.max_table_capacity = max_table_capacity
        self.blocked_streams = blocked_streams
        self._decoder = pylsqpack.Decoder(max_table_capacity, blocked_streams)
        self._send = send
        self._blocked: dict[int, asyncio.Future[Headers]] = {}
        self._cancelled: set[int] = set()  # cancelled by us where pylsqpack cannot (see cancel)

    def feed_encoder(self, data: bytes) -> None:
        """What the peer's encoder stream carried: may unblock waiting header blocks.
        QPACK_ENCODER_STREAM_ERROR on bad input (a table over our capacity included)."""
        try:
            unblocked = self._decoder.feed_encoder(data)
        except pylsqpack.EncoderStreamError as exc:
            raise H3ConnectionError(ErrorCode.QPACK_ENCODER_STREAM_ERROR, str(exc) or "bad encoder stream") from exc
        for stream_id in unblocked:
            if stream_id in self._cancelled:  # its decoding is released; the peer was told already
                self._cancelled.discard(stream_id)
                self._decoder.resume_header(stream_id)  # no Section Acknowledgement for it
                continue
            future = self._blocked.pop(stream_id, None)
            try:
                headers = self._finish(*self._decoder.resume_header(stream_id))
            except pylsqpack.DecompressionFailed as exc:
                if future is not None and not future.done():
                    future.set_exception(_decompression_failed(exc))
                continue
            if future is not None and not future.done():
                future.set_result(headers)

    async def decode(self, stream_id: int, block: bytes) -> Headers:
        """The header list of a HEADERS frame's payload, once the encoder stream
        data it refers to has come. QPACK_DECOMPRESSION_FAILED if it is invalid
        (or too many streams would be blocked)."""
        headers = self.feed_header(stream_id, block)
        if headers is None:
            try:
                return await self.unblocked(stream_id)
            finally:
                self.cancel(stream_id)  # cancelled while waiting: a no-op once decoded
        return headers

    def feed_header(self, stream_id: int, block: bytes) -> Headers | None:
        """:meth:`decode` without waiting: the header list, or None when the block
        waits for encoder stream data (then await :meth:`unblocked`)."""
        try:
            return self._finish(*self._decoder.feed_header(stream_id, block))
        except pylsqpack.StreamBlocked:
            future: asyncio.Future[Headers] = asyncio.get_running_loop().create_future()
            self._blocked[stream_id] = future
            future.add_done_callback(lambda _: self._forget(stream_id, future))
            return None
        except pylsqpack.DecompressionFailed as exc:
            raise _decompression_failed(exc) from exc

    def unblocked(self, stream_id: int) -> asyncio.Future[Headers]:
        """The header list of the block :meth:`feed_header` left waiting on
        ``stream_id``, as a future; :meth:`cancel` drops that block's decoding."""
        return self._blocked[stream_id]

    def _forget(self, stream_id: int, future: asyncio.Future[Headers]) -> None:
        if self._blocked.get(stream_id) is future:
            del self._blocked[stream_id]

    def cancel(self, stream_id: int) -> None:
        """Abandon the header block waiting on ``stream_id`` (its stream was reset, or
        its reader gave up): the peer's encoder is told, with a Stream Cancellation
        (RFC 9204 section 4.4.2), and the block is never decoded."""
        future = self._blocked.pop(stream_id, None)
        if future is not None and not future.done():
            future.cancel()
            cancel_stream = getattr(self._decoder, "cancel_stream", None)
            if cancel_stream is not None:
                self._finish(cancel_stream(stream_id), [])
            else:  # pylsqpack < 1.0 (the newest with aioquic 1.3 on Python 3.10) has no cancel_stream
                self._send(_prefixed_int(0x40, 6, stream_id))  # Stream Cancellation, 01xxxxxx
                self._cancelled.add(stream_id)

    def _finish(self, decoder_data: bytes, headers: Headers) -> Headers:
        if decoder_data:
            self._send(decoder_data)
        return headers


def _prefixed_int(pattern: int, prefix_bits: int, value: int) -> bytes:
    """An RFC 7541 5.1 prefixed integer after the instruction's ``pattern`` bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([pattern | value])
    out = bytearray([pattern | limit])
    value -= limit
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _decompression_failed(exc: Exception) -> H3ConnectionError:
    return H3ConnectionError(ErrorCode.QPACK_DECOMPRESSION_FAILED, str(exc) or "invalid header block")
