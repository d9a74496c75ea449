"""The pymsquic.h3 ASGI server against a raw aioquic QUIC client that writes
HTTP/3 bytes itself (well-formed or not): each protocol error answered with
RFC 9114's code, as a stream or a connection error, and what the RFC says to
ignore ignored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any, AsyncIterator

import pylsqpack
import pytest
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StopSendingReceived
from test_interop import EventLog

import pymsquic
import pymsquic.h3
from pymsquic.h3 import ErrorCode
from pymsquic.h3.frames import (
    Frame,
    FrameReader,
    FrameType,
    StreamKind,
    StreamType,
    encode_frame,
    encode_settings,
    encode_varint,
)

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/")]


def control_stream(settings: dict[int, int] | None = None) -> bytes:
    """A client control stream's start: its type and SETTINGS (no QPACK dynamic table)."""
    return encode_varint(StreamType.CONTROL) + encode_frame(FrameType.SETTINGS, encode_settings(settings or {}))


def headers_frame(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A HEADERS frame encoded with the static table only (no SETTINGS applied)."""
    _, block = pylsqpack.Encoder().encode(0, headers)
    return encode_frame(FrameType.HEADERS, block)


class RawH3Client(EventLog):
    """Writes bytes on streams as told (``send``); records what comes back,
    STOP_SENDING and the connection's close code too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_sending: dict[int, int] = {}
        self.stop_event = asyncio.Event()
        self.close_code: int | None = None
        self.terminated = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        super().quic_event_received(event)
        if isinstance(event, StopSendingReceived):
            self.stop_sending[event.stream_id] = event.error_code
            self.stop_event.set()
        elif isinstance(event, ConnectionTerminated):
            self.close_code = event.error_code
            self.terminated.set()

    async def response(self, stream_id: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The response on ``stream_id``: its headers and body (the server's encoder
        has no dynamic table: our SETTINGS gave it none)."""
        await asyncio.wait_for(self.ended_event(stream_id).wait(), 10)
        assert stream_id not in self.resets, f"reset with {self.resets[stream_id]:#x}"
        frames = FrameReader(StreamKind.RESPONSE).feed(bytes(self.data[stream_id]))
        assert frames[0].type == FrameType.HEADERS
        _, headers = pylsqpack.Decoder(0, 0).feed_header(stream_id, frames[0].data)
        return headers, b"".join(f.data for f in frames if f.type == FrameType.DATA)

    async def closed_with(self) -> int | None:
        await asyncio.wait_for(self.terminated.wait(), 10)
        return self.close_code


disconnects: list[str] = []
events: dict[str, asyncio.Event] = {}  # the waiting test's events, made on its loop: "started", "disconnected"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echo the body; /trailers answers with trailers; records http.disconnect. No lifespan."""
    if scope["type"] != "http":
        raise RuntimeError(f"no {scope['type']} here")
    if scope["path"] == "/raise-before":
        raise RuntimeError("the app failed before its response")
    if scope["path"] in ("/raise-after", "/return-early"):  # the head sent, then a failure or nothing more
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        if scope["path"] == "/raise-after":
            raise RuntimeError("the app failed in its response")
        return
    if scope["path"] == "/head":  # the response head named by the query: x-v's value, the fields' shape
        value = scope["query_string"]
        fields: Any = [[b"x-v", value]] if value.startswith(b"list") else [(b"x-v", value)]  # lists: unhashable
        if value == b"bad":
            fields.append((b"x-split", b"1\r\nx-b: 2"))
        await send({"type": "http.response.start", "status": 200,
                    "headers": iter(fields) if value == b"gen" else fields})
        await send({"type": "http.response.body", "body": b"h"})
        return
    if scope["path"] == "/scope":  # says what its scope has, then changes its headers (the app's own list)
        said = [(b"x-n", str(len(scope["headers"])).encode()), (b"x-q", scope["query_string"] or b"-"),
                (b"x-m", scope["method"].encode())]
        scope["headers"].append((b"x-added", b"1"))
        await send({"type": "http.response.start", "status": 200, "headers": said})
        await send({"type": "http.response.body", "body": b"s"})
        return
    if scope["path"] == "/no-read":  # answers without reading the body
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"did not read it"})
        return
    body = bytearray()
    if "started" in events:
        events["started"].set()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnects.append(scope["path"])
            try:
                await send({"type": "http.response.start", "status": 200})  # too late
            except OSError as exc:  # ASGI spec 2.4: a send after the client left raises an OSError
                disconnects.append(type(exc).__name__)
            if "disconnected" in events:
                events["disconnected"].set()
            return
        body += message["body"]
        if not message["more_body"]:
            break
    trailers = scope["path"] == "/trailers"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-len", str(len(body)).encode())],
                "trailers": trailers})
    await send({"type": "http.response.body", "body": bytes(body) or b"hello"})
    if trailers:
        await send({"type": "http.response.trailers", "headers": [(b"x-trailer", b"yes")]})


