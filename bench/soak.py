"""Soak: connection churn and a replayed-Initial flood against a pymsquic server.

    python -m bench.soak [--connections 10000] [--parallel 8] [--flood 2000]

Starts an echo server (``pymsquic.serve`` with its defaults) in its own process,
then, from this one, on loopback only:

1. churns ``--connections`` connections (connect, one stream echoed, close),
   ``--parallel`` at a time, printing the server's RSS at 1k, 5k and 10k;
2. replays one real client Initial (aioquic's first datagram) from ``--flood``
   UDP sockets, each its own source port, and times a legitimate client's
   connect during the burst and again beside the half-open handshakes it left.

Every loop is bounded and the whole run stops by itself (``--max-seconds``).
``--retry-memory-limit 0`` makes the server answer every new client with a
stateless Retry (``pymsquic.set_retry_memory_limit``): replays then cost it no
handshake at all.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ALPN = "soak"
REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = (1000, 5000, 10_000)
PAYLOAD = bytes(range(256)) * 4


# ---- the server process -----------------------------------------------------------

async def serve(retry_memory_limit: float | None) -> None:
    import pymsquic

    if retry_memory_limit is not None:
        pymsquic.set_retry_memory_limit(retry_memory_limit)

    async def echo(conn: pymsquic.asyncio.Connection) -> None:
        async for stream in conn:
            stream.write(await stream.read(), fin=True)

    async with pymsquic.asyncio.serve(echo, "127.0.0.1", 0, alpn=ALPN,
                                      credential=pymsquic.Credential.self_signed()) as server:
        print("ready", server.addresses[0][1], os.getpid(), flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):  # "stats" until EOF
            stats = server.listener.stats()
            print(json.dumps({**dataclasses.asdict(stats), "rss_kb": rss_kb(os.getpid())}), flush=True)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


class ServerProcess:
    def __init__(self, retry_memory_limit: float | None) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        retry = [] if retry_memory_limit is None else ["--retry-memory-limit", str(retry_memory_limit)]
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.soak", "--serve", *retry], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        ready, port, pid = self.stdout.readline().split()
        assert ready == "ready", ready
        self.port, self.pid = int(port), int(pid)

    def stats(self) -> dict[str, Any]:
        self.stdin.write("stats\n")
        self.stdin.flush()
        return dict(json.loads(self.stdout.readline()))

    def stop(self) -> None:
        self.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- churn -----------------------------------------------------------------------------

async def churn(server: ServerProcess, total: int, parallel: int, deadline: float) -> int:
    import pymsquic

    registration = pymsquic.default_registration()
    config = pymsquic.Configuration(registration, ALPN, pymsquic.Credential.client(verify=False),
                                    pymsquic.DEFAULT_SETTINGS)
    done = 0
    failures = 0
    checkpoints = [c for c in CHECKPOINTS if c <= total] or [total]
    start = time.monotonic()
    print(f"server RSS before churn: {server.stats()['rss_kb'] / 1024:.1f} MiB", flush=True)

    async def one() -> None:
        conn = await pymsquic.asyncio.connect("127.0.0.1", server.port, configuration=config, open_timeout=10,
                                              close_timeout=1.0)
        try:
            stream = conn.open_stream()
            stream.write(PAYLOAD, fin=True)
            if await asyncio.wait_for(stream.read(), 10) != PAYLOAD:
                raise RuntimeError("echo mismatch")
        finally:
            await conn.close()

    async def loop() -> None:
        nonlocal done, failures
        while done + failures < total and time.monotonic() < deadline:
            try:
                await one()
                done += 1
            except Exception as exc:  # counted and shown, the soak goes on
                failures += 1
                if failures <= 5:
                    print(f"connection failed: {exc!r}", flush=True)
            if checkpoints and done >= checkpoints[0]:
                mark = checkpoints.pop(0)
                rate = done / (time.monotonic() - start)
                print(f"{mark:>6} connections: server RSS {server.stats()['rss_kb'] / 1024:.1f} MiB "
                      f"({rate:.0f} connections/s, {failures} failed)", flush=True)

    await asyncio.gather(*(loop() for _ in range(parallel)))
    config.close()
    return failures


# ---- replayed-Initial flood ---------------------------------------------------------------

def client_initial(port: int) -> bytes:
    """A real client Initial: aioquic's first datagram (ClientHello, padded)."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                               server_name="localhost")
    quic = QuicConnection(configuration=config)
    quic.connect(("127.0.0.1", port), now=time.time())
    return quic.datagrams_to_send(now=time.time())[0][0]


async def timed_connect(port: int) -> float:
    import pymsquic

    start = time.monotonic()
    async with pymsquic.asyncio.connect("127.0.0.1", port, alpn=ALPN,
                                        credential=pymsquic.Credential.client(verify=False), open_timeout=15) as conn:
        elapsed = time.monotonic() - start
        stream = conn.open_stream()
        stream.write(b"ping", fin=True)
        assert await stream.read() == b"ping"
    return elapsed


def flood(server: ServerProcess, count: int) -> None:
    datagram = client_initial(server.port)
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            sockets.append(sock)
        before = server.stats()
        for sock in sockets:
            sock.sendto(datagram, ("127.0.0.1", server.port))
        during = asyncio.run(timed_connect(server.port))
        print(f"flood of {count} replayed Initials: a legitimate client connected in {during * 1000:.1f} ms "
              f"during the burst", flush=True)
        # Answers (handshake flight, Retry or refusal) show what the server made of the burst.
        answered = sum(1 for sock in sockets if _answered(sock))
        after = asyncio.run(timed_connect(server.port))
        stats = server.stats()
        print(f"  and in {after * 1000:.1f} ms beside the half-open handshakes it left; {answered} of {count} "
              f"replays answered; listener: {stats['handshakes']} handshakes in progress, accepted "
              f"+{stats['accepted'] - before['accepted']}, refused (backlog {stats['refused_backlog']}, "
              f"handshakes {stats['refused_handshakes']}), failed {stats['failed']}; "
              f"server RSS {stats['rss_kb'] / 1024:.1f} MiB", flush=True)
    finally:
        for sock in sockets:
            sock.close()


def _answered(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(65536))
    except BlockingIOError:
        return False


# ---- main ---------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--flood", type=int, default=2000, help="replayed Initials (source ports)")
    parser.add_argument("--max-seconds", type=float, default=900, help="stop churning after this long")
    parser.add_argument("--retry-memory-limit", type=float, default=None,
                        help="the server's pymsquic.set_retry_memory_limit() (0: Retry every new client)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.retry_memory_limit))
        return
    server = ServerProcess(args.retry_memory_limit)
    try:
        failures = asyncio.run(churn(server, args.connections, args.parallel, time.monotonic() + args.max_seconds))
        if args.flood:
            flood(server, args.flood)
    finally:
        server.stop()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
