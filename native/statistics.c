/* Statistics: every field of a connection's QUIC_STATISTICS_V2, msquic's own
 * listener statistics and its global performance counters, copied into the
 * flat records of pymsquic.h.
 *
 * QUIC_STATISTICS_V2 has bitfields, which cffi cannot mirror with a partial
 * struct, so the copy is done here, field by field, from one list (STATS_V2)
 * that names each pmq field with its msquic source: the compiler checks every
 * pair, and Python reads the record by the field names of its dataclass. */
#include <stddef.h>
#include <string.h>

#include "internal.h"

/* pmq_conn_stats_v2 field <- QUIC_STATISTICS_V2 field */
#define STATS_V2(X)                                                        \
    X(correlation_id, CorrelationId)                                       \
    X(version_negotiation, VersionNegotiation)                             \
    X(stateless_retry, StatelessRetry)                                     \
    X(resumption_attempted, ResumptionAttempted)                           \
    X(resumption_succeeded, ResumptionSucceeded)                           \
    X(grease_bit_negotiated, GreaseBitNegotiated)                          \
    X(ecn_capable, EcnCapable)                                             \
    X(encryption_offloaded, EncryptionOffloaded)                           \
    X(rtt_us, Rtt)                                                         \
    X(min_rtt_us, MinRtt)                                                  \
    X(max_rtt_us, MaxRtt)                                                  \
    X(timing_start_us, TimingStart)                                        \
    X(timing_initial_flight_end_us, TimingInitialFlightEnd)                \
    X(timing_handshake_flight_end_us, TimingHandshakeFlightEnd)            \
    X(handshake_client_flight1_bytes, HandshakeClientFlight1Bytes)         \
    X(handshake_server_flight1_bytes, HandshakeServerFlight1Bytes)         \
    X(handshake_client_flight2_bytes, HandshakeClientFlight2Bytes)         \
    X(path_mtu, SendPathMtu)                                               \
    X(packets_sent, SendTotalPackets)                                      \
    X(packets_retransmittable, SendRetransmittablePackets)                 \
    X(packets_lost, SendSuspectedLostPackets)                              \
    X(packets_spurious_lost, SendSpuriousLostPackets)                      \
    X(bytes_sent, SendTotalBytes)                                          \
    X(stream_bytes_sent, SendTotalStreamBytes)                             \
    X(congestion_events, SendCongestionCount)                              \
    X(persistent_congestion_events, SendPersistentCongestionCount)         \
    X(packets_received, RecvTotalPackets)                                  \
    X(packets_reordered, RecvReorderedPackets)                             \
    X(packets_dropped, RecvDroppedPackets)                                 \
    X(packets_duplicate, RecvDuplicatePackets)                             \
    X(bytes_received, RecvTotalBytes)                                      \
    X(stream_bytes_received, RecvTotalStreamBytes)                         \
    X(decryption_failures, RecvDecryptionFailures)                         \
    X(ack_frames_received, RecvValidAckFrames)                             \
    X(key_updates, KeyUpdateCount)                                         \
    X(congestion_window, SendCongestionWindow)                             \
    X(dest_cid_updates, DestCidUpdateCount)                                \
    X(ecn_congestion_events, SendEcnCongestionCount)                       \
    X(handshake_hop_limit_ttl, HandshakeHopLimitTTL)                       \
    X(rtt_variance_us, RttVariance)

static void pmq_stats_v2_copy(pmq_conn_stats_v2 *out, const QUIC_STATISTICS_V2 *in)
{
    memset(out, 0, sizeof(*out));
#define COPY(to, from) out->to = in->from;
    STATS_V2(COPY)
#undef COPY
}

QUIC_STATUS pmq_conn_get_stats_v2(pmq_conn *conn, pmq_conn_stats_v2 *out)
{
    QUIC_STATISTICS_V2 stats;
    uint32_t size = sizeof(stats);
    memset(&stats, 0, sizeof(stats));
    QUIC_STATUS status = QUIC_STATUS_INVALID_STATE;
    if (pmq_conn_is_started(conn)) { /* msquic answers nothing useful before */
        status = pmq_conn_param(conn, 0, QUIC_PARAM_CONN_STATISTICS_V2, &size, &stats);
    }
    if (QUIC_FAILED(status)) {
        /* Closed: the numbers SHUTDOWN_COMPLETE kept, if it came. */
        return pmq_conn_get_final_stats(conn, out) ? QUIC_STATUS_SUCCESS : status;
    }
    pmq_stats_v2_copy(out, &stats);
    out->handshake_us = pmq_conn_handshake_us(conn);
    return status;
}

void pmq_conn_keep_final_stats(pmq_conn *conn, HQUIC handle)
{
    QUIC_STATISTICS_V2 stats;
    uint32_t size = sizeof(stats);
    memset(&stats, 0, sizeof(stats));
    /* On the connection's own worker: GetParam runs inline, waits for nothing. */
    if (QUIC_FAILED(pmq_api->GetParam(handle, QUIC_PARAM_CONN_STATISTICS_V2, &size, &stats))) {
        return;
    }
    pmq_conn_stats_v2 kept;
    pmq_stats_v2_copy(&kept, &stats);
    kept.handshake_us = pmq_conn_handshake_us(conn);
    pmq_conn_set_final_stats(conn, &kept);
}

