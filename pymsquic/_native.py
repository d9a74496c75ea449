"""The process-wide msquic handle, blocking waits, and the Python side of hooks.

Everything that touches ``lib`` directly and is shared by the API modules
lives here: opening msquic once, tearing it down at exit in msquic's order
without ever hanging, and waiting on native objects with the GIL released.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, TypeVar

from ._msquic import ffi, lib
from .errors import ForkedProcessError, HookContextError, QuicError, failed

logger = logging.getLogger("pymsquic")

T = TypeVar("T")

# Blocking waits wake at least this often so that Ctrl-C is handled promptly.
_WAIT_SLICE_MS = 500
# At exit, give msquic this long to close everything before giving up on it.
_TEARDOWN_TIMEOUT = 10.0
# Loop mode, at exit: drive msquic at most this long until it is quiet.
_LOOP_SETTLE_MS = 3000

_lock = threading.Lock()
_opened = False
_torn_down = False
_registrations: "weakref.WeakSet[Any]" = weakref.WeakSet()
_deferred: list[Callable[[], None]] = []  # releases that came due on a msquic thread


def check(status: int, what: str) -> int:
    """Raise QuicError naming ``what`` and the status if it is a failure."""
    if failed(status):
        check_not_forked(what)  # in a forked child every msquic call fails: say why
        raise QuicError(f"{what} failed", status)
    return status


def ensure_open() -> None:
    """Open msquic's API table once per process (MsQuicOpenVersion)."""
    global _opened, _teardown_worker, _mode
    check_not_forked("starting msquic")
    with _lock:
        if _torn_down:
            raise QuicError("pymsquic was shut down (interpreter exit)")
        if not _opened:
            mode = _chosen_mode or _mode_from_environment()  # a bad PYMSQUIC_EXECUTION fails before msquic opens
            check(lib.pmq_library_open(), "MsQuicOpenVersion")
            if mode == "loop":
                check(lib.pmq_execution_create(), "ExecutionCreate")  # before the first RegistrationOpen
            _opened = True
            _mode = mode
            _teardown_worker = _TeardownWorker.start()
            atexit.register(_teardown)


# ---- execution mode (pymsquic.execution) ----------------------------------

_chosen_mode: str | None = None  # set_execution_mode(), before msquic opens
_mode: str | None = None  # the mode msquic was opened in


def _mode_from_environment() -> str:
    from .execution import mode_from_environment
    return mode_from_environment()


def choose_execution_mode(mode: str) -> None:
    """set_execution_mode(): refused once msquic is open in another mode."""
    global _chosen_mode
    with _lock:
        if _opened:
            if mode != _mode:
                raise RuntimeError(f"cannot switch pymsquic to execution mode {mode!r}: msquic is already open "
                                   f"in mode {_mode!r} (choose the mode before the first Registration, "
                                   "listener or connection)")
            return
        _chosen_mode = mode


def execution_mode_or(default: Callable[[], str]) -> str:
    with _lock:
        return _mode or _chosen_mode or default()


def loop_mode() -> bool:
    """True once msquic runs on an event loop's thread (custom execution)."""
    return _mode == "loop"


def ensure_driver(what: str) -> None:
    """Loop mode: the blocking world waits for msquic's work, which no event loop
    may be stepping: a native thread steps it from the first blocking wait on."""
    if _mode == "loop" and not lib.pmq_execution_start_driver():
        raise QuicError(f"{what}: cannot start the thread that drives msquic (execution mode 'loop')")


def is_torn_down() -> bool:
    """True once the exit teardown ran: msquic is gone, nothing may call it."""
    return _torn_down


def track_registration(registration: Any) -> None:
    _registrations.add(registration)


# ---- fork -------------------------------------------------------------------
# A child forked after msquic started has none of msquic's threads but all of
# its state; msquic cannot be reset there (MsQuicClose hangs on the parent's
# live objects). The native side swaps in an API table of stubs at fork, so
# nothing in the child can enter msquic and hang; here the child's calls get
# ForkedProcessError, and its exit leaves the parent's msquic state alone.

_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = bool(lib.pmq_library_forked())


os.register_at_fork(after_in_child=_after_fork_in_child)


def is_forked_child() -> bool:
    """True in a child forked after msquic had started in the parent."""
    return _forked


def check_not_forked(what: str) -> None:
    """Raise ForkedProcessError in a child forked after msquic started."""
    if _forked:
        raise ForkedProcessError(
            f"{what}: pymsquic cannot be used in a process forked after msquic started in its parent "
            "(msquic's threads do not survive fork); fork before using pymsquic, or use "
            "multiprocessing's 'spawn' or 'forkserver' start method")


# ---- exit -------------------------------------------------------------------


