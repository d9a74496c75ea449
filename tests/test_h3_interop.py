"""pymsquic.h3 against aioquic's HTTP/3 (aioquic.h3.connection.H3Connection over
aioquic's QUIC, from PyPI), an implementation nobody here wrote, in both roles."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any, AsyncIterator

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from test_h3_server import control_stream, headers_frame

import pymsquic
import pymsquic.h3
from pymsquic.h3 import ErrorCode
from pymsquic.h3.frames import FrameType, encode_frame, encode_varint

BODY_4000 = bytes(range(256)) * 15 + bytes(160)  # 4000 bytes, not all alike


# ---- the pymsquic h3 client against aioquic's HTTP/3 server -----------------------------

class AioquicH3Server(QuicConnectionProtocol):
    """GET /4000: 4000 bytes; POST /echo: the body back; GET /trailers: a body and
    trailers; GET /bad: DATA before HEADERS (malformed). Records how the
    connection ended."""

    terminated: list[ConnectionTerminated] = []
    terminated_event: asyncio.Event | None = None  # set by the test that waits for it, on its loop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http: H3Connection | None = None
        self._requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            AioquicH3Server.terminated.append(event)
            if AioquicH3Server.terminated_event is not None:
                AioquicH3Server.terminated_event.set()
        if self._http is None:
            self._http = H3Connection(self._quic)
        for h3_event in self._http.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            self._requests[event.stream_id] = (dict(event.headers), bytearray())
        elif isinstance(event, DataReceived):
            self._requests[event.stream_id][1].extend(event.data)
        if getattr(event, "stream_ended", False):
            self._respond(event.stream_id)

    def _respond(self, stream_id: int) -> None:
        assert self._http is not None
        headers, body = self._requests.pop(stream_id)
        path = headers[b":path"]
        if path == b"/bad":
            self._quic.send_stream_data(stream_id, b"\x00\x03abc", end_stream=True)  # DATA first
        else:
            content = bytes(body) if headers[b":method"] == b"POST" else BODY_4000
            self._http.send_headers(stream_id, [(b":status", b"200"), (b"server", b"aioquic"),
                                                (b"content-length", str(len(content)).encode())])
            self._http.send_data(stream_id, content, end_stream=path != b"/trailers")
            if path == b"/trailers":
                self._http.send_headers(stream_id, [(b"x-checksum", b"42")], end_stream=True)
        self.transmit()


async def aioquic_h3_server(cert_files: Any) -> Any:
    certfile, keyfile = cert_files
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(str(certfile), str(keyfile))
    return await serve("127.0.0.1", 0, configuration=config, create_protocol=AioquicH3Server)


def test_client_against_aioquic_server(cert_files) -> None:
    async def main() -> None:
        server = await aioquic_h3_server(cert_files)
        port = server._transport.get_extra_info("sockname")[1]
        url = f"https://127.0.0.1:{port}"
        try:  # verified against the server's certificate, as a CA
            async with pymsquic.h3.Client(ca_file=cert_files[0], server_name="localhost", timeout=10) as client:
                response = await client.get(f"{url}/4000")
                assert response.status_code == 200 and response.content == BODY_4000
                assert response.header("server") == "aioquic"
                payload = b"echo me " * 1000
                assert (await client.post(f"{url}/echo", content=payload)).content == payload
                responses = await asyncio.gather(*(client.post(f"{url}/echo", content=str(i).encode() * 100)
                                                   for i in range(10)))
                assert [r.content for r in responses] == [str(i).encode() * 100 for i in range(10)]
                big = bytes(range(256)) * 8192  # 2 MiB: flow control both ways
                assert (await client.post(f"{url}/echo", content=big)).content == big
                streamed = await client.get(f"{url}/trailers", stream=True)
                chunks = [chunk async for chunk in streamed.aiter_bytes()]
                assert b"".join(chunks) == BODY_4000 and streamed.trailers == [("x-checksum", "42")]
                assert len(client._connections) == 1  # one connection for the authority
        finally:
            server.close()

    asyncio.run(main())


def test_client_closes_with_frame_unexpected_on_data_before_headers(cert_files) -> None:
    async def main() -> None:
        AioquicH3Server.terminated.clear()
        AioquicH3Server.terminated_event = asyncio.Event()
        server = await aioquic_h3_server(cert_files)
        port = server._transport.get_extra_info("sockname")[1]
        try:
            async with pymsquic.h3.Client(verify=False, timeout=10) as client:
                with pytest.raises(pymsquic.h3.H3ConnectionError) as info:
                    await client.get(f"https://127.0.0.1:{port}/bad")
                assert info.value.error_code == ErrorCode.H3_FRAME_UNEXPECTED
                await asyncio.wait_for(AioquicH3Server.terminated_event.wait(), 10)  # the CONNECTION_CLOSE
                assert AioquicH3Server.terminated[0].error_code == ErrorCode.H3_FRAME_UNEXPECTED
        finally:
            server.close()

    asyncio.run(main())


# ---- aioquic's HTTP/3 client against the pymsquic h3 (ASGI) server ------------------------

async def read_body(receive: Any) -> bytes:
    """An ASGI request body, gathered from the pieces receive() gives."""
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """GET: 4000 bytes; POST: the body back, read in pieces as it streams in."""
    assert scope["type"] == "http" and scope["http_version"] == "3"
    body = await read_body(receive)
    content = body if scope["method"] == "POST" else BODY_4000
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(content)).encode()), (b"x-path", scope["path"].encode())]})
    await send({"type": "http.response.body", "body": content[:1000], "more_body": True})
    await send({"type": "http.response.body", "body": content[1000:]})


class AioquicH3Client(QuicConnectionProtocol):
    """aioquic's H3Connection as a client: request() returns (headers, body)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.responses: dict[int, tuple[list[tuple[bytes, bytes]], bytearray]] = {}
        self.done: dict[int, asyncio.Event] = {}
        self.resets: dict[int, int] = {}
        self.terminated = asyncio.Event()
        self.close_code: int | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.close_code = event.error_code
            self.terminated.set()
        elif isinstance(event, StreamReset):
            self.resets[event.stream_id] = event.error_code
            self._ended(event.stream_id)
        for h3_event in self.http.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.responses.setdefault(h3_event.stream_id, ([], bytearray()))[0].extend(h3_event.headers)
            elif isinstance(h3_event, DataReceived):
                self.responses[h3_event.stream_id][1].extend(h3_event.data)
            if getattr(h3_event, "stream_ended", False):
                self._ended(h3_event.stream_id)

    def _ended(self, stream_id: int) -> None:
        self.done.setdefault(stream_id, asyncio.Event()).set()

    def send_request(self, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> int:
        stream_id = self._quic.get_next_available_stream_id()
        self.http.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.http.send_data(stream_id, body, end_stream=True)
        self.transmit()
        return stream_id

    async def request(self, method: bytes, path: bytes, body: bytes = b"") -> tuple[dict[bytes, bytes], bytes]:
        stream_id = self.send_request([(b":method", method), (b":scheme", b"https"), (b":authority", b"localhost"),
                                       (b":path", path)], body)
        await asyncio.wait_for(self.done.setdefault(stream_id, asyncio.Event()).wait(), 10)
        headers, data = self.responses[stream_id]
        return dict(headers), bytes(data)


def aioquic_h3_config() -> QuicConfiguration:
    return QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE,
                             server_name="localhost")


