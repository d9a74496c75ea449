/*
 * Listener trampoline.
 *
 * NEW_CONNECTION is decided entirely in C: refuse (return a failure, never
 * close) when stopping, when the backlog is full, when max_handshakes
 * handshakes are already in progress or when the Python hook says no;
 * otherwise set the connection's handler and configuration before returning,
 * as msquic requires.
 *
 * Two bounded lists: `handshaking` holds connections whose handshake is in
 * progress, `queue` those that completed and wait for accept (and those that
 * sent a 0-RTT request: handed over before the handshake completes, see
 * hand_over_early in connection.c). Only completed
 * handshakes count against the backlog: a flood of client Initials that never
 * finish (replayed, spoofed) fills `handshaking` at most, and msquic's own
 * defence (stateless retry once handshakes use more than the retry memory
 * limit) keeps that from growing. A handshake that completes while the backlog
 * is full is shut down, and so are handshakes still in progress when a stop
 * completes. A reaper thread shuts down connections nobody accepted within
 * backlog_timeout_ms.
 *
 * Start, stop and close are serialised here: only one ListenerStop is ever in
 * flight, and ListenerClose waits for STOP_COMPLETE of any stop in progress.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct backlog_entry {
    pmq_conn *conn;
    uint64_t deadline_ms;
} backlog_entry;

struct pmq_listener {
    /* Must stay first. obj.lock guards the fields below, except those set once
     * at open (configuration, hook_id, hooks, the limits, stream_scheduling);
     * reaper_cond waits on it. handle is read without it only while STARTING or
     * stop_in_flight keeps pmq_listener_close from clearing it. Lock order
     * (internal.h): taken with none of our locks held; under it a connection's
     * lock (pmq_conn_flags in settle_handshakes_locked) and the waker's lock. */
    pmq_obj obj;
    HQUIC handle;
    HQUIC configuration;
    uint32_t state;            /* PMQ_LISTENER_* */
    int stop_in_flight;        /* a thread is inside ListenerStop */
    uint64_t hook_id;
    uint32_t hooks;
    uint32_t backlog;
    uint32_t backlog_timeout_ms;
    uint32_t max_handshakes;
    uint32_t stream_scheduling;  /* PMQ_SCHEDULING_* for accepted connections */
    uint32_t reserved;         /* NEW_CONNECTIONs between the limit check and joining `handshaking` */
    uint32_t count;
    backlog_entry *queue;      /* completed, oldest first */
    uint32_t handshaking_count;
    pmq_conn **handshaking;    /* handshakes in progress, oldest first */
    pmq_listener_stats stats;
    pthread_t reaper;
    int reaper_running;
    int reaper_quit;
    pthread_cond_t reaper_cond;
    pmq_sni_table sni;         /* configurations by server name (sni.c); written only while IDLE */
    pmq_keylog *keylog;        /* referenced; set before the start (pmq_listener_set_keylog) */
};

static void listener_destroy(pmq_obj *obj)
{
    pmq_listener *l = (pmq_listener *)obj;
    pthread_cond_destroy(&l->reaper_cond);
    pmq_sni_free(&l->sni);
    pmq_keylog_release(l->keylog);
    free(l->queue);
    free(l->handshaking);
    free(l);
}

pmq_obj *pmq_listener_obj(pmq_listener *l) { return &l->obj; }

/* The two lists are arrays owned by this file: a connection holds no link,
 * only a reference to its listener (see pmq_conn_leave_listener). All
 * list functions are called with the lock held. */

/* Appends a completed connection to the accept queue; the caller checked room. */
static void queue_push(pmq_listener *l, pmq_conn *conn)
{
    l->queue[l->count].conn = conn;
    l->queue[l->count].deadline_ms = pmq_now_ms() + l->backlog_timeout_ms;
    l->count++;
}

/* Removes entry i from the queue. */
static pmq_conn *queue_take(pmq_listener *l, uint32_t i)
{
    pmq_conn *conn = l->queue[i].conn;
    memmove(&l->queue[i], &l->queue[i + 1], (l->count - i - 1) * sizeof(backlog_entry));
    l->count--;
    return conn;
}

