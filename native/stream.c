/*
 * Stream trampoline.
 *
 * Receive: RECEIVE returns PENDING and keeps msquic's buffers (their array is
 * copied; the bytes stay valid until StreamReceiveComplete). Python copies
 * straight out of them, and the receive is completed once all is read, so a
 * reader that stops reading stops msquic's delivery and the peer is flow
 * controlled; no intermediate buffer grows. If the stream shuts down with
 * data still unread, the rest is copied into a tail buffer first.
 *
 * Send: each write is copied into a block that msquic owns until
 * SEND_COMPLETE (also when cancelled), where it is freed. send_inflight counts
 * those bytes for drain().
 *
 * The handle is closed at SHUTDOWN_COMPLETE through the guard (see internal.h).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define RX_INLINE 4
#define DEFAULT_SEND_LIMIT (64u * 1024u) /* until msquic reports its ideal size */

typedef struct send_block {
    QUIC_BUFFER buffer;
    uint64_t len;
} send_block;

struct pmq_stream {
    pmq_obj obj;               /* must stay first */
    pmq_guard guard;
    pmq_stream *next;          /* the connection's accept queue */
    pmq_conn *conn;            /* referenced, for its count of sending streams */
    int sending;               /* counted in conn's streams_sending */
    pmq_stream_state st;
    int send_limit_fixed;
    /* The pending receive. */
    QUIC_BUFFER rx_inline[RX_INLINE];
    QUIC_BUFFER *rx;
    uint32_t rx_count;
    uint32_t rx_index;
    uint64_t rx_offset;        /* within rx[rx_index] */
    uint64_t rx_total;
    int rx_pending;
    int rx_fin;                /* FIN came with the pending data */
    int rx_peeking;            /* a peek holds a guard use and a pointer into rx */
    uint8_t *rx_tail;          /* owned copy of unread data after shutdown */
};

static void stream_close_handle(HQUIC handle) { pmq_api->StreamClose(handle); }

static void free_rx_array(pmq_stream *s)
{
    if (s->rx != s->rx_inline) {
        free(s->rx);
    }
    s->rx = s->rx_inline;
    s->rx_count = 0;
}

static void stream_destroy(pmq_obj *obj)
{
    pmq_stream *s = (pmq_stream *)obj;
    free_rx_array(s);
    free(s->rx_tail);
    pmq_obj_unref(pmq_conn_obj(s->conn));
    free(s);
}

static pmq_stream *stream_new(pmq_conn *conn, uint32_t flags)
{
    pmq_stream *s = calloc(1, sizeof(*s));
    if (s != NULL) {
        pmq_obj_init(&s->obj, 2, stream_destroy); /* msquic + owner */
        s->rx = s->rx_inline;
        s->st.flags = flags;
        s->st.send_limit = DEFAULT_SEND_LIMIT;
        s->conn = conn;
        pmq_obj_ref(pmq_conn_obj(conn));
        s->sending = !((flags & PMQ_STREAM_UNIDIRECTIONAL) && !(flags & PMQ_STREAM_LOCAL));
        if (s->sending) {
            pmq_conn_stream_sending(conn, 1);
        }
    }
    return s;
}

/* Never opened after all: undo stream_new. */
static void stream_discard(pmq_stream *s)
{
    if (s->sending) {
        pmq_conn_stream_sending(s->conn, -1);
    }
    pmq_obj_unref(pmq_conn_obj(s->conn));
    pthread_cond_destroy(&s->obj.cond);
    pthread_mutex_destroy(&s->obj.lock);
    free(s);
}

/* The send side is over (once per stream); called with s->obj.lock held. */
static int sending_done_locked(pmq_stream *s)
{
    int was = s->sending;
    s->sending = 0;
    return was;
}

pmq_obj *pmq_stream_obj(pmq_stream *s) { return &s->obj; }
void pmq_stream_set_next(pmq_stream *s, pmq_stream *next) { s->next = next; }
pmq_stream *pmq_stream_get_next(pmq_stream *s) { return s->next; }

void pmq_stream_get_state(pmq_stream *s, pmq_stream_state *out)
{
    pthread_mutex_lock(&s->obj.lock);
    *out = s->st;
    pthread_mutex_unlock(&s->obj.lock);
}

/* ---- receive -------------------------------------------------------------- */

