/*
 * pymsquic native layer: trampolines that receive msquic's callbacks on its
 * worker threads, do there what msquic requires inside the callback, and keep
 * thread-safe per-object state that Python reads.
 *
 * Objects (listener, connection) share one shape, pmq_obj: a mutex, a condition
 * variable and a change counter `seq` for blocking waits with the GIL released,
 * and an optional pmq_waker, an eventfd shared by all objects of one asyncio
 * loop, that lists which objects changed since the loop last looked.
 *
 * Handle ownership: the binding closes connection handles itself, inside their
 * SHUTDOWN_COMPLETE callback, so Python never races msquic on a freed handle.
 * Listener handles are closed by pmq_listener_close from a Python thread.
 *
 * The section between the CFFI markers is also the cffi cdef (build_msquic.py):
 * it must stay in the C subset cffi parses (no macros, no includes).
 */
#ifndef PYMSQUIC_H
#define PYMSQUIC_H

#include <stddef.h>
#include <stdint.h>
#include <msquic.h>

/* CFFI-BEGIN */

/* ---- flat records shared with Python ---------------------------------- */

/* A socket address without sockaddr's unions. family 0 means "none". */
typedef struct pmq_addr {
    uint16_t family;   /* AF_INET or AF_INET6 */
    uint16_t port;     /* host byte order */
    uint32_t scope_id;
    uint8_t ip[16];    /* the first 4 bytes for AF_INET */
} pmq_addr;

/* Settings copied into QUIC_SETTINGS; only fields whose PMQ_SET_* bit is in
 * `set` are applied, the rest keep msquic's defaults. Read back
 * (pmq_configuration_get_settings), `set` says which fields msquic has as set. */
typedef struct pmq_settings {
    uint64_t set;
    uint64_t idle_timeout_ms;
    uint64_t handshake_idle_timeout_ms;
    uint32_t keep_alive_interval_ms;
    uint32_t disconnect_timeout_ms;
    uint32_t stream_recv_window_default;
    uint32_t conn_flow_control_window;
    uint32_t max_ack_delay_ms;
    uint32_t initial_rtt_ms;
    uint16_t peer_bidi_stream_count;
    uint16_t peer_unidi_stream_count;
    uint16_t congestion_control;   /* 0 cubic, 1 bbr */
    uint8_t datagram_receive_enabled;
    uint8_t send_buffering_enabled;
    uint8_t pacing_enabled;
    uint8_t migration_enabled;
    uint8_t server_resumption_level;
    /* Transport settings (native/transport.c): applied where their PMQ_TSET_*
     * bit is in transport_set, reported there when msquic has them as set. */
    uint64_t transport_set;
    uint64_t max_bytes_per_key;
    uint64_t mtu_discovery_search_complete_timeout_us;
    uint32_t send_idle_timeout_ms;
    uint32_t initial_window_packets;
    uint32_t dest_cid_update_idle_timeout_ms;
    uint32_t stream_recv_buffer_default;
    uint32_t stream_recv_window_bidi_local_default;
    uint32_t stream_recv_window_bidi_remote_default;
    uint32_t stream_recv_window_unidi_default;
    uint32_t tls_client_max_send_buffer;
    uint16_t minimum_mtu;
    uint16_t maximum_mtu;
    uint8_t mtu_discovery_missing_probe_count;
    uint8_t ecn_enabled;
    uint8_t grease_quic_bit_enabled;
} pmq_settings;

enum {
    PMQ_SET_IDLE_TIMEOUT = 1,
    PMQ_SET_HANDSHAKE_IDLE_TIMEOUT = 2,
    PMQ_SET_KEEP_ALIVE_INTERVAL = 4,
    PMQ_SET_DISCONNECT_TIMEOUT = 8,
    PMQ_SET_STREAM_RECV_WINDOW = 16,
    PMQ_SET_CONN_FLOW_CONTROL_WINDOW = 32,
    PMQ_SET_MAX_ACK_DELAY = 64,
    PMQ_SET_INITIAL_RTT = 128,
    PMQ_SET_PEER_BIDI_STREAM_COUNT = 256,
    PMQ_SET_PEER_UNIDI_STREAM_COUNT = 512,
    PMQ_SET_CONGESTION_CONTROL = 1024,
    PMQ_SET_DATAGRAM_RECEIVE_ENABLED = 2048,
    PMQ_SET_SEND_BUFFERING_ENABLED = 4096,
    PMQ_SET_PACING_ENABLED = 8192,
    PMQ_SET_MIGRATION_ENABLED = 16384,
    PMQ_SET_SERVER_RESUMPTION_LEVEL = 32768
};

/* A credential in flat form; pmq_configuration_open builds QUIC_CREDENTIAL_CONFIG. */
typedef struct pmq_credential {
    uint32_t kind;        /* PMQ_CRED_* */
    uint32_t flags;       /* QUIC_CREDENTIAL_FLAG_* */
    const char *cert_file;
    const char *key_file;
    const char *password; /* key file or PKCS#12 password, or NULL */
    const uint8_t *pkcs12;
    uint32_t pkcs12_len;
    const char *ca_file;  /* with QUIC_CREDENTIAL_FLAG_SET_CA_CERTIFICATE_FILE */
} pmq_credential;

enum { PMQ_CRED_NONE = 0, PMQ_CRED_FILES = 1, PMQ_CRED_PKCS12 = 2 };

