/* Loop mode: msquic's custom execution (preview API), driven by the application.
 *
 * ExecutionCreate hands msquic an epoll fd that we own; msquic registers its
 * sockets and eventfds in it and creates no thread of its own. Whoever calls
 * pmq_execution_step (the asyncio loop's reader and timer, or the exit
 * teardown through pmq_execution_drive) runs every msquic callback on its own
 * thread. The pitfalls this file respects (msquic-facts.md, verified on 2.5.1):
 * - ExecutionCreate must precede the first RegistrationOpen.
 * - ExecutionPoll returning 0 means "poll again now": msquic signals nothing.
 * - ExecutionDelete hangs forever: never called; MsQuicClose frees the pool.
 * - After RegistrationClose the next ExecutionPoll reads freed memory: so
 *   registrations closed in this mode are parked here and closed only at the
 *   end, after the last poll (pmq_execution_finish).
 * - MsQuicClose hangs unless the loop ran once more after the last handle was
 *   closed: pmq_execution_finish drives until msquic is quiet first.
 *
 * Fairness (measured): one ExecutionPoll runs one connection for up
 * to MaxOperationsPerDrain (16) operations, and a saturating sender's
 * FLUSH_SEND re-queues itself with up to 40 datagrams each: ~640 datagrams,
 * ~2 ms a round, and every round asks for another. With msquic's threads
 * Python answers meanwhile on the other core; here the loop waits for the
 * whole step, so each hop of a small request (stream accepted, read, answer
 * written) waited for 8 such rounds, and 6 MB of a download passed before a
 * 4 kB answer. So in this mode msquic's quantum is LOOP_OPERATIONS_PER_DRAIN
 * (a round then sends ~80 datagrams), a step starts no round after
 * STEP_BUDGET_US, and it ends after the round in which msquic handed the loop
 * something to answer (pmq_execution_step_for). More, cheaper rounds
 * (STEP_ROUNDS 32) keep many small requests batched as before.
 */
#define _GNU_SOURCE
#define QUIC_API_ENABLE_PREVIEW_FEATURES 1
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "internal.h"

#define MAX_EVENTS 64
#ifndef STEP_ROUNDS
#define STEP_ROUNDS 32 /* at most this many ExecutionPoll rounds per step while msquic returns 0 */
#endif
#ifndef STEP_BUDGET_US
#define STEP_BUDGET_US 250 /* and no new round once a step ran this long */
#endif
#ifndef LOOP_OPERATIONS_PER_DRAIN
#define LOOP_OPERATIONS_PER_DRAIN 2 /* msquic's per-connection quantum in this mode (default 16) */
#endif
/* The driver thread's longest sleep: another stepper (the asyncio loop) may
 * have set an earlier msquic timer than the one this thread knows of. */
#define DRIVER_MAX_SLEEP_MS 20

/* exec_lock: msquic's work runs under it, on one thread at a time: a step (the
 * asyncio loop, the driver thread, the exit), and every API call msquic runs
 * inline on its caller in this mode (see the wrapped table below). Taken
 * recursively per thread (exec_depth): callbacks make such calls too. Callbacks
 * take object locks under it; nothing takes it under an object lock, as no
 * blocking msquic call is made under one (msquic-facts.md). */
static pthread_mutex_t exec_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int exec_depth;
static int epfd = -1;
static QUIC_EXECUTION *execution;
static int stopped;               /* no ExecutionPoll from now on */
static HQUIC *parked;             /* registrations whose RegistrationClose waits for the end */
static size_t parked_count, parked_cap;
static pmq_execution_stats stats; /* under exec_lock */

static void exec_enter(void)
{
    if (exec_depth++ == 0) {
        pthread_mutex_lock(&exec_lock);
    }
}

static void exec_leave(void)
{
    if (--exec_depth == 0) {
        pthread_mutex_unlock(&exec_lock);
    }
}

