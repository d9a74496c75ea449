"""pymsquic: Python binding to Microsoft's msquic.

Layers, bottom up: ``pymsquic._msquic`` (cffi module over libmsquic and the C
trampolines in native/), ``_native`` (library lifetime, blocking waits, hooks),
``_bridge`` (asyncio wake-ups), then the API: :class:`Registration`,
:class:`Configuration` (with :class:`Settings` and :class:`Credential`),
:class:`Listener`, :class:`Connection`, :class:`Stream`/:class:`BlockingStream`,
and the high-level :func:`serve`/:func:`connect` (asyncio) and
:mod:`pymsquic.sync` (threads).
"""

from __future__ import annotations

from . import _native, sync
from ._msquic import ffi, lib
from .configuration import Configuration, Credential, Settings
from .connection import Connection, ConnectionStats
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
from .listener import (
    Listener,
    ListenerState,
    ListenerStats,
    NewConnectionInfo,
    retry_memory_limit,
    set_retry_memory_limit,
)
from .registration import Registration, default_registration
from .server import DEFAULT_SETTINGS, Server, connect, serve
from .stream import BlockingStream, Stream, StreamProtocol

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
    "AlpnMismatch", "AlreadyStarted", "BlockingStream", "Configuration", "Connection", "ConnectionClosed",
    "ConnectionRefused", "ConnectionStats", "Credential", "DEFAULT_SETTINGS", "DatagramQueueFull",
    "EXCEPTION_ERROR_CODE", "Failed", "Finished", "ForkedProcessError", "HandshakeError",
    "HookContextError", "IdleTimeout", "ListenError", "Listener", "ListenerState", "ListenerStats",
    "NewConnectionInfo", "NotStarted", "QuicError", "Registration", "Server", "Settings", "Stream",
    "StreamError", "StreamProtocol", "StreamReset", "StreamStopped", "Unreachable",
    "VersionNegotiationError", "connect", "default_registration", "msquic_version", "retry_memory_limit",
    "serve", "set_retry_memory_limit", "status_name", "sync", "tls_alert_name",
]