/* What Python may know of a connection; copied in the callbacks. */
typedef struct pmq_conn_info {
    uint32_t flags;            /* PMQ_CONN_* */
    QUIC_STATUS transport_status;  /* with PMQ_CONN_SHUTDOWN_BY_TRANSPORT */
    uint64_t error_code;       /* wire error code: the peer's or the transport's */
    uint64_t local_error_code; /* with PMQ_CONN_SHUTDOWN_BY_APP */
    pmq_addr local;
    pmq_addr remote;
    uint16_t server_name_len;
    char server_name[256];
    uint16_t client_alpn_len;  /* TLS wire format: length-prefixed names */
    uint8_t client_alpn[512];
    uint8_t alpn_len;          /* negotiated */
    uint8_t alpn[255];
    uint8_t datagram_send_enabled;  /* the peer accepts datagrams */
    uint16_t max_datagram_size;     /* largest datagram sendable now */
    uint64_t datagrams_dropped;     /* received but dropped: receive queue full */
    uint32_t datagrams_queued;
    uint32_t datagrams_in_flight;   /* sent or queued, not yet acknowledged or lost */
    uint32_t streams_queued;        /* peer streams waiting for accept_stream */
    uint32_t streams_sending;       /* streams written to whose send side is not finished yet */
    uint32_t peer_certificate_len;  /* DER bytes, with a credential that asks for it */
    uint64_t peer_address_changes;  /* PEER_ADDRESS_CHANGED events (NAT rebinding, migration) */
} pmq_conn_info;

enum {
    PMQ_CONN_CONNECTED = 1,
    PMQ_CONN_SHUTDOWN_BY_TRANSPORT = 2,
    PMQ_CONN_SHUTDOWN_BY_PEER = 4,
    PMQ_CONN_SHUTDOWN_BY_APP = 8,
    PMQ_CONN_SHUTDOWN_COMPLETE = 16,
    PMQ_CONN_SESSION_RESUMED = 32,
    PMQ_CONN_PEER_ACKED_SHUTDOWN = 64,
    PMQ_CONN_CLIENT_ALPN_TRUNCATED = 128,
    PMQ_CONN_REGISTRATION_CLOSED = 256, /* with SHUTDOWN_BY_APP: its registration was closed here */
    PMQ_CONN_ACCEPTED_EARLY = 512       /* server: handed to accept before its handshake completed (0-RTT) */
};

/* pmq_conn_send_datagram: the send queue is full (a pymsquic status, not msquic's). */
enum { PMQ_STATUS_DATAGRAM_QUEUE_FULL = 0x70000001 };

/* A stream's state, copied out under its lock. */
typedef struct pmq_stream_state {
    uint64_t id;                /* with PMQ_STREAM_ID_KNOWN */
    uint32_t flags;             /* PMQ_STREAM_* */
    QUIC_STATUS start_status;   /* with PMQ_STREAM_START_FAILED */
    uint64_t reset_code;        /* the peer's RESET_STREAM code */
    uint64_t stop_sending_code; /* the peer's STOP_SENDING code */
    uint64_t readable;          /* bytes that read() can return now */
    uint64_t send_inflight;     /* bytes written that msquic has not completed */
    uint64_t send_limit;        /* drain() waits while send_inflight exceeds it */
    uint64_t bytes_read;
    uint64_t bytes_written;
} pmq_stream_state;

enum {
    PMQ_STREAM_UNIDIRECTIONAL = 1,
    PMQ_STREAM_LOCAL = 2,               /* opened by this side */
    PMQ_STREAM_ID_KNOWN = 4,
    PMQ_STREAM_START_FAILED = 8,
    PMQ_STREAM_FIN_RECEIVED = 16,       /* the peer finished and all data was read */
    PMQ_STREAM_RESET_RECEIVED = 32,     /* the peer aborted its sending */
    PMQ_STREAM_STOP_SENDING_RECEIVED = 64,
    PMQ_STREAM_FIN_SENT = 128,
    PMQ_STREAM_RESET_SENT = 256,
    PMQ_STREAM_STOP_SENDING_SENT = 512,
    PMQ_STREAM_SEND_SHUTDOWN_COMPLETE = 1024,
    PMQ_STREAM_SHUTDOWN_COMPLETE = 2048,
    PMQ_STREAM_CONN_SHUTDOWN = 4096,    /* ended because its connection did */
    /* Written data (or the FIN) may not have been delivered: a send was cancelled,
     * or the send side was aborted (reset, STOP_SENDING, connection closed) first. */
    PMQ_STREAM_SEND_INCOMPLETE = 8192,
    /* A peer stream whose first packet was a 0-RTT one (QUIC_STREAM_OPEN_FLAG_0_RTT). */
    PMQ_STREAM_OPENED_IN_0RTT = 16384
};

/* pmq_stream_peek / pmq_stream_read_into results */
enum { PMQ_READ_DATA = 0, PMQ_READ_WOULD_BLOCK = 1, PMQ_READ_EOF = 2, PMQ_READ_RESET = 3, PMQ_READ_ABORTED = 4 };

typedef struct pmq_datagram {
    uint32_t len;
    const uint8_t *data;
} pmq_datagram;

typedef struct pmq_conn_stats {
    uint32_t rtt_us;
    uint32_t min_rtt_us;
    uint32_t max_rtt_us;
    uint32_t rtt_variance_us;
    uint32_t congestion_window;
    uint32_t congestion_events;
    uint16_t path_mtu;
    uint64_t packets_sent;
    uint64_t packets_lost;      /* suspected lost */
    uint64_t packets_received;
    uint64_t bytes_sent;
    uint64_t bytes_received;
    uint64_t stream_bytes_sent;
    uint64_t stream_bytes_received;
    uint64_t handshake_us;      /* 0 until the handshake completed */
} pmq_conn_stats;

