"""Blocking QUIC echo client, no asyncio: the same as echo_client.py with
pymsquic.sync, where every wait takes a timeout.

    python examples/sync_client.py --port 4433 --ca /tmp/echo-ca.pem
"""

from __future__ import annotations

import sys

from _cli import client_arguments

from pymsquic.sync import Connection, connect


def round_trips(conn: Connection, messages: list[bytes]) -> bool:
    streams = [conn.open_stream() for _ in messages]
    for stream, message in zip(streams, messages):
        stream.write(message, fin=True)  # every request is on its way before the first answer is read
    ok = True
    for stream, message in zip(streams, messages):
        answer = stream.read(timeout=10)  # until the server's FIN, 10 s for the whole read
        print(f"stream {stream.id}: {answer.decode()}")
        ok = ok and answer == message
    return ok


def datagram_round_trip(conn: Connection, message: bytes) -> bool:
    for _ in range(20):  # datagrams may be lost: try a few times
        conn.send_datagram(message)
        try:
            answer = conn.receive_datagram(timeout=0.25)
        except TimeoutError:
            continue
        print(f"datagram: {answer.decode()}")
        return answer == message
    return False


def main() -> int:
    args, credential = client_arguments(__doc__)
    with connect(args.host, args.port, alpn=args.alpn, credential=credential, server_name="localhost") as conn:
        print(f"connected to {conn.remote_address} (alpn {conn.alpn})")
        streams_ok = round_trips(conn, [f"hello from stream {i}".encode() for i in range(args.streams)])
        datagram_ok = datagram_round_trip(conn, b"hello datagram")
    ok = streams_ok and datagram_ok
    print("all echoes match" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
