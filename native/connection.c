/*
 * Connection trampoline.
 *
 * The handle is closed here, inside SHUTDOWN_COMPLETE (msquic's own pattern),
 * never by Python. Python's calls on the handle are counted in `users`, and
 * SHUTDOWN_COMPLETE waits for them before closing, so no call ever reaches a
 * freed handle. Only non-blocking msquic calls may be counted: a blocking one
 * would wait for this very worker.
 *
 * References: one for msquic (dropped after the close) and one for the owner,
 * which is the listener's backlog until accept hands it to Python.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct pmq_conn {
    pmq_obj obj;               /* must stay first */
    HQUIC handle;              /* NULL once closed */
    int users;                 /* Python calls in flight on handle */
    int started;
    pmq_listener *listener;    /* while in a listener's backlog */
    pmq_conn_info info;
};

static void conn_destroy(pmq_obj *obj) { free(obj); }

static pmq_conn *conn_new(void)
{
    pmq_conn *c = calloc(1, sizeof(*c));
    if (c != NULL) {
        pmq_obj_init(&c->obj, 2, conn_destroy);
    }
    return c;
}

pmq_obj *pmq_conn_obj(pmq_conn *c) { return &c->obj; }
pmq_conn_info *pmq_conn_info_ptr(pmq_conn *c) { return &c->info; }

uint32_t pmq_conn_flags(pmq_conn *c)
{
    pthread_mutex_lock(&c->obj.lock);
    uint32_t flags = c->info.flags;
    pthread_mutex_unlock(&c->obj.lock);
    return flags;
}

