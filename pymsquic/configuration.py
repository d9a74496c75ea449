"""Configuration: ALPN, settings and TLS credentials, as one msquic configuration handle."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import ipaddress
import os
import threading
import weakref
from typing import Any, Iterable, Sequence, Union

from . import _native
from ._core.certificates import VerifyCallback, VerifyLike, check_mode, check_verify_callable, verify_default
from ._msquic import ffi, lib
from .errors import QuicError
from .registration import Registration
from .resumption import ResumptionLevel, TicketKey, TicketKeys, apply_ticket_keys, check_ticket_keys
from .versions import apply_versions, check_versions, configuration_versions

AlpnLike = Union[str, bytes, Sequence[Union[str, bytes]]]

_MAX_ALPNS = 32


def encode_alpns(alpn: AlpnLike) -> bytes:
    """ALPN protocol ids as a TLS wire-format list; each id 1 to 255 bytes."""
    if isinstance(alpn, (str, bytes)):
        alpn = [alpn]
    elif not isinstance(alpn, Sequence):
        raise TypeError(f"alpn must be a str, bytes or a sequence of them, not {type(alpn).__name__}")
    if not alpn:
        raise ValueError("alpn must name at least one protocol")
    if len(alpn) > _MAX_ALPNS:
        raise ValueError(f"at most {_MAX_ALPNS} ALPN ids are supported, got {len(alpn)}")
    wire = bytearray()
    for name in alpn:
        if isinstance(name, str):
            name = name.encode()
        elif not isinstance(name, bytes):
            raise TypeError(f"ALPN ids must be str or bytes, not {type(name).__name__}")
        if not 1 <= len(name) <= 255:
            raise ValueError(f"ALPN id must be 1 to 255 bytes long, got {len(name)}")
        wire.append(len(name))
        wire += name
    return bytes(wire)


def decode_alpns(wire: bytes) -> tuple[str, ...]:
    names = []
    i = 0
    while i < len(wire):
        n = wire[i]
        names.append(wire[i + 1 : i + 1 + n].decode("utf-8", "surrogateescape"))
        i += 1 + n
    return tuple(names)


_CONGESTION = {"cubic": 0, "bbr": 1}
#: Stream scheduling schemes (Settings.stream_scheduling) and msquic's values.
STREAM_SCHEDULING = {"round_robin": lib.PMQ_SCHEDULING_ROUND_ROBIN, "fifo": lib.PMQ_SCHEDULING_FIFO}

# Settings field -> (PMQ_SET_* bit, largest value)
_SETTING_FIELDS = {
    "idle_timeout_ms": (lib.PMQ_SET_IDLE_TIMEOUT, 2**62 - 1),
    "handshake_idle_timeout_ms": (lib.PMQ_SET_HANDSHAKE_IDLE_TIMEOUT, 2**62 - 1),
    "keep_alive_interval_ms": (lib.PMQ_SET_KEEP_ALIVE_INTERVAL, 2**32 - 1),
    "disconnect_timeout_ms": (lib.PMQ_SET_DISCONNECT_TIMEOUT, 600_000),
    "stream_recv_window_default": (lib.PMQ_SET_STREAM_RECV_WINDOW, 2**32 - 1),
    "conn_flow_control_window": (lib.PMQ_SET_CONN_FLOW_CONTROL_WINDOW, 2**32 - 1),
    "max_ack_delay_ms": (lib.PMQ_SET_MAX_ACK_DELAY, 2**14 - 1),
    "initial_rtt_ms": (lib.PMQ_SET_INITIAL_RTT, 2**32 - 1),
    "peer_bidi_stream_count": (lib.PMQ_SET_PEER_BIDI_STREAM_COUNT, 2**16 - 1),
    "peer_unidi_stream_count": (lib.PMQ_SET_PEER_UNIDI_STREAM_COUNT, 2**16 - 1),
}
_SETTING_FLAGS = {
    "datagram_receive_enabled": lib.PMQ_SET_DATAGRAM_RECEIVE_ENABLED,
    "send_buffering_enabled": lib.PMQ_SET_SEND_BUFFERING_ENABLED,
    "pacing_enabled": lib.PMQ_SET_PACING_ENABLED,
    "migration_enabled": lib.PMQ_SET_MIGRATION_ENABLED,
}

# Transport settings (native/transport.c), in pmq_settings.transport_set:
# field -> (PMQ_TSET_* bit, smallest, largest, must be a power of two)
_TRANSPORT_FIELDS = {
    "max_bytes_per_key": (lib.PMQ_TSET_MAX_BYTES_PER_KEY, 1, 0x4000000000, False),
    # At least 1 s: msquic 2.5.1 starts a new search on every send after the timeout, 0 included.
    "mtu_discovery_search_complete_timeout_us": (lib.PMQ_TSET_MTU_DISCOVERY_SEARCH_COMPLETE_TIMEOUT, 1_000_000,
                                                 2**62 - 1, False),
    "send_idle_timeout_ms": (lib.PMQ_TSET_SEND_IDLE_TIMEOUT, 0, 2**32 - 1, False),
    # msquic multiplies it by the packet size (<= 1500) in a uint32: keep the product in range.
    "initial_window_packets": (lib.PMQ_TSET_INITIAL_WINDOW_PACKETS, 1, (2**32 - 1) // 1500, False),
    "dest_cid_update_idle_timeout_ms": (lib.PMQ_TSET_DEST_CID_UPDATE_IDLE_TIMEOUT, 0, 2**32 - 1, False),
    "stream_recv_buffer_default": (lib.PMQ_TSET_STREAM_RECV_BUFFER_DEFAULT, 4096, 2**31, True),
    "stream_recv_window_bidi_local_default": (lib.PMQ_TSET_STREAM_RECV_WINDOW_BIDI_LOCAL, 1, 2**31, True),
    "stream_recv_window_bidi_remote_default": (lib.PMQ_TSET_STREAM_RECV_WINDOW_BIDI_REMOTE, 1, 2**31, True),
    "stream_recv_window_unidi_default": (lib.PMQ_TSET_STREAM_RECV_WINDOW_UNIDI, 1, 2**31, True),
    "tls_client_max_send_buffer": (lib.PMQ_TSET_TLS_CLIENT_MAX_SEND_BUFFER, 0, 2**32 - 1, False),
    # msquic's bounds: an IPv6 packet that holds a 1200-byte QUIC Initial, and Ethernet's 1500.
    "minimum_mtu": (lib.PMQ_TSET_MINIMUM_MTU, 1248, 1500, False),
    "maximum_mtu": (lib.PMQ_TSET_MAXIMUM_MTU, 1248, 1500, False),
    "mtu_discovery_missing_probe_count": (lib.PMQ_TSET_MTU_DISCOVERY_MISSING_PROBE_COUNT, 1, 255, False),
}
_TRANSPORT_FLAGS = {
    "ecn_enabled": lib.PMQ_TSET_ECN_ENABLED,
    "grease_quic_bit_enabled": lib.PMQ_TSET_GREASE_QUIC_BIT_ENABLED,
}


def _check_transport_settings(settings: "Settings") -> None:
    """Settings.__post_init__ for the transport fields: TypeError or ValueError naming the field."""
    for name, (_, smallest, largest, power_of_two) in _TRANSPORT_FIELDS.items():
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"Settings.{name} must be an int, not {type(value).__name__}")
        if not smallest <= value <= largest:
            raise ValueError(f"Settings.{name}={value} is out of range {smallest}-{largest}")
        if power_of_two and value & (value - 1):
            raise ValueError(f"Settings.{name}={value} must be a power of two")
    for name in _TRANSPORT_FLAGS:
        value = getattr(settings, name)
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"Settings.{name} must be a bool, not {type(value).__name__}")
    low, high = settings.minimum_mtu, settings.maximum_mtu
    if low is not None and high is not None and low > high:
        raise ValueError(f"Settings.minimum_mtu={low} is above Settings.maximum_mtu={high}")
    _check_stream_recv_buffer(settings)


_DEFAULT_STREAM_WINDOW = 0x10000  # QUIC_DEFAULT_STREAM_FC_WINDOW_SIZE


def _check_stream_recv_buffer(settings: "Settings") -> None:
    """msquic allocates stream_recv_buffer_default for every stream up front and
    (debug builds) asserts it fits the stream's receive window: it must not
    exceed any of the windows a stream can get."""
    buffer = settings.stream_recv_buffer_default
    if buffer is None:
        return
    default = settings.stream_recv_window_default
    for name in ("stream_recv_window_bidi_local_default", "stream_recv_window_bidi_remote_default",
                 "stream_recv_window_unidi_default"):
        window = getattr(settings, name)
        source = name
        if window is None:  # follows stream_recv_window_default, else msquic's default
            window, source = ((default, "stream_recv_window_default") if default is not None
                              else (_DEFAULT_STREAM_WINDOW, "msquic's default stream window"))
        if buffer > window:
            raise ValueError(f"Settings.stream_recv_buffer_default={buffer} is above {source}={window}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """msquic settings; a field left as None keeps msquic's default.

    Servers must set ``peer_bidi_stream_count``/``peer_unidi_stream_count`` for
    peers to open streams (msquic's default is 0), and both sides
    ``datagram_receive_enabled`` for datagrams.

    ``stream_scheduling`` is how a connection shares its sending between
    streams that have data: ``"round_robin"`` (pymsquic's default, also when
    None) interleaves them, so one bulk stream cannot hold up a small
    request/response beside it; ``"fifo"`` (msquic's own default) sends the
    first stream's data first, for as long as it has any. It is applied to each
    connection (QUIC_PARAM_CONN_STREAM_SCHEDULING_SCHEME), not a msquic setting;
    ``Connection.stream_scheduling`` changes it later, and ``Stream.priority``
    puts streams ahead of others whatever the scheme.

    ``versions`` are the QUIC versions a client offers and accepts, most
    preferred first: e.g. ``(pymsquic.QUIC_V2, pymsquic.QUIC_V1)`` starts in v2
    and can fall back to v1; ``(pymsquic.QUIC_V1,)`` refuses v2. None keeps
    msquic's default (start in v1, move to v2 if the server prefers it). An
    unknown version raises ValueError. Client configurations only: msquic
    2.5.1 decides a server's versions process-wide
    (:func:`pymsquic.set_server_versions`). ``Connection.quic_version`` tells
    which one a connection negotiated.
    The fields from ``ecn_enabled`` on pass through to msquic's QUIC_SETTINGS
    as they are (ECN, congestion window, MTU discovery bounds, key updates,
    stream receive windows); each comment gives msquic's default.
    ``read_settings()`` on a Configuration or a Connection reads them back.
    """

    idle_timeout_ms: int | None = None
    handshake_idle_timeout_ms: int | None = None
    peer_bidi_stream_count: int | None = None
    peer_unidi_stream_count: int | None = None
    keep_alive_interval_ms: int | None = None
    datagram_receive_enabled: bool | None = None
    disconnect_timeout_ms: int | None = None
    stream_recv_window_default: int | None = None
    conn_flow_control_window: int | None = None
    max_ack_delay_ms: int | None = None
    initial_rtt_ms: int | None = None
    congestion_control: str | None = None  # "cubic" or "bbr"
    send_buffering_enabled: bool | None = None
    pacing_enabled: bool | None = None
    migration_enabled: bool | None = None
    #: :class:`~pymsquic.ResumptionLevel` (an int 0-2 or a name works too): whether a
    #: server lets clients resume sessions and send 0-RTT data (msquic's default: none).
    server_resumption_level: ResumptionLevel | int | str | None = None
    stream_scheduling: str | None = None  # "round_robin" (None) or "fifo"
    versions: tuple[int, ...] | None = None  # QUIC versions, most preferred first (client)
    # Transport: ECN, congestion, MTU discovery, keys and buffers (msquic's defaults in brackets).
    ecn_enabled: bool | None = None                      # send ECN-capable packets, react to marks [False]
    initial_window_packets: int | None = None            # initial congestion window, in packets [10]
    send_idle_timeout_ms: int | None = None              # idle time that resets the congestion window [1000]
    minimum_mtu: int | None = None                       # path MTU to start from, 1248-1500 [1288]
    maximum_mtu: int | None = None                       # largest MTU discovery probes, 1248-1500 [1500]
    mtu_discovery_search_complete_timeout_us: int | None = None  # wait before searching again [600 s]
    mtu_discovery_missing_probe_count: int | None = None  # lost probes that end a search [3]
    max_bytes_per_key: int | None = None                 # bytes before a key update, <= 2**38 [2**38]
    dest_cid_update_idle_timeout_ms: int | None = None   # idle time after which a new peer CID is used [20000]
    grease_quic_bit_enabled: bool | None = None          # grease the QUIC bit (RFC 9287) [False]
    stream_recv_buffer_default: int | None = None        # initial receive buffer per stream, >= 4096 [4096]
    stream_recv_window_bidi_local_default: int | None = None   # powers of two; each
    stream_recv_window_bidi_remote_default: int | None = None  # defaults to stream_recv_window_default
    stream_recv_window_unidi_default: int | None = None
    tls_client_max_send_buffer: int | None = None        # no effect in msquic 2.5.1 (read back only) [8192]

    def __post_init__(self) -> None:
        if self.server_resumption_level is not None:  # an int, a name or a ResumptionLevel
            object.__setattr__(self, "server_resumption_level", ResumptionLevel.coerce(self.server_resumption_level))
        for name, (_, largest) in _SETTING_FIELDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Settings.{name} must be an int, not {type(value).__name__}")
            if not 0 <= value <= largest:
                raise ValueError(f"Settings.{name}={value} is out of range 0-{largest}")
        for name in _SETTING_FLAGS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"Settings.{name} must be a bool, not {type(value).__name__}")
        if self.congestion_control is not None and self.congestion_control not in _CONGESTION:
            raise ValueError(f"Settings.congestion_control must be one of {sorted(_CONGESTION)}")
        if self.stream_scheduling is not None and self.stream_scheduling not in STREAM_SCHEDULING:
            raise ValueError(f"Settings.stream_scheduling must be one of {sorted(STREAM_SCHEDULING)}")
        if self.versions is not None:  # a tuple (hashable: Settings key the configuration cache)
            object.__setattr__(self, "versions", check_versions(self.versions, "Settings.versions"))
        _check_transport_settings(self)

    @property
    def stream_scheduling_scheme(self) -> int:
        """The PMQ_SCHEDULING_* value connections get: round-robin unless "fifo"."""
        return STREAM_SCHEDULING[self.stream_scheduling or "round_robin"]

    def _to_native(self) -> Any:
        native = ffi.new("pmq_settings *")
        for name, (bit, _) in _SETTING_FIELDS.items():
            value = getattr(self, name)
            if value is not None:
                native.set |= bit
                setattr(native, name, value)
        for name, bit in _SETTING_FLAGS.items():
            value = getattr(self, name)
            if value is not None:
                native.set |= bit
                setattr(native, name, int(value))
        if self.server_resumption_level is not None:
            native.set |= lib.PMQ_SET_SERVER_RESUMPTION_LEVEL
            native.server_resumption_level = int(self.server_resumption_level)
        if self.congestion_control is not None:
            native.set |= lib.PMQ_SET_CONGESTION_CONTROL
            native.congestion_control = _CONGESTION[self.congestion_control]
        for name, bit in [(n, v[0]) for n, v in _TRANSPORT_FIELDS.items()] + list(_TRANSPORT_FLAGS.items()):
            value = getattr(self, name)
            if value is not None:
                native.transport_set |= bit
                setattr(native, name, int(value))
        return native

    @classmethod
    def _from_native(cls, native: Any, only_set: bool) -> "Settings":
        """The inverse of _to_native for a record msquic filled (pmq_configuration_get_settings)."""
        values: dict[str, Any] = {}
        for name, (bit, _) in _SETTING_FIELDS.items():
            if not only_set or native.set & bit:
                values[name] = int(getattr(native, name))
        for name, bit in _SETTING_FLAGS.items():
            if not only_set or native.set & bit:
                values[name] = bool(getattr(native, name))
        if not only_set or native.set & lib.PMQ_SET_SERVER_RESUMPTION_LEVEL:
            values["server_resumption_level"] = ResumptionLevel.coerce(int(native.server_resumption_level))
        if not only_set or native.set & lib.PMQ_SET_CONGESTION_CONTROL:
            algorithm = int(native.congestion_control)
            names = {number: name for name, number in _CONGESTION.items()}
            if algorithm not in names:
                raise QuicError(f"msquic reports congestion control algorithm {algorithm}, "
                                "which pymsquic does not know")
            values["congestion_control"] = names[algorithm]
        for name, (bit, *_) in _TRANSPORT_FIELDS.items():
            if not only_set or native.transport_set & bit:
                values[name] = int(getattr(native, name))
        for name, bit in _TRANSPORT_FLAGS.items():
            if not only_set or native.transport_set & bit:
                values[name] = bool(getattr(native, name))
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Credential:
    """TLS credentials for a :class:`Configuration`; build one with the class methods."""

    kind: int
    flags: int
    cert_file: str | None = None
    key_file: str | None = None
    password: str | None = None
    pkcs12: bytes | None = None
    ca_file: str | None = None
    certificate_pem: bytes | None = None  # the certificate, when known (self_signed)
    #: The callable that checks the peer's certificate in Python (``verify=``,
    #: ``verify_client=``), or None for msquic's own check.
    verify: VerifyCallback | None = None
    #: Server with ``verify``: refuse clients that send no certificate.
    require_client_certificate: bool = False

    def __post_init__(self) -> None:
        # msquic acts on its own chain check only without the deferral flag: a
        # deferred credential without a callable would leave nobody to decide.
        deferred = bool(self.flags & lib.PMQ_CRED_FLAG_DEFER_CERTIFICATE_VALIDATION)
        if deferred != (self.verify is not None):
            raise ValueError("a credential defers certificate validation exactly when it has a verify callable "
                             f"(flags={self.flags:#x}, verify={self.verify!r})")

    @property
    def is_client(self) -> bool:
        return bool(self.flags & lib.QUIC_CREDENTIAL_FLAG_CLIENT)

    @classmethod
    def from_files(cls, certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str],
                   password: str | None = None, *, require_client_auth: bool = False,
                   ca_file: str | os.PathLike[str] | None = None,
                   verify_client: VerifyCallback | None = None) -> "Credential":
        """Server credential from PEM certificate and key files (key optionally encrypted).

        ``require_client_auth`` asks clients for a certificate (mutual TLS),
        verified against ``ca_file`` (or the system store). ``verify_client``
        checks client certificates in Python instead (see :meth:`client`'s
        ``verify``): clients are asked for one, and with ``require_client_auth``
        a client sending none is refused (else accepted without a call): then
        ``Settings.server_resumption_level`` must stay 0, as msquic 2.5.1
        reports no certificate on a resumed handshake."""
        return cls(lib.PMQ_CRED_FILES, _server_flags(require_client_auth, ca_file, verify_client),
                   cert_file=_existing(certfile, "certfile"), key_file=_existing(keyfile, "keyfile"),
                   password=_password(password), ca_file=_optional_file(ca_file),
                   verify=verify_client, require_client_certificate=require_client_auth)

    @classmethod
    def from_pkcs12(cls, data: bytes, password: str | None = None, *,
                    require_client_auth: bool = False,
                    ca_file: str | os.PathLike[str] | None = None,
                    verify_client: VerifyCallback | None = None) -> "Credential":
        """Server credential from an in-memory PKCS#12 blob (certificate chain and key);
        the options are those of :meth:`from_files`."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"PKCS#12 data must be bytes, not {type(data).__name__}")
        if not data:
            raise ValueError("PKCS#12 data is empty")
        return cls(lib.PMQ_CRED_PKCS12, _server_flags(require_client_auth, ca_file, verify_client),
                   pkcs12=bytes(data), password=_password(password), ca_file=_optional_file(ca_file),
                   verify=verify_client, require_client_certificate=require_client_auth)

    @classmethod
    def client(cls, verify: VerifyLike = True, ca_file: str | os.PathLike[str] | None = None, *,
               certfile: str | os.PathLike[str] | None = None, keyfile: str | os.PathLike[str] | None = None,
               password: str | None = None) -> "Credential":
        """Client credential. Servers are verified against the system CA store, or
        ``ca_file`` (a private CA), and the certificate must be valid for the
        server name (checked in Python, :func:`~pymsquic.server_name_matches`:
        msquic 2.5.1 does not check it); ``verify=False`` skips both (tests only).
        ``certfile``/``keyfile`` present a client certificate (mutual TLS).

        ``verify`` may instead be a callable that decides in Python:
        ``verify(check)`` gets a :class:`~pymsquic.CertificateCheck` (the
        server's chain as DER, leaf first, the server name, and whether msquic
        verified the chain against ``ca_file`` or the system store) and returns
        True to accept. It alone decides, after msquic's own chain check:
        pinning a self-signed certificate by its fingerprint works. It replaces
        the default check, the name check too: a callable that wants the chain
        and the name checked returns ``check.chain_verified and
        check.name_matches()`` (and its own conditions). Anything
        but True (False, None, another object, an awaitable), or an exception
        (logged on the connection's logger), rejects: the server
        gets the TLS alert bad_certificate and ``connect`` raises
        :class:`~pymsquic.HandshakeError`. It runs in ``connect``, on the
        thread (or event loop) that waits for the handshake, never on msquic's:
        keep it quick (on an event loop it holds up everything else). An
        ``async def`` function is refused (TypeError): it would never be awaited.
        """
        flags = lib.QUIC_CREDENTIAL_FLAG_CLIENT | _ca_flag(ca_file) | _PEER_CERTIFICATE_FLAGS
        callback: VerifyCallback | None = None
        if callable(verify):
            check_verify_callable(verify, "verify")
        if verify is True or callable(verify):
            # True: msquic's chain check plus the name check, in Python through the same deferred path.
            callback = verify_default if verify is True else verify
            flags |= lib.PMQ_CRED_FLAG_DEFER_CERTIFICATE_VALIDATION
        elif verify is not False:
            raise TypeError(f"verify must be a bool or a callable, not {type(verify).__name__}")
        else:
            flags |= lib.QUIC_CREDENTIAL_FLAG_NO_CERTIFICATE_VALIDATION
        if (certfile is None) != (keyfile is None):
            raise ValueError("a client certificate needs both certfile and keyfile")
        if certfile is not None and keyfile is not None:
            return cls(lib.PMQ_CRED_FILES, flags, cert_file=_existing(certfile, "certfile"),
                       key_file=_existing(keyfile, "keyfile"), password=_password(password),
                       ca_file=_optional_file(ca_file), verify=callback)
        return cls(lib.PMQ_CRED_NONE, flags, ca_file=_optional_file(ca_file), verify=callback)

    @classmethod
    def self_signed(cls, hostnames: Iterable[str] = ("localhost", "127.0.0.1"), *,
                    days: int = 30) -> "Credential":
        """A throwaway certificate and key generated now, for demos and tests.

        ``certificate_pem`` holds the certificate: write it to a file and pass
        it as a client's ``ca_file`` to verify this server.
        """
        certificate_pem, pkcs12 = generate_self_signed(tuple(hostnames), days)
        return cls(lib.PMQ_CRED_PKCS12, 0, pkcs12=pkcs12, certificate_pem=certificate_pem)

    def requiring_client_auth(self, ca_file: str | os.PathLike[str] | None = None, *,
                              verify: VerifyCallback | None = None, required: bool = True) -> "Credential":
        """This server credential, also asking clients for certificates (mutual TLS).

        ``verify`` checks them in Python (as ``verify_client`` of
        :meth:`from_files`); ``required=False`` (only with ``verify``) also
        accepts clients that send none."""
        if self.is_client:
            raise ValueError("requiring_client_auth() is for server credentials")
        if not required and verify is None:
            raise ValueError("required=False needs verify=")
        # Recomputed, not OR-ed: a previous verify_client's deferral must not outlive it.
        flags = self.flags & ~_CLIENT_AUTH_FLAGS
        return dataclasses.replace(self, flags=flags | _server_flags(required, ca_file, verify),
                                   ca_file=_optional_file(ca_file), verify=verify,
                                   require_client_certificate=required)

    @property
    def cert_check_mode(self) -> int:
        """The native PMQ_CERT_CHECK_* mode of this credential."""
        return check_mode(self.verify, self.require_client_certificate or self.is_client)

    def _to_native(self, keep: list[Any]) -> Any:
        native = ffi.new("pmq_credential *")
        native.kind = self.kind
        native.flags = self.flags
        for field in ("cert_file", "key_file", "password", "ca_file"):
            value = getattr(self, field)
            if value is not None:
                text = ffi.new("char[]", os.fsencode(value))
                keep.append(text)
                setattr(native, field, text)
        if self.pkcs12 is not None:
            blob = ffi.from_buffer(self.pkcs12)
            keep.append(blob)
            native.pkcs12 = blob
            native.pkcs12_len = len(self.pkcs12)
        return native

    def __repr__(self) -> str:  # never show key material or passwords
        kind = {lib.PMQ_CRED_NONE: "none", lib.PMQ_CRED_FILES: "files", lib.PMQ_CRED_PKCS12: "pkcs12"}[self.kind]
        return f"<Credential {kind} {'client' if self.is_client else 'server'} flags={self.flags:#x}>"


def _existing(path: str | os.PathLike[str], what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path, not {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    return path


def _optional_file(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else _existing(path, "ca_file")


def _ca_flag(ca_file: object) -> int:
    return lib.QUIC_CREDENTIAL_FLAG_SET_CA_CERTIFICATE_FILE if ca_file is not None else 0


# The peer's certificate is copied (as DER) for Connection.peer_certificate.
_PEER_CERTIFICATE_FLAGS = (lib.QUIC_CREDENTIAL_FLAG_INDICATE_CERTIFICATE_RECEIVED
                           | lib.QUIC_CREDENTIAL_FLAG_USE_PORTABLE_CERTIFICATES)


# What _server_flags may add: requiring_client_auth() clears them before recomputing.
_CLIENT_AUTH_FLAGS = (lib.QUIC_CREDENTIAL_FLAG_REQUIRE_CLIENT_AUTHENTICATION
                      | lib.QUIC_CREDENTIAL_FLAG_SET_CA_CERTIFICATE_FILE | _PEER_CERTIFICATE_FLAGS
                      | lib.PMQ_CRED_FLAG_DEFER_CERTIFICATE_VALIDATION)


def _server_flags(require_client_auth: bool, ca_file: object, verify: object = None) -> int:
    if verify is not None:
        check_verify_callable(verify, "verify_client")
        # Asks for a certificate (msquic's REQUIRE_CLIENT_AUTHENTICATION); deferred,
        # a client sending none is decided by the check mode (certificates.c).
        return (lib.QUIC_CREDENTIAL_FLAG_REQUIRE_CLIENT_AUTHENTICATION | _ca_flag(ca_file) | _PEER_CERTIFICATE_FLAGS
                | lib.PMQ_CRED_FLAG_DEFER_CERTIFICATE_VALIDATION)
    if not require_client_auth:
        return _ca_flag(ca_file)
    return lib.QUIC_CREDENTIAL_FLAG_REQUIRE_CLIENT_AUTHENTICATION | _ca_flag(ca_file) | _PEER_CERTIFICATE_FLAGS


def _password(password: str | None) -> str | None:
    if password is not None and not isinstance(password, str):
        raise TypeError(f"password must be a str, not {type(password).__name__}")
    return password


def generate_self_signed(hostnames: tuple[str, ...], days: int) -> tuple[bytes, bytes]:
    """Return (certificate PEM, unencrypted PKCS#12) for a fresh EC P-256 key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

    if not hostnames:
        raise ValueError("self_signed needs at least one hostname")
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    blob = pkcs12.serialize_key_and_certificates(b"pymsquic", key, cert, None, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), blob


def _check_resumption(credential: Credential, settings: Settings) -> None:
    """ValueError for session resumption on a server whose ``verify_client`` requires a
    certificate: msquic 2.5.1 reports no client certificate on a resumed handshake
    (no PEER_CERTIFICATE_RECEIVED), so every resumed client would be refused."""
    if (not credential.is_client and credential.verify is not None and credential.require_client_certificate
            and ResumptionLevel.coerce(settings.server_resumption_level or 0) > ResumptionLevel.NONE):
        raise ValueError("Settings.server_resumption_level > 0 cannot go with a verify_client that requires a "
                         "client certificate: msquic 2.5.1 reports no certificate on a resumed handshake, so "
                         "resumed clients could not be checked; use server_resumption_level=0, or "
                         "required=False (then a resumed client is accepted without a check)")


class Configuration:
    """ALPN ids, settings and a credential, loaded into msquic for one registration.

    A server passes it to a :class:`~pymsquic.Listener`; a client to
    :meth:`~pymsquic.Connection.connect`. ``close()`` (or ``with``) releases it;
    connections that use it keep msquic's own reference. A server's
    ``ticket_keys`` (one :class:`~pymsquic.TicketKey`, or a list of one: msquic
    2.5.1 does not rotate keys) encrypt its session tickets, so that servers
    sharing them resume each other's sessions.
    """

    def __init__(self, registration: Registration, alpn: AlpnLike, credential: Credential,
                 settings: Settings | None = None, *, ticket_keys: TicketKeys | None = None) -> None:
        if not isinstance(registration, Registration):
            raise TypeError(f"registration must be a Registration, not {type(registration).__name__}")
        if not isinstance(credential, Credential):
            raise TypeError(f"credential must be a Credential, not {type(credential).__name__}")
        if settings is None:
            settings = Settings()
        elif not isinstance(settings, Settings):
            raise TypeError(f"settings must be a Settings, not {type(settings).__name__}")
        if settings.versions is not None and not credential.is_client:
            raise ValueError("Settings.versions is for clients: msquic 2.5.1 decides a server's QUIC versions "
                             "process-wide, with pymsquic.set_server_versions()")
        _check_resumption(credential, settings)
        self.registration = registration
        self.alpn_wire = encode_alpns(alpn)
        self.alpns = decode_alpns(self.alpn_wire)
        self.credential = credential
        self.settings = settings
        keep: list[Any] = []
        handle = ffi.new("HQUIC *")
        status = lib.pmq_configuration_open(
            registration.handle, self.alpn_wire, len(self.alpn_wire), settings._to_native(),
            credential._to_native(keep), handle,
        )
        _native.check(status, "loading the configuration")
        self._handle = handle[0]
        self._releaser = _native.Releaser(self, lib.pmq_api.ConfigurationClose, self._handle)
        # Early-data clients whose ConnectionStart is still deferred (connect(early_data=True)):
        # msquic takes its own reference to the configuration only at that start.
        self._deferred_starts: weakref.WeakSet[Any] = weakref.WeakSet()
        self._deferred_lock = threading.Lock()  # connections of several threads add and leave
        if settings.versions is not None:
            try:
                apply_versions(self._handle, settings.versions)
            except BaseException:
                self._releaser()
                raise
        registration._configurations.add(self)
        self._ticket_keys = None if ticket_keys is None else check_ticket_keys(ticket_keys)
        if self._ticket_keys is not None:
            try:
                apply_ticket_keys(self, self._ticket_keys)
            except BaseException:
                self.close()
                raise

    @property
    def handle(self) -> Any:
        """The raw HQUIC configuration."""
        if not self._releaser.alive:
            raise QuicError("configuration is closed")
        return self._handle

    def read_settings(self, *, only_set: bool = False) -> Settings:
        """msquic's view of this configuration's settings, read back with GetParam.

        Each field msquic has holds the value msquic uses: the one given in
        ``settings`` or, for a field left None there, msquic's default (e.g.
        ``idle_timeout_ms`` 30000, ``handshake_idle_timeout_ms`` 10000,
        ``peer_bidi_stream_count`` 0). With ``only_set=True`` the fields msquic
        reports as not set stay None instead, so the result equals
        ``settings`` apart from pymsquic-only fields.

        ``stream_scheduling`` is pymsquic's own: it is applied to each
        connection (QUIC_PARAM_CONN_STREAM_SCHEDULING_SCHEME), msquic's
        configuration has no such setting, so it is always None here; the
        value given is in ``self.settings``. Raises :class:`QuicError` once
        the configuration is closed.
        """
        native = ffi.new("pmq_settings *")
        # Answered inline by msquic (no worker round trip), so no lock is at stake.
        _native.check(lib.pmq_configuration_get_settings(self.handle, native), "reading the settings back")
        settings = Settings._from_native(native, only_set)
        versions = configuration_versions(self.handle)  # None: msquic's defaults
        return settings if versions is None else dataclasses.replace(settings, versions=versions)

    @property
    def closed(self) -> bool:
        return not self._releaser.alive

    def close(self) -> None:
        """Release the configuration; safe to call more than once. Early-data
        connections still waiting for their deferred start start first, so that
        what they wrote is sent (msquic holds the configuration once started)."""
        with self._deferred_lock:
            waiting = list(self._deferred_starts)
        for conn in waiting:
            conn._start_deferred()
        self._releaser()

    def _defer_start(self, conn: Any, deferred: bool) -> None:
        """Record (or forget) a connection whose ConnectionStart waits: see close()."""
        with self._deferred_lock:
            if deferred:
                self._deferred_starts.add(conn)
            else:
                self._deferred_starts.discard(conn)

    def __enter__(self) -> "Configuration":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Configuration alpn={list(self.alpns)} {self.credential!r}>"

    _loaded_by: Configuration | None = None  # a view's (_for_verify) owner of the handle

    def _for_verify(self, credential: Credential) -> "Configuration":
        """This loaded configuration for ``credential``, which differs from ours only
        by its verify callable: the same msquic handle (closing either closes it),
        checks run with ``credential.verify``."""
        view = copy.copy(self)
        view.credential = credential
        view._loaded_by = self  # the handle's owner: its collection would release the handle
        return view

    @property
    def ticket_keys(self) -> tuple[TicketKey, ...] | None:
        """The shared session-ticket keys given as ``ticket_keys=``, or None (a
        random key of msquic's). Read-only: msquic takes keys once, at creation."""
        return self._ticket_keys
