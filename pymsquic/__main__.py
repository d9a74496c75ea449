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
    demo = commands.add_parser("demo", help="echo server on loopback: handshakes, streams, a datagram")
    demo.add_argument("--clients", type=int, default=4, help="handshakes to time (default 4)")
    demo.add_argument("--streams", type=int, default=4, help="concurrent echo streams (default 4)")
    demo.add_argument("--megabytes", type=int, default=16, help="MiB sent per stream (default 16)")
    demo.add_argument("--host", default="127.0.0.1", help="loopback address to use (default 127.0.0.1)")
    commands.add_parser("version", help="print pymsquic's and the loaded msquic's versions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    from . import __version__, msquic_version

    if args.command == "version":
        print(f"pymsquic {__version__}, msquic {msquic_version()}")
        return 0
    if min(args.clients, args.streams, args.megabytes) < 1:
        parser.error("--clients, --streams and --megabytes must be at least 1")
    from .demo import run_demo

    result = asyncio.run(run_demo(args.clients, args.streams, args.megabytes, args.host))
    return 0 if result["intact"] and result["datagram_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