/* Appends a handshake in progress; the caller checked room. */
static void handshaking_push(pmq_listener *l, pmq_conn *conn) { l->handshaking[l->handshaking_count++] = conn; }

static pmq_conn *handshaking_take(pmq_listener *l, uint32_t i)
{
    pmq_conn *conn = l->handshaking[i];
    memmove(&l->handshaking[i], &l->handshaking[i + 1], (l->handshaking_count - i - 1) * sizeof(pmq_conn *));
    l->handshaking_count--;
    return conn;
}

/* The listener lets go of connections nobody will accept: each closes itself. */
static void drop_all(pmq_conn **conns, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        pmq_conn_leave_listener(conns[i]);
        pmq_conn_shutdown(conns[i], 0); /* INVALID_STATE, harmless, if already closed */
        pmq_conn_release(conns[i]);
    }
}

#define DROP_BATCH 64
#define EARLY_SHUTTING_DOWN (PMQ_CONN_SHUTDOWN_BY_APP | PMQ_CONN_SHUTDOWN_BY_PEER | PMQ_CONN_SHUTDOWN_BY_TRANSPORT)

/*
 * Moves finished handshakes out of `handshaking`, with the lock held:
 * completed ones into the queue (or to `drop` when the backlog is full or the
 * listener closed), failed ones to `drop`. Returns how many went to drop; a
 * full drop means the caller must call again.
 */
static uint32_t settle_handshakes_locked(pmq_listener *l, pmq_conn **drop)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < l->handshaking_count && n < DROP_BATCH;) {
        uint32_t flags = pmq_conn_flags(l->handshaking[i]);
        if (flags & PMQ_CONN_CONNECTED) {
            pmq_conn *conn = handshaking_take(l, i);
            if (l->count < l->backlog && l->state != PMQ_LISTENER_CLOSED) {
                if (flags & PMQ_CONN_ACCEPTED_EARLY) {
                    pmq_conn_handed_over_connected(conn); /* its 0-RTT request found no room then */
                }
                queue_push(l, conn);
                l->stats.accepted++;
            } else {
                l->stats.refused_backlog++; /* completed while the backlog was full */
                drop[n++] = conn;
            }
        } else if (flags & PMQ_CONN_SHUTDOWN_COMPLETE) {
            l->stats.failed++;
            drop[n++] = handshaking_take(l, i);
        } else if ((flags & PMQ_CONN_ACCEPTED_EARLY) && !(flags & EARLY_SHUTTING_DOWN) && l->count < l->backlog &&
                   l->state != PMQ_LISTENER_CLOSED) {
            /* A 0-RTT request arrived (connection.c, hand_over_early): to accept()
             * now. Without room it stays here and is settled at CONNECTED. */
            queue_push(l, handshaking_take(l, i));
            l->stats.accepted++;
            l->stats.accepted_early++;
        } else {
            i++;
        }
    }
    return n;
}

static void *reaper_main(void *arg)
{
    pmq_listener *l = arg;
    pmq_conn *expired[DROP_BATCH];
    pthread_mutex_lock(&l->obj.lock);
    while (!l->reaper_quit) {
        uint64_t now = pmq_now_ms();
        uint64_t next = UINT64_MAX;
        uint32_t n = 0;
        for (uint32_t i = 0; i < l->count && n < DROP_BATCH;) {
            if (l->queue[i].deadline_ms <= now) {
                l->stats.expired++;
                expired[n++] = queue_take(l, i);
            } else {
                if (l->queue[i].deadline_ms < next) {
                    next = l->queue[i].deadline_ms;
                }
                i++;
            }
        }
        if (n > 0) {
            pmq_obj_changed_locked(&l->obj);
            pthread_mutex_unlock(&l->obj.lock);
            drop_all(expired, n);
            pthread_mutex_lock(&l->obj.lock);
            continue;
        }
        if (next == UINT64_MAX) {
            pthread_cond_wait(&l->reaper_cond, &l->obj.lock);
        } else {
            struct timespec ts;
            pmq_deadline(&ts, next - now);
            pthread_cond_timedwait(&l->reaper_cond, &l->obj.lock, &ts);
        }
    }
    pthread_mutex_unlock(&l->obj.lock);
    return NULL;
}

