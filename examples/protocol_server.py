"""asyncio QUIC echo server driven by callbacks: each stream the client opens
gets an EchoProtocol (pymsquic.asyncio.StreamProtocol), run on the event loop
with no task per stream, which suits many small streams.

    python examples/protocol_server.py --port 4433 --ca-out /tmp/echo-ca.pem
    python examples/echo_client.py --port 4433 --ca /tmp/echo-ca.pem

Stops cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from _cli import server_arguments, signalled

from pymsquic import ConnectionClosed
from pymsquic.asyncio import Connection, Stream, StreamProtocol, serve


class EchoProtocol(StreamProtocol):
    """Writes back what arrives and finishes when the client does."""

    stream: Stream

    def connection_made(self, stream: Stream) -> None:
        self.stream = stream

    def data_received(self, data: bytes) -> None:
        self.stream.write(data)  # queued at once: a callback cannot wait for drain()

    def eof_received(self) -> None:
        self.stream.finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            logging.getLogger(__name__).info("stream %s ended: %s", self.stream.id, exc)


async def echo(conn: Connection) -> None:
    """The connection handler: streams go to EchoProtocol; this echoes datagrams
    until the client closes."""
    conn.set_stream_protocol(EchoProtocol)
    with contextlib.suppress(ConnectionClosed):
        while True:
            conn.send_datagram(await conn.receive_datagram())


async def main() -> None:
    args, credential = server_arguments(__doc__)
    server = await serve(echo, args.host, args.port, alpn=args.alpn, credential=credential)
    print("listening on {}:{}".format(*server.addresses[0]), flush=True)
    await signalled()
    server.close(grace=5.0)  # stop accepting; connections still open get 5 s to end on their own
    await server.wait_closed()
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
