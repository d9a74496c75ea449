"""QUIC versions (RFC 9000's v1, RFC 9369's v2) and what a handshake settled.

A client offers and accepts the versions of its ``Settings(versions=...)``, in
order of preference: it starts with the first, and msquic's compatible version
negotiation (RFC 9368) may move to another of the list. A server's versions
are process-wide in msquic 2.5.1 (msquic answers a client's first packet before
any configuration is looked at): :func:`set_server_versions`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from . import _native
from ._msquic import ffi, lib

#: QUIC version 1 (RFC 9000).
QUIC_V1 = 0x00000001
#: QUIC version 2 (RFC 9369).
QUIC_V2 = 0x6B3343CF

#: The versions pymsquic lets you choose, with their names.
VERSION_NAMES = {QUIC_V1: "QUICv1", QUIC_V2: "QUICv2"}

_MAX_VERSIONS = 16

#: TLS 1.3 cipher suites: IANA number -> name.
CIPHER_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
}

#: TLS key exchange groups (IANA "TLS Supported Groups") msquic 2.5.1 may report.
TLS_GROUPS = {
    23: "secp256r1", 24: "secp384r1", 29: "x25519", 512: "MLKEM512", 513: "MLKEM768", 514: "MLKEM1024",
    4587: "SecP256r1MLKEM768", 4588: "X25519MLKEM768", 4589: "SecP384r1MLKEM1024",
}

_TLS_VERSIONS = {0x3000: "TLSv1.3"}


def check_versions(versions: Iterable[int], what: str = "versions") -> tuple[int, ...]:
    """``versions`` as a tuple of known QUIC versions, most preferred first;
    TypeError/ValueError for anything else (empty, unknown, repeated)."""
    if isinstance(versions, (str, bytes)) or not isinstance(versions, Iterable):
        raise TypeError(f"{what} must be a sequence of QUIC versions, not {type(versions).__name__}")
    result = tuple(versions)
    if not result:
        raise ValueError(f"{what} must name at least one QUIC version")
    for version in result:
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"{what}: a QUIC version is an int (pymsquic.QUIC_V1, QUIC_V2), "
                            f"not {type(version).__name__}")
        if version not in VERSION_NAMES:
            known = ", ".join(f"{v:#010x} ({n})" for v, n in VERSION_NAMES.items())
            raise ValueError(f"{what}: unknown QUIC version {version:#010x}; msquic supports {known}")
    if len(set(result)) != len(result):
        raise ValueError(f"{what} names a version twice: {tuple(hex(v) for v in result)}")
    return result


def _read(getter: Any, *args: Any) -> tuple[int, ...] | None:
    out = ffi.new("uint32_t[]", _MAX_VERSIONS)
    count = ffi.new("uint32_t *", _MAX_VERSIONS)
    _native.check(getter(*args, out, count), "reading the QUIC version settings")
    return tuple(out[i] for i in range(count[0])) or None


def set_server_versions(versions: Iterable[int] | None) -> None:
    """The QUIC versions this process's servers accept, most preferred first
    (msquic's QUIC_PARAM_GLOBAL_VERSION_SETTINGS); None restores msquic's
    default list (v2, v1 and two older drafts). A client's first packet in
    another version gets a Version Negotiation packet listing these; a client
    that offers several compatible ones is moved to the first of this list
    (RFC 9368). Process-wide: every listener, from its next handshake on.

    Call it at start-up, before any configuration is opened (connect() and
    serve() open one each): msquic 2.5.1 frees and re-copies the version list
    of every configuration without a list of its own, without a lock, while
    its threads may be reading it for a handshake or copying it for a new
    connection. An open :class:`~pymsquic.Configuration` or a connection not
    yet released makes it raise :class:`RuntimeError` (the configurations
    connect() and serve() keep for reuse are closed first when no connection
    or listener uses them).

    msquic turns its version negotiation extension on with the first call and
    has no way to turn it off again, also with None: from then on msquic
    clients of this process announce their versions too, and two msquic peers
    with default settings end up in v2 instead of v1."""
    _native.ensure_open()
    chosen = () if versions is None else check_versions(versions)
    registrations = list(_native._registrations)
    connections = [c for r in registrations for c in list(r._connections)]
    if not connections:
        _close_idle_cached_configurations(registrations)
    configurations = [c for r in registrations for c in list(r._configurations) if not c.closed]
    if configurations or connections:
        raise RuntimeError(f"set_server_versions() while {len(configurations)} configuration(s) and "
                           f"{len(connections)} connection(s) exist: msquic 2.5.1 changes their version "
                           "lists without a lock; call it at start-up, before any")
    array = ffi.new("uint32_t[]", list(chosen) or [0])
    _native.check(lib.pmq_global_set_versions(array, len(chosen)), "setting the server's QUIC versions")


def _close_idle_cached_configurations(registrations: list[Any]) -> None:
    """connect() and serve() keep their configurations for reuse; in a
    registration without connections and running listeners nothing uses them:
    close them, so that they do not stand in set_server_versions()' way."""
    from ._core.listener import ListenerState  # not at the top: it imports this module's users

    for registration in registrations:
        with registration._lock:
            if any(listener.state != ListenerState.SHUTDOWN_COMPLETE  # one not stopped may still use them
                   for listener in list(registration._listeners)):
                continue
            idle = list(registration._configuration_cache.values())
            registration._configuration_cache.clear()
        for configuration in idle:
            configuration.close()


def server_versions() -> tuple[int, ...] | None:
    """The versions set by :func:`set_server_versions`, None for msquic's defaults."""
    _native.ensure_open()
    return _read(lib.pmq_global_get_versions)


def configuration_versions(handle: Any) -> tuple[int, ...] | None:
    """The versions msquic has for a configuration, None for its defaults."""
    return _read(lib.pmq_configuration_get_versions, handle)


def apply_versions(handle: Any, versions: tuple[int, ...]) -> None:
    """Give a configuration its versions (``Settings.versions``, already checked)."""
    array = ffi.new("uint32_t[]", list(versions))
    _native.check(lib.pmq_configuration_set_versions(handle, array, len(versions)),
                  "setting the QUIC versions")


@dataclasses.dataclass(frozen=True)
class HandshakeInfo:
    """What a connection's handshake settled (``Connection.handshake_info``)."""

    #: The negotiated QUIC version: :data:`QUIC_V1` or :data:`QUIC_V2`.
    quic_version: int
    #: "TLSv1.3" (QUIC has no other).
    tls_version: str
    #: The TLS cipher suite's IANA name, e.g. "TLS_AES_128_GCM_SHA256".
    cipher_suite: str
    #: Its IANA number, e.g. 0x1301.
    cipher_suite_id: int
    #: The key exchange group's name, e.g. "x25519"; None if msquic could not tell.
    group: str | None
    #: Its IANA number (0 if unknown).
    group_id: int

    @property
    def quic_version_name(self) -> str:
        """"QUICv1", "QUICv2" (or the number in hex for a version pymsquic does not name)."""
        return VERSION_NAMES.get(self.quic_version, f"{self.quic_version:#010x}")

    @classmethod
    def _from_native(cls, native: Any) -> HandshakeInfo | None:
        if not native.known:
            return None
        suite = int(native.cipher_suite)
        group = int(native.tls_group)
        return cls(
            quic_version=int(native.quic_version),
            tls_version=_TLS_VERSIONS.get(int(native.tls_version), f"{int(native.tls_version):#x}"),
            cipher_suite=CIPHER_SUITES.get(suite, f"{suite:#06x}"),
            cipher_suite_id=suite,
            group=TLS_GROUPS.get(group, f"{group}" if group else None),
            group_id=group,
        )