@contextlib.asynccontextmanager
async def raw_client(credential: pymsquic.Credential, *, control: bytes | None = None,
                     **options: Any) -> AsyncIterator[RawH3Client]:
    """The app served by pymsquic.h3 and a raw client connected to it (with a
    control stream unless ``control`` says what to send instead)."""
    async with await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=credential, **options) as server:
        config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE,
                                   server_name="localhost")
        async with connect("127.0.0.1", server.addresses[0][1], configuration=config,
                           create_protocol=RawH3Client) as client:
            assert isinstance(client, RawH3Client)
            client.send(control_stream() if control is None else control, uni=True, end=False)
            yield client


def run(coro: Any) -> None:
    asyncio.run(coro)


@pytest.mark.parametrize("name, control, code", [
    ("GOAWAY before SETTINGS", encode_varint(0) + encode_frame(FrameType.GOAWAY, b"\x00"),
     ErrorCode.H3_MISSING_SETTINGS),
    ("second SETTINGS", control_stream() + encode_frame(FrameType.SETTINGS, b""), ErrorCode.H3_FRAME_UNEXPECTED),
    ("DATA on the control stream", control_stream() + encode_frame(FrameType.DATA, b"x"),
     ErrorCode.H3_FRAME_UNEXPECTED),
    ("HTTP/2 setting", control_stream({0x4: 65535}), ErrorCode.H3_SETTINGS_ERROR),
    ("reserved setting 0x0 (RFC 9114 11.2.2)", control_stream({0x0: 1}), ErrorCode.H3_SETTINGS_ERROR),
    ("truncated SETTINGS", encode_varint(0) + encode_frame(FrameType.SETTINGS, b"\x06"), ErrorCode.H3_FRAME_ERROR),
    ("MAX_PUSH_ID going down", control_stream() + encode_frame(FrameType.MAX_PUSH_ID, b"\x05")
     + encode_frame(FrameType.MAX_PUSH_ID, b"\x03"), ErrorCode.H3_ID_ERROR),
    ("CANCEL_PUSH of a push never promised", control_stream() + encode_frame(FrameType.CANCEL_PUSH, b"\x00"),
     ErrorCode.H3_ID_ERROR),
])
def test_control_stream_errors_close_the_connection(server_credential, name: str, control: bytes,
                                                    code: int) -> None:
    async def main() -> None:
        async with raw_client(server_credential, control=control) as client:
            assert await client.closed_with() == code, name
    run(main())


def test_closed_control_stream_is_closed_critical_stream(server_credential) -> None:
    async def main() -> None:
        async with raw_client(server_credential, control=b"") as client:
            client.send(control_stream(), uni=True, end=True)  # a (second) control stream, ended
            assert await client.closed_with() == ErrorCode.H3_CLOSED_CRITICAL_STREAM
    run(main())