@contextlib.asynccontextmanager
async def asgi_server_and_aioquic_client(credential: pymsquic.Credential,
                                        **options: Any) -> AsyncIterator[AioquicH3Client]:
    """The ASGI app served by pymsquic.h3 (``options`` for serve()), and an aioquic HTTP/3 client connected to it."""
    async with await pymsquic.h3.serve(asgi_app, "127.0.0.1", 0, credential=credential, **options) as server:
        port = server.addresses[0][1]
        async with connect("127.0.0.1", port, configuration=aioquic_h3_config(),
                           create_protocol=AioquicH3Client) as client:
            assert isinstance(client, AioquicH3Client)
            yield client


@pytest.mark.parametrize("table", [0, 4096])  # our QPACK encoder: static table only (default), or dynamic
def test_aioquic_client_against_asgi_server(server_credential, table: int) -> None:
    async def main() -> None:
        async with asgi_server_and_aioquic_client(server_credential, qpack_encoder_max_table_capacity=table) as client:
            headers, body = await client.request(b"GET", b"/4000")
            assert headers[b":status"] == b"200" and body == BODY_4000
            assert headers[b"x-path"] == b"/4000"
            payload = bytes(range(256)) * 100
            headers, body = await client.request(b"POST", b"/echo", payload)
            assert body == payload
            results = await asyncio.gather(*(client.request(b"POST", f"/{i}".encode(), str(i).encode() * 500)
                                             for i in range(10)))
            assert [body for _, body in results] == [str(i).encode() * 500 for i in range(10)]
            big = bytes(range(256)) * 8192  # 2 MiB: flow control both ways, the app reading in pieces
            _, body = await client.request(b"POST", b"/big", big)
            assert body == big
            # Our encoder inserted into its dynamic table (and aioquic acknowledged) only when allowed.
            assert (client.http._encoder_bytes_received > 0) == (table > 0)
            assert (client.http._decoder_bytes_sent > 0) == (table > 0)

    asyncio.run(main())


