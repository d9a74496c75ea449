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
/* Receives are copied while the copies stay under this; larger or later ones
 * are held PENDING, which is what flow-controls the peer. */
#define COPY_LIMIT (64u * 1024u)
#define DEFAULT_SEND_LIMIT (64u * 1024u) /* until msquic reports its ideal size */

typedef struct send_block {
    QUIC_BUFFER buffer;
    uint64_t len;
} send_block;

struct pmq_stream {
    /* Must stay first. obj.lock guards the fields below but next (guarded by
     * the lock of the connection whose list holds the stream) and conn (set
     * once); begin_read also peeks at needs_start atomically without it. Lock
     * order (internal.h): taken with none of our locks held; under it the
     * connection's lock (take_start_locked) and the waker's lock. */
    pmq_obj obj;
    pmq_guard guard;
    /* Link in one of the connection's stream lists (internal.h): read and
     * written only by the pmq_stream_list functions below. */
    pmq_stream *next;
    pmq_conn *conn;            /* referenced, for its count of sending streams */
    /* Counted in conn's streams_sending, from the first write or FIN until the
     * send side ends: a stream never written has nothing for close() to wait for. */
    int sending;
    int send_over;             /* the send side ended (or there is none): never counted again */
    pmq_stream_state st;
    int send_limit_fixed;
    uint64_t ideal_send_limit;  /* msquic's last ideal send buffer size, for set_send_limit(0) */
    int needs_start;           /* opened locally; starts with the first send */
    /* Small receives, copied: msquic need not wait for Python to go on. */
    uint8_t *buf;
    uint64_t buf_cap;
    uint64_t buf_head;         /* unread data is buf[buf_head, buf_tail) */
    uint64_t buf_tail;
    /* The pending receive (returned PENDING): msquic's buffers, read in place. */
    QUIC_BUFFER rx_inline[RX_INLINE];
    QUIC_BUFFER *rx;
    uint32_t rx_count;
    uint32_t rx_index;
    uint64_t rx_offset;        /* within rx[rx_index] */
    uint64_t rx_total;
    int rx_pending;
    int fin_seen;              /* the peer's FIN came (its data may still be unread) */
    int peeking;               /* a peek holds a pointer (and a guard use) until consume */
    pthread_t peek_thread;     /* the thread holding the peek */
    uint64_t peek_len;         /* the bytes the peek showed: a consume takes no more */
    /* 0-RTT (resumption.c): final once the connection started, which opening a
     * stream needs; copied here so that each send need not take conn's lock. */
    QUIC_SEND_FLAGS send_flags_0rtt;
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
    free(s->buf);
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
        s->ideal_send_limit = DEFAULT_SEND_LIMIT;
        s->conn = conn;
        s->send_flags_0rtt = pmq_conn_send_flags(conn);
        pmq_obj_ref(pmq_conn_obj(conn));
        s->send_over = (flags & PMQ_STREAM_UNIDIRECTIONAL) && !(flags & PMQ_STREAM_LOCAL);
    }
    return s;
}

/* Never opened after all (so nothing was sent either): undo stream_new. */
static void stream_discard(pmq_stream *s)
{
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
    s->send_over = 1;
    return was;
}

/* Something (data or FIN) is queued to send; called with s->obj.lock held (the
 * connection's lock may be taken under it). */
static void sending_begin_locked(pmq_stream *s)
{
    if (!s->sending && !s->send_over) {
        s->sending = 1;
        pmq_conn_stream_sending(s->conn, 1);
    }
}

pmq_obj *pmq_stream_obj(pmq_stream *s) { return &s->obj; }

/* ---- the connection's stream lists ---------------------------------------- */

void pmq_stream_list_push_back(pmq_stream_list *list, pmq_stream *s)
{
    s->next = NULL;
    if (list->tail != NULL) {
        list->tail->next = s;
    } else {
        list->head = s;
    }
    list->tail = s;
}

void pmq_stream_list_push_front(pmq_stream_list *list, pmq_stream *s)
{
    s->next = list->head;
    list->head = s;
    if (list->tail == NULL) {
        list->tail = s;
    }
}

pmq_stream *pmq_stream_list_pop(pmq_stream_list *list)
{
    pmq_stream *s = list->head;
    if (s != NULL) {
        list->head = s->next;
        if (list->head == NULL) {
            list->tail = NULL;
        }
        s->next = NULL;
    }
    return s;
}

