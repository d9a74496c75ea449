"""Test peer: connects to 127.0.0.1:PORT (argv[1]) and writes to a stream until killed."""

import asyncio
import sys

import pymsquic


async def main() -> None:
    async with pymsquic.connect("127.0.0.1", int(sys.argv[1]), alpn="resilience",
                                credential=pymsquic.Credential.client(verify=False)) as conn:
        stream = conn.open_stream()
        block = b"x" * 65536
        print("connected", flush=True)
        while True:
            stream.write(block)
            await stream.drain()


asyncio.run(main())
