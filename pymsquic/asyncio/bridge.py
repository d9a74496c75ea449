"""How asyncio waits for msquic: one eventfd per event loop, written by msquic's threads.

Native objects attached to a loop's waker report each change by queueing
their id and, when the list turns non-empty, writing the eventfd. The loop's
reader drains the ids in one batch and tells each Python object to re-check
its state. Nothing polls on a timer.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any, Callable, TypeVar

from .._msquic import ffi, lib
from .._native import check_not_forked, forbid_in_callback, is_forked_child, loop_mode
from ._driver import drain_after_steps, drive_on

T = TypeVar("T")

_DRAIN_BATCH = 256


class _LoopBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        waker = lib.pmq_waker_new()
        if waker == ffi.NULL:
            raise OSError("cannot create the eventfd for the asyncio bridge")
        self._waker = ffi.gc(waker, lib.pmq_waker_release)
        self._ids = ffi.new("uint64_t[]", _DRAIN_BATCH)
        self._next_id = 1
        # id -> weak reference to the object attached under that id.
        self._objects: dict[int, weakref.ref[NativeWaitable]] = {}
        self._fd = lib.pmq_waker_fd(waker)
        # The loop holds the bridge through this reader; when the loop is collected,
        # so is the bridge, and the waker with it (attached objects hold their own reference).
        loop.add_reader(self._fd, self._on_readable)

    def attach(self, obj: "NativeWaitable") -> None:
        obj_id = self._next_id
        self._next_id += 1
        objects = self._objects
        # The entry leaves with its object; the native side may still report the
        # id once, which then finds nothing.
        objects[obj_id] = weakref.ref(obj, lambda _ref: objects.pop(obj_id, None))
        lib.pmq_obj_attach(obj._native_obj, self._waker, obj_id)

    def _on_readable(self) -> None:
        if is_forked_child():
            # A child forked inside the loop shares the eventfd (and the epoll
            # instance) with its parent: reading it would take the parent's
            # wake-ups. The parent drains it; the child's reports stop then.
            return
        n = lib.pmq_waker_drain(self._waker, self._ids, _DRAIN_BATCH)
        objects = self._objects
        for i in range(n):
            ref = objects.get(self._ids[i])
            obj = ref() if ref is not None else None
            if obj is not None:
                try:
                    obj._native_changed()
                except Exception as exc:  # one object's failure must not strand the rest of the batch
                    asyncio.get_running_loop().call_exception_handler(
                        {"message": "pymsquic: error while handling a native event", "exception": exc,
                         "object": obj})


_bridges: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBridge]" = weakref.WeakKeyDictionary()


def bridge_for(loop: asyncio.AbstractEventLoop) -> _LoopBridge:
    bridge = _bridges.get(loop)
    if bridge is None:
        if loop_mode():
            drive_on(loop)  # msquic's work runs on this loop's thread (pymsquic.execution)
        bridge = _bridges[loop] = _LoopBridge(loop)
        if loop_mode():
            drain_after_steps(loop, bridge._waker, bridge._on_readable)
    return bridge


class NativeWaitable:
    """Mixin for asyncio objects backed by a native pmq_obj (``_native_obj``).

    ``_wait`` re-runs a non-blocking check each time the native object
    changes. The check must take what it returns atomically (an accept pops a
    connection in C), so a cancelled wait loses nothing. Nothing to initialise:
    an object gets its own list of waiters when it first waits (the shared
    default is an immutable, empty tuple).
    """

    _native_obj: Any  # pmq_obj *
    _waiters: "list[asyncio.Future[None]] | tuple[()]" = ()
    _attached_loop: asyncio.AbstractEventLoop | None = None

    def _native_changed(self) -> None:
        """Called on the loop when the native object changed; protocols override it."""
        if self._waiters:
            self._wake_waiters()

    def _attach_to_running_loop(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or asyncio.get_running_loop()
        if self._attached_loop is not loop:
            bridge_for(loop).attach(self)
            self._attached_loop = loop

    def _refuse_other_loop(self, loop: asyncio.AbstractEventLoop, what: str) -> None:
        # Waiters on two loops cannot share one waker: re-attaching to this loop
        # would leave the other loop's waiters without wake-ups, stalled.
        other = self._attached_loop
        if (other is not None and other is not loop and not other.is_closed()
                and any(not fut.done() for fut in self._waiters)):
            raise RuntimeError(f"{what}: {type(self).__name__} is being awaited on a different event loop; "
                               "an object can be awaited on one event loop at a time")

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait(self, check_ready: Callable[[], T | None], what: str, timeout: float | None = None, *,
                    checked: bool = False) -> T:
        """Until ``check_ready()`` returns non-None. ``timeout`` is for pymsquic's
        own bounded waits (open timeout, linger); callers use asyncio.timeout().
        ``checked``: the caller found ``check_ready()`` None just before, on this
        loop, with nothing awaited in between: no first check if the object was
        attached already (a change since would be reported to the waiter)."""
        # Attach to the loop's waker only when about to wait; the loop below
        # checks again after attaching, so no change between can be missed.
        check_not_forked(what)
        forbid_in_callback(what)  # a loop run inside a hook would wait for the hook's own msquic thread
        loop = asyncio.get_running_loop()
        self._refuse_other_loop(loop, what)
        # Reports are handled by loop callbacks, which cannot run between the caller's
        # check and the waiter made below; attached only now, earlier changes were not reported.
        skip_check = checked and self._attached_loop is loop
        self._attach_to_running_loop(loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if skip_check:
                skip_check = False
            else:
                result = check_ready()
                if result is not None:
                    return result
            fut = loop.create_future()
            if self._waiters:
                self._waiters.append(fut)  # non-empty: a list
            else:
                self._waiters = [fut]
            timer = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._waiters.remove(fut)
                    # asyncio's class: what asyncio.wait_for() raises too (before 3.11 not the builtin)
                    raise asyncio.TimeoutError(f"{what} timed out after {timeout} s")
                timer = loop.call_later(remaining, _expire, fut)
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()
                if fut in self._waiters:
                    self._waiters.remove(fut)


def _expire(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)