/* ---- the API table of this mode ----------------------------------------------
 * With custom executions msquic runs ConnectionClose, StreamClose, StreamShutdown
 * and a connection's or stream's GetParam/SetParam inline on whichever thread
 * calls them (api.c: `MsQuicLib.CustomExecutions || on the worker`), unlocked:
 * from a thread other than the stepper they would race msquic's own work on
 * that connection. Through this table they run under exec_lock instead. */

static QUIC_API_TABLE exec_api;
static const QUIC_API_TABLE *real_api;

/* msquic's private QUIC_HANDLE starts with its type (core/library.h, 2.5.1):
 * 3 client connection, 4 server connection, 5 stream. Only those run inline;
 * a listener's GetParam must not take exec_lock (it is made under the
 * listener's lock, which NEW_CONNECTION callbacks take). */
static int runs_inline(HQUIC handle)
{
    if (handle == NULL) {
        return 0;
    }
    int type = *(const int *)handle;
    return type >= 3 && type <= 5;
}

static void QUIC_API ex_connection_close(HQUIC h)
{
    exec_enter();
    real_api->ConnectionClose(h);
    exec_leave();
}

static void QUIC_API ex_stream_close(HQUIC h)
{
    exec_enter();
    real_api->StreamClose(h);
    exec_leave();
}

static QUIC_STATUS QUIC_API ex_stream_shutdown(HQUIC h, QUIC_STREAM_SHUTDOWN_FLAGS f, QUIC_UINT62 e)
{
    exec_enter();
    QUIC_STATUS status = real_api->StreamShutdown(h, f, e);
    exec_leave();
    return status;
}

static QUIC_STATUS QUIC_API ex_set_param(HQUIC h, uint32_t p, uint32_t n, const void *b)
{
    if (!runs_inline(h)) {
        return real_api->SetParam(h, p, n, b);
    }
    exec_enter();
    QUIC_STATUS status = real_api->SetParam(h, p, n, b);
    exec_leave();
    return status;
}

static QUIC_STATUS QUIC_API ex_get_param(HQUIC h, uint32_t p, uint32_t *n, void *b)
{
    if (!runs_inline(h)) {
        return real_api->GetParam(h, p, n, b);
    }
    exec_enter();
    QUIC_STATUS status = real_api->GetParam(h, p, n, b);
    exec_leave();
    return status;
}

static void install_exec_api(void)
{
    real_api = pmq_api;
    memcpy(&exec_api, real_api, sizeof(exec_api));
    exec_api.ConnectionClose = ex_connection_close;
    exec_api.StreamClose = ex_stream_close;
    exec_api.StreamShutdown = ex_stream_shutdown;
    exec_api.SetParam = ex_set_param;
    exec_api.GetParam = ex_get_param;
    pmq_api = &exec_api;
}

/* A shorter quantum per connection (see the top of this file): a poll with a
 * saturating sender then sends ~80 datagrams, not ~640. Global settings, so
 * every configuration inherits it (pymsquic's Settings never set this field).
 * A failure only leaves msquic's default: the mode works, less fairly. */
static void shorten_quantum(void)
{
    /* msquic's QuicSettingApply recomputes an unset MinimumMtu to its floor
     * (1248, not the default 1288): pass the current one along, or every
     * configuration would read back another minimum_mtu in this mode. */
    QUIC_SETTINGS current;
    uint32_t size = sizeof(current);
    memset(&current, 0, sizeof(current));
    QUIC_SETTINGS settings;
    memset(&settings, 0, sizeof(settings));
    if (QUIC_SUCCEEDED(pmq_api->GetParam(NULL, QUIC_PARAM_GLOBAL_SETTINGS, &size, &current))) {
        settings.IsSet.MinimumMtu = 1;
        settings.MinimumMtu = current.MinimumMtu;
    }
    settings.IsSet.MaxOperationsPerDrain = 1;
    settings.MaxOperationsPerDrain = LOOP_OPERATIONS_PER_DRAIN;
    (void)pmq_api->SetParam(NULL, QUIC_PARAM_GLOBAL_SETTINGS, sizeof(settings), &settings);
}

