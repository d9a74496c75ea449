"""An HTTP/3 connection (RFC 9114) over a :class:`pymsquic.asyncio.Connection`.

:class:`H3Connection` runs the control and QPACK streams both ways, and hands
out :class:`RequestStream` objects: the client opens them
(:meth:`H3Connection.open_request`), the server accepts them
(:meth:`H3Connection.accept_request`). Errors follow section 8: a connection
error closes the QUIC connection with its code, a stream error resets that
request's stream (both ways) and leaves the others alone. No server push:
no MAX_PUSH_ID is ever sent, so a push stream or promise is H3_ID_ERROR.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import weakref
from typing import Any, Awaitable, Callable, Coroutine

from .._msquic import lib
from ..asyncio import Connection, Stream
from ..errors import ConnectionClosed, IncompleteReadError, QuicError, StreamError
from .errors import ErrorCode, H3ConnectionError, H3Error, H3StreamError
from .frames import (
    MAX_HEADERS_FRAME_SIZE,
    Frame,
    FrameReader,
    FrameType,
    Setting,
    StreamKind,
    StreamType,
    decode_varint,
    encode_frame,
    encode_frame_header,
    encode_settings,
    encode_varint,
    parse_settings,
    parse_single_varint,
    varint_length,
)
from .message import Headers, check_trailers, section_size
from .qpack import DEFAULT_BLOCKED_STREAMS, DEFAULT_MAX_TABLE_CAPACITY, Decoder, Encoder

logger = logging.getLogger("pymsquic")

#: The ALPN of HTTP/3.
ALPN = "h3"

# Frame types as plain ints, for the per-read checks (an IntEnum compares slower).
_DATA, _HEADERS = int(FrameType.DATA), int(FrameType.HEADERS)

# How much a request stream read asks for at once.
_READ_CHUNK = 65536

# Bodies up to this size are joined to their frame header (and the HEADERS before
# them) into one write: one native call, and msquic packs them together.
_COALESCE = 16384

#: HTTP Datagrams kept for a request until it reads them; more are dropped
#: (RFC 9297 section 5 lets a receiver drop them) rather than piling up unread.
DATAGRAM_QUEUE = 64


class H3Connection:
    """HTTP/3 on an established QUIC connection (ALPN ``h3``).

    Call :meth:`start` once (it opens our control, QPACK encoder and decoder
    streams and sends SETTINGS); :meth:`close` sends GOAWAY and closes the
    QUIC connection. ``max_field_section_size`` bounds the header sections we
    accept; ``qpack_max_table_capacity``/``qpack_blocked_streams`` bound the
    peer's use of our QPACK decoder. ``qpack_encoder_max_table_capacity``
    (server only) lets our encoder use a dynamic table of up to that many bytes
    (and the peer's QPACK_MAX_TABLE_CAPACITY) for the responses; 0, the default,
    keeps it to the static table, as nginx does: smaller header blocks cost the
    peer a Section Acknowledgement per response that used the table, which it
    writes and we read, more than they save on a fast link (issue 12's speed
    rows, docs/http3.md). :attr:`error` is the connection error that closed
    it, if any.
    """

    def __init__(self, quic: Connection, *, is_client: bool,
                 max_field_section_size: int = MAX_HEADERS_FRAME_SIZE,
                 qpack_max_table_capacity: int = DEFAULT_MAX_TABLE_CAPACITY,
                 qpack_blocked_streams: int = DEFAULT_BLOCKED_STREAMS, enable_datagrams: bool = False,
                 enable_connect_protocol: bool = False, qpack_encoder_max_table_capacity: int = 0) -> None:
        if qpack_encoder_max_table_capacity < 0:
            raise ValueError(f"qpack_encoder_max_table_capacity must be >= 0, not {qpack_encoder_max_table_capacity}")
        if is_client and qpack_encoder_max_table_capacity:
            raise ValueError("a client's QPACK encoder uses the static table only")  # see below
        self.quic = quic
        self.is_client = is_client
        self.max_field_section_size = max_field_section_size
        self.local_settings: dict[int, int] = {
            Setting.QPACK_MAX_TABLE_CAPACITY: qpack_max_table_capacity,
            Setting.QPACK_BLOCKED_STREAMS: qpack_blocked_streams,
            Setting.MAX_FIELD_SECTION_SIZE: max_field_section_size,
        }
        # RFC 9297 HTTP Datagrams (QUIC datagrams must be on) and RFC 9220 extended CONNECT.
        self.enable_datagrams = enable_datagrams
        self.enable_connect_protocol = enable_connect_protocol
        if enable_datagrams:
            self.local_settings[Setting.H3_DATAGRAM] = 1
        if enable_connect_protocol:
            self.local_settings[Setting.ENABLE_CONNECT_PROTOCOL] = 1
        self._streams_by_id: weakref.WeakValueDictionary[int, RequestStream] = weakref.WeakValueDictionary()
        # A client's request stream has no id until msquic reports START_COMPLETE,
        # which Python is not woken for; QPACK acknowledgements name stream ids,
        # so the client's encoder keeps to the static table.
        self._encoder = Encoder(qpack_encoder_max_table_capacity)
        self._encoder_static = not qpack_encoder_max_table_capacity  # its blocks depend on the fields alone
        self._decoder = Decoder(self._send_decoder_data, qpack_max_table_capacity, qpack_blocked_streams)
        self.peer_settings: asyncio.Future[dict[int, int]] = asyncio.get_running_loop().create_future()
        self.peer_settings.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "never retrieved"
        self.error: H3ConnectionError | None = None
        #: The peer's SETTINGS_MAX_FIELD_SECTION_SIZE, once its SETTINGS came (None: no limit).
        self.peer_max_field_section_size: int | None = None
        #: The stream id (push id for a server's) in the peer's last GOAWAY.
        self.goaway_id: int | None = None
        self.goaway_received = asyncio.Event()
        self._goaway_sent = False
        self._max_push_id: int | None = None  # the client's last MAX_PUSH_ID (server)
        self._last_request_id = -4  # the highest request stream id accepted (server)
        self._requests: asyncio.Queue[RequestStream | None] = asyncio.Queue()
        #: Server: when set, called with each new request stream instead of queueing it for
        #: :meth:`accept_request` (which then only says when the connection is over):
        #: no queue and no waiting task between a stream's arrival and its handler.
        self.on_request: Callable[[RequestStream], None] | None = None
        self._peer_streams: dict[int, Stream] = {}  # control and QPACK streams, by type
        self._tasks: set[asyncio.Task[None]] = set()
        self._open_requests: weakref.WeakSet[RequestStream] = weakref.WeakSet()
        self._control: Stream | None = None
        self._encoder_stream: Stream | None = None
        self._decoder_stream: Stream | None = None
        self._decoder_pending: list[bytes] = []  # decoder stream data to write (see _send_decoder_data)
        # The server's ASGI (client, server) addresses: None again when the peer's
        # address changes (server._watch_addresses), then read again.
        self._asgi_addresses: tuple[tuple[str, int] | None, tuple[str, int] | None] | None = None

    # ---- setup and shutdown ------------------------------------------------------------

    def start(self) -> None:
        """Open our control stream (with SETTINGS) and QPACK streams; start
        reading the peer's streams."""
        self._control = self.quic.open_stream(unidirectional=True)
        self._control.write(encode_varint(StreamType.CONTROL)
                            + encode_frame(FrameType.SETTINGS, encode_settings(self.local_settings)))
        self._encoder_stream = self.quic.open_stream(unidirectional=True)
        self._encoder_stream.write(encode_varint(StreamType.QPACK_ENCODER))
        self._decoder_stream = self.quic.open_stream(unidirectional=True)
        self._decoder_stream.write(encode_varint(StreamType.QPACK_DECODER))
        self._spawn(self._accept_streams())
        if self.enable_datagrams:
            self._spawn(self._receive_datagrams())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop_accepting(self) -> None:
        """Server: GOAWAY, and :meth:`accept_request` returns None once the
        requests already in are taken (later ones are refused, H3_REQUEST_REJECTED)."""
        self.send_goaway()
        self._requests.put_nowait(None)

    def send_goaway(self) -> None:
        """Graceful shutdown, section 5.2: a server accepts no request after
        those already in; a client (no push) sends push id 0."""
        if self._goaway_sent or self._control is None or self.error is not None:
            return
        self._goaway_sent = True
        goaway_id = 0 if self.is_client else self._last_request_id + 4
        try:
            self._control.write(encode_frame(FrameType.GOAWAY, encode_varint(goaway_id)))
        except (StreamError, ConnectionClosed):
            pass  # the connection is going anyway

    async def wait_requests_done(self) -> None:
        """Wait until every request stream open now is closed both ways (or the
        connection is): what a client does with a connection after GOAWAY."""
        pending = [request.stream.wait_closed() for request in self._open_requests]
        await asyncio.gather(*pending, return_exceptions=True)

    async def close(self, error_code: int = ErrorCode.H3_NO_ERROR) -> None:
        """GOAWAY, then close the QUIC connection with ``error_code``
        (H3_NO_ERROR by default) once what was written is delivered."""
        self.send_goaway()
        code = error_code if self.error is None else self.error.error_code
        if self.is_client:  # responses not read to their end are not wanted any more
            for request in list(self._open_requests):
                if not request._eof:
                    request.cancel()
        try:
            # Our control and QPACK streams never end, so the QUIC close would wait
            # for them (close_timeout): wait for the requests' streams instead.
            pending = [request.stream.wait_closed() for request in self._open_requests]
            if pending:
                with contextlib.suppress(asyncio.TimeoutError, QuicError):
                    await asyncio.wait_for(asyncio.gather(*pending), self.quic.close_timeout)
            self.quic.shutdown(code)
            await self.quic.close(code)
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def fail(self, error: H3ConnectionError) -> None:
        """A connection error (section 8): log it, close the QUIC connection with its code."""
        if self.error is None:
            self.error = error
            logger.warning("HTTP/3 connection error, closing: %s", error)
            if not self.peer_settings.done():
                self.peer_settings.set_exception(error)
            self.quic.shutdown(error.error_code)
        self._requests.put_nowait(None)

    # ---- the peer's streams ----------------------------------------------------------------

    async def _accept_streams(self) -> None:
        quic = self.quic
        try:
            while True:
                # The streams already there are taken without a coroutine each; else
                # the wait, which need not look again first (accept_stream() would look
                # twice more: two native calls and a coroutine per wait).
                stream = quic._try_accept_stream()
                if stream is None:
                    stream = await quic._wait(quic._try_accept_stream, "accept_stream()", checked=True)
                state = stream._state()  # its direction and id in one native call
                if state.flags & lib.PMQ_STREAM_UNIDIRECTIONAL:
                    self._spawn(self._read_unidirectional(stream))
                elif self.is_client:
                    raise H3ConnectionError(ErrorCode.H3_STREAM_CREATION_ERROR,
                                            "the server opened a bidirectional stream")
                elif self._goaway_sent:
                    stream.abort(ErrorCode.H3_REQUEST_REJECTED)  # section 5.2: not processed, retry elsewhere
                else:
                    stream_id = state.id  # a peer's stream has its id
                    if stream_id > self._last_request_id:
                        self._last_request_id = stream_id
                    request = RequestStream(self, stream, stream_id)
                    if self.enable_datagrams:  # routes its HTTP Datagrams
                        self._streams_by_id[stream_id] = request
                    if self.on_request is not None:
                        self.on_request(request)
                    else:
                        self._requests.put_nowait(request)
        except H3ConnectionError as exc:
            self.fail(exc)
        except ConnectionClosed:
            pass
        finally:
            self._requests.put_nowait(None)

    async def _read_unidirectional(self, stream: Stream) -> None:
        critical = False
        try:
            first = await stream.readexactly(1)
            rest = await stream.readexactly(varint_length(first[0]) - 1)
            parsed = decode_varint(first + rest)
            assert parsed is not None
            stream_type = parsed[0]
            readers: dict[int, Callable[[Stream], Coroutine[Any, Any, None]]] = {
                StreamType.CONTROL: self._read_control, StreamType.QPACK_ENCODER: self._read_encoder,
                StreamType.QPACK_DECODER: self._read_decoder}
            if stream_type in readers:
                if stream_type in self._peer_streams:
                    raise H3ConnectionError(ErrorCode.H3_STREAM_CREATION_ERROR,
                                            f"a second {StreamType(stream_type).name} stream")
                self._peer_streams[stream_type] = stream
                critical = True
                await readers[stream_type](stream)
                raise H3ConnectionError(ErrorCode.H3_CLOSED_CRITICAL_STREAM,
                                        f"the peer closed its {StreamType(stream_type).name} stream")
            if stream_type == StreamType.PUSH:
                if self.is_client:
                    raise H3ConnectionError(ErrorCode.H3_ID_ERROR, "push stream, but no MAX_PUSH_ID was sent")
                raise H3ConnectionError(ErrorCode.H3_STREAM_CREATION_ERROR, "a client opened a push stream")
            # Unknown and reserved stream types: ignored, as section 6.2 says.
            logger.debug("ignoring a unidirectional stream of type %#x", stream_type)
            stream.stop_sending(ErrorCode.H3_STREAM_CREATION_ERROR)
        except H3ConnectionError as exc:
            self.fail(exc)
        except IncompleteReadError:
            pass  # ended before saying its type: nothing to do
        except ConnectionClosed:
            pass
        except StreamError as exc:  # reset by the peer
            if critical:
                self.fail(H3ConnectionError(ErrorCode.H3_CLOSED_CRITICAL_STREAM, f"critical stream reset: {exc}"))

    async def _read_control(self, stream: Stream) -> None:
        reader = FrameReader(StreamKind.CONTROL)
        async for chunk in stream:
            for frame in reader.feed(chunk):
                self._control_frame(frame)

    def _control_frame(self, frame: Frame) -> None:
        if not self.peer_settings.done():
            if frame.type != FrameType.SETTINGS:
                raise H3ConnectionError(ErrorCode.H3_MISSING_SETTINGS,
                                        f"{FrameType(frame.type).name} before SETTINGS")
            settings = parse_settings(frame.data)
            for flag in (Setting.H3_DATAGRAM, Setting.ENABLE_CONNECT_PROTOCOL):
                if settings.get(flag, 0) not in (0, 1):
                    raise H3ConnectionError(ErrorCode.H3_SETTINGS_ERROR, f"{flag.name} is {settings[flag]}")
            data = self._encoder.apply_settings(settings.get(Setting.QPACK_MAX_TABLE_CAPACITY, 0),
                                                settings.get(Setting.QPACK_BLOCKED_STREAMS, 0))
            self._send_encoder_data(data)
            self.peer_max_field_section_size = settings.get(Setting.MAX_FIELD_SECTION_SIZE)
            self.peer_settings.set_result(settings)
        elif frame.type == FrameType.SETTINGS:
            raise H3ConnectionError(ErrorCode.H3_FRAME_UNEXPECTED, "a second SETTINGS frame")
        elif frame.type == FrameType.GOAWAY:
            goaway_id = parse_single_varint(frame.data, "GOAWAY")
            if self.is_client and goaway_id % 4:
                raise H3ConnectionError(ErrorCode.H3_ID_ERROR, f"GOAWAY {goaway_id} is no request stream id")
            if self.goaway_id is not None and goaway_id > self.goaway_id:
                raise H3ConnectionError(ErrorCode.H3_ID_ERROR, f"GOAWAY went up from {self.goaway_id} to {goaway_id}")
            self.goaway_id = goaway_id
            self.goaway_received.set()
        elif frame.type == FrameType.MAX_PUSH_ID:
            if self.is_client:
                raise H3ConnectionError(ErrorCode.H3_FRAME_UNEXPECTED, "MAX_PUSH_ID from a server")
            max_push_id = parse_single_varint(frame.data, "MAX_PUSH_ID")  # we never push, but section 7.2.7:
            if self._max_push_id is not None and max_push_id < self._max_push_id:  # it cannot go down
                raise H3ConnectionError(ErrorCode.H3_ID_ERROR,
                                        f"MAX_PUSH_ID went down from {self._max_push_id} to {max_push_id}")
            self._max_push_id = max_push_id
        else:  # CANCEL_PUSH: no push was ever promised or allowed
            push_id = parse_single_varint(frame.data, "CANCEL_PUSH")
            raise H3ConnectionError(ErrorCode.H3_ID_ERROR, f"CANCEL_PUSH of push {push_id}, never promised")

    async def _read_encoder(self, stream: Stream) -> None:
        async for chunk in stream:
            self._decoder.feed_encoder(chunk)

    async def _read_decoder(self, stream: Stream) -> None:
        async for chunk in stream:
            self._encoder.feed_decoder(chunk)

    def _send_encoder_data(self, data: bytes) -> None:
        if data and self._encoder_stream is not None:
            self._encoder_stream.write(data)

    def _send_decoder_data(self, data: bytes) -> None:
        # Section Acknowledgements come one per response whose header block used the
        # dynamic table: gathered and written once per event loop iteration, one
        # native write (and packet) for many, not one each. The peer's encoder only
        # learns of them a little later, which RFC 9204 allows (section 4.4).
        if data and self._decoder_stream is not None:
            if not self._decoder_pending:
                asyncio.get_running_loop().call_soon(self._flush_decoder_data)
            self._decoder_pending.append(data)

    def _flush_decoder_data(self) -> None:
        data, self._decoder_pending = b"".join(self._decoder_pending), []
        if self._decoder_stream is not None and self.error is None:
            try:
                self._decoder_stream.write(data)
            except (StreamError, ConnectionClosed):
                pass  # the connection is over: nothing more to acknowledge

    # ---- HTTP Datagrams (RFC 9297) ------------------------------------------------------------

    def datagrams_allowed(self) -> bool:
        """Whether both sides said H3_DATAGRAM=1 (False until the peer's SETTINGS came)."""
        settings = self.peer_settings
        return (self.enable_datagrams and settings.done() and not settings.exception()
                and settings.result().get(Setting.H3_DATAGRAM) == 1)

    async def _receive_datagrams(self) -> None:
        try:
            while True:
                data = await self.quic.receive_datagram()
                parsed = decode_varint(data)
                if parsed is None:
                    raise H3ConnectionError(ErrorCode.H3_DATAGRAM_ERROR, "datagram without a quarter stream id")
                quarter, offset = parsed
                request = self._streams_by_id.get(quarter * 4)
                if request is None:  # no such request (any more): dropped, as RFC 9297 allows
                    continue
                try:
                    request._datagram_queue().put_nowait(data[offset:])
                except asyncio.QueueFull:
                    logger.debug("HTTP Datagram dropped: stream %s has %s unread", quarter * 4, DATAGRAM_QUEUE)
        except H3ConnectionError as exc:
            self.fail(exc)
        except ConnectionClosed:
            pass

    # ---- requests -------------------------------------------------------------------------

    def open_request(self, first: bytes | None = None, body: bytes = b"", end_stream: bool = False) -> RequestStream:
        """A new request stream (client). With ``first`` (frames, such as
        :meth:`headers_frame`'s), the stream opens with ``first`` and ``body`` as a
        DATA frame written (FIN with ``end_stream``): a whole small request in
        one native call, as :meth:`RequestStream.send_headers_and_data` writes it."""
        if self.error is not None:
            raise self.error
        if first is None:
            return RequestStream(self, self.quic.open_stream())
        if body:
            first += encode_frame_header(FrameType.DATA, len(body))
            if len(body) <= _COALESCE:
                first += body
            else:  # large: written on its own, not copied into the frames first
                request = RequestStream(self, self.quic.open_stream(data=first))
                try:
                    request.stream.write(body, fin=end_stream)
                except BaseException:  # the HEADERS went out: the server need not wait for the rest
                    request.cancel()
                    raise
                return request
        return RequestStream(self, self.quic.open_stream(data=first, fin=end_stream))

    def headers_frame(self, headers: Headers, stream_id: int = 0) -> bytes:
        """A HEADERS frame of ``headers``. ValueError over the peer's
        SETTINGS_MAX_FIELD_SECTION_SIZE (section 4.2.2); what the encoder has
        for its stream is written first. A client's encoder keeps to the static
        table (see __init__), so its frames depend on the headers alone: the
        client keeps them for requests that repeat."""
        limit = self.peer_max_field_section_size  # the peer's limit, once known
        if limit is not None:
            size = section_size(headers)
            if size > limit:
                raise ValueError(f"a header section of {size} bytes: the peer takes at most {limit}")
        encoder_data, block = self._encoder.encode(stream_id, headers)
        self._send_encoder_data(encoder_data)  # before the block that may refer to it
        return encode_frame_header(FrameType.HEADERS, len(block)) + block

    async def accept_request(self) -> RequestStream | None:
        """The next request stream the client opened (server); None once the
        connection is over."""
        request = await self._requests.get()
        if request is None:
            self._requests.put_nowait(None)  # for the next caller too
        return request


def _short_frame(chunk: bytes, at: int) -> tuple[int, int, int] | None:
    """(type, payload start, payload end) of a DATA or HEADERS frame at ``at`` in
    ``chunk`` whose length is a one- or two-byte varint, its header in ``chunk``
    (not necessarily its payload); else None (the frame reader then)."""
    if len(chunk) - at < 3 or chunk[at] > _HEADERS:
        return None
    first = chunk[at + 1]
    if first < 0x40:
        return chunk[at], at + 2, at + 2 + first
    if first < 0x80:
        return chunk[at], at + 3, at + 3 + ((first & 0x3F) << 8 | chunk[at + 2])
    return None


class RequestStream:
    """One request/response exchange on a bidirectional stream.

    Receiving: :meth:`receive_headers`, then :meth:`receive_data` until it
    returns b"" (then :attr:`trailers` holds the trailer section, if any).
    Sending: :meth:`send_headers`, :meth:`send_data`, optionally trailers
    with :meth:`send_headers` again, ``end_stream=True`` on the last. A
    malformed frame sequence is a connection error (H3_FRAME_UNEXPECTED,
    section 4.1); the receive methods raise the :class:`H3Error` after
    acting on it. :meth:`cancel` resets the stream with H3_REQUEST_CANCELLED.
    """

    def __init__(self, h3: H3Connection, stream: Stream, stream_id: int | None = None) -> None:
        self.h3 = h3
        self.stream = stream
        self._id = stream_id  # once known (a client's stream: after it started)
        kind = StreamKind.RESPONSE if h3.is_client else StreamKind.REQUEST
        self._reader = FrameReader(kind, max_headers_size=h3.max_field_section_size)
        self._frames: collections.deque[Frame] = collections.deque()
        self._eof = False
        self._headers_received = False
        self.trailers: Headers | None = None
        #: DATA payload bytes received so far (for content-length checks).
        self.data_received = 0
        #: The content-length of what is received, once known: more DATA than that is a
        #: stream error H3_MESSAGE_ERROR as it comes (section 4.1.2); less is the caller's check.
        self.expected_length: int | None = None
        self._datagrams: asyncio.Queue[bytes] | None = None
        self._blocked_headers = False  # receive_headers_nowait() left a header block waiting
        h3._open_requests.add(self)

    async def _next_frame(self) -> Frame | None:
        stream = self.stream
        while not self._frames:
            if self._eof:
                return None
            if stream._eof_read and not stream._pushback:
                self._take(b"")  # the FIN came with the last bytes read: no read (and coroutine) for it
            else:  # stream.read(_READ_CHUNK) without its coroutine and checks: one a response wait
                chunk = stream._read_now(_READ_CHUNK)
                if chunk is None:
                    chunk = await stream._wait(stream._read_chunk_now, "read()", checked=True)
                self._take(chunk)
        return self._frames.popleft()

    async def _read_frames(self) -> None:
        """Read once: the frames it completes are queued, FIN noted."""
        self._take(await self.stream.read(_READ_CHUNK))

    def _take(self, chunk: bytes) -> None:
        if chunk:
            # A response most often comes whole in one read (HEADERS, then one DATA
            # frame): queued as it is, without the reader's parsing loop.
            span = self._headers_span(chunk)
            if span is None:
                self._frames.extend(self._reader.feed(chunk))
            else:
                start, end = span
                self._frames.append(Frame(_HEADERS, chunk[start:end]))
                if end < len(chunk):
                    self._take_rest(chunk, end)
        else:
            self._eof = True
            self._reader.check_end()

    def _stream_id(self) -> int:
        """The stream's id (known once a frame came on it)."""
        if self._id is None:
            self._id = self.stream.id
            assert self._id is not None
        return self._id

    def _error(self, exc: H3Error) -> None:
        """Act on an error met while receiving: section 8's connection or stream error."""
        if isinstance(exc, H3ConnectionError):
            self.h3.fail(exc)
        else:
            logger.info("HTTP/3 stream error on stream %s: %s", self.stream.id, exc)
            self.abort(exc.error_code)

    def abort(self, error_code: int) -> None:
        """Reset the stream both ways with ``error_code`` (a stream error)."""
        try:
            self.stream.abort(error_code)
        except (StreamError, ConnectionClosed):
            pass

    def cancel(self) -> None:
        """Cancel the request: reset both ways with H3_REQUEST_CANCELLED (section 4.1.1)."""
        self.abort(ErrorCode.H3_REQUEST_CANCELLED)

    async def _decode(self, block: bytes) -> Headers:
        stream_id = self._stream_id()
        headers = self.h3._decoder.feed_header(stream_id, block)
        if headers is None:
            headers = await self._wait_unblocked(stream_id)
        return self._checked_size(headers)

    def _checked_size(self, headers: Headers) -> Headers:
        size = section_size(headers)
        if size > self.h3.max_field_section_size:
            raise H3StreamError(ErrorCode.H3_EXCESSIVE_LOAD, f"field section of {size} bytes")
        return headers

    async def _wait_unblocked(self, stream_id: int) -> Headers:
        """The header block waits for the peer's encoder stream (RFC 9204 section 2.1.2):
        read on meanwhile (cancelling a read loses nothing), so that the stream's
        reset or the connection's end ends the wait rather than leaving it forever."""
        unblocked = self.h3._decoder.unblocked(stream_id)
        closed: asyncio.Future[None] | None = None
        other: asyncio.Future[None] | None = None
        try:
            while not unblocked.done():
                if self._eof and closed is None:  # nothing more to read: wait for the connection's end
                    closed = asyncio.ensure_future(self.h3.quic.wait_closed())
                other = closed if closed is not None else asyncio.ensure_future(self._read_frames())
                await asyncio.wait((unblocked, other), return_when=asyncio.FIRST_COMPLETED)
                if other is closed:
                    if not unblocked.done():
                        closed.result()
                        raise H3StreamError(ErrorCode.H3_REQUEST_INCOMPLETE,
                                            "the connection closed while the header block waited")
                elif other.done():
                    other.result()  # a reset, a closed connection or a frame error: raised
                else:
                    other.cancel()
                    await asyncio.gather(other, return_exceptions=True)
            return unblocked.result()
        finally:  # cancelled too: nothing left running (a read cancelled loses nothing)
            self.h3._decoder.cancel(stream_id)  # still blocked: the peer's encoder is told
            for waiter in (closed, other):
                if waiter is not None:
                    waiter.cancel()

    async def receive_headers(self) -> Headers:
        """The header section (the first frame must be HEADERS)."""
        try:
            if self._blocked_headers:  # receive_headers_nowait() fed the block: wait for it
                self._blocked_headers = False
                return self._headers_in(self._checked_size(await self._wait_unblocked(self._stream_id())))
            frame = await self._next_frame()
            if frame is None:
                raise H3StreamError(ErrorCode.H3_REQUEST_INCOMPLETE, "stream ended before HEADERS")
            if frame.type != FrameType.HEADERS or self._headers_received:
                raise H3ConnectionError(ErrorCode.H3_FRAME_UNEXPECTED,
                                        f"{FrameType(frame.type).name} before HEADERS")
            self._headers_received = True
            return self._headers_in(await self._decode(frame.data))
        except H3Error as exc:
            self._error(exc)
            raise

    def receive_headers_nowait(self) -> Headers | None:
        """:meth:`receive_headers` when it would not wait: the header section if its
        HEADERS frame is all in and decodes at once; else None, and
        :meth:`receive_headers` goes on from there (it also reports what is wrong
        with a stream whose first frame is not HEADERS). Raises as it does."""
        try:
            block = None
            if not self._frames and not self._eof:
                chunk = self.stream._read_now(_READ_CHUNK)  # what is there: no waiting
                if chunk is not None:
                    block = self._whole_first_headers(chunk)
                    if block is None:
                        self._take(chunk)
            if block is None:
                frames = self._frames
                if not frames or self._headers_received or frames[0].type != FrameType.HEADERS:
                    return None
                block = frames.popleft().data
            self._headers_received = True
            headers = self.h3._decoder.feed_header(self._stream_id(), block)
            if headers is None:  # waits for the peer's encoder stream
                self._blocked_headers = True
                return None
            return self._headers_in(self._checked_size(headers))
        except H3Error as exc:
            self._error(exc)
            raise

    def _whole_first_headers(self, chunk: bytes) -> bytes | None:
        """The header block of the stream's first frame when ``chunk`` (the stream's
        first bytes) starts with a whole HEADERS frame within the size limit, what
        follows taken (:meth:`_take_rest`); else None and nothing taken (the reader
        takes it all, and says what is wrong). Most requests come so: no Frame
        object and no parsing loop for them."""
        span = None if self._headers_received else self._headers_span(chunk)
        if span is None:
            return None
        start, end = span
        if end < len(chunk):
            self._take_rest(chunk, end)
        return chunk[start:end]

    def _headers_span(self, chunk: bytes) -> tuple[int, int] | None:
        """(start, end) of the payload when ``chunk`` starts with a whole HEADERS frame
        (its length in one or two bytes, within the limit) and the reader is between
        frames; else None."""
        reader = self._reader
        if reader._type is not None or reader._buffer:
            return None
        frame = _short_frame(chunk, 0)
        if frame is None or frame[0] != _HEADERS:
            return None
        _, start, end = frame
        if end > len(chunk) or end - start > reader.max_headers_size:
            return None
        return start, end

    def _take_rest(self, chunk: bytes, at: int) -> None:
        """What follows a whole HEADERS frame in ``chunk``, from ``at``: a small body
        is most often one whole DATA frame there, queued as it is (the reader stays
        where a whole frame leaves it); else the reader takes it."""
        frame = _short_frame(chunk, at)
        if frame is not None and frame[0] == _DATA and frame[1] < frame[2] == len(chunk):
            self._frames.append(Frame(_DATA, chunk[frame[1]:]))
        else:
            self._frames.extend(self._reader.feed(chunk[at:]))

    def _headers_in(self, headers: Headers) -> Headers:
        if self.h3.is_client and self.h3.enable_datagrams:
            # The stream's id is known now: its datagrams can be routed to it.
            self.h3._streams_by_id[self._stream_id()] = self
        return headers

    async def receive_data(self) -> bytes:
        """The next piece of the body; b"" at its end (:attr:`trailers` then set if sent)."""
        try:
            while True:
                frame = self._frames.popleft() if self._frames else await self._next_frame()
                if frame is None:
                    return b""
                if self.trailers is not None:
                    raise H3ConnectionError(ErrorCode.H3_FRAME_UNEXPECTED,
                                            f"{FrameType(frame.type).name} after trailers")
                if frame.type == FrameType.HEADERS:
                    self.trailers = await self._decode(frame.data)
                    check_trailers(self.trailers)
                elif frame.data:
                    return self._counted(frame.data)
        except H3Error as exc:
            self._error(exc)
            raise

    def _counted(self, data: bytes) -> bytes:
        self.data_received += len(data)
        if self.expected_length is not None and self.data_received > self.expected_length:
            raise H3StreamError(ErrorCode.H3_MESSAGE_ERROR,
                                f"more body than its content-length {self.expected_length}")
        return data

    def _receive_data_nowait(self) -> bytes | None:
        """:meth:`receive_data` when its next frame is a DATA frame already in (a small
        request body comes with its HEADERS): no coroutine for it. Else None, nothing
        taken, and :meth:`receive_data` goes on from there. Raises as it does."""
        frames = self._frames
        if not frames or self.trailers is not None:
            return None
        frame = frames[0]
        if frame.type != FrameType.DATA or not frame.data:
            return None
        frames.popleft()
        try:
            return self._counted(frame.data)
        except H3Error as exc:
            self._error(exc)
            raise

    def receive_ended(self) -> bool:
        """Whether :meth:`receive_data` would return b"" now: the body (and trailers)
        all taken and the FIN in. Never waits: an ASGI server can say ``more_body:
        False`` with the last piece instead of one more round for the end."""
        try:
            if self._frames:
                return False
            if not self._eof:
                chunk = self.stream._read_now(_READ_CHUNK)
                if chunk is None:
                    return False
                self._take(chunk)
            return self._eof and not self._frames
        except H3Error as exc:
            self._error(exc)
            raise

    def send_datagram(self, data: bytes) -> None:
        """Send an HTTP Datagram (RFC 9297) tied to this request: unreliable, unordered.
        Needs H3_DATAGRAM from both sides (:meth:`H3Connection.datagrams_allowed`) and,
        on a client, the response's headers received (the stream's id is known then)."""
        stream_id = self.stream.id
        if not self.h3.datagrams_allowed():
            raise H3StreamError(ErrorCode.H3_DATAGRAM_ERROR, "HTTP Datagrams were not negotiated")
        if stream_id is None:
            raise RuntimeError("send_datagram() before the stream started: await the response headers first")
        self.h3.quic.send_datagram(encode_varint(stream_id // 4) + data)

    async def receive_datagram(self) -> bytes:
        """The next HTTP Datagram the peer sent for this request."""
        return await self._datagram_queue().get()

    def _datagram_queue(self) -> asyncio.Queue[bytes]:
        # Made when first needed: most requests never see a datagram.
        if self._datagrams is None:
            self._datagrams = asyncio.Queue(DATAGRAM_QUEUE)
        return self._datagrams

    def interim_received(self) -> None:
        """The headers received were an interim (1xx) response: another HEADERS
        frame, the final response's, may follow (RFC 9114 section 4.1)."""
        self._headers_received = False

    def _headers_frame(self, headers: Headers) -> bytes:
        # A client's stream has no id before it starts (its first write), and the
        # client's encoder keeps to the static table (see H3Connection): 0 does then.
        return self.h3.headers_frame(headers, self._id if self._id is not None else 0)

    def send_headers(self, headers: Headers, end_stream: bool = False) -> None:
        """Send a HEADERS frame (headers first, or trailers after the data)."""
        self.stream.write(self._headers_frame(headers), fin=end_stream)

    def send_headers_and_data(self, headers: Headers, data: bytes, end_stream: bool = False) -> None:
        """HEADERS then DATA (and the FIN with ``end_stream``) in one write: a whole
        small message at once, one native call and no packet with the headers alone.
        A large body is written on its own (not copied into the frames)."""
        self._write_frames(self._headers_frame(headers), data, end_stream)

    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        """Send a DATA frame (never waits: see :meth:`drain`)."""
        self._write_frames(b"", data, end_stream)

    def _write_frames(self, head: bytes, data: bytes, end_stream: bool) -> None:
        """``head`` (frames), then ``data`` as a DATA frame (none if empty), FIN with ``end_stream``."""
        if not data:
            if head or end_stream:
                self.stream.write(head, fin=end_stream)
            return
        head += encode_frame_header(FrameType.DATA, len(data))
        if len(data) <= _COALESCE:
            self.stream.write(head + data, fin=end_stream)
        else:  # large: msquic copies it once anyway, Python need not copy it first
            self.stream.write(head)
            self.stream.write(data, fin=end_stream)

    async def wait_peer_gone(self) -> None:
        """Wait until the peer no longer wants what we send: STOP_SENDING came
        (a cancelled request), or the stream or its connection is over."""
        await self.stream.wait_stop_sending()

    def end(self) -> None:
        """End our side of the stream (FIN)."""
        self.stream.finish()

    def drain(self) -> Awaitable[None]:
        """Wait for room in the stream's send buffer (an awaitable)."""
        return self.stream.drain()  # not wrapped in a coroutine of our own: awaited per send
