/*
 * quicperf: the native C server and client of the benchmark, on the same
 * libmsquic as pymsquic. They are the ceiling: the difference to pymsquic is
 * what the binding costs.
 *
 * Wire protocol (secnetperf's): on each bidirectional stream the client sends
 * an 8-byte big-endian length N, its upload bytes and FIN; the server answers
 * with N bytes and FIN.
 *
 *   quicperf server --port P --cert C --key K
 *   quicperf client --port P --workload download|upload|rps|latency|hps|fairness --duration S
 *   quicperf client --port P --workload hs-full|hs-resume|hs-0rtt --duration S [--parallel N]
 *     (N also from BENCH_HS_PARALLEL)
 *
 * fairness: one request at a time (latency's) beside a download on the same
 * connection. QUICPERF_SCHEDULING=round_robin in the server's environment sets
 * QUIC_PARAM_CONN_STREAM_SCHEDULING_SCHEME on accepted connections (msquic's
 * default is FIFO).
 *
 * hs-*: new connections one after another (--parallel N loops, default 1), each
 * one 32-byte request and 32-byte reply, timed from ConnectionOpen (the ticket and
 * request set-up included) to the first reply byte. hs-full: no ticket; hs-resume: the latest ticket from
 * RESUMPTION_TICKET_RECEIVED set as QUIC_PARAM_CONN_RESUMPTION_TICKET, request sent
 * once CONNECTED; hs-0rtt: the same ticket, request queued (QUIC_SEND_FLAG_ALLOW_0_RTT)
 * before ConnectionStart. The server allows resumption and
 * 0-RTT (QUIC_SERVER_RESUME_AND_ZERORTT) in every mode. A loop starts its next
 * connection once the whole reply is in; the close completes in the background.
 *
 * QUICPERF_EXECUTION=custom (server or client): msquic's custom execution (a
 * preview API): ExecutionCreate on quicperf's own epoll fd before RegistrationOpen,
 * then the main thread runs every msquic callback through ExecutionPoll and the
 * fds' completions. One execution, one thread: msquic creates no thread. The
 * default (unset or "threads") is msquic's own worker threads.
 *
 * The server prints "ready PORT"; the client prints one JSON line of results
 * ("threads": how many threads the client process had at the end).
 */
#define _GNU_SOURCE
#define QUIC_API_ENABLE_PREVIEW_FEATURES 1 /* ExecutionCreate and ExecutionPoll */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <msquic.h>

#define ALPN "perf"
#define CHUNK (64 * 1024)
#define MAX_LATENCIES (4 * 1024 * 1024)

static const QUIC_API_TABLE *api;
static HQUIC registration, configuration;
static uint8_t send_data[CHUNK];
static const QUIC_BUFFER alpn = {sizeof(ALPN) - 1, (uint8_t *)ALPN};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void die(const char *what, QUIC_STATUS status)
{
    fprintf(stderr, "quicperf: %s failed: 0x%x\n", what, status);
    exit(1);
}

/* ---- execution: msquic's threads, or custom execution on this thread ----------- */

static int custom_execution; /* QUICPERF_EXECUTION=custom */
static int epfd = -1;
static QUIC_EXECUTION *execution;

static void open_execution(void)
{
    const char *mode = getenv("QUICPERF_EXECUTION");
    if (mode == NULL || !*mode || !strcmp(mode, "threads")) {
        return;
    }
    if (strcmp(mode, "custom")) {
        fprintf(stderr, "quicperf: QUICPERF_EXECUTION must be threads or custom, not %s\n", mode);
        exit(2);
    }
    custom_execution = 1;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    QUIC_EXECUTION_CONFIG config = {0, &epfd};
    /* before the first RegistrationOpen (after it: INVALID_STATE) */
    QUIC_STATUS st = api->ExecutionCreate(QUIC_GLOBAL_EXECUTION_CONFIG_FLAG_NONE, 0, 1, &config, &execution);
    if (QUIC_FAILED(st)) {
        die("ExecutionCreate", st);
    }
}

/* One pass of the custom-execution loop: msquic's ready work, then a wait of at most
   cap_ms (-1: none) for its fds (sockets, eventfds, ours) and their completions. */
static void exec_step(int cap_ms)
{
    uint32_t wait = api->ExecutionPoll(execution);
    /* 0 means "poll again now": msquic does not signal its eventfd for that work */
    int timeout = wait == UINT32_MAX ? -1 : (int)wait;
    if (cap_ms >= 0 && (timeout < 0 || timeout > cap_ms)) {
        timeout = cap_ms;
    }
    struct epoll_event events[64];
    int n = epoll_wait(epfd, events, 64, timeout);
    if (n < 0 && errno != EINTR) {
        perror("quicperf: epoll_wait");
        exit(1);
    }
    for (int i = 0; i < n; i++) {
        ((QUIC_SQE *)events[i].data.ptr)->Completion(&events[i]);
    }
}

