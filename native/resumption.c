/*
 * Session resumption, 0-RTT, ticket keys and the fleet's global parameters.
 *
 * Client: the ticket to resume with is copied here before the start and set
 * (QUIC_PARAM_CONN_RESUMPTION_TICKET) inside pmq_conn_start, where the
 * connection's `starting` flag keeps its handle alive; the tickets msquic
 * reports (RESUMPTION_TICKET_RECEIVED) are copied in the callback: the latest
 * is kept, and each is queued (bounded) for Python's on_session_ticket.
 * Server: the app data of a resumed ticket (RESUMED) is copied in the callback.
 * Every field of pmq_resumption is guarded by its connection's lock.
 *
 * msquic 2.5.1 does not tell the application whether the server accepted
 * 0-RTT (its TLS layer knows, its API does not say). OpenSSL (quictls) and
 * aioquic servers accept early data on every resumption whose ticket allows
 * it, and msquic's servers issue every ticket allowing it (whatever the
 * resumption level: msquic 2.5.1 does not act on RESUME vs RESUME_AND_ZERORTT),
 * so accepted is read as "0-RTT attempted and the session resumed". A server
 * that resumes and still refuses early data would be misreported; nothing is
 * lost either way, as msquic resends rejected 0-RTT data in 1-RTT packets
 * (QuicLossDetectionOnZeroRttRejected).
 *
 * Which data msquic 2.5.1 sends as 0-RTT (read in its source, seen on the wire
 * with aioquic's qlog): a stream's data goes in 0-RTT packets only if it was
 * queued before the worker sent the first flight; queued later, it waits for
 * the handshake (QuicSendCanSendFlagsNow refuses a flush while streams wait).
 * So an early-data client's ConnectionStart is deferred until its first stream
 * write has queued its data (pmq_conn_start_early, connection.c).
 * And an opening stream's data goes in 0-RTT with or without
 * QUIC_SEND_FLAG_ALLOW_0_RTT (QuicStreamCanSendNow lets an opening stream send,
 * and the frame writer does not bound it by the 0-RTT-allowed offset): the flag
 * is set as the API asks, but only pymsquic's connect (which returns before the
 * handshake only with early_data) keeps unwanted data out of 0-RTT.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_QUEUED_TICKETS 8

typedef struct blob_block {
    pmq_blob public; /* first: pmq_blob_free frees the block */
    struct blob_block *next;
} blob_block;

/* A ticket a server connection handed over early (PMQ_CONN_ACCEPTED_EARLY)
 * asked for before its handshake completed: msquic refuses to send one until
 * connected (INVALID_STATE, "TODO - Support queueing" in its api.c), so it
 * waits here and goes at CONNECTED. */
typedef struct ticket_send {
    struct ticket_send *next;
    int final;
    uint16_t len;
    uint8_t data[];
} ticket_send;

#define MAX_UNSENT_TICKETS 8

static blob_block *blob_new(const uint8_t *data, size_t len)
{
    blob_block *b = malloc(sizeof(*b) + len);
    if (b != NULL) {
        b->public.len = (uint32_t)len;
        b->public.data = (const uint8_t *)(b + 1);
        b->next = NULL;
        if (len > 0) {
            memcpy(b + 1, data, len);
        }
    }
    return b;
}

void pmq_blob_free(pmq_blob *blob) { free(blob); }

static pmq_blob *blob_copy(const pmq_blob *src)
{
    blob_block *b = src != NULL ? blob_new(src->data, src->len) : NULL;
    return b != NULL ? &b->public : NULL;
}

void pmq_resumption_free(pmq_resumption *r)
{
    while (r->queue != NULL) {
        blob_block *b = r->queue;
        r->queue = b->next;
        free(b);
    }
    free(r->latest);
    free(r->app_data);
    free(r->pending_ticket);
    while (r->unsent != NULL) {
        ticket_send *t = r->unsent;
        r->unsent = t->next;
        free(t);
    }
    memset(r, 0, sizeof(*r));
}

static pmq_obj *obj_of(pmq_conn *c) { return pmq_conn_obj(c); }

/* ---- events (msquic's worker) -------------------------------------------- */

