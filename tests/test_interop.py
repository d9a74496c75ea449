"""Interop with aioquic (PyPI), an implementation nobody here wrote, in both roles."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    DatagramFrameReceived,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)

import pymsquic

ALPN = "interop"


# ---- aioquic client against a pymsquic.serve echo server -------------------------

async def echo_handler(conn: pymsquic.asyncio.Connection) -> None:
    """Echo bidi streams; answer a uni stream on a new uni stream; reverse datagrams;
    reset on request; report resets it sees on a uni stream."""

    async def datagrams() -> None:
        while True:
            conn.send_datagram((await conn.receive_datagram())[::-1])

    async def serve_stream(stream: pymsquic.asyncio.Stream) -> None:
        try:
            data = await stream.read()
        except pymsquic.StreamReset as exc:
            report = conn.open_stream(unidirectional=True)
            report.write(f"saw reset {exc.error_code}".encode(), fin=True)
            return
        if data == b"please reset":
            stream.reset(11)
        elif stream.is_unidirectional:
            answer = conn.open_stream(unidirectional=True)
            answer.write(b"uni:" + data, fin=True)
        else:
            stream.write(data, fin=True)
        await asyncio.wait_for(stream.wait_closed(), 10)

    dgram_task = asyncio.create_task(datagrams())
    tasks = set()
    try:
        async for stream in conn:
            task = asyncio.create_task(serve_stream(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        dgram_task.cancel()


class EventLog(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data: dict[int, bytearray] = {}
        self.ended: dict[int, asyncio.Event] = {}
        self.resets: dict[int, int] = {}
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    def ended_event(self, stream_id: int) -> asyncio.Event:
        return self.ended.setdefault(stream_id, asyncio.Event())

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self.ended_event(event.stream_id).set()
        elif isinstance(event, StreamReset):
            self.resets[event.stream_id] = event.error_code
            self.ended_event(event.stream_id).set()
        elif isinstance(event, DatagramFrameReceived):
            self.datagrams.put_nowait(event.data)

    def send(self, data: bytes, *, uni: bool = False, end: bool = True) -> int:
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=uni)
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()
        return stream_id

    async def next_server_uni(self, seen: set[int]) -> int:
        """The next finished server-initiated unidirectional stream not in ``seen``."""
        while True:
            for i in list(self.data):
                if i % 4 == 3 and i not in seen and self.ended_event(i).is_set():
                    seen.add(i)
                    return i
            await asyncio.sleep(0.01)


def client_config() -> QuicConfiguration:
    return QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                             max_datagram_frame_size=65536, server_name="localhost")


def test_aioquic_client_against_pymsquic_serve(server_credential) -> None:
    async def main() -> None:
        async with pymsquic.serve(echo_handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            port = server.addresses[0][1]
            async with connect("127.0.0.1", port, configuration=client_config(),
                               create_protocol=EventLog) as client:
                assert isinstance(client, EventLog)
                # bidirectional streams with FIN, several at once
                payloads = {client.send(bytes([i]) * (1000 * i + 1)): bytes([i]) * (1000 * i + 1) for i in range(8)}
                for sid, payload in payloads.items():
                    await asyncio.wait_for(client.ended_event(sid).wait(), 10)
                    assert bytes(client.data[sid]) == payload
                # unidirectional: answered on a server-opened unidirectional stream
                seen: set[int] = set()
                client.send(b"one way", uni=True)
                uni = await asyncio.wait_for(client.next_server_uni(seen), 10)
                assert bytes(client.data[uni]) == b"uni:one way"
                # datagrams
                client._quic.send_datagram_frame(b"datagram!")
                client.transmit()
                assert await asyncio.wait_for(client.datagrams.get(), 10) == b"!margatad"
                # the server resets a stream
                sid = client.send(b"please reset")
                await asyncio.wait_for(client.ended_event(sid).wait(), 10)
                assert client.resets[sid] == 11
                # the client resets a stream: the server's read raises StreamReset(7)
                sid = client.send(b"partial", end=False)
                await asyncio.sleep(0.1)
                client._quic.reset_stream(sid, 7)
                client.transmit()
                report = await asyncio.wait_for(client.next_server_uni(seen), 10)
                assert bytes(client.data[report]) == b"saw reset 7"

    asyncio.run(main())


# ---- pymsquic client against an aioquic server ------------------------------------

class AioquicEcho(QuicConnectionProtocol):
    """Echo each stream's data back with FIN (uni streams on a new uni stream); reverse datagrams."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffers: dict[int, bytearray] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            buf = self.buffers.setdefault(event.stream_id, bytearray())
            buf.extend(event.data)
            if event.end_stream:
                target = event.stream_id
                if event.stream_id % 4 == 2:  # client-initiated unidirectional
                    target = self._quic.get_next_available_stream_id(is_unidirectional=True)
                self._quic.send_stream_data(target, bytes(buf), end_stream=True)
        elif isinstance(event, DatagramFrameReceived):
            self._quic.send_datagram_frame(event.data[::-1])
        self.transmit()


