/*
 * Connection trampoline.
 *
 * The handle is closed by the binding, never by Python: at SHUTDOWN_COMPLETE
 * (msquic's own pattern) or, if a Python call was in flight then, by that call
 * as it leaves the guard (see internal.h). Peer streams get their handler
 * inside PEER_STREAM_STARTED and wait in a queue for accept_stream; received
 * datagrams wait in a bounded queue that drops the oldest. Datagrams handed to
 * msquic and not yet acknowledged or lost are bounded too (the sender gets
 * QUEUE_FULL): that bounds memory, and datagrams in flight per round trip,
 * which leaves room in the congestion window for stream data (msquic sends
 * queued datagrams before any stream data).
 *
 * Local streams that msquic has not started yet wait in a list: msquic reports
 * nothing for an unstarted stream, so the connection's SHUTDOWN_COMPLETE ends
 * them and closes their handles (else RegistrationClose would wait forever).
 *
 * References: one for msquic (dropped when the handle closes) and one for the
 * owner, which is the listener's backlog until accept hands it to Python.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DEFAULT_DATAGRAM_QUEUE 256
/* Datagrams in flight. Measured on loopback, a flood beside a 4 MiB stream
 * transfer: 1024 let datagrams take nearly all (transfer 1.8 s instead of
 * 0.04 s), 256 leaves streams most (0.11 s) and still lets ~6k datagrams/s
 * through; 256 per round trip is ~25 Mbit/s of 1200-byte datagrams at 100 ms. */
#define DEFAULT_DATAGRAM_SEND_QUEUE 256
/* msquic assumes datagrams enabled until the peer's transport parameters say
 * otherwise, and on a server those arrive before the app owns the connection,
 * so no DATAGRAM_STATE_CHANGED may ever come. Until one does, allow what fits
 * any path QUIC runs on (1200-byte packets, worst-case headers). */
#define SAFE_DATAGRAM_SIZE 1100

typedef struct datagram_block {
    pmq_datagram public;
    struct datagram_block *next;
} datagram_block;

typedef struct send_datagram {
    QUIC_BUFFER buffer;
} send_datagram;

struct pmq_conn {
    /* Must stay first. obj.lock guards the fields below (the stream lists
     * included) and the link of each stream in them. Lock order (internal.h):
     * may be taken with the listener's lock or one of its streams' locks held;
     * under it only the waker's lock. */
    pmq_obj obj;
    pmq_guard guard;
    /* pmq_conn_all_sent found streams still sending: their end must wake the
     * waiter. Otherwise it need not: a wake per finished stream would cost the
     * event loop a turn per request. */
    int sent_wanted;
    int started;
    int starting;              /* pmq_conn_start is between its checks and ConnectionStart */
    int abandoned_starting;    /* abandoned meanwhile: the start finishes the abandon */
    int py_released;
    pmq_listener *listener;    /* referenced, while in that listener's lists (listener.c) */
    pmq_conn_info info;
    pmq_stream_list accept_queue;  /* peer streams not yet accepted, oldest first */
    datagram_block *dgram_head;
    datagram_block *dgram_tail;
    uint32_t dgram_capacity;
    uint32_t dgram_send_capacity;
    pmq_stream_list unstarted; /* local streams not started yet, newest first */
    int streams_ended;         /* SHUTDOWN_COMPLETE took that list: no stream opens now */
    uint8_t *peer_cert;
    uint64_t started_us;
    uint64_t handshake_us;
    uint32_t stream_scheduling;  /* PMQ_SCHEDULING_*, as last set */
    int scheduling_pending;      /* set before the start: apply at CONNECTED */
    pmq_cert_check cert;         /* a certificate check in Python (certificates.c) */
    pmq_tls *tls;                /* key log: set before the start, then the worker's (tls.c) */
    pmq_handshake_info handshake;  /* copied at CONNECTED */
    int have_final_stats;        /* final_stats holds the numbers at SHUTDOWN_COMPLETE */
    pmq_conn_stats_v2 final_stats;
    pmq_resumption resumption;   /* resumption.c */
    int early_decided;           /* server: the first 0-RTT stream decided the early hand-off */
    /* An early-data client's start, deferred (pmq_conn_start_early): everything
     * but ConnectionStart is done; the first wait (or close with data) starts it. */
    int early_start;             /* prepared so: streams may open before the start */
    int deferred;                /* ConnectionStart still to make, with these: */
    int deferred_streams;        /* streams started (written) meanwhile */
    HQUIC deferred_configuration;
    QUIC_ADDRESS_FAMILY deferred_family;
    char *deferred_server_name;
    uint16_t deferred_port;
};

static void conn_close_handle(HQUIC handle) { pmq_api->ConnectionClose(handle); }
static void close_unstarted(pmq_conn *c);

static void conn_destroy(pmq_obj *obj)
{
    pmq_conn *c = (pmq_conn *)obj;
    pmq_stream *s;
    while ((s = pmq_stream_list_pop(&c->accept_queue)) != NULL) {
        pmq_obj_unref(pmq_stream_obj(s));
    }
    while (c->dgram_head != NULL) {
        datagram_block *d = c->dgram_head;
        c->dgram_head = d->next;
        free(d);
    }
    free(c->peer_cert);
    pmq_cert_free(&c->cert);
    pmq_tls_free(c->tls);
    pmq_resumption_free(&c->resumption);
    free(c->deferred_server_name);
    free(c);
}

static pmq_conn *conn_new(void)
{
    pmq_conn *c = calloc(1, sizeof(*c));
    if (c != NULL) {
        pmq_obj_init(&c->obj, 2, conn_destroy);
        c->dgram_capacity = DEFAULT_DATAGRAM_QUEUE;
        c->dgram_send_capacity = DEFAULT_DATAGRAM_SEND_QUEUE;
        c->started_us = pmq_now_us();
    }
    return c;
}

static void conn_free_unused(pmq_conn *c)
{
    pmq_tls_free(c->tls);
    pthread_cond_destroy(&c->obj.cond);
    pthread_mutex_destroy(&c->obj.lock);
    free(c);
}

pmq_obj *pmq_conn_obj(pmq_conn *c) { return &c->obj; }
pmq_conn_info *pmq_conn_info_ptr(pmq_conn *c) { return &c->info; }
pmq_resumption *pmq_conn_resumption(pmq_conn *c) { return &c->resumption; }
pmq_guard *pmq_conn_guard(pmq_conn *c) { return &c->guard; }
int pmq_conn_start_taken_locked(pmq_conn *c)
{
    return c->started || c->starting || c->early_start || c->guard.handle == NULL;
}

uint32_t pmq_conn_flags(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    uint32_t flags = c->info.flags;
    pthread_mutex_unlock(&c->obj.lock);
    return flags;
}

int pmq_conn_all_sent(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    int done = c->info.streams_sending == 0 || (c->info.flags & PMQ_CONN_SHUTDOWN_COMPLETE);
    c->sent_wanted |= !done;
    pthread_mutex_unlock(&c->obj.lock);
    return done;
}

void pmq_conn_get_info(pmq_conn *c, pmq_conn_info *out)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    *out = c->info;
    pthread_mutex_unlock(&c->obj.lock);
}