@pytest.mark.parametrize("stream_type, code", [(StreamType.CONTROL, ErrorCode.H3_STREAM_CREATION_ERROR),
                                               (StreamType.PUSH, ErrorCode.H3_STREAM_CREATION_ERROR)])
def test_second_control_stream_and_client_push_stream(server_credential, stream_type: int, code: int) -> None:
    async def main() -> None:
        async with raw_client(server_credential) as client:
            client.send(encode_varint(stream_type) + encode_frame(FrameType.SETTINGS, b""), uni=True, end=False)
            assert await client.closed_with() == code
    run(main())


def test_reserved_and_unknown_things_are_ignored(server_credential) -> None:
    async def main() -> None:
        async with raw_client(server_credential, control=control_stream({0x21: 1, 0x1234: 5})
                              + encode_frame(0x21 + 0x1F, b"grease")) as client:
            grease_stream = client.send(encode_varint(0x21 + 0x1F * 2) + b"whatever", uni=True, end=False)
            await asyncio.wait_for(client.stop_event.wait(), 10)  # the server stops reading it
            assert client.stop_sending[grease_stream] == ErrorCode.H3_STREAM_CREATION_ERROR
            request = (encode_frame(0x21, b"before") + headers_frame([*GET[:3], (b":path", b"/echo")])
                       + encode_frame(0xABCD, b"unknown") + encode_frame(FrameType.DATA, b"abc")
                       + encode_frame(0x21 + 0x1F * 7, b"") + encode_frame(FrameType.DATA, b"def"))
            headers, body = await client.response(client.send(request))
            assert (b":status", b"200") in headers and body == b"abcdef"
            assert client.close_code is None
    run(main())


@pytest.mark.parametrize("name, request_bytes, code", [
    ("no :path", headers_frame(GET[:3]), ErrorCode.H3_MESSAGE_ERROR),
    ("duplicate :method", headers_frame([GET[0], *GET]), ErrorCode.H3_MESSAGE_ERROR),
    ("pseudo-header after a regular field", headers_frame([*GET[:3], (b"x-a", b"1"), GET[3]]),
     ErrorCode.H3_MESSAGE_ERROR),
    ("uppercase field name", headers_frame([*GET, (b"X-Upper", b"1")]), ErrorCode.H3_MESSAGE_ERROR),
    ("connection-specific field", headers_frame([*GET, (b"connection", b"close")]), ErrorCode.H3_MESSAGE_ERROR),
    ("CR LF in a field value", headers_frame([*GET, (b"x-a", b"1\r\nx-b: 2")]), ErrorCode.H3_MESSAGE_ERROR),
    ("NUL in a field value", headers_frame([*GET, (b"x-a", b"1\x002")]), ErrorCode.H3_MESSAGE_ERROR),
    ("space in a field name", headers_frame([*GET, (b"x a", b"1")]), ErrorCode.H3_MESSAGE_ERROR),
    ("no :authority nor host", headers_frame([GET[0], GET[1], GET[3]]), ErrorCode.H3_MESSAGE_ERROR),
    (":authority and host differ", headers_frame([*GET, (b"host", b"elsewhere")]), ErrorCode.H3_MESSAGE_ERROR),
    ("content-length and body differ", headers_frame([*GET, (b"content-length", b"10")])
     + encode_frame(FrameType.DATA, b"short"), ErrorCode.H3_MESSAGE_ERROR),
    ("stream ends before HEADERS", b"", ErrorCode.H3_REQUEST_INCOMPLETE),
    ("content-length not a number", headers_frame([*GET, (b"content-length", b"abc")]), ErrorCode.H3_MESSAGE_ERROR),
    (":protocol, extended CONNECT not offered", headers_frame([(b":method", b"CONNECT"), (b":protocol", b"x"),
                                                              *GET[1:]]), ErrorCode.H3_MESSAGE_ERROR),
    ("CONNECT with a :path", headers_frame([(b":method", b"CONNECT"), *GET[1:]]), ErrorCode.H3_MESSAGE_ERROR),
    ("pseudo-header in trailers", headers_frame([*GET[:3], (b":path", b"/echo")]) + encode_frame(FrameType.DATA, b"x")
     + headers_frame([(b":status", b"200")]), ErrorCode.H3_MESSAGE_ERROR),
    ("HEADERS over the field section limit", headers_frame([*GET, (b"x-big", b"v" * 2000)]),
     ErrorCode.H3_EXCESSIVE_LOAD),
])
def test_malformed_requests_are_stream_errors(server_credential, name: str, request_bytes: bytes, code: int) -> None:
    async def main() -> None:
        async with raw_client(server_credential, max_field_section_size=1000) as client:
            bad = client.send(request_bytes)
            await asyncio.wait_for(client.ended_event(bad).wait(), 10)
            assert client.resets.get(bad) == code, name
            headers, body = await client.response(client.send(headers_frame(GET)))  # the connection carries on
            assert (b":status", b"200") in headers and body == b"hello"
    run(main())


