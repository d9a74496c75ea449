/*
 * Certificate checks in Python, through msquic's deferred validation.
 *
 * The credential carries DEFER_CERTIFICATE_VALIDATION, INDICATE_CERTIFICATE_RECEIVED
 * and USE_PORTABLE_CERTIFICATES. msquic (quictls) first runs its own chain check
 * (X509_verify_cert against the CA file or the system store) and, deferred, does
 * not act on its result: PEER_CERTIFICATE_RECEIVED brings the leaf (DER), the
 * chain it built (PKCS#7 DER) and its verdict (DeferredStatus). The trampoline
 * copies them, marks the check pending, wakes whoever waits on the connection
 * (connect) or on its listener (accept), and returns PENDING: msquic holds the
 * handshake until ConnectionCertificateValidationComplete. Python takes the
 * check on its own thread, runs the callable and completes it here. A check
 * nobody takes ends with the handshake idle timeout, like any stalled handshake.
 *
 * msquic 2.5.1 workaround (msquic issue 6138, fixed upstream by PR 5962 after
 * 2.5.9): completing a validation with TRUE after the connection shut down
 * dereferences freed connection ids. So a check is completed only while no
 * shutdown has begun, tested and called under the connection's lock: the
 * shutdown events set their flags under that lock, and the call only queues an
 * operation (it never waits), so it is safe to make with the lock held. A
 * connection shutting down needs no verdict; it is left alone. What remains is
 * a shutdown msquic decides (idle timeout) after the test, before our queued
 * operation runs: narrow, and not seen. Observed on 2.5.1 without this test:
 * no crash in 600 connect-and-shutdown cycles with server checks in flight (a
 * late completion mostly finds the handle closed at SHUTDOWN_COMPLETE, which
 * the guard refuses); the test costs nothing, so it stays.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

_Static_assert((int)PMQ_CRED_FLAG_DEFER_CERTIFICATE_VALIDATION == (int)QUIC_CREDENTIAL_FLAG_DEFER_CERTIFICATE_VALIDATION,
               "PMQ_CRED_FLAG_DEFER_CERTIFICATE_VALIDATION must be msquic's value");

#define SHUTTING_DOWN \
    (PMQ_CONN_SHUTDOWN_BY_APP | PMQ_CONN_SHUTDOWN_BY_PEER | PMQ_CONN_SHUTDOWN_BY_TRANSPORT | PMQ_CONN_SHUTDOWN_COMPLETE)

static uint8_t *copy_buffer(const QUIC_BUFFER *buffer, uint32_t *len)
{
    *len = 0;
    if (buffer == NULL || buffer->Length == 0 || buffer->Buffer == NULL) {
        return NULL;
    }
    uint8_t *copy = malloc(buffer->Length);
    if (copy != NULL) {
        memcpy(copy, buffer->Buffer, buffer->Length);
        *len = buffer->Length;
    }
    return copy;
}

void pmq_cert_free(pmq_cert_check *k)
{
    free(k->leaf);
    free(k->chain);
    k->leaf = k->chain = NULL;
    k->leaf_len = k->chain_len = 0;
}

QUIC_STATUS pmq_cert_on_received(pmq_conn *c, QUIC_CONNECTION_EVENT *event)
{
    pmq_obj *obj = pmq_conn_obj(c);
    pmq_cert_check *k = pmq_conn_cert(c);
    pthread_mutex_lock(&obj->lock);
    uint32_t mode = k->mode;
    pthread_mutex_unlock(&obj->lock);
    if (mode == PMQ_CERT_CHECK_OFF) {
        /* msquic checked it itself, and acted on it unless the credential deferred:
         * a deferred failure nobody will look at is a rejection (fail closed). */
        return QUIC_FAILED(event->PEER_CERTIFICATE_RECEIVED.DeferredStatus) ? QUIC_STATUS_BAD_CERTIFICATE
                                                                            : QUIC_STATUS_SUCCESS;
    }
    /* With USE_PORTABLE_CERTIFICATES both are QUIC_BUFFERs of DER. */
    const QUIC_BUFFER *leaf = (const QUIC_BUFFER *)event->PEER_CERTIFICATE_RECEIVED.Certificate;
    if (leaf == NULL || leaf->Length == 0) {
        /* A client that sent no certificate (msquic asks from the handshake's end,
         * where pending is not supported): decided here, without Python. */
        return mode == PMQ_CERT_CHECK_PYTHON_REQUIRE ? QUIC_STATUS_CONNECTION_REFUSED : QUIC_STATUS_SUCCESS;
    }
    if (pmq_conn_flags(c) & PMQ_CONN_ACCEPTED_EARLY) {
        /* Handed to the application already (0-RTT, connection.c): nobody walks
         * its listener's handshakes for it. TLS 1.3 sends no certificate in a
         * PSK handshake, so this never happens; if it did, fail closed. */
        return QUIC_STATUS_BAD_CERTIFICATE;
    }
    uint32_t leaf_len, chain_len;
    uint8_t *leaf_copy = copy_buffer(leaf, &leaf_len);
    uint8_t *chain_copy = copy_buffer((const QUIC_BUFFER *)event->PEER_CERTIFICATE_RECEIVED.Chain, &chain_len);
    if (leaf_copy == NULL) {
        free(chain_copy);
        return QUIC_STATUS_OUT_OF_MEMORY; /* rejects the certificate */
    }
    pthread_mutex_lock(&obj->lock);
    pmq_cert_free(k);
    k->leaf = leaf_copy;
    k->leaf_len = leaf_len;
    k->chain = chain_copy;
    k->chain_len = chain_len;
    k->chain_status = event->PEER_CERTIFICATE_RECEIVED.DeferredStatus;
    k->state = PMQ_CERT_PENDING;
    pmq_obj_changed_locked(obj);
    pthread_mutex_unlock(&obj->lock);
    pmq_conn_notify_owner(c); /* a server connection: its listener's accept runs the check */
    return QUIC_STATUS_PENDING;
}