static void skip_empty_locked(pmq_stream *s)
{
    while (s->rx_index < s->rx_count && s->rx_offset == s->rx[s->rx_index].Length) {
        s->rx_index++;
        s->rx_offset = 0;
    }
}

/* Marks n bytes read; returns the receive's total when it is now fully read
 * (so the caller completes it), else 0. */
static uint64_t advance_locked(pmq_stream *s, uint64_t n)
{
    s->rx_offset += n;
    s->st.readable -= n;
    s->st.bytes_read += n;
    skip_empty_locked(s);
    if (s->st.readable > 0) {
        return 0;
    }
    uint64_t total = s->rx_total;
    s->rx_pending = 0;
    free_rx_array(s);
    free(s->rx_tail);
    s->rx_tail = NULL;
    if (s->rx_fin) {
        s->st.flags |= PMQ_STREAM_FIN_RECEIVED;
    }
    pmq_obj_changed_locked(&s->obj);
    return total;
}

static int idle_read_status_locked(pmq_stream *s)
{
    uint32_t f = s->st.flags;
    if (f & PMQ_STREAM_FIN_RECEIVED) {
        return PMQ_READ_EOF;
    }
    if (f & PMQ_STREAM_RESET_RECEIVED) {
        return PMQ_READ_RESET;
    }
    if (f & (PMQ_STREAM_SHUTDOWN_COMPLETE | PMQ_STREAM_STOP_SENDING_SENT)) {
        return PMQ_READ_ABORTED;
    }
    if ((f & PMQ_STREAM_UNIDIRECTIONAL) && (f & PMQ_STREAM_LOCAL)) {
        return PMQ_READ_EOF; /* nothing ever arrives on our own unidirectional stream */
    }
    return PMQ_READ_WOULD_BLOCK;
}

int pmq_stream_peek(pmq_stream *s, const uint8_t **data, uint64_t *len)
{
    pthread_mutex_lock(&s->obj.lock);
    if (!s->rx_pending || s->rx_peeking) {
        int status = s->rx_peeking ? PMQ_READ_WOULD_BLOCK : idle_read_status_locked(s);
        pthread_mutex_unlock(&s->obj.lock);
        return status;
    }
    skip_empty_locked(s);
    *data = s->rx[s->rx_index].Buffer + s->rx_offset;
    *len = s->rx[s->rx_index].Length - s->rx_offset;
    s->rx_peeking = 1;
    if (s->rx_tail == NULL) {
        s->guard.users++; /* keeps the handle, and so msquic's buffers, alive */
    }
    pthread_mutex_unlock(&s->obj.lock);
    return PMQ_READ_DATA;
}

void pmq_stream_consume(pmq_stream *s, uint64_t n)
{
    pthread_mutex_lock(&s->obj.lock);
    if (!s->rx_peeking) {
        pthread_mutex_unlock(&s->obj.lock);
        return;
    }
    s->rx_peeking = 0;
    int counted = s->rx_tail == NULL;
    uint64_t complete = advance_locked(s, n);
    HQUIC handle = s->guard.handle;
    pthread_mutex_unlock(&s->obj.lock);
    if (counted) {
        if (complete > 0) {
            pmq_api->StreamReceiveComplete(handle, complete); /* queues only */
        }
        pmq_guard_leave(&s->obj, &s->guard, stream_close_handle);
    }
}

int pmq_stream_read_into(pmq_stream *s, uint8_t *dst, uint64_t cap, uint64_t *copied)
{
    *copied = 0;
    pthread_mutex_lock(&s->obj.lock);
    if (!s->rx_pending || s->rx_peeking) {
        int status = s->rx_peeking ? PMQ_READ_WOULD_BLOCK : idle_read_status_locked(s);
        pthread_mutex_unlock(&s->obj.lock);
        return status;
    }
    /* Copy under the lock: msquic cannot close the stream meanwhile. */
    uint64_t n = 0;
    uint64_t complete = 0;
    while (n < cap && s->rx_pending) {
        skip_empty_locked(s);
        uint64_t chunk = s->rx[s->rx_index].Length - s->rx_offset;
        if (chunk > cap - n) {
            chunk = cap - n;
        }
        memcpy(dst + n, s->rx[s->rx_index].Buffer + s->rx_offset, chunk);
        n += chunk;
        complete = advance_locked(s, chunk);
    }
    int counted = complete > 0 && s->rx_tail == NULL && s->guard.handle != NULL && !s->guard.final;
    HQUIC handle = s->guard.handle;
    if (counted) {
        s->guard.users++;
    }
    pthread_mutex_unlock(&s->obj.lock);
    if (counted) {
        pmq_api->StreamReceiveComplete(handle, complete);
        pmq_guard_leave(&s->obj, &s->guard, stream_close_handle);
    }
    *copied = n;
    return PMQ_READ_DATA;
}