/* A connection of ours changed (connected or died): settle it, wake accept and the reaper. */
void pmq_listener_conn_changed(pmq_listener *l)
{
    pmq_conn *drop[DROP_BATCH];
    uint32_t n;
    do {
        pthread_mutex_lock(&l->obj.lock);
        n = settle_handshakes_locked(l, drop);
        pmq_obj_changed_locked(&l->obj);
        pthread_cond_signal(&l->reaper_cond);
        pthread_mutex_unlock(&l->obj.lock);
        drop_all(drop, n);
    } while (n == DROP_BATCH);
}

/* The configuration for the ClientHello's server name (sni.c), or NULL to refuse;
 * sets the connection's certificate check mode and configuration tag. */
static HQUIC choose_configuration(pmq_listener *l, pmq_conn *conn, const QUIC_NEW_CONNECTION_INFO *info)
{
    const pmq_sni_entry *entry = pmq_sni_lookup(&l->sni, info->ServerName, info->ServerNameLength);
    if (entry == NULL && l->sni.refuse_unknown) {
        return NULL;
    }
    pmq_cert_check *check = pmq_conn_cert(conn);
    /* Under the connection's lock like every other access to the check (listener ->
     * connection is the lock order): no callback runs on it yet, but Python may read it. */
    pthread_mutex_lock(&pmq_conn_obj(conn)->lock);
    check->mode = entry != NULL ? entry->cert_mode : l->sni.default_cert_mode;
    check->tag = entry != NULL ? entry->tag : 0;
    pthread_mutex_unlock(&pmq_conn_obj(conn)->lock);
    return entry != NULL ? entry->configuration : l->configuration;
}

static QUIC_STATUS on_new_connection(pmq_listener *l, HQUIC handle, const QUIC_NEW_CONNECTION_INFO *info)
{
    pthread_mutex_lock(&l->obj.lock);
    if (l->state != PMQ_LISTENER_STARTED) {
        l->stats.refused_other++;
        pthread_mutex_unlock(&l->obj.lock);
        return QUIC_STATUS_CONNECTION_REFUSED;
    }
    if (l->count >= l->backlog) {
        l->stats.refused_backlog++;
        pthread_mutex_unlock(&l->obj.lock);
        return QUIC_STATUS_CONNECTION_REFUSED;
    }
    if (l->handshaking_count + l->reserved >= l->max_handshakes) {
        l->stats.refused_handshakes++;
        pthread_mutex_unlock(&l->obj.lock);
        return QUIC_STATUS_CONNECTION_REFUSED;
    }
    l->reserved++;
    pmq_keylog *keylog = l->keylog;
    pmq_keylog_ref(keylog); /* a concurrent pmq_listener_set_keylog may drop the listener's */
    pthread_mutex_unlock(&l->obj.lock);

    QUIC_STATUS status = QUIC_STATUS_SUCCESS;
    int refused_by_hook = 0;
    int refused_by_name = 0;
    HQUIC configuration = NULL;
    pmq_conn *conn = pmq_conn_new_accepted(l, info);
    if (conn == NULL) {
        status = QUIC_STATUS_OUT_OF_MEMORY;
    } else if ((l->hooks & PMQ_HOOK_NEW_CONNECTION) && pmq_hooks_enabled() &&
               !pmq_py_listener_hook(l->hook_id, PMQ_HOOK_NEW_CONNECTION, pmq_conn_info_ptr(conn))) {
        status = QUIC_STATUS_CONNECTION_REFUSED;
        refused_by_hook = 1;
    } else if ((configuration = choose_configuration(l, conn, info)) == NULL) {
        status = QUIC_STATUS_CONNECTION_REFUSED; /* a server name this listener does not serve */
        refused_by_name = 1;
    } else {
        if (keylog != NULL) {
            pmq_conn_keylog_accepted(conn, handle, keylog);
        }
        status = pmq_conn_adopt(conn, handle, configuration);
        if (QUIC_SUCCEEDED(status) && l->stream_scheduling != PMQ_SCHEDULING_FIFO) {
            /* On the connection's worker: SetParam runs inline, before any stream exists. */
            pmq_conn_set_stream_scheduling(conn, l->stream_scheduling);
        }
    }

    pthread_mutex_lock(&l->obj.lock);
    l->reserved--;
    if (QUIC_SUCCEEDED(status)) {
        /* Its events come on this thread, after we return: it cannot have completed yet. */
        handshaking_push(l, conn);
        pmq_obj_ref(&l->obj); /* the connection points back to us */
        pmq_obj_changed_locked(&l->obj);
    } else if (refused_by_hook) {
        l->stats.refused_hook++;
    } else if (refused_by_name) {
        l->stats.refused_server_name++;
    } else {
        l->stats.refused_other++;
    }
    pthread_mutex_unlock(&l->obj.lock);

    if (QUIC_FAILED(status) && conn != NULL) {
        /* Refusing: msquic frees the connection and calls us no more. */
        pmq_conn_discard_refused(conn);
    }
    pmq_keylog_release(keylog);
    return status;
}

