"""pymsquic: Python binding to Microsoft's msquic.

Two worlds with the same names: :mod:`pymsquic.asyncio` (coroutines) and
:mod:`pymsquic.sync` (threads), each with ``serve``, ``connect``, ``Server``,
``Listener``, ``Connection`` and ``Stream``. ``pymsquic.serve`` and
``pymsquic.connect`` are the asyncio ones. What does not wait is here, shared
by both: :class:`Registration`, :class:`Configuration` (with :class:`Settings`
and :class:`Credential`), the errors, the statistics records,
:func:`msquic_version`.

Layers, bottom up: ``native/`` (C trampolines on msquic's threads),
``pymsquic._msquic`` (the cffi module), ``_native`` (library lifetime,
blocking waits, hooks), ``_core`` (state and non-blocking steps), then
``asyncio`` and ``sync``.
"""

from __future__ import annotations

from . import _native, asyncio, sync
from ._core.certificates import CertificateCheck, VerifyCallback, server_name_matches
from ._core.connection import ConnectionStats
from ._core.listener import (
    ListenerState,
    ListenerStats,
    NewConnectionHook,
    NewConnectionInfo,
    StopCompleteHook,
    retry_memory_limit,
    set_retry_memory_limit,
)
from ._core.server import DEFAULT_SETTINGS
from ._msquic import ffi, lib
from .addresses import Address
from .asyncio import connect, serve
from .configuration import Configuration, Credential, Settings
from .errors import (
    EXCEPTION_ERROR_CODE,
    AlpnMismatch,
    AlreadyStarted,
    ConnectionClosed,
    ConnectionRefused,
    DatagramQueueFull,
    Failed,
    Finished,
    ForkedProcessError,
    HandshakeError,
    HookContextError,
    IdleTimeout,
    IncompleteReadError,
    LimitOverrunError,
    ListenError,
    NotStarted,
    QuicError,
    StreamError,
    StreamReset,
    StreamStopped,
    Unreachable,
    VersionNegotiationError,
    status_name,
    tls_alert_name,
)
from .execution import execution_mode, set_execution_mode
from .keylog import KeyLog
from .registration import Registration, default_registration
from .resumption import (
    ResumptionLevel,
    SessionTicketHandler,
    TicketKey,
    load_balancing_mode,
    set_load_balancing_mode,
    set_stateless_reset_key,
)
from .statistics import StreamStats, perf_counters
from .versions import QUIC_V1, QUIC_V2, HandshakeInfo, server_versions, set_server_versions

__version__ = "0.1.0"


def msquic_version() -> str:
    """The version the loaded libmsquic reports (QUIC_PARAM_GLOBAL_LIBRARY_VERSION), e.g. "2.5.1"."""
    _native.ensure_open()
    version = ffi.new("uint32_t[4]")
    size = ffi.new("uint32_t *", ffi.sizeof(version))
    _native.check(lib.pmq_api.GetParam(ffi.NULL, lib.QUIC_PARAM_GLOBAL_LIBRARY_VERSION, size, version),
                  "GetParam(QUIC_PARAM_GLOBAL_LIBRARY_VERSION)")
    return f"{version[0]}.{version[1]}.{version[2]}"


__all__ = [
    "Address", "AlpnMismatch", "AlreadyStarted", "Configuration", "ConnectionClosed", "ConnectionRefused",
    "ConnectionStats", "Credential", "DEFAULT_SETTINGS", "DatagramQueueFull", "EXCEPTION_ERROR_CODE", "Failed",
    "Finished", "ForkedProcessError", "HandshakeError", "HookContextError", "IdleTimeout", "IncompleteReadError",
    "LimitOverrunError", "ListenError", "ListenerState", "ListenerStats", "NewConnectionHook", "NewConnectionInfo",
    "NotStarted", "QuicError", "Registration", "Settings", "StopCompleteHook", "StreamError", "StreamReset",
    "StreamStats", "StreamStopped", "Unreachable", "VersionNegotiationError", "asyncio", "connect",
    "default_registration",
    "msquic_version", "perf_counters", "retry_memory_limit", "serve", "set_retry_memory_limit", "status_name", "sync",
    "tls_alert_name",
    # TLS key log, QUIC versions and handshake facts
    "HandshakeInfo", "KeyLog", "QUIC_V1", "QUIC_V2", "server_versions", "set_server_versions",
    # resumption, 0-RTT and fleets (pymsquic.resumption)
    "ResumptionLevel", "SessionTicketHandler", "TicketKey", "load_balancing_mode", "set_load_balancing_mode",
    "set_stateless_reset_key",
]
__all__ += ["execution_mode", "set_execution_mode"]  # pymsquic.execution
__all__ += ["CertificateCheck", "VerifyCallback", "server_name_matches"]  # certificate checks in Python
