"""HTTP/3 rows: the same small ASGI app (bench/h3_app.py) served by pymsquic.h3
and by hypercorn (aioquic's HTTP/3), each in its own process, loaded by one
client process (pymsquic.h3's Client, the same for both servers).

    python -m bench.h3 [--duration 5] [--servers pymsquic-h3,hypercorn]

Workloads: ``get`` (a 4000-byte GET) and ``post`` (a 512-byte POST echo), with
100 requests in flight over 1 connection, and over 16 connections (100 in all).
Prints requests/s, p50 and p99 latency, CPU seconds of each side (and per request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from bench.harness import REPO, cpu_of, free_udp_port, make_certs

SERVERS = {
    "pymsquic-h3": lambda port, cert, key: [sys.executable, "-m", "pymsquic.h3", "bench.h3_app:app", "--port",
                                            str(port), "--certfile", cert, "--keyfile", key, "--log-level", "warning"],
    "hypercorn": lambda port, cert, key: [sys.executable, "-m", "hypercorn", "--quic-bind", f"127.0.0.1:{port}",
                                          "--bind", f"127.0.0.1:{free_udp_port()}", "--certfile", cert, "--keyfile",
                                          key, "--log-level", "warning", "bench.h3_app:app"],
}
SHAPES = [(1, 100), (16, 100)]  # (connections, requests in flight in all)


async def load(url: str, workload: str, connections: int, inflight: int, duration: float) -> dict[str, float]:
    """Run in the client process: requests for ``duration`` seconds; their count and latencies."""
    import pymsquic.h3

    clients = [pymsquic.h3.Client(verify=False, timeout=30) for _ in range(connections)]
    for _ in range(100):  # until the server listens
        try:
            await asyncio.gather(*(client.get(f"{url}/get") for client in clients))
            break
        except Exception:  # the server is still starting: it said nothing we can wait for
            await asyncio.sleep(0.1)
    else:  # never answered: say so rather than measure failures
        raise RuntimeError(f"no answer from {url} in 100 tries")
    payload = bytes(512)
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def worker(client: pymsquic.h3.Client) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            if workload == "get":
                response = await client.get(f"{url}/get")
                assert len(response.content) == 4000
            else:
                response = await client.post(f"{url}/echo", content=payload)
                assert response.content == payload
            latencies.append(time.perf_counter() - start)

    cpu = resource.getrusage(resource.RUSAGE_SELF)
    begin = time.perf_counter()
    await asyncio.gather(*(worker(clients[i % connections]) for i in range(inflight)))
    elapsed = time.perf_counter() - begin
    after = resource.getrusage(resource.RUSAGE_SELF)
    for client in clients:
        await client.aclose()
    latencies.sort()
    return {"requests": len(latencies), "rps": len(latencies) / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2], "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
            "client_cpu_s": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime}


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants still running (hypercorn runs its
    worker in a child process)."""
    total = cpu_of(pid)
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as children:
            total += sum(tree_cpu(int(child)) for child in children.read().split())
    return total


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until a UDP socket is bound to ``port`` on this host (the server is up), or the
    server exited, or ``timeout`` passed (the client's own retries then wait on)."""
    suffix = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            with open(table) as sockets:
                if any(line.split()[1].endswith(suffix) for line in sockets.readlines()[1:]):
                    return
        time.sleep(0.02)  # polling: the server says nothing we could wait on (its output is discarded)


def measure(server: str, cert: str, key: str, workload: str, connections: int, inflight: int,
            duration: float) -> dict[str, float]:
    port = free_udp_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(SERVERS[server](port, cert, key), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)  # the server's start (imports, certificate, ~0.35 s of CPU) is not counted
        cpu_before = tree_cpu(proc.pid)
        client = subprocess.run([sys.executable, "-m", "bench.h3", "--load", f"https://127.0.0.1:{port}",
                                 "--workload", workload, "--connections", str(connections), "--inflight",
                                 str(inflight), "--duration", str(duration)],
                                env=env, cwd=REPO, capture_output=True, text=True, timeout=duration + 120)
        if client.returncode != 0:
            raise RuntimeError(client.stdout + client.stderr)
        result: dict[str, float] = json.loads(client.stdout.strip().splitlines()[-1])
        # From the moment the server listens: its start is not counted (hypercorn's worker
        # binds the port itself, so its start is not counted either).
        result["server_cpu_s"] = tree_cpu(proc.pid) - cpu_before
        return result
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.h3", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the client process's own arguments
    parser.add_argument("--workload", default="get", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--inflight", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(asyncio.run(load(args.load, args.workload, args.connections, args.inflight, args.duration))))
        return
    with tempfile.TemporaryDirectory() as folder:
        cert, key = make_certs(folder)
        print(f"{'server':<12} {'workload':<9} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'client CPU s':>12} {'server CPU s':>12} {'client us/req':>13} {'server us/req':>13}")
        for workload in ("get", "post"):
            for connections, inflight in SHAPES:
                for server in args.servers.split(","):
                    r = measure(server, cert, key, workload, connections, inflight, args.duration)
                    print(f"{server:<12} {workload:<9} {connections:>5} {r['rps']:>8.0f} {r['p50_ms']:>8.1f} "
                          f"{r['p99_ms']:>8.1f} {r['client_cpu_s']:>12.1f} {r['server_cpu_s']:>12.1f} "
                          # CPU per request: steadier than the rates on a shared machine
                          f"{1e6 * r['client_cpu_s'] / r['requests']:>13.0f} "
                          f"{1e6 * r['server_cpu_s'] / r['requests']:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
