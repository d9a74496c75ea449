"""Blocking QUIC echo server: a thread per connection and per stream, no asyncio.

    python examples/threaded_server.py --port 4433 --ca-out /tmp/echo-ca.pem
    python examples/echo_client.py --port 4433 --ca /tmp/echo-ca.pem

Stops cleanly on Ctrl-C or SIGTERM.
"""

import argparse
import signal
import threading

import pymsquic


def echo_stream(stream: pymsquic.BlockingStream) -> None:
    for chunk in stream:
        stream.write(chunk)
        stream.drain()
    stream.finish()
    stream.wait_closed(timeout=10)


def handle(conn: pymsquic.Connection) -> None:
    def datagrams() -> None:
        try:
            while True:
                conn.send_datagram(conn.receive_datagram())
        except pymsquic.ConnectionClosed:
            pass

    threading.Thread(target=datagrams, daemon=True).start()
    workers = []
    for stream in conn:  # ends when the connection closes
        worker = threading.Thread(target=echo_stream, args=(stream,), daemon=True)
        worker.start()
        workers.append(worker)
    for worker in workers:
        worker.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--alpn", default="echo")
    parser.add_argument("--ca-out", help="write the generated certificate here")
    args = parser.parse_args()

    credential = pymsquic.Credential.self_signed(("localhost", args.host))
    if args.ca_out:
        with open(args.ca_out, "wb") as out:
            out.write(credential.certificate_pem or b"")
    with pymsquic.sync.serve(handle, args.host, args.port, alpn=args.alpn, credential=credential) as server:
        host, port = server.addresses[0]
        print(f"listening on {host}:{port}", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown).start())
        server.serve_forever()
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