static void on_stop_complete(pmq_listener *l)
{
    /* Handshakes still in progress were never accepted, and a flood's never
     * complete: end them now rather than keep accept() waiting for their
     * timeout. Completed connections stay acceptable until Finished. New
     * connections are refused since the stop began (state STOPPING). */
    pmq_conn *drop[DROP_BATCH];
    uint32_t n;
    do {
        n = 0;
        pthread_mutex_lock(&l->obj.lock);
        if (l->state != PMQ_LISTENER_CLOSED) {
            l->state = PMQ_LISTENER_STOPPED;
        }
        while (n < DROP_BATCH && l->handshaking_count > 0) {
            drop[n++] = handshaking_take(l, 0);
            l->stats.refused_other++;
        }
        pmq_obj_changed_locked(&l->obj);
        pthread_mutex_unlock(&l->obj.lock);
        drop_all(drop, n);
    } while (n == DROP_BATCH);
    if ((l->hooks & PMQ_HOOK_STOP_COMPLETE) && pmq_hooks_enabled()) {
        pmq_py_listener_hook(l->hook_id, PMQ_HOOK_STOP_COMPLETE, NULL);
    }
}

static QUIC_STATUS QUIC_API listener_callback(HQUIC handle, void *context, QUIC_LISTENER_EVENT *event)
{
    pmq_listener *l = context;
    QUIC_STATUS status = QUIC_STATUS_SUCCESS;
    pmq_callback_enter();
    switch (event->Type) {
    case QUIC_LISTENER_EVENT_NEW_CONNECTION:
        status = on_new_connection(l, event->NEW_CONNECTION.Connection, event->NEW_CONNECTION.Info);
        break;
    case QUIC_LISTENER_EVENT_STOP_COMPLETE:
        on_stop_complete(l);
        break;
    default:
        break;
    }
    pmq_callback_leave();
    return status;
}