@pytest.mark.parametrize("name, request_bytes", [
    ("DATA before HEADERS", encode_frame(FrameType.DATA, b"x")),
    ("SETTINGS on a request stream", headers_frame(GET) + encode_frame(FrameType.SETTINGS, b"")),
    ("DATA after trailers", headers_frame(GET) + headers_frame([(b"x-t", b"1")]) + encode_frame(FrameType.DATA, b"x")),
    ("stream ends inside a frame", headers_frame(GET) + encode_frame(FrameType.DATA, b"abcdef")[:-2]),
])
def test_bad_frame_sequences_are_connection_errors(server_credential, name: str, request_bytes: bytes) -> None:
    async def main() -> None:
        async with raw_client(server_credential) as client:
            client.send(request_bytes)
            code = await client.closed_with()
            assert code == (ErrorCode.H3_FRAME_ERROR if "inside" in name else ErrorCode.H3_FRAME_UNEXPECTED), name
    run(main())


def test_request_trailers_and_response_trailers(server_credential) -> None:
    async def main() -> None:
        async with raw_client(server_credential) as client:
            request = (headers_frame([*GET[:3], (b":path", b"/trailers")]) + encode_frame(FrameType.DATA, b"body")
                       + headers_frame([(b"x-request-trailer", b"1")]))
            stream_id = client.send(request)
            await asyncio.wait_for(client.ended_event(stream_id).wait(), 10)
            frames = FrameReader(StreamKind.RESPONSE).feed(bytes(client.data[stream_id]))
            assert [f.type for f in frames] == [FrameType.HEADERS, FrameType.DATA, FrameType.HEADERS]
            _, trailers = pylsqpack.Decoder(0, 0).feed_header(stream_id, frames[2].data)
            assert trailers == [(b"x-trailer", b"yes")]
    run(main())


def test_cancelled_request_reaches_the_app_as_disconnect(server_credential, caplog) -> None:
    async def main() -> None:
        disconnects.clear()
        events.update(started=asyncio.Event(), disconnected=asyncio.Event())
        async with raw_client(server_credential) as client:
            stream_id = client.send(headers_frame([*GET[:3], (b":path", b"/cancelled")])
                                    + encode_frame(FrameType.DATA, b"part"), end=False)
            await asyncio.wait_for(events["started"].wait(), 10)  # the app runs, waiting for more body
            client._quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            client.transmit()
            headers, _ = await client.response(client.send(headers_frame(GET)))  # the connection carries on
            assert (b":status", b"200") in headers
            await asyncio.wait_for(events["disconnected"].wait(), 10)  # the app's receive() returned http.disconnect
            assert disconnects == ["/cancelled", "ClientDisconnected"]
        events.clear()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no app failure logged
    run(main())


