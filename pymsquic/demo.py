"""``python -m pymsquic demo``: a listener on loopback with a generated certificate,
a few clients that connect to it, their handshake times, and a clean stop."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from . import msquic_version
from .configuration import Configuration, Credential, Settings
from .connection import Connection
from .listener import Listener
from .registration import Registration

ALPN = "pymsquic-demo"


async def run_demo(clients: int = 8, host: str = "127.0.0.1") -> list[float]:
    """Serve on ``host`` (port chosen by the OS), connect ``clients`` verified
    clients one after another, print each handshake time; return them in ms."""
    print(f"pymsquic demo on msquic {msquic_version()}")
    credential = Credential.self_signed(("localhost", host))
    with tempfile.TemporaryDirectory() as tmp, Registration("pymsquic-demo") as registration:
        ca_file = Path(tmp) / "demo-ca.pem"
        ca_file.write_bytes(credential.certificate_pem or b"")
        settings = Settings(idle_timeout_ms=5000)
        server_config = Configuration(registration, ALPN, credential, settings)
        # The client verifies the server against the generated certificate.
        client_config = Configuration(registration, ALPN, Credential.client(ca_file=ca_file), settings)
        async with Listener(registration, server_config) as listener:
            listener.start(ALPN, (host, 0))
            port = listener.local_address[1]
            print(f"listening on {host}:{port} (ALPN {ALPN!r}, self-signed certificate)")

            async def serve() -> int:
                served = 0
                async for conn in listener:
                    served += 1
                    print(f"  server: accepted {conn.remote_address[0]}:{conn.remote_address[1]} "
                          f"sni={conn.server_name} alpn={conn.alpn}")
                    conn.close()
                return served

            server = asyncio.create_task(serve())
            timings = []
            for i in range(clients):
                start = time.perf_counter()
                conn = await Connection.connect_async(registration, client_config, host, port,
                                                      server_name="localhost", timeout=10)
                elapsed_ms = (time.perf_counter() - start) * 1000
                timings.append(elapsed_ms)
                print(f"  client {i + 1}: handshake in {elapsed_ms:.2f} ms (alpn={conn.alpn})")
                conn.shutdown()
                await conn.wait_closed_async(timeout=10)
                conn.close()
            await listener.stop_async(timeout=10)
            served = await asyncio.wait_for(server, 10)
    print(f"{served} connections served; handshake ms: min {min(timings):.2f}, "
          f"median {statistics.median(timings):.2f}, max {max(timings):.2f}")
    print("listener stopped, registration closed")
    return timings
