"""aioquic peers shared by the key log and version tests: an echo server
protocol, a one-request client protocol, and PEM files of a pymsquic credential."""

from __future__ import annotations

import asyncio
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived


class Echo(QuicConnectionProtocol):
    """aioquic server side: echo each stream back with FIN."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffers: dict[int, bytearray] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.buffers.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self._quic.send_stream_data(event.stream_id, bytes(self.buffers[event.stream_id]), end_stream=True)
                self.transmit()


class Client(QuicConnectionProtocol):
    """aioquic client side: one request, its answer once the FIN came."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.terminated: ConnectionTerminated | None = None
        self.answer = bytearray()
        self.done = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.answer.extend(event.data)
            if event.end_stream:
                self.done.set()
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event

    async def request(self, data: bytes) -> bytes:
        stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(stream_id, data, end_stream=True)
        self.transmit()
        await asyncio.wait_for(self.done.wait(), 10)
        return bytes(self.answer)


def server_port(server: Any) -> int:
    """The UDP port an aioquic server (QuicServer) listens on."""
    return int(server._transport.get_extra_info("sockname")[1])