def test_body_not_read_by_the_app_is_stopped_with_no_error(server_credential) -> None:
    async def main() -> None:
        async with raw_client(server_credential) as client:
            stream_id = client.send(headers_frame([*GET[:3], (b":path", b"/no-read")])
                                    + encode_frame(FrameType.DATA, b"more to come"), end=False)
            await asyncio.wait_for(client.stop_event.wait(), 10)  # STOP_SENDING: the rest is not wanted
            assert client.stop_sending[stream_id] == ErrorCode.H3_NO_ERROR
            await asyncio.wait_for(client.ended_event(stream_id).wait(), 10)
            frames = FrameReader(StreamKind.RESPONSE).feed(bytes(client.data[stream_id]))
            assert frames[-1] == Frame(FrameType.DATA, b"did not read it")  # the response is whole
    run(main())


def test_request_blocked_on_qpack_then_reset_does_not_hold_the_server(server_credential) -> None:
    """A header block that refers to encoder stream data never sent waits (RFC 9204
    2.1.2); once the client resets that stream and leaves, nothing of it may linger:
    the graceful close ends at once instead of waiting out its grace period."""
    async def main() -> None:
        server = await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential)
        config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE,
                                   server_name="localhost")
        async with connect("127.0.0.1", server.addresses[0][1], configuration=config,
                           create_protocol=RawH3Client) as client:
            assert isinstance(client, RawH3Client)
            client.send(control_stream(), uni=True, end=False)
            encoder = pylsqpack.Encoder()
            encoder.apply_settings(4096, 16)  # the server's defaults: it may be blocked on us
            fields = [*GET, (b"x-indexed", b"v" * 100)]
            encoder.encode(0, fields)  # the first time literal; the second refers to the dynamic table
            _, block = encoder.encode(0, fields)  # and its encoder stream data is never sent
            with pytest.raises(pylsqpack.StreamBlocked):
                pylsqpack.Decoder(4096, 16).feed_header(0, block)
            stream_id = client.send(encode_frame(FrameType.HEADERS, block), end=False)
            # A request after it, answered: the server took stream 0 first (its task ran
            # first), so stream 0 waits in the QPACK decoder now.
            headers, _ = await client.response(client.send(headers_frame(GET)))
            assert (b":status", b"200") in headers
            client._quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            client.transmit()
            headers, _ = await client.response(client.send(headers_frame(GET)))  # the connection carries on
            assert (b":status", b"200") in headers
        server.close(grace=60)
        await asyncio.wait_for(server.wait_closed(), 10)  # not 60 s: the blocked request is gone
    run(main())


def test_body_over_its_content_length_is_a_stream_error_at_once(server_credential) -> None:
    """Section 4.1.2: more DATA than content-length is malformed when it comes, not at a FIN
    that a hostile client never sends."""
    async def main() -> None:
        async with raw_client(server_credential) as client:
            bad = client.send(headers_frame([*GET[:3], (b":path", b"/echo"), (b"content-length", b"2")])
                              + encode_frame(FrameType.DATA, b"abcdef"), end=False)
            await asyncio.wait_for(client.ended_event(bad).wait(), 10)
            assert client.resets.get(bad) == ErrorCode.H3_MESSAGE_ERROR
    run(main())


def test_app_failures_answer_500_or_reset_with_internal_error(server_credential, caplog) -> None:
    async def main() -> None:
        async with raw_client(server_credential) as client:
            headers, _ = await client.response(client.send(headers_frame([*GET[:3], (b":path", b"/raise-before")])))
            assert (b":status", b"500") in headers
            for path in (b"/raise-after", b"/return-early"):  # too late for a 500: the response is cut
                stream_id = client.send(headers_frame([*GET[:3], (b":path", path)]))
                await asyncio.wait_for(client.ended_event(stream_id).wait(), 10)
                assert client.resets.get(stream_id) == ErrorCode.H3_INTERNAL_ERROR, path
            assert client.close_code is None  # the connection carries on
        assert sum("ASGI app failed" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR) == 3
    run(main())


