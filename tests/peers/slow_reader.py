"""Test peer: a server that stops reading its first stream after 1 MiB.

Prints "port N", then "paused RSS_KB" once it stopped reading, waits for a
"resume" line on stdin, reads the rest while hashing, answers with the SHA-256
hex digest and FIN, and prints "done RSS_KB".
"""

import asyncio
import hashlib
import sys

import pymsquic


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def handler(conn: pymsquic.asyncio.Connection) -> None:
    stream = await conn.accept_stream()
    digest = hashlib.sha256(await stream.readexactly(2**20))
    print("paused", rss_kb(), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    async for chunk in stream:
        digest.update(chunk)
    stream.write(digest.hexdigest().encode(), fin=True)
    await asyncio.wait_for(stream.wait_closed(), 30)
    print("done", rss_kb(), flush=True)


async def main() -> None:
    async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn="backpressure",
                                    credential=pymsquic.Credential.self_signed()) as server:
        print("port", server.addresses[0][1], flush=True)
        await asyncio.sleep(120)


asyncio.run(main())
