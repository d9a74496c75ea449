"""The short paths pymsquic.h3 takes for speed still behave: a whole message goes
as one write with its FIN, a streamed response still streams, no STOP_SENDING
once a request's FIN is in, a header block waiting for QPACK encoder data still
gets its answer, and the last body piece says ``more_body: False`` itself.

Real msquic over 127.0.0.1: pymsquic.h3 on both ends, or aioquic's QUIC as a
raw HTTP/3 client (tests/test_h3_server.py's). The writes are counted by
wrapping the real ``write`` of pymsquic's streams: what msquic is handed."""

from __future__ import annotations

import asyncio
from typing import Any

import pylsqpack
import pytest
from test_h3_server import GET, headers_frame, raw_client

import pymsquic
import pymsquic.h3
from pymsquic._core.connection import ConnectionCore
from pymsquic._core.stream import StreamCore
from pymsquic.h3.frames import FrameType, StreamType, encode_frame, encode_varint

BODY = bytes(range(250)) * 12  # 3000 bytes
release = {}  # the test's events, made on its loop: "second" lets /stream send its last piece
messages: list[dict[str, Any]] = []  # what /echo's receive() returned


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/whole":  # the head, then the whole body at once
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3000")]})
        await send({"type": "http.response.body", "body": BODY})
    elif scope["path"] == "/stream":  # the first piece, then the last once the test saw the first
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await release["second"].wait()
        await send({"type": "http.response.body", "body": b"last"})
    else:  # /echo: the body back, each receive() kept
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})


def test_whole_messages_are_one_write_with_fin(server_credential: pymsquic.Credential,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A request with a bytes body (client) and a response whose body comes with
    ``more_body: False`` (server): HEADERS, DATA and FIN in one write each (the
    client's with the stream's open: ``open_stream(data=, fin=)``)."""
    writes: dict[tuple[bool, int], list[tuple[int, bool]]] = {}
    seen: list[StreamCore] = []  # kept alive: no id() of a freed stream reused for the next
    real_write = StreamCore.write
    real_open = ConnectionCore.open_stream

    def write(stream: StreamCore, data: Any, fin: bool = False) -> None:
        if not stream.is_unidirectional:  # request streams only, both sides: (ours?, id)
            seen.append(stream)
            writes.setdefault((stream.is_local, id(stream)), []).append((len(data), fin))
        real_write(stream, data, fin)

    def open_stream(conn: ConnectionCore[Any], unidirectional: bool = False, *, data: Any = None,
                    fin: bool = False) -> Any:
        stream = real_open(conn, unidirectional, data=data, fin=fin)
        if not unidirectional and (data is not None or fin):  # a write that goes with the open
            seen.append(stream)
            writes.setdefault((True, id(stream)), []).append((len(data or b""), fin))
        return stream

    monkeypatch.setattr(StreamCore, "write", write)
    monkeypatch.setattr(ConnectionCore, "open_stream", open_stream)

    async def main() -> None:
        async with await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential) as server:
            url = f"https://127.0.0.1:{server.addresses[0][1]}"
            async with pymsquic.h3.Client(verify=False, timeout=10) as client:
                assert (await client.get(f"{url}/whole")).content == BODY
                assert (await client.post(f"{url}/echo", content=b"x" * 512)).content == b"x" * 512

    asyncio.run(main())
    assert len(writes) == 4  # two streams, seen from each side
    for (client_side, _), calls in writes.items():
        assert len(calls) == 1 and calls[0][1], (client_side, calls)  # one write, with the FIN
    sizes = [calls[0][0] for (client_side, _), calls in writes.items() if client_side]
    assert max(sizes) > 512  # the POST's HEADERS and its whole body together (the GET's is HEADERS alone)


def test_streamed_response_is_not_held_back(server_credential: pymsquic.Credential) -> None:
    """The first piece of a streamed response reaches the client while the app
    waits to send the last (which it sends only once the client has the first)."""
    async def main() -> None:
        release["second"] = asyncio.Event()
        async with await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential) as server:
            url = f"https://127.0.0.1:{server.addresses[0][1]}"
            async with pymsquic.h3.Client(verify=False, timeout=10) as client:
                response = await client.get(f"{url}/stream", stream=True)
                pieces = response.aiter_bytes()
                first = await pieces.__anext__()
                assert first == b"first"
                release["second"].set()
                assert [piece async for piece in pieces] == [b"last"]
        release.clear()

    asyncio.run(main())


def test_a_wait_told_checked_still_checks_a_stream_attached_by_it(server_credential: pymsquic.Credential) -> None:
    """RequestStream._next_frame waits with ``checked=True`` (it just read nothing): the
    first check is skipped only for a stream attached to the loop before. One attached by
    that wait is checked, as what came before its attachment was never reported."""
    async def main() -> None:
        async with await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential) as server:
            url = f"https://127.0.0.1:{server.addresses[0][1]}"
            async with pymsquic.h3.Client(verify=False, timeout=10) as client:
                assert (await client.get(f"{url}/whole")).content == BODY  # the connection, up
                h3 = next(iter(client._connections.values()))
                request = h3.open_request(h3.headers_frame([(b":method", b"GET"), (b":scheme", b"https"),
                                                            (b":authority", b"127.0.0.1"), (b":path", b"/whole")]),
                                          end_stream=True)
                stream = request.stream
                assert stream._attached_loop is None  # nothing waited on it: its changes go unreported
                while stream._readable() is None:  # the answer's first bytes are in (a look, nothing read)
                    await asyncio.sleep(0)  # the server runs on this loop
                chunk = await asyncio.wait_for(stream._wait(stream._read_chunk_now, "read()", checked=True), 10)
                assert chunk.startswith(bytes([FrameType.HEADERS]))

    asyncio.run(main())


def test_last_body_piece_says_more_body_false(server_credential: pymsquic.Credential) -> None:
    """A request body all in with its FIN: one http.request message, more_body False
    (no extra receive() round for an empty end); a body still coming: more_body True."""
    async def body() -> Any:
        yield b"a" * 100
        yield b"b" * 100

    async def main() -> None:
        messages.clear()
        async with await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential) as server:
            url = f"https://127.0.0.1:{server.addresses[0][1]}"
            async with pymsquic.h3.Client(verify=False, timeout=10) as client:
                assert (await client.post(f"{url}/echo", content=b"x" * 512)).content == b"x" * 512
                assert messages == [{"type": "http.request", "body": b"x" * 512, "more_body": False}]
                messages.clear()
                assert (await client.post(f"{url}/echo", content=body())).content == b"a" * 100 + b"b" * 100
                assert messages[0]["more_body"] and not messages[-1]["more_body"]
                assert b"".join(m["body"] for m in messages) == b"a" * 100 + b"b" * 100

    asyncio.run(main())


def test_no_stop_sending_once_the_request_fin_is_in(server_credential: pymsquic.Credential,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An app that answers without reading a request already ended (a GET with its
    FIN) leaves nothing to stop: no STOP_SENDING (a native call, an msquic operation
    and a loop wake-up each). A body still coming is stopped: see test_h3_server's
    test_body_not_read_by_the_app_is_stopped_with_no_error."""
    stopped: list[int] = []
    real_stop_sending = StreamCore.stop_sending

    def stop_sending(stream: StreamCore, error_code: int = 0) -> None:
        stopped.append(error_code)
        real_stop_sending(stream, error_code)

    monkeypatch.setattr(StreamCore, "stop_sending", stop_sending)

    async def main() -> None:
        async with await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential) as server:
            url = f"https://127.0.0.1:{server.addresses[0][1]}"
            async with pymsquic.h3.Client(verify=False, timeout=10) as client:
                for _ in range(3):  # /whole reads nothing of the request
                    assert (await client.get(f"{url}/whole")).content == BODY

    asyncio.run(main())
    assert stopped == []


