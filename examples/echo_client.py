"""asyncio QUIC echo client: sends messages on several streams and a datagram,
checks the echoes, and prints what came back.

    python examples/echo_client.py --port 4433 --ca /tmp/echo-ca.pem
"""

import argparse
import asyncio
import sys

import pymsquic


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--alpn", default="echo")
    parser.add_argument("--ca", help="trust this CA certificate (PEM) for the server")
    parser.add_argument("--insecure", action="store_true", help="skip certificate validation")
    parser.add_argument("--streams", type=int, default=3)
    args = parser.parse_args()

    credential = pymsquic.Credential.client(verify=not args.insecure, ca_file=args.ca)
    async with pymsquic.connect(args.host, args.port, alpn=args.alpn, credential=credential,
                                server_name="localhost", timeout=10) as conn:
        print(f"connected to {conn.remote_address[0]}:{conn.remote_address[1]} (alpn {conn.alpn})")

        async def round_trip(i: int) -> bool:
            message = f"hello from stream {i}".encode()
            stream = conn.open_stream()
            stream.write(message, fin=True)
            answer = await stream.read()
            print(f"stream {stream.id}: {answer.decode()}")
            return answer == message

        results = await asyncio.gather(*(round_trip(i) for i in range(args.streams)))
        datagram_ok = False
        for _ in range(20):  # datagrams may be lost: try a few times
            conn.send_datagram(b"hello datagram")
            try:
                answer = await conn.receive_datagram_async(timeout=0.25)
            except TimeoutError:
                continue
            print(f"datagram: {answer.decode()}")
            datagram_ok = answer == b"hello datagram"
            break
    ok = all(results) and datagram_ok
    print("all echoes match" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