/* Takes a reference to the listener whose backlog holds c, if any. */
static pmq_listener *owning_listener(pmq_conn *c)
{
    pmq_listener *l = c->listener;
    if (l != NULL) {
        pmq_obj_ref(pmq_listener_obj(l));
    }
    return l;
}

static void notify_listener(pmq_listener *l)
{
    if (l != NULL) {
        pmq_listener_conn_changed(l);
        pmq_obj_unref(pmq_listener_obj(l));
    }
}

/* ---- events ------------------------------------------------------------------ */

/* The path's facts Python reads, asked on the worker (GetParam runs inline there). */
typedef struct path_facts {
    QUIC_ADDR local, remote;
    int have_local, have_remote;
    BOOLEAN datagrams;
} path_facts;

static void read_path_facts(HQUIC handle, path_facts *f)
{
    uint32_t size = sizeof(f->local);
    f->have_local = QUIC_SUCCEEDED(pmq_api->GetParam(handle, QUIC_PARAM_CONN_LOCAL_ADDRESS, &size, &f->local));
    size = sizeof(f->remote);
    f->have_remote = QUIC_SUCCEEDED(pmq_api->GetParam(handle, QUIC_PARAM_CONN_REMOTE_ADDRESS, &size, &f->remote));
    size = sizeof(f->datagrams);
    if (QUIC_FAILED(pmq_api->GetParam(handle, QUIC_PARAM_CONN_DATAGRAM_SEND_ENABLED, &size, &f->datagrams))) {
        f->datagrams = FALSE;
    }
}

/* With the lock held. */
static void set_path_facts_locked(pmq_conn *c, const path_facts *f)
{
    if (f->have_local) {
        pmq_addr_from_quic(&c->info.local, &f->local);
    }
    if (f->have_remote) {
        pmq_addr_from_quic(&c->info.remote, &f->remote);
    }
    c->info.datagram_send_enabled = f->datagrams;
    if (f->datagrams && c->info.max_datagram_size == 0) {
        c->info.max_datagram_size = SAFE_DATAGRAM_SIZE;
    }
}

static void on_connected(pmq_conn *c, HQUIC handle, QUIC_CONNECTION_EVENT *event)
{
    path_facts facts;
    read_path_facts(handle, &facts);

    pthread_mutex_lock(&c->obj.lock);
    c->info.flags |= PMQ_CONN_CONNECTED;
    if (event->CONNECTED.SessionResumed) {
        c->info.flags |= PMQ_CONN_SESSION_RESUMED;
    }
    c->info.alpn_len = event->CONNECTED.NegotiatedAlpnLength;
    memcpy(c->info.alpn, event->CONNECTED.NegotiatedAlpn, c->info.alpn_len);
    set_path_facts_locked(c, &facts);
    c->handshake_us = pmq_now_us() - c->started_us;
    pmq_obj_changed_locked(&c->obj);
    pmq_listener *l = owning_listener(c);
    pthread_mutex_unlock(&c->obj.lock);
    notify_listener(l);
}

/* Takes the local streams msquic never started, referenced, for
 * end_unstarted_streams; no stream opens afterwards. */
static pmq_stream_list take_unstarted_locked(pmq_conn *c)
{
    pmq_stream_list list = pmq_stream_list_take(&c->unstarted);
    c->streams_ended = 1;
    pmq_stream_list_ref_all(&list); /* a racing start may close one meanwhile */
    return list;
}

static void end_unstarted_streams(pmq_stream_list *list)
{
    pmq_stream *s;
    while ((s = pmq_stream_list_pop(list)) != NULL) {
        pmq_stream_end_unstarted(s); /* nothing if a start was taken meanwhile */
        pmq_obj_unref(pmq_stream_obj(s));
    }
}

static void on_shutdown_complete(pmq_conn *c, QUIC_CONNECTION_EVENT *event)
{
    pthread_mutex_lock(&c->obj.lock);
    pmq_stream_list unstarted = take_unstarted_locked(c);
    pthread_mutex_unlock(&c->obj.lock);
    /* Inline on this worker, and first: msquic ended the started streams before
     * this event too, so whoever sees the connection closed sees its streams closed. */
    end_unstarted_streams(&unstarted);

    pthread_mutex_lock(&c->obj.lock);
    c->info.flags |= PMQ_CONN_SHUTDOWN_COMPLETE;
    if (event->SHUTDOWN_COMPLETE.PeerAcknowledgedShutdown) {
        c->info.flags |= PMQ_CONN_PEER_ACKED_SHUTDOWN;
    }
    HQUIC to_close = pmq_guard_finish_locked(&c->guard);
    pmq_obj_changed_locked(&c->obj);
    pmq_listener *l = owning_listener(c);
    pthread_mutex_unlock(&c->obj.lock);

    notify_listener(l);
    if (to_close != NULL) {
        if (!event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
            pmq_api->ConnectionClose(to_close);
        }
        pmq_obj_unref(&c->obj); /* msquic's reference */
    }
}

static void on_peer_stream_started(pmq_conn *c, QUIC_CONNECTION_EVENT *event)
{
    HQUIC handle = event->PEER_STREAM_STARTED.Stream;
    int unidirectional = (event->PEER_STREAM_STARTED.Flags & QUIC_STREAM_OPEN_FLAG_UNIDIRECTIONAL) != 0;
    pmq_stream *s = pmq_stream_new_peer(c, handle, unidirectional);
    if (s == NULL) {
        pmq_stream_refuse(handle);
        return;
    }
    if (event->PEER_STREAM_STARTED.Flags & QUIC_STREAM_OPEN_FLAG_0_RTT) {
        pmq_stream_mark_opened_in_0rtt(s); /* resumption.c counts them per connection */
    }
    pthread_mutex_lock(&c->obj.lock);
    int unwanted = c->py_released;
    if (!unwanted) {
        pmq_stream_list_push_back(&c->accept_queue, s);
        c->info.streams_queued++;
        pmq_obj_changed_locked(&c->obj);
    }
    pthread_mutex_unlock(&c->obj.lock);
    if (unwanted) {
        pmq_stream_abort_unaccepted(s); /* nobody will ever accept it */
    }
}

static void on_datagram_received(pmq_conn *c, const QUIC_BUFFER *buffer)
{
    datagram_block *d = malloc(sizeof(*d) + buffer->Length);
    if (d == NULL) {
        pthread_mutex_lock(&c->obj.lock);
        c->info.datagrams_dropped++;
        pthread_mutex_unlock(&c->obj.lock);
        return;
    }
    d->public.len = buffer->Length;
    d->public.data = (const uint8_t *)(d + 1);
    d->next = NULL;
    memcpy(d + 1, buffer->Buffer, buffer->Length);
    datagram_block *dropped = NULL;
    pthread_mutex_lock(&c->obj.lock);
    if (c->info.datagrams_queued >= c->dgram_capacity) {
        dropped = c->dgram_head; /* the oldest goes */
        c->dgram_head = dropped->next;
        if (c->dgram_head == NULL) {
            c->dgram_tail = NULL;
        }
        c->info.datagrams_queued--;
        c->info.datagrams_dropped++;
    }
    if (c->dgram_tail != NULL) {
        c->dgram_tail->next = d;
    } else {
        c->dgram_head = d;
    }
    c->dgram_tail = d;
    c->info.datagrams_queued++;
    pmq_obj_changed_locked(&c->obj);
    pthread_mutex_unlock(&c->obj.lock);
    free(dropped);
}