enum {
    PMQ_LISTENER_IDLE = 0,      /* opened, never started */
    PMQ_LISTENER_STARTING = 1,
    PMQ_LISTENER_STARTED = 2,
    PMQ_LISTENER_STOPPING = 3,  /* ListenerStop called, STOP_COMPLETE not yet seen */
    PMQ_LISTENER_STOPPED = 4,
    PMQ_LISTENER_CLOSED = 5
};

enum {
    PMQ_ACCEPT_OK = 0,
    PMQ_ACCEPT_EMPTY = 1,       /* nothing ready yet: wait */
    PMQ_ACCEPT_NOT_STARTED = 2,
    PMQ_ACCEPT_FINISHED = 3     /* stopped or closed, and nothing left */
};

/* Stream scheduling schemes: msquic's QUIC_STREAM_SCHEDULING_SCHEME values. */
enum { PMQ_SCHEDULING_FIFO = 0, PMQ_SCHEDULING_ROUND_ROBIN = 1 };

/* Low-level hooks: which ones a listener calls into Python. */
enum { PMQ_HOOK_NEW_CONNECTION = 1, PMQ_HOOK_STOP_COMPLETE = 2 };

typedef struct pmq_listener_stats {
    uint64_t accepted;           /* handshake completed (or 0-RTT request came), queued for accept */
    uint64_t refused_backlog;    /* refused: backlog of completed connections full */
    uint64_t refused_hook;       /* refused by on_new_connection */
    uint64_t refused_handshakes; /* refused: max_handshakes handshakes in progress */
    uint64_t refused_other;      /* refused: stopping, out of memory, configuration */
    uint64_t failed;             /* the handshake failed or timed out */
    uint64_t expired;            /* never accepted in time, shut down */
    uint32_t queued;             /* completed, waiting for accept now */
    uint32_t handshakes;         /* handshakes in progress now */
    uint64_t refused_server_name; /* refused: a server name not served (refuse_unknown_names) */
    uint64_t accepted_early;     /* of accepted: queued before the handshake completed (0-RTT) */
    uint32_t early_waiting;      /* of handshakes now: a 0-RTT request came while the backlog was full */
} pmq_listener_stats;

/* ---- opaque objects ---------------------------------------------------- */

typedef struct pmq_obj pmq_obj;
typedef struct pmq_waker pmq_waker;
typedef struct pmq_listener pmq_listener;
typedef struct pmq_conn pmq_conn;
typedef struct pmq_stream pmq_stream;

/* ---- library ----------------------------------------------------------- */

QUIC_STATUS pmq_library_open(void);
void pmq_library_close(void);
/* Non-zero while this thread is inside a msquic callback (a hook's thread). */
int pmq_in_callback(void);
/* Hooks are switched off at interpreter exit, before teardown. */
void pmq_hooks_enable(int enabled);
/* 1 in a child forked after msquic was opened: msquic's threads are gone, the
 * API table is replaced by stubs that never enter msquic, and it cannot be
 * opened again. */
int pmq_library_forked(void);

/* ---- wakers and objects ------------------------------------------------ */

pmq_waker *pmq_waker_new(void);
int pmq_waker_fd(pmq_waker *waker);
/* Reads the eventfd and returns up to max ids of objects that changed. */
size_t pmq_waker_drain(pmq_waker *waker, uint64_t *ids, size_t max);
void pmq_waker_release(pmq_waker *waker);

uint64_t pmq_obj_seq(pmq_obj *obj);
/* Waits until seq differs from `seq` or timeout_ms passes (-1: forever).
 * Returns 1 on change, 0 on timeout. */
int pmq_obj_wait(pmq_obj *obj, uint64_t seq, int timeout_ms);
/* Reports changes of obj to waker under `id` from now on (NULL: stop). */
void pmq_obj_attach(pmq_obj *obj, pmq_waker *waker, uint64_t id);

/* ---- configuration and addresses --------------------------------------- */

QUIC_STATUS pmq_configuration_open(HQUIC registration, const uint8_t *alpn_list, size_t alpn_len,
                                   const pmq_settings *settings, const pmq_credential *credential,
                                   HQUIC *configuration);
/* msquic's view of the configuration's settings (GetParam of
 * QUIC_PARAM_CONFIGURATION_SETTINGS): every field holds the value msquic uses,
 * its default where nothing was set; `set` has the PMQ_SET_* bits of the
 * fields msquic reports as set. Answered inline, never blocks. */
QUIC_STATUS pmq_configuration_get_settings(HQUIC configuration, pmq_settings *out);

/* ---- listener ---------------------------------------------------------- */

/* backlog bounds completed connections waiting for accept; max_handshakes
 * bounds handshakes in progress. Beyond either, new connections are refused.
 * Accepted connections get stream_scheduling (PMQ_SCHEDULING_*) in NEW_CONNECTION. */
QUIC_STATUS pmq_listener_open(HQUIC registration, HQUIC configuration, uint32_t backlog,
                              uint32_t backlog_timeout_ms, uint32_t max_handshakes,
                              uint32_t stream_scheduling, uint64_t hook_id, uint32_t hooks,
                              pmq_listener **out);
pmq_obj *pmq_listener_obj(pmq_listener *listener);
/* alpn_list in TLS wire format; address NULL for any address and port. */
QUIC_STATUS pmq_listener_start(pmq_listener *listener, const uint8_t *alpn_list, size_t alpn_len,
                               const pmq_addr *address);
