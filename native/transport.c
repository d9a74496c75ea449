/* Transport: the QUIC_SETTINGS fields of pmq_settings.transport_set, the
 * client's local address and migration, DSCP, and the address-change events.
 *
 * configuration.c fills and reads the older settings fields; it calls
 * pmq_transport_fill_settings / pmq_transport_read_settings for these. */
#include <string.h>

#include "internal.h"

/* PMQ_TSET_* bit, QUIC_SETTINGS field, pmq_settings field */
#define TRANSPORT_SETTINGS(X)                                                                        \
    X(PMQ_TSET_MAX_BYTES_PER_KEY, MaxBytesPerKey, max_bytes_per_key)                                 \
    X(PMQ_TSET_MTU_DISCOVERY_SEARCH_COMPLETE_TIMEOUT, MtuDiscoverySearchCompleteTimeoutUs,           \
      mtu_discovery_search_complete_timeout_us)                                                      \
    X(PMQ_TSET_SEND_IDLE_TIMEOUT, SendIdleTimeoutMs, send_idle_timeout_ms)                           \
    X(PMQ_TSET_INITIAL_WINDOW_PACKETS, InitialWindowPackets, initial_window_packets)                 \
    X(PMQ_TSET_DEST_CID_UPDATE_IDLE_TIMEOUT, DestCidUpdateIdleTimeoutMs, dest_cid_update_idle_timeout_ms) \
    X(PMQ_TSET_STREAM_RECV_BUFFER_DEFAULT, StreamRecvBufferDefault, stream_recv_buffer_default)      \
    X(PMQ_TSET_STREAM_RECV_WINDOW_BIDI_LOCAL, StreamRecvWindowBidiLocalDefault,                      \
      stream_recv_window_bidi_local_default)                                                         \
    X(PMQ_TSET_STREAM_RECV_WINDOW_BIDI_REMOTE, StreamRecvWindowBidiRemoteDefault,                    \
      stream_recv_window_bidi_remote_default)                                                        \
    X(PMQ_TSET_STREAM_RECV_WINDOW_UNIDI, StreamRecvWindowUnidiDefault, stream_recv_window_unidi_default) \
    X(PMQ_TSET_TLS_CLIENT_MAX_SEND_BUFFER, TlsClientMaxSendBuffer, tls_client_max_send_buffer)       \
    X(PMQ_TSET_MINIMUM_MTU, MinimumMtu, minimum_mtu)                                                 \
    X(PMQ_TSET_MAXIMUM_MTU, MaximumMtu, maximum_mtu)                                                 \
    X(PMQ_TSET_MTU_DISCOVERY_MISSING_PROBE_COUNT, MtuDiscoveryMissingProbeCount,                     \
      mtu_discovery_missing_probe_count)

/* The on/off ones (bitfields in QUIC_SETTINGS) */
#define TRANSPORT_FLAGS(X)                                                                           \
    X(PMQ_TSET_ECN_ENABLED, EcnEnabled, ecn_enabled)                                                 \
    X(PMQ_TSET_GREASE_QUIC_BIT_ENABLED, GreaseQuicBitEnabled, grease_quic_bit_enabled)

void pmq_transport_fill_settings(QUIC_SETTINGS *s, const pmq_settings *in)
{
#define FILL(bit, quic, flat)          \
    if (in->transport_set & (bit)) {   \
        s->IsSet.quic = 1;             \
        s->quic = in->flat;            \
    }
    TRANSPORT_SETTINGS(FILL)
#undef FILL
    /* 1-bit fields: != 0 keeps an even value from landing as 0. */
#define FILL_FLAG(bit, quic, flat)     \
    if (in->transport_set & (bit)) {   \
        s->IsSet.quic = 1;             \
        s->quic = in->flat != 0;       \
    }
    TRANSPORT_FLAGS(FILL_FLAG)
#undef FILL_FLAG
}

void pmq_transport_read_settings(pmq_settings *out, const QUIC_SETTINGS *s)
{
#define READ(bit, quic, flat)          \
    out->flat = s->quic;               \
    if (s->IsSet.quic) {               \
        out->transport_set |= (bit);   \
    }
    TRANSPORT_SETTINGS(READ)
    TRANSPORT_FLAGS(READ)
#undef READ
}

/* ---- addresses ---------------------------------------------------------------- */

QUIC_STATUS pmq_conn_set_local_address(pmq_conn *conn, const pmq_addr *address)
{
    QUIC_ADDR addr;
    if (address == NULL || !pmq_addr_to_quic(&addr, address)) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    uint32_t size = sizeof(addr);
    /* Before the start only: on a started client msquic would migrate, and
     * 2.5.1 can abort the process then (a datagram of the old socket handled
     * after the switch uses its freed context). */
    return pmq_conn_param(conn, PMQ_PARAM_SET_BEFORE_START, QUIC_PARAM_CONN_LOCAL_ADDRESS, &size, &addr);
}

void pmq_conn_address_changed(pmq_conn *conn, const QUIC_ADDR *address, int peer)
{
    pmq_obj *obj = pmq_conn_obj(conn);
    pthread_mutex_lock(&obj->lock);
    pmq_conn_info *info = pmq_conn_info_ptr(conn);
    if (peer) {
        pmq_addr_from_quic(&info->remote, address);
        info->peer_address_changes++;
    } else {
        pmq_addr_from_quic(&info->local, address);
    }
    pmq_obj_changed_locked(obj);
    pthread_mutex_unlock(&obj->lock);
}

QUIC_STATUS pmq_conn_dscp(pmq_conn *conn, int set, uint8_t *value)
{
    if (set && *value > 63) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    uint32_t size = sizeof(*value);
    return pmq_conn_param(conn, set, QUIC_PARAM_CONN_SEND_DSCP, &size, value);
}
