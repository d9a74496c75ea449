"""Loop mode (pymsquic.execution): the asyncio event loop drives msquic's execution.

msquic's epoll fd is a reader on the loop; each step dispatches what is ready
and runs msquic's queued work and timers, so msquic's callbacks run here, on
the loop's thread. The next step follows the wait msquic returns: at once
(``call_soon``: 0 means "poll again now", msquic signals nothing then), after
that many milliseconds (``call_later``), or only when the fd is readable. A
step hands the loop back as soon as msquic's callbacks gave the loop's bridge
something to answer, so a busy sender cannot hold the loop for all its rounds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from .._msquic import ffi, lib
from .._native import is_forked_child, take_interrupt_from_hook

logger = logging.getLogger("pymsquic")


class _Driver:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._timer: asyncio.Handle | None = None
        # The loop's bridge: what msquic's callbacks changed in this step is
        # handled at once, not one loop iteration later through its eventfd.
        self._waker: Any = None
        self._drain: Callable[[], None] | None = None
        self._fd = lib.pmq_execution_fd()
        loop.add_reader(self._fd, self.step)
        self._timer = loop.call_soon(self.step)  # work queued before the loop took over

    def step(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        wait = 0  # interrupted before msquic answered (a signal on the call's return): step again
        try:
            # msquic's callbacks run in here; it ends early once the bridge has something
            wait = lib.pmq_execution_step_for(self._waker or ffi.NULL)
            if take_interrupt_from_hook():
                raise KeyboardInterrupt  # Ctrl-C landed in a hook, inside the step
            if self._drain is not None and lib.pmq_waker_pending(self._waker):
                self._drain()  # runs the app's stream protocols
        finally:
            # Even when that raised (KeyboardInterrupt leaves run_until_complete,
            # the app may run the loop again): without the next step msquic's
            # timers would never fire.
            self._schedule(wait)

    def _schedule(self, wait: int) -> None:
        if wait == 0:
            self._timer = self.loop.call_soon(self.step)
        elif wait > 0:
            self._timer = self.loop.call_later(wait / 1000.0, self.step)
        elif not lib.pmq_execution_active():
            self.detach()  # the exit teardown stopped polling

    def detach(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Not in a forked child: its loop's epoll instance is its parent's too,
        # and unregistering msquic's fd there would unregister it for the parent.
        if not self.loop.is_closed() and not is_forked_child():
            self.loop.remove_reader(self._fd)


_lock = threading.Lock()
_driver: _Driver | None = None


def drain_after_steps(loop: asyncio.AbstractEventLoop, waker: Any, drain: Callable[[], None]) -> None:
    """After each step on ``loop``, ``drain()`` when ``waker`` has changes."""
    driver = _driver
    if driver is not None and driver.loop is loop:
        driver._waker, driver._drain = waker, drain


def drive_on(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` the one that drives msquic. One loop at a time: a loop
    takes over only once the previous one is closed (asyncio.run() after another)."""
    global _driver
    with _lock:
        current = _driver
        if current is not None and current.loop is loop:
            return
        if current is not None and not current.loop.is_closed():
            raise RuntimeError(
                "pymsquic runs in execution mode 'loop' and another event loop drives msquic; only one event "
                "loop per process can use pymsquic in this mode (close the other loop first, or use the "
                "default mode 'threads')")
        if not lib.pmq_execution_active():
            return  # torn down: nothing to drive
        _driver = _Driver(loop)
        logger.debug("msquic's execution is driven by event loop %r", loop)