/* Starts a stop if the listener is started; returns the state afterwards. */
uint32_t pmq_listener_stop(pmq_listener *listener);
uint32_t pmq_listener_state(pmq_listener *listener);
QUIC_STATUS pmq_listener_local_address(pmq_listener *listener, pmq_addr *out);
/* Pops the oldest connected connection; Python owns it afterwards. */
int pmq_listener_accept(pmq_listener *listener, pmq_conn **out);
void pmq_listener_get_stats(pmq_listener *listener, pmq_listener_stats *out);
/* Blocks until msquic released the listener; queued connections are shut down. */
void pmq_listener_close(pmq_listener *listener);
/* Drops Python's reference; the listener must be closed. */
void pmq_listener_release(pmq_listener *listener);
/* msquic's global stateless retry threshold (QUIC_PARAM_GLOBAL_RETRY_MEMORY_PERCENT):
 * handshake memory, in 65535ths of the machine's memory, beyond which new
 * connections must first prove their address with a Retry. set: write *value,
 * else read it. Needs the library open. */
QUIC_STATUS pmq_retry_memory_limit(int set, uint16_t *value);

/* ---- connection -------------------------------------------------------- */

QUIC_STATUS pmq_conn_open(HQUIC registration, pmq_conn **out);
/* remote NULL: msquic takes the address from server_name (an IP literal) and
 * port without blocking; otherwise SetParam waits for a worker round trip. */
QUIC_STATUS pmq_conn_start(pmq_conn *conn, HQUIC configuration, const pmq_addr *remote,
                           const char *server_name, uint16_t port);
pmq_obj *pmq_conn_obj(pmq_conn *conn);
void pmq_conn_get_info(pmq_conn *conn, pmq_conn_info *out);
uint32_t pmq_conn_flags(pmq_conn *conn);
/* 1 once no stream is still sending (or the connection is closed). */
int pmq_conn_all_sent(pmq_conn *conn);
/* Graceful shutdown with an application error code. Only the first shutdown
 * reaches msquic; INVALID_STATE for later ones and once closed. */
QUIC_STATUS pmq_conn_shutdown(pmq_conn *conn, uint64_t error_code);
/* Its registration is being closed here (RegistrationShutdown follows): counts as
 * the first, local shutdown, so errors say so and no later shutdown reaches msquic. */
void pmq_conn_registration_closing(pmq_conn *conn);
/* Python is done with the connection: shut it down, refuse further peer
 * streams, abort the unaccepted ones. The memory stays until release. */
void pmq_conn_abandon(pmq_conn *conn);
/* Abandons (if not yet) and drops Python's reference. */
void pmq_conn_release(pmq_conn *conn);
/* Pops the oldest peer stream: PMQ_ACCEPT_OK, _EMPTY, or _FINISHED once shut down. */
int pmq_conn_accept_stream(pmq_conn *conn, pmq_stream **out);
/* Copies and queues a datagram (len may be 0); PMQ_STATUS_DATAGRAM_QUEUE_FULL when
 * the datagrams not yet sent reach the send queue's capacity. */
QUIC_STATUS pmq_conn_send_datagram(pmq_conn *conn, const uint8_t *data, size_t len);
void pmq_conn_set_datagram_send_queue(pmq_conn *conn, uint32_t capacity);
/* Oldest received datagram or NULL; free it with pmq_datagram_free. */
pmq_datagram *pmq_conn_pop_datagram(pmq_conn *conn);
void pmq_datagram_free(pmq_datagram *datagram);
void pmq_conn_set_datagram_queue(pmq_conn *conn, uint32_t capacity);
/* Blocks briefly (msquic's worker answers); never call it from a hook. */
QUIC_STATUS pmq_conn_get_stats(pmq_conn *conn, pmq_conn_stats *out);
/* msquic's view of the connection's settings (QUIC_PARAM_CONN_SETTINGS), as
 * pmq_configuration_get_settings. Blocks like pmq_conn_get_stats (a worker
 * round trip from other threads); never call it from a hook. INVALID_STATE
 * before the start and once closed. */
QUIC_STATUS pmq_conn_get_settings(pmq_conn *conn, pmq_settings *out);
/* Copies up to cap bytes of the peer's DER certificate; returns its length. */
uint32_t pmq_conn_peer_certificate(pmq_conn *conn, uint8_t *dst, uint32_t cap);
/* PMQ_SCHEDULING_*. Before the start it is recorded and applied at CONNECTED,
 * on msquic's worker; afterwards SetParam waits for a worker round trip (runs
 * inline on the connection's own worker, e.g. in NEW_CONNECTION). */
QUIC_STATUS pmq_conn_set_stream_scheduling(pmq_conn *conn, uint32_t scheme);
/* The scheme last set (msquic's default FIFO if never). */
uint32_t pmq_conn_stream_scheduling(pmq_conn *conn);

/* ---- stream ------------------------------------------------------------ */

QUIC_STATUS pmq_stream_open(pmq_conn *conn, int unidirectional, pmq_stream **out);
pmq_obj *pmq_stream_obj(pmq_stream *stream);
void pmq_stream_get_state(pmq_stream *stream, pmq_stream_state *out);
/* PMQ_READ_DATA: data and len give the next contiguous received chunk, valid until
 * pmq_stream_consume, which must follow (with how much was taken). */
