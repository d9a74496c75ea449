"""HTTP Datagrams (RFC 9297) on an extended CONNECT (RFC 9220) request, at the
H3Connection level: pymsquic.h3 on both sides, and aioquic's H3Connection
(enable_webtransport: H3_DATAGRAM and ENABLE_CONNECT_PROTOCOL) as the client."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, AsyncIterator

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h3.connection import H3_ALPN
from aioquic.h3.connection import H3Connection as AioquicH3
from aioquic.h3.events import DatagramReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent

import pymsquic
import pymsquic.h3
from pymsquic.h3 import ErrorCode, H3Connection
from pymsquic.h3.frames import Setting
from pymsquic.h3.message import check_request

DATAGRAM_SETTINGS = pymsquic.Settings(peer_bidi_stream_count=10, peer_unidi_stream_count=16,
                                      datagram_receive_enabled=True, idle_timeout_ms=10_000)


async def tunnel(request: pymsquic.h3.RequestStream) -> None:
    """200, then every datagram of the request back, reversed, until the client ends it."""
    pseudo = check_request(await request.receive_headers(), extended_connect=True)
    request.send_headers([(b":status", b"200" if pseudo[b":method"] == b"CONNECT" else b"400")])

    async def echo() -> None:
        while True:
            request.send_datagram((await request.receive_datagram())[::-1])

    echoing = asyncio.ensure_future(echo())
    try:
        while await request.receive_data():
            pass
        request.end()
    finally:
        echoing.cancel()


async def tunnel_handler(conn: pymsquic.asyncio.Connection) -> None:
    """An extended CONNECT server: a tunnel per request."""
    h3 = H3Connection(conn, is_client=False, enable_datagrams=True, enable_connect_protocol=True)
    h3.start()
    tasks = []
    try:
        while (request := await h3.accept_request()) is not None:
            tasks.append(asyncio.ensure_future(tunnel(request)))
    finally:
        for task in tasks:
            task.cancel()
        await h3.close()


CONNECT_UDP = [(b":method", b"CONNECT"), (b":protocol", b"connect-udp"), (b":scheme", b"https"),
               (b":authority", b"localhost"), (b":path", b"/.well-known/masque/udp/example.org/443/")]


async def ping_until_answered(send: Any, receive: Any) -> None:
    """Datagrams are unreliable: send until one comes back (each wait bounded)."""
    for _ in range(50):
        send(b"ping")
        try:
            assert await asyncio.wait_for(receive(), 0.2) == b"gnip"
            return
        except (TimeoutError, asyncio.TimeoutError):
            continue
    pytest.fail("no datagram came back")


@contextlib.asynccontextmanager
async def datagram_client(handler: Any, credential: pymsquic.Credential) -> AsyncIterator[H3Connection]:
    """``handler`` served, and a started client H3Connection with datagrams and extended CONNECT."""
    async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn="h3", credential=credential,
                                      settings=DATAGRAM_SETTINGS) as server:
        async with pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn="h3",
                                            credential=pymsquic.Credential.client(verify=False),
                                            settings=DATAGRAM_SETTINGS) as quic:
            h3 = H3Connection(quic, is_client=True, enable_datagrams=True, enable_connect_protocol=True)
            h3.start()
            yield h3


def test_datagrams_on_extended_connect(server_credential: pymsquic.Credential) -> None:
    async def main() -> None:
        async with datagram_client(tunnel_handler, server_credential) as h3:
            quic = h3.quic
            settings = await asyncio.wait_for(h3.peer_settings, 10)
            assert settings[Setting.ENABLE_CONNECT_PROTOCOL] == 1 and h3.datagrams_allowed()
            for _ in range(3):  # streams 0, 4, 8: each datagram names its request (quarter stream id)
                request = h3.open_request()
                request.send_headers(CONNECT_UDP)
                assert (b":status", b"200") in await asyncio.wait_for(request.receive_headers(), 10)
                await ping_until_answered(request.send_datagram, request.receive_datagram)
                request.end()
            quic.send_datagram(b"\x40")  # a truncated quarter stream id
            await asyncio.wait_for(quic.wait_closed(), 10)
            assert quic.close_reason is not None and quic.close_reason.error_code == ErrorCode.H3_DATAGRAM_ERROR

    asyncio.run(main())


def test_extended_connect_refused_where_not_offered(server_credential: pymsquic.Credential) -> None:
    with pytest.raises(pymsquic.h3.H3StreamError) as info:
        check_request(CONNECT_UDP)  # the ASGI server offers no extended CONNECT
    assert info.value.error_code == ErrorCode.H3_MESSAGE_ERROR
    with pytest.raises(pymsquic.h3.H3StreamError):
        check_request([(b":method", b"GET"), *CONNECT_UDP[1:]], extended_connect=True)  # :protocol on a GET


class AioquicTunnelClient(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http = AioquicH3(self._quic, enable_webtransport=True)
        self.headers: asyncio.Queue[list[tuple[bytes, bytes]]] = asyncio.Queue()
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.http.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.headers.put_nowait(h3_event.headers)
            elif isinstance(h3_event, DatagramReceived):
                self.datagrams.put_nowait(h3_event.data)


def test_aioquic_datagrams_on_extended_connect(server_credential: pymsquic.Credential) -> None:
    async def main() -> None:
        async with pymsquic.asyncio.serve(tunnel_handler, "127.0.0.1", 0, alpn="h3", credential=server_credential,
                                          settings=DATAGRAM_SETTINGS) as server:
            config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE,
                                       server_name="localhost", max_datagram_frame_size=65536)
            async with connect("127.0.0.1", server.addresses[0][1], configuration=config,
                               create_protocol=AioquicTunnelClient) as client:
                assert isinstance(client, AioquicTunnelClient)
                stream_id = client._quic.get_next_available_stream_id()
                client.http.send_headers(stream_id, [*CONNECT_UDP[:1], (b":protocol", b"webtransport"),
                                                     *CONNECT_UDP[2:]])
                client.transmit()
                assert (b":status", b"200") in await asyncio.wait_for(client.headers.get(), 10)

                def send(data: bytes) -> None:
                    client.http.send_datagram(stream_id, data)
                    client.transmit()

                await ping_until_answered(send, client.datagrams.get)
                client.http.send_data(stream_id, b"", end_stream=True)
                client.transmit()

    asyncio.run(main())


async def flooding_handler(conn: pymsquic.asyncio.Connection) -> None:
    """Answers a request with 200; at the client's "go", 200 HTTP Datagrams, then "done" and FIN."""
    h3 = H3Connection(conn, is_client=False, enable_datagrams=True, enable_connect_protocol=True)
    h3.start()
    request = await h3.accept_request()
    assert request is not None
    await request.receive_headers()
    request.send_headers([(b":status", b"200")])
    assert await request.receive_data() == b"go"  # the client has the headers: its datagrams reach it
    for i in range(200):  # under pymsquic's 256 in flight, over the 64 a request keeps
        request.send_datagram(b"%d" % i)
    request.send_data(b"done", end_stream=True)
    while await request.receive_data():
        pass
    await h3.close()


def test_datagrams_nobody_reads_are_bounded(server_credential: pymsquic.Credential) -> None:
    """A request's datagrams that are never read do not pile up without end (RFC 9297
    lets a receiver drop them): at most DATAGRAM_QUEUE are kept."""
    async def main() -> None:
        async with datagram_client(flooding_handler, server_credential) as h3:
            request = h3.open_request()
            request.send_headers(CONNECT_UDP)
            assert (b":status", b"200") in await asyncio.wait_for(request.receive_headers(), 10)
            request.send_data(b"go")
            assert await asyncio.wait_for(request.receive_data(), 10) == b"done"  # after the datagrams
            assert 0 < request._datagrams.qsize() <= pymsquic.h3.connection.DATAGRAM_QUEUE
            request.end()
            await h3.close()

    asyncio.run(main())