static QUIC_STATUS on_receive(pmq_stream *s, QUIC_STREAM_EVENT *event)
{
    int fin = (event->RECEIVE.Flags & QUIC_RECEIVE_FLAG_FIN) != 0;
    pthread_mutex_lock(&s->obj.lock);
    if (event->RECEIVE.TotalBufferLength == 0) {
        if (fin) {
            s->st.flags |= PMQ_STREAM_FIN_RECEIVED;
            pmq_obj_changed_locked(&s->obj);
        }
        pthread_mutex_unlock(&s->obj.lock);
        return QUIC_STATUS_SUCCESS;
    }
    uint32_t count = event->RECEIVE.BufferCount;
    if (count > RX_INLINE) {
        s->rx = malloc(count * sizeof(QUIC_BUFFER));
        if (s->rx == NULL) {
            s->rx = s->rx_inline;
            pthread_mutex_unlock(&s->obj.lock);
            return QUIC_STATUS_OUT_OF_MEMORY;
        }
    }
    memcpy(s->rx, event->RECEIVE.Buffers, count * sizeof(QUIC_BUFFER)); /* the array dies with the callback */
    s->rx_count = count;
    s->rx_index = 0;
    s->rx_offset = 0;
    s->rx_total = event->RECEIVE.TotalBufferLength;
    s->rx_pending = 1;
    s->rx_fin = fin;
    s->st.readable = s->rx_total;
    skip_empty_locked(s);
    pmq_obj_changed_locked(&s->obj);
    pthread_mutex_unlock(&s->obj.lock);
    return QUIC_STATUS_PENDING;
}

/* At SHUTDOWN_COMPLETE, unread bytes move to memory we own. */
static void keep_unread_locked(pmq_stream *s)
{
    if (!s->rx_pending || s->rx_peeking || s->rx_tail != NULL) {
        return;
    }
    uint64_t left = s->st.readable;
    uint8_t *tail = malloc(left ? left : 1);
    if (tail == NULL) {
        s->rx_pending = 0; /* cannot keep it: reads report the stream aborted */
        s->st.readable = 0;
        free_rx_array(s);
        return;
    }
    uint64_t n = 0;
    while (s->rx_index < s->rx_count) {
        uint64_t chunk = s->rx[s->rx_index].Length - s->rx_offset;
        memcpy(tail + n, s->rx[s->rx_index].Buffer + s->rx_offset, chunk);
        n += chunk;
        s->rx_index++;
        s->rx_offset = 0;
    }
    free_rx_array(s);
    s->rx_tail = tail;
    s->rx_inline[0].Buffer = tail;
    s->rx_inline[0].Length = (uint32_t)n;
    s->rx_count = 1;
    s->rx_index = 0;
}

/* ---- events -------------------------------------------------------------- */

static void on_send_complete(pmq_stream *s, send_block *block)
{
    if (block == NULL) {
        return; /* a FIN without data */
    }
    pthread_mutex_lock(&s->obj.lock);
    uint64_t before = s->st.send_inflight;
    s->st.send_inflight -= block->len;
    if ((before > s->st.send_limit && s->st.send_inflight <= s->st.send_limit) || s->st.send_inflight == 0) {
        pmq_obj_changed_locked(&s->obj); /* wakes drain() */
    }
    pthread_mutex_unlock(&s->obj.lock);
    free(block);
}

static void on_shutdown_complete(pmq_stream *s, QUIC_STREAM_EVENT *event)
{
    pthread_mutex_lock(&s->obj.lock);
    int done_sending = sending_done_locked(s);
    s->st.flags |= PMQ_STREAM_SHUTDOWN_COMPLETE;
    if (event->SHUTDOWN_COMPLETE.ConnectionShutdown) {
        s->st.flags |= PMQ_STREAM_CONN_SHUTDOWN;
    }
    keep_unread_locked(s);
    HQUIC to_close = pmq_guard_finish_locked(&s->guard);
    pmq_obj_changed_locked(&s->obj);
    pthread_mutex_unlock(&s->obj.lock);
    if (done_sending) {
        pmq_conn_stream_sending(s->conn, -1);
    }
    if (to_close != NULL) {
        if (!event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
            pmq_api->StreamClose(to_close);
        }
        pmq_obj_unref(&s->obj); /* msquic's reference */
    }
}