def test_asgi_client_address_follows_the_client_to_a_new_socket(server_credential) -> None:
    """The ASGI scope's ``client`` is read once per connection, and again after the peer's
    address changed: aioquic's client goes on from a new UDP socket (NAT rebinding), and
    a request from there names the new port (requests until msquic reported the change;
    never with a port other than the old and the new)."""
    async def where(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-client", f"{scope['client'][0]}:{scope['client'][1]}".encode()),
                                (b"x-server", str(scope["server"][1]).encode())]})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        async with await pymsquic.h3.serve(where, "127.0.0.1", 0, credential=server_credential) as server:
            port = server.addresses[0][1]
            async with connect("127.0.0.1", port, configuration=aioquic_h3_config(),
                               create_protocol=AioquicH3Client) as client:
                assert isinstance(client, AioquicH3Client)
                old_transport = client._transport
                old_port = old_transport.get_extra_info("sockname")[1]
                for _ in range(2):  # the second from the addresses read for the first
                    headers, _ = await client.request(b"GET", b"/")
                    assert headers[b"x-client"] == f"127.0.0.1:{old_port}".encode()
                    assert headers[b"x-server"] == str(port).encode()
                # The rebinding: the same connection now sends from a new socket (dual-stack,
                # as aioquic's own: it sends to v4-mapped addresses).
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", 0))
                new_transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: client, sock=sock)
                new_port = new_transport.get_extra_info("sockname")[1]
                old_transport.close()
                seen = []
                for _ in range(50):
                    headers, _ = await client.request(b"GET", b"/")
                    seen.append(headers[b"x-client"])
                    if seen[-1] != f"127.0.0.1:{old_port}".encode():
                        break
                assert seen[-1] == f"127.0.0.1:{new_port}".encode(), seen

    asyncio.run(main())


def test_asgi_server_answers_malformed_input_with_rfc_codes(server_credential) -> None:
    async def main() -> None:
        async with asgi_server_and_aioquic_client(server_credential) as client:
            # no :path: a malformed request, a stream error; the connection carries on
            bad = client.send_request([(b":method", b"GET"), (b":scheme", b"https"),
                                       (b":authority", b"localhost")])
            await asyncio.wait_for(client.done.setdefault(bad, asyncio.Event()).wait(), 10)
            assert client.resets[bad] == ErrorCode.H3_MESSAGE_ERROR
            _, body = await client.request(b"GET", b"/after")
            assert body == BODY_4000
            # DATA before HEADERS: a connection error, H3_FRAME_UNEXPECTED
            stream_id = client._quic.get_next_available_stream_id()
            client._quic.send_stream_data(stream_id, b"\x00\x03abc", end_stream=True)
            client.transmit()
            await asyncio.wait_for(client.terminated.wait(), 10)
            assert client.close_code == ErrorCode.H3_FRAME_UNEXPECTED

    asyncio.run(main())


# ---- the pymsquic h3 client against a raw aioquic QUIC server writing HTTP/3 bytes itself --------

class RawH3Server(QuicConnectionProtocol):
    """Opens its control stream with ``control`` (FIN if ``end_control``) and answers
    every request stream, once it ends, with the bytes ``answer``; records how
    the connection ended. Class attributes: set by each test."""

    control = b""
    end_control = False
    answer = b""
    end_answer = True
    terminated: asyncio.Event | None = None
    close_code: int | None = None
    stopped: asyncio.Event | None = None  # set at the first STOP_SENDING
    stop_codes: dict[int, int] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self._quic.send_stream_data(self._quic.get_next_available_stream_id(is_unidirectional=True),
                                        RawH3Server.control, end_stream=RawH3Server.end_control)
        elif isinstance(event, StreamDataReceived) and event.stream_id % 4 == 0 and event.end_stream:
            self._quic.send_stream_data(event.stream_id, RawH3Server.answer, end_stream=RawH3Server.end_answer)
        elif isinstance(event, StopSendingReceived):
            RawH3Server.stop_codes[event.stream_id] = event.error_code
            if RawH3Server.stopped is not None:
                RawH3Server.stopped.set()
        elif isinstance(event, ConnectionTerminated):
            RawH3Server.close_code = event.error_code
            if RawH3Server.terminated is not None:
                RawH3Server.terminated.set()
        self.transmit()


