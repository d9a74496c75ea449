"""Session resumption, 0-RTT, shared ticket keys and a fleet of servers.

Client: ``connect(..., session_ticket=..., early_data=..., on_session_ticket=...)``
in both worlds, and on the connection :attr:`~ResumptionMixin.session_ticket`,
:attr:`~ResumptionMixin.session_resumed`, :attr:`~ResumptionMixin.early_data_accepted`.
Server: ``Settings(server_resumption_level=...)`` (:class:`ResumptionLevel`),
:meth:`~ResumptionMixin.send_resumption_ticket`,
:attr:`~ResumptionMixin.resumption_app_data`, and :class:`TicketKey` shared by
servers (``ticket_keys=`` of ``serve`` and :class:`~pymsquic.Configuration`).
Fleet: :func:`set_load_balancing_mode`, :func:`set_stateless_reset_key`.

0-RTT data can be replayed: an attacker who captured the client's first
flight can send it to the server again (to the same or another server of the
fleet), and the server acts on it again. Send as early data only requests that
are safe to repeat (idempotent, as HTTP's GET), never a payment or a write.
At RESUME_AND_ZERO_RTT a server's handler gets such a request before the
handshake completed (``Connection.accepted_early``): a replayed flight is
acted on and answered although its handshake then fails.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, Union

from . import _native
from ._buffers import BufferLike, c_buffer
from ._msquic import ffi, lib
from .errors import QuicError, failed

if TYPE_CHECKING:
    from .configuration import Configuration

logger = logging.getLogger("pymsquic")

#: The callback ``connect(on_session_ticket=...)`` takes: each ticket's bytes.
SessionTicketHandler = Callable[[bytes], None]


class ResumptionLevel(enum.IntEnum):
    """``Settings.server_resumption_level`` (msquic's QUIC_SERVER_RESUMPTION_LEVEL).

    msquic 2.5.1 issues every ticket allowing 0-RTT and accepts early data on
    every resumption at both RESUME and RESUME_AND_ZERO_RTT (it does not act on
    the difference); only NONE refuses both. Names work too: ``"none"``,
    ``"resume"``, ``"resume_and_zero_rtt"``."""

    NONE = 0
    RESUME = 1
    RESUME_AND_ZERO_RTT = 2

    @classmethod
    def coerce(cls, value: object) -> "ResumptionLevel":
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ValueError(f"server_resumption_level must be one of "
                                 f"{[m.name.lower() for m in cls]} or 0-2, not {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"Settings.server_resumption_level must be an int, str or ResumptionLevel, "
                            f"not {type(value).__name__}")
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"Settings.server_resumption_level={value} is out of range 0-2") from None


# ---- ticket keys --------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class TicketKey:
    """A session-ticket encryption key (QUIC_TICKET_KEY_CONFIG).

    Servers given the same key (``ticket_keys=``) resume each other's tickets;
    without one, each server process encrypts its tickets with a random key of
    its own, and a ticket resumes only on the process that issued it. ``id``
    (16 bytes) names the key in every ticket; ``material`` is the secret, 32 to
    64 bytes (msquic 2.5.1 uses the first 32, as the AES-256 key and the HMAC
    key both). Keep it as secret as a private key: whoever has it can decrypt
    every ticket, and the TLS secrets of resumed sessions."""

    id: bytes
    material: bytes

    def __post_init__(self) -> None:
        for name, value in (("id", self.id), ("material", self.material)):
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"TicketKey.{name} must be bytes, not {type(value).__name__}")
        if len(self.id) != 16:
            raise ValueError(f"TicketKey.id must be 16 bytes, not {len(self.id)}")
        if not 32 <= len(self.material) <= 64:
            raise ValueError(f"TicketKey.material must be 32 to 64 bytes, not {len(self.material)}")
        object.__setattr__(self, "id", bytes(self.id))
        object.__setattr__(self, "material", bytes(self.material))

    @classmethod
    def generate(cls) -> "TicketKey":
        """A fresh random key (os.urandom): a random id and 64 bytes of material."""
        return cls(os.urandom(16), os.urandom(64))

    def __repr__(self) -> str:  # never show the material
        return f"<TicketKey id={self.id.hex()}>"


TicketKeys = Union[TicketKey, Sequence[TicketKey]]


def check_ticket_keys(keys: TicketKeys) -> tuple[TicketKey, ...]:
    """``ticket_keys=`` as a tuple of one key: msquic 2.5.1 takes up to 16 but
    uses only the first, so a second one (a key rotation) would silently do
    nothing: refused."""
    if isinstance(keys, TicketKey):
        return (keys,)
    if not isinstance(keys, (list, tuple)):
        raise TypeError(f"ticket_keys must be a TicketKey or a sequence of them, not {type(keys).__name__}")
    for key in keys:
        if not isinstance(key, TicketKey):
            raise TypeError(f"ticket_keys must hold TicketKey objects, not {type(key).__name__}")
    if len(keys) != 1:
        raise ValueError(f"ticket_keys must hold exactly one key, not {len(keys)}: msquic 2.5.1 encrypts "
                         "and decrypts with the first key only (no key rotation)")
    return tuple(keys)


def apply_ticket_keys(configuration: "Configuration", keys: Iterable[TicketKey]) -> None:
    """QUIC_PARAM_CONFIGURATION_TICKET_KEYS on a server configuration."""
    keys = tuple(keys)
    native = ffi.new("pmq_ticket_key[]", len(keys))
    for slot, key in zip(native, keys):
        ffi.memmove(slot.id, key.id, 16)
        ffi.memmove(slot.material, key.material, len(key.material))
        slot.material_len = len(key.material)
    status = lib.pmq_configuration_set_ticket_keys(configuration.handle, native, len(keys))
    ffi.memmove(native, bytes(ffi.sizeof(native)), ffi.sizeof(native))  # no copy of the secrets left behind
    if failed(status):
        hint = " (a server configuration needs them)" if status == lib.QUIC_STATUS_NOT_SUPPORTED else ""
        raise QuicError(f"setting the ticket keys failed{hint}", status)


# ---- the fleet ------------------------------------------------------------------

#: msquic's load-balancing modes that 2.5.1 lets an application set.
LOAD_BALANCING_MODES = {"disabled": 0, "server_id_ip": 1}


def load_balancing_mode() -> str:
    """msquic's load-balancing mode for this process: ``"disabled"`` (default) or
    ``"server_id_ip"`` (QUIC_PARAM_GLOBAL_LOAD_BALACING_MODE)."""
    _native.ensure_open()
    value = ffi.new("uint16_t *")
    _native.check(lib.pmq_load_balancing_mode(0, value), "GetParam(QUIC_PARAM_GLOBAL_LOAD_BALACING_MODE)")
    names = {number: name for name, number in LOAD_BALANCING_MODES.items()}
    return names.get(int(value[0]), f"unknown ({int(value[0])})")


def set_load_balancing_mode(mode: str) -> None:
    """Set msquic's load-balancing mode for the whole process.

    ``"server_id_ip"``: every connection id this process issues carries the
    server's IPv4 address (or the low 4 bytes of its IPv6 address) as its
    server id, in the clear, so that a CID-aware load balancer routes each
    packet, also after the client's address changed, to the server that owns
    the connection. msquic 2.5.1 lets this be changed only until it opens its
    first socket (the first listener started or connection made in the
    process): call it first thing. Changing it later raises
    :class:`~pymsquic.QuicError` (INVALID_STATE)."""
    if mode not in LOAD_BALANCING_MODES:
        raise ValueError(f"mode must be one of {sorted(LOAD_BALANCING_MODES)}, not {mode!r}")
    _native.ensure_open()
    value = ffi.new("uint16_t *", LOAD_BALANCING_MODES[mode])
    _native.check(lib.pmq_load_balancing_mode(1, value), "SetParam(QUIC_PARAM_GLOBAL_LOAD_BALACING_MODE)")


def set_stateless_reset_key(key: bytes) -> None:
    """Share the stateless-reset key of every server of a fleet (32 bytes,
    QUIC_PARAM_GLOBAL_STATELESS_RESET_KEY, process-wide).

    A server that lost a connection's state (a restart, or a packet routed to
    the wrong machine) answers its packets with a stateless reset, which the
    client accepts only if its token matches: tokens are derived from this key
    and the connection id, so every server must derive them alike. Call it
    first thing, before any listener or connection: connection ids issued
    before carry tokens derived from the old key, which a server of the fleet
    cannot match. msquic needs its lazy initialisation done first (this call
    opens the default registration for that) and cannot read the key back."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    if len(key) != lib.PMQ_STATELESS_RESET_KEY_LEN:
        raise ValueError(f"the stateless reset key must be {lib.PMQ_STATELESS_RESET_KEY_LEN} bytes, not {len(key)}")
    from .registration import default_registration

    default_registration()  # msquic's lazy initialisation
    _native.check(lib.pmq_set_stateless_reset_key(bytes(key), len(key)),
                  "SetParam(QUIC_PARAM_GLOBAL_STATELESS_RESET_KEY)")


