"""asyncio QUIC echo client: sends a message on each of several streams at
once and a datagram, checks the echoes, and prints what came back.

    python examples/echo_client.py --port 4433 --ca /tmp/echo-ca.pem

Works with every server here: echo_server.py, threaded_server.py, protocol_server.py.
"""

from __future__ import annotations

import asyncio
import sys

from _cli import client_arguments

from pymsquic.asyncio import Connection, connect


async def round_trip(conn: Connection, message: bytes) -> bool:
    stream = conn.open_stream()
    stream.write(message, fin=True)
    answer = await stream.read()  # until the server's FIN
    print(f"stream {stream.id}: {answer.decode()}")
    return answer == message


async def datagram_round_trip(conn: Connection, message: bytes) -> bool:
    for _ in range(20):  # datagrams may be lost: try a few times
        conn.send_datagram(message)
        try:
            answer = await asyncio.wait_for(conn.receive_datagram(), 0.25)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
            continue
        print(f"datagram: {answer.decode()}")
        return answer == message
    return False


async def main() -> int:
    args, credential = client_arguments(__doc__)
    async with connect(args.host, args.port, alpn=args.alpn, credential=credential,
                       server_name="localhost") as conn:
        print(f"connected to {conn.remote_address} (alpn {conn.alpn})")
        messages = [f"hello from stream {i}".encode() for i in range(args.streams)]
        results = await asyncio.gather(*(round_trip(conn, message) for message in messages))
        datagram_ok = await datagram_round_trip(conn, b"hello datagram")
    ok = all(results) and datagram_ok
    print("all echoes match" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