void pmq_conn_set_cert_check(pmq_conn *c, uint32_t mode)
{
    pmq_obj *obj = pmq_conn_obj(c);
    PMQ_CHECK(obj);
    pthread_mutex_lock(&obj->lock);
    pmq_conn_cert(c)->mode = mode;
    pthread_mutex_unlock(&obj->lock);
}

uint32_t pmq_conn_config_tag(pmq_conn *c)
{
    pmq_obj *obj = pmq_conn_obj(c);
    PMQ_CHECK(obj);
    pthread_mutex_lock(&obj->lock);
    uint32_t tag = pmq_conn_cert(c)->tag;
    pthread_mutex_unlock(&obj->lock);
    return tag;
}

int pmq_conn_cert_take(pmq_conn *c, pmq_cert_taken *out)
{
    pmq_obj *obj = pmq_conn_obj(c);
    PMQ_CHECK(obj);
    pmq_cert_check *k = pmq_conn_cert(c);
    pthread_mutex_lock(&obj->lock);
    if (k->state == PMQ_CERT_PENDING && (pmq_conn_info_ptr(c)->flags & SHUTTING_DOWN)) {
        /* A connection shutting down needs no verdict (completing is skipped anyway):
         * the callable is not run for it, and its copies go now. */
        k->state = PMQ_CERT_DONE;
        pmq_cert_free(k);
    }
    int taken = k->state == PMQ_CERT_PENDING;
    if (taken) {
        k->state = PMQ_CERT_TAKEN;
        out->tag = k->tag;
        out->chain_status = k->chain_status;
        out->leaf = k->leaf;
        out->leaf_len = k->leaf_len;
        out->chain = k->chain;
        out->chain_len = k->chain_len;
        k->leaf = k->chain = NULL; /* the record owns them now */
        k->leaf_len = k->chain_len = 0;
    }
    pthread_mutex_unlock(&obj->lock);
    return taken;
}

void pmq_cert_taken_clear(pmq_cert_taken *taken)
{
    free(taken->leaf);
    free(taken->chain);
    memset(taken, 0, sizeof(*taken));
}

QUIC_STATUS pmq_conn_cert_complete(pmq_conn *c, int accept, uint16_t alert)
{
    pmq_obj *obj = pmq_conn_obj(c);
    PMQ_CHECK(obj);
    pmq_cert_check *k = pmq_conn_cert(c);
    if (!accept && alert > QUIC_TLS_ALERT_CODE_MAX) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    QUIC_STATUS status = QUIC_STATUS_INVALID_STATE;
    pthread_mutex_lock(&obj->lock);
    if (k->state != PMQ_CERT_TAKEN) {
        pthread_mutex_unlock(&obj->lock);
        return status;
    }
    k->state = PMQ_CERT_DONE;
    HQUIC handle = NULL;
    if (!(pmq_conn_info_ptr(c)->flags & SHUTTING_DOWN)) {
        handle = pmq_conn_guard_enter_locked(c);
    }
    if (handle != NULL) {
        /* Under the lock (see the top of this file); it only queues an operation. */
        status = pmq_api->ConnectionCertificateValidationComplete(
            handle, accept ? TRUE : FALSE, accept ? QUIC_TLS_ALERT_CODE_SUCCESS : (QUIC_TLS_ALERT_CODES)alert);
    }
    pthread_mutex_unlock(&obj->lock);
    if (handle != NULL) {
        pmq_conn_guard_leave(c);
    }
    return status;
}

void pmq_conn_cert_done(pmq_conn *c)
{
    PMQ_CHECK(pmq_conn_obj(c));
    pmq_obj_unref(pmq_conn_obj(c));
}
