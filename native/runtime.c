/* Library handle, objects with blocking waits, and eventfd wakers for asyncio. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

const QUIC_API_TABLE *pmq_api = NULL;

static __thread int callback_depth;
static atomic_int hooks_on = 1;

/* ---- fork ------------------------------------------------------------------
 * msquic's worker threads do not survive fork(), yet its state (registrations,
 * sockets, queues) is copied into the child: any call there that waits for a
 * worker (RegistrationClose, MsQuicClose, a connection's GetParam) waits
 * forever, and MsQuicClose cannot reset the library while the parent's
 * objects are live (verified: it hangs). So a child forked after msquic was
 * opened gets a table of stubs that never enter msquic: closes do nothing,
 * everything else fails with INVALID_STATE. Python turns that into
 * ForkedProcessError; the C paths that call msquic directly simply fail. */

static QUIC_API_TABLE forked_api;
static int forked_child;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void QUIC_API fk_set_context(HQUIC h, void *c) { (void)h; (void)c; }
static void *QUIC_API fk_get_context(HQUIC h) { (void)h; return NULL; }
static void QUIC_API fk_set_handler(HQUIC h, void *f, void *c) { (void)h; (void)f; (void)c; }
static QUIC_STATUS QUIC_API fk_set_param(HQUIC h, uint32_t p, uint32_t n, const void *b)
{ (void)h; (void)p; (void)n; (void)b; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_get_param(HQUIC h, uint32_t p, uint32_t *n, void *b)
{ (void)h; (void)p; (void)n; (void)b; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_registration_open(const QUIC_REGISTRATION_CONFIG *c, HQUIC *out)
{ (void)c; (void)out; return QUIC_STATUS_INVALID_STATE; }
/* Every Close and ListenerStop: (HQUIC) -> void. */
static void QUIC_API fk_close(HQUIC h) { (void)h; }
static void QUIC_API fk_shutdown(HQUIC h, QUIC_CONNECTION_SHUTDOWN_FLAGS f, QUIC_UINT62 e) { (void)h; (void)f; (void)e; }
static QUIC_STATUS QUIC_API fk_configuration_open(HQUIC r, const QUIC_BUFFER *const a, uint32_t n,
                                                  const QUIC_SETTINGS *s, uint32_t sn, void *c, HQUIC *out)
{ (void)r; (void)a; (void)n; (void)s; (void)sn; (void)c; (void)out; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_load_credential(HQUIC h, const QUIC_CREDENTIAL_CONFIG *c)
{ (void)h; (void)c; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_listener_open(HQUIC r, QUIC_LISTENER_CALLBACK_HANDLER f, void *c, HQUIC *out)
{ (void)r; (void)f; (void)c; (void)out; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_listener_start(HQUIC h, const QUIC_BUFFER *const a, uint32_t n, const QUIC_ADDR *addr)
{ (void)h; (void)a; (void)n; (void)addr; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_connection_open(HQUIC r, QUIC_CONNECTION_CALLBACK_HANDLER f, void *c, HQUIC *out)
{ (void)r; (void)f; (void)c; (void)out; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_connection_open_in_partition(HQUIC r, uint16_t p, QUIC_CONNECTION_CALLBACK_HANDLER f,
                                                            void *c, HQUIC *out)
{ (void)r; (void)p; (void)f; (void)c; (void)out; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_connection_start(HQUIC h, HQUIC cfg, QUIC_ADDRESS_FAMILY fam, const char *name,
                                                uint16_t port)
{ (void)h; (void)cfg; (void)fam; (void)name; (void)port; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_set_configuration(HQUIC h, HQUIC cfg) { (void)h; (void)cfg; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_send_resumption(HQUIC h, QUIC_SEND_RESUMPTION_FLAGS f, uint16_t n, const uint8_t *d)
{ (void)h; (void)f; (void)n; (void)d; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_stream_open(HQUIC h, QUIC_STREAM_OPEN_FLAGS f, QUIC_STREAM_CALLBACK_HANDLER cb,
                                           void *c, HQUIC *out)
{ (void)h; (void)f; (void)cb; (void)c; (void)out; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_stream_start(HQUIC h, QUIC_STREAM_START_FLAGS f) { (void)h; (void)f; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_stream_shutdown(HQUIC h, QUIC_STREAM_SHUTDOWN_FLAGS f, QUIC_UINT62 e)
{ (void)h; (void)f; (void)e; return QUIC_STATUS_INVALID_STATE; }
/* StreamSend and DatagramSend share a signature. */
static QUIC_STATUS QUIC_API fk_send(HQUIC h, const QUIC_BUFFER *const b, uint32_t n, QUIC_SEND_FLAGS f, void *c)
{ (void)h; (void)b; (void)n; (void)f; (void)c; return QUIC_STATUS_INVALID_STATE; }
static void QUIC_API fk_receive_complete(HQUIC h, uint64_t n) { (void)h; (void)n; }
static QUIC_STATUS QUIC_API fk_receive_set_enabled(HQUIC h, BOOLEAN on) { (void)h; (void)on; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_complete_resumption(HQUIC h, BOOLEAN ok) { (void)h; (void)ok; return QUIC_STATUS_INVALID_STATE; }
static QUIC_STATUS QUIC_API fk_complete_certificate(HQUIC h, BOOLEAN ok, QUIC_TLS_ALERT_CODES a)
{ (void)h; (void)ok; (void)a; return QUIC_STATUS_INVALID_STATE; }

/* Runs in the child, before fork() returns there: only a pointer swap. */
static void library_forked_in_child(void)
{
    if (pmq_api != NULL && pmq_api != &forked_api) {
        pmq_api = &forked_api;
        forked_child = 1;
    }
}

/* Prepared in the parent, so the child has nothing to build. */
static void forked_api_prepare(void)
{
    QUIC_API_TABLE *t = &forked_api;
    memcpy(t, pmq_api, sizeof(*t)); /* preview slots, never called by pymsquic, stay as they are */
    t->SetContext = fk_set_context;
    t->GetContext = fk_get_context;
    t->SetCallbackHandler = fk_set_handler;
    t->SetParam = fk_set_param;
    t->GetParam = fk_get_param;
    t->RegistrationOpen = fk_registration_open;
    t->RegistrationClose = fk_close;
    t->RegistrationShutdown = fk_shutdown;
    t->ConfigurationOpen = fk_configuration_open;
    t->ConfigurationClose = fk_close;
    t->ConfigurationLoadCredential = fk_load_credential;
    t->ListenerOpen = fk_listener_open;
    t->ListenerClose = fk_close;
    t->ListenerStart = fk_listener_start;
    t->ListenerStop = fk_close;
    t->ConnectionOpen = fk_connection_open;
    t->ConnectionClose = fk_close;
    t->ConnectionShutdown = fk_shutdown;
    t->ConnectionStart = fk_connection_start;
    t->ConnectionSetConfiguration = fk_set_configuration;
    t->ConnectionSendResumptionTicket = fk_send_resumption;
    t->StreamOpen = fk_stream_open;
    t->StreamClose = fk_close;
    t->StreamStart = fk_stream_start;
    t->StreamShutdown = fk_stream_shutdown;
    t->StreamSend = fk_send;
    t->StreamReceiveComplete = fk_receive_complete;
    t->StreamReceiveSetEnabled = fk_receive_set_enabled;
    t->DatagramSend = fk_send;
    t->ConnectionResumptionTicketValidationComplete = fk_complete_resumption;
    t->ConnectionCertificateValidationComplete = fk_complete_certificate;
    t->ConnectionOpenInPartition = fk_connection_open_in_partition;
}

static void atfork_register(void) { (void)pthread_atfork(NULL, NULL, library_forked_in_child); }

int pmq_library_forked(void) { return forked_child; }

QUIC_STATUS pmq_library_open(void)
{
    if (forked_child) {
        return QUIC_STATUS_INVALID_STATE; /* msquic cannot start again in this process */
    }
    if (pmq_api != NULL) {
        return QUIC_STATUS_SUCCESS;
    }
    const QUIC_API_TABLE *api = NULL;
    QUIC_STATUS status = MsQuicOpenVersion(QUIC_API_VERSION_2, (const void **)&api);
    if (QUIC_SUCCEEDED(status)) {
        pmq_api = api;
        forked_api_prepare();
        pthread_once(&atfork_once, atfork_register);
    }
    return status;
}

void pmq_library_close(void)
{
    /* In a forked child MsQuicClose would wait for the parent's threads forever. */
    if (pmq_api != NULL && !forked_child) {
        MsQuicClose(pmq_api);
        pmq_api = NULL;
    }
}

int pmq_in_callback(void) { return callback_depth > 0; }
void pmq_callback_enter(void) { callback_depth++; }
void pmq_callback_leave(void) { callback_depth--; }
void pmq_hooks_enable(int enabled) { atomic_store(&hooks_on, enabled ? 1 : 0); }
int pmq_hooks_enabled(void) { return atomic_load(&hooks_on); }

uint64_t pmq_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t pmq_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void pmq_deadline(struct timespec *ts, uint64_t in_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(in_ms / 1000u);
    ts->tv_nsec += (long)(in_ms % 1000u) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000L;
    }
}

/* ---- wakers ------------------------------------------------------------- */

struct pmq_waker {
    /* Guards head, tail, closed and the ready_next/in_ready of every object
     * attached to this waker. A leaf (internal.h): taken with one object's
     * lock held or none, and nothing is taken under it; objects leaving the
     * list are unreferenced after it is released. */
    pthread_mutex_t lock;
    int fd;
    atomic_int refs;
    pmq_obj *head;   /* objects that changed, each holding a reference */
    pmq_obj *tail;
    int closed;      /* the loop let go: nothing drains the list any more */
};

pmq_waker *pmq_waker_new(void)
{
    pmq_waker *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return NULL;
    }
    w->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->fd < 0) {
        free(w);
        return NULL;
    }
    pthread_mutex_init(&w->lock, NULL);
    atomic_init(&w->refs, 1);
    return w;
}

int pmq_waker_fd(pmq_waker *w) { return w->fd; }

/* A hint without the lock (loop mode: drain right after a step, no syscall when idle). */
int pmq_waker_pending(pmq_waker *w) { return __atomic_load_n(&w->head, __ATOMIC_RELAXED) != NULL; }

static void waker_ref(pmq_waker *w) { atomic_fetch_add(&w->refs, 1); }

/* Drops a reference held by an attached object. */
static void waker_unref(pmq_waker *w)
{
    if (atomic_fetch_sub(&w->refs, 1) != 1) {
        return;
    }
    /* Attached objects hold references to the waker and leave its list when
     * re-attached, so the list is empty here; drop what may remain anyway. */
    while (w->head != NULL) {
        pmq_obj *obj = w->head;
        w->head = obj->ready_next;
        obj->in_ready = 0;
        pmq_obj_unref(obj);
    }
    close(w->fd);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

/* The loop's release. Objects still queued hold a reference from the list
 * and a reference to the waker: drop the list's now and queue nothing more,
 * or the two keep each other alive for good (found by LeakSanitizer). */
void pmq_waker_release(pmq_waker *w)
{
    pthread_mutex_lock(&w->lock);
    w->closed = 1;
    pmq_obj *obj;
    while ((obj = w->head) != NULL) {
        /* One at a time under the lock: a re-attach may unlink entries meanwhile. */
        w->head = obj->ready_next;
        obj->in_ready = 0;
        pthread_mutex_unlock(&w->lock);
        pmq_obj_unref(obj);
        pthread_mutex_lock(&w->lock);
    }
    w->tail = NULL;
    pthread_mutex_unlock(&w->lock);
    waker_unref(w);
}

/* Queues obj once; writes the eventfd when the list turns non-empty. */
static void waker_push(pmq_waker *w, pmq_obj *obj)
{
    pthread_mutex_lock(&w->lock);
    if (!obj->in_ready && !w->closed) {
        obj->in_ready = 1;
        obj->ready_next = NULL;
        pmq_obj_ref(obj);
        int was_empty = w->head == NULL;
        if (was_empty) {
            w->head = obj;
        } else {
            w->tail->ready_next = obj;
        }
        w->tail = obj;
        if (was_empty) {
            uint64_t one = 1;
            ssize_t n;
            do {
                n = write(w->fd, &one, sizeof(one));
            } while (n < 0 && errno == EINTR);
        }
    }
    pthread_mutex_unlock(&w->lock);
}

size_t pmq_waker_drain(pmq_waker *w, uint64_t *ids, size_t max)
{
    uint64_t counter;
    pmq_obj *taken[256];
    size_t n = 0;
    if (max > 256) {
        max = 256;
    }
    pthread_mutex_lock(&w->lock);
    /* Reset under the lock (non-blocking fd): read before it, a push between
     * the read and the taking of the list left the eventfd set with the list
     * empty, and the loop woke once more for nothing (once per request). */
    while (read(w->fd, &counter, sizeof(counter)) < 0 && errno == EINTR) {
    }
    while (w->head != NULL && n < max) {
        pmq_obj *obj = w->head;
        w->head = obj->ready_next;
        obj->in_ready = 0;
        ids[n] = obj->waker_id;
        taken[n++] = obj;
    }
    if (w->head == NULL) {
        w->tail = NULL;
    } else {
        /* More than max: keep the loop's reader ready for another round. */
        uint64_t one = 1;
        (void)!write(w->fd, &one, sizeof(one));
    }
    pthread_mutex_unlock(&w->lock);
    for (size_t i = 0; i < n; i++) {
        pmq_obj_unref(taken[i]);
    }
    return n;
}

/* ---- objects -------------------------------------------------------------- */

void pmq_obj_init(pmq_obj *obj, int refs, void (*destroy)(pmq_obj *))
{
    pthread_mutex_init(&obj->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&obj->cond, &attr);
    pthread_condattr_destroy(&attr);
    atomic_init(&obj->refs, refs);
    obj->destroy = destroy;
#ifdef PMQ_DEBUG_MAGIC
    obj->magic = PMQ_MAGIC_LIVE;
#endif
}

#ifdef PMQ_DEBUG_MAGIC
void pmq_obj_check(const pmq_obj *obj, const char *where)
{
    uint32_t magic = __atomic_load_n(&obj->magic, __ATOMIC_RELAXED);
    int refs = atomic_load(&((pmq_obj *)obj)->refs);
    if (magic != PMQ_MAGIC_LIVE || refs <= 0) {
        fprintf(stderr, "pymsquic: %s: object %p is not alive (magic 0x%08x, refs %d)\n", where, (void *)obj,
                magic, refs);
        abort();
    }
}

void pmq_obj_check_handle(const pmq_obj *obj, void *handle, const char *where)
{
    pmq_obj_check(obj, where);
    if (obj->debug_handle != handle) {
        fprintf(stderr, "pymsquic: %s: object %p was made for handle %p, called for handle %p\n", where,
                (void *)obj, obj->debug_handle, handle);
        abort();
    }
}
#endif

void pmq_obj_ref(pmq_obj *obj)
{
    PMQ_CHECK(obj);
    atomic_fetch_add(&obj->refs, 1);
}

void pmq_obj_unref(pmq_obj *obj)
{
    PMQ_CHECK(obj);
    if (atomic_fetch_sub(&obj->refs, 1) != 1) {
        return;
    }
#ifdef PMQ_DEBUG_MAGIC
    __atomic_store_n(&obj->magic, PMQ_MAGIC_DEAD, __ATOMIC_RELAXED);
#endif
    if (obj->waker != NULL) {
        waker_unref(obj->waker);
    }
    pthread_cond_destroy(&obj->cond);
    pthread_mutex_destroy(&obj->lock);
    obj->destroy(obj);
}

void pmq_obj_changed_locked(pmq_obj *obj)
{
    obj->seq++;
    pthread_cond_broadcast(&obj->cond);
    if (obj->waker != NULL) {
        waker_push(obj->waker, obj);
    }
}

void pmq_obj_changed(pmq_obj *obj)
{
    pthread_mutex_lock(&obj->lock);
    pmq_obj_changed_locked(obj);
    pthread_mutex_unlock(&obj->lock);
}

uint64_t pmq_obj_seq(pmq_obj *obj)
{
    pthread_mutex_lock(&obj->lock);
    uint64_t seq = obj->seq;
    pthread_mutex_unlock(&obj->lock);
    return seq;
}

int pmq_obj_wait(pmq_obj *obj, uint64_t seq, int timeout_ms)
{
    struct timespec deadline;
    if (timeout_ms >= 0) {
        pmq_deadline(&deadline, (uint64_t)timeout_ms);
    }
    pthread_mutex_lock(&obj->lock);
    int rc = 0;
    while (obj->seq == seq && rc != ETIMEDOUT) {
        rc = timeout_ms < 0 ? pthread_cond_wait(&obj->cond, &obj->lock)
                            : pthread_cond_timedwait(&obj->cond, &obj->lock, &deadline);
    }
    int changed = obj->seq != seq;
    pthread_mutex_unlock(&obj->lock);
    return changed;
}

/* Takes obj off w's ready list; the caller holds obj->lock and a reference. */
static void waker_remove(pmq_waker *w, pmq_obj *obj)
{
    pthread_mutex_lock(&w->lock);
    if (obj->in_ready) {
        pmq_obj *prev = NULL;
        for (pmq_obj *it = w->head; it != NULL; prev = it, it = it->ready_next) {
            if (it == obj) {
                if (prev == NULL) {
                    w->head = obj->ready_next;
                } else {
                    prev->ready_next = obj->ready_next;
                }
                if (w->tail == obj) {
                    w->tail = prev;
                }
                break;
            }
        }
        obj->in_ready = 0;
        atomic_fetch_sub(&obj->refs, 1); /* the list's reference; never the last */
        if (w->head == NULL) {
            /* Nothing left to report: unset the eventfd, or the loop wakes for
             * nothing (a released stream's last event, once per request). */
            uint64_t counter;
            while (read(w->fd, &counter, sizeof(counter)) < 0 && errno == EINTR) {
            }
        }
    }
    pthread_mutex_unlock(&w->lock);
}

void pmq_obj_attach(pmq_obj *obj, pmq_waker *waker, uint64_t id)
{
    if (waker != NULL) {
        waker_ref(waker);
    }
    pthread_mutex_lock(&obj->lock);
    pmq_waker *old = obj->waker;
    if (old != NULL) {
        /* Under obj->lock, so no change can be queued on the new waker while
         * in_ready still describes the old one. */
        waker_remove(old, obj);
    }
    obj->waker = waker;
    obj->waker_id = id;
    pthread_mutex_unlock(&obj->lock);
    if (old != NULL) {
        waker_unref(old);
    }
}

/* ---- handle guards ------------------------------------------------------- */

HQUIC pmq_guard_enter_locked(pmq_guard *g)
{
    HQUIC handle = (g->handle != NULL && !g->final) ? g->handle : NULL;
    if (handle != NULL) {
        g->users++;
    }
    return handle;
}

HQUIC pmq_guard_enter(pmq_obj *obj, pmq_guard *g)
{
    pthread_mutex_lock(&obj->lock);
    HQUIC handle = pmq_guard_enter_locked(g);
    pthread_mutex_unlock(&obj->lock);
    return handle;
}

void pmq_guard_leave(pmq_obj *obj, pmq_guard *g, void (*close_fn)(HQUIC))
{
    pthread_mutex_lock(&obj->lock);
    HQUIC to_close = NULL;
    if (--g->users == 0 && g->close_deferred) {
        to_close = g->handle;
        g->handle = NULL;
        g->close_deferred = 0;
        pmq_obj_changed_locked(obj);
    }
    pthread_mutex_unlock(&obj->lock);
    if (to_close != NULL) {
        close_fn(to_close);
        pmq_obj_unref(obj); /* msquic's reference */
    }
}

HQUIC pmq_guard_finish_locked(pmq_guard *g)
{
    g->final = 1;
    if (g->users > 0) {
        g->close_deferred = 1;
        return NULL;
    }
    HQUIC handle = g->handle;
    g->handle = NULL;
    return handle;
}

/* ---- addresses and ALPN ------------------------------------------------- */

void pmq_addr_from_quic(pmq_addr *out, const QUIC_ADDR *in)
{
    memset(out, 0, sizeof(*out));
    if (in == NULL) {
        return;
    }
    if (in->Ip.sa_family == AF_INET) {
        out->family = AF_INET;
        out->port = ntohs(in->Ipv4.sin_port);
        memcpy(out->ip, &in->Ipv4.sin_addr, 4);
    } else if (in->Ip.sa_family == AF_INET6) {
        out->family = AF_INET6;
        out->port = ntohs(in->Ipv6.sin6_port);
        out->scope_id = in->Ipv6.sin6_scope_id;
        memcpy(out->ip, &in->Ipv6.sin6_addr, 16);
    } else if (in->Ip.sa_family == AF_UNSPEC) {
        /* A wildcard listener's address: msquic fills in only the port it bound. */
        out->port = ntohs(in->Ipv6.sin6_port);
    }
}

int pmq_addr_to_quic(QUIC_ADDR *out, const pmq_addr *in)
{
    memset(out, 0, sizeof(*out));
    if (in->family == AF_INET) {
        out->Ipv4.sin_family = AF_INET;
        out->Ipv4.sin_port = htons(in->port);
        memcpy(&out->Ipv4.sin_addr, in->ip, 4);
    } else if (in->family == AF_INET6) {
        out->Ipv6.sin6_family = AF_INET6;
        out->Ipv6.sin6_port = htons(in->port);
        out->Ipv6.sin6_scope_id = in->scope_id;
        memcpy(&out->Ipv6.sin6_addr, in->ip, 16);
    } else if (in->family == AF_UNSPEC) {
        out->Ip.sa_family = AF_UNSPEC;
        out->Ipv6.sin6_port = htons(in->port); /* msquic reads the port at the same offset */
    } else {
        return 0;
    }
    return 1;
}

int pmq_alpn_split(const uint8_t *list, size_t len, QUIC_BUFFER *out, uint32_t max, uint32_t *count)
{
    uint32_t n = 0;
    size_t i = 0;
    while (i < len) {
        uint8_t l = list[i];
        if (l == 0 || i + 1 + l > len || n == max) {
            return 0;
        }
        out[n].Length = l;
        out[n].Buffer = (uint8_t *)&list[i + 1];
        n++;
        i += 1u + l;
    }
    *count = n;
    return n > 0;
}