int pmq_stream_peek(pmq_stream *stream, const uint8_t **data, uint64_t *len);
void pmq_stream_consume(pmq_stream *stream, uint64_t n);
/* Copies up to cap received bytes into dst. */
int pmq_stream_read_into(pmq_stream *stream, uint8_t *dst, uint64_t cap, uint64_t *copied);
/* Copies data and queues it; msquic's completion frees the copy. */
QUIC_STATUS pmq_stream_write(pmq_stream *stream, const uint8_t *data, size_t len, int fin);
/* QUIC_STREAM_SHUTDOWN_FLAG_GRACEFUL (finish), _ABORT_SEND (reset), _ABORT_RECEIVE (stop sending). */
QUIC_STATUS pmq_stream_shutdown(pmq_stream *stream, uint32_t flags, uint64_t error_code);
/* Starts a stream opened here that no write has started yet. */
void pmq_stream_ensure_started(pmq_stream *stream);
/* Fixes drain()'s bound; 0 follows msquic's ideal send buffer size. */
void pmq_stream_set_send_limit(pmq_stream *stream, uint64_t limit);
/* Python is done with the stream: abort the directions still open. */
void pmq_stream_abandon(pmq_stream *stream);
/* Abandons and drops Python's reference. */
void pmq_stream_release(pmq_stream *stream);
/* QUIC_PARAM_STREAM_PRIORITY: 0 (low) to 0xFFFF (high), default 0x7FFF.
 * Waits for a msquic worker round trip; INVALID_STATE once closed. */
QUIC_STATUS pmq_stream_set_priority(pmq_stream *stream, uint16_t priority);
QUIC_STATUS pmq_stream_get_priority(pmq_stream *stream, uint16_t *out);

/* ---- certificate checks in Python, certificates by server name (certificates.c, sni.c) ----
 *
 * With a check mode other than OFF the credential has msquic's
 * DEFER_CERTIFICATE_VALIDATION: PEER_CERTIFICATE_RECEIVED copies the peer's
 * certificate, chain and msquic's own verdict and returns PENDING; Python takes
 * the check (never on msquic's thread) and completes it. */
enum {
    PMQ_CERT_CHECK_OFF = 0,
    PMQ_CERT_CHECK_PYTHON = 1,          /* Python decides; no certificate at all is accepted (server) */
    PMQ_CERT_CHECK_PYTHON_REQUIRE = 2   /* Python decides; no certificate is refused */
};
/* msquic's QUIC_CREDENTIAL_FLAG_DEFER_CERTIFICATE_VALIDATION (checked in certificates.c). */
enum { PMQ_CRED_FLAG_DEFER_CERTIFICATE_VALIDATION = 32 };

typedef struct pmq_cert_taken {
    uint32_t tag;              /* the listener's configuration (0: its default) */
    QUIC_STATUS chain_status;  /* 0 if msquic verified the chain, else its error */
    uint32_t leaf_len;
    uint32_t chain_len;
    uint8_t *leaf;             /* DER; owned by this record until pmq_cert_taken_clear */
    uint8_t *chain;            /* PKCS#7 DER of the chain msquic built */
} pmq_cert_taken;

/* Client: the check mode, before pmq_conn_start. */
void pmq_conn_set_cert_check(pmq_conn *conn, uint32_t mode);
/* Takes the connection's waiting check: 1 and `out` filled, or 0 if none waits.
 * A taken check must be completed with pmq_conn_cert_complete. */
int pmq_conn_cert_take(pmq_conn *conn, pmq_cert_taken *out);
void pmq_cert_taken_clear(pmq_cert_taken *taken);
/* Accept (alert ignored) or reject with a TLS alert. Accepting a connection that
 * is shutting down does nothing (msquic 2.5.1 crashes on it: issue 6138). */
QUIC_STATUS pmq_conn_cert_complete(pmq_conn *conn, int accept, uint16_t alert);
/* The listener configuration tag the connection got in NEW_CONNECTION. */
uint32_t pmq_conn_config_tag(pmq_conn *conn);
/* Server: a check waiting on a connection still in the handshake list, taken as
 * pmq_conn_cert_take does; *conn is referenced: complete, then pmq_conn_cert_done. */
int pmq_listener_cert_take(pmq_listener *listener, pmq_conn **conn, pmq_cert_taken *out);
void pmq_conn_cert_done(pmq_conn *conn);
/* Before start: serve `configuration` to clients asking for `name` (ASCII,
 * case-insensitive; "*.example.com" matches one label), tagged `tag` (> 0). */
QUIC_STATUS pmq_listener_add_server_name(pmq_listener *listener, const char *name, HQUIC configuration,
                                         uint32_t tag, uint32_t cert_mode);
/* Before start: refuse names not in the table (1) or serve them the listener's
 * configuration (0), whose check mode is cert_mode. */
QUIC_STATUS pmq_listener_set_default_name(pmq_listener *listener, int refuse_unknown, uint32_t cert_mode);
/* ---- TLS key log, QUIC versions, handshake facts (native/tls.c) -------- */

/* NSS key log (SSLKEYLOGFILE format) appended to one file. Anyone holding it
 * can decrypt the traffic of the connections it logs. */
typedef struct pmq_keylog pmq_keylog;
/* Takes ownership of fd (opened O_WRONLY|O_APPEND); NULL when out of memory
 * (the caller still owns fd then). */
pmq_keylog *pmq_keylog_new(int fd);
/* Drops the caller's reference; connections keep theirs until they end. */
void pmq_keylog_release(pmq_keylog *keylog);
/* Connections whose lines could not be written, and the errno of the last failure. */
uint64_t pmq_keylog_failures(pmq_keylog *keylog, int *last_errno);
/* Connections whose lines were written. */
uint64_t pmq_keylog_written(pmq_keylog *keylog);
/* Before pmq_conn_start: log this client connection's secrets to keylog (the
 * start then waits for a msquic worker round trip). INVALID_STATE once started. */
QUIC_STATUS pmq_conn_set_keylog(pmq_conn *conn, pmq_keylog *keylog);
/* Before pmq_listener_start: log the secrets of every connection it accepts. */
void pmq_listener_set_keylog(pmq_listener *listener, pmq_keylog *keylog);