PAYLOADS = [bytes([65 + i]) * (20_000 * (i + 1)) for i in range(5)]


def start_exchanges(conn: pymsquic.asyncio.Connection | pymsquic.sync.Connection) -> list[Any]:
    """Check the handshake; send PAYLOADS on bidi streams (returned) and one
    message on a uni stream (none of which waits, in either world)."""
    assert conn.alpn == ALPN
    assert conn.peer_certificate is not None
    streams = [conn.open_stream() for _ in range(5)]
    for stream, payload in zip(streams, PAYLOADS):
        stream.write(payload, fin=True)
    uni = conn.open_stream(unidirectional=True)
    uni.write(b"to aioquic", fin=True)
    return streams


async def asyncio_client(port: int, certfile: Path) -> None:
    credential = pymsquic.Credential.client(ca_file=certfile)  # verified, not skipped
    async with pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN, credential=credential,
                                        server_name="localhost", open_timeout=10) as conn:
        streams = start_exchanges(conn)
        for stream, payload in zip(streams, PAYLOADS):
            assert await asyncio.wait_for(stream.read(), 10) == payload
        answer = await asyncio.wait_for(conn.accept_stream(), 10)
        assert answer.is_unidirectional and not answer.is_local
        assert await asyncio.wait_for(answer.read(), 10) == b"to aioquic"

        for _ in range(50):  # datagrams are unreliable: retry until one comes back
            conn.send_datagram(b"ping")
            try:
                assert await asyncio.wait_for(conn.receive_datagram(), 0.2) == b"gnip"
                break
            except (TimeoutError, asyncio.TimeoutError):
                continue
        else:
            pytest.fail("no datagram came back")


def sync_client(port: int, certfile: Path) -> None:
    """What :func:`asyncio_client` does, with pymsquic.sync (run in a thread)."""
    credential = pymsquic.Credential.client(ca_file=certfile)
    with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=credential,
                               server_name="localhost", open_timeout=10) as conn:
        streams = start_exchanges(conn)
        for stream, payload in zip(streams, PAYLOADS):
            assert stream.read(timeout=10) == payload
        answer = conn.accept_stream(timeout=10)
        assert answer.is_unidirectional and not answer.is_local
        assert answer.read(timeout=10) == b"to aioquic"

        for _ in range(50):
            conn.send_datagram(b"ping")
            try:
                assert conn.receive_datagram(timeout=0.2) == b"gnip"
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("no datagram came back")


@pytest.mark.parametrize("world", ["asyncio", "sync"])
def test_pymsquic_client_against_aioquic_server(cert_files, world: str) -> None:
    certfile, keyfile = cert_files

    async def main() -> None:
        config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], max_datagram_frame_size=65536)
        config.load_cert_chain(str(certfile), str(keyfile))
        server = await serve("127.0.0.1", 0, configuration=config, create_protocol=AioquicEcho)
        port = server._transport.get_extra_info("sockname")[1]
        try:
            if world == "asyncio":
                await asyncio_client(port, certfile)
            else:  # the blocking client in a thread, the aioquic server on this loop
                await asyncio.get_running_loop().run_in_executor(None, sync_client, port, certfile)
        finally:
            server.close()

    asyncio.run(main())