static void set_flag(pmq_stream *s, uint32_t flag, uint64_t *code_field, uint64_t code)
{
    pthread_mutex_lock(&s->obj.lock);
    s->st.flags |= flag;
    if (code_field != NULL) {
        *code_field = code;
    }
    pmq_obj_changed_locked(&s->obj);
    pthread_mutex_unlock(&s->obj.lock);
}

static QUIC_STATUS QUIC_API stream_callback(HQUIC handle, void *context, QUIC_STREAM_EVENT *event)
{
    pmq_stream *s = context;
    QUIC_STATUS status = QUIC_STATUS_SUCCESS;
    pmq_callback_enter();
    switch (event->Type) {
    case QUIC_STREAM_EVENT_START_COMPLETE:
        pthread_mutex_lock(&s->obj.lock);
        if (QUIC_SUCCEEDED(event->START_COMPLETE.Status)) {
            s->st.id = event->START_COMPLETE.ID;
            s->st.flags |= PMQ_STREAM_ID_KNOWN;
        } else {
            s->st.start_status = event->START_COMPLETE.Status;
            s->st.flags |= PMQ_STREAM_START_FAILED;
        }
        pmq_obj_changed_locked(&s->obj);
        pthread_mutex_unlock(&s->obj.lock);
        break;
    case QUIC_STREAM_EVENT_RECEIVE:
        status = on_receive(s, event);
        break;
    case QUIC_STREAM_EVENT_SEND_COMPLETE:
        on_send_complete(s, event->SEND_COMPLETE.ClientContext);
        break;
    case QUIC_STREAM_EVENT_PEER_SEND_SHUTDOWN:
        pthread_mutex_lock(&s->obj.lock);
        if (s->rx_pending) {
            s->rx_fin = 1; /* EOF once the pending data is read */
        } else {
            s->st.flags |= PMQ_STREAM_FIN_RECEIVED;
        }
        pmq_obj_changed_locked(&s->obj);
        pthread_mutex_unlock(&s->obj.lock);
        break;
    case QUIC_STREAM_EVENT_PEER_SEND_ABORTED:
        set_flag(s, PMQ_STREAM_RESET_RECEIVED, &s->st.reset_code, event->PEER_SEND_ABORTED.ErrorCode);
        break;
    case QUIC_STREAM_EVENT_PEER_RECEIVE_ABORTED:
        set_flag(s, PMQ_STREAM_STOP_SENDING_RECEIVED, &s->st.stop_sending_code,
                 event->PEER_RECEIVE_ABORTED.ErrorCode);
        break;
    case QUIC_STREAM_EVENT_SEND_SHUTDOWN_COMPLETE: {
        pthread_mutex_lock(&s->obj.lock);
        int done_sending = sending_done_locked(s);
        s->st.flags |= PMQ_STREAM_SEND_SHUTDOWN_COMPLETE;
        pmq_obj_changed_locked(&s->obj);
        pthread_mutex_unlock(&s->obj.lock);
        if (done_sending) {
            pmq_conn_stream_sending(s->conn, -1);
        }
        break;
    }
    case QUIC_STREAM_EVENT_IDEAL_SEND_BUFFER_SIZE:
        pthread_mutex_lock(&s->obj.lock);
        if (!s->send_limit_fixed) {
            s->st.send_limit = event->IDEAL_SEND_BUFFER_SIZE.ByteCount;
            pmq_obj_changed_locked(&s->obj);
        }
        pthread_mutex_unlock(&s->obj.lock);
        break;
    case QUIC_STREAM_EVENT_SHUTDOWN_COMPLETE:
        on_shutdown_complete(s, event);
        break;
    default:
        break;
    }
    pmq_callback_leave();
    return status;
}

/* ---- opening ---------------------------------------------------------------- */