def test_request_without_complete_headers_in_time_is_rejected(server_credential) -> None:
    """Slowloris: a request stream that never completes its HEADERS frame holds a request
    slot only for ``header_timeout``: then it is reset (H3_REQUEST_REJECTED: not processed)."""
    async def main() -> None:
        async with raw_client(server_credential, header_timeout=0.2) as client:
            slow = client.send(headers_frame(GET)[:3], end=False)  # the frame's start, never the rest
            await asyncio.wait_for(client.ended_event(slow).wait(), 10)
            assert client.resets.get(slow) == ErrorCode.H3_REQUEST_REJECTED
            headers, _ = await client.response(client.send(headers_frame(GET)))  # the connection carries on
            assert (b":status", b"200") in headers
    run(main())


def test_response_fields_checked_once_are_remembered_and_bad_ones_never() -> None:
    """The server remembers the app's response fields it found valid (a set lookup next
    time); a malformed one is refused every time it comes, and is never remembered."""
    from pymsquic.h3 import server
    from pymsquic.h3.errors import H3StreamError

    good = [(b"Content-Type", b"text/plain"), (b"connection", b"close"), (b"x-kept", b"yes")]
    for _ in range(2):  # the second time from the set: the same result
        assert server._response_fields(200, good) == [(b":status", b"200"), (b"content-type", b"text/plain"),
                                                      (b"x-kept", b"yes")]
    assert (b"x-kept", b"yes") in server._CHECKED_FIELDS
    for bad in ([(b"x-split", b"1\r\nset-cookie: evil")], [(b"x-a", b" padded")], [(b":path", b"/")],
                [(b"bad name", b"1")], [(b"te", b"gzip")]):
        for _ in range(2):
            with pytest.raises(H3StreamError):
                server._response_fields(200, bad)
        assert bad[0] not in server._CHECKED_FIELDS and (bad[0][0].lower(), bad[0][1]) not in server._CHECKED_FIELDS
    for status in (99, 1000, -10):
        with pytest.raises(H3StreamError):
            server._response_fields(status, [])
    assert server._response_fields(799, [])[0] == (b":status", b"799")


@pytest.mark.parametrize("pad", [0, 40, 300, 5000])  # a header block's length in 1 or 2 bytes, below and over 256
@pytest.mark.parametrize("length_bytes", [0, 4])  # its length as the shortest varint, or as a 4-byte one
@pytest.mark.parametrize("pieces", [[b"body"], [bytes(range(256)) * 2], [b"", b"bo", b"dy"]],
                         ids=["one-byte-length", "two-byte-length", "three-frames"])
def test_header_block_lengths_with_the_body_in_the_same_read(server_credential, pad: int, length_bytes: int,
                                                             pieces: list[bytes]) -> None:
    """The first HEADERS frame, whatever its length's encoding, with DATA right after it
    (one frame, its length in one or two bytes, or several frames): the request decodes
    and its body reaches the app whole."""
    async def main() -> None:
        async with raw_client(server_credential) as client:
            # (Fields of 2000 bytes at most: pylsqpack 0.3, the last for Python 3.10, encodes
            # none over ~4 KB.)
            fields = [*GET[:3], (b":path", b"/echo"),
                      *((b"x-pad-%d" % i, b"p" * min(2000, pad - i)) for i in range(0, pad, 2000))]
            _, block = pylsqpack.Encoder().encode(0, fields)
            if length_bytes:
                head = bytes([FrameType.HEADERS]) + (0x80 << 24 | len(block)).to_bytes(4, "big")
            else:
                head = encode_varint(FrameType.HEADERS) + encode_varint(len(block))
            data = b"".join(encode_frame(FrameType.DATA, piece) for piece in pieces)
            headers, body = await client.response(client.send(head + block + data))
            whole = b"".join(pieces)
            assert (b":status", b"200") in headers and (b"x-len", str(len(whole)).encode()) in headers
            assert body == whole
    run(main())


