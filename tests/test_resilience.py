"""Bounded memory under back-pressure, and a server that outlives a killed client."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pymsquic

PEERS = Path(__file__).parent / "peers"
CLIENT = pymsquic.Credential.client(verify=False)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.slow  # 1 GiB offered: a load test, run once (under 3.11)
def test_reader_that_stops_bounds_memory_and_blocks_the_writer() -> None:
    total = 2**30  # 1 GiB
    server = subprocess.Popen([sys.executable, str(PEERS / "slow_reader.py")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        blocks = [os.urandom(2**20) for _ in range(16)]
        sent = hashlib.sha256()
        progress = {"written": 0}

        async def main() -> tuple[str, int, int, int]:
            async with pymsquic.connect("127.0.0.1", port, alpn="backpressure", credential=CLIENT) as conn:
                stream = conn.open_stream()

                async def writer() -> None:
                    for i in range(total // 2**20):
                        block = blocks[i % 16]
                        sent.update(block)
                        stream.write(block)
                        await stream.drain()
                        progress["written"] += len(block)
                    stream.finish()

                writing = asyncio.create_task(writer())
                line = await asyncio.get_running_loop().run_in_executor(None, server.stdout.readline)
                baseline = int(line.split()[1])
                # The server has stopped reading: the writer must stall, the server's memory stay flat.
                await asyncio.sleep(1.0)
                stalled_at = progress["written"]
                peak = baseline
                for _ in range(15):
                    await asyncio.sleep(0.1)
                    peak = max(peak, rss_kb(server.pid))
                still = progress["written"]
                server.stdin.write("resume\n")
                server.stdin.flush()
                digest = (await asyncio.wait_for(stream.read(), 120)).decode()
                await writing
                return digest, baseline, peak, still - stalled_at

        digest, baseline, peak, moved_while_paused = asyncio.run(main())
        assert progress["written"] == total
        assert digest == sent.hexdigest()  # resumed and completed intact
        assert moved_while_paused == 0  # drain() blocked while nobody read
        assert peak - baseline < 64 * 1024, f"server RSS grew {(peak - baseline) / 1024:.1f} MiB while paused"
        done = server.stdout.readline().split()
        assert done[0] == "done" and int(done[1]) - baseline < 64 * 1024
    finally:
        server.kill()
        server.wait()


def test_server_keeps_serving_after_a_client_is_killed() -> None:
    fast_idle = pymsquic.Settings(peer_bidi_stream_count=8, idle_timeout_ms=1000)
    ended: asyncio.Queue[BaseException | None] = asyncio.Queue()

    async def handler(conn: pymsquic.asyncio.Connection) -> None:
        stream = await conn.accept_stream()
        try:
            first = await stream.read(5)
            if first == b"hello":
                stream.write(b"hello back", fin=True)
                await asyncio.wait_for(stream.wait_closed(), 10)
                return
            async for _ in stream:
                pass
            await ended.put(None)
        except pymsquic.ConnectionClosed as exc:
            await ended.put(exc)

    async def main() -> None:
        async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn="resilience",
                                        credential=pymsquic.Credential.self_signed(), settings=fast_idle) as server:
            port = server.addresses[0][1]
            flood = await asyncio.create_subprocess_exec(sys.executable, str(PEERS / "flood_client.py"), str(port),
                                                         stdout=asyncio.subprocess.PIPE)
            assert (await flood.stdout.readline()).strip() == b"connected"
            await asyncio.sleep(0.5)  # mid-transfer
            flood.send_signal(signal.SIGKILL)
            await flood.wait()
            killed_at = time.monotonic()

            async with pymsquic.connect("127.0.0.1", port, alpn="resilience", credential=CLIENT,
                                        settings=fast_idle) as conn:
                stream = conn.open_stream()
                stream.write(b"hello", fin=True)
                assert await asyncio.wait_for(stream.read(), 10) == b"hello back"

            reason = await asyncio.wait_for(ended.get(), 10)
            assert isinstance(reason, pymsquic.ConnectionClosed)
            assert reason.by_transport and reason.status_name == "CONNECTION_IDLE"
            assert time.monotonic() - killed_at < 5

    asyncio.run(main())