/* What the handshake settled, copied at CONNECTED (zeros before). */
typedef struct pmq_handshake_info {
    uint32_t quic_version;  /* 0x00000001 v1, 0x6b3343cf v2 */
    uint32_t tls_version;   /* QUIC_TLS_PROTOCOL_1_3 = 0x3000 */
    uint32_t cipher_suite;  /* IANA number: 0x1301, 0x1302, 0x1303 */
    uint32_t tls_group;     /* IANA number (29 x25519, 23 secp256r1...), 0 unknown */
    uint32_t known;         /* 1 once the TLS facts were read */
} pmq_handshake_info;
void pmq_conn_get_handshake_info(pmq_conn *conn, pmq_handshake_info *out);

/* QUIC versions (host order) as msquic's three version lists, all equal.
 * count 0 restores msquic's defaults. A configuration's list is what a client
 * offers and accepts; a server's is process-wide (msquic decides it before a
 * connection or a configuration exists). get: *count is the capacity of out
 * on entry, the number written on return (0: msquic's defaults). */
QUIC_STATUS pmq_configuration_set_versions(HQUIC configuration, const uint32_t *versions, uint32_t count);
QUIC_STATUS pmq_configuration_get_versions(HQUIC configuration, uint32_t *out, uint32_t *count);
QUIC_STATUS pmq_global_set_versions(const uint32_t *versions, uint32_t count);
QUIC_STATUS pmq_global_get_versions(uint32_t *out, uint32_t *count);
/* ---- statistics and transport (native/statistics.c, native/transport.c) ---- */

/* Every field of QUIC_STATISTICS_V2 (msquic 2.5), named as in Python's
 * ConnectionStats; handshake_us is pymsquic's own measure. */
typedef struct pmq_conn_stats_v2 {
    uint64_t correlation_id;
    uint8_t version_negotiation;
    uint8_t stateless_retry;
    uint8_t resumption_attempted;
    uint8_t resumption_succeeded;
    uint8_t grease_bit_negotiated;
    uint8_t ecn_capable;
    uint8_t encryption_offloaded;
    uint32_t rtt_us;
    uint32_t min_rtt_us;
    uint32_t max_rtt_us;
    uint64_t timing_start_us;
    uint64_t timing_initial_flight_end_us;
    uint64_t timing_handshake_flight_end_us;
    uint32_t handshake_client_flight1_bytes;
    uint32_t handshake_server_flight1_bytes;
    uint32_t handshake_client_flight2_bytes;
    uint16_t path_mtu;
    uint64_t packets_sent;
    uint64_t packets_retransmittable;
    uint64_t packets_lost;
    uint64_t packets_spurious_lost;
    uint64_t bytes_sent;
    uint64_t stream_bytes_sent;
    uint32_t congestion_events;
    uint32_t persistent_congestion_events;
    uint64_t packets_received;
    uint64_t packets_reordered;
    uint64_t packets_dropped;
    uint64_t packets_duplicate;
    uint64_t bytes_received;
    uint64_t stream_bytes_received;
    uint64_t decryption_failures;
    uint64_t ack_frames_received;
    uint32_t key_updates;
    uint32_t congestion_window;
    uint32_t dest_cid_updates;
    uint32_t ecn_congestion_events;
    uint8_t handshake_hop_limit_ttl;
    uint32_t rtt_variance_us;
    uint64_t handshake_us;
} pmq_conn_stats_v2;

/* msquic's QUIC_LISTENER_STATISTICS. */
typedef struct pmq_listener_msquic_stats {
    uint64_t total_accepted;
    uint64_t total_rejected;
    /* Not BindingRecvDroppedPackets: msquic 2.5.1 never initialises it (heap garbage). */
} pmq_listener_msquic_stats;

/* msquic's QUIC_STREAM_STATISTICS, field for field (a memcpy fills it): µs a
 * stream spent unable to send, by cause; the conn_* ones count the
 * connection's blocks since the stream started. */
typedef struct pmq_stream_stats {
    uint64_t conn_blocked_by_scheduling_us;
    uint64_t conn_blocked_by_pacing_us;
    uint64_t conn_blocked_by_amplification_prot_us;
    uint64_t conn_blocked_by_congestion_control_us;
    uint64_t conn_blocked_by_flow_control_us;
    uint64_t stream_blocked_by_id_flow_control_us;
    uint64_t stream_blocked_by_flow_control_us;
    uint64_t stream_blocked_by_app_us;
} pmq_stream_stats;

/* pmq_settings.transport_set bits. Not here: HyStartEnabled and
 * TlsServerMaxSendBuffer, which msquic 2.5.1 never applies from a
 * QUIC_SETTINGS (QuicSettingApply skips the one and copies
 * TlsClientMaxSendBuffer twice instead of the other). */
enum {
    PMQ_TSET_MAX_BYTES_PER_KEY = 1,
    PMQ_TSET_MTU_DISCOVERY_SEARCH_COMPLETE_TIMEOUT = 2,
    PMQ_TSET_SEND_IDLE_TIMEOUT = 4,
    PMQ_TSET_INITIAL_WINDOW_PACKETS = 8,
    PMQ_TSET_DEST_CID_UPDATE_IDLE_TIMEOUT = 16,
    PMQ_TSET_STREAM_RECV_BUFFER_DEFAULT = 32,
    PMQ_TSET_STREAM_RECV_WINDOW_BIDI_LOCAL = 64,
    PMQ_TSET_STREAM_RECV_WINDOW_BIDI_REMOTE = 128,
    PMQ_TSET_STREAM_RECV_WINDOW_UNIDI = 256,
    PMQ_TSET_TLS_CLIENT_MAX_SEND_BUFFER = 512,
    PMQ_TSET_MINIMUM_MTU = 2048,
    PMQ_TSET_MAXIMUM_MTU = 4096,
    PMQ_TSET_MTU_DISCOVERY_MISSING_PROBE_COUNT = 8192,
    PMQ_TSET_ECN_ENABLED = 16384,
    PMQ_TSET_GREASE_QUIC_BIT_ENABLED = 32768
};

