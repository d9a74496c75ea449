"""Native resources come back: findings of the sanitizer run (tools/sanitize.sh) kept as tests."""

from __future__ import annotations

import asyncio
import gc
import os

import pymsquic

from conftest import ALPN


def _eventfds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
        except OSError:  # the listing's own fd, closed by now
            pass
    return count


def test_loop_gone_with_a_change_still_queued_frees_its_waker_and_the_object(
        registration: pymsquic.Registration, server_config: pymsquic.Configuration) -> None:
    # LeakSanitizer found listeners and wakers leaked in a cycle: an object
    # queued on a loop's waker holds a reference from the queue, and the object
    # holds the waker, so once the loop is gone neither was ever freed (each
    # loop kept its eventfd open for good).
    def one_loop() -> None:
        listener = pymsquic.asyncio.Listener(registration, server_config)
        listener.start(ALPN, ("127.0.0.1", 0))

        async def wait_briefly() -> None:  # attaches the listener to this loop's waker
            try:
                await asyncio.wait_for(listener.accept(), 0.01)  # noqa: F821 (the del below confuses ruff)
            except (TimeoutError, asyncio.TimeoutError):
                pass

        asyncio.run(wait_briefly())
        # Stop and close without a loop (await close() would attach to a new one):
        # STOP_COMPLETE queues a change on the waker of the finished loop.
        listener._release()
        del listener
        gc.collect()

    one_loop()
    before = _eventfds()
    for _ in range(10):
        one_loop()
    assert _eventfds() - before == 0