/* Stands for a sent datagram whose copy is freed already (see below). */
static char sent_datagram;

static void on_datagram_send_state(pmq_conn *c, QUIC_CONNECTION_EVENT *event)
{
    QUIC_DATAGRAM_SEND_STATE state = event->DATAGRAM_SEND_STATE_CHANGED.State;
    void *context = event->DATAGRAM_SEND_STATE_CHANGED.ClientContext;
    int final = QUIC_DATAGRAM_SEND_STATE_IS_FINAL(state);
    if (context == NULL || (state != QUIC_DATAGRAM_SEND_SENT && !final)) {
        return;
    }
    /* msquic frees its request, and so needs our bytes no more, once SENT; later
     * states only tell the packet's fate (a cancelled datagram goes straight to a
     * final state). ClientContext is in-out: the marker keeps it non-NULL, since
     * msquic reports LOST_DISCARDED only for a non-NULL context. */
    if (context != &sent_datagram) {
        free(context);
    }
    event->DATAGRAM_SEND_STATE_CHANGED.ClientContext = final ? NULL : &sent_datagram;
    if (final) {
        pthread_mutex_lock(&c->obj.lock);
        if (c->info.datagrams_in_flight-- == c->dgram_send_capacity) {
            pmq_obj_changed_locked(&c->obj); /* there is room again */
        }
        pthread_mutex_unlock(&c->obj.lock);
    }
}

static void on_peer_certificate(pmq_conn *c, QUIC_CONNECTION_EVENT *event)
{
    /* With USE_PORTABLE_CERTIFICATES the certificate is a QUIC_BUFFER of DER. */
    const QUIC_BUFFER *der = (const QUIC_BUFFER *)event->PEER_CERTIFICATE_RECEIVED.Certificate;
    if (der == NULL || der->Length == 0) {
        return;
    }
    uint8_t *copy = malloc(der->Length);
    if (copy == NULL) {
        return;
    }
    memcpy(copy, der->Buffer, der->Length);
    pthread_mutex_lock(&c->obj.lock);
    free(c->peer_cert);
    c->peer_cert = copy;
    c->info.peer_certificate_len = der->Length;
    pthread_mutex_unlock(&c->obj.lock);
}

static void set_flag(pmq_conn *c, uint32_t flag, QUIC_STATUS status, uint64_t error_code)
{
    pthread_mutex_lock(&c->obj.lock);
    c->info.flags |= flag;
    if (flag == PMQ_CONN_SHUTDOWN_BY_TRANSPORT) {
        c->info.transport_status = status;
    }
    c->info.error_code = error_code;
    pmq_obj_changed_locked(&c->obj);
    pthread_mutex_unlock(&c->obj.lock);
}

_Static_assert((int)PMQ_SCHEDULING_FIFO == (int)QUIC_STREAM_SCHEDULING_SCHEME_FIFO &&
                   (int)PMQ_SCHEDULING_ROUND_ROBIN == (int)QUIC_STREAM_SCHEDULING_SCHEME_ROUND_ROBIN,
               "PMQ_SCHEDULING_* must be msquic's values");

/* A scheme chosen before ConnectionStart is applied here, on the worker
 * (inline, no round trip), before any stream can send: Python gets a client
 * connection only once connected. Setting it before the start would block the
 * caller (an event loop) for a worker round trip. The exception is 0-RTT, whose
 * streams send before CONNECTED: pmq_conn_start applies it before the start
 * then, beside the resumption ticket's own round trip. */
static void apply_pending_scheduling(pmq_conn *c, HQUIC handle)
{
    pthread_mutex_lock(&c->obj.lock);
    int pending = c->scheduling_pending;
    QUIC_STREAM_SCHEDULING_SCHEME scheme = (QUIC_STREAM_SCHEDULING_SCHEME)c->stream_scheduling;
    c->scheduling_pending = 0;
    pthread_mutex_unlock(&c->obj.lock);
    if (pending) {
        pmq_api->SetParam(handle, QUIC_PARAM_CONN_STREAM_SCHEDULING_SCHEME, sizeof(scheme), &scheme);
    }
}

/* Before on_connected sets CONNECTED: whoever sees it sees the facts too. */
static void tls_connected(pmq_conn *c, HQUIC handle)
{
    pmq_handshake_info info;
    pmq_handshake_info_read(handle, &info);
    pmq_tls_connected(c->tls);
    pthread_mutex_lock(&c->obj.lock);
    c->handshake = info;
    pthread_mutex_unlock(&c->obj.lock);
}

/* ---- early hand-off: a 0-RTT request answered before the handshake completes ----
 *
 * A server connection waits in its listener's `handshaking` list until
 * CONNECTED, one round trip after a 0-RTT request arrived (the client's
 * Finished). When the first peer stream opened by 0-RTT packets arrives, the
 * connection is marked PMQ_CONN_ACCEPTED_EARLY instead, and the listener hands
 * it to accept() at once (listener.c, settle_handshakes_locked): the handler
 * reads the request and answers in 0.5-RTT packets. Only when
 *  - the connection still sits in a listener's lists and no shutdown began;
 *  - its configuration says RESUME_AND_ZERO_RTT (msquic 2.5.1 takes 0-RTT at
 *    RESUME too: a server at RESUME keeps the hand-off at CONNECTED);
 *  - no client certificate check is pending, taken or done (a check in Python
 *    runs in accept() walking `handshaking`). None ever comes: a 0-RTT stream
 *    means a PSK handshake, and a TLS 1.3 server MUST NOT ask for a certificate
 *    in one (RFC 8446 4.3.2). msquic 2.5.1 servers that ask for client
 *    certificates even fail every resumption (TLS internal_error, tested in
 *    test_early_handoff.py), so no 0-RTT stream comes there at all. A check
 *    for Python that came all the same after the hand-off would be rejected
 *    (certificates.c), never left pending.
 * A 0-RTT stream exists only if TLS accepted the ticket and its early data,
 * so the session resumed: PMQ_CONN_SESSION_RESUMED is set now too. The ALPN
 * was chosen with the ClientHello; the handshake facts (pmq_handshake_info)
 * still wait for CONNECTED. Decided once, on the first 0-RTT stream. */

static int allows_zero_rtt(HQUIC handle)
{
    QUIC_SETTINGS s;
    uint32_t size = sizeof(s);
    memset(&s, 0, sizeof(s));
    /* On the worker: answered inline. */
    return QUIC_SUCCEEDED(pmq_api->GetParam(handle, QUIC_PARAM_CONN_SETTINGS, &size, &s)) &&
           s.ServerResumptionLevel == QUIC_SERVER_RESUME_AND_ZERORTT;
}