/* All of QUIC_PARAM_CONN_STATISTICS_V2. Blocks briefly (a worker round trip);
 * never call it from a hook. INVALID_STATE before the start and once closed. */
QUIC_STATUS pmq_conn_get_stats_v2(pmq_conn *conn, pmq_conn_stats_v2 *out);
/* QUIC_PARAM_LISTENER_STATS; answered inline. INVALID_STATE once closed. */
QUIC_STATUS pmq_listener_get_msquic_stats(pmq_listener *listener, pmq_listener_msquic_stats *out);
/* QUIC_PARAM_GLOBAL_PERF_COUNTERS: the first `count` counters, in the order of
 * msquic's QUIC_PERFORMANCE_COUNTERS. Needs the library open; never blocks. */
QUIC_STATUS pmq_perf_counters(int64_t *out, uint32_t count);
/* QUIC_PARAM_STREAM_STATISTICS. Blocks briefly (a worker round trip); never
 * from a hook. INVALID_STATE before the stream started and once closed. */
QUIC_STATUS pmq_stream_get_stats(pmq_stream *stream, pmq_stream_stats *out);
uint32_t pmq_perf_counter_count(void);
/* The enum name of counter `index` without QUIC_PERF_COUNTER_ ("" if unknown). */
const char *pmq_perf_counter_name(uint32_t index);

/* QUIC_PARAM_CONN_LOCAL_ADDRESS before the start: the client's local address.
 * INVALID_STATE once started (no migration: msquic 2.5.1 can abort on one),
 * on a server and once closed. Blocks briefly (a worker round trip); never
 * from a hook. */
QUIC_STATUS pmq_conn_set_local_address(pmq_conn *conn, const pmq_addr *address);
/* QUIC_PARAM_CONN_SEND_DSCP (0-63), get or set. Blocks like the above. */
QUIC_STATUS pmq_conn_dscp(pmq_conn *conn, int set, uint8_t *value);
/* ---- resumption, 0-RTT, ticket keys, fleet (native/resumption.c) ------- */

/* Bytes handed out by the native side; free with pmq_blob_free. */
typedef struct pmq_blob {
    uint32_t len;
    const uint8_t *data;
} pmq_blob;

/* A session-ticket encryption key (QUIC_TICKET_KEY_CONFIG). */
typedef struct pmq_ticket_key {
    uint8_t id[16];
    uint8_t material[64];
    uint8_t material_len;
} pmq_ticket_key;

enum { PMQ_MAX_TICKET_KEYS = 16, PMQ_MAX_RESUMPTION_APP_DATA = 1000, PMQ_STATELESS_RESET_KEY_LEN = 32 };

/* Client, before pmq_conn_start: the ticket to resume with (copied; set with
 * QUIC_PARAM_CONN_RESUMPTION_TICKET inside pmq_conn_start, a worker round
 * trip) and whether streams may send 0-RTT data (QUIC_SEND_FLAG_ALLOW_0_RTT;
 * the stream scheduling scheme is then applied before the start too).
 * INVALID_STATE once started. */
QUIC_STATUS pmq_conn_set_resumption(pmq_conn *conn, const uint8_t *ticket, size_t len, int early_data);
/* Applies what pmq_conn_set_resumption recorded now (the worker round trips),
 * so that a later pmq_conn_start to an IP literal does not block. */
QUIC_STATUS pmq_conn_prepare_resumption(pmq_conn *conn);
/* 1 if pmq_conn_start failed because msquic refused the ticket's encoding. */
int pmq_conn_resumption_ticket_refused(pmq_conn *conn);
/* Client: the tickets received so far (RESUMPTION_TICKET_RECEIVED). */
uint64_t pmq_conn_tickets_received(pmq_conn *conn);
/* The latest ticket, or NULL if none came. */
pmq_blob *pmq_conn_latest_ticket(pmq_conn *conn);
/* The oldest ticket not yet popped (at most 8 wait; the oldest are
 * dropped beyond), or NULL. */
pmq_blob *pmq_conn_pop_ticket(pmq_conn *conn);
/* Client: -1 until connected (or no 0-RTT was attempted: see resumption.c), else 0 or 1. */
int pmq_conn_early_data_accepted(pmq_conn *conn);
/* Server: the app data of the ticket this connection resumed with (RESUMED),
 * or NULL if it did not resume with one. */
pmq_blob *pmq_conn_resumption_app_data(pmq_conn *conn);
/* Server: how many peer streams were opened by 0-RTT packets (QUIC_STREAM_OPEN_FLAG_0_RTT). */
uint32_t pmq_conn_early_data_streams(pmq_conn *conn);
/* Server: ConnectionSendResumptionTicket (final: QUIC_SEND_RESUMPTION_FLAG_FINAL). */
QUIC_STATUS pmq_conn_send_resumption_ticket(pmq_conn *conn, const uint8_t *app_data, size_t len, int final);
void pmq_blob_free(pmq_blob *blob);
/* QUIC_PARAM_CONFIGURATION_TICKET_KEYS (answered inline). */
QUIC_STATUS pmq_configuration_set_ticket_keys(HQUIC configuration, const pmq_ticket_key *keys, uint32_t count);
/* QUIC_PARAM_GLOBAL_LOAD_BALACING_MODE: set writes *mode, else reads it. */
QUIC_STATUS pmq_load_balancing_mode(int set, uint16_t *mode);
/* QUIC_PARAM_GLOBAL_STATELESS_RESET_KEY (set only: msquic cannot read it back). */
QUIC_STATUS pmq_set_stateless_reset_key(const uint8_t *key, size_t len);
/* A reference to the native connection of its own (the sync ticket thread's,
 * which holds the Python connection only weakly); pmq_conn_unhold drops it. */