void pmq_stream_list_remove(pmq_stream_list *list, pmq_stream *s)
{
    pmq_stream *prev = NULL;
    for (pmq_stream *i = list->head; i != NULL; prev = i, i = i->next) {
        if (i == s) {
            if (prev != NULL) {
                prev->next = s->next;
            } else {
                list->head = s->next;
            }
            if (list->tail == s) {
                list->tail = prev;
            }
            s->next = NULL;
            return;
        }
    }
}

pmq_stream_list pmq_stream_list_take(pmq_stream_list *list)
{
    pmq_stream_list taken = *list;
    list->head = list->tail = NULL;
    return taken;
}

void pmq_stream_list_ref_all(const pmq_stream_list *list)
{
    for (pmq_stream *s = list->head; s != NULL; s = s->next) {
        pmq_obj_ref(&s->obj);
    }
}

void pmq_stream_get_state(pmq_stream *s, pmq_stream_state *out)
{
    PMQ_CHECK(&s->obj);
    pthread_mutex_lock(&s->obj.lock);
    *out = s->st;
    pthread_mutex_unlock(&s->obj.lock);
}

/* ---- receive -------------------------------------------------------------- */

static uint64_t buffered(const pmq_stream *s) { return s->buf_tail - s->buf_head; }

static void skip_empty_locked(pmq_stream *s)
{
    while (s->rx_index < s->rx_count && s->rx_offset == s->rx[s->rx_index].Length) {
        s->rx_index++;
        s->rx_offset = 0;
    }
}

/* Appends len bytes to the copy buffer; never while a peek points into it. */
static int buf_append_locked(pmq_stream *s, const uint8_t *data, uint64_t len)
{
    if (s->buf_head > 0) { /* compact */
        memmove(s->buf, s->buf + s->buf_head, buffered(s));
        s->buf_tail -= s->buf_head;
        s->buf_head = 0;
    }
    if (s->buf_tail + len > s->buf_cap) {
        uint64_t cap = s->buf_cap ? s->buf_cap : 4096;
        while (cap < s->buf_tail + len) {
            cap *= 2;
        }
        uint8_t *grown = realloc(s->buf, cap);
        if (grown == NULL) {
            return 0;
        }
        s->buf = grown;
        s->buf_cap = cap;
    }
    memcpy(s->buf + s->buf_tail, data, len);
    s->buf_tail += len;
    return 1;
}

static void update_eof_locked(pmq_stream *s)
{
    if (s->fin_seen && s->st.readable == 0 && !(s->st.flags & PMQ_STREAM_FIN_RECEIVED)) {
        s->st.flags |= PMQ_STREAM_FIN_RECEIVED;
        pmq_obj_changed_locked(&s->obj);
    }
}

/* Marks n bytes read (from the copy buffer first); returns the pending receive's
 * total when it is now fully read, so the caller completes it; else 0. */
static uint64_t advance_locked(pmq_stream *s, uint64_t n)
{
    s->st.readable -= n;
    s->st.bytes_read += n;
    uint64_t from_buf = n < buffered(s) ? n : buffered(s);
    s->buf_head += from_buf;
    n -= from_buf;
    uint64_t complete = 0;
    if (n > 0 || (s->rx_pending && buffered(s) == 0)) {
        s->rx_offset += n;
        skip_empty_locked(s);
        if (s->rx_pending && s->rx_index == s->rx_count) {
            complete = s->rx_total;
            s->rx_pending = 0;
            free_rx_array(s);
        }
    }
    update_eof_locked(s);
    return complete;
}

