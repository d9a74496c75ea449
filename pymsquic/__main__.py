"""Command line of pymsquic: run ``pymsquic COMMAND --help`` for a command's options."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from . import __version__, msquic_version
from .errors import QuicError

DESCRIPTION = ("pymsquic: Python bindings to Microsoft's msquic. Debug QUIC with the serve and "
               "connect commands; run 'COMMAND --help' for a command's options.")


def prog_name() -> str:
    """``pymsquic`` from the entry point, ``python -m pymsquic`` when run as a module."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m pymsquic" if name in ("__main__.py", "-c", "") else "pymsquic"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    # -v is accepted before and after the command: a parent parser both share.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="debug logging (pymsquic's logger)")
    parser = argparse.ArgumentParser(prog=prog_name(), description=DESCRIPTION, parents=[verbose])
    parser.add_argument("--version", action="version",
                        version=f"pymsquic {__version__}, msquic {msquic_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", parents=[verbose], help="echo server on loopback: handshakes, streams, a datagram",
        description="Start an echo server on loopback with a self-signed certificate, time verified "
                    "handshakes, echo a datagram and several large streams, report the throughput, "
                    "and stop cleanly.")
    demo.add_argument("--clients", type=int, default=4, help="handshakes to time (default 4)")
    demo.add_argument("--streams", type=int, default=4, help="concurrent echo streams (default 4)")
    demo.add_argument("--megabytes", type=int, default=16, help="MiB sent per stream (default 16)")
    demo.add_argument("--host", default="127.0.0.1", help="loopback address to use (default 127.0.0.1)")

    serve = commands.add_parser(
        "serve", parents=[verbose], help="a QUIC echo or file server",
        description="Serve QUIC on HOST:PORT: echo every stream and datagram (--echo, the default), or "
                    "answer a stream carrying a path line with that file from DIR (--directory). "
                    "Prints the listening address, the certificate's SHA-256 fingerprint and, per "
                    "connection, the peer, handshake time and close reason. Ctrl-C or SIGTERM stops it.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; "
                                                           "'' for every address)")
    serve.add_argument("--port", type=int, default=4433, help="UDP port (default 4433; 0 picks a free one)")
    serve.add_argument("--alpn", required=True, help="application protocol to accept")
    serve.add_argument("--cert", help="certificate chain, PEM (default: a self-signed one)")
    serve.add_argument("--key", help="private key of --cert, PEM")
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument("--echo", action="store_true", help="echo streams and datagrams (default)")
    mode.add_argument("--directory", metavar="DIR", help="serve the files under DIR")

    connect = commands.add_parser(
        "connect", parents=[verbose], help="stdin to a QUIC stream, the reply to stdout",
        description="Connect to HOST PORT and send stdin on one stream (FIN at end of input), writing "
                    "the reply to stdout; with --datagram, send each line as a datagram and print the "
                    "replies. The handshake time, server certificate fingerprint and close reason go "
                    "to stderr.")
    connect.add_argument("host", metavar="HOST")
    connect.add_argument("port", metavar="PORT", type=int)
    connect.add_argument("--alpn", required=True, help="application protocol to ask for")
    connect.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
    connect.add_argument("--ca", metavar="FILE", help="verify the server against this CA file (PEM)")
    connect.add_argument("--server-name", help="SNI and the name to verify (default HOST)")
    connect.add_argument("--datagram", action="store_true", help="each stdin line as a datagram")
    connect.add_argument("--linger", type=float, default=2.0,
                         help="seconds to wait for datagram replies after end of input (default 2)")
    connect.add_argument("--timeout", type=float, default=10.0, help="handshake timeout, seconds (default 10)")

    commands.add_parser("version", parents=[verbose], help="print pymsquic's and msquic's versions",
                        description="Print pymsquic's version and the loaded msquic's.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING)

    if args.command == "version":
        print(f"pymsquic {__version__}, msquic {msquic_version()}")
        return 0
    if args.command == "demo":
        if min(args.clients, args.streams, args.megabytes) < 1:
            parser.error("--clients, --streams and --megabytes must be at least 1")
        from .demo import run_demo

        result = asyncio.run(run_demo(args.clients, args.streams, args.megabytes, args.host))
        return 0 if result["intact"] and result["datagram_ok"] else 1
    if args.command == "serve":
        if (args.cert is None) != (args.key is None):
            parser.error("--cert and --key go together")
        from .cli.serve import run_server

        try:
            return asyncio.run(run_server(args.host, args.port, args.alpn, args.cert, args.key, args.directory))
        except (ValueError, OSError, QuicError) as exc:  # bad files or address, port in use
            print(f"pymsquic serve: {exc}", file=sys.stderr)
            return 1
    from .cli.connect import run_client

    try:
        return asyncio.run(run_client(args.host, args.port, args.alpn, insecure=args.insecure, ca_file=args.ca,
                                      server_name=args.server_name, datagram=args.datagram,
                                      linger=args.linger, timeout=args.timeout))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
