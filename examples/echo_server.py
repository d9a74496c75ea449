"""asyncio QUIC echo server: echoes every bidirectional stream and every datagram.

    python examples/echo_server.py --port 4433 --ca-out /tmp/echo-ca.pem
    python examples/echo_client.py --port 4433 --ca /tmp/echo-ca.pem

Without --cert/--key it generates a self-signed certificate for localhost and
the host; --ca-out writes that certificate so clients can verify the server.
Stops cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib

from _cli import server_arguments, signalled

from pymsquic import ConnectionClosed
from pymsquic.asyncio import Connection, Stream, serve


async def echo_stream(stream: Stream) -> None:
    async with stream:  # leaving it sends FIN after what was written
        async for chunk in stream:  # until the peer's FIN
            stream.write(chunk)
            await stream.drain()  # wait while the peer is slow to read


async def echo_datagrams(conn: Connection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            conn.send_datagram(await conn.receive_datagram())


async def echo(conn: Connection) -> None:
    """The connection handler: a task per stream, until the client closes."""
    datagrams = asyncio.create_task(echo_datagrams(conn))
    streams = [asyncio.create_task(echo_stream(stream)) async for stream in conn]
    await asyncio.gather(datagrams, *streams, return_exceptions=True)


async def main() -> None:
    args, credential = server_arguments(__doc__)
    async with serve(echo, args.host, args.port, alpn=args.alpn, credential=credential) as server:
        host, port = server.addresses[0]
        print(f"listening on {host}:{port}", flush=True)
        await signalled()
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
