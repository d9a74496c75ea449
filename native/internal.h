/* Private to native/: object layout and helpers shared by the trampolines. */
#ifndef PYMSQUIC_INTERNAL_H
#define PYMSQUIC_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "pymsquic.h"

/*
 * Lock order. Every native object (listener, connection, stream) has one
 * mutex, pmq_obj.lock; a pmq_waker has its own. Where two are held at once,
 * the first is taken before the second:
 *
 *     listener lock  ->  connection lock  ->  waker lock
 *     stream lock    ->  connection lock  ->  waker lock
 *
 * - listener -> connection: the listener settles its handshakes under its lock
 *   and reads each connection's flags (pmq_conn_flags). A connection never
 *   calls into its listener with its own lock held (notify_listener runs after
 *   the unlock).
 * - stream -> connection: a stream taking its pending start leaves the
 *   connection's unstarted list (take_start_locked -> pmq_conn_forget_unstarted).
 *   A connection never takes a stream's lock with its own held.
 * - any object -> waker: pmq_obj_changed_locked and pmq_obj_attach. The waker
 *   lock is a leaf: nothing else is taken under it.
 * - A listener and a stream are never locked together, nor two objects of one
 *   kind. There is no global mutex: pmq_library_open runs under a Python lock,
 *   pmq_library_close once at exit.
 * - No native lock is held while calling into Python (the listener hooks take
 *   the GIL), nor across a msquic call that may wait for one of our callbacks
 *   (the Closes, ListenerStop, a connection's or stream's Get/SetParam). The one
 *   msquic call made under a lock, the listener's GetParam in
 *   pmq_listener_local_address, runs inline and waits for nothing.
 */
struct pmq_obj {
    /* Guards this struct's seq, waker and waker_id and the fields of the
     * object that embeds it (each says which). Order: see above. */
    pthread_mutex_t lock;
    pthread_cond_t cond;      /* broadcast on every change */
    uint64_t seq;             /* bumped on every change; guarded by lock */
    atomic_int refs;
    void (*destroy)(pmq_obj *);
    pmq_waker *waker;         /* guarded by lock */
    uint64_t waker_id;
    /* The waker's ready list; guarded by the waker's lock. */
    pmq_obj *ready_next;
    int in_ready;
#ifdef PMQ_DEBUG_MAGIC
    uint32_t magic;           /* PMQ_MAGIC_LIVE while alive, poisoned before destroy */
    void *debug_handle;       /* the msquic handle this object was given, never cleared */
#endif
};

/* Opt-in use-after-free canary: PYMSQUIC_DEBUG_MAGIC=1 at build time. */
#ifdef PMQ_DEBUG_MAGIC
#define PMQ_MAGIC_LIVE 0x51c0ffeeu
#define PMQ_MAGIC_DEAD 0xdeadbeefu
void pmq_obj_check(const pmq_obj *obj, const char *where);
void pmq_obj_check_handle(const pmq_obj *obj, void *handle, const char *where);
#define PMQ_CHECK(obj) pmq_obj_check((obj), __func__)
/* In a callback: the object must be alive and be the one made for this handle. */
#define PMQ_CHECK_CALLBACK(obj, handle) pmq_obj_check_handle((obj), (handle), __func__)
#define PMQ_SET_HANDLE(obj, handle) ((obj)->debug_handle = (handle))
#else
#define PMQ_CHECK(obj) ((void)0)
#define PMQ_CHECK_CALLBACK(obj, handle) ((void)0)
#define PMQ_SET_HANDLE(obj, handle) ((void)0)
#endif

/*
 * A msquic handle that Python may call on while a worker may close it. Python
 * calls enter/leave the guard; SHUTDOWN_COMPLETE closes the handle at once when
 * no call is in flight, else the last call to leave closes it. Nothing ever
 * waits inside a callback, so even blocking calls (GetParam) may be guarded.
 * All fields are guarded by the owning object's lock.
 */
typedef struct pmq_guard {
    HQUIC handle;        /* NULL once closed */
    int users;
    int final;           /* SHUTDOWN_COMPLETE seen: no new users */
    int close_deferred;  /* the last user closes */
} pmq_guard;

/* Returns the handle with a use counted, or NULL if it is closed or closing. */
HQUIC pmq_guard_enter(pmq_obj *obj, pmq_guard *guard);
HQUIC pmq_guard_enter_locked(pmq_guard *guard);
/* Ends a use; closes the handle (close_fn) and drops the object's msquic
 * reference if this was the last use of a finished handle. */