/* pmq_stream_stats mirrors QUIC_STREAM_STATISTICS exactly: plain uint64_t fields. */
#define SAME_FIELD(flat, quic)                                                              \
    _Static_assert(offsetof(pmq_stream_stats, flat) == offsetof(QUIC_STREAM_STATISTICS, quic), \
                   #flat " must mirror " #quic);
SAME_FIELD(conn_blocked_by_scheduling_us, ConnBlockedBySchedulingUs)
SAME_FIELD(conn_blocked_by_pacing_us, ConnBlockedByPacingUs)
SAME_FIELD(conn_blocked_by_amplification_prot_us, ConnBlockedByAmplificationProtUs)
SAME_FIELD(conn_blocked_by_congestion_control_us, ConnBlockedByCongestionControlUs)
SAME_FIELD(conn_blocked_by_flow_control_us, ConnBlockedByFlowControlUs)
SAME_FIELD(stream_blocked_by_id_flow_control_us, StreamBlockedByIdFlowControlUs)
SAME_FIELD(stream_blocked_by_flow_control_us, StreamBlockedByFlowControlUs)
SAME_FIELD(stream_blocked_by_app_us, StreamBlockedByAppUs)
#undef SAME_FIELD
_Static_assert(sizeof(pmq_stream_stats) == sizeof(QUIC_STREAM_STATISTICS), "pmq_stream_stats must mirror msquic's");

QUIC_STATUS pmq_stream_get_stats(pmq_stream *stream, pmq_stream_stats *out)
{
    QUIC_STREAM_STATISTICS stats;
    memset(&stats, 0, sizeof(stats));
    QUIC_STATUS status = pmq_stream_param(stream, 0, QUIC_PARAM_STREAM_STATISTICS, &stats, sizeof(stats));
    if (QUIC_SUCCEEDED(status)) {
        memcpy(out, &stats, sizeof(*out));
    }
    return status;
}

QUIC_STATUS pmq_listener_get_msquic_stats(pmq_listener *listener, pmq_listener_msquic_stats *out)
{
    QUIC_LISTENER_STATISTICS stats;
    uint32_t size = sizeof(stats);
    memset(&stats, 0, sizeof(stats));
    QUIC_STATUS status = pmq_listener_get_param(listener, QUIC_PARAM_LISTENER_STATS, &size, &stats);
    memset(out, 0, sizeof(*out));
    if (QUIC_SUCCEEDED(status)) {
        out->total_accepted = stats.TotalAcceptedConnections;
        out->total_rejected = stats.TotalRejectedConnections;
    }
    return status;
}

/* The enum's own names, placed by the compiler at the enum's values. */
#define COUNTER(name) [QUIC_PERF_COUNTER_##name] = #name
static const char *const perf_counter_names[QUIC_PERF_COUNTER_MAX] = {
    COUNTER(CONN_CREATED),         COUNTER(CONN_HANDSHAKE_FAIL),   COUNTER(CONN_APP_REJECT),
    COUNTER(CONN_RESUMED),         COUNTER(CONN_ACTIVE),           COUNTER(CONN_CONNECTED),
    COUNTER(CONN_PROTOCOL_ERRORS), COUNTER(CONN_NO_ALPN),          COUNTER(STRM_ACTIVE),
    COUNTER(PKTS_SUSPECTED_LOST),  COUNTER(PKTS_DROPPED),          COUNTER(PKTS_DECRYPTION_FAIL),
    COUNTER(UDP_RECV),             COUNTER(UDP_SEND),              COUNTER(UDP_RECV_BYTES),
    COUNTER(UDP_SEND_BYTES),       COUNTER(UDP_RECV_EVENTS),       COUNTER(UDP_SEND_CALLS),
    COUNTER(APP_SEND_BYTES),       COUNTER(APP_RECV_BYTES),        COUNTER(CONN_QUEUE_DEPTH),
    COUNTER(CONN_OPER_QUEUE_DEPTH), COUNTER(CONN_OPER_QUEUED),     COUNTER(CONN_OPER_COMPLETED),
    COUNTER(WORK_OPER_QUEUE_DEPTH), COUNTER(WORK_OPER_QUEUED),     COUNTER(WORK_OPER_COMPLETED),
    COUNTER(PATH_VALIDATED),       COUNTER(PATH_FAILURE),          COUNTER(SEND_STATELESS_RESET),
    COUNTER(SEND_STATELESS_RETRY), COUNTER(CONN_LOAD_REJECT),
};
#undef COUNTER

uint32_t pmq_perf_counter_count(void) { return QUIC_PERF_COUNTER_MAX; }

const char *pmq_perf_counter_name(uint32_t index)
{
    return index < QUIC_PERF_COUNTER_MAX && perf_counter_names[index] != NULL ? perf_counter_names[index] : "";
}

QUIC_STATUS pmq_perf_counters(int64_t *out, uint32_t count)
{
    if (pmq_api == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    int64_t counters[QUIC_PERF_COUNTER_MAX];
    uint32_t size = sizeof(counters);
    memset(counters, 0, sizeof(counters));
    /* A global parameter: answered inline, never blocks. */
    QUIC_STATUS status = pmq_api->GetParam(NULL, QUIC_PARAM_GLOBAL_PERF_COUNTERS, &size, counters);
    if (QUIC_SUCCEEDED(status)) {
        memcpy(out, counters, sizeof(int64_t) * (count < QUIC_PERF_COUNTER_MAX ? count : QUIC_PERF_COUNTER_MAX));
    }
    return status;
}
