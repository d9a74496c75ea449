"""msquic's process-wide performance counters (QUIC_PARAM_GLOBAL_PERF_COUNTERS)
and a stream's statistics (:class:`StreamStats`).

Per-connection and per-listener numbers are ``Connection.stats()``
(:class:`~pymsquic.ConnectionStats`) and ``Listener.stats()``
(:class:`~pymsquic.ListenerStats`).
"""

from __future__ import annotations

import dataclasses

from . import _native
from ._msquic import ffi, lib


@dataclasses.dataclass(frozen=True)
class StreamStats:
    """Where a stream's sending waited (``Stream.stats()``, msquic's
    QUIC_STREAM_STATISTICS), in µs since it started: ``stream_*`` the stream's
    own blocks (``stream_blocked_by_app_us``: nothing written to send;
    ``stream_blocked_by_flow_control_us``: the peer's stream window was full;
    ``stream_blocked_by_id_flow_control_us``: the peer's stream count limit),
    ``conn_*`` its connection's (scheduling, pacing, anti-amplification,
    congestion control, connection flow control) while the stream was open."""

    conn_blocked_by_scheduling_us: int
    conn_blocked_by_pacing_us: int
    conn_blocked_by_amplification_prot_us: int
    conn_blocked_by_congestion_control_us: int
    conn_blocked_by_flow_control_us: int
    stream_blocked_by_id_flow_control_us: int
    stream_blocked_by_flow_control_us: int
    stream_blocked_by_app_us: int

    @classmethod
    def _from_native(cls, native: object) -> "StreamStats":
        return cls(**{f.name: int(getattr(native, f.name)) for f in dataclasses.fields(cls)})


def perf_counters() -> dict[str, int]:
    """msquic's global performance counters, name -> value, for the whole process.

    Names are msquic's QUIC_PERFORMANCE_COUNTERS without the
    ``QUIC_PERF_COUNTER_`` prefix, lower case: ``conn_created``,
    ``conn_handshake_fail``, ``conn_active`` (connections allocated now),
    ``strm_active``, ``pkts_suspected_lost``, ``udp_send``, ``udp_recv_bytes``,
    ``app_send_bytes``, ``path_validated``, ``conn_load_reject``... Most are
    totals since msquic was opened; ``*_active``, ``conn_connected`` and
    ``*_queue_depth`` are current values. Opens msquic if needed; never blocks.
    """
    _native.ensure_open()
    count = lib.pmq_perf_counter_count()
    values = ffi.new("int64_t[]", count)
    _native.check(lib.pmq_perf_counters(values, count), "GetParam(QUIC_PARAM_GLOBAL_PERF_COUNTERS)")
    return {_name(i): int(values[i]) for i in range(count)}


def _name(index: int) -> str:
    name = ffi.string(lib.pmq_perf_counter_name(index))  # char *: bytes
    return (name.decode() if isinstance(name, bytes) else name).lower()