void pmq_conn_get_info(pmq_conn *c, pmq_conn_info *out)
{
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

/* Streams arrive in a later layer; until a connection accepts them, refuse
 * them here without ever returning success with no handler (an abort). */
static QUIC_STATUS QUIC_API refused_stream_callback(HQUIC stream, void *context, QUIC_STREAM_EVENT *event)
{
    if (event->Type == QUIC_STREAM_EVENT_SHUTDOWN_COMPLETE && !event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
        pmq_api->StreamClose(stream);
    }
    return QUIC_STATUS_SUCCESS;
}

static void on_connected(pmq_conn *c, HQUIC handle, QUIC_CONNECTION_EVENT *event)
{
    QUIC_ADDR local, remote;
    uint32_t size = sizeof(local);
    int have_local = QUIC_SUCCEEDED(pmq_api->GetParam(handle, QUIC_PARAM_CONN_LOCAL_ADDRESS, &size, &local));
    size = sizeof(remote);
    int have_remote = QUIC_SUCCEEDED(pmq_api->GetParam(handle, QUIC_PARAM_CONN_REMOTE_ADDRESS, &size, &remote));

    pthread_mutex_lock(&c->obj.lock);
    c->info.flags |= PMQ_CONN_CONNECTED;
    if (event->CONNECTED.SessionResumed) {
        c->info.flags |= PMQ_CONN_SESSION_RESUMED;
    }
    c->info.alpn_len = event->CONNECTED.NegotiatedAlpnLength;
    memcpy(c->info.alpn, event->CONNECTED.NegotiatedAlpn, c->info.alpn_len);
    if (have_local) {
        pmq_addr_from_quic(&c->info.local, &local);
    }
    if (have_remote) {
        pmq_addr_from_quic(&c->info.remote, &remote);
    }
    pmq_obj_changed_locked(&c->obj);
    pmq_listener *l = owning_listener(c);
    pthread_mutex_unlock(&c->obj.lock);
    notify_listener(l);
}

static void on_shutdown_complete(pmq_conn *c, HQUIC handle, QUIC_CONNECTION_EVENT *event)
{
    pthread_mutex_lock(&c->obj.lock);
    c->info.flags |= PMQ_CONN_SHUTDOWN_COMPLETE;
    if (event->SHUTDOWN_COMPLETE.PeerAcknowledgedShutdown) {
        c->info.flags |= PMQ_CONN_PEER_ACKED_SHUTDOWN;
    }
    while (c->users > 0) {
        pthread_cond_wait(&c->obj.cond, &c->obj.lock);
    }
    c->handle = NULL;
    pthread_mutex_unlock(&c->obj.lock);

    if (!event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
        pmq_api->ConnectionClose(handle);
    }

    pthread_mutex_lock(&c->obj.lock);
    pmq_obj_changed_locked(&c->obj);
    pmq_listener *l = owning_listener(c);
    pthread_mutex_unlock(&c->obj.lock);
    notify_listener(l);
    pmq_obj_unref(&c->obj); /* msquic's reference */
}

static QUIC_STATUS QUIC_API conn_callback(HQUIC handle, void *context, QUIC_CONNECTION_EVENT *event)
{
    pmq_conn *c = context;
    pmq_callback_enter();
    switch (event->Type) {
    case QUIC_CONNECTION_EVENT_CONNECTED:
        on_connected(c, handle, event);
        break;
    case QUIC_CONNECTION_EVENT_SHUTDOWN_INITIATED_BY_TRANSPORT:
        pthread_mutex_lock(&c->obj.lock);
        c->info.flags |= PMQ_CONN_SHUTDOWN_BY_TRANSPORT;
        c->info.transport_status = event->SHUTDOWN_INITIATED_BY_TRANSPORT.Status;
        c->info.error_code = event->SHUTDOWN_INITIATED_BY_TRANSPORT.ErrorCode;
        pmq_obj_changed_locked(&c->obj);
        pthread_mutex_unlock(&c->obj.lock);
        break;
    case QUIC_CONNECTION_EVENT_SHUTDOWN_INITIATED_BY_PEER:
        pthread_mutex_lock(&c->obj.lock);
        c->info.flags |= PMQ_CONN_SHUTDOWN_BY_PEER;
        c->info.error_code = event->SHUTDOWN_INITIATED_BY_PEER.ErrorCode;
        pmq_obj_changed_locked(&c->obj);
        pthread_mutex_unlock(&c->obj.lock);
        break;
    case QUIC_CONNECTION_EVENT_SHUTDOWN_COMPLETE:
        on_shutdown_complete(c, handle, event);
        break;
    case QUIC_CONNECTION_EVENT_PEER_STREAM_STARTED: {
        HQUIC stream = event->PEER_STREAM_STARTED.Stream;
        pmq_api->SetCallbackHandler(stream, (void *)refused_stream_callback, NULL);
        pmq_api->StreamShutdown(stream, QUIC_STREAM_SHUTDOWN_FLAG_ABORT | QUIC_STREAM_SHUTDOWN_FLAG_IMMEDIATE, 0);
        break;
    }
    default:
        break;
    }
    pmq_callback_leave();
    return QUIC_STATUS_SUCCESS;
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
    c->handle = handle;
    c->started = 1;
    pmq_api->SetCallbackHandler(handle, (void *)conn_callback, c);
    return pmq_api->ConnectionSetConfiguration(handle, configuration);
}

void pmq_conn_discard_refused(pmq_conn *c)
{
    pthread_cond_destroy(&c->obj.cond);
    pthread_mutex_destroy(&c->obj.lock);
    free(c);
}

void pmq_conn_leave_listener(pmq_conn *c)
{
    pthread_mutex_lock(&c->obj.lock);
    pmq_listener *l = c->listener;
    c->listener = NULL;
    pthread_mutex_unlock(&c->obj.lock);
    if (l != NULL) {
        pmq_obj_unref(pmq_listener_obj(l));
    }
}

/* ---- client side --------------------------------------------------------- */

QUIC_STATUS pmq_conn_open(HQUIC registration, pmq_conn **out)
{
    pmq_conn *c = conn_new();
    if (c == NULL) {
        return QUIC_STATUS_OUT_OF_MEMORY;
    }
    QUIC_STATUS status = pmq_api->ConnectionOpen(registration, conn_callback, c, &c->handle);
    if (QUIC_FAILED(status)) {
        pmq_conn_discard_refused(c);
        return status;
    }
    *out = c;
    return status;
}

/* Closes a handle msquic will send no events for (never started). */
static void close_unstarted(pmq_conn *c)
{
    pthread_mutex_lock(&c->obj.lock);
    HQUIC handle = c->handle;
    c->handle = NULL;
    c->info.flags |= PMQ_CONN_SHUTDOWN_COMPLETE;
    pmq_obj_changed_locked(&c->obj);
    pthread_mutex_unlock(&c->obj.lock);
    if (handle != NULL) {
        pmq_api->ConnectionClose(handle);
        pmq_obj_unref(&c->obj); /* msquic's reference */
    }
}

QUIC_STATUS pmq_conn_start(pmq_conn *c, HQUIC configuration, const pmq_addr *remote, const char *server_name)
{
    QUIC_ADDR addr;
    if (c->started || c->handle == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    if (!pmq_addr_to_quic(&addr, remote) || server_name == NULL) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    QUIC_STATUS status = pmq_api->SetParam(c->handle, QUIC_PARAM_CONN_REMOTE_ADDRESS, sizeof(addr), &addr);
    if (QUIC_SUCCEEDED(status)) {
        status = pmq_api->ConnectionStart(c->handle, configuration, remote->family, server_name, remote->port);
    }
    if (QUIC_FAILED(status)) {
        close_unstarted(c);
    } else {
        c->started = 1;
    }
    return status;
}

QUIC_STATUS pmq_conn_shutdown(pmq_conn *c, uint64_t error_code)
{
    pthread_mutex_lock(&c->obj.lock);
    HQUIC handle = c->handle;
    if (handle == NULL || !c->started) {
        pthread_mutex_unlock(&c->obj.lock);
        return QUIC_STATUS_INVALID_STATE;
    }
    if (!(c->info.flags & PMQ_CONN_SHUTDOWN_BY_APP)) {
        c->info.flags |= PMQ_CONN_SHUTDOWN_BY_APP;
        c->info.local_error_code = error_code;
    }
    c->users++;
    pthread_mutex_unlock(&c->obj.lock);

    pmq_api->ConnectionShutdown(handle, QUIC_CONNECTION_SHUTDOWN_FLAG_NONE, error_code); /* queues only */

    pthread_mutex_lock(&c->obj.lock);
    c->users--;
    pmq_obj_changed_locked(&c->obj);
    pthread_mutex_unlock(&c->obj.lock);
    return QUIC_STATUS_SUCCESS;
}

void pmq_conn_release(pmq_conn *c)
{
    pthread_mutex_lock(&c->obj.lock);
    int started = c->started;
    int alive = c->handle != NULL && !(c->info.flags & PMQ_CONN_SHUTDOWN_BY_APP);
    pthread_mutex_unlock(&c->obj.lock);
    if (!started) {
        close_unstarted(c);
    } else if (alive) {
        pmq_conn_shutdown(c, 0);
    }
    pmq_obj_unref(&c->obj);
}
