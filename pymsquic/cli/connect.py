"""``pymsquic connect``: stdin to a QUIC stream and the reply to stdout, like ``nc``."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import BinaryIO

from ..asyncio import Connection, connect
from ..configuration import Credential
from ..errors import QuicError
from . import describe_close, fingerprint, format_address, report

CHUNK = 1 << 16


def stdin_reader(source: BinaryIO, lines: bool) -> asyncio.Queue[bytes | None]:
    """A queue fed with stdin's chunks (or lines), then None at EOF.

    A daemon thread reads: a blocking read in the loop's executor would keep the
    process alive at exit while stdin stays open after the server closed."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def pump() -> None:
        try:
            while True:
                data = source.readline() if lines else source.read1(CHUNK)  # type: ignore[attr-defined]
                if not data:
                    break
                loop.call_soon_threadsafe(queue.put_nowait, data)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="pymsquic-stdin", daemon=True).start()
    return queue


async def stream_mode(conn: Connection, source: BinaryIO, sink: BinaryIO) -> None:
    """Copy stdin to one stream (FIN at EOF) while copying its reply to stdout."""
    stream = conn.open_stream()
    queue = stdin_reader(source, lines=False)

    async def send() -> None:
        while (data := await queue.get()) is not None:
            stream.write(data)
            await stream.drain()
        stream.finish()

    sender = asyncio.create_task(send())
    try:
        async for chunk in stream:
            sink.write(chunk)
            sink.flush()
    finally:
        if not sender.done():  # the reply ended before stdin did: stop sending
            sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)


async def datagram_mode(conn: Connection, source: BinaryIO, sink: BinaryIO, linger: float) -> None:
    """Send each stdin line as a datagram and print the datagrams that come back.

    After EOF, wait up to ``linger`` seconds for as many replies as were sent
    (datagrams may be lost: the wait is bounded)."""
    queue = stdin_reader(source, lines=True)
    sent = received = 0
    all_back = asyncio.Event()

    async def receive() -> None:
        nonlocal received
        while True:
            sink.write(await conn.receive_datagram() + b"\n")
            sink.flush()
            received += 1
            if eof and received >= sent:
                all_back.set()

    eof = False
    receiver = asyncio.create_task(receive())
    try:
        while (line := await queue.get()) is not None:
            conn.send_datagram(line.rstrip(b"\r\n"))
            sent += 1
        eof = True
        if received < sent:
            try:
                await asyncio.wait_for(all_back.wait(), linger)
            except asyncio.TimeoutError:
                report(f"{sent - received} of {sent} datagrams got no reply within {linger} s")
    finally:
        receiver.cancel()


async def run_client(host: str, port: int, alpn: str, *, insecure: bool = False, ca_file: str | None = None,
                     server_name: str | None = None, datagram: bool = False, linger: float = 2.0,
                     timeout: float = 10.0) -> int:
    """Connect, relay stdin/stdout, close; return the exit status (0 if all went well)."""
    credential = Credential.client(verify=not insecure, ca_file=ca_file)
    try:
        conn = await connect(host, port, alpn=alpn, credential=credential, server_name=server_name,
                             open_timeout=timeout)
    except (QuicError, OSError) as exc:  # OSError: the name lookup failed
        report(f"connection to {host}:{port} failed: {exc}")
        return 1
    except asyncio.TimeoutError:
        report(f"connection to {host}:{port} timed out after {timeout} s")
        return 1
    status = 0
    try:
        handshake_ms = conn.stats().handshake_us / 1000
        report(f"connected to {format_address(conn.remote_address)}: handshake {handshake_ms:.2f} ms, ALPN {conn.alpn}")
        certificate = conn.peer_certificate
        report(f"server certificate SHA-256 fingerprint "
               f"{fingerprint(certificate) if certificate else 'unknown'}"
               f"{' (not verified: --insecure)' if insecure else ''}")
        source, sink = sys.stdin.buffer, sys.stdout.buffer
        if datagram:
            await datagram_mode(conn, source, sink, linger)
        else:
            await stream_mode(conn, source, sink)
    except QuicError as exc:
        report(f"error: {exc}")
        status = 1
    finally:
        await conn.close()
        report(f"closed: {describe_close(conn.close_reason)}")
    return status