/* Until the deadline (monotonic us) or until done() says so: callbacks run meanwhile.
   With msquic's threads it only waits. Returns done()'s last answer. */
static int drive_until(int (*done)(void), uint64_t deadline)
{
    for (;;) {
        if (done != NULL && done()) {
            return 1;
        }
        uint64_t t = now_us();
        if (t >= deadline) {
            return 0;
        }
        uint64_t left = deadline - t; /* the deadline may be UINT64_MAX: no rounding up here */
        if (custom_execution) {
            exec_step(left >= 1000000 ? 1000 : (int)(left / 1000) + 1);
        } else {
            usleep((useconds_t)(left < 1000 ? left : 1000));
        }
    }
}

static void drive_for(uint64_t us) { drive_until(NULL, now_us() + us); }

static int count_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        n += e->d_name[0] != '.';
    }
    if (d != NULL) {
        closedir(d);
    }
    return n;
}

/* ---- sending N bytes (both sides) -------------------------------------------- */

typedef struct sender {
    uint64_t remaining;    /* bytes still to queue */
    uint64_t outstanding;  /* queued, not completed */
    uint64_t ideal;        /* msquic's ideal send buffer size */
    int fin_sent;
    int aborted;
} sender;

/* Queue data until msquic's ideal buffer is full; FIN with the last bytes. */
static void pump(HQUIC stream, sender *s)
{
    while (!s->fin_sent && !s->aborted && s->outstanding < s->ideal) {
        uint32_t len = s->remaining < CHUNK ? (uint32_t)s->remaining : CHUNK;
        int fin = s->remaining == len;
        QUIC_BUFFER *buf = malloc(sizeof(QUIC_BUFFER));
        buf->Length = len;
        buf->Buffer = send_data;
        s->remaining -= len;
        s->outstanding += len;
        if (fin) {
            s->fin_sent = 1;
        }
        if (QUIC_FAILED(api->StreamSend(stream, buf, 1, fin ? QUIC_SEND_FLAG_FIN : QUIC_SEND_FLAG_NONE, buf))) {
            free(buf);
            s->aborted = 1;
        }
    }
}

static void send_complete(HQUIC stream, sender *s, QUIC_STREAM_EVENT *event)
{
    QUIC_BUFFER *buf = event->SEND_COMPLETE.ClientContext;
    if (buf != NULL) {
        s->outstanding -= buf->Length;
        free(buf);
    }
    pump(stream, s);
}

/* ---- server ------------------------------------------------------------------- */

static atomic_int server_connections; /* accepted, not yet SHUTDOWN_COMPLETE */
static atomic_int listener_stopped;

typedef struct server_stream {
    uint8_t header[8];
    uint32_t header_len;
    sender out;
} server_stream;

static QUIC_STATUS QUIC_API server_stream_cb(HQUIC stream, void *ctx, QUIC_STREAM_EVENT *event)
{
    server_stream *s = ctx;
    switch (event->Type) {
    case QUIC_STREAM_EVENT_RECEIVE:
        for (uint32_t i = 0; i < event->RECEIVE.BufferCount && s->header_len < 8; i++) {
            const QUIC_BUFFER *b = &event->RECEIVE.Buffers[i];
            for (uint32_t j = 0; j < b->Length && s->header_len < 8; j++) {
                s->header[s->header_len++] = b->Buffer[j];
            }
        }
        break; /* the upload itself is consumed and dropped */
    case QUIC_STREAM_EVENT_PEER_SEND_SHUTDOWN: {
        uint64_t n = 0;
        for (int i = 0; i < 8; i++) {
            n = (n << 8) | s->header[i];
        }
        if (n == 0) {
            api->StreamShutdown(stream, QUIC_STREAM_SHUTDOWN_FLAG_GRACEFUL, 0);
        } else {
            s->out.remaining = n;
            pump(stream, &s->out);
        }
        break;
    }
    case QUIC_STREAM_EVENT_SEND_COMPLETE:
        send_complete(stream, &s->out, event);
        break;
    case QUIC_STREAM_EVENT_IDEAL_SEND_BUFFER_SIZE:
        s->out.ideal = event->IDEAL_SEND_BUFFER_SIZE.ByteCount;
        pump(stream, &s->out);
        break;
    case QUIC_STREAM_EVENT_PEER_RECEIVE_ABORTED:
        s->out.aborted = 1;
        api->StreamShutdown(stream, QUIC_STREAM_SHUTDOWN_FLAG_ABORT, 0);
        break;
    case QUIC_STREAM_EVENT_SHUTDOWN_COMPLETE:
        if (!event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
            api->StreamClose(stream);
        }
        free(s);
        break;
    default:
        break;
    }
    return QUIC_STATUS_SUCCESS;
}