def test_header_block_waiting_for_encoder_data_is_answered_once_it_comes(
        server_credential: pymsquic.Credential) -> None:
    """A request whose header block refers to a dynamic table entry not yet sent
    (RFC 9204 2.1.2): the server's first look finds it blocked, and it is answered
    once the client's encoder stream brings the entry."""
    async def main() -> None:
        async with raw_client(server_credential) as client:
            encoder = pylsqpack.Encoder()
            encoder_data = encoder.apply_settings(4096, 16)  # the server's defaults: it may be blocked on us
            fields = [*GET, (b"x-indexed", b"v" * 100)]
            encoder_data += encoder.encode(0, fields)[0]  # inserts the entry
            more, block = encoder.encode(0, fields)  # refers to it
            encoder_data += more
            with pytest.raises(pylsqpack.StreamBlocked):
                pylsqpack.Decoder(4096, 16).feed_header(0, block)
            blocked = client.send(encode_frame(FrameType.HEADERS, block))
            # Another request answered after it: the server has looked at the blocked one by now.
            headers, _ = await client.response(client.send(headers_frame(GET)))
            assert (b":status", b"200") in headers
            assert not client.ended_event(blocked).is_set()
            client.send(encode_varint(StreamType.QPACK_ENCODER) + encoder_data, uni=True, end=False)
            headers, body = await client.response(blocked)
            assert (b":status", b"200") in headers and body == b"hello"  # the raw client's app: an empty echo

    asyncio.run(main())


@pytest.mark.parametrize("field", [(b"x-a", b"a\x00b"), (b"x-a", b"a\rb"), (b"x-a", b"a\nb"), (b"x-a", b" a"),
                                   (b"x-a", b"a\t"), (b"X-A", b"a"), (b"x a", b"a"), (b"", b"a"), (b":x-a", b"a")])
def test_field_checks_refuse_bad_fields_every_time(field: tuple[bytes, bytes]) -> None:
    """The field checks remember names found valid: a bad field is refused however
    often it comes, and after good fields of the same name."""
    from pymsquic.h3 import H3StreamError
    from pymsquic.h3.message import check_response

    good = [(b":status", b"200"), (b"x-a", b"fine"), (b"x-a", b""), (b"x-b", b"a b\tc")]
    for _ in range(2):
        assert check_response(good) == 200
        with pytest.raises(H3StreamError, match="field|pseudo-header"):
            check_response([(b":status", b"200"), field])


def test_whole_response_keeps_its_trailers(server_credential: pymsquic.Credential) -> None:
    """A response read whole (not streamed) ends at its FIN, not at its last DATA:
    the trailers after the body are still taken."""
    from test_h3_client import start

    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            response = await client.post(f"{url}/stream", content=b"x" * 1000)
            assert response.status_code == 201 and len(response.content) == 30000
            assert response.trailers == [("x-sum", "1000")]

    asyncio.run(main())