pmq_stream *pmq_stream_new_peer(pmq_conn *conn, HQUIC handle, int unidirectional)
{
    pmq_stream *s = stream_new(conn, unidirectional ? PMQ_STREAM_UNIDIRECTIONAL : 0);
    if (s == NULL) {
        return NULL;
    }
    s->guard.handle = handle;
    uint32_t size = sizeof(s->st.id);
    if (QUIC_SUCCEEDED(pmq_api->GetParam(handle, QUIC_PARAM_STREAM_ID, &size, &s->st.id))) {
        s->st.flags |= PMQ_STREAM_ID_KNOWN; /* inline: we are on the connection's worker */
    }
    pmq_api->SetCallbackHandler(handle, (void *)stream_callback, s);
    return s;
}

static QUIC_STATUS QUIC_API refused_stream_callback(HQUIC stream, void *context, QUIC_STREAM_EVENT *event)
{
    if (event->Type == QUIC_STREAM_EVENT_SHUTDOWN_COMPLETE && !event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
        pmq_api->StreamClose(stream);
    }
    return QUIC_STATUS_SUCCESS;
}

void pmq_stream_refuse(HQUIC handle)
{
    /* A handler must be set before PEER_STREAM_STARTED returns, or msquic aborts. */
    pmq_api->SetCallbackHandler(handle, (void *)refused_stream_callback, NULL);
    pmq_api->StreamShutdown(handle, QUIC_STREAM_SHUTDOWN_FLAG_ABORT | QUIC_STREAM_SHUTDOWN_FLAG_IMMEDIATE, 0);
}

void pmq_stream_abort_unaccepted(pmq_stream *s)
{
    pmq_stream_shutdown(s, QUIC_STREAM_SHUTDOWN_FLAG_ABORT, 0);
    pmq_obj_unref(&s->obj);
}

QUIC_STATUS pmq_stream_open_on(pmq_conn *conn, HQUIC connection, int unidirectional, pmq_stream **out)
{
    pmq_stream *s = stream_new(conn, PMQ_STREAM_LOCAL | (unidirectional ? PMQ_STREAM_UNIDIRECTIONAL : 0));
    if (s == NULL) {
        return QUIC_STATUS_OUT_OF_MEMORY;
    }
    QUIC_STATUS status = pmq_api->StreamOpen(
        connection, unidirectional ? QUIC_STREAM_OPEN_FLAG_UNIDIRECTIONAL : QUIC_STREAM_OPEN_FLAG_NONE,
        stream_callback, s, &s->guard.handle);
    if (QUIC_FAILED(status)) {
        stream_discard(s);
        return status;
    }
    /* IMMEDIATE: the peer learns of the stream even before data is written.
     * SHUTDOWN_ON_FAIL: a failed start still ends in SHUTDOWN_COMPLETE, which closes it. */
    status = pmq_api->StreamStart(s->guard.handle,
                                  QUIC_STREAM_START_FLAG_IMMEDIATE | QUIC_STREAM_START_FLAG_SHUTDOWN_ON_FAIL);
    if (QUIC_FAILED(status)) {
        pmq_api->StreamClose(s->guard.handle); /* never started: no events will come */
        stream_discard(s);
        return status;
    }
    *out = s;
    return QUIC_STATUS_SUCCESS;
}

/* ---- sending and shutdown ---------------------------------------------------- */

QUIC_STATUS pmq_stream_write(pmq_stream *s, const uint8_t *data, size_t len, int fin)
{
    send_block *block = NULL;
    if (len > 0) {
        if (len > UINT32_MAX) {
            return QUIC_STATUS_INVALID_PARAMETER;
        }
        block = malloc(sizeof(*block) + len);
        if (block == NULL) {
            return QUIC_STATUS_OUT_OF_MEMORY;
        }
        block->len = len;
        block->buffer.Length = (uint32_t)len;
        block->buffer.Buffer = (uint8_t *)(block + 1);
        memcpy(block->buffer.Buffer, data, len);
    }
    pthread_mutex_lock(&s->obj.lock);
    uint32_t f = s->st.flags;
    HQUIC handle = NULL;
    if (!(f & (PMQ_STREAM_FIN_SENT | PMQ_STREAM_RESET_SENT)) && !((f & PMQ_STREAM_UNIDIRECTIONAL) && !(f & PMQ_STREAM_LOCAL)) &&
        s->guard.handle != NULL && !s->guard.final) {
        handle = s->guard.handle;
        s->guard.users++;
        s->st.send_inflight += len;
        s->st.bytes_written += len;
        if (fin) {
            s->st.flags |= PMQ_STREAM_FIN_SENT;
        }
    }
    pthread_mutex_unlock(&s->obj.lock);
    if (handle == NULL) {
        free(block);
        return QUIC_STATUS_INVALID_STATE;
    }
    QUIC_STATUS status = pmq_api->StreamSend(handle, block ? &block->buffer : NULL, block ? 1 : 0,
                                             fin ? QUIC_SEND_FLAG_FIN : QUIC_SEND_FLAG_NONE, block);
    if (QUIC_FAILED(status)) {
        pthread_mutex_lock(&s->obj.lock);
        s->st.send_inflight -= len;
        s->st.bytes_written -= len;
        pthread_mutex_unlock(&s->obj.lock);
        free(block);
    }
    pmq_guard_leave(&s->obj, &s->guard, stream_close_handle);
    return status;
}

