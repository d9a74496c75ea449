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
 */
#define _GNU_SOURCE
#define QUIC_API_ENABLE_PREVIEW_FEATURES 1
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "internal.h"

#define MAX_EVENTS 64

/* exec_lock: one stepper at a time (the loop, or the teardown). A leaf: msquic
 * callbacks run under it and take object locks, never this one again. */
static pthread_mutex_t exec_lock = PTHREAD_MUTEX_INITIALIZER;
static int epfd = -1;
static QUIC_EXECUTION *execution;
static int stopped;               /* no ExecutionPoll from now on */
static HQUIC *parked;             /* registrations whose RegistrationClose waits for the end */
static size_t parked_count, parked_cap;

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
            } else {
                close(fd);
            }
        }
    }
    pthread_mutex_unlock(&exec_lock);
    return status;
}

int pmq_execution_fd(void) { return epfd; }

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
    for (int i = 0; i < n; i++) {
        /* data.ptr is always a QUIC_SQE (msquic's sockets and eventfds). */
        QUIC_SQE *sqe = (QUIC_SQE *)evs[i].data.ptr;
        sqe->Completion(&evs[i]);
    }
    uint32_t wait = pmq_api->ExecutionPoll(execution);
    return wait == UINT32_MAX ? -1 : (int64_t)wait;
}

int64_t pmq_execution_step(void)
{
    pthread_mutex_lock(&exec_lock);
    int64_t wait = step_locked(0);
    pthread_mutex_unlock(&exec_lock);
    return wait;
}

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
    pthread_mutex_lock(&exec_lock);
    (void)drive_locked(ms, 0);
    pthread_mutex_unlock(&exec_lock);
}

int pmq_execution_park_registration(HQUIC registration)
{
    pthread_mutex_lock(&exec_lock);
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
    pthread_mutex_unlock(&exec_lock);
    return ok;
}

int pmq_execution_finish(uint32_t settle_ms)
{
    pthread_mutex_lock(&exec_lock);
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
    pthread_mutex_unlock(&exec_lock);
    return quiet;
}

int pmq_execution_active(void) { return execution != NULL && !stopped; }