void pmq_resumption_on_ticket(pmq_conn *c, const QUIC_CONNECTION_EVENT *event)
{
    const uint8_t *data = event->RESUMPTION_TICKET_RECEIVED.ResumptionTicket;
    uint32_t len = event->RESUMPTION_TICKET_RECEIVED.ResumptionTicketLength;
    /* Valid only during this callback: two copies, the latest and the queued one. */
    blob_block *latest = blob_new(data, len);
    blob_block *queued = blob_new(data, len);
    pmq_resumption *r = pmq_conn_resumption(c);
    blob_block *dropped = NULL;
    pthread_mutex_lock(&obj_of(c)->lock);
    if (latest != NULL) {
        free(r->latest);
        r->latest = latest;
        latest = NULL;
    }
    if (queued != NULL) {
        if (r->queued >= MAX_QUEUED_TICKETS) {
            dropped = r->queue;
            r->queue = dropped->next;
            r->queued--;
        }
        blob_block **tail = &r->queue;
        while (*tail != NULL) {
            tail = &(*tail)->next;
        }
        *tail = queued;
        r->queued++;
    }
    r->tickets_received++;
    pmq_obj_changed_locked(obj_of(c));
    pthread_mutex_unlock(&obj_of(c)->lock);
    free(latest);
    free(dropped);
}

void pmq_resumption_on_resumed(pmq_conn *c, const QUIC_CONNECTION_EVENT *event)
{
    uint16_t len = event->RESUMED.ResumptionStateLength;
    blob_block *copy = blob_new(event->RESUMED.ResumptionState, len);
    pmq_resumption *r = pmq_conn_resumption(c);
    pthread_mutex_lock(&obj_of(c)->lock);
    free(r->app_data);
    r->app_data = copy; /* NULL (out of memory) reads as "no app data" */
    pthread_mutex_unlock(&obj_of(c)->lock);
}

void pmq_resumption_on_connected(pmq_conn *c, HQUIC handle, int session_resumed)
{
    pmq_resumption *r = pmq_conn_resumption(c);
    pthread_mutex_lock(&obj_of(c)->lock);
    r->connected = 1; /* from now on pmq_conn_send_resumption_ticket sends itself */
    r->resumed = session_resumed;
    ticket_send *unsent = r->unsent;
    r->unsent = NULL;
    r->unsent_count = 0;
    pthread_mutex_unlock(&obj_of(c)->lock);
    while (unsent != NULL) {
        ticket_send *t = unsent;
        unsent = t->next;
        /* Queues an operation (msquic copies the app data): fine on this worker. A
         * failure here has nobody to tell: out of memory, or a ticket asked for
         * after a final one (which a connected connection would have raised). */
        pmq_api->ConnectionSendResumptionTicket(
            handle, t->final ? QUIC_SEND_RESUMPTION_FLAG_FINAL : QUIC_SEND_RESUMPTION_FLAG_NONE, t->len,
            t->len > 0 ? t->data : NULL);
        free(t);
    }
}

/* 1 if the ticket was kept for CONNECTED (an early connection still handshaking;
 * *status: SUCCESS, or INVALID_STATE when MAX_UNSENT_TICKETS or a final one
 * wait, or OUT_OF_MEMORY), 0 if it is to be sent now. */
static int keep_until_connected(pmq_conn *c, const uint8_t *app_data, size_t len, int final, QUIC_STATUS *status)
{
    ticket_send *t = malloc(sizeof(*t) + len);
    if (t != NULL) {
        t->next = NULL;
        t->final = final;
        t->len = (uint16_t)len;
        if (len > 0) {
            memcpy(t->data, app_data, len);
        }
    }
    pmq_resumption *r = pmq_conn_resumption(c);
    uint32_t flags;
    int kept = 0;
    pthread_mutex_lock(&obj_of(c)->lock);
    flags = pmq_conn_info_ptr(c)->flags;
    if ((flags & PMQ_CONN_ACCEPTED_EARLY) && !r->connected &&
        !(flags & (PMQ_CONN_SHUTDOWN_BY_APP | PMQ_CONN_SHUTDOWN_BY_PEER | PMQ_CONN_SHUTDOWN_BY_TRANSPORT |
                   PMQ_CONN_SHUTDOWN_COMPLETE))) {
        kept = 1;
        ticket_send **tail = &r->unsent;
        int after_final = 0;
        while (*tail != NULL) {
            after_final |= (*tail)->final;
            tail = &(*tail)->next;
        }
        if (t == NULL) {
            *status = QUIC_STATUS_OUT_OF_MEMORY;
        } else if (r->unsent_count >= MAX_UNSENT_TICKETS || after_final) {
            /* None after a final one (msquic refuses one once its worker took the final). */
            *status = QUIC_STATUS_INVALID_STATE;
        } else {
            *tail = t;
            t = NULL;
            r->unsent_count++;
            *status = QUIC_STATUS_SUCCESS;
        }
    }
    pthread_mutex_unlock(&obj_of(c)->lock);
    free(t);
    return kept;
}

void pmq_resumption_on_peer_stream(pmq_conn *c, const QUIC_CONNECTION_EVENT *event)
{
    if (event->PEER_STREAM_STARTED.Flags & QUIC_STREAM_OPEN_FLAG_0_RTT) {
        pthread_mutex_lock(&obj_of(c)->lock);
        pmq_conn_resumption(c)->early_streams++;
        pthread_mutex_unlock(&obj_of(c)->lock);
    }
}