def _close_all() -> None:
    """Every registration (listeners, connections, configurations first), then MsQuicClose."""
    run_deferred()
    for registration in list(_registrations):
        try:
            registration.close()
        except Exception:  # keep closing the others
            logger.exception("closing %r at exit", registration)
    if _mode == "loop" and not lib.pmq_execution_finish(_LOOP_SETTLE_MS):
        logger.warning("msquic still had work after %d ms at exit", _LOOP_SETTLE_MS)
    lib.pmq_library_close()


class _TeardownWorker:
    """The thread that runs the exit teardown, started with msquic.

    At exit the interpreter may refuse to start threads (3.12.1: "can't create
    new thread at interpreter shutdown"), yet the teardown needs one: msquic's
    closes block, and a stuck msquic must not hang the exit. So the thread is
    started beforehand and sleeps until exit hands it the teardown.
    """

    def __init__(self) -> None:
        self._go = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pymsquic-teardown", daemon=True)

    @classmethod
    def start(cls) -> "_TeardownWorker | None":
        worker = cls()
        try:
            worker._thread.start()
        except RuntimeError:  # msquic first opened at interpreter shutdown: tear down inline
            return None
        return worker

    def _run(self) -> None:
        self._go.wait()
        try:
            _close_all()
        finally:
            self._done.set()

    def run(self, timeout: float) -> bool:
        """Hand over the teardown; True if it finished within ``timeout`` seconds."""
        self._go.set()
        return self._done.wait(timeout)


_teardown_worker: _TeardownWorker | None = None


def _teardown() -> None:
    """At exit: _close_all() on the teardown thread, waiting at most
    _TEARDOWN_TIMEOUT so a stuck msquic never hangs the interpreter's exit.
    In a forked child: nothing (the parent's msquic state is not ours)."""
    global _torn_down
    if _forked:
        _torn_down = True
        return
    lib.pmq_hooks_enable(0)  # no Python on msquic threads from here on
    worker = _teardown_worker
    try:
        if worker is None or not worker._thread.is_alive():
            _close_all()
        elif not worker.run(_TEARDOWN_TIMEOUT):
            logger.error("msquic did not shut down within %.0f s; exiting without MsQuicClose", _TEARDOWN_TIMEOUT)
    finally:  # also after Ctrl-C here: the finalizing interpreter must not release into msquic
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
        return None if _torn_down or _forked else release

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
    if not _torn_down and not _forked:
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
        self.next_status = ffi.new("int *")  # what a read finds after this one (PMQ_READ_*)


scratch = _Scratch()


def run_deferred() -> None:
    if _forked:  # the parent's releases: msquic state this process cannot touch
        return
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
    in between, until it returns non-None; TimeoutError after ``timeout`` seconds.
    Refuses to wait inside a hook, in a forked child, and on an event loop's thread."""
    forbid_in_callback(what)
    check_not_forked(what)
    ensure_driver(what)
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
        forbid_on_loop_thread(what)
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


def forbid_on_loop_thread(what: str) -> None:
    """A blocking wait on a thread that runs an event loop would stall the loop,
    and deadlock if the awaited event depends on it: refuse, as asyncio.run()
    does inside a running loop. Called only when the call is about to wait."""
    if asyncio._get_running_loop() is not None:
        raise RuntimeError(
            f"{what} would block the event loop running on this thread; await the asyncio API "
            "instead, or make the blocking call from another thread (loop.run_in_executor)")


# ---- hooks: Python callables run on msquic's threads ----------------------

_hook_ids = itertools.count(1)
_hook_targets: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()


def register_hook_target(target: Any) -> int:
    """Return an id the native side passes back to reach ``target._run_hook``."""
    hook_id = next(_hook_ids)
    _hook_targets[hook_id] = target
    return hook_id


def _hook_failed(exc_type: type, exc: BaseException, tb: Any) -> None:
    global _interrupted_in_hook
    if (_mode == "loop" and issubclass(exc_type, KeyboardInterrupt)
            and threading.current_thread() is threading.main_thread()):
        # Loop mode runs hooks on the loop's thread, where Ctrl-C may land in one:
        # the loop's step raises it again once back from msquic, instead of losing it.
        _interrupted_in_hook = True
        return
    logger.error("pymsquic hook dispatch failed", exc_info=(exc_type, exc, tb))


_interrupted_in_hook = False


def take_interrupt_from_hook() -> bool:
    """True once after a hook on the main thread was interrupted (Ctrl-C)."""
    global _interrupted_in_hook
    interrupted, _interrupted_in_hook = _interrupted_in_hook, False
    return interrupted


@ffi.def_extern(onerror=_hook_failed)
def pmq_py_listener_hook(hook_id: int, event: int, info: Any) -> int:
    # Runs on a msquic worker thread. Returning 0 refuses a new connection.
    target = _hook_targets.get(hook_id)
    if target is None:
        return 0
    return 1 if target._run_hook(event, info) else 0
