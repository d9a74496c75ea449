/* Configuration: QUIC_SETTINGS and QUIC_CREDENTIAL_CONFIG built from flat records,
 * so Python never has to know their bitfield layouts. */
#include <string.h>

#include "internal.h"

static void fill_settings(QUIC_SETTINGS *s, const pmq_settings *in)
{
    memset(s, 0, sizeof(*s));
    uint64_t set = in->set;
#define APPLY(bit, field, value)    \
    if (set & (bit)) {              \
        s->IsSet.field = 1;         \
        s->field = (value);         \
    }
    APPLY(PMQ_SET_IDLE_TIMEOUT, IdleTimeoutMs, in->idle_timeout_ms)
    APPLY(PMQ_SET_HANDSHAKE_IDLE_TIMEOUT, HandshakeIdleTimeoutMs, in->handshake_idle_timeout_ms)
    APPLY(PMQ_SET_KEEP_ALIVE_INTERVAL, KeepAliveIntervalMs, in->keep_alive_interval_ms)
    APPLY(PMQ_SET_DISCONNECT_TIMEOUT, DisconnectTimeoutMs, in->disconnect_timeout_ms)
    APPLY(PMQ_SET_STREAM_RECV_WINDOW, StreamRecvWindowDefault, in->stream_recv_window_default)
    APPLY(PMQ_SET_CONN_FLOW_CONTROL_WINDOW, ConnFlowControlWindow, in->conn_flow_control_window)
    APPLY(PMQ_SET_MAX_ACK_DELAY, MaxAckDelayMs, in->max_ack_delay_ms)
    APPLY(PMQ_SET_INITIAL_RTT, InitialRttMs, in->initial_rtt_ms)
    APPLY(PMQ_SET_PEER_BIDI_STREAM_COUNT, PeerBidiStreamCount, in->peer_bidi_stream_count)
    APPLY(PMQ_SET_PEER_UNIDI_STREAM_COUNT, PeerUnidiStreamCount, in->peer_unidi_stream_count)
    APPLY(PMQ_SET_CONGESTION_CONTROL, CongestionControlAlgorithm, in->congestion_control)
    APPLY(PMQ_SET_DATAGRAM_RECEIVE_ENABLED, DatagramReceiveEnabled, in->datagram_receive_enabled != 0)
    APPLY(PMQ_SET_SEND_BUFFERING_ENABLED, SendBufferingEnabled, in->send_buffering_enabled != 0)
    APPLY(PMQ_SET_PACING_ENABLED, PacingEnabled, in->pacing_enabled != 0)
    APPLY(PMQ_SET_MIGRATION_ENABLED, MigrationEnabled, in->migration_enabled != 0)
    APPLY(PMQ_SET_SERVER_RESUMPTION_LEVEL, ServerResumptionLevel, in->server_resumption_level & 3)
#undef APPLY
    pmq_transport_fill_settings(s, in);
}

/* The inverse of fill_settings: every value msquic reports (its defaults where
 * nothing was set), with the PMQ_SET_* bit only where msquic's IsSet bit is on. */
static void read_settings(pmq_settings *out, const QUIC_SETTINGS *s)
{
    memset(out, 0, sizeof(*out));
#define REPORT(bit, field, target)     \
    out->target = s->field;            \
    if (s->IsSet.field) {              \
        out->set |= (bit);             \
    }
    REPORT(PMQ_SET_IDLE_TIMEOUT, IdleTimeoutMs, idle_timeout_ms)
    REPORT(PMQ_SET_HANDSHAKE_IDLE_TIMEOUT, HandshakeIdleTimeoutMs, handshake_idle_timeout_ms)
    REPORT(PMQ_SET_KEEP_ALIVE_INTERVAL, KeepAliveIntervalMs, keep_alive_interval_ms)
    REPORT(PMQ_SET_DISCONNECT_TIMEOUT, DisconnectTimeoutMs, disconnect_timeout_ms)
    REPORT(PMQ_SET_STREAM_RECV_WINDOW, StreamRecvWindowDefault, stream_recv_window_default)
    REPORT(PMQ_SET_CONN_FLOW_CONTROL_WINDOW, ConnFlowControlWindow, conn_flow_control_window)
    REPORT(PMQ_SET_MAX_ACK_DELAY, MaxAckDelayMs, max_ack_delay_ms)
    REPORT(PMQ_SET_INITIAL_RTT, InitialRttMs, initial_rtt_ms)
    REPORT(PMQ_SET_PEER_BIDI_STREAM_COUNT, PeerBidiStreamCount, peer_bidi_stream_count)
    REPORT(PMQ_SET_PEER_UNIDI_STREAM_COUNT, PeerUnidiStreamCount, peer_unidi_stream_count)
    REPORT(PMQ_SET_CONGESTION_CONTROL, CongestionControlAlgorithm, congestion_control)
    REPORT(PMQ_SET_DATAGRAM_RECEIVE_ENABLED, DatagramReceiveEnabled, datagram_receive_enabled)
    REPORT(PMQ_SET_SEND_BUFFERING_ENABLED, SendBufferingEnabled, send_buffering_enabled)
    REPORT(PMQ_SET_PACING_ENABLED, PacingEnabled, pacing_enabled)
    REPORT(PMQ_SET_MIGRATION_ENABLED, MigrationEnabled, migration_enabled)
    REPORT(PMQ_SET_SERVER_RESUMPTION_LEVEL, ServerResumptionLevel, server_resumption_level)
#undef REPORT
    pmq_transport_read_settings(out, s);
}