void pmq_guard_leave(pmq_obj *obj, pmq_guard *guard, void (*close_fn)(HQUIC));
/* In SHUTDOWN_COMPLETE, with obj->lock held: returns the handle to close now
 * (then drop the msquic reference), or NULL if a user will close it. */
HQUIC pmq_guard_finish_locked(pmq_guard *guard);

void pmq_obj_init(pmq_obj *obj, int refs, void (*destroy)(pmq_obj *));
void pmq_obj_ref(pmq_obj *obj);
void pmq_obj_unref(pmq_obj *obj);
/* Records a change: call with obj->lock held. Wakes waiters and the waker. */
void pmq_obj_changed_locked(pmq_obj *obj);
void pmq_obj_changed(pmq_obj *obj);

/* Marks this thread as running a msquic callback while the guard lives. */
void pmq_callback_enter(void);
void pmq_callback_leave(void);
int pmq_hooks_enabled(void);

uint64_t pmq_now_ms(void);
uint64_t pmq_now_us(void);
/* Absolute CLOCK_MONOTONIC deadline for pthread_cond_timedwait. */
void pmq_deadline(struct timespec *ts, uint64_t in_ms);

void pmq_addr_from_quic(pmq_addr *out, const QUIC_ADDR *in);
int pmq_addr_to_quic(QUIC_ADDR *out, const pmq_addr *in);
/* GetParam of a QUIC_SETTINGS parameter (configuration or connection) into a flat record. */
QUIC_STATUS pmq_settings_read(HQUIC handle, uint32_t param, pmq_settings *out);
/* Splits a TLS wire-format ALPN list into buffers pointing into it. */
int pmq_alpn_split(const uint8_t *list, size_t len, QUIC_BUFFER *out, uint32_t max, uint32_t *count);

/* Connection internals used by the listener. */
pmq_conn *pmq_conn_new_accepted(pmq_listener *listener, const QUIC_NEW_CONNECTION_INFO *info);
QUIC_STATUS pmq_conn_adopt(pmq_conn *conn, HQUIC handle, HQUIC configuration);
void pmq_conn_discard_refused(pmq_conn *conn);
void pmq_conn_leave_listener(pmq_conn *conn);
/* Queued at CONNECTED although a 0-RTT request came first (no room then):
 * not accepted early after all. Takes the connection's lock. */
void pmq_conn_handed_over_connected(pmq_conn *conn);
pmq_conn_info *pmq_conn_info_ptr(pmq_conn *conn);
void pmq_listener_conn_changed(pmq_listener *listener);

/*
 * A connection's list of streams: its accept queue of peer streams, and its
 * local streams msquic has not started yet. The list is linked through a field
 * of the stream; stream.c owns that field and all the code that follows it
 * (these functions), connection.c owns the lists. A stream is in at most one
 * list. A list inside a pmq_conn is guarded by that connection's lock; a list
 * taken out of it with pmq_stream_list_take belongs to the caller alone.
 */
typedef struct pmq_stream_list {
    pmq_stream *head;
    pmq_stream *tail;
} pmq_stream_list;

void pmq_stream_list_push_back(pmq_stream_list *list, pmq_stream *stream);
void pmq_stream_list_push_front(pmq_stream_list *list, pmq_stream *stream);
/* Unlinks and returns the first stream, or NULL if the list is empty. */
pmq_stream *pmq_stream_list_pop(pmq_stream_list *list);
/* Unlinks stream if it is in the list. */
void pmq_stream_list_remove(pmq_stream_list *list, pmq_stream *stream);
/* Empties the list and returns what it held. */
pmq_stream_list pmq_stream_list_take(pmq_stream_list *list);
/* Takes a reference to every stream in the list. */
void pmq_stream_list_ref_all(const pmq_stream_list *list);

/* Stream internals used by the connection. */
pmq_stream *pmq_stream_new_peer(pmq_conn *conn, HQUIC handle, int unidirectional);
/* Sets PMQ_STREAM_OPENED_IN_0RTT on a new peer stream (before anyone else sees it). */
void pmq_stream_mark_opened_in_0rtt(pmq_stream *stream);
void pmq_stream_refuse(HQUIC handle);
void pmq_stream_abort_unaccepted(pmq_stream *stream);
QUIC_STATUS pmq_stream_open_on(pmq_conn *conn, HQUIC connection, int unidirectional, pmq_stream **out);
/* A local stream was started: it leaves the connection's list of unstarted streams. */
void pmq_conn_forget_unstarted(pmq_conn *conn, pmq_stream *stream);
/* Ends a stream msquic never started (it reports nothing for one): closes the handle. */
void pmq_stream_end_unstarted(pmq_stream *stream);
/* A stream that can send was created / finished sending (counted once each). */
void pmq_conn_stream_sending(pmq_conn *conn, int delta);