@contextlib.asynccontextmanager
async def raw_h3_server(cert_files: Any, control: bytes, answer: bytes, end_control: bool = False,
                        end_answer: bool = True) -> AsyncIterator[str]:
    """A RawH3Server listening; yields its URL."""
    certfile, keyfile = cert_files
    RawH3Server.control, RawH3Server.answer, RawH3Server.end_control = control, answer, end_control
    RawH3Server.end_answer, RawH3Server.stopped, RawH3Server.stop_codes = end_answer, asyncio.Event(), {}
    RawH3Server.terminated, RawH3Server.close_code = asyncio.Event(), None
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(str(certfile), str(keyfile))
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=RawH3Server)
    try:
        yield f"https://127.0.0.1:{server._transport.get_extra_info('sockname')[1]}"
    finally:
        server.close()


def test_client_takes_interim_responses_before_the_final_one(cert_files) -> None:
    answer = (headers_frame([(b":status", b"103"), (b"link", b"</style.css>; rel=preload")])
              + headers_frame([(b":status", b"100")]) + headers_frame([(b":status", b"200")])
              + encode_frame(FrameType.DATA, b"final body"))

    async def main() -> None:
        async with raw_h3_server(cert_files, control_stream(), answer) as url, \
                pymsquic.h3.Client(verify=False, timeout=10) as client:
            response = await client.get(f"{url}/")
            assert response.status_code == 200 and response.content == b"final body"

    asyncio.run(main())


def test_client_refuses_a_101_response(cert_files) -> None:
    async def main() -> None:
        async with raw_h3_server(cert_files, control_stream(), headers_frame([(b":status", b"101")])) as url, \
                pymsquic.h3.Client(verify=False, timeout=10) as client:
            with pytest.raises(pymsquic.h3.H3StreamError) as info:
                await client.get(f"{url}/")
            assert info.value.error_code == ErrorCode.H3_MESSAGE_ERROR

    asyncio.run(main())


def test_client_closes_when_the_server_ends_its_control_stream(cert_files) -> None:
    async def main() -> None:
        async with raw_h3_server(cert_files, control_stream(), b"", end_control=True) as url, \
                pymsquic.h3.Client(verify=False, timeout=10) as client:
            with contextlib.suppress(pymsquic.ConnectionClosed, pymsquic.h3.H3Error, pymsquic.StreamError):
                await client.get(f"{url}/")  # whichever comes first: the answer or the close
            assert RawH3Server.terminated is not None
            await asyncio.wait_for(RawH3Server.terminated.wait(), 10)
            assert RawH3Server.close_code == ErrorCode.H3_CLOSED_CRITICAL_STREAM

    asyncio.run(main())


def test_client_close_cancels_responses_not_read(cert_files) -> None:
    answer = headers_frame([(b":status", b"200")]) + encode_frame(FrameType.DATA, b"first part")  # no end

    async def main() -> None:
        async with raw_h3_server(cert_files, control_stream(), answer, end_answer=False) as url:
            client = pymsquic.h3.Client(verify=False, timeout=10)
            response = await client.get(f"{url}/", stream=True)
            assert response.status_code == 200
            await client.aclose()  # the body was not read: the request is cancelled, not waited for
            assert RawH3Server.stopped is not None
            await asyncio.wait_for(RawH3Server.stopped.wait(), 10)
            assert RawH3Server.stop_codes == {0: ErrorCode.H3_REQUEST_CANCELLED}

    asyncio.run(main())


def test_client_closes_with_id_error_on_a_push_promise(cert_files) -> None:
    """No MAX_PUSH_ID was sent: any push id exceeds it (RFC 9114 7.2.5): H3_ID_ERROR."""
    promise = encode_frame(FrameType.PUSH_PROMISE, encode_varint(0) + b"\x00\x00")  # push 0, no fields
    answer = promise + headers_frame([(b":status", b"200")])

    async def main() -> None:
        async with raw_h3_server(cert_files, control_stream(), answer) as url, \
                pymsquic.h3.Client(verify=False, timeout=10) as client:
            with contextlib.suppress(pymsquic.ConnectionClosed, pymsquic.h3.H3Error, pymsquic.StreamError):
                await client.get(f"{url}/")
            assert RawH3Server.terminated is not None
            await asyncio.wait_for(RawH3Server.terminated.wait(), 10)
            assert RawH3Server.close_code == ErrorCode.H3_ID_ERROR

    asyncio.run(main())


def test_client_refuses_more_body_than_content_length_as_it_comes(cert_files) -> None:
    answer = headers_frame([(b":status", b"200"), (b"content-length", b"2")]) + encode_frame(FrameType.DATA, b"abcdef")

    async def main() -> None:
        async with raw_h3_server(cert_files, control_stream(), answer, end_answer=False) as url, \
                pymsquic.h3.Client(verify=False, timeout=10) as client:
            with pytest.raises(pymsquic.h3.H3StreamError) as info:
                await client.get(f"{url}/")  # the answer never ends: only the check can end the wait
            assert info.value.error_code == ErrorCode.H3_MESSAGE_ERROR

    asyncio.run(main())