def test_repeated_response_heads(server_credential) -> None:
    """The server remembers response heads it checked and encoded: each response still
    carries its own head (two alternating, fields as lists or an iterator), and a
    malformed head is the app's error (a 500) every time."""
    async def main() -> None:
        async with raw_client(server_credential) as client:
            for query in (b"a", b"b", b"a", b"b", b"list1", b"list1", b"gen", b"gen", b"bad", b"bad", b"a"):
                stream_id = client.send(headers_frame([*GET[:3], (b":path", b"/head?" + query)]))
                headers, body = await client.response(stream_id)
                if query == b"bad":
                    assert (b":status", b"500") in headers, query
                else:
                    assert (b":status", b"200") in headers and (b"x-v", query) in headers and body == b"h", query
    run(main())


def test_large_heads_are_not_kept_in_the_head_caches(server_credential, monkeypatch) -> None:
    """The server's response-head cache and the client's response-head cache keep small heads
    only: a large one (its values chosen by the app or the server, a path echoed into a header)
    is checked each time, not held for the life of the process."""
    from pymsquic.h3 import client as h3_client
    from pymsquic.h3 import server as h3_server

    # A lower bound than 4 KiB, so that a large head needs no field over ~4 KB, which
    # pylsqpack 0.3 (the last for Python 3.10) cannot encode.
    monkeypatch.setattr(h3_client, "CACHED_SECTION_MAX", 1000)
    monkeypatch.setattr(h3_server, "CACHED_SECTION_MAX", 1000)

    def kept(value: bytes) -> tuple[bool, bool]:
        return (any((b"x-v", value) in key for key in h3_client._RESPONSE_HEADS),
                any(value in repr(key).encode() for key in h3_server._HEADS))

    async def main() -> None:
        async with await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential) as server:
            async with pymsquic.h3.Client(verify=False) as client:
                url = f"https://127.0.0.1:{server.addresses[0][1]}/head?"
                small, large = b"s" * 16, b"L" * 2000
                for value in (small, large):
                    response = await client.get(url + value.decode())
                    assert response.status_code == 200 and response.header("x-v") == value.decode()
                assert kept(small) == (True, True)  # the caches are where this test looks
                assert kept(large) == (False, False)
    run(main())


def test_a_negative_encoder_table_capacity_is_refused(server_credential) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="qpack_encoder_max_table_capacity"):
            await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential,
                                    qpack_encoder_max_table_capacity=-1)
    run(main())


def test_repeated_requests(server_credential) -> None:
    """The server remembers request heads it checked: a repeated request gets a scope of its
    own (its headers list the app may change), requests differing in their query or method
    get theirs, and a malformed request is a stream error every time it comes."""
    async def main() -> None:
        async with raw_client(server_credential) as client:
            for query, method in ((b"", b"GET"), (b"", b"GET"), (b"a=1", b"GET"), (b"a=2", b"GET"), (b"", b"HEAD"),
                                  (b"a=1", b"GET")):
                fields = [(b":method", method), *GET[1:3], (b":path", b"/scope?" + query if query else b"/scope")]
                headers, _ = await client.response(client.send(headers_frame(fields)))
                # the host field the server adds from :authority, never the app's x-added of before
                assert (b"x-n", b"1") in headers and (b"x-q", query or b"-") in headers, (query, method)
                assert (b"x-m", method) in headers
            for _ in range(2):
                bad = client.send(headers_frame([*GET, (b"connection", b"close")]))
                await asyncio.wait_for(client.ended_event(bad).wait(), 10)
                assert client.resets.get(bad) == ErrorCode.H3_MESSAGE_ERROR
    run(main())
