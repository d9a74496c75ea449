"""Fetch a URL over HTTP/3 with pymsquic.h3's client and print the response:

    python fetch.py https://127.0.0.1:4433/ --ca cert.pem
    python fetch.py https://127.0.0.1:4433/echo --insecure --data "echo me"

The server's certificate is verified (system CA store, or --ca); --insecure
skips that, for a server with a throwaway self-signed certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pymsquic.h3 import Client


async def fetch(args: argparse.Namespace) -> None:
    async with Client(verify=not args.insecure, ca_file=args.ca, server_name=args.server_name,
                      timeout=args.timeout) as client:
        data = args.data.encode() if args.data is not None else None
        response = await client.request("POST" if data is not None else "GET", args.url, content=data,
                                        stream=True)
        print(response.status_code, dict(response.headers))
        async for chunk in response.aiter_bytes():  # the body as it arrives
            sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--ca", help="PEM certificate(s) to trust")
    parser.add_argument("--server-name", help="name to ask for and check (default: the URL's host)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    parser.add_argument("--data", help="POST this text")
    parser.add_argument("--timeout", type=float, default=10.0)
    asyncio.run(fetch(parser.parse_args()))


if __name__ == "__main__":
    main()
