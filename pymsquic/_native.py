"""The process-wide msquic handle, blocking waits, and the Python side of hooks.

Everything that touches ``lib`` directly and is shared by the API modules
lives here: opening msquic once, tearing it down at exit in msquic's order
without ever hanging, and waiting on native objects with the GIL released.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import threading
import time
import weakref
from typing import Any, Callable, TypeVar

from ._msquic import ffi, lib
from .errors import HookContextError, QuicError, failed

logger = logging.getLogger("pymsquic")

T = TypeVar("T")

# Blocking waits wake at least this often so that Ctrl-C is handled promptly.
_WAIT_SLICE_MS = 500
# At exit, give msquic this long to close everything before giving up on it.
_TEARDOWN_TIMEOUT = 10.0

_lock = threading.Lock()
_opened = False
_torn_down = False
_registrations: "weakref.WeakSet[Any]" = weakref.WeakSet()
_deferred: list[Callable[[], None]] = []  # releases that came due on a msquic thread


def check(status: int, what: str) -> int:
    """Raise QuicError naming ``what`` and the status if it is a failure."""
    if failed(status):
        raise QuicError(f"{what} failed", status)
    return status


def ensure_open() -> None:
    """Open msquic's API table once per process (MsQuicOpenVersion)."""
    global _opened
    with _lock:
        if _torn_down:
            raise QuicError("pymsquic was shut down (interpreter exit)")
        if not _opened:
            check(lib.pmq_library_open(), "MsQuicOpenVersion")
            _opened = True
            atexit.register(_teardown)


def is_torn_down() -> bool:
    return _torn_down


def track_registration(registration: Any) -> None:
    _registrations.add(registration)


def _teardown() -> None:
    """At exit: close every registration (listeners, connections, configurations
    first), then MsQuicClose. Runs in a helper thread so a stuck msquic can
    never hang the interpreter's exit."""
    global _torn_down
    lib.pmq_hooks_enable(0)  # no Python on msquic threads from here on

    def close_all() -> None:
        run_deferred()
        for registration in list(_registrations):
            try:
                registration.close()
            except Exception:  # keep closing the others
                logger.exception("closing %r at exit", registration)
        lib.pmq_library_close()

    worker = threading.Thread(target=close_all, name="pymsquic-teardown", daemon=True)
    worker.start()
    worker.join(_TEARDOWN_TIMEOUT)
    if worker.is_alive():
        logger.error("msquic did not shut down within %.0f s; exiting without MsQuicClose", _TEARDOWN_TIMEOUT)
    _torn_down = True


class Releaser:
    """Releases one native resource of ``owner`` exactly once: when called
    (close()), or when ``owner`` is garbage collected.

    Collection can happen on a msquic thread inside a hook, where a blocking
    close could wait for that very thread: the release is then deferred to the
    next Registration.close() or to exit. After the exit teardown nothing is
    released (msquic is gone). weakref.finalize is not used: it goes inert at
    interpreter exit, before our teardown runs.
    """

    _live: "set[Releaser]" = set()  # keeps the weak references (and callbacks) alive

    def __init__(self, owner: Any, release: Callable[..., None], *args: Any) -> None:
        self._release: Callable[[], None] | None = functools.partial(release, *args)
        self._lock = threading.Lock()
        self._ref = weakref.ref(owner, self._collected)
        Releaser._live.add(self)

    @property
    def alive(self) -> bool:
        return self._release is not None

    def _take(self) -> Callable[[], None] | None:
        with self._lock:
            release, self._release = self._release, None
        Releaser._live.discard(self)
        return None if _torn_down else release

    def __call__(self) -> None:
        release = self._take()
        if release is not None:
            release()

    def _collected(self, _ref: Any) -> None:
        release = self._take()
        if release is not None:
            _release_here_or_defer(release)


def _release_here_or_defer(release: Callable[[], None]) -> None:
    # Collected on a msquic thread (inside a hook): releasing there could wait
    # for that very thread, so it waits for the next Registration.close() or exit.
    if lib.pmq_in_callback():
        with _lock:
            _deferred.append(release)
    else:
        release()


def release_now_or_later(release: Callable[[Any], None], native: Any) -> None:
    """For __del__ of objects whose release never blocks (streams, connections):
    skipped after the exit teardown, deferred when collected on a msquic thread."""
    if not _torn_down:
        _release_here_or_defer(functools.partial(release, native))


class _Scratch(threading.local):
    """Out-parameters for native calls, one set per thread instead of per object:
    streams and connections come and go by the thousand, and each ffi.new costs."""

    def __init__(self) -> None:
        self.stream = ffi.new("pmq_stream **")
        self.conn = ffi.new("pmq_conn **")
        self.conn_info = ffi.new("pmq_conn_info *")
        self.stream_state = ffi.new("pmq_stream_state *")
        self.data = ffi.new("uint8_t **")
        self.size = ffi.new("uint64_t *")


scratch = _Scratch()


def run_deferred() -> None:
    with _lock:
        pending = _deferred[:]
        del _deferred[:]
    for release in pending:
        try:
            release()
        except Exception:
            logger.exception("deferred release failed")


def forbid_in_callback(what: str) -> None:
    """Blocking calls inside a hook would wait for the hook's own msquic thread."""
    if lib.pmq_in_callback():
        raise HookContextError(f"{what} blocks and cannot be called from a pymsquic hook (msquic thread)")


def wait_blocking(obj: Any, check_ready: Callable[[], T | None], timeout: float | None, what: str) -> T:
    """Poll ``check_ready`` each time native object ``obj`` changes, GIL released
    in between, until it returns non-None; TimeoutError after ``timeout`` seconds."""
    forbid_in_callback(what)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        seq = lib.pmq_obj_seq(obj)
        result = check_ready()
        if result is not None:
            return result
        slice_ms = _WAIT_SLICE_MS
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what} timed out after {timeout} s")
            slice_ms = min(slice_ms, max(1, int(remaining * 1000) + 1))
        lib.pmq_obj_wait(obj, seq, slice_ms)


class Deadline:
    """One deadline for a blocking call made of several waits (websockets' sync
    Deadline style): each wait gets what is left of ``timeout``, so the call as a
    whole times out after ``timeout`` seconds, not each of its steps."""

    __slots__ = ("timeout", "_end")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a timeout."""
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())


def wait_until(obj: Any, check_ready: Callable[[], T | None], deadline: Deadline, what: str) -> T:
    """:func:`wait_blocking` bounded by what is left of ``deadline``; the
    TimeoutError names the whole call's timeout."""
    try:
        return wait_blocking(obj, check_ready, deadline.remaining(), what)
    except TimeoutError:
        raise TimeoutError(f"{what} timed out after {deadline.timeout} s") from None


# ---- hooks: Python callables run on msquic's threads ----------------------

_hook_ids = itertools.count(1)
_hook_targets: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()


def register_hook_target(target: Any) -> int:
    """Return an id the native side passes back to reach ``target._run_hook``."""
    hook_id = next(_hook_ids)
    _hook_targets[hook_id] = target
    return hook_id


def _hook_failed(exc_type: type, exc: BaseException, tb: Any) -> None:
    logger.error("pymsquic hook dispatch failed", exc_info=(exc_type, exc, tb))


@ffi.def_extern(onerror=_hook_failed)
def pmq_py_listener_hook(hook_id: int, event: int, info: Any) -> int:
    # Runs on a msquic worker thread. Returning 0 refuses a new connection.
    target = _hook_targets.get(hook_id)
    if target is None:
        return 0
    return 1 if target._run_hook(event, info) else 0