static void hand_over_early(pmq_conn *c, HQUIC handle)
{
    pthread_mutex_lock(&c->obj.lock);
    int candidate = !c->early_decided && c->listener != NULL && c->cert.state == PMQ_CERT_NONE &&
                    !(c->info.flags & (PMQ_CONN_CONNECTED | PMQ_CONN_SHUTDOWN_BY_APP | PMQ_CONN_SHUTDOWN_BY_PEER |
                                       PMQ_CONN_SHUTDOWN_BY_TRANSPORT | PMQ_CONN_SHUTDOWN_COMPLETE));
    c->early_decided = 1;
    pthread_mutex_unlock(&c->obj.lock);
    if (!candidate || !allows_zero_rtt(handle)) {
        return;
    }
    path_facts facts;
    read_path_facts(handle, &facts);
    uint8_t alpn[255];
    uint32_t alpn_len = sizeof(alpn);
    if (QUIC_FAILED(pmq_api->GetParam(handle, QUIC_PARAM_TLS_NEGOTIATED_ALPN, &alpn_len, alpn))) {
        alpn_len = 0; /* read again at CONNECTED */
    }
    pthread_mutex_lock(&c->obj.lock);
    c->info.flags |= PMQ_CONN_ACCEPTED_EARLY | PMQ_CONN_SESSION_RESUMED;
    c->info.alpn_len = (uint8_t)alpn_len;
    memcpy(c->info.alpn, alpn, alpn_len);
    set_path_facts_locked(c, &facts);
    pmq_obj_changed_locked(&c->obj);
    pmq_listener *l = owning_listener(c);
    pthread_mutex_unlock(&c->obj.lock);
    notify_listener(l);
}

void pmq_conn_handed_over_connected(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    c->info.flags &= ~PMQ_CONN_ACCEPTED_EARLY;
    pthread_mutex_unlock(&c->obj.lock);
}

static QUIC_STATUS QUIC_API conn_callback(HQUIC handle, void *context, QUIC_CONNECTION_EVENT *event)
{
    pmq_conn *c = context;
    PMQ_CHECK_CALLBACK(&c->obj, handle);
    QUIC_STATUS status = QUIC_STATUS_SUCCESS;
    pmq_callback_enter();
    switch (event->Type) {
    case QUIC_CONNECTION_EVENT_CONNECTED:
        apply_pending_scheduling(c, handle);
        tls_connected(c, handle);
        pmq_resumption_on_connected(c, handle, event->CONNECTED.SessionResumed);
        on_connected(c, handle, event);
        break;
    case QUIC_CONNECTION_EVENT_RESUMPTION_TICKET_RECEIVED:
        pmq_resumption_on_ticket(c, event);
        break;
    case QUIC_CONNECTION_EVENT_RESUMED:
        pmq_resumption_on_resumed(c, event);
        break;
    case QUIC_CONNECTION_EVENT_SHUTDOWN_INITIATED_BY_TRANSPORT:
        pmq_tls_write(c->tls); /* a failed handshake's secrets, counted before Python sees the flag */
        set_flag(c, PMQ_CONN_SHUTDOWN_BY_TRANSPORT, event->SHUTDOWN_INITIATED_BY_TRANSPORT.Status,
                 event->SHUTDOWN_INITIATED_BY_TRANSPORT.ErrorCode);
        break;
    case QUIC_CONNECTION_EVENT_SHUTDOWN_INITIATED_BY_PEER:
        pmq_tls_write(c->tls); /* as above */
        set_flag(c, PMQ_CONN_SHUTDOWN_BY_PEER, 0, event->SHUTDOWN_INITIATED_BY_PEER.ErrorCode);
        break;
    case QUIC_CONNECTION_EVENT_SHUTDOWN_COMPLETE:
        pmq_tls_write(c->tls); /* a handshake that failed: what secrets it got */
        pmq_conn_keep_final_stats(c, handle); /* statistics.c: the handle closes next */
        on_shutdown_complete(c, event);
        break;
    case QUIC_CONNECTION_EVENT_PEER_STREAM_STARTED:
        pmq_resumption_on_peer_stream(c, event);
        on_peer_stream_started(c, event);
        if (event->PEER_STREAM_STARTED.Flags & QUIC_STREAM_OPEN_FLAG_0_RTT) {
            hand_over_early(c, handle); /* after the stream is queued: the handler finds it */
        }
        break;
    case QUIC_CONNECTION_EVENT_STREAMS_AVAILABLE:
        /* Nothing waits for it (a stream opened over the limit is queued by
         * msquic), and the peer's MAX_STREAMS may come with every request. */
        break;
    case QUIC_CONNECTION_EVENT_DATAGRAM_STATE_CHANGED:
        pthread_mutex_lock(&c->obj.lock);
        c->info.datagram_send_enabled = event->DATAGRAM_STATE_CHANGED.SendEnabled;
        c->info.max_datagram_size = event->DATAGRAM_STATE_CHANGED.MaxSendLength;
        pmq_obj_changed_locked(&c->obj);
        pthread_mutex_unlock(&c->obj.lock);
        break;
    case QUIC_CONNECTION_EVENT_DATAGRAM_RECEIVED:
        on_datagram_received(c, event->DATAGRAM_RECEIVED.Buffer);
        break;
    case QUIC_CONNECTION_EVENT_DATAGRAM_SEND_STATE_CHANGED:
        on_datagram_send_state(c, event);
        break;
    case QUIC_CONNECTION_EVENT_PEER_CERTIFICATE_RECEIVED:
        on_peer_certificate(c, event);
        status = pmq_cert_on_received(c, event);
        break;
    case QUIC_CONNECTION_EVENT_PEER_ADDRESS_CHANGED: /* SUCCESS accepts the new path */
        pmq_conn_address_changed(c, event->PEER_ADDRESS_CHANGED.Address, 1);
        break;
    case QUIC_CONNECTION_EVENT_LOCAL_ADDRESS_CHANGED:
        pmq_conn_address_changed(c, event->LOCAL_ADDRESS_CHANGED.Address, 0);
        break;
    default:
        break;
    }
    pmq_callback_leave();
    return status;
}

/* ---- server side: created by the listener in NEW_CONNECTION ------------- */

pmq_conn *pmq_conn_new_accepted(pmq_listener *listener, const QUIC_NEW_CONNECTION_INFO *info)
{
    pmq_conn *c = conn_new();
    if (c == NULL) {
        return NULL;
    }
    c->listener = listener;
    pmq_addr_from_quic(&c->info.local, info->LocalAddress);
    pmq_addr_from_quic(&c->info.remote, info->RemoteAddress);
    uint16_t n = info->ServerNameLength;
    if (n > sizeof(c->info.server_name) - 1) {
        n = sizeof(c->info.server_name) - 1;
    }
    if (info->ServerName != NULL) {
        memcpy(c->info.server_name, info->ServerName, n); /* not NUL-terminated by msquic */
        c->info.server_name_len = n;
    }
    /* Keep whole names only: cut the list at the last one that fits. */
    uint16_t kept = 0;
    while (kept < info->ClientAlpnListLength) {
        uint16_t next = kept + 1u + info->ClientAlpnList[kept];
        if (next > info->ClientAlpnListLength || next > sizeof(c->info.client_alpn)) {
            break;
        }
        kept = next;
    }
    memcpy(c->info.client_alpn, info->ClientAlpnList, kept);
    c->info.client_alpn_len = kept;
    if (kept < info->ClientAlpnListLength) {
        c->info.flags |= PMQ_CONN_CLIENT_ALPN_TRUNCATED;
    }
    return c;
}

