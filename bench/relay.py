"""A UDP relay that delays every datagram, to give loopback a round-trip time.

    python -m bench.relay --to-port P --rtt-ms R

Prints ``ready PORT`` and forwards datagrams between clients and 127.0.0.1:P,
holding each for R/2 ms in either direction, until its stdin closes. Each client
address gets its own upstream socket, closed after a few idle seconds. The
harness puts it in front of a server for the hs-* workloads when given
``--rtt``: on plain loopback a round trip costs ~0.05 ms, so saving one (what
0-RTT is for) does not show; a Python relay does not keep up with the bulk
workloads, which therefore never go through it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.protocol import wait_for_stdin_close

IDLE_S = 3.0


class Upstream(asyncio.DatagramProtocol):
    """One client's socket towards the server: what comes back goes to that client, late."""

    def __init__(self, relay: Relay, client: Any) -> None:
        self.relay, self.client = relay, client
        self.transport: asyncio.DatagramTransport | None = None
        self.used = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.used = time.monotonic()
        self.relay.later(self.relay.downstream.sendto, data, self.client)


class Relay(asyncio.DatagramProtocol):
    """The clients' side: datagrams from each client go to the server through its Upstream."""

    def __init__(self, to_port: int, delay_s: float) -> None:
        self.to_port, self.delay_s = to_port, delay_s
        self.loop = asyncio.get_running_loop()
        self.downstream: asyncio.DatagramTransport = None  # type: ignore[assignment]
        self.upstreams: dict[Any, Upstream] = {}
        self.pending: dict[Any, list[bytes]] = {}  # datagrams of a client whose upstream is opening

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.downstream = transport  # type: ignore[assignment]

    def later(self, send: Any, data: bytes, *addr: Any) -> None:
        self.loop.call_later(self.delay_s, send, data, *addr)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        upstream = self.upstreams.get(addr)
        if upstream is not None and upstream.transport is not None:
            upstream.used = time.monotonic()
            self.later(upstream.transport.sendto, data)
        elif addr in self.pending:
            self.pending[addr].append(data)
        else:
            self.pending[addr] = [data]
            self.loop.create_task(self.open(addr))

    async def open(self, client: Any) -> None:
        _, upstream = await self.loop.create_datagram_endpoint(
            lambda: Upstream(self, client), remote_addr=("127.0.0.1", self.to_port))
        self.upstreams[client] = upstream
        for data in self.pending.pop(client):
            self.later(upstream.transport.sendto, data)  # type: ignore[union-attr]

    async def sweep(self) -> None:
        """Closes the sockets of clients gone quiet (one per connection of the hs-* loops)."""
        while True:
            await asyncio.sleep(IDLE_S)
            now = time.monotonic()
            for client, upstream in list(self.upstreams.items()):
                if now - upstream.used > IDLE_S and upstream.transport is not None:
                    upstream.transport.close()
                    del self.upstreams[client]


async def main(to_port: int, rtt_ms: float) -> None:
    loop = asyncio.get_running_loop()
    transport, relay = await loop.create_datagram_endpoint(lambda: Relay(to_port, rtt_ms / 2000),
                                                           local_addr=("127.0.0.1", 0))
    sweeper = asyncio.create_task(relay.sweep())
    print("ready", transport.get_extra_info("sockname")[1], flush=True)
    await loop.run_in_executor(None, wait_for_stdin_close)
    sweeper.cancel()
    transport.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--to-port", type=int, required=True)
    parser.add_argument("--rtt-ms", type=float, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.to_port, args.rtt_ms))
