"""msquic's process-wide performance counters (QUIC_PARAM_GLOBAL_PERF_COUNTERS).

Per-connection and per-listener numbers are ``Connection.stats()``
(:class:`~pymsquic.ConnectionStats`) and ``Listener.stats()``
(:class:`~pymsquic.ListenerStats`).
"""

from __future__ import annotations

from . import _native
from ._msquic import ffi, lib


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