QUIC_STATUS pmq_conn_adopt(pmq_conn *c, HQUIC handle, HQUIC configuration)
{
    PMQ_CHECK(&c->obj);
    c->guard.handle = handle;
    PMQ_SET_HANDLE(&c->obj, handle);
    c->started = 1;
    pmq_api->SetCallbackHandler(handle, (void *)conn_callback, c);
    return pmq_api->ConnectionSetConfiguration(handle, configuration);
}

void pmq_conn_discard_refused(pmq_conn *c) { conn_free_unused(c); }

void pmq_conn_leave_listener(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    pmq_listener *l = c->listener;
    c->listener = NULL;
    pthread_mutex_unlock(&c->obj.lock);
    if (l != NULL) {
        pmq_obj_unref(pmq_listener_obj(l));
    }
}

/* ---- client side ------------------------------------------------------------ */

QUIC_STATUS pmq_conn_open(HQUIC registration, pmq_conn **out)
{
    pmq_conn *c = conn_new();
    if (c == NULL) {
        return QUIC_STATUS_OUT_OF_MEMORY;
    }
    QUIC_STATUS status = pmq_api->ConnectionOpen(registration, conn_callback, c, &c->guard.handle);
    if (QUIC_FAILED(status)) {
        conn_free_unused(c);
        return status;
    }
    PMQ_SET_HANDLE(&c->obj, c->guard.handle);
    *out = c;
    return status;
}

/* Closes a handle msquic will send no events for (never started). */
static void close_unstarted(pmq_conn *c)
{
    pthread_mutex_lock(&c->obj.lock);
    if (c->starting) {
        /* Another thread is inside SetParam/ConnectionStart on this handle (a
         * cancelled connect_async): closing it now would free it under them. */
        c->abandoned_starting = 1;
        pthread_mutex_unlock(&c->obj.lock);
        return;
    }
    /* Streams opened before a deferred start may hold the handle a moment. */
    HQUIC handle = pmq_guard_finish_locked(&c->guard);
    c->deferred = 0;
    /* An early-data client's streams opened before a start that never came. */
    pmq_stream_list unstarted = take_unstarted_locked(c);
    c->info.flags |= PMQ_CONN_SHUTDOWN_COMPLETE;
    pmq_obj_changed_locked(&c->obj);
    pthread_mutex_unlock(&c->obj.lock);
    end_unstarted_streams(&unstarted); /* their handles close before the connection's */
    if (handle != NULL) {
        pmq_api->ConnectionClose(handle);
        pmq_obj_unref(&c->obj); /* msquic's reference */
    }
}

/* The end of every start (or of preparing a deferred one): `starting` ends. */
static QUIC_STATUS start_finished(pmq_conn *c, QUIC_STATUS status, int defer)
{
    pthread_mutex_lock(&c->obj.lock);
    c->starting = 0;
    pmq_obj_changed_locked(&c->obj); /* wakes wait_deferred_start_locked */
    int started = c->started = QUIC_SUCCEEDED(status) && !defer;
    c->early_start = c->early_start || (QUIC_SUCCEEDED(status) && defer);
    int abandoned = c->abandoned_starting;
    c->abandoned_starting = 0;
    pthread_mutex_unlock(&c->obj.lock);
    if (QUIC_FAILED(status) || (abandoned && !started)) {
        close_unstarted(c);
    } else if (abandoned) {
        pmq_conn_shutdown(c, 0); /* what the abandon would have done to a started connection */
    }
    return status;
}

static QUIC_STATUS conn_start(pmq_conn *c, HQUIC configuration, const pmq_addr *remote, const char *server_name,
                              uint16_t port, int defer)
{
    PMQ_CHECK(&c->obj);
    QUIC_ADDR addr;
    if (server_name == NULL || (remote != NULL && !pmq_addr_to_quic(&addr, remote))) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    char *name_copy = defer ? strdup(server_name) : NULL;
    if (defer && name_copy == NULL) {
        return QUIC_STATUS_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&c->obj.lock);
    if (c->started || c->starting || c->early_start || c->guard.handle == NULL) {
        free(name_copy);
        pthread_mutex_unlock(&c->obj.lock);
        return QUIC_STATUS_INVALID_STATE;
    }
    /* Not started yet: no callback can close the handle under us, and
     * close_unstarted leaves it to us while `starting` is set. */
    c->starting = 1;
    c->started_us = pmq_now_us();
    HQUIC handle = c->guard.handle;
    pmq_tls *tls = c->tls;
    pthread_mutex_unlock(&c->obj.lock);
    QUIC_STATUS status = pmq_resumption_before_start(c, handle); /* a ticket: a worker round trip */
    if (QUIC_SUCCEEDED(status) && pmq_resumption_early_data(c)) {
        apply_pending_scheduling(c, handle); /* 0-RTT streams send before CONNECTED */
    }
    QUIC_ADDRESS_FAMILY family = QUIC_ADDRESS_FAMILY_UNSPEC;
    if (QUIC_SUCCEEDED(status) && remote != NULL) {
        /* Waits for a worker round trip: only needed when the SNI differs from the address. */
        status = pmq_api->SetParam(handle, QUIC_PARAM_CONN_REMOTE_ADDRESS, sizeof(addr), &addr);
        family = remote->family;
    }
    if (QUIC_SUCCEEDED(status) && tls != NULL) {
        pmq_tls_attach(tls, handle); /* waits for a worker; a failure is the key log's, not ours */
    }
    if (QUIC_SUCCEEDED(status) && defer) {
        pthread_mutex_lock(&c->obj.lock); /* read by pmq_conn_start_deferred once early_start is set */
        c->deferred = 1;
        c->deferred_configuration = configuration;
        c->deferred_family = family;
        c->deferred_server_name = name_copy;
        c->deferred_port = port;
        pthread_mutex_unlock(&c->obj.lock);
        name_copy = NULL;
    } else if (QUIC_SUCCEEDED(status)) {
        status = pmq_api->ConnectionStart(handle, configuration, family, server_name, port);
    }
    free(name_copy);
    return start_finished(c, status, defer);
}

QUIC_STATUS pmq_conn_start(pmq_conn *c, HQUIC configuration, const pmq_addr *remote, const char *server_name,
                           uint16_t port)
{
    return conn_start(c, configuration, remote, server_name, port, 0);
}

QUIC_STATUS pmq_conn_start_early(pmq_conn *c, HQUIC configuration, const pmq_addr *remote, const char *server_name,
                                 uint16_t port)
{
    return conn_start(c, configuration, remote, server_name, port, 1);
}

/* Another thread is making the deferred ConnectionStart (set `starting` with
 * `early_start`): wait until msquic has it. Until then the start may still
 * fail or be abandoned, and msquic holds no reference to the configuration
 * (Configuration.close() must not release it first), nor has the connection
 * anything queued that a close could wait for. ConnectionStart only queues,
 * and start_finished takes no lock the waiter holds. */