uint32_t pmq_conn_early_data_streams(pmq_conn *c)
{
    PMQ_CHECK(obj_of(c));
    pthread_mutex_lock(&obj_of(c)->lock);
    uint32_t n = pmq_conn_resumption(c)->early_streams;
    pthread_mutex_unlock(&obj_of(c)->lock);
    return n;
}

/* ---- before the start (client) ------------------------------------------ */

QUIC_STATUS pmq_conn_set_resumption(pmq_conn *c, const uint8_t *ticket, size_t len, int early_data)
{
    PMQ_CHECK(obj_of(c));
    if ((ticket == NULL) != (len == 0) || len > UINT16_MAX) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    blob_block *copy = ticket != NULL ? blob_new(ticket, len) : NULL;
    if (ticket != NULL && copy == NULL) {
        return QUIC_STATUS_OUT_OF_MEMORY;
    }
    pmq_resumption *r = pmq_conn_resumption(c);
    QUIC_STATUS status = QUIC_STATUS_SUCCESS;
    pthread_mutex_lock(&obj_of(c)->lock);
    if (pmq_conn_start_taken_locked(c)) {
        status = QUIC_STATUS_INVALID_STATE;
    } else {
        free(r->pending_ticket);
        r->pending_ticket = copy;
        copy = NULL;
        r->early_data = early_data && ticket != NULL;
    }
    pthread_mutex_unlock(&obj_of(c)->lock);
    free(copy);
    return status;
}

QUIC_STATUS pmq_resumption_before_start(pmq_conn *c, HQUIC handle)
{
    pmq_resumption *r = pmq_conn_resumption(c);
    pthread_mutex_lock(&obj_of(c)->lock);
    blob_block *ticket = r->pending_ticket;
    r->pending_ticket = NULL;
    pthread_mutex_unlock(&obj_of(c)->lock);
    if (ticket == NULL) {
        return QUIC_STATUS_SUCCESS;
    }
    /* A worker round trip (the connection exists, not started): msquic has no other way. */
    QUIC_STATUS status = pmq_api->SetParam(handle, QUIC_PARAM_CONN_RESUMPTION_TICKET, ticket->public.len,
                                           ticket->public.data);
    free(ticket);
    if (QUIC_FAILED(status)) {
        pthread_mutex_lock(&obj_of(c)->lock);
        /* Only a ticket msquic cannot decode is the caller's bad input (ValueError);
         * any other failure (out of memory, a state) stays a QuicError. */
        r->ticket_refused = status == QUIC_STATUS_INVALID_PARAMETER;
        r->early_data = 0;
        pthread_mutex_unlock(&obj_of(c)->lock);
    }
    return status;
}

int pmq_resumption_early_data(pmq_conn *c)
{
    pthread_mutex_lock(&obj_of(c)->lock);
    int early = pmq_conn_resumption(c)->early_data;
    pthread_mutex_unlock(&obj_of(c)->lock);
    return early;
}

QUIC_SEND_FLAGS pmq_conn_send_flags(pmq_conn *c)
{
    /* Harmless after the handshake; before it, lets msquic use the 0-RTT key. */
    return pmq_resumption_early_data(c) ? QUIC_SEND_FLAG_ALLOW_0_RTT : QUIC_SEND_FLAG_NONE;
}

int pmq_conn_resumption_ticket_refused(pmq_conn *c)
{
    PMQ_CHECK(obj_of(c));
    pthread_mutex_lock(&obj_of(c)->lock);
    int refused = pmq_conn_resumption(c)->ticket_refused;
    pthread_mutex_unlock(&obj_of(c)->lock);
    return refused;
}

/* ---- reading (Python) ----------------------------------------------------- */

uint64_t pmq_conn_tickets_received(pmq_conn *c)
{
    PMQ_CHECK(obj_of(c));
    pthread_mutex_lock(&obj_of(c)->lock);
    uint64_t n = pmq_conn_resumption(c)->tickets_received;
    pthread_mutex_unlock(&obj_of(c)->lock);
    return n;
}

pmq_blob *pmq_conn_latest_ticket(pmq_conn *c)
{
    PMQ_CHECK(obj_of(c));
    pthread_mutex_lock(&obj_of(c)->lock);
    blob_block *latest = pmq_conn_resumption(c)->latest;
    pmq_blob *copy = blob_copy(latest != NULL ? &latest->public : NULL);
    pthread_mutex_unlock(&obj_of(c)->lock);
    return copy;
}

pmq_blob *pmq_conn_pop_ticket(pmq_conn *c)
{
    PMQ_CHECK(obj_of(c));
    pmq_resumption *r = pmq_conn_resumption(c);
    pthread_mutex_lock(&obj_of(c)->lock);
    blob_block *b = r->queue;
    if (b != NULL) {
        r->queue = b->next;
        r->queued--;
    }
    pthread_mutex_unlock(&obj_of(c)->lock);
    return b != NULL ? &b->public : NULL;
}

