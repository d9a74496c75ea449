"""The command lines of the examples, and their wait for Ctrl-C: shared here so
that each example shows only its use of pymsquic. Not part of pymsquic."""

from __future__ import annotations

import argparse
import asyncio
import signal

from pymsquic import Credential


def _parser(doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433, help="0 (servers): any free port")
    parser.add_argument("--alpn", default="echo")
    return parser


def server_arguments(doc: str | None) -> tuple[argparse.Namespace, Credential]:
    """The parsed command line of a server, and its credential: --cert/--key,
    or else a certificate generated now, written to --ca-out for the clients."""
    parser = _parser(doc)
    parser.add_argument("--cert", help="PEM certificate (with --key)")
    parser.add_argument("--key", help="PEM private key")
    parser.add_argument("--ca-out", help="write the generated certificate here")
    args = parser.parse_args()
    if args.cert:
        return args, Credential.from_files(args.cert, args.key)
    credential = Credential.self_signed(("localhost", args.host))
    if args.ca_out:
        with open(args.ca_out, "wb") as out:
            out.write(credential.certificate_pem or b"")
    return args, credential


def client_arguments(doc: str | None) -> tuple[argparse.Namespace, Credential]:
    """The parsed command line of a client, and its credential: verifying the
    server against --ca (the system CA store without it) unless --insecure."""
    parser = _parser(doc)
    parser.add_argument("--ca", help="trust this CA certificate (PEM) for the server")
    parser.add_argument("--insecure", action="store_true", help="skip certificate validation")
    parser.add_argument("--streams", type=int, default=3)
    args = parser.parse_args()
    return args, Credential.client(verify=not args.insecure, ca_file=args.ca)


async def signalled() -> None:
    """Return on Ctrl-C or SIGTERM (asyncio servers)."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