static void wait_deferred_start_locked(pmq_conn *c)
{
    while (c->starting && c->early_start) {
        pthread_cond_wait(&c->obj.cond, &c->obj.lock);
    }
}

QUIC_STATUS pmq_conn_start_deferred(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    if (!__atomic_load_n(&c->deferred, __ATOMIC_ACQUIRE) && !__atomic_load_n(&c->starting, __ATOMIC_ACQUIRE)) {
        return QUIC_STATUS_SUCCESS; /* every write comes here: no lock when nothing is deferred */
    }
    pthread_mutex_lock(&c->obj.lock);
    wait_deferred_start_locked(c);
    if (!c->deferred || c->starting || c->guard.handle == NULL) {
        pthread_mutex_unlock(&c->obj.lock);
        return QUIC_STATUS_SUCCESS; /* nothing deferred (any more): someone else started it */
    }
    /* As in conn_start: while `starting`, the handle stays ours. */
    c->deferred = 0;
    c->starting = 1;
    c->started_us = pmq_now_us();
    HQUIC handle = c->guard.handle;
    HQUIC configuration = c->deferred_configuration;
    QUIC_ADDRESS_FAMILY family = c->deferred_family;
    char *server_name = c->deferred_server_name;
    uint16_t port = c->deferred_port;
    c->deferred_server_name = NULL;
    pthread_mutex_unlock(&c->obj.lock);
    /* Queued after the StreamStart/StreamSend calls made so far: msquic's worker
     * takes them first, so their data goes in the first flight, as 0-RTT. */
    QUIC_STATUS status = pmq_api->ConnectionStart(handle, configuration, family, server_name, port);
    free(server_name);
    return start_finished(c, status, 0);
}

int pmq_conn_start_pending(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    wait_deferred_start_locked(c); /* then started, or closed, or still deferred */
    int pending = c->deferred;
    if (pending && c->deferred_streams) {
        pending = PMQ_START_PENDING_WITH_DATA;
    }
    pthread_mutex_unlock(&c->obj.lock);
    return pending;
}

QUIC_STATUS pmq_conn_prepare_resumption(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    if (c->started || c->starting || c->guard.handle == NULL) {
        pthread_mutex_unlock(&c->obj.lock);
        return QUIC_STATUS_INVALID_STATE;
    }
    c->starting = 1; /* as in pmq_conn_start: the handle stays ours meanwhile */
    HQUIC handle = c->guard.handle;
    pthread_mutex_unlock(&c->obj.lock);
    QUIC_STATUS status = pmq_resumption_before_start(c, handle);
    if (QUIC_SUCCEEDED(status) && pmq_resumption_early_data(c)) {
        apply_pending_scheduling(c, handle);
    }
    pthread_mutex_lock(&c->obj.lock);
    c->starting = 0;
    int abandoned = c->abandoned_starting;
    pthread_mutex_unlock(&c->obj.lock);
    if (abandoned) {
        close_unstarted(c); /* abandoned meanwhile: what the abandon would have done */
    }
    return status;
}

QUIC_STATUS pmq_conn_shutdown(pmq_conn *c, uint64_t error_code)
{
    PMQ_CHECK(&c->obj);
    /* Only the first shutdown may reach msquic: it queues shutdowns at the FRONT
     * of the connection's work, so a later one (a graceful close's 0) would be
     * processed first and its code would be the one the peer sees. */
    pthread_mutex_lock(&c->obj.lock);
    HQUIC handle = NULL;
    if (c->started && !(c->info.flags & PMQ_CONN_SHUTDOWN_BY_APP)) {
        handle = pmq_guard_enter_locked(&c->guard);
    }
    if (handle != NULL) {
        c->info.flags |= PMQ_CONN_SHUTDOWN_BY_APP;
        c->info.local_error_code = error_code;
        pmq_obj_changed_locked(&c->obj);
    }
    pthread_mutex_unlock(&c->obj.lock);
    if (handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    pmq_api->ConnectionShutdown(handle, QUIC_CONNECTION_SHUTDOWN_FLAG_NONE, error_code); /* queues only */
    pmq_guard_leave(&c->obj, &c->guard, conn_close_handle);
    return QUIC_STATUS_SUCCESS;
}

void pmq_conn_registration_closing(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    if (!(c->info.flags & (PMQ_CONN_SHUTDOWN_BY_APP | PMQ_CONN_SHUTDOWN_BY_PEER | PMQ_CONN_SHUTDOWN_BY_TRANSPORT |
                           PMQ_CONN_SHUTDOWN_COMPLETE))) {
        c->info.flags |= PMQ_CONN_SHUTDOWN_BY_APP | PMQ_CONN_REGISTRATION_CLOSED;
        c->info.local_error_code = 0; /* what RegistrationShutdown sends */
        pmq_obj_changed_locked(&c->obj);
    }
    int unstarted = c->early_start && !c->started;
    pthread_mutex_unlock(&c->obj.lock);
    if (unstarted) {
        /* An early-data client whose start never came: RegistrationShutdown
         * leaves an unstarted handle open, and RegistrationClose would wait for it. */
        close_unstarted(c);
    }
}

void pmq_conn_abandon(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    int started = c->started;
    int alive = c->guard.handle != NULL && !(c->info.flags & PMQ_CONN_SHUTDOWN_BY_APP);
    c->py_released = 1;
    pmq_stream_list unaccepted = pmq_stream_list_take(&c->accept_queue);
    c->info.streams_queued = 0;
    pthread_mutex_unlock(&c->obj.lock);
    pmq_stream *s;
    while ((s = pmq_stream_list_pop(&unaccepted)) != NULL) {
        pmq_stream_abort_unaccepted(s);
    }
    if (!started) {
        close_unstarted(c);
    } else if (alive) {
        pmq_conn_shutdown(c, 0); /* does nothing if a shutdown came first meanwhile */
    }
}

void pmq_conn_release(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pmq_conn_abandon(c);
    pmq_obj_unref(&c->obj);
}

/* ---- streams, datagrams, statistics ------------------------------------------ */

/* New local streams are refused once any shutdown began: msquic would let them
 * open, and their data would vanish. */
static int takes_streams_locked(pmq_conn *c)
{
    return (c->started || c->early_start) && !c->py_released && !c->streams_ended &&
           !(c->info.flags & (PMQ_CONN_SHUTDOWN_BY_APP | PMQ_CONN_SHUTDOWN_BY_PEER | PMQ_CONN_SHUTDOWN_BY_TRANSPORT |
                              PMQ_CONN_SHUTDOWN_COMPLETE));
}

QUIC_STATUS pmq_stream_open(pmq_conn *c, int unidirectional, pmq_stream **out)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    HQUIC handle = takes_streams_locked(c) ? pmq_guard_enter_locked(&c->guard) : NULL;
    pthread_mutex_unlock(&c->obj.lock);
    if (handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    pmq_stream *s = NULL;
    QUIC_STATUS status = pmq_stream_open_on(c, handle, unidirectional, &s);
    if (QUIC_SUCCEEDED(status)) {
        /* Listed under the same lock that SHUTDOWN_COMPLETE takes the list with. */
        pthread_mutex_lock(&c->obj.lock);
        int listed = takes_streams_locked(c);
        if (listed) {
            pmq_stream_list_push_front(&c->unstarted, s);
        }
        pthread_mutex_unlock(&c->obj.lock);
        if (listed) {
            *out = s;
        } else { /* a shutdown came meanwhile */
            pmq_stream_end_unstarted(s);
            pmq_stream_release(s);
            status = QUIC_STATUS_INVALID_STATE;
        }
    }
    pmq_guard_leave(&c->obj, &c->guard, conn_close_handle);
    return status;
}

void pmq_conn_forget_unstarted(pmq_conn *c, pmq_stream *s)
{
    PMQ_CHECK(&c->obj);
    /* Usually at or near the head: a stream is started by its first write. */
    pthread_mutex_lock(&c->obj.lock);
    pmq_stream_list_remove(&c->unstarted, s);
    c->deferred_streams |= c->deferred; /* data for the first flight: close() must start it */
    pthread_mutex_unlock(&c->obj.lock);
}

void pmq_conn_stream_sending(pmq_conn *c, int delta)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    c->info.streams_sending += delta;
    if (c->info.streams_sending == 0 && c->sent_wanted) {
        c->sent_wanted = 0;
        pmq_obj_changed_locked(&c->obj); /* wakes wait_sent() */
    }
    pthread_mutex_unlock(&c->obj.lock);
}

