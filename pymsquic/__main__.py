"""Command line: ``python -m pymsquic demo`` and ``python -m pymsquic version``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pymsquic", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="listener on loopback, clients connect, handshake timings")
    demo.add_argument("--clients", type=int, default=8, help="number of clients (default 8)")
    demo.add_argument("--host", default="127.0.0.1", help="loopback address to use (default 127.0.0.1)")
    commands.add_parser("version", help="print pymsquic's and the loaded msquic's versions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    from . import __version__, msquic_version

    if args.command == "version":
        print(f"pymsquic {__version__}, msquic {msquic_version()}")
        return 0
    if args.clients < 1:
        parser.error("--clients must be at least 1")
    from .demo import run_demo

    asyncio.run(run_demo(args.clients, args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