static QUIC_STATUS QUIC_API server_conn_cb(HQUIC conn, void *ctx, QUIC_CONNECTION_EVENT *event)
{
    switch (event->Type) {
    case QUIC_CONNECTION_EVENT_PEER_STREAM_STARTED: {
        server_stream *s = calloc(1, sizeof(*s));
        s->out.ideal = 128 * 1024;
        api->SetCallbackHandler(event->PEER_STREAM_STARTED.Stream, (void *)server_stream_cb, s);
        break;
    }
    case QUIC_CONNECTION_EVENT_CONNECTED:
        /* msquic sends no ticket by itself: one per connection, after which the TLS state is freed */
        api->ConnectionSendResumptionTicket(conn, QUIC_SEND_RESUMPTION_FLAG_FINAL, 0, NULL);
        break;
    case QUIC_CONNECTION_EVENT_SHUTDOWN_COMPLETE:
        if (!event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
            api->ConnectionClose(conn);
        }
        atomic_fetch_sub(&server_connections, 1);
        break;
    default:
        break;
    }
    return QUIC_STATUS_SUCCESS;
}

static QUIC_STATUS QUIC_API listener_cb(HQUIC listener, void *ctx, QUIC_LISTENER_EVENT *event)
{
    if (event->Type == QUIC_LISTENER_EVENT_NEW_CONNECTION) {
        const char *scheme = getenv("QUICPERF_SCHEDULING");
        if (scheme != NULL && !strcmp(scheme, "round_robin")) {
            QUIC_STREAM_SCHEDULING_SCHEME rr = QUIC_STREAM_SCHEDULING_SCHEME_ROUND_ROBIN;
            api->SetParam(event->NEW_CONNECTION.Connection, QUIC_PARAM_CONN_STREAM_SCHEDULING_SCHEME, sizeof(rr), &rr);
        }
        api->SetCallbackHandler(event->NEW_CONNECTION.Connection, (void *)server_conn_cb, NULL);
        atomic_fetch_add(&server_connections, 1);
        return api->ConnectionSetConfiguration(event->NEW_CONNECTION.Connection, configuration);
    }
    if (event->Type == QUIC_LISTENER_EVENT_STOP_COMPLETE) {
        atomic_store(&listener_stopped, 1);
    }
    return QUIC_STATUS_SUCCESS;
}

/* custom execution: stdin in the epoll set, so the loop notices when the harness closes it */
static int stdin_closed;
static QUIC_SQE stdin_sqe;

static void stdin_completion(QUIC_CQE *cqe)
{
    char buf[256];
    ssize_t n = read(stdin_sqe.fd, buf, sizeof(buf));
    (void)cqe;
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        stdin_closed = 1;
        epoll_ctl(epfd, EPOLL_CTL_DEL, stdin_sqe.fd, NULL);
    }
}

static int is_stdin_closed(void) { return stdin_closed; }
static int is_listener_stopped(void) { return atomic_load(&listener_stopped); }
static int no_server_connections(void) { return atomic_load(&server_connections) <= 0; }

static void serve_until_stdin_closes(void)
{
    if (!custom_execution) {
        char line[64];
        while (fgets(line, sizeof(line), stdin) != NULL) {
            /* msquic's threads serve meanwhile */
        }
        return;
    }
    stdin_sqe.fd = STDIN_FILENO;
    stdin_sqe.Completion = stdin_completion;
    struct epoll_event e = {.events = EPOLLIN, .data = {.ptr = &stdin_sqe}};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, STDIN_FILENO, &e) != 0) {
        perror("quicperf: stdin must be a pipe or a terminal with QUICPERF_EXECUTION=custom");
        exit(2);
    }
    drive_until(is_stdin_closed, UINT64_MAX);
}

