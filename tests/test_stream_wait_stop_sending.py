"""Stream.wait_stop_sending() in both worlds: the peer's STOP_SENDING code, or None
once the stream is over without one (what an HTTP/3 server waits on to see a client leave)."""

from __future__ import annotations

from typing import Any

import pymsquic

from worlds import World, worlds


async def stopping_handler(w: World, conn: Any) -> None:
    """Each stream: reads 4 bytes; "stop" is answered with STOP_SENDING 21, anything else echoed to FIN."""
    while True:
        try:
            stream = await w.wait(conn.accept_stream)
        except pymsquic.ConnectionClosed:
            return
        data = await w.wait(stream.readexactly, 4)
        if data == b"stop":
            stream.stop_sending(21)
            stream.finish()
        else:
            stream.write(data + await w.wait(stream.read, -1), fin=True)


@worlds
def test_wait_stop_sending(registration: pymsquic.Registration, server_credential: pymsquic.Credential,
                           w: World) -> None:
    async def main() -> None:
        async with await w.serve(stopping_handler, registration, server_credential) as server:
            conn = await w.connect(server.port, registration)
            stopped = conn.open_stream()
            stopped.write(b"stop")
            assert await w.wait(stopped.wait_stop_sending) == 21

            done = conn.open_stream()
            done.write(b"echo", fin=True)
            assert await w.wait(done.read, -1) == b"echo"
            assert await w.wait(done.wait_stop_sending) is None  # over both ways without one

            open_one = conn.open_stream()
            open_one.write(b"open")  # no FIN: the stream stays open until the connection closes
            conn.shutdown(0)
            assert await w.wait(open_one.wait_stop_sending) is None
            await w.call(conn.close)

    w.run(main())
