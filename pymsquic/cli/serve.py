"""``pymsquic serve``: an echo or file-serving QUIC server for debugging clients."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..asyncio import Connection, Stream, serve
from ..configuration import Credential
from ..errors import ConnectionClosed, QuicError
from . import credential_fingerprint, describe_close, format_address

logger = logging.getLogger("pymsquic")

# Application error code a file request that cannot be served is reset with.
FILE_ERROR_CODE = 1


def say(message: str) -> None:
    """Print a status line now: a test or a user waits on these lines."""
    print(message, flush=True)


async def echo_stream(stream: Stream) -> None:
    """Send back what the peer sends, then FIN after its FIN."""
    async for chunk in stream:
        stream.write(chunk)
        await stream.drain()
    stream.finish()


async def echo_datagrams(conn: Connection) -> None:
    """Send every datagram back as it came."""
    while True:
        conn.send_datagram(await conn.receive_datagram())


def resolve_request(root: Path, line: bytes) -> Path:
    """The file a request line names, inside ``root``; ValueError if it is outside or no file."""
    name = line.decode("utf-8").strip().lstrip("/")
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{name!r} is outside the served directory")
    if not path.is_file():
        raise ValueError(f"{name!r} is not a file")
    return path


async def file_stream(stream: Stream, root: Path) -> None:
    """Read one path line, send that file's bytes and FIN; reset the stream if it cannot."""
    line = await stream.readline()
    try:
        path = resolve_request(root, line)
    except (ValueError, UnicodeDecodeError) as exc:
        say(f"  request {line[:200]!r} refused: {exc}")
        stream.reset(FILE_ERROR_CODE)
        return
    say(f"  sending {path} ({path.stat().st_size} bytes)")
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            stream.write(chunk)
            await stream.drain()
    stream.finish()


async def guarded(work: Awaitable[None], peer: str) -> None:
    """Await one stream's work; a stream the peer reset ends that stream, not the connection."""
    try:
        await work
    except QuicError as exc:
        say(f"  {peer}: stream ended: {exc}")


def make_handler(directory: Path | None) -> Callable[[Connection], Awaitable[None]]:
    """The per-connection coroutine: echo, or serve files from ``directory``."""

    async def handler(conn: Connection) -> None:
        peer = format_address(conn.remote_address)
        say(f"connection from {peer}: handshake {conn.stats().handshake_us / 1000:.2f} ms, ALPN {conn.alpn}")
        datagrams = asyncio.create_task(echo_datagrams(conn)) if directory is None else None
        tasks: list[asyncio.Task[None]] = []
        try:
            async for stream in conn:
                work = echo_stream(stream) if directory is None else file_stream(stream, directory)
                tasks.append(asyncio.create_task(guarded(work, peer)))
            await asyncio.gather(*tasks)
        except ConnectionClosed:
            pass  # a transport close ends the iteration with an error: reported below
        finally:
            if datagrams is not None:
                datagrams.cancel()
            for task in tasks:
                task.cancel()
            say(f"connection from {peer} closed: {describe_close(conn.close_reason)}")

    return handler


async def run_server(host: str, port: int, alpn: str, certfile: str | None = None,
                     keyfile: str | None = None, directory: str | None = None) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status."""
    if certfile is not None and keyfile is not None:
        credential = Credential.from_files(certfile, keyfile)
    else:
        credential = Credential.self_signed(("localhost", host or "127.0.0.1"))
    root = Path(directory).resolve() if directory is not None else None
    if root is not None and not root.is_dir():
        raise ValueError(f"--directory {directory}: not a directory")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with serve(make_handler(root), host, port, alpn=alpn, credential=credential) as server:
            for address in server.addresses:
                say(f"listening on {format_address(address)} (ALPN {alpn!r}, "
                    f"{'serving files from ' + str(root) if root else 'echo'})")
            say(f"certificate SHA-256 fingerprint {credential_fingerprint(credential, certfile)}"
                f"{'' if certfile else ' (self-signed)'}")
            await stop.wait()
            say("stopping")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    say("stopped")
    return 0