QUIC_STATUS pmq_listener_open(HQUIC registration, HQUIC configuration, uint32_t backlog,
                              uint32_t backlog_timeout_ms, uint32_t max_handshakes,
                              uint32_t stream_scheduling, uint64_t hook_id, uint32_t hooks,
                              pmq_listener **out)
{
    if (backlog == 0 || max_handshakes == 0) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    pmq_listener *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return QUIC_STATUS_OUT_OF_MEMORY;
    }
    l->queue = calloc(backlog, sizeof(backlog_entry));
    l->handshaking = calloc(max_handshakes, sizeof(pmq_conn *));
    if (l->queue == NULL || l->handshaking == NULL) {
        free(l->queue);
        free(l->handshaking);
        free(l);
        return QUIC_STATUS_OUT_OF_MEMORY;
    }
    pmq_obj_init(&l->obj, 1, listener_destroy);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&l->reaper_cond, &attr);
    pthread_condattr_destroy(&attr);
    l->configuration = configuration;
    l->backlog = backlog;
    l->backlog_timeout_ms = backlog_timeout_ms;
    l->max_handshakes = max_handshakes;
    l->stream_scheduling = stream_scheduling;
    l->hook_id = hook_id;
    l->hooks = hooks;
    QUIC_STATUS status = pmq_api->ListenerOpen(registration, listener_callback, l, &l->handle);
    if (QUIC_FAILED(status)) {
        pmq_obj_unref(&l->obj);
        return status;
    }
    *out = l;
    return status;
}

QUIC_STATUS pmq_listener_start(pmq_listener *l, const uint8_t *alpn_list, size_t alpn_len,
                               const pmq_addr *address)
{
    QUIC_BUFFER alpns[PMQ_MAX_ALPNS];
    uint32_t alpn_count;
    QUIC_ADDR addr;
    if (!pmq_alpn_split(alpn_list, alpn_len, alpns, PMQ_MAX_ALPNS, &alpn_count) ||
        (address != NULL && !pmq_addr_to_quic(&addr, address))) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    pthread_mutex_lock(&l->obj.lock);
    uint32_t before = l->state;
    if (before == PMQ_LISTENER_CLOSED) {
        pthread_mutex_unlock(&l->obj.lock);
        return QUIC_STATUS_ABORTED;
    }
    if (before != PMQ_LISTENER_IDLE && before != PMQ_LISTENER_STOPPED) {
        pthread_mutex_unlock(&l->obj.lock);
        return QUIC_STATUS_INVALID_STATE;
    }
    l->state = PMQ_LISTENER_STARTING;
    pthread_mutex_unlock(&l->obj.lock);

    QUIC_STATUS status = pmq_api->ListenerStart(l->handle, alpns, alpn_count, address ? &addr : NULL);

    pthread_mutex_lock(&l->obj.lock);
    l->state = QUIC_SUCCEEDED(status) ? PMQ_LISTENER_STARTED : before;
    if (QUIC_SUCCEEDED(status) && !l->reaper_running) {
        l->reaper_running = pthread_create(&l->reaper, NULL, reaper_main, l) == 0;
    }
    pmq_obj_changed_locked(&l->obj);
    pthread_mutex_unlock(&l->obj.lock);
    return status;
}

uint32_t pmq_listener_stop(pmq_listener *l)
{
    pthread_mutex_lock(&l->obj.lock);
    if (l->state == PMQ_LISTENER_STARTED) {
        l->state = PMQ_LISTENER_STOPPING;
        l->stop_in_flight = 1;
        pmq_obj_changed_locked(&l->obj);
        pthread_mutex_unlock(&l->obj.lock);
        /* STOP_COMPLETE may run inline here, on this thread. */
        pmq_api->ListenerStop(l->handle);
        pthread_mutex_lock(&l->obj.lock);
        l->stop_in_flight = 0;
        pmq_obj_changed_locked(&l->obj);
    }
    uint32_t state = l->state;
    pthread_mutex_unlock(&l->obj.lock);
    return state;
}

uint32_t pmq_listener_state(pmq_listener *l)
{
    pthread_mutex_lock(&l->obj.lock);
    uint32_t state = l->state;
    pthread_mutex_unlock(&l->obj.lock);
    return state;
}

QUIC_STATUS pmq_listener_local_address(pmq_listener *l, pmq_addr *out)
{
    QUIC_ADDR addr;
    uint32_t size = sizeof(addr);
    pthread_mutex_lock(&l->obj.lock);
    QUIC_STATUS status = QUIC_STATUS_INVALID_STATE;
    if (l->state == PMQ_LISTENER_STARTED) {
        /* GetParam on a listener runs inline; holding our lock keeps the handle open. */
        status = pmq_api->GetParam(l->handle, QUIC_PARAM_LISTENER_LOCAL_ADDRESS, &size, &addr);
    }
    pthread_mutex_unlock(&l->obj.lock);
    if (QUIC_SUCCEEDED(status)) {
        pmq_addr_from_quic(out, &addr);
    }
    return status;
}