#define PMQ_MAX_ALPNS 32

/* ---- certificate checks in Python and certificates by server name ----------
 * (certificates.c, sni.c). A connection's check is guarded by its lock. */
enum { PMQ_CERT_NONE = 0, PMQ_CERT_PENDING = 1, PMQ_CERT_TAKEN = 2, PMQ_CERT_DONE = 3 };

typedef struct pmq_cert_check {
    uint32_t mode;             /* PMQ_CERT_CHECK_*, set before the handshake */
    uint32_t tag;              /* the listener's configuration this connection got */
    int state;                 /* PMQ_CERT_* */
    QUIC_STATUS chain_status;  /* msquic's own verdict on the chain */
    uint8_t *leaf;
    uint32_t leaf_len;
    uint8_t *chain;            /* PKCS#7 DER */
    uint32_t chain_len;
} pmq_cert_check;

/* connection.c's side of certificates.c */
pmq_cert_check *pmq_conn_cert(pmq_conn *conn);
HQUIC pmq_conn_guard_enter_locked(pmq_conn *conn);
void pmq_conn_guard_leave(pmq_conn *conn);
/* Wakes the listener whose backlog holds conn, if any. */
void pmq_conn_notify_owner(pmq_conn *conn);
QUIC_STATUS pmq_cert_on_received(pmq_conn *conn, QUIC_CONNECTION_EVENT *event);
void pmq_cert_free(pmq_cert_check *check);

/* A listener's table of server names (sni.c); written only while the listener
 * is idle, read without a lock in NEW_CONNECTION. */
typedef struct pmq_sni_entry {
    char *name;                /* lower case; "*.example" matches one label */
    size_t len;
    HQUIC configuration;
    uint32_t tag;
    uint32_t cert_mode;
} pmq_sni_entry;

typedef struct pmq_sni_table {
    pmq_sni_entry *entries;
    size_t count;
    int refuse_unknown;        /* names not in the table are refused, not served the default */
    uint32_t default_cert_mode;
} pmq_sni_table;

QUIC_STATUS pmq_sni_add(pmq_sni_table *table, const char *name, HQUIC configuration, uint32_t tag,
                        uint32_t cert_mode);
/* The entry for a ClientHello's server name; NULL: serve the default (or refuse). */
const pmq_sni_entry *pmq_sni_lookup(const pmq_sni_table *table, const char *name, size_t len);
void pmq_sni_free(pmq_sni_table *table);
/* native/tls.c: a connection's TLS secrets and key log (see there). */
typedef struct pmq_tls pmq_tls;
void pmq_keylog_ref(pmq_keylog *keylog);
/* A connection that could not log its lines (errno err), e.g. out of memory. */
void pmq_keylog_count_failure(pmq_keylog *keylog, int err);
pmq_tls *pmq_tls_new(pmq_keylog *keylog);
void pmq_tls_free(pmq_tls *tls);
/* QUIC_PARAM_CONN_TLS_SECRETS: before ConnectionStart, or inside NEW_CONNECTION. */
QUIC_STATUS pmq_tls_attach(pmq_tls *tls, HQUIC connection);
/* Appends the key log lines once (tls may be NULL); on msquic's worker. */
void pmq_tls_write(pmq_tls *tls);
/* At CONNECTED: pmq_tls_write, and a failure (ENODATA) if the 1-RTT secrets are missing. */
void pmq_tls_connected(pmq_tls *tls);
/* On the connection's worker (GetParam runs inline there). */
void pmq_handshake_info_read(HQUIC connection, pmq_handshake_info *out);
/* The listener's side of accepting with a key log (connection.c). */
void pmq_conn_keylog_accepted(pmq_conn *conn, HQUIC handle, pmq_keylog *keylog);
/* Statistics and transport (statistics.c, transport.c, and their hooks in
 * connection.c, listener.c, configuration.c). */