static void run_server(uint16_t port, const char *cert, const char *key)
{
    QUIC_SETTINGS settings = {0};
    settings.IsSet.PeerBidiStreamCount = 1;
    settings.PeerBidiStreamCount = 1000;
    settings.IsSet.IdleTimeoutMs = 1;
    settings.IdleTimeoutMs = 30000;
    settings.IsSet.ServerResumptionLevel = 1; /* tickets and 0-RTT for the hs-* workloads */
    settings.ServerResumptionLevel = QUIC_SERVER_RESUME_AND_ZERORTT;
    QUIC_CERTIFICATE_FILE files = {key, cert};
    QUIC_CREDENTIAL_CONFIG cred = {0};
    cred.Type = QUIC_CREDENTIAL_TYPE_CERTIFICATE_FILE;
    cred.CertificateFile = &files;
    QUIC_STATUS st = api->ConfigurationOpen(registration, &alpn, 1, &settings, sizeof(settings), NULL, &configuration);
    if (QUIC_FAILED(st) || QUIC_FAILED(st = api->ConfigurationLoadCredential(configuration, &cred))) {
        die("server configuration", st);
    }
    HQUIC listener;
    if (QUIC_FAILED(st = api->ListenerOpen(registration, listener_cb, NULL, &listener))) {
        die("ListenerOpen", st);
    }
    QUIC_ADDR addr = {0};
    addr.Ipv4.sin_family = AF_INET;
    addr.Ipv4.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &addr.Ipv4.sin_addr);
    if (QUIC_FAILED(st = api->ListenerStart(listener, &alpn, 1, &addr))) {
        die("ListenerStart", st);
    }
    uint32_t size = sizeof(addr);
    api->GetParam(listener, QUIC_PARAM_LISTENER_LOCAL_ADDRESS, &size, &addr);
    printf("ready %u\n", ntohs(addr.Ipv4.sin_port));
    fflush(stdout);
    serve_until_stdin_closes();
    /* Teardown, in the order custom execution needs (each blocking call made on the loop's
       thread, the loop run until what it waits for is done): the listener stopped, then the
       connections (clients leave silently: without this they would idle out after 30 s while
       RegistrationClose waits for them), then the configuration. */
    api->ListenerStop(listener);
    drive_until(is_listener_stopped, now_us() + 2000000);
    api->ListenerClose(listener);
    api->RegistrationShutdown(registration, QUIC_CONNECTION_SHUTDOWN_FLAG_SILENT, 0);
    drive_until(no_server_connections, now_us() + 3000000);
    api->ConfigurationClose(configuration);
    if (custom_execution) {
        /* the sockets' shutdown completions: MsQuicClose hangs without them; and no
           ExecutionPoll after RegistrationClose (it would read freed memory) */
        drive_for(100000);
    }
}

/* ---- client ------------------------------------------------------------------- */

static uint16_t server_port;
static atomic_int stopping;
static atomic_uint_fast64_t bytes_done;
static atomic_uint_fast64_t requests_done;
static uint64_t *latencies;
static atomic_uint_fast64_t latency_count;
static uint64_t upload_size, download_size;
static sem_t slots;
static uint64_t finished_at;

/* The next slot (a request or connection finished) before the deadline: 1, else 0. With
   custom execution the callbacks that post it run here, inside exec_step. */
static int slot_done(void) { return sem_trywait(&slots) == 0; }

