"""The benchmark's wire protocol and what every client reports.

secnetperf's protocol: on each bidirectional stream the client sends an 8-byte
big-endian length N, its upload bytes and FIN; the server answers with N bytes
and FIN. Every client prints one JSON line (``Result``) and every server prints
``ready PORT`` once it listens, then serves until its stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import resource
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

ALPN = "perf"
HEADER = struct.Struct(">Q")
FOREVER = 1 << 62            # "as many bytes as fit": the client stops reading
RPS_UP, RPS_DOWN = 512, 4000  # request and response sizes of the rps and latency workloads
RPS_PARALLEL = 100
HPS_PARALLEL = 16
IDLE_CONNECTIONS = int(__import__("os").environ.get("BENCH_IDLE_CONNECTIONS", "1000"))
CHUNK = 1 << 20
DATA = b"d" * CHUNK          # what servers send
UPLOAD = b"u" * CHUNK        # what clients upload

#: handshake workloads: new connections one after another (HS_PARALLEL loops), each
#: one HS_UP-byte request (the 8-byte header included) and HS_DOWN-byte reply, timed
#: from the start of the connection to the reply's first byte. full: no ticket;
#: resume: the latest session ticket, request sent once connected; 0rtt: the same
#: ticket, request sent as early data. Servers allow resumption and 0-RTT in every
#: mode, so the three differ only on the client.
HS_WORKLOADS = ("hs-full", "hs-resume", "hs-0rtt")
HS_UP, HS_DOWN = 32, 32
HS_REQUEST = HEADER.pack(HS_DOWN) + b"u" * (HS_UP - HEADER.size)
HS_PARALLEL = int(__import__("os").environ.get("BENCH_HS_PARALLEL", "1"))
WORKLOADS = ("download", "upload", "rps", "latency", "hps", "fairness", *HS_WORKLOADS)
#: fairness: latency's one-at-a-time requests beside a saturating download on the
#: same connection. Only these implementations run it (FIFO and round-robin
#: stream scheduling, each side's scheme set as the name says; both execution modes
#: of the native pair and of pymsquic asyncio).
FAIRNESS_IMPLS = ("native", "native-exec", "native-rr", "pymsquic-asyncio", "pymsquic-asyncio-loop",
                  "pymsquic-asyncio-fifo")
#: aiopquic's adapter has no session tickets, and qh3 (same adapter as aioquic) was
#: not installed where the hs-* workloads were written: neither runs them.
HS_IMPLS = ("native", "native-exec", "pymsquic-asyncio", "pymsquic-asyncio-loop", "pymsquic-blocking",
            "pymsquic-blocking-loop", "aioquic")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@dataclass
class Result:
    elapsed: float = 0.0
    bytes: int = 0
    requests: int = 0
    handshakes: int = 0
    latencies_us: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    connections: int = 0
    rss_delta_kb: int = 0
    resumed: int = 0      # hs-*: connections the server resumed
    early_data: int = 0   # hs-0rtt: connections whose early data the server accepted

    def emit(self) -> None:
        lat = sorted(self.latencies_us)
        out = asdict(self)
        del out["latencies_us"]
        out["p50_us"] = lat[len(lat) // 2] if lat else 0
        out["p99_us"] = lat[len(lat) * 99 // 100] if lat else 0
        print(json.dumps(out), flush=True)


class Clock:
    """Deadline and CPU bookkeeping for a timed client run."""

    def __init__(self, duration: float) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + duration
        self.cpu0 = cpu_seconds()

    def running(self) -> bool:
        return time.perf_counter() < self.deadline

    def finish(self, result: Result, end: float | None = None) -> Result:
        result.elapsed = (end or time.perf_counter()) - self.start
        result.cpu_s = cpu_seconds() - self.cpu0
        return result


def wait_for_stdin_close() -> None:
    """Servers and idle clients run until the harness closes their stdin."""
    sys.stdin.read()


async def run_handshake_loops(one: Callable[[Result, bool], Awaitable[None]], duration: float) -> Result:
    """The hs-* workloads' timing, library-free: ``one(result, warmup)`` makes one connection
    and its request. One untimed warm-up (the first ticket, warm caches), then HS_PARALLEL
    loops of ``one`` until the clock runs out."""
    await one(Result(), True)
    result = Result()
    clock = Clock(duration)

    async def loop() -> None:
        while clock.running():
            await one(result, False)
            result.handshakes += 1

    await asyncio.gather(*(loop() for _ in range(HS_PARALLEL)))
    return clock.finish(result)
