"""Blocking QUIC echo server, no asyncio: pymsquic.sync runs a thread per
connection, and this handler starts one per stream.

    python examples/threaded_server.py --port 4433 --ca-out /tmp/echo-ca.pem
    python examples/sync_client.py --port 4433 --ca /tmp/echo-ca.pem

Stops cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from _cli import server_arguments

from pymsquic import ConnectionClosed
from pymsquic.sync import Connection, Stream, serve


def echo_stream(stream: Stream) -> None:
    with stream:  # leaving it sends FIN after what was written
        for chunk in stream:  # until the peer's FIN
            stream.write(chunk)
            stream.drain(timeout=30)  # wait while the peer is slow to read


def echo_datagrams(conn: Connection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            conn.send_datagram(conn.receive_datagram())


def echo(conn: Connection) -> None:
    """The connection handler, in a thread of its own, until the client closes."""
    threading.Thread(target=echo_datagrams, args=(conn,), daemon=True).start()
    for stream in conn:
        threading.Thread(target=echo_stream, args=(stream,), daemon=True).start()


def main() -> None:
    args, credential = server_arguments(__doc__)
    with serve(echo, args.host, args.port, alpn=args.alpn, credential=credential) as server:
        host, port = server.addresses[0]
        print(f"listening on {host}:{port}", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            # shutdown() waits for the listener to stop: not inside serve_forever() on this thread.
            signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown).start())
        server.serve_forever()  # returns after shutdown(); leaving `with` closes the connections
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
