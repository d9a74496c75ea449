/*
 * A request in one call (issue 11): open a local stream and send its first
 * bytes, FIN included, without coming back to Python in between.
 *
 * Nothing new happens here: it is pmq_stream_open followed by
 * pmq_stream_write, so the stream is started by that send
 * (QUIC_SEND_FLAG_START: StreamOpen and StreamSend are the only msquic calls,
 * no StreamStart), the bytes are copied into a block msquic owns until
 * SEND_COMPLETE, 0-RTT send flags and the deferred start of an early-data
 * connection apply as to any write, and a stream the peer does not allow yet
 * (MAX_STREAMS) waits inside msquic with its data until it does. What is
 * saved is the crossing: one Python-to-C call (GIL released and retaken once)
 * instead of two, and no Python between the open and the send.
 */
#include "internal.h"

QUIC_STATUS pmq_stream_open_send(pmq_conn *conn, int unidirectional, const uint8_t *data, size_t len, int fin,
                                 pmq_stream **out)
{
    *out = NULL;
    if (len > UINT32_MAX) {
        return QUIC_STATUS_INVALID_PARAMETER; /* checked before anything opens: one QUIC_BUFFER */
    }
    pmq_stream *s = NULL;
    QUIC_STATUS status = pmq_stream_open(conn, unidirectional, &s);
    if (QUIC_FAILED(status)) {
        return status;
    }
    *out = s; /* the caller owns it now, whatever the send does */
    if (len == 0 && !fin) {
        return status; /* nothing to send: started by the first write, as after pmq_stream_open */
    }
    return pmq_stream_write(s, data, len, fin);
}
