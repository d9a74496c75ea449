"""Defects an independent review of issue 7's fixes found: a cancelled graceful close that
lost the exit code, one failing object stranding the rest of a loop's wake-up batch, and a
cancelled connect racing its own start on a msquic worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from typing import Any

import pymsquic

from conftest import ALPN


class Boom(Exception):
    pass


def client_credential() -> pymsquic.Credential:
    return pymsquic.Credential.client(verify=False)


def test_cancelled_graceful_close_still_sends_the_exception_code(registration, async_listener) -> None:
    port = async_listener.local_address[1]

    async def main() -> None:
        holder: list[pymsquic.asyncio.Connection] = []

        async def client() -> None:
            async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                        registration=registration, open_timeout=10) as conn:
                stream = conn.open_stream()  # kept: a collected stream is reset, and counts as sent
                stream.write(b"x" * (16 << 20))  # the server never reads: close waits in wait_sent
                holder.append(conn)
                raise Boom

        task = asyncio.create_task(client())
        server = await asyncio.wait_for(async_listener.accept(), 10)
        await asyncio.wait_for(server.accept_stream(), 10)  # the client is now inside its graceful close
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Boom):
            pass
        reason = holder[0].close_reason
        assert reason is not None and reason.by_app and reason.error_code == pymsquic.EXCEPTION_ERROR_CODE, reason
        await asyncio.wait_for(server.wait_closed(), 10)
        seen = server.close_reason
        assert seen is not None and seen.by_peer and seen.error_code == pymsquic.EXCEPTION_ERROR_CODE, seen
        await server.close()

    asyncio.run(main())


def test_one_failing_object_does_not_strand_the_rest_of_a_wakeup_batch(registration, async_listener) -> None:
    port = async_listener.local_address[1]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=client_credential(),
                                    registration=registration, open_timeout=10) as conn:
            server = await asyncio.wait_for(async_listener.accept(), 10)
            first, second = conn.open_stream(), conn.open_stream()
            first._attach_to_running_loop()
            second._attach_to_running_loop()
            woken = asyncio.Event()

            def fail() -> None:
                raise Boom("a protocol callback failed")

            first._native_changed = fail  # type: ignore[method-assign]
            second._native_changed = woken.set  # type: ignore[method-assign]
            # Two native changes, in this order, reach the loop in one batch.
            first.set_write_limit(1000)
            second.set_write_limit(2000)
            await asyncio.wait_for(woken.wait(), 10)
            assert any(isinstance(context.get("exception"), Boom) for context in errors), errors
            await server.close()

    asyncio.run(main())


CANCELLED_CONNECTS = textwrap.dedent("""
    import asyncio, sys
    import pymsquic

    async def main(port):
        credential = pymsquic.Credential.client(verify=False)
        for i in range(150):
            # "localhost" takes the path that starts the connection on an executor thread.
            task = asyncio.ensure_future(pymsquic.connect("localhost", port, alpn="cancel", credential=credential,
                                                        open_timeout=5))
            for _ in range(i % 6):
                await asyncio.sleep(0)
            task.cancel()
            try:
                conn = await task
            except (asyncio.CancelledError, pymsquic.ConnectionClosed, TimeoutError):
                continue
            await conn.close()

    async def run():
        async def handler(conn):
            await conn.wait_closed()
        async with await pymsquic.serve(handler, "127.0.0.1", 0, alpn="cancel",
                                        credential=pymsquic.Credential.self_signed()) as server:
            await main(server.addresses[0][1])

    asyncio.run(run())
    pymsquic.default_registration().close()
    print("done")
""")


def test_cancelled_connects_never_free_a_handle_being_started() -> None:
    proc = subprocess.run([sys.executable, "-c", CANCELLED_CONNECTS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "done" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