void pmq_conn_hold(pmq_conn *conn);
void pmq_conn_unhold(pmq_conn *conn);

/* ---- loop mode: msquic's custom execution (execution.c) ---------------- */
/* After pmq_library_open, before the first RegistrationOpen. */
QUIC_STATUS pmq_execution_create(void);
/* The epoll fd msquic's work arrives on; -1 outside loop mode. */
int pmq_execution_fd(void);
/* Dispatch ready completions, run msquic (callbacks run on this thread);
 * the next step is due in the returned ms (0: now, -1: on the fd only). */
int64_t pmq_execution_step(void);
/* Step for ms milliseconds, sleeping as msquic allows (no loop running). */
void pmq_execution_drive(uint32_t ms);
/* RegistrationClose for this handle at pmq_execution_finish (no poll may follow it). */
int pmq_execution_park_registration(HQUIC registration);
/* Drive until msquic is quiet (at most settle_ms), stop polling, close the
 * parked registrations. 1 if it got quiet. Then MsQuicClose. */
int pmq_execution_finish(uint32_t settle_ms);
/* Start (once) the thread that steps msquic for the blocking world; 1 if it runs. */
int pmq_execution_start_driver(void);
/* 1 if objects of this waker changed since the last drain (a hint, unlocked). */
int pmq_waker_pending(pmq_waker *waker);
/* 1 while an execution exists and is still polled. */
int pmq_execution_active(void);
/* ---- early data: a client start deferred to the first wait (s15-c0rtt) ---- */

/* As pmq_conn_start (the same blocking steps: ticket, remote address, key
 * log), but ConnectionStart itself waits for pmq_conn_start_deferred: streams
 * may open and write meanwhile, and their data, queued in msquic before the
 * start, goes in the first flight as 0-RTT. A stream's first read calls
 * pmq_conn_start_deferred (the peer cannot answer otherwise); Python calls it
 * at every other wait. */
QUIC_STATUS pmq_conn_start_early(pmq_conn *conn, HQUIC configuration, const pmq_addr *remote,
                                 const char *server_name, uint16_t port);
/* The deferred ConnectionStart, now; SUCCESS and nothing if none is pending.
 * Never blocks on msquic: a start another thread is making is waited for
 * (ConnectionStart only queues), so on return msquic holds the configuration.
 * A failure closes the connection. */
QUIC_STATUS pmq_conn_start_deferred(pmq_conn *conn);
/* 0 once no deferred start is pending (a start in flight on another thread is
 * waited for, as above); 1 while one is; PMQ_START_PENDING_WITH_DATA
 * while one is and streams were started (written, or shut down) meanwhile. */
#define PMQ_START_PENDING_WITH_DATA 2
int pmq_conn_start_pending(pmq_conn *conn);

/* s15-fast: fewer calls per request. Each does what pmq_stream_consume or
 * pmq_stream_read_into does and also tells what a read would find right after
 * it (a PMQ_READ_* status), so that a read sees the data and the EOF together.
 * A consume takes at most what the peek showed. */
int pmq_stream_consume_next(pmq_stream *stream, uint64_t n);
int pmq_stream_read_into_next(pmq_stream *stream, uint8_t *dst, uint64_t cap, uint64_t *copied, int *next);

/* A request in one call. Opens a local stream (as pmq_stream_open)
 * and, when there is data or fin, sends it at once (as pmq_stream_write; that
 * send starts the stream). *out is NULL when the open failed (the status says
 * why); set when it succeeded, and then owned by the caller even if the send
 * failed, which the status then reports. */
QUIC_STATUS pmq_stream_open_send(pmq_conn *conn, int unidirectional, const uint8_t *data, size_t len, int fin,
                                 pmq_stream **out);
/* ---- loop mode: what the steps did ---------------------------------- */
typedef struct pmq_execution_stats {
    uint64_t steps;         /* pmq_execution_step(_for) calls */
    uint64_t polls;         /* ExecutionPoll rounds, every stepper (the exit and driver thread too) */
    uint64_t completions;   /* fd completions (sockets, eventfds) dispatched */
    /* steps that stopped with msquic asking for more, because: */
    uint64_t capped_steps;  /* they ran STEP_ROUNDS rounds */
    uint64_t budget_steps;  /* they ran STEP_BUDGET_US */
    uint64_t yielded_steps; /* the loop had something to answer */
    uint64_t step_us;       /* time spent inside the steps */
    uint64_t max_step_us;  /* the longest single step */
} pmq_execution_stats;
/* pmq_execution_step, but it ends after the round in which msquic's
 * callbacks handed the loop's waker something (the loop answers first). */
int64_t pmq_execution_step_for(pmq_waker *waker);
/* The counters since msquic opened (all zero outside loop mode). */
void pmq_execution_get_stats(pmq_execution_stats *out);

/* CFFI-END */

/* Declared for cffi in build_msquic.py (a global and an extern "Python+C"). */

/* The process-wide API table; NULL until pmq_library_open succeeds. */
extern const QUIC_API_TABLE *pmq_api;
/* Python side of the listener hooks. Returns 0 to refuse a connection. */
int pmq_py_listener_hook(uint64_t hook_id, uint32_t event, const pmq_conn_info *info);

#endif