int pmq_conn_early_data_accepted(pmq_conn *c)
{
    PMQ_CHECK(obj_of(c));
    pmq_resumption *r = pmq_conn_resumption(c);
    pthread_mutex_lock(&obj_of(c)->lock);
    int result = !r->connected ? -1 : (r->early_data && r->resumed);
    pthread_mutex_unlock(&obj_of(c)->lock);
    return result;
}

pmq_blob *pmq_conn_resumption_app_data(pmq_conn *c)
{
    PMQ_CHECK(obj_of(c));
    pthread_mutex_lock(&obj_of(c)->lock);
    blob_block *data = pmq_conn_resumption(c)->app_data;
    pmq_blob *copy = blob_copy(data != NULL ? &data->public : NULL);
    pthread_mutex_unlock(&obj_of(c)->lock);
    return copy;
}

static void close_handle(HQUIC handle) { pmq_api->ConnectionClose(handle); }

QUIC_STATUS pmq_conn_send_resumption_ticket(pmq_conn *c, const uint8_t *app_data, size_t len, int final)
{
    PMQ_CHECK(obj_of(c));
    if (len > QUIC_MAX_RESUMPTION_APP_DATA_LENGTH || (app_data == NULL && len != 0)) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    QUIC_STATUS status;
    if (keep_until_connected(c, app_data, len, final, &status)) {
        return status;
    }
    HQUIC handle = pmq_guard_enter(obj_of(c), pmq_conn_guard(c));
    if (handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    /* msquic copies the app data and queues the send: never blocks. */
    status = pmq_api->ConnectionSendResumptionTicket(
        handle, final ? QUIC_SEND_RESUMPTION_FLAG_FINAL : QUIC_SEND_RESUMPTION_FLAG_NONE, (uint16_t)len,
        len > 0 ? app_data : NULL);
    pmq_guard_leave(obj_of(c), pmq_conn_guard(c), close_handle);
    return status;
}

/* ---- configuration and global parameters ---------------------------------- */

_Static_assert(sizeof(pmq_ticket_key) == sizeof(QUIC_TICKET_KEY_CONFIG), "pmq_ticket_key mirrors msquic's");

/* memset through a volatile pointer: a wipe the compiler cannot drop as a dead store. */
static void wipe(void *p, size_t n)
{
    volatile uint8_t *v = p;
    while (n-- > 0) {
        *v++ = 0;
    }
}

QUIC_STATUS pmq_configuration_set_ticket_keys(HQUIC configuration, const pmq_ticket_key *keys, uint32_t count)
{
    if (keys == NULL || count == 0 || count > QUIC_MAX_TICKET_KEY_COUNT) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    QUIC_TICKET_KEY_CONFIG config[QUIC_MAX_TICKET_KEY_COUNT];
    memset(config, 0, sizeof(config));
    for (uint32_t i = 0; i < count; i++) {
        memcpy(config[i].Id, keys[i].id, sizeof(config[i].Id));
        memcpy(config[i].Material, keys[i].material, sizeof(config[i].Material));
        config[i].MaterialLength = keys[i].material_len;
    }
    /* Configuration parameters are answered inline: no worker, no wait. */
    QUIC_STATUS status = pmq_api->SetParam(configuration, QUIC_PARAM_CONFIGURATION_TICKET_KEYS,
                                           (uint32_t)(count * sizeof(config[0])), config);
    wipe(config, sizeof(config)); /* msquic copied them: no key material left on the stack */
    return status;
}

QUIC_STATUS pmq_load_balancing_mode(int set, uint16_t *mode)
{
    if (pmq_api == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    if (set) {
        return pmq_api->SetParam(NULL, QUIC_PARAM_GLOBAL_LOAD_BALACING_MODE, sizeof(*mode), mode);
    }
    uint32_t size = sizeof(*mode);
    return pmq_api->GetParam(NULL, QUIC_PARAM_GLOBAL_LOAD_BALACING_MODE, &size, mode);
}

QUIC_STATUS pmq_set_stateless_reset_key(const uint8_t *key, size_t len)
{
    if (pmq_api == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    if (key == NULL || len != QUIC_STATELESS_RESET_KEY_LENGTH) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    return pmq_api->SetParam(NULL, QUIC_PARAM_GLOBAL_STATELESS_RESET_KEY, (uint32_t)len, key);
}

void pmq_conn_hold(pmq_conn *c) { pmq_obj_ref(obj_of(c)); }

void pmq_conn_unhold(pmq_conn *c) { pmq_obj_unref(obj_of(c)); }