QUIC_STATUS pmq_stream_shutdown(pmq_stream *s, uint32_t flags, uint64_t error_code)
{
    HQUIC handle = pmq_guard_enter(&s->obj, &s->guard);
    if (handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    pthread_mutex_lock(&s->obj.lock);
    uint64_t discard = 0;
    if ((flags & QUIC_STREAM_SHUTDOWN_FLAG_ABORT_RECEIVE) && s->rx_pending && !s->rx_peeking && s->rx_tail == NULL) {
        /* Nobody will read it: hand the pending receive back so msquic can finish. */
        discard = s->rx_total;
        s->rx_pending = 0;
        s->st.readable = 0;
        free_rx_array(s);
    }
    if (flags & QUIC_STREAM_SHUTDOWN_FLAG_GRACEFUL) {
        s->st.flags |= PMQ_STREAM_FIN_SENT;
    }
    if (flags & QUIC_STREAM_SHUTDOWN_FLAG_ABORT_SEND) {
        s->st.flags |= PMQ_STREAM_RESET_SENT;
    }
    if (flags & QUIC_STREAM_SHUTDOWN_FLAG_ABORT_RECEIVE) {
        s->st.flags |= PMQ_STREAM_STOP_SENDING_SENT;
    }
    pmq_obj_changed_locked(&s->obj);
    pthread_mutex_unlock(&s->obj.lock);
    if (discard > 0) {
        pmq_api->StreamReceiveComplete(handle, discard);
    }
    QUIC_STATUS status = pmq_api->StreamShutdown(handle, (QUIC_STREAM_SHUTDOWN_FLAGS)flags, error_code);
    pmq_guard_leave(&s->obj, &s->guard, stream_close_handle);
    return status;
}

void pmq_stream_set_send_limit(pmq_stream *s, uint64_t limit)
{
    pthread_mutex_lock(&s->obj.lock);
    s->send_limit_fixed = limit != 0;
    if (limit != 0) {
        s->st.send_limit = limit;
    }
    pmq_obj_changed_locked(&s->obj);
    pthread_mutex_unlock(&s->obj.lock);
}

void pmq_stream_abandon(pmq_stream *s)
{
    pthread_mutex_lock(&s->obj.lock);
    uint32_t f = s->st.flags;
    pthread_mutex_unlock(&s->obj.lock);
    if (!(f & PMQ_STREAM_SHUTDOWN_COMPLETE)) {
        /* Abandoned: abort what is still open in each direction. */
        uint32_t flags = 0;
        if (!(f & (PMQ_STREAM_FIN_SENT | PMQ_STREAM_RESET_SENT)) &&
            !((f & PMQ_STREAM_UNIDIRECTIONAL) && !(f & PMQ_STREAM_LOCAL))) {
            flags |= QUIC_STREAM_SHUTDOWN_FLAG_ABORT_SEND;
        }
        if (!(f & (PMQ_STREAM_FIN_RECEIVED | PMQ_STREAM_RESET_RECEIVED | PMQ_STREAM_STOP_SENDING_SENT)) &&
            !((f & PMQ_STREAM_UNIDIRECTIONAL) && (f & PMQ_STREAM_LOCAL))) {
            flags |= QUIC_STREAM_SHUTDOWN_FLAG_ABORT_RECEIVE;
        }
        if (flags != 0) {
            pmq_stream_shutdown(s, flags, 0);
        }
    }
}

void pmq_stream_release(pmq_stream *s)
{
    pmq_stream_abandon(s);
    pmq_obj_unref(&s->obj);
}