/* Before the handle closes, unread pending bytes move to the copy buffer. */
static void keep_unread_locked(pmq_stream *s)
{
    if (!s->rx_pending || s->peeking) {
        return;
    }
    while (s->rx_index < s->rx_count) {
        const QUIC_BUFFER *b = &s->rx[s->rx_index];
        if (!buf_append_locked(s, b->Buffer + s->rx_offset, b->Length - s->rx_offset)) {
            s->st.readable = buffered(s); /* out of memory: the rest is lost, reads end early */
            break;
        }
        s->rx_index++;
        s->rx_offset = 0;
    }
    s->rx_pending = 0;
    free_rx_array(s);
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

/* Starts a local stream if needed and locks it. Returns -1 with the lock held
 * when data can be read, else the PMQ_READ_* status with the lock released. */
static int begin_read(pmq_stream *s)
{
    if (__atomic_load_n(&s->needs_start, __ATOMIC_RELAXED)) {
        pmq_stream_ensure_started(s); /* the peer cannot answer a stream it never saw */
        pmq_conn_start_deferred(s->conn); /* nor a connection never started (early data) */
    }
    pthread_mutex_lock(&s->obj.lock);
    if (s->peeking && pthread_equal(s->peek_thread, pthread_self())) {
        /* This thread peeked and never consumed: Python was interrupted (a signal's
         * exception) between the peek's return and its try/finally. Nothing was taken. */
        pthread_mutex_unlock(&s->obj.lock);
        pmq_stream_consume(s, 0);
        pthread_mutex_lock(&s->obj.lock);
    }
    if (s->st.readable > 0 && !s->peeking) {
        return -1;
    }
    int status = s->peeking ? PMQ_READ_WOULD_BLOCK : idle_read_status_locked(s);
    pthread_mutex_unlock(&s->obj.lock);
    return status;
}

/* The next contiguous unread bytes: the copy buffer first, then the pending receive. */
static uint64_t next_chunk_locked(pmq_stream *s, const uint8_t **data)
{
    if (buffered(s) > 0) {
        *data = s->buf + s->buf_head;
        return buffered(s);
    }
    skip_empty_locked(s);
    *data = s->rx[s->rx_index].Buffer + s->rx_offset;
    return s->rx[s->rx_index].Length - s->rx_offset;
}

int pmq_stream_peek(pmq_stream *s, const uint8_t **data, uint64_t *len)
{
    PMQ_CHECK(&s->obj);
    int status = begin_read(s);
    if (status >= 0) {
        return status;
    }
    *len = next_chunk_locked(s, data);
    s->peek_len = *len;
    s->peeking = 1;
    s->peek_thread = pthread_self();
    s->guard.users++; /* keeps the handle, and so msquic's buffers, alive */
    pthread_mutex_unlock(&s->obj.lock);
    return PMQ_READ_DATA;
}

/* What a read would find now, without taking anything; called with the lock held. */
static int next_read_status_locked(pmq_stream *s)
{
    return s->st.readable > 0 && !s->peeking ? PMQ_READ_DATA : idle_read_status_locked(s);
}

/* pmq_stream_consume; with next != NULL also what a read would find after it. */
static void consume(pmq_stream *s, uint64_t n, int *next)
{
    pthread_mutex_lock(&s->obj.lock);
    if (!s->peeking) {
        if (next != NULL) {
            *next = next_read_status_locked(s);
        }
        pthread_mutex_unlock(&s->obj.lock);
        return;
    }
    s->peeking = 0;
    uint64_t complete = advance_locked(s, n < s->peek_len ? n : s->peek_len);
    if (s->guard.final) {
        keep_unread_locked(s); /* shutdown completed meanwhile: the handle closes after us */
        complete = 0;
    }
    if (next != NULL) {
        *next = next_read_status_locked(s);
    }
    HQUIC handle = s->guard.handle;
    pthread_mutex_unlock(&s->obj.lock);
    if (complete > 0) {
        pmq_api->StreamReceiveComplete(handle, complete); /* queues only */
    }
    pmq_guard_leave(&s->obj, &s->guard, stream_close_handle);
}

void pmq_stream_consume(pmq_stream *s, uint64_t n)
{
    PMQ_CHECK(&s->obj);
    consume(s, n, NULL);
}

int pmq_stream_consume_next(pmq_stream *s, uint64_t n)
{
    PMQ_CHECK(&s->obj);
    int next = PMQ_READ_WOULD_BLOCK;
    consume(s, n, &next);
    return next;
}

/* pmq_stream_read_into; with next != NULL also what a read would find after it. */
static int read_into(pmq_stream *s, uint8_t *dst, uint64_t cap, uint64_t *copied, int *next)
{
    *copied = 0;
    int status = begin_read(s);
    if (status >= 0) {
        if (next != NULL) {
            *next = status;
        }
        return status;
    }
    /* Copy under the lock: msquic cannot close the stream meanwhile. */
    uint64_t n = 0;
    uint64_t complete = 0;
    while (n < cap && s->st.readable > 0) {
        const uint8_t *src;
        uint64_t chunk = next_chunk_locked(s, &src);
        if (chunk > cap - n) {
            chunk = cap - n;
        }
        memcpy(dst + n, src, chunk);
        n += chunk;
        complete = advance_locked(s, chunk);
    }
    if (next != NULL) {
        *next = next_read_status_locked(s);
    }
    HQUIC handle = complete > 0 ? pmq_guard_enter_locked(&s->guard) : NULL;
    pthread_mutex_unlock(&s->obj.lock);
    if (handle != NULL) {
        pmq_api->StreamReceiveComplete(handle, complete);
        pmq_guard_leave(&s->obj, &s->guard, stream_close_handle);
    }
    *copied = n;
    return PMQ_READ_DATA;
}

int pmq_stream_read_into(pmq_stream *s, uint8_t *dst, uint64_t cap, uint64_t *copied)
{
    PMQ_CHECK(&s->obj);
    return read_into(s, dst, cap, copied, NULL);
}

int pmq_stream_read_into_next(pmq_stream *s, uint8_t *dst, uint64_t cap, uint64_t *copied, int *next)
{
    PMQ_CHECK(&s->obj);
    return read_into(s, dst, cap, copied, next);
}

static QUIC_STATUS on_receive(pmq_stream *s, QUIC_STREAM_EVENT *event)
{
    uint64_t total = event->RECEIVE.TotalBufferLength;
    QUIC_STATUS status = QUIC_STATUS_SUCCESS;
    pthread_mutex_lock(&s->obj.lock);
    if (event->RECEIVE.Flags & QUIC_RECEIVE_FLAG_FIN) {
        s->fin_seen = 1;
    }
    if (total > 0 && !s->rx_pending && !s->peeking && buffered(s) + total <= COPY_LIMIT) {
        uint64_t done = 0;
        for (uint32_t i = 0; i < event->RECEIVE.BufferCount; i++) {
            const QUIC_BUFFER *b = &event->RECEIVE.Buffers[i];
            if (!buf_append_locked(s, b->Buffer, b->Length)) {
                break;
            }
            done += b->Length;
        }
        if (done < total) { /* out of memory: take what was copied; msquic redelivers the rest */
            event->RECEIVE.TotalBufferLength = done;
            s->fin_seen = 0;
            status = done ? QUIC_STATUS_SUCCESS : QUIC_STATUS_OUT_OF_MEMORY;
        }
        s->st.readable += done;
    } else if (total > 0) {
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
        s->rx_total = total;
        s->rx_pending = 1;
        s->st.readable += total;
        skip_empty_locked(s);
        status = QUIC_STATUS_PENDING;
    }
    pmq_obj_changed_locked(&s->obj);
    update_eof_locked(s);
    pthread_mutex_unlock(&s->obj.lock);
    return status;
}

/* ---- events -------------------------------------------------------------- */

/* Something written will not arrive; called with s->obj.lock held. */
static void send_incomplete_locked(pmq_stream *s)
{
    if (!(s->st.flags & PMQ_STREAM_SEND_INCOMPLETE)) {
        s->st.flags |= PMQ_STREAM_SEND_INCOMPLETE;
        pmq_obj_changed_locked(&s->obj); /* wakes drain(), which reports it */
    }
}

/* The send side ended without the peer acknowledging everything (FIN included):
 * data is undelivered if anything was written; called with s->obj.lock held. */
static void send_aborted_locked(pmq_stream *s)
{
    if (s->st.bytes_written > 0 || (s->st.flags & PMQ_STREAM_FIN_SENT)) {
        send_incomplete_locked(s);
    }
}

static void on_send_complete(pmq_stream *s, send_block *block, int canceled)
{
    if (canceled) {
        pthread_mutex_lock(&s->obj.lock);
        send_incomplete_locked(s);
        pthread_mutex_unlock(&s->obj.lock);
    }
    if (block == NULL) {
        return; /* a FIN without data */
    }
    pthread_mutex_lock(&s->obj.lock);
    uint64_t before = s->st.send_inflight;
    s->st.send_inflight -= block->len;
    /* Only a drain() that waits needs waking: a wake when the last bytes leave
     * would cost a loop turn per request (every reader of a reply is attached). */
    if (before > s->st.send_limit && s->st.send_inflight <= s->st.send_limit) {
        pmq_obj_changed_locked(&s->obj); /* wakes drain() */
    }
    pthread_mutex_unlock(&s->obj.lock);
    free(block);
}

static void on_shutdown_complete(pmq_stream *s, QUIC_STREAM_EVENT *event)
{
    pthread_mutex_lock(&s->obj.lock);
    int done_sending = sending_done_locked(s);
    if (!(s->st.flags & PMQ_STREAM_SEND_SHUTDOWN_COMPLETE)) {
        send_aborted_locked(s); /* never completed gracefully */
    }
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
    PMQ_CHECK_CALLBACK(&s->obj, handle);
    QUIC_STATUS status = QUIC_STATUS_SUCCESS;
    pmq_callback_enter();
    switch (event->Type) {
    case QUIC_STREAM_EVENT_START_COMPLETE:
        pthread_mutex_lock(&s->obj.lock);
        if (QUIC_SUCCEEDED(event->START_COMPLETE.Status)) {
            s->st.id = event->START_COMPLETE.ID; /* read on demand: nobody waits for it */
            s->st.flags |= PMQ_STREAM_ID_KNOWN;
        } else {
            s->st.start_status = event->START_COMPLETE.Status;
            s->st.flags |= PMQ_STREAM_START_FAILED;
            pmq_obj_changed_locked(&s->obj);
        }
        pthread_mutex_unlock(&s->obj.lock);
        break;
    case QUIC_STREAM_EVENT_RECEIVE:
        status = on_receive(s, event);
        break;
    case QUIC_STREAM_EVENT_SEND_COMPLETE:
        on_send_complete(s, event->SEND_COMPLETE.ClientContext, event->SEND_COMPLETE.Canceled);
        break;
    case QUIC_STREAM_EVENT_PEER_SEND_SHUTDOWN:
        pthread_mutex_lock(&s->obj.lock);
        s->fin_seen = 1;
        update_eof_locked(s); /* EOF now, or once the data still unread is read */
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
        if (!event->SEND_SHUTDOWN_COMPLETE.Graceful) {
            send_aborted_locked(s); /* Graceful means everything, FIN included, was acknowledged */
        }
        s->st.flags |= PMQ_STREAM_SEND_SHUTDOWN_COMPLETE; /* waited on through the connection's count */
        pthread_mutex_unlock(&s->obj.lock);
        if (done_sending) {
            pmq_conn_stream_sending(s->conn, -1);
        }
        break;
    }
    case QUIC_STREAM_EVENT_IDEAL_SEND_BUFFER_SIZE:
        pthread_mutex_lock(&s->obj.lock);
        s->ideal_send_limit = event->IDEAL_SEND_BUFFER_SIZE.ByteCount; /* kept while a fixed limit applies */
        if (!s->send_limit_fixed) {
            uint64_t old = s->st.send_limit;
            s->st.send_limit = event->IDEAL_SEND_BUFFER_SIZE.ByteCount;
            if (s->st.send_inflight > old && s->st.send_inflight <= s->st.send_limit) {
                pmq_obj_changed_locked(&s->obj); /* unblocks drain() */
            }
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
    PMQ_SET_HANDLE(&s->obj, handle);
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
    PMQ_CHECK(&s->obj);
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
    PMQ_SET_HANDLE(&s->obj, s->guard.handle);
    /* Started by the first send (QUIC_SEND_FLAG_START saves a queued operation),
     * or by pmq_stream_ensure_started before anything else needs it. */
    s->needs_start = 1;
    *out = s;
    return QUIC_STATUS_SUCCESS;
}

/* Takes the pending start, if any: returns 1 when the caller must start the stream. */
static int take_start_locked(pmq_stream *s)
{
    int start = s->needs_start;
    s->needs_start = 0;
    if (start) {
        pmq_conn_forget_unstarted(s->conn, s); /* lock order: stream, then connection */
    }
    return start;
}

/* msquic reports nothing, not even SHUTDOWN_COMPLETE, for a stream it never
 * started: end it here and close its handle (now, or as the last user leaves).
 * Called with the lock held, by whoever took the pending start or failed it. */
static HQUIC end_unstarted_locked(pmq_stream *s, uint32_t flags, int *done_sending)
{
    *done_sending = sending_done_locked(s);
    s->st.flags |= PMQ_STREAM_SHUTDOWN_COMPLETE | flags;
    pmq_obj_changed_locked(&s->obj);
    return s->guard.final ? NULL : pmq_guard_finish_locked(&s->guard);
}

static void end_unstarted_finish(pmq_stream *s, HQUIC to_close, int done_sending)
{
    if (done_sending) {
        pmq_conn_stream_sending(s->conn, -1);
    }
    if (to_close != NULL) {
        pmq_api->StreamClose(to_close);
        pmq_obj_unref(&s->obj); /* msquic's reference */
    }
}

void pmq_stream_end_unstarted(pmq_stream *s)
{
    PMQ_CHECK(&s->obj);
    pthread_mutex_lock(&s->obj.lock);
    int pending = s->needs_start; /* else a start was taken: msquic ends the stream */
    s->needs_start = 0;
    int done_sending = 0;
    HQUIC to_close = pending ? end_unstarted_locked(s, PMQ_STREAM_CONN_SHUTDOWN, &done_sending) : NULL;
    pthread_mutex_unlock(&s->obj.lock);
    end_unstarted_finish(s, to_close, done_sending);
}

/* A start refused at once (the peer closed the connection): no event follows. */
static void start_refused(pmq_stream *s, QUIC_STATUS status)
{
    pthread_mutex_lock(&s->obj.lock);
    s->st.start_status = status;
    int done_sending = 0;
    HQUIC to_close = end_unstarted_locked(s, PMQ_STREAM_START_FAILED, &done_sending);
    pthread_mutex_unlock(&s->obj.lock);
    end_unstarted_finish(s, to_close, done_sending);
}

static void start_now(pmq_stream *s, HQUIC handle)
{
    /* IMMEDIATE: the peer learns of the stream even before data is written.
     * SHUTDOWN_ON_FAIL: a failed start still ends in SHUTDOWN_COMPLETE, which closes it. */
    QUIC_STATUS status = pmq_api->StreamStart(handle, QUIC_STREAM_START_FLAG_IMMEDIATE |
                                                          QUIC_STREAM_START_FLAG_SHUTDOWN_ON_FAIL);
    if (QUIC_FAILED(status)) {
        start_refused(s, status);
    }
}

void pmq_stream_ensure_started(pmq_stream *s)
{
    PMQ_CHECK(&s->obj);
    pthread_mutex_lock(&s->obj.lock);
    int start = take_start_locked(s);
    HQUIC handle = start ? s->guard.handle : NULL;
    if (handle != NULL) {
        s->guard.users++;
    }
    pthread_mutex_unlock(&s->obj.lock);
    if (handle != NULL) {
        start_now(s, handle);
        pmq_guard_leave(&s->obj, &s->guard, stream_close_handle);
    }
}

/* ---- sending and shutdown ---------------------------------------------------- */

QUIC_STATUS pmq_stream_write(pmq_stream *s, const uint8_t *data, size_t len, int fin)
{
    PMQ_CHECK(&s->obj);
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
        if (len > 0 || fin) {
            sending_begin_locked(s);
        }
    }
    int start = handle != NULL && take_start_locked(s);
    pthread_mutex_unlock(&s->obj.lock);
    if (handle == NULL) {
        free(block);
        return QUIC_STATUS_INVALID_STATE;
    }
    QUIC_SEND_FLAGS send_flags = (fin ? QUIC_SEND_FLAG_FIN : QUIC_SEND_FLAG_NONE) |
                                 (start ? QUIC_SEND_FLAG_START : QUIC_SEND_FLAG_NONE) |
                                 s->send_flags_0rtt;
    QUIC_STATUS status = pmq_api->StreamSend(handle, block ? &block->buffer : NULL, block ? 1 : 0, send_flags, block);
    if (QUIC_FAILED(status)) {
        pthread_mutex_lock(&s->obj.lock);
        s->st.send_inflight -= len;
        s->st.bytes_written -= len;
        if (fin) {
            s->st.flags &= ~PMQ_STREAM_FIN_SENT; /* nothing was finished */
        }
        pthread_mutex_unlock(&s->obj.lock);
        free(block);
        if (start) {
            start_refused(s, status); /* the stream was not started either */
        }
    }
    pmq_guard_leave(&s->obj, &s->guard, stream_close_handle);
    return status;
}

QUIC_STATUS pmq_stream_shutdown(pmq_stream *s, uint32_t flags, uint64_t error_code)
{
    PMQ_CHECK(&s->obj);
    pmq_stream_ensure_started(s); /* msquic reports shutdowns of started streams only */
    HQUIC handle = pmq_guard_enter(&s->obj, &s->guard);
    if (handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    pthread_mutex_lock(&s->obj.lock);
    uint64_t discard = 0;
    if ((flags & QUIC_STREAM_SHUTDOWN_FLAG_ABORT_RECEIVE) && !s->peeking) {
        /* Nobody will read it: drop it, and hand a pending receive back so msquic can finish. */
        discard = s->rx_pending ? s->rx_total : 0;
        s->rx_pending = 0;
        free_rx_array(s);
        s->buf_head = s->buf_tail = 0;
        s->st.readable = 0;
    }
    if (flags & QUIC_STREAM_SHUTDOWN_FLAG_GRACEFUL) {
        s->st.flags |= PMQ_STREAM_FIN_SENT;
        sending_begin_locked(s);
    }
    if (flags & QUIC_STREAM_SHUTDOWN_FLAG_ABORT_SEND) {
        if (!(s->st.flags & (PMQ_STREAM_SEND_SHUTDOWN_COMPLETE | PMQ_STREAM_RESET_SENT))) {
            send_aborted_locked(s); /* drain() reports it at once, not when msquic confirms */
        }
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
    PMQ_CHECK(&s->obj);
    pthread_mutex_lock(&s->obj.lock);
    s->send_limit_fixed = limit != 0;
    s->st.send_limit = limit != 0 ? limit : s->ideal_send_limit;
    pmq_obj_changed_locked(&s->obj);
    pthread_mutex_unlock(&s->obj.lock);
}

void pmq_stream_abandon(pmq_stream *s)
{
    PMQ_CHECK(&s->obj);
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
    PMQ_CHECK(&s->obj);
    /* Python holds no reference, so no read is between peek and consume: end a
     * peek left open, or its guard use would keep the handle open for ever. */
    pmq_stream_consume(s, 0);
    /* Nobody is left to wake: the events still to come (SHUTDOWN_COMPLETE above
     * all) need not wake the event loop for an object that is gone. */
    pmq_obj_attach(&s->obj, NULL, 0);
    pmq_stream_abandon(s);
    pmq_obj_unref(&s->obj);
}

/* A stream parameter read or written through the guard (both wait for the
 * connection's worker: never from a hook). */
static QUIC_STATUS guarded_param(pmq_stream *s, int set, uint32_t param, void *buffer, uint32_t size)
{
    PMQ_CHECK(&s->obj);
    HQUIC handle = pmq_guard_enter(&s->obj, &s->guard);
    if (handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    QUIC_STATUS status = set ? pmq_api->SetParam(handle, param, size, buffer)
                             : pmq_api->GetParam(handle, param, &size, buffer);
    pmq_guard_leave(&s->obj, &s->guard, stream_close_handle);
    return status;
}

QUIC_STATUS pmq_stream_set_priority(pmq_stream *s, uint16_t priority)
{
    return guarded_param(s, 1, QUIC_PARAM_STREAM_PRIORITY, &priority, sizeof(priority));
}

QUIC_STATUS pmq_stream_get_priority(pmq_stream *s, uint16_t *out)
{
    return guarded_param(s, 0, QUIC_PARAM_STREAM_PRIORITY, out, sizeof(*out));
}

QUIC_STATUS pmq_stream_param(pmq_stream *s, int set, uint32_t param, void *buffer, uint32_t size)
{
    return guarded_param(s, set, param, buffer, size);
}

void pmq_stream_mark_opened_in_0rtt(pmq_stream *s)
{
    pthread_mutex_lock(&s->obj.lock);
    s->st.flags |= PMQ_STREAM_OPENED_IN_0RTT;
    pthread_mutex_unlock(&s->obj.lock);
}