int pmq_conn_accept_stream(pmq_conn *c, pmq_stream **out)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    pmq_stream *s = pmq_stream_list_pop(&c->accept_queue);
    int result;
    if (s != NULL) {
        c->info.streams_queued--;
        *out = s;
        result = PMQ_ACCEPT_OK;
    } else if (c->info.flags & (PMQ_CONN_SHUTDOWN_BY_APP | PMQ_CONN_SHUTDOWN_BY_PEER |
                                PMQ_CONN_SHUTDOWN_BY_TRANSPORT | PMQ_CONN_SHUTDOWN_COMPLETE)) {
        result = PMQ_ACCEPT_FINISHED;
    } else {
        result = PMQ_ACCEPT_EMPTY;
    }
    pthread_mutex_unlock(&c->obj.lock);
    return result;
}

QUIC_STATUS pmq_conn_send_datagram(pmq_conn *c, const uint8_t *data, size_t len)
{
    PMQ_CHECK(&c->obj);
    if (len > UINT16_MAX) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    pthread_mutex_lock(&c->obj.lock);
    HQUIC handle = NULL;
    QUIC_STATUS status = QUIC_STATUS_INVALID_STATE;
    if (c->info.datagrams_in_flight >= c->dgram_send_capacity) {
        status = PMQ_STATUS_DATAGRAM_QUEUE_FULL;
    } else if (c->started && (handle = pmq_guard_enter_locked(&c->guard)) != NULL) {
        c->info.datagrams_in_flight++; /* until a final state (see on_datagram_send_state) */
    }
    pthread_mutex_unlock(&c->obj.lock);
    if (handle == NULL) {
        return status;
    }
    /* An empty datagram is one buffer of length 0: msquic wants BufferCount >= 1. */
    send_datagram *d = malloc(sizeof(*d) + len);
    if (d == NULL) {
        status = QUIC_STATUS_OUT_OF_MEMORY;
    } else {
        d->buffer.Length = (uint32_t)len;
        d->buffer.Buffer = (uint8_t *)(d + 1);
        memcpy(d + 1, data, len);
        /* msquic owns d until DATAGRAM_SEND_STATE_CHANGED reports SENT (or a final state). */
        status = pmq_api->DatagramSend(handle, &d->buffer, 1, QUIC_SEND_FLAG_NONE, d);
    }
    if (QUIC_FAILED(status)) {
        free(d);
        pthread_mutex_lock(&c->obj.lock);
        c->info.datagrams_in_flight--;
        pthread_mutex_unlock(&c->obj.lock);
    }
    pmq_guard_leave(&c->obj, &c->guard, conn_close_handle);
    return status;
}

pmq_datagram *pmq_conn_pop_datagram(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    datagram_block *d = c->dgram_head;
    if (d != NULL) {
        c->dgram_head = d->next;
        if (c->dgram_head == NULL) {
            c->dgram_tail = NULL;
        }
        c->info.datagrams_queued--;
    }
    pthread_mutex_unlock(&c->obj.lock);
    return d != NULL ? &d->public : NULL;
}

void pmq_datagram_free(pmq_datagram *datagram) { free(datagram); /* first member of its block */ }

void pmq_conn_set_datagram_queue(pmq_conn *c, uint32_t capacity)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    c->dgram_capacity = capacity > 0 ? capacity : 1;
    pthread_mutex_unlock(&c->obj.lock);
}

void pmq_conn_set_datagram_send_queue(pmq_conn *c, uint32_t capacity)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    c->dgram_send_capacity = capacity > 0 ? capacity : 1;
    pmq_obj_changed_locked(&c->obj);
    pthread_mutex_unlock(&c->obj.lock);
}

QUIC_STATUS pmq_conn_get_stats(pmq_conn *c, pmq_conn_stats *out)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock); /* started too is written under it */
    HQUIC handle = c->started ? pmq_guard_enter_locked(&c->guard) : NULL;
    pthread_mutex_unlock(&c->obj.lock);
    if (handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    QUIC_STATISTICS_V2 stats;
    uint32_t size = sizeof(stats);
    memset(&stats, 0, sizeof(stats));
    QUIC_STATUS status = pmq_api->GetParam(handle, QUIC_PARAM_CONN_STATISTICS_V2, &size, &stats);
    pmq_guard_leave(&c->obj, &c->guard, conn_close_handle);
    if (QUIC_FAILED(status)) {
        return status;
    }
    memset(out, 0, sizeof(*out));
    out->rtt_us = stats.Rtt;
    out->min_rtt_us = stats.MinRtt;
    out->max_rtt_us = stats.MaxRtt;
    out->rtt_variance_us = stats.RttVariance;
    out->congestion_window = stats.SendCongestionWindow;
    out->congestion_events = stats.SendCongestionCount;
    out->path_mtu = stats.SendPathMtu;
    out->packets_sent = stats.SendTotalPackets;
    out->packets_lost = stats.SendSuspectedLostPackets;
    out->packets_received = stats.RecvTotalPackets;
    out->bytes_sent = stats.SendTotalBytes;
    out->bytes_received = stats.RecvTotalBytes;
    out->stream_bytes_sent = stats.SendTotalStreamBytes;
    out->stream_bytes_received = stats.RecvTotalStreamBytes;
    pthread_mutex_lock(&c->obj.lock);
    out->handshake_us = (c->info.flags & PMQ_CONN_CONNECTED) ? c->handshake_us : 0;
    pthread_mutex_unlock(&c->obj.lock);
    return status;
}