QUIC_STATUS pmq_listener_get_param(pmq_listener *l, uint32_t param, uint32_t *size, void *buffer)
{
    pthread_mutex_lock(&l->obj.lock);
    /* msquic reads Listener->Binding without a lock, and ListenerStart (on
     * failure) and ListenerStop free it: wait until neither runs (as close does). */
    while (l->state == PMQ_LISTENER_STARTING || l->stop_in_flight) {
        pthread_cond_wait(&l->obj.cond, &l->obj.lock);
    }
    QUIC_STATUS status = QUIC_STATUS_INVALID_STATE;
    if (l->handle != NULL && l->state != PMQ_LISTENER_CLOSED) {
        /* Inline, as in pmq_listener_local_address: our lock keeps the handle open. */
        status = pmq_api->GetParam(l->handle, param, size, buffer);
    }
    pthread_mutex_unlock(&l->obj.lock);
    return status;
}

int pmq_listener_accept(pmq_listener *l, pmq_conn **out)
{
    pthread_mutex_lock(&l->obj.lock);
    int result;
    pmq_conn *found = NULL;
    if (l->count > 0) {
        found = queue_take(l, 0); /* completed its handshake, or sent a 0-RTT request (ACCEPTED_EARLY) */
        result = PMQ_ACCEPT_OK;
        pmq_obj_changed_locked(&l->obj);
    } else if (l->state == PMQ_LISTENER_IDLE) {
        result = PMQ_ACCEPT_NOT_STARTED;
    } else if (l->state == PMQ_LISTENER_STARTING || l->state == PMQ_LISTENER_STARTED ||
               (l->handshaking_count > 0 && l->state != PMQ_LISTENER_CLOSED)) {
        result = PMQ_ACCEPT_EMPTY; /* a handshake in progress may still complete */
    } else {
        result = PMQ_ACCEPT_FINISHED;
    }
    pthread_mutex_unlock(&l->obj.lock);
    if (found != NULL) {
        pmq_conn_leave_listener(found);
        *out = found;
    }
    return result;
}

void pmq_listener_get_stats(pmq_listener *l, pmq_listener_stats *out)
{
    pthread_mutex_lock(&l->obj.lock);
    *out = l->stats;
    out->queued = l->count;
    out->handshakes = l->handshaking_count;
    out->early_waiting = 0;
    for (uint32_t i = 0; i < l->handshaking_count; i++) {
        /* Handed over at the next settle with room (settle_handshakes_locked). */
        uint32_t flags = pmq_conn_flags(l->handshaking[i]);
        if ((flags & PMQ_CONN_ACCEPTED_EARLY) && !(flags & (EARLY_SHUTTING_DOWN | PMQ_CONN_CONNECTED))) {
            out->early_waiting++;
        }
    }
    pthread_mutex_unlock(&l->obj.lock);
}

