"""``python -m pymsquic.h3 module:app``: serve an ASGI app over HTTP/3, in the
shape of uvicorn's and hypercorn's command lines. A self-signed certificate
for localhost by default (its fingerprint is printed); SIGINT/SIGTERM shut down
gracefully (GOAWAY, requests in finish); an access log line per request."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from ..cli import credential_fingerprint
from ..configuration import Credential
from .server import ASGIApp, LifespanStartupFailed, serve

logger = logging.getLogger("pymsquic")


def load_app(spec: str) -> ASGIApp:
    """``module:attribute`` (``module.sub:app.attr`` too) imported from the current directory."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"the app is given as module:attribute, not {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{spec} is not callable")
    return target  # type: ignore[no-any-return]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pymsquic.h3", description=__doc__)
    parser.add_argument("app", help="the ASGI app, as module:attribute")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; '' for all)")
    parser.add_argument("--port", type=int, default=4433, help="UDP port (default 4433)")
    parser.add_argument("--certfile", help="PEM certificate chain (default: a self-signed one for localhost)")
    parser.add_argument("--keyfile", help="PEM private key of --certfile")
    parser.add_argument("--ca-out", help="write the self-signed certificate here, for clients to trust (--ca)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds requests get to finish at shutdown")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together")
    return args


async def run(args: argparse.Namespace, app: ASGIApp) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    if args.certfile:
        credential = Credential.from_files(args.certfile, args.keyfile)
    else:
        credential = Credential.self_signed(("localhost", "127.0.0.1", "::1"))
        if args.ca_out:
            Path(args.ca_out).write_bytes(credential.certificate_pem or b"")
    server = await serve(app, args.host, args.port, credential=credential)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    address = server.addresses[0]
    print(f"serving {args.app} over HTTP/3 on https://{address[0]}:{address[1]}/ "
          f"(certificate SHA-256 {credential_fingerprint(credential, args.certfile)})", flush=True)
    try:
        await stop.wait()
        logger.info("shutting down (grace %s s)", args.grace)
    finally:
        server.close(args.grace)
        await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line's entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    try:
        app = load_app(args.app)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        print(f"error: cannot load {args.app}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(args, app))
    except LifespanStartupFailed as exc:  # as uvicorn: a message and exit status 3, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
