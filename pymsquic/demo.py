"""``python -m pymsquic demo``: an echo server on loopback with a generated
certificate, clients that verify it, handshake times, an echo round trip over
several streams and a datagram with throughput, and a clean stop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from . import msquic_version
from .asyncio import Connection, Stream, connect, serve
from .configuration import Credential

ALPN = "pymsquic-demo"


async def echo(conn: Connection) -> None:
    async def datagrams() -> None:
        while True:
            conn.send_datagram(await conn.receive_datagram())

    async def echo_stream(stream: Stream) -> None:
        async for chunk in stream:
            stream.write(chunk)
            await stream.drain()
        stream.finish()

    datagram_task = asyncio.create_task(datagrams())
    try:
        await asyncio.gather(*[asyncio.create_task(echo_stream(s)) async for s in conn])
    finally:
        datagram_task.cancel()


async def round_trip(stream: Stream, payload: bytes) -> bool:
    """Send payload with FIN while reading the echo; True if it came back intact."""

    async def send() -> None:
        view = memoryview(payload)
        for i in range(0, len(view), 1 << 20):
            stream.write(view[i:i + (1 << 20)])
            await stream.drain()
        stream.finish()

    received = hashlib.sha256()
    sender = asyncio.create_task(send())
    async for chunk in stream:
        received.update(chunk)
    await sender
    return received.digest() == hashlib.sha256(payload).digest()


async def run_demo(clients: int = 4, streams: int = 4, megabytes: int = 16,
                   host: str = "127.0.0.1") -> dict[str, Any]:
    """Run the demo and return its figures (also printed)."""
    print(f"pymsquic demo on msquic {msquic_version()}")
    credential = Credential.self_signed(("localhost", host))
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = Path(tmp) / "demo-ca.pem"
        ca_file.write_bytes(credential.certificate_pem or b"")
        client_credential = Credential.client(ca_file=ca_file)  # verifies the server
        async with serve(echo, host, 0, alpn=ALPN, credential=credential) as server:
            port = server.addresses[0][1]
            print(f"echo server on {host}:{port} (ALPN {ALPN!r}, self-signed certificate)")

            handshakes = []
            for i in range(clients):
                start = time.perf_counter()
                async with connect(host, port, alpn=ALPN, credential=client_credential,
                                   server_name="localhost") as conn:
                    handshakes.append((time.perf_counter() - start) * 1000)
                print(f"  client {i + 1}: verified handshake in {handshakes[-1]:.2f} ms")

            async with connect(host, port, alpn=ALPN, credential=client_credential,
                               server_name="localhost") as conn:
                datagram_ok = False
                for _ in range(20):  # datagrams are unreliable: retry a few times
                    conn.send_datagram(b"hello, datagram")
                    try:
                        datagram_ok = await asyncio.wait_for(conn.receive_datagram(), 0.25) == b"hello, datagram"
                        break
                    except asyncio.TimeoutError:  # not TimeoutError before 3.11
                        pass
                print(f"  datagram echoed: {datagram_ok}")

                payloads = [os.urandom(megabytes << 20) for _ in range(streams)]
                start = time.perf_counter()
                intact = await asyncio.gather(*(round_trip(conn.open_stream(), p) for p in payloads))
                elapsed = time.perf_counter() - start
                moved = 2 * sum(map(len, payloads))
                gbits = moved * 8 / elapsed / 1e9
                print(f"  echoed {streams} streams x {megabytes} MiB (each way) in {elapsed:.2f} s: "
                      f"{gbits:.2f} Gbit/s through the echo, intact: {all(intact)}")
    print(f"handshake ms: min {min(handshakes):.2f}, median {statistics.median(handshakes):.2f}, "
          f"max {max(handshakes):.2f}")
    print("server closed cleanly")
    return {"handshakes_ms": handshakes, "datagram_ok": datagram_ok, "intact": all(intact), "gbit_s": gbits}
