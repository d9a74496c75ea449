"""asyncio QUIC echo server: echoes every bidirectional stream and every datagram.

    python examples/echo_server.py --port 4433 --ca-out /tmp/echo-ca.pem
    python examples/echo_client.py --port 4433 --ca /tmp/echo-ca.pem

Without --cert/--key it generates a self-signed certificate for localhost and
127.0.0.1; --ca-out writes that certificate so clients can verify the server.
Stops cleanly on Ctrl-C or SIGTERM.
"""

import argparse
import asyncio
import signal

import pymsquic


async def echo(conn: pymsquic.Connection) -> None:
    async def datagrams() -> None:
        while True:
            conn.send_datagram(await conn.receive_datagram_async())

    async def echo_stream(stream: pymsquic.Stream) -> None:
        async for chunk in stream:
            stream.write(chunk)
            await stream.drain()
        stream.finish()

    datagram_task = asyncio.create_task(datagrams())
    try:
        streams = [asyncio.create_task(echo_stream(stream)) async for stream in conn]
        await asyncio.gather(*streams, return_exceptions=True)
    finally:
        datagram_task.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--alpn", default="echo")
    parser.add_argument("--cert", help="PEM certificate (with --key)")
    parser.add_argument("--key", help="PEM private key")
    parser.add_argument("--ca-out", help="write the generated certificate here")
    args = parser.parse_args()

    if args.cert:
        credential = pymsquic.Credential.from_files(args.cert, args.key)
    else:
        credential = pymsquic.Credential.self_signed(("localhost", args.host))
        if args.ca_out:
            with open(args.ca_out, "wb") as out:
                out.write(credential.certificate_pem or b"")

    async with await pymsquic.serve(echo, args.host, args.port, alpn=args.alpn, credential=credential) as server:
        host, port = server.addresses[0]
        print(f"listening on {host}:{port}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