QUIC_STATUS pmq_settings_read(HQUIC handle, uint32_t param, pmq_settings *out)
{
    QUIC_SETTINGS s;
    uint32_t size = sizeof(s);
    memset(&s, 0, sizeof(s));
    QUIC_STATUS status = pmq_api->GetParam(handle, param, &size, &s);
    if (QUIC_FAILED(status)) {
        return status;
    }
    read_settings(out, &s);
    return status;
}

QUIC_STATUS pmq_configuration_get_settings(HQUIC configuration, pmq_settings *out)
{
    /* Configuration parameters are answered inline, on this thread: no worker
     * round trip, so any thread (also a callback) may ask. */
    return pmq_settings_read(configuration, QUIC_PARAM_CONFIGURATION_SETTINGS, out);
}

static QUIC_STATUS load_credential(HQUIC configuration, const pmq_credential *in)
{
    QUIC_CREDENTIAL_CONFIG cred;
    QUIC_CERTIFICATE_FILE file;
    QUIC_CERTIFICATE_FILE_PROTECTED protected_file;
    QUIC_CERTIFICATE_PKCS12 pkcs12;
    memset(&cred, 0, sizeof(cred)); /* Reserved must be NULL */
    cred.Flags = (QUIC_CREDENTIAL_FLAGS)in->flags;
    cred.CaCertificateFile = in->ca_file;
    switch (in->kind) {
    case PMQ_CRED_NONE:
        cred.Type = QUIC_CREDENTIAL_TYPE_NONE;
        break;
    case PMQ_CRED_FILES:
        if (in->password != NULL) {
            protected_file.CertificateFile = in->cert_file;
            protected_file.PrivateKeyFile = in->key_file;
            protected_file.PrivateKeyPassword = in->password;
            cred.Type = QUIC_CREDENTIAL_TYPE_CERTIFICATE_FILE_PROTECTED;
            cred.CertificateFileProtected = &protected_file;
        } else {
            file.CertificateFile = in->cert_file;
            file.PrivateKeyFile = in->key_file;
            cred.Type = QUIC_CREDENTIAL_TYPE_CERTIFICATE_FILE;
            cred.CertificateFile = &file;
        }
        break;
    case PMQ_CRED_PKCS12:
        pkcs12.Asn1Blob = in->pkcs12;
        pkcs12.Asn1BlobLength = in->pkcs12_len;
        pkcs12.PrivateKeyPassword = in->password;
        cred.Type = QUIC_CREDENTIAL_TYPE_CERTIFICATE_PKCS12;
        cred.CertificatePkcs12 = &pkcs12;
        break;
    default:
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    return pmq_api->ConfigurationLoadCredential(configuration, &cred);
}

QUIC_STATUS pmq_configuration_open(HQUIC registration, const uint8_t *alpn_list, size_t alpn_len,
                                   const pmq_settings *settings, const pmq_credential *credential,
                                   HQUIC *configuration)
{
    QUIC_BUFFER alpns[PMQ_MAX_ALPNS];
    uint32_t alpn_count;
    QUIC_SETTINGS quic_settings;
    if (!pmq_alpn_split(alpn_list, alpn_len, alpns, PMQ_MAX_ALPNS, &alpn_count)) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    fill_settings(&quic_settings, settings);
    HQUIC handle = NULL;
    QUIC_STATUS status = pmq_api->ConfigurationOpen(registration, alpns, alpn_count, &quic_settings,
                                                    sizeof(quic_settings), NULL, &handle);
    if (QUIC_FAILED(status)) {
        return status;
    }
    status = load_credential(handle, credential);
    if (QUIC_FAILED(status)) {
        pmq_api->ConfigurationClose(handle);
        return status;
    }
    *configuration = handle;
    return status;
}