static int wait_slot(uint64_t deadline)
{
    if (custom_execution) {
        return drive_until(slot_done, deadline);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 10 * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return sem_timedwait(&slots, &ts) == 0;
}
static _Atomic uint64_t request_started; /* of the request in flight (fairness: one at a time) */

typedef struct client_stream {
    uint64_t started;
    uint8_t request[8 + 4096];
    QUIC_BUFFER request_buf;
    sender out;       /* for upload */
    int upload_mode;
} client_stream;

static QUIC_STATUS QUIC_API client_stream_cb(HQUIC stream, void *ctx, QUIC_STREAM_EVENT *event)
{
    client_stream *s = ctx;
    switch (event->Type) {
    case QUIC_STREAM_EVENT_RECEIVE:
        atomic_fetch_add(&bytes_done, event->RECEIVE.TotalBufferLength);
        break;
    case QUIC_STREAM_EVENT_SEND_COMPLETE:
        if (s->upload_mode) {
            if (event->SEND_COMPLETE.ClientContext != &s->request_buf) {
                QUIC_BUFFER *buf = event->SEND_COMPLETE.ClientContext;
                atomic_fetch_add(&bytes_done, buf->Length);
                s->out.outstanding -= buf->Length;
                free(buf);
            }
            if (atomic_load(&stopping) && !s->out.fin_sent) {
                s->out.fin_sent = 1;
                api->StreamShutdown(stream, QUIC_STREAM_SHUTDOWN_FLAG_GRACEFUL, 0);
            } else {
                pump(stream, &s->out);
            }
        }
        break;
    case QUIC_STREAM_EVENT_IDEAL_SEND_BUFFER_SIZE:
        if (s->upload_mode) {
            s->out.ideal = event->IDEAL_SEND_BUFFER_SIZE.ByteCount;
            pump(stream, &s->out);
        }
        break;
    case QUIC_STREAM_EVENT_SHUTDOWN_COMPLETE: {
        int again = 0;
        if (s->upload_mode) {
            finished_at = now_us();
        } else if (!event->SHUTDOWN_COMPLETE.ConnectionShutdown) {
            uint64_t idx = atomic_fetch_add(&latency_count, 1);
            if (idx < MAX_LATENCIES) {
                latencies[idx] = now_us() - s->started;
            }
            atomic_fetch_add(&requests_done, 1);
            atomic_store(&request_started, 0);
            again = !atomic_load(&stopping);
        }
        if (!event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
            api->StreamClose(stream);
        }
        free(s);
        if (again) {
            sem_post(&slots); /* the main thread opens the next request */
        }
        break;
    }
    default:
        break;
    }
    return QUIC_STATUS_SUCCESS;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

static void open_request_of(HQUIC conn, uint64_t download)
{
    client_stream *s = calloc(1, sizeof(*s));
    HQUIC stream;
    if (QUIC_FAILED(api->StreamOpen(conn, QUIC_STREAM_OPEN_FLAG_NONE, client_stream_cb, s, &stream))) {
        free(s);
        return;
    }
    s->started = now_us();
    if (download == download_size) {
        atomic_store(&request_started, s->started);
    }
    put_be64(s->request, download);
    memset(s->request + 8, 'u', upload_size);
    s->request_buf.Buffer = s->request;
    s->request_buf.Length = (uint32_t)(8 + upload_size);
    if (QUIC_FAILED(api->StreamSend(stream, &s->request_buf, 1, QUIC_SEND_FLAG_START | QUIC_SEND_FLAG_FIN,
                                    &s->request_buf))) {
        api->StreamClose(stream);
        free(s);
    }
}

static void open_request(HQUIC conn) { open_request_of(conn, download_size); }

static void open_upload(HQUIC conn)
{
    client_stream *s = calloc(1, sizeof(*s));
    s->upload_mode = 1;
    s->out.ideal = 128 * 1024;
    s->out.remaining = UINT64_MAX;
    HQUIC stream;
    if (QUIC_FAILED(api->StreamOpen(conn, QUIC_STREAM_OPEN_FLAG_NONE, client_stream_cb, s, &stream))) {
        die("StreamOpen", 0);
    }
    put_be64(s->request, 0);
    s->request_buf.Buffer = s->request;
    s->request_buf.Length = 8;
    api->StreamSend(stream, &s->request_buf, 1, QUIC_SEND_FLAG_START, &s->request_buf);
    pump(stream, &s->out);
}

static atomic_uint_fast64_t handshakes;

static QUIC_STATUS QUIC_API client_conn_cb(HQUIC conn, void *ctx, QUIC_CONNECTION_EVENT *event)
{
    int hps = ctx != NULL;
    switch (event->Type) {
    case QUIC_CONNECTION_EVENT_CONNECTED:
        if (hps) {
            if (!atomic_load(&stopping)) {
                atomic_fetch_add(&handshakes, 1);
            }
            api->ConnectionShutdown(conn, QUIC_CONNECTION_SHUTDOWN_FLAG_NONE, 0);
        }
        break;
    case QUIC_CONNECTION_EVENT_SHUTDOWN_COMPLETE:
        if (!event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
            api->ConnectionClose(conn);
        }
        if (hps) {
            sem_post(&slots);
        }
        break;
    default:
        break;
    }
    return QUIC_STATUS_SUCCESS;
}

static HQUIC start_connection(int hps)
{
    HQUIC conn;
    QUIC_STATUS st = api->ConnectionOpen(registration, client_conn_cb, hps ? (void *)1 : NULL, &conn);
    if (QUIC_FAILED(st)) {
        die("ConnectionOpen", st);
    }
    if (QUIC_FAILED(st = api->ConnectionStart(conn, configuration, QUIC_ADDRESS_FAMILY_INET, "127.0.0.1", server_port))) {
        die("ConnectionStart", st);
    }
    return conn;
}


/* ---- hs-*: one request per new connection ------------------------------------- */

enum { HS_FULL, HS_RESUME, HS_0RTT };
#define HS_REQUEST_LEN 32
#define HS_REPLY_LEN 32

static int hs_mode;
static pthread_mutex_t ticket_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *ticket;      /* the latest ticket received (any connection) */
static uint32_t ticket_len;
static atomic_uint_fast64_t hs_resumed, hs_early;

typedef struct hs_conn {
    HQUIC conn;
    uint64_t started;
    int answered;            /* the reply's first byte arrived */
    int stream_done;         /* the reply ended: the next connection was started */
    uint8_t request[HS_REQUEST_LEN];
    QUIC_BUFFER request_buf;
} hs_conn;

static QUIC_STATUS QUIC_API hs_stream_cb(HQUIC stream, void *ctx, QUIC_STREAM_EVENT *event)
{
    hs_conn *c = ctx;
    switch (event->Type) {
    case QUIC_STREAM_EVENT_RECEIVE:
        if (!c->answered && event->RECEIVE.TotalBufferLength > 0) {
            c->answered = 1;
            uint64_t idx = atomic_fetch_add(&latency_count, 1);
            if (idx < MAX_LATENCIES) {
                latencies[idx] = now_us() - c->started;
            }
        }
        break;
    case QUIC_STREAM_EVENT_PEER_SEND_SHUTDOWN:
        /* the whole reply is in: the next connection starts (as the Python clients do) while
           this one finishes in the background */
        if (c->answered && !atomic_load(&stopping)) {
            atomic_fetch_add(&handshakes, 1);
        }
        c->stream_done = 1;
        sem_post(&slots);
        break;
    case QUIC_STREAM_EVENT_SHUTDOWN_COMPLETE: {
        uint64_t early = 0;
        uint32_t size = sizeof(early);
        /* bytes the server acknowledged under the 0-RTT key: 0 if it refused them */
        if (QUIC_SUCCEEDED(api->GetParam(stream, QUIC_PARAM_STREAM_0RTT_LENGTH, &size, &early)) && early > 0) {
            atomic_fetch_add(&hs_early, 1);
        }
        if (!event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
            api->StreamClose(stream);
        }
        api->ConnectionShutdown(c->conn, QUIC_CONNECTION_SHUTDOWN_FLAG_NONE, 0); /* one request each */
        break;
    }
    default:
        break;
    }
    return QUIC_STATUS_SUCCESS;
}

static void hs_send_request(HQUIC conn, hs_conn *c, QUIC_SEND_FLAGS extra)
{
    HQUIC stream;
    if (QUIC_FAILED(api->StreamOpen(conn, QUIC_STREAM_OPEN_FLAG_NONE, hs_stream_cb, c, &stream))) {
        api->ConnectionShutdown(conn, QUIC_CONNECTION_SHUTDOWN_FLAG_NONE, 0);
        return;
    }
    put_be64(c->request, HS_REPLY_LEN);
    memset(c->request + 8, 'u', HS_REQUEST_LEN - 8);
    c->request_buf.Buffer = c->request;
    c->request_buf.Length = HS_REQUEST_LEN;
    if (QUIC_FAILED(api->StreamSend(stream, &c->request_buf, 1, QUIC_SEND_FLAG_START | QUIC_SEND_FLAG_FIN | extra,
                                    NULL))) {
        api->StreamClose(stream);
        api->ConnectionShutdown(conn, QUIC_CONNECTION_SHUTDOWN_FLAG_NONE, 0);
    }
}

static QUIC_STATUS QUIC_API hs_conn_cb(HQUIC conn, void *ctx, QUIC_CONNECTION_EVENT *event)
{
    hs_conn *c = ctx;
    switch (event->Type) {
    case QUIC_CONNECTION_EVENT_CONNECTED:
        if (event->CONNECTED.SessionResumed) {
            atomic_fetch_add(&hs_resumed, 1);
        }
        if (hs_mode != HS_0RTT) {
            hs_send_request(conn, c, QUIC_SEND_FLAG_NONE);
        }
        break;
    case QUIC_CONNECTION_EVENT_RESUMPTION_TICKET_RECEIVED: {
        uint32_t len = event->RESUMPTION_TICKET_RECEIVED.ResumptionTicketLength;
        uint8_t *copy = malloc(len);
        memcpy(copy, event->RESUMPTION_TICKET_RECEIVED.ResumptionTicket, len);
        pthread_mutex_lock(&ticket_lock);
        free(ticket);
        ticket = copy;
        ticket_len = len;
        pthread_mutex_unlock(&ticket_lock);
        break;
    }
    case QUIC_CONNECTION_EVENT_PEER_STREAM_STARTED:
        api->StreamClose(event->PEER_STREAM_STARTED.Stream); /* none expected */
        break;
    case QUIC_CONNECTION_EVENT_SHUTDOWN_COMPLETE:
        if (!c->stream_done) {
            sem_post(&slots); /* failed before its stream ended: the loop goes on */
        }
        if (!event->SHUTDOWN_COMPLETE.AppCloseInProgress) {
            api->ConnectionClose(conn);
        }
        free(c);
        break;
    default:
        break;
    }
    return QUIC_STATUS_SUCCESS;
}

static int have_ticket(void)
{
    pthread_mutex_lock(&ticket_lock);
    int have = ticket != NULL;
    pthread_mutex_unlock(&ticket_lock);
    return have;
}

static void hs_start(void)
{
    hs_conn *c = calloc(1, sizeof(*c));
    HQUIC conn;
    QUIC_STATUS st = api->ConnectionOpen(registration, hs_conn_cb, c, &conn);
    if (QUIC_FAILED(st)) {
        die("ConnectionOpen", st);
    }
    c->conn = conn;
    c->started = now_us();
    if (hs_mode != HS_FULL) {
        /* a copy: SetParam waits for a worker, which may be waiting for ticket_lock */
        uint8_t *mine = NULL;
        uint32_t len = 0;
        pthread_mutex_lock(&ticket_lock);
        if (ticket != NULL) {
            mine = malloc(ticket_len);
            memcpy(mine, ticket, ticket_len);
            len = ticket_len;
        }
        pthread_mutex_unlock(&ticket_lock);
        if (mine != NULL && QUIC_FAILED(st = api->SetParam(conn, QUIC_PARAM_CONN_RESUMPTION_TICKET, len, mine))) {
            die("SetParam(RESUMPTION_TICKET)", st);
        }
        free(mine);
    }
    if (hs_mode == HS_0RTT) {
        /* queued before the start, the request is in the first flight every time; queued just
           after it, msquic often sent the Initial first and the request waited for 1-RTT keys */
        hs_send_request(conn, c, QUIC_SEND_FLAG_ALLOW_0_RTT);
    }
    if (QUIC_FAILED(st = api->ConnectionStart(conn, configuration, QUIC_ADDRESS_FAMILY_INET, "127.0.0.1", server_port))) {
        die("ConnectionStart", st);
    }
}

static int upload_finished(void) { return finished_at != 0; }

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void run_client(const char *workload, double duration, int parallel)
{
    QUIC_SETTINGS settings = {0};
    settings.IsSet.IdleTimeoutMs = 1;
    settings.IdleTimeoutMs = 30000;
    QUIC_CREDENTIAL_CONFIG cred = {0};
    cred.Type = QUIC_CREDENTIAL_TYPE_NONE;
    cred.Flags = QUIC_CREDENTIAL_FLAG_CLIENT | QUIC_CREDENTIAL_FLAG_NO_CERTIFICATE_VALIDATION;
    QUIC_STATUS st = api->ConfigurationOpen(registration, &alpn, 1, &settings, sizeof(settings), NULL, &configuration);
    if (QUIC_FAILED(st) || QUIC_FAILED(st = api->ConfigurationLoadCredential(configuration, &cred))) {
        die("client configuration", st);
    }
    latencies = calloc(MAX_LATENCIES, sizeof(uint64_t));
    int is_hps = strcmp(workload, "hps") == 0;
    int is_hs = strncmp(workload, "hs-", 3) == 0;
    hs_mode = !strcmp(workload, "hs-0rtt") ? HS_0RTT : !strcmp(workload, "hs-resume") ? HS_RESUME : HS_FULL;
    int is_fair = strcmp(workload, "fairness") == 0;
    int is_rps = strcmp(workload, "rps") == 0 || strcmp(workload, "latency") == 0 || is_fair;
    if (strcmp(workload, "latency") == 0 || is_fair) {
        parallel = 1;
    }
    if (is_rps) {
        upload_size = 512;
        download_size = 4000;
    } else if (strcmp(workload, "download") == 0) {
        download_size = UINT64_MAX >> 2;
    }
    sem_init(&slots, 0, 0);
    double cpu0 = cpu_seconds();
    HQUIC conn = NULL;
    if (is_hs) {
        hs_start(); /* untimed, in every mode: the first ticket, warm caches */
        while (!wait_slot(UINT64_MAX)) {
        }
        if (hs_mode != HS_FULL) {
            drive_until(have_ticket, now_us() + 5000000); /* the ticket may follow the reply */
        }
        atomic_store(&latency_count, 0);
        atomic_store(&handshakes, 0);
        atomic_store(&hs_resumed, 0);
        atomic_store(&hs_early, 0);
    } else if (!is_hps) {
        conn = start_connection(0);
        drive_for(100000); /* let the handshake finish before the clock starts */
    }
    if (is_fair) {
        open_request_of(conn, UINT64_MAX >> 2); /* the bulk download beside the requests */
        drive_for(200000);                     /* until it saturates the connection */
    }
    uint64_t start = now_us();
    uint64_t deadline = start + (uint64_t)(duration * 1e6);
    if (is_hps) {
        for (int i = 0; i < parallel; i++) {
            start_connection(1);
        }
    } else if (is_hs) {
        for (int i = 0; i < parallel; i++) {
            hs_start();
        }
    } else if (is_rps) {
        for (int i = 0; i < parallel; i++) {
            open_request(conn);
        }
    } else if (strcmp(workload, "upload") == 0) {
        open_upload(conn);
    } else {
        open_request(conn);
    }
    while (now_us() < deadline) {
        if (wait_slot(deadline) && now_us() < deadline) {
            if (is_hps) {
                start_connection(1);
            } else if (is_hs) {
                hs_start();
            } else if (is_rps) {
                open_request(conn);
            }
        }
    }
    uint64_t end = now_us();
    uint64_t bytes = atomic_load(&bytes_done);
    uint64_t requests = atomic_load(&requests_done);
    uint64_t hs = atomic_load(&handshakes);
    uint64_t resumed = atomic_load(&hs_resumed), early = atomic_load(&hs_early);
    atomic_store(&stopping, 1);
    uint64_t waiting_since = atomic_load(&request_started);
    if (is_fair && waiting_since != 0) {
        /* still waiting at the deadline: counts with the time it waited so far */
        uint64_t idx = atomic_fetch_add(&latency_count, 1);
        if (idx < MAX_LATENCIES) {
            latencies[idx] = end - waiting_since;
        }
    }
    if (strcmp(workload, "upload") == 0) {
        drive_until(upload_finished, now_us() + 5000000); /* the server's FIN confirms it read everything */
        end = finished_at ? finished_at : now_us();
        bytes = atomic_load(&bytes_done);
    }
    double elapsed = (end - start) / 1e6;
    uint64_t n = atomic_load(&latency_count);
    if (n > MAX_LATENCIES) {
        n = MAX_LATENCIES;
    }
    qsort(latencies, n, sizeof(uint64_t), cmp_u64);
    double cpu = cpu_seconds() - cpu0;
    printf("{\"elapsed\": %.6f, \"bytes\": %" PRIu64 ", \"requests\": %" PRIu64 ", \"handshakes\": %" PRIu64
           ", \"p50_us\": %" PRIu64 ", \"p99_us\": %" PRIu64 ", \"cpu_s\": %.3f, \"resumed\": %" PRIu64
           ", \"early_data\": %" PRIu64 ", \"threads\": %d}\n",
           elapsed, bytes, requests, hs, n ? latencies[n / 2] : 0, n ? latencies[(n * 99) / 100] : 0, cpu, resumed,
           early, count_threads());
    fflush(stdout);
    if (conn != NULL) {
        api->ConnectionShutdown(conn, QUIC_CONNECTION_SHUTDOWN_FLAG_SILENT, 0);
    }
    drive_for(200000);
    _exit(0); /* connections may still be draining; the process is done measuring */
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    const char *cert = NULL, *key = NULL, *workload = "download";
    double duration = 10;
    int parallel = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) server_port = (uint16_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--cert")) cert = argv[i + 1];
        else if (!strcmp(argv[i], "--key")) key = argv[i + 1];
        else if (!strcmp(argv[i], "--workload")) workload = argv[i + 1];
        else if (!strcmp(argv[i], "--duration")) duration = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--parallel")) parallel = atoi(argv[i + 1]);
    }
    memset(send_data, 'd', sizeof(send_data));
    QUIC_STATUS st = MsQuicOpenVersion(QUIC_API_VERSION_2, (const void **)&api);
    if (QUIC_FAILED(st)) {
        die("MsQuicOpenVersion", st);
    }
    open_execution();
    QUIC_REGISTRATION_CONFIG reg = {"quicperf", QUIC_EXECUTION_PROFILE_LOW_LATENCY};
    if (QUIC_FAILED(st = api->RegistrationOpen(&reg, &registration))) {
        die("RegistrationOpen", st);
    }
    if (!strcmp(mode, "server") && cert && key) {
        run_server(server_port, cert, key);
    } else if (!strcmp(mode, "client") && server_port) {
        const char *hs_parallel = getenv("BENCH_HS_PARALLEL"); /* the harness's --hs-parallel */
        if (parallel <= 0 && !strncmp(workload, "hs-", 3) && hs_parallel != NULL) {
            parallel = atoi(hs_parallel);
        }
        if (parallel <= 0) {
            parallel = !strcmp(workload, "hps") ? 16 : !strncmp(workload, "hs-", 3) ? 1 : 100;
        }
        run_client(workload, duration, parallel);
    } else {
        fprintf(stderr, "usage: quicperf server --port P --cert C --key K\n"
                        "       quicperf client --port P --workload W --duration S [--parallel N]\n"
                        "environment: QUICPERF_EXECUTION=threads|custom (msquic's worker threads, the default,\n"
                        "or msquic's custom execution on quicperf's main thread)\n");
        return 2;
    }
    api->RegistrationClose(registration);
    MsQuicClose(api); /* never ExecutionDelete: it hangs (MsQuicClose frees the execution) */
    if (epfd >= 0) {
        close(epfd);
    }
    return 0;
}