/* Get (set 0) or SetParam (set 1) on the connection's handle, kept open for the
 * call: before the start (as pmq_conn_start keeps it) or while it lives.
 * PMQ_PARAM_SET_BEFORE_START sets only before the start (INVALID_STATE after).
 * Before the start it borrows pmq_conn_start's `starting` flag for the call, so
 * a pmq_conn_start (or another pmq_conn_param) meanwhile gets INVALID_STATE
 * instead of waiting: Python calls them one after the other, never at once.
 * Blocks for a worker round trip; never from a callback. */
#define PMQ_PARAM_SET_BEFORE_START 2
QUIC_STATUS pmq_conn_param(pmq_conn *conn, int set, uint32_t param, uint32_t *size, void *buffer);
int pmq_conn_is_started(pmq_conn *conn);
/* The statistics at SHUTDOWN_COMPLETE, kept for pmq_conn_get_stats_v2 once the
 * handle is closed: keep_final_stats reads them in that callback (inline). */
void pmq_conn_keep_final_stats(pmq_conn *conn, HQUIC handle);
void pmq_conn_set_final_stats(pmq_conn *conn, const pmq_conn_stats_v2 *stats);
int pmq_conn_get_final_stats(pmq_conn *conn, pmq_conn_stats_v2 *out);
/* Handshake duration measured by pymsquic, 0 until connected. */
uint64_t pmq_conn_handshake_us(pmq_conn *conn);
/* In a PEER_ (peer 1) or LOCAL_ADDRESS_CHANGED callback: record the address. */
void pmq_conn_address_changed(pmq_conn *conn, const QUIC_ADDR *address, int peer);
/* GetParam on the listener's handle (answered inline); INVALID_STATE once closed. */
QUIC_STATUS pmq_listener_get_param(pmq_listener *listener, uint32_t param, uint32_t *size, void *buffer);
/* Get/SetParam on the stream's handle, guarded (stream.c's guarded_param). */
QUIC_STATUS pmq_stream_param(pmq_stream *stream, int set, uint32_t param, void *buffer, uint32_t size);
void pmq_transport_fill_settings(QUIC_SETTINGS *s, const pmq_settings *in);
void pmq_transport_read_settings(pmq_settings *out, const QUIC_SETTINGS *s);
/* ---- resumption (native/resumption.c) ------------------------------------ */

/* A connection's resumption state; every field is guarded by its lock. */
typedef struct pmq_resumption {
    struct blob_block *pending_ticket; /* client: set at the start */
    struct blob_block *latest;         /* client: the latest ticket received */
    struct blob_block *queue;          /* client: tickets not yet popped, oldest first */
    uint32_t queued;
    uint64_t tickets_received;
    struct blob_block *app_data;       /* server: a resumed ticket's app data */
    int early_data;                    /* client: 0-RTT attempted (a ticket, early_data) */
    int ticket_refused;                /* client: msquic refused the ticket */
    int connected;
    int resumed;
    uint32_t early_streams;            /* server: peer streams opened in 0-RTT packets */
    struct ticket_send *unsent;        /* server: tickets asked for before CONNECTED, oldest first */
    uint32_t unsent_count;
} pmq_resumption;

pmq_resumption *pmq_conn_resumption(pmq_conn *conn);
pmq_guard *pmq_conn_guard(pmq_conn *conn);
/* With the connection's lock held: started, or being started. */
int pmq_conn_start_taken_locked(pmq_conn *conn);
void pmq_resumption_free(pmq_resumption *r);
void pmq_resumption_on_ticket(pmq_conn *conn, const QUIC_CONNECTION_EVENT *event);
void pmq_resumption_on_resumed(pmq_conn *conn, const QUIC_CONNECTION_EVENT *event);
/* Also sends the tickets a connection handed over early asked for before (on the worker). */
void pmq_resumption_on_connected(pmq_conn *conn, HQUIC handle, int session_resumed);
void pmq_resumption_on_peer_stream(pmq_conn *conn, const QUIC_CONNECTION_EVENT *event);
/* In pmq_conn_start, before ConnectionStart: sets the pending ticket (a worker round trip). */
QUIC_STATUS pmq_resumption_before_start(pmq_conn *conn, HQUIC handle);
/* 1 if streams may send 0-RTT data. */
int pmq_resumption_early_data(pmq_conn *conn);
/* The send flags every StreamSend of this connection adds. */
QUIC_SEND_FLAGS pmq_conn_send_flags(pmq_conn *conn);

#endif