# ---- connections ----------------------------------------------------------------


def _take_blob(blob: Any) -> bytes | None:
    if blob == ffi.NULL:
        return None
    try:
        return ffi.buffer(blob.data, blob.len)[:]
    finally:
        lib.pmq_blob_free(blob)


def check_resumption_args(session_ticket: object, early_data: object, on_session_ticket: object) -> None:
    """The checks ``connect`` makes before opening anything."""
    if session_ticket is not None and not isinstance(session_ticket, (bytes, bytearray, memoryview)):
        raise TypeError(f"session_ticket must be a bytes-like object, not {type(session_ticket).__name__}")
    if session_ticket is not None and not 0 < len(session_ticket) <= 0xFFFF:
        raise ValueError(f"session_ticket must be 1 to 65535 bytes, not {len(session_ticket)}")
    if not isinstance(early_data, bool):
        raise TypeError(f"early_data must be a bool, not {type(early_data).__name__}")
    if on_session_ticket is not None and not callable(on_session_ticket):
        raise TypeError(f"on_session_ticket must be callable, not {type(on_session_ticket).__name__}")


class ResumptionMixin:
    """What a connection offers for resumption and 0-RTT (both worlds)."""

    _conn: Any
    _native_obj: Any
    logger: Any
    _on_session_ticket: SessionTicketHandler | None = None

    # ---- client -------------------------------------------------------------

    def _prepare_resumption(self, session_ticket: BufferLike | None, early_data: bool,
                            on_session_ticket: SessionTicketHandler | None) -> bool:
        """Before the start: record the ticket (set inside the start) and the
        callback. True if the connection will send 0-RTT data."""
        self._on_session_ticket = on_session_ticket
        if session_ticket is None:
            return False
        buffer, nbytes = c_buffer(session_ticket)
        _native.check(lib.pmq_conn_set_resumption(self._conn, buffer, nbytes, early_data), "setting the ticket")
        return early_data

    def _start(self, host: str, port: int, server_name: str | None, remote: Any, defer: bool = False) -> None:
        raise NotImplementedError  # ConnectionCore's

    def _start_resuming(self, host: str, port: int, server_name: str | None, remote: Any,
                        defer: bool = False) -> None:
        """``_start``, with a ticket msquic refuses reported as ValueError."""
        try:
            self._start(host, port, server_name, remote, defer)
        except QuicError:
            self._raise_if_ticket_refused()
            raise

    def _apply_resumption(self) -> None:
        """Set the ticket (and for 0-RTT the stream scheduling) now: blocks for
        msquic's worker, so that the start itself need not (asyncio runs this in
        an executor, then starts on the loop: early streams follow at once)."""
        status = lib.pmq_conn_prepare_resumption(self._conn)
        if failed(status):
            self._raise_if_ticket_refused()
            raise QuicError("setting the resumption ticket failed", status)

    def _raise_if_ticket_refused(self) -> None:
        if lib.pmq_conn_resumption_ticket_refused(self._conn):
            raise ValueError("session_ticket is not a ticket msquic can resume with "
                             "(QUIC_PARAM_CONN_RESUMPTION_TICKET refused it)") from None

    @property
    def session_ticket(self) -> bytes | None:
        """The latest session ticket the server sent (client side), or None.

        Opaque bytes (msquic's encoding: the QUIC version, the ALPN, the
        server's transport parameters and the TLS ticket) to store and give to a
        later ``connect(..., session_ticket=...)`` to the same server (or one
        sharing its :class:`TicketKey`). They hold the resumption secret: store
        them as you would a password. Tickets usually arrive just after the
        handshake, so read this late (or use ``on_session_ticket``)."""
        return _take_blob(lib.pmq_conn_latest_ticket(self._conn))

    @property
    def session_resumed(self) -> bool:
        """True once the handshake completed by resuming a session (both sides).
        Server: also as soon as a connection is handed over early for its 0-RTT
        request (``accepted_early``): TLS accepts early data only when it
        resumes the session."""
        return bool(lib.pmq_conn_flags(self._conn) & lib.PMQ_CONN_SESSION_RESUMED)

    @property
    def early_data_accepted(self) -> bool | None:
        """Client: None until the handshake completed; then whether 0-RTT was
        attempted and the session resumed (False when none was attempted):
        inferred, not a guarantee that any byte travelled early.

        msquic 2.5.1 does not report TLS's early-data status: pymsquic reads
        "accepted" as "0-RTT was attempted and the session resumed", which is
        what msquic's and aioquic's servers do (a TLS server may also resume
        and refuse early data: that would read as accepted). It does not say
        that the data travelled in 0-RTT packets either: msquic sends only data
        queued before its first flight as 0-RTT (README). Either way no byte is
        lost: msquic resends rejected early data in 1-RTT packets, so this
        tells at most whether the data arrived one round trip early."""
        value = lib.pmq_conn_early_data_accepted(self._conn)
        return None if value < 0 else bool(value)

    def _pop_tickets(self) -> list[bytes]:
        tickets: list[bytes] = []
        while True:
            ticket = _take_blob(lib.pmq_conn_pop_ticket(self._conn))
            if ticket is None:
                return tickets
            tickets.append(ticket)

    def _deliver_tickets(self, survives: type[BaseException] = Exception) -> None:
        """Calls on_session_ticket with each ticket received since the last call;
        what it raises of ``survives`` is logged (the sync ticket thread passes
        BaseException: a SystemExit there would end the thread silently)."""
        handler = self._on_session_ticket
        if handler is None:
            return
        for ticket in self._pop_tickets():
            try:
                handler(ticket)
            except survives:  # the connection goes on; the caller learns from the log
                self.logger.exception("on_session_ticket failed")

    def _start_ticket_thread(self) -> None:
        """Sync world: a daemon thread delivers tickets as they come, until the
        connection is closed (it waits on the native object, GIL released). It
        holds the connection only weakly (and the native one strongly): a
        connection dropped without close() is still collected, which ends it."""
        if self._on_session_ticket is None:
            return
        lib.pmq_conn_hold(self._conn)
        thread = threading.Thread(target=_ticket_thread, args=(weakref.ref(self), self._conn),
                                  name="pymsquic-session-tickets", daemon=True)
        try:
            thread.start()
        except BaseException:
            lib.pmq_conn_unhold(self._conn)
            raise

    # ---- server -------------------------------------------------------------

    @property
    def resumption_app_data(self) -> bytes | None:
        """Server: the app data of the ticket this connection resumed with (as
        given to :meth:`send_resumption_ticket`; ``b""`` if none was), or None
        if it did not resume. Like early data, it comes from the client, which
        may replay it: it is authenticated (only this fleet's ticket keys make
        it) but not fresh."""
        if not self.session_resumed:  # msquic's RESUMED came, yet TLS may have made a full handshake
            return None
        return _take_blob(lib.pmq_conn_resumption_app_data(self._conn))

    @property
    def early_data_streams(self) -> int:
        """Server: how many of the peer's streams began in 0-RTT packets (msquic's
        QUIC_STREAM_OPEN_FLAG_0_RTT). Their first bytes may be a replay: a
        server that must not act twice on a request refuses early streams (or
        resets them) when this is non-zero."""
        return int(lib.pmq_conn_early_data_streams(self._conn))

    def send_resumption_ticket(self, app_data: BufferLike = b"", *, final: bool = False) -> None:
        """Server: send the client a session ticket carrying ``app_data`` (at
        most 1000 bytes), which :attr:`resumption_app_data` returns on the
        connection that resumes with it. msquic sends no ticket by itself:
        without this call clients cannot resume. Needs
        ``Settings.server_resumption_level`` RESUME or above (else
        :class:`~pymsquic.QuicError`, INVALID_STATE). ``final=True`` frees the
        TLS state afterwards: no further ticket can be sent (msquic's
        QUIC_SEND_RESUMPTION_FLAG_FINAL). Never blocks. On a connection handed
        over early (``accepted_early``) and still handshaking, the ticket is
        kept (up to 8: a ninth raises, as does one after a final one) and sent
        when the handshake completes: msquic sends none before."""
        buffer, nbytes = c_buffer(app_data)
        if nbytes > lib.PMQ_MAX_RESUMPTION_APP_DATA:
            raise ValueError(f"app_data of {nbytes} bytes: at most {lib.PMQ_MAX_RESUMPTION_APP_DATA} fit")
        status = lib.pmq_conn_send_resumption_ticket(self._conn, buffer, nbytes, bool(final))
        if failed(status):
            raise QuicError("ConnectionSendResumptionTicket failed (server_resumption_level must allow "
                            "resumption, the connection be up, and no final ticket sent)", status)


def _ticket_thread(ref: "weakref.ref[ResumptionMixin]", native: Any) -> None:
    """Delivers tickets while the connection lives and is not shut down; wakes
    only when the native connection changes (a dropped connection's release
    shuts it down, which wakes it too)."""
    obj = lib.pmq_conn_obj(native)
    try:
        while True:
            seq = lib.pmq_obj_seq(obj)
            done = lib.pmq_conn_flags(native) & lib.PMQ_CONN_SHUTDOWN_COMPLETE
            conn = ref()
            if conn is None:
                return
            conn._deliver_tickets(BaseException)  # after the flags: also those that came with the close
            del conn  # never held across the wait
            if done:
                return
            lib.pmq_obj_wait(obj, seq, -1)
    finally:
        lib.pmq_conn_unhold(native)