void pmq_listener_close(pmq_listener *l)
{
    pthread_mutex_lock(&l->obj.lock);
    while (l->state == PMQ_LISTENER_STARTING || l->state == PMQ_LISTENER_STOPPING || l->stop_in_flight) {
        pthread_cond_wait(&l->obj.cond, &l->obj.lock);
    }
    if (l->state == PMQ_LISTENER_CLOSED) {
        pthread_mutex_unlock(&l->obj.lock);
        return;
    }
    l->state = PMQ_LISTENER_CLOSED;
    HQUIC handle = l->handle;
    pthread_mutex_unlock(&l->obj.lock);

    pmq_api->ListenerClose(handle); /* blocks; stops first if still started */

    pthread_mutex_lock(&l->obj.lock);
    l->handle = NULL;
    l->reaper_quit = 1;
    pthread_cond_signal(&l->reaper_cond);
    int reaper_running = l->reaper_running;
    pthread_mutex_unlock(&l->obj.lock);
    if (reaper_running) {
        pthread_join(l->reaper, NULL);
    }

    /* Nobody can accept these any more: shut them down; each closes itself.
     * CLOSED keeps settle_handshakes_locked from queueing anything new. */
    pmq_conn *drop[DROP_BATCH];
    for (;;) {
        uint32_t n = 0;
        pthread_mutex_lock(&l->obj.lock);
        while (n < DROP_BATCH && l->count > 0) {
            drop[n++] = queue_take(l, 0);
        }
        while (n < DROP_BATCH && l->handshaking_count > 0) {
            drop[n++] = handshaking_take(l, 0);
        }
        pmq_obj_changed_locked(&l->obj);
        pthread_mutex_unlock(&l->obj.lock);
        if (n == 0) {
            break;
        }
        drop_all(drop, n);
    }
}

void pmq_listener_release(pmq_listener *l) { pmq_obj_unref(&l->obj); }

QUIC_STATUS pmq_retry_memory_limit(int set, uint16_t *value)
{
    if (pmq_api == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    if (set) {
        return pmq_api->SetParam(NULL, QUIC_PARAM_GLOBAL_RETRY_MEMORY_PERCENT, sizeof(*value), value);
    }
    uint32_t size = sizeof(*value);
    return pmq_api->GetParam(NULL, QUIC_PARAM_GLOBAL_RETRY_MEMORY_PERCENT, &size, value);
}

/* ---- certificate checks and server names (certificates.c, sni.c) ------------ */

int pmq_listener_cert_take(pmq_listener *l, pmq_conn **out, pmq_cert_taken *taken)
{
    PMQ_CHECK(&l->obj);
    pthread_mutex_lock(&l->obj.lock);
    pmq_conn *found = NULL;
    for (uint32_t i = 0; i < l->handshaking_count && found == NULL; i++) {
        if (pmq_conn_cert_take(l->handshaking[i], taken)) { /* listener -> connection lock order */
            found = l->handshaking[i];
            pmq_obj_ref(pmq_conn_obj(found));
        }
    }
    pthread_mutex_unlock(&l->obj.lock);
    *out = found;
    return found != NULL;
}

QUIC_STATUS pmq_listener_add_server_name(pmq_listener *l, const char *name, HQUIC configuration, uint32_t tag,
                                         uint32_t cert_mode)
{
    PMQ_CHECK(&l->obj);
    pthread_mutex_lock(&l->obj.lock);
    QUIC_STATUS status = l->state == PMQ_LISTENER_IDLE ? pmq_sni_add(&l->sni, name, configuration, tag, cert_mode)
                                                       : QUIC_STATUS_INVALID_STATE;
    pthread_mutex_unlock(&l->obj.lock);
    return status;
}

QUIC_STATUS pmq_listener_set_default_name(pmq_listener *l, int refuse_unknown, uint32_t cert_mode)
{
    PMQ_CHECK(&l->obj);
    pthread_mutex_lock(&l->obj.lock);
    QUIC_STATUS status = QUIC_STATUS_INVALID_STATE;
    if (l->state == PMQ_LISTENER_IDLE) {
        l->sni.refuse_unknown = refuse_unknown != 0;
        l->sni.default_cert_mode = cert_mode;
        status = QUIC_STATUS_SUCCESS;
    }
    pthread_mutex_unlock(&l->obj.lock);
    return status;
}

void pmq_listener_set_keylog(pmq_listener *l, pmq_keylog *keylog)
{
    PMQ_CHECK(&l->obj);
    pmq_keylog_ref(keylog);
    pthread_mutex_lock(&l->obj.lock);
    pmq_keylog *old = l->keylog;
    l->keylog = keylog;
    pthread_mutex_unlock(&l->obj.lock);
    pmq_keylog_release(old);
}