QUIC_STATUS pmq_conn_get_settings(pmq_conn *c, pmq_settings *out)
{
    PMQ_CHECK(&c->obj);
    HQUIC handle = c->started ? pmq_guard_enter(&c->obj, &c->guard) : NULL;
    if (handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    QUIC_STATUS status = pmq_settings_read(handle, QUIC_PARAM_CONN_SETTINGS, out);
    pmq_guard_leave(&c->obj, &c->guard, conn_close_handle);
    return status;
}

uint32_t pmq_conn_peer_certificate(pmq_conn *c, uint8_t *dst, uint32_t cap)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    uint32_t len = c->info.peer_certificate_len;
    if (dst != NULL && c->peer_cert != NULL) {
        memcpy(dst, c->peer_cert, len < cap ? len : cap);
    }
    pthread_mutex_unlock(&c->obj.lock);
    return len;
}

QUIC_STATUS pmq_conn_set_stream_scheduling(pmq_conn *c, uint32_t scheme)
{
    PMQ_CHECK(&c->obj);
    if (scheme != PMQ_SCHEDULING_FIFO && scheme != PMQ_SCHEDULING_ROUND_ROBIN) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    pthread_mutex_lock(&c->obj.lock);
    c->stream_scheduling = scheme;
    int started = c->started;
    c->scheduling_pending = !started;
    pthread_mutex_unlock(&c->obj.lock);
    if (!started) {
        return QUIC_STATUS_SUCCESS;
    }
    HQUIC handle = pmq_guard_enter(&c->obj, &c->guard);
    if (handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    QUIC_STREAM_SCHEDULING_SCHEME value = (QUIC_STREAM_SCHEDULING_SCHEME)scheme;
    QUIC_STATUS status = pmq_api->SetParam(handle, QUIC_PARAM_CONN_STREAM_SCHEDULING_SCHEME, sizeof(value), &value);
    pmq_guard_leave(&c->obj, &c->guard, conn_close_handle);
    return status;
}

uint32_t pmq_conn_stream_scheduling(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    uint32_t scheme = c->stream_scheduling;
    pthread_mutex_unlock(&c->obj.lock);
    return scheme;
}

/* ---- for certificates.c ------------------------------------------------------ */

pmq_cert_check *pmq_conn_cert(pmq_conn *c) { return &c->cert; }

HQUIC pmq_conn_guard_enter_locked(pmq_conn *c) { return c->started ? pmq_guard_enter_locked(&c->guard) : NULL; }

void pmq_conn_guard_leave(pmq_conn *c) { pmq_guard_leave(&c->obj, &c->guard, conn_close_handle); }

void pmq_conn_notify_owner(pmq_conn *c)
{
    pthread_mutex_lock(&c->obj.lock);
    pmq_listener *l = owning_listener(c);
    pthread_mutex_unlock(&c->obj.lock);
    notify_listener(l);
}

/* ---- key log and handshake facts (the rest is in tls.c) ------------------------- */

QUIC_STATUS pmq_conn_set_keylog(pmq_conn *c, pmq_keylog *keylog)
{
    PMQ_CHECK(&c->obj);
    pmq_tls *tls = keylog != NULL ? pmq_tls_new(keylog) : NULL;
    if (keylog != NULL && tls == NULL) {
        return QUIC_STATUS_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&c->obj.lock);
    int late = c->started || c->starting || c->guard.handle == NULL;
    pmq_tls *old = NULL;
    if (!late) {
        old = c->tls;
        c->tls = tls;
    }
    pthread_mutex_unlock(&c->obj.lock);
    pmq_tls_free(late ? tls : old);
    return late ? QUIC_STATUS_INVALID_STATE : QUIC_STATUS_SUCCESS;
}

void pmq_conn_keylog_accepted(pmq_conn *c, HQUIC handle, pmq_keylog *keylog)
{
    /* In NEW_CONNECTION, before the handshake goes on: nothing else sees c yet.
     * Should the accept then fail, msquic drops the pointer unused: a refused
     * connection never starts TLS, and msquic copies the ClientRandom only into
     * connections whose accept succeeded (ExternalOwner, see QuicCryptoProcessData). */
    c->tls = pmq_tls_new(keylog);
    if (c->tls != NULL) {
        pmq_tls_attach(c->tls, handle); /* inline on this worker */
    } else {
        pmq_keylog_count_failure(keylog, ENOMEM); /* not silently without its lines */
    }
}

void pmq_conn_get_handshake_info(pmq_conn *c, pmq_handshake_info *out)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    *out = c->handshake;
    pthread_mutex_unlock(&c->obj.lock);
}
/* ---- parameters for statistics.c and transport.c ------------------------------ */

int pmq_conn_is_started(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    int started = c->started;
    pthread_mutex_unlock(&c->obj.lock);
    return started;
}

uint64_t pmq_conn_handshake_us(pmq_conn *c)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    uint64_t us = (c->info.flags & PMQ_CONN_CONNECTED) ? c->handshake_us : 0;
    pthread_mutex_unlock(&c->obj.lock);
    return us;
}

QUIC_STATUS pmq_conn_param(pmq_conn *c, int set, uint32_t param, uint32_t *size, void *buffer)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    /* A deferred start's handle is guarded as a started one's: borrowing
     * `starting` would make pmq_conn_start_deferred skip its start meanwhile. */
    int before_start = !c->started && !c->early_start;
    HQUIC handle = NULL;
    if (!before_start && set == PMQ_PARAM_SET_BEFORE_START) {
        pthread_mutex_unlock(&c->obj.lock);
        return QUIC_STATUS_INVALID_STATE; /* checked under the lock: no start in between */
    }
    if (before_start) {
        /* As pmq_conn_start does: while `starting`, close_unstarted leaves the
         * handle to us, and no callback can close an unstarted one. */
        if (!c->starting && c->guard.handle != NULL) {
            c->starting = 1;
            handle = c->guard.handle;
        }
    } else {
        handle = pmq_guard_enter_locked(&c->guard);
    }
    pthread_mutex_unlock(&c->obj.lock);
    if (handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    QUIC_STATUS status = set ? pmq_api->SetParam(handle, param, *size, buffer)
                             : pmq_api->GetParam(handle, param, size, buffer);
    if (!before_start) {
        pmq_guard_leave(&c->obj, &c->guard, conn_close_handle);
        return status;
    }
    pthread_mutex_lock(&c->obj.lock);
    c->starting = 0;
    int abandoned = c->abandoned_starting;
    c->abandoned_starting = 0;
    pthread_mutex_unlock(&c->obj.lock);
    if (abandoned) {
        close_unstarted(c); /* what the abandon meant to do meanwhile */
    }
    return status;
}

void pmq_conn_set_final_stats(pmq_conn *c, const pmq_conn_stats_v2 *stats)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    c->final_stats = *stats;
    c->have_final_stats = 1;
    pthread_mutex_unlock(&c->obj.lock);
}

int pmq_conn_get_final_stats(pmq_conn *c, pmq_conn_stats_v2 *out)
{
    PMQ_CHECK(&c->obj);
    pthread_mutex_lock(&c->obj.lock);
    int have = c->have_final_stats;
    if (have) {
        *out = c->final_stats;
    }
    pthread_mutex_unlock(&c->obj.lock);
    return have;
}
