"""Registration: msquic's top-level object that owns execution and every other handle."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import Any

from . import _native
from ._msquic import ffi, lib
from .errors import QuicError

logger = logging.getLogger("pymsquic")

# Loop mode: how long Registration.close() waits for each connection's shutdown.
_LOOP_CLOSE_WAIT = 30.0

_PROFILES = {
    "low_latency": lib.QUIC_EXECUTION_PROFILE_LOW_LATENCY,
    "max_throughput": lib.QUIC_EXECUTION_PROFILE_TYPE_MAX_THROUGHPUT,
    "scavenger": lib.QUIC_EXECUTION_PROFILE_TYPE_SCAVENGER,
    "real_time": lib.QUIC_EXECUTION_PROFILE_TYPE_REAL_TIME,
}


class Registration:
    """An msquic registration: the execution context every listener, configuration
    and connection belongs to.

    ``profile`` is one of ``"low_latency"`` (default), ``"max_throughput"``,
    ``"scavenger"`` and ``"real_time"``. Use it as a context manager, or call
    :meth:`close`, which closes its listeners, shuts down its connections and
    waits until msquic released them all.
    """

    def __init__(self, app_name: str = "pymsquic", profile: str = "low_latency") -> None:
        if not isinstance(app_name, str):
            raise TypeError(f"app_name must be a str, not {type(app_name).__name__}")
        if profile not in _PROFILES:
            raise ValueError(f"profile must be one of {sorted(_PROFILES)}, not {profile!r}")
        _native.ensure_open()
        self.app_name = app_name
        self.profile = profile
        config = ffi.new("QUIC_REGISTRATION_CONFIG *")
        name = ffi.new("char[]", app_name.encode())
        config.AppName = name
        config.ExecutionProfile = _PROFILES[profile]
        handle = ffi.new("HQUIC *")
        _native.check(lib.pmq_api.RegistrationOpen(config, handle), "RegistrationOpen")
        self._handle = handle[0]
        # Children close before the registration does (RegistrationClose waits for them).
        self._listeners: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._configurations: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._connections: "weakref.WeakSet[Any]" = weakref.WeakSet()  # told when the registration closes
        # Reentrant: a connection collected while it is held leaves the set under it.
        self._connections_lock = threading.RLock()
        self._lock = threading.Lock()
        self._configuration_cache: dict[Any, Any] = {}  # for serve()/connect()
        self._releaser = _native.Releaser(self, _close_registration, self._handle, self._listeners,
                                            self._configurations, self._connections, self._connections_lock)
        _native.track_registration(self)

    @property
    def handle(self) -> Any:
        """The raw HQUIC, for calls through ``pymsquic._msquic.lib.pmq_api``."""
        _native.check_not_forked("using a Registration")
        if self.closed:
            raise QuicError("registration is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return not self._releaser.alive

    def _track_connection(self, connection: Any) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def _forget_connection(self, connection: Any) -> None:
        # Before its native connection is released: the close must not touch it then.
        with self._connections_lock:
            self._connections.discard(connection)

    def close(self) -> None:
        """Close listeners, shut down connections, close configurations, then the registration.

        Blocks until msquic has released every connection (their shutdown
        completes; closing never waits for a peer beyond msquic's own timers).
        In a child forked after msquic started, closing does nothing: the
        msquic state belongs to the parent.
        Afterwards the connections' errors say they were closed locally
        (``close_reason.by_app``, "its registration was closed").
        """
        _native.forbid_in_callback("Registration.close()")
        _native.run_deferred()
        self._releaser()

    def __enter__(self) -> "Registration":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Registration {self.app_name!r} {self.profile} {state}>"


_default: Registration | None = None
_default_lock = threading.Lock()


def default_registration() -> Registration:
    """The process-wide registration that ``serve``/``connect`` use when given none.
    Created on first use, closed at interpreter exit."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Registration("pymsquic")
        return _default


def _close_registration(handle: Any, listeners: "weakref.WeakSet[Any]", configurations: "weakref.WeakSet[Any]",
                        connections: "weakref.WeakSet[Any]", lock: "threading.RLock") -> None:
    for listener in list(listeners):
        listener._release()  # either world: asyncio.Listener.close() is a coroutine
    with lock:  # no connection is released meanwhile (see _forget_connection)
        for connection in list(connections):
            # The registration's shutdown is their first: errors then say "closed locally".
            lib.pmq_conn_registration_closing(connection._conn)
    lib.pmq_api.RegistrationShutdown(handle, lib.QUIC_CONNECTION_SHUTDOWN_FLAG_NONE, 0)
    for configuration in list(configurations):
        configuration.close()
    if _native.loop_mode():
        if asyncio._get_running_loop() is None:
            # No event loop steps msquic on this thread: wait, as RegistrationClose
            # would, while the driver thread finishes the connections' shutdowns.
            for connection in list(connections):
                try:
                    _native.wait_blocking(connection._native_obj, connection._closed_now, _LOOP_CLOSE_WAIT,
                                          "Registration.close()")
                except TimeoutError:
                    logger.warning("%r not closed %.0f s after its registration", connection, _LOOP_CLOSE_WAIT)
        # msquic 2.5.1 reads freed memory when polled after RegistrationClose: the
        # close waits until the last poll, at exit (pymsquic.execution).
        if not lib.pmq_execution_park_registration(handle):
            raise MemoryError("cannot park the registration until exit")
        return
    lib.pmq_api.RegistrationClose(handle)