QUIC_STATUS pmq_execution_create(void)
{
    if (pmq_api == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    pthread_mutex_lock(&exec_lock);
    QUIC_STATUS status = QUIC_STATUS_SUCCESS;
    if (execution == NULL) {
        int fd = epoll_create1(EPOLL_CLOEXEC);
        if (fd < 0) {
            status = (QUIC_STATUS)errno;
        } else {
            QUIC_EXECUTION_CONFIG config = {0, &fd};
            QUIC_EXECUTION *ex = NULL;
            /* Copies nothing of config but the fd's value (msquic keeps the int). */
            status = pmq_api->ExecutionCreate(QUIC_GLOBAL_EXECUTION_CONFIG_FLAG_NONE, 0, 1, &config, &ex);
            if (QUIC_SUCCEEDED(status)) {
                epfd = fd;
                execution = ex;
                install_exec_api();
                shorten_quantum();
            } else {
                close(fd);
            }
        }
    }
    pthread_mutex_unlock(&exec_lock);
    return status;
}

int pmq_execution_fd(void) { return epfd; }

/* A child forked after msquic opened shares the epoll instance and the
 * sockets with its parent and holds a copy of msquic's state (exec_lock too,
 * maybe taken by a thread that is not there): a step there would run the
 * parent's msquic in the child (it crashed). Nothing is stepped in it. */
static int in_forked_child(void) { return pmq_library_forked(); }

/* Waits up to timeout_ms (0: not at all) for msquic's fds, dispatches what is
 * ready, then lets msquic run its queued work and timers. Returns the wait
 * msquic asks for: 0 "again now", -1 "only when an fd is ready", else ms. */
static int64_t step_locked(int timeout_ms)
{
    if (stopped || execution == NULL) {
        return -1;
    }
    struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
    stats.completions += n > 0 ? (uint64_t)n : 0;
    stats.polls++;
    for (int i = 0; i < n; i++) {
        /* data.ptr is always a QUIC_SQE (msquic's sockets and eventfds). */
        QUIC_SQE *sqe = (QUIC_SQE *)evs[i].data.ptr;
        sqe->Completion(&evs[i]);
    }
    uint32_t wait = pmq_api->ExecutionPoll(execution);
    return wait == UINT32_MAX ? -1 : (int64_t)wait;
}

int64_t pmq_execution_step_for(pmq_waker *waker)
{
    if (in_forked_child()) {
        return -1; /* and pmq_execution_active() is 0: the loop stops scheduling steps */
    }
    exec_enter();
    uint64_t start = pmq_now_us();
    int64_t wait = step_locked(0);
    /* 0 means msquic has more work now: do it here rather than one trip
     * through the event loop per round (cheap rounds, many small requests,
     * batch well), bounded in rounds and time so the loop still turns, and
     * not at all once the loop has something to answer: it goes first. */
    int rounds = 1;
    while (wait == 0 && rounds < STEP_ROUNDS && pmq_now_us() - start < STEP_BUDGET_US &&
           !(waker != NULL && pmq_waker_pending(waker))) {
        wait = step_locked(0);
        rounds++;
    }
    uint64_t took = pmq_now_us() - start;
    stats.steps++;
    if (wait == 0) { /* why msquic's further work waits for the next step */
        if (rounds == STEP_ROUNDS) {
            stats.capped_steps++;
        } else if (took >= STEP_BUDGET_US) {
            stats.budget_steps++;
        } else {
            stats.yielded_steps++;
        }
    }
    stats.step_us += took;
    if (took > stats.max_step_us) {
        stats.max_step_us = took;
    }
    exec_leave();
    return wait;
}

int64_t pmq_execution_step(void) { return pmq_execution_step_for(NULL); }

/* Steps for up to ms milliseconds, sleeping in epoll_wait as msquic allows.
 * With until_quiet, returns early once msquic has no timer left and nothing
 * is ready (no connection alive): returns 1 then, else 0. */
static int drive_locked(uint32_t ms, int until_quiet)
{
    uint64_t end = pmq_now_ms() + ms;
    int64_t wait = step_locked(0);
    for (;;) {
        uint64_t now = pmq_now_ms();
        if (stopped || now >= end) {
            return 0;
        }
        if (until_quiet && wait < 0) {
            /* Quiet only if nothing arrives: one short look for late completions. */
            struct epoll_event ev;
            if (epoll_wait(epfd, &ev, 1, 0) == 0) {
                return 1;
            }
            wait = 0;
        }
        uint64_t left = end - now;
        int timeout = (wait < 0 || (uint64_t)wait > left) ? (int)left : (int)wait;
        wait = step_locked(timeout);
    }
}

void pmq_execution_drive(uint32_t ms)
{
    if (in_forked_child()) {
        return;
    }
    exec_enter();
    (void)drive_locked(ms, 0);
    exec_leave();
}

/* ---- the driver thread (the blocking world) ----------------------------------
 * Without a running event loop nothing would step msquic: pymsquic.sync starts
 * this thread, which steps as msquic asks and sleeps in poll() on the epoll fd
 * (poll does not consume its events) without holding exec_lock. */

static pthread_t driver;
static int driver_running;
static atomic_int driver_quit;

static void *driver_main(void *arg)
{
    (void)arg;
    for (;;) {
        exec_enter();
        if (stopped || atomic_load(&driver_quit)) {
            exec_leave();
            break;
        }
        int64_t wait = step_locked(0);
        exec_leave();
        if (wait == 0) {
            continue;
        }
        struct pollfd p = {epfd, POLLIN, 0};
        (void)poll(&p, 1, (wait < 0 || wait > DRIVER_MAX_SLEEP_MS) ? DRIVER_MAX_SLEEP_MS : (int)wait);
    }
    return NULL;
}

int pmq_execution_start_driver(void)
{
    if (in_forked_child()) {
        return 0;
    }
    exec_enter();
    if (!driver_running && execution != NULL && !stopped) {
        driver_running = pthread_create(&driver, NULL, driver_main, NULL) == 0;
    }
    int running = driver_running;
    exec_leave();
    return running;
}

static void stop_driver(void)
{
    exec_enter();
    int running = driver_running;
    driver_running = 0;
    atomic_store(&driver_quit, 1);
    exec_leave();
    if (running) {
        pthread_join(driver, NULL); /* within DRIVER_MAX_SLEEP_MS and one step */
    }
}

int pmq_execution_park_registration(HQUIC registration)
{
    exec_enter();
    int ok = 1;
    if (parked_count == parked_cap) {
        size_t cap = parked_cap ? parked_cap * 2 : 8;
        HQUIC *grown = realloc(parked, cap * sizeof(*grown));
        if (grown == NULL) {
            ok = 0;
        } else {
            parked = grown;
            parked_cap = cap;
        }
    }
    if (ok) {
        parked[parked_count++] = registration;
    }
    exec_leave();
    return ok;
}

int pmq_execution_finish(uint32_t settle_ms)
{
    stop_driver();
    exec_enter();
    int quiet = 1;
    if (execution != NULL && !stopped) {
        /* Connections finish their shutdown, sockets their close completions. */
        quiet = drive_locked(settle_ms, 1);
        stopped = 1; /* RegistrationClose unlinks nothing: no poll after it */
    }
    for (size_t i = 0; i < parked_count; i++) {
        pmq_api->RegistrationClose(parked[i]);
    }
    free(parked);
    parked = NULL;
    parked_count = parked_cap = 0;
    if (real_api != NULL && pmq_api == &exec_api) {
        pmq_api = real_api; /* MsQuicClose frees the table it was given: msquic's own */
    }
    exec_leave();
    return quiet;
}

void pmq_execution_get_stats(pmq_execution_stats *out)
{
    exec_enter();
    *out = stats;
    exec_leave();
}

int pmq_execution_active(void) { return execution != NULL && !stopped && !in_forked_child(); }
