"""Runs one implementation's server or client in this process (the harness starts them).

    python -m bench.run IMPL server --port P --cert C --key K
    python -m bench.run IMPL client --port P --workload W --duration S
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

MODULES = {
    "pymsquic-asyncio": ("bench.impls.pymsquic_asyncio", None),
    "pymsquic-blocking": ("bench.impls.pymsquic_blocking", None),
    "aioquic": ("bench.impls.aioquic_family", "aioquic"),
    "qh3": ("bench.impls.aioquic_family", "qh3"),
    "aiopquic": ("bench.impls.aioquic_family", "aiopquic"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=sorted(MODULES))
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--workload", default="download")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    module, flavor = MODULES[args.impl]
    if flavor:
        os.environ["BENCH_FLAVOR"] = flavor
    impl = importlib.import_module(module)
    if args.role == "server":
        impl.run_server(args.port, args.cert, args.key)
        return
    impl.run_client(args.port, args.workload, args.duration).emit()
    if args.workload == "idle":
        sys.stdin.read()  # hold the connections while the harness measures the server
    sys.stdout.flush()
    os._exit(0)  # measured; do not wait for connections to drain


if __name__ == "__main__":
    main()
