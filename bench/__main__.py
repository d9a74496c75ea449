"""``python -m bench --all``: every implementation and workload, side by side.

Prints one table (rates, latency, ratios to the native C pair and to aioquic,
CPU seconds of each side) and writes docs/bench/results.json and chart.png.
With --repeat N every rate is the median of N runs, shown with their min-max.

Implementations: native (quicperf.c on msquic's worker threads), native-exec
(the same on msquic's custom execution: one thread), native-rr (fairness only,
round-robin server), pymsquic-asyncio (threads mode), pymsquic-asyncio-loop
(PYMSQUIC_EXECUTION=loop), pymsquic-asyncio-protocol and
pymsquic-asyncio-loop-protocol (rps and latency only: the client's requests as
StreamProtocol callbacks), pymsquic-asyncio-fifo (fairness only),
pymsquic-blocking, pymsquic-blocking-loop (the same, PYMSQUIC_EXECUTION=loop),
aioquic, qh3, aiopquic.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench.harness import REPO, chart, run, table
from bench.protocol import WORKLOADS

ALL_IMPLS = ["native", "native-exec", "native-rr", "pymsquic-asyncio", "pymsquic-asyncio-loop",
             "pymsquic-asyncio-protocol", "pymsquic-asyncio-loop-protocol", "pymsquic-asyncio-fifo",
             "pymsquic-blocking", "pymsquic-blocking-loop", "aioquic", "qh3", "aiopquic"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="every implementation and workload")
    parser.add_argument("--impl", default="native,pymsquic-asyncio,aioquic",
                        help=f"comma-separated, from {','.join(ALL_IMPLS)}")
    parser.add_argument("--workload", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per workload (default 10)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every row this many times (the whole round, in turn) and report medians")
    parser.add_argument("--hs-parallel", type=int, default=0,
                        help="connection loops of the hs-* workloads (default 1: one connection after another)")
    parser.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                        help="hs-* workloads only: through bench/relay.py, which adds this round-trip time")
    parser.add_argument("--server", default="", metavar="IMPL",
                        help="every client talks to this implementation's server instead of its own")
    parser.add_argument("--cross", nargs="?", const="*", default="", metavar="IMPLS",
                        help="also run every non-native implementation X against the native pair: rows "
                             "'native client -> X server' (X's server alone) and 'X client -> native server' "
                             "(X's client alone), with 'vs native' against the native/native row of the same run "
                             "(adds native if missing; not with --server); --cross IMPL,IMPL: only those")
    parser.add_argument("--no-idle", action="store_true", help="skip the idle-connections memory measurement")
    parser.add_argument("--out", default=str(REPO / "docs" / "bench"), help="folder for results.json and chart.png")
    args = parser.parse_args()

    impls = ALL_IMPLS if args.all else args.impl.split(",")
    workloads = list(WORKLOADS) if args.all else args.workload.split(",")
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.cross and args.server:
        parser.error("--cross pairs every implementation with the native one: not with --server")
    if args.hs_parallel > 0:
        os.environ["BENCH_HS_PARALLEL"] = str(args.hs_parallel)  # every client inherits it
    report = run(impls, workloads, args.duration, idle=not args.no_idle, repeat=max(args.repeat, 1),
                 rtt_ms=args.rtt, server_name=args.server,
                 cross=args.cross == "*" or (args.cross.split(",") if args.cross else False))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(report, out / "chart.png")
    print(table(report))
    print(f"\nresults: {out / 'results.json'}; machine: {report['machine']}")


if __name__ == "__main__":
    main()
