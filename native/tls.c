/*
 * TLS key log, QUIC versions and handshake facts (issue 10, items 3 and 6).
 *
 * Key log: a connection with a key log owns a QUIC_TLS_SECRETS (pmq_tls)
 * that msquic fills during the handshake (QUIC_PARAM_CONN_TLS_SECRETS). At
 * CONNECTED the lines are formatted here, on msquic's worker (no Python), and
 * written with one write() on a descriptor opened O_APPEND: lines of
 * concurrent connections never interleave, also between processes appending
 * to one file. msquic keeps the pointer until the 1-RTT keys are installed
 * (and, on a client, until it read the ClientRandom from its first flight);
 * pmq_tls is freed with the connection's memory, after ConnectionClose, so it
 * outlives every write. A failure to write is counted on the key log (Python
 * logs it) and never touches the connection.
 *
 * msquic 2.5.1's version settings are a preview feature: this file alone
 * enables the preview declarations. It uses only GetParam/SetParam, whose
 * places in the API table the preview slots (at its end) do not move.
 */
#define QUIC_API_ENABLE_PREVIEW_FEATURES 1

#include <arpa/inet.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* ---- key log files ----------------------------------------------------------- */

struct pmq_keylog {
    atomic_int refs;
    int fd;
    atomic_ullong written;   /* connections logged */
    atomic_ullong failures;  /* connections whose lines could not be written */
    atomic_int last_errno;
};

pmq_keylog *pmq_keylog_new(int fd)
{
    pmq_keylog *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        return NULL;
    }
    atomic_init(&k->refs, 1);
    k->fd = fd;
    return k;
}

void pmq_keylog_ref(pmq_keylog *k)
{
    if (k != NULL) {
        atomic_fetch_add(&k->refs, 1);
    }
}

void pmq_keylog_release(pmq_keylog *k)
{
    if (k != NULL && atomic_fetch_sub(&k->refs, 1) == 1) {
        close(k->fd);
        free(k);
    }
}

uint64_t pmq_keylog_failures(pmq_keylog *k, int *last_errno)
{
    if (last_errno != NULL) {
        *last_errno = atomic_load(&k->last_errno);
    }
    return atomic_load(&k->failures);
}

uint64_t pmq_keylog_written(pmq_keylog *k) { return atomic_load(&k->written); }

/* ---- per connection ------------------------------------------------------------ */

struct pmq_tls {
    QUIC_TLS_SECRETS secrets;  /* msquic writes here during the handshake */
    pmq_keylog *keylog;        /* referenced */
    int logged;
};

pmq_tls *pmq_tls_new(pmq_keylog *keylog)
{
    pmq_tls *t = calloc(1, sizeof(*t));
    if (t != NULL) {
        pmq_keylog_ref(keylog);
        t->keylog = keylog;
    }
    return t;
}

void pmq_tls_free(pmq_tls *t)
{
    if (t != NULL) {
        pmq_keylog_release(t->keylog);
        explicit_bzero(&t->secrets, sizeof(t->secrets)); /* a memset before free() is optimised away */
        free(t);
    }
}

static void count_failure(pmq_keylog *k, int err)
{
    atomic_store(&k->last_errno, err);
    atomic_fetch_add(&k->failures, 1);
}

void pmq_keylog_count_failure(pmq_keylog *k, int err)
{
    if (k != NULL) {
        count_failure(k, err);
    }
}

QUIC_STATUS pmq_tls_attach(pmq_tls *t, HQUIC connection)
{
    QUIC_STATUS status =
        pmq_api->SetParam(connection, QUIC_PARAM_CONN_TLS_SECRETS, sizeof(t->secrets), &t->secrets);
    if (QUIC_FAILED(status)) {
        count_failure(t->keylog, (int)status); /* msquic's status is an errno value on Linux */
        t->logged = 1;                          /* nothing will come */
    }
    return status;
}

static char *put_hex(char *p, const uint8_t *bytes, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        *p++ = digits[bytes[i] >> 4];
        *p++ = digits[bytes[i] & 15];
    }
    return p;
}

static char *put_line(char *p, const char *label, const uint8_t *random, const uint8_t *secret, size_t n)
{
    size_t len = strlen(label);
    memcpy(p, label, len);
    p += len;
    *p++ = ' ';
    p = put_hex(p, random, 32);
    *p++ = ' ';
    p = put_hex(p, secret, n);
    *p++ = '\n';
    return p;
}

/* Formats the NSS key log lines of what msquic has set; returns their length. */
static size_t format_lines(const QUIC_TLS_SECRETS *s, char *out)
{
    size_t n = s->SecretLength;
    char *p = out;
    if (!s->IsSet.ClientRandom || n == 0 || n > QUIC_TLS_SECRETS_MAX_SECRET_LEN) {
        return 0;
    }
    if (s->IsSet.ClientEarlyTrafficSecret) {
        p = put_line(p, "CLIENT_EARLY_TRAFFIC_SECRET", s->ClientRandom, s->ClientEarlyTrafficSecret, n);
    }
    if (s->IsSet.ClientHandshakeTrafficSecret) {
        p = put_line(p, "CLIENT_HANDSHAKE_TRAFFIC_SECRET", s->ClientRandom, s->ClientHandshakeTrafficSecret, n);
    }
    if (s->IsSet.ServerHandshakeTrafficSecret) {
        p = put_line(p, "SERVER_HANDSHAKE_TRAFFIC_SECRET", s->ClientRandom, s->ServerHandshakeTrafficSecret, n);
    }
    if (s->IsSet.ClientTrafficSecret0) {
        p = put_line(p, "CLIENT_TRAFFIC_SECRET_0", s->ClientRandom, s->ClientTrafficSecret0, n);
    }
    if (s->IsSet.ServerTrafficSecret0) {
        p = put_line(p, "SERVER_TRAFFIC_SECRET_0", s->ClientRandom, s->ServerTrafficSecret0, n);
    }
    return (size_t)(p - out);
}

/* Longest label + space + 64 hex + space + 128 hex + newline, five lines. */
#define LINE_MAX_LEN (31 + 1 + 64 + 1 + 2 * QUIC_TLS_SECRETS_MAX_SECRET_LEN + 1)

void pmq_tls_write(pmq_tls *t)
{
    if (t == NULL || t->logged || t->keylog == NULL) {
        return;
    }
    char buf[5 * LINE_MAX_LEN];
    size_t len = format_lines(&t->secrets, buf);
    if (len == 0) {
        return;  /* nothing usable (yet): a handshake that failed early */
    }
    t->logged = 1;
    /* Formatted: the secrets need not stay in memory for the connection's life
     * (msquic sets none after the handshake; pmq_tls_connected read IsSet before). */
    explicit_bzero(&t->secrets, sizeof(t->secrets));
    /* One write(): O_APPEND places it whole at the end (a regular file's
     * writes are serialised by the kernel), so connections never interleave. */
    ssize_t done;
    do {
        done = write(t->keylog->fd, buf, len);
    } while (done < 0 && errno == EINTR);
    int err = done < 0 ? errno : (size_t)done != len ? EIO : 0;
    if (done > 0 && (size_t)done != len) {
        /* Short (a full disk, a file size limit): end the broken line, so the
         * next connection's lines start on their own; if it fails, nothing more to do. */
        ssize_t ignored;
        do {
            ignored = write(t->keylog->fd, "\n", 1);
        } while (ignored < 0 && errno == EINTR);
    }
    explicit_bzero(buf, sizeof(buf));
    if (err != 0) {
        count_failure(t->keylog, err);
    } else {
        atomic_fetch_add(&t->keylog->written, 1);
    }
}

void pmq_tls_connected(pmq_tls *t)
{
    if (t == NULL || t->logged || t->keylog == NULL) {
        return;
    }
    /* A handshake that completed has its 1-RTT secrets, unless msquic did not
     * hand them over: after a Version Negotiation packet a client restarts its
     * handshake with a new TLS context, copying the connection's secrets
     * pointer, which msquic 2.5.1 already cleared (crypto.c, once it read the
     * first ClientRandom). Write what there is, and count the missing lines
     * as a failure (ENODATA: Python says why) rather than log nothing silently. */
    int missing = !t->secrets.IsSet.ClientTrafficSecret0;
    pmq_tls_write(t);
    if (missing) {
        t->logged = 1;
        count_failure(t->keylog, ENODATA);
    }
}

/* ---- handshake facts ------------------------------------------------------------- */

void pmq_handshake_info_read(HQUIC connection, pmq_handshake_info *out)
{
    memset(out, 0, sizeof(*out));
    uint32_t version = 0;
    uint32_t size = sizeof(version);
    if (QUIC_SUCCEEDED(pmq_api->GetParam(connection, QUIC_PARAM_CONN_QUIC_VERSION, &size, &version))) {
        out->quic_version = version;  /* host order: msquic swaps it back */
    }
    QUIC_HANDSHAKE_INFO info;
    memset(&info, 0, sizeof(info));
    size = sizeof(info);
    if (QUIC_SUCCEEDED(pmq_api->GetParam(connection, QUIC_PARAM_TLS_HANDSHAKE_INFO, &size, &info))) {
        out->tls_version = (uint32_t)info.TlsProtocolVersion;
        out->cipher_suite = (uint32_t)info.CipherSuite;
        out->tls_group = (uint32_t)info.TlsGroup;
        out->known = 1;
    }
}

/* ---- versions --------------------------------------------------------------------- */

#define MAX_VERSIONS 16

static QUIC_STATUS set_versions(HQUIC handle, uint32_t param, const uint32_t *versions, uint32_t count)
{
    if (count > MAX_VERSIONS) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    /* One list for all three roles, as msquic's docs require of clients and of
     * servers outside a fleet's rollout. Empty lists restore msquic's defaults. */
    QUIC_VERSION_SETTINGS vs;
    memset(&vs, 0, sizeof(vs));
    vs.AcceptableVersions = versions;
    vs.OfferedVersions = versions;
    vs.FullyDeployedVersions = versions;
    vs.AcceptableVersionsLength = count;
    vs.OfferedVersionsLength = count;
    vs.FullyDeployedVersionsLength = count;
    return pmq_api->SetParam(handle, param, sizeof(vs), &vs);
}

static QUIC_STATUS get_versions(HQUIC handle, uint32_t param, uint32_t *out, uint32_t *count)
{
    struct {
        QUIC_VERSION_SETTINGS vs;
        uint32_t lists[3 * MAX_VERSIONS];
    } buf;
    memset(&buf, 0, sizeof(buf));
    uint32_t size = sizeof(buf);
    QUIC_STATUS status = pmq_api->GetParam(handle, param, &size, &buf);
    if (QUIC_FAILED(status)) {
        return status;
    }
    uint32_t n = buf.vs.FullyDeployedVersionsLength;
    if (n > *count) {
        return QUIC_STATUS_BUFFER_TOO_SMALL;
    }
    for (uint32_t i = 0; i < n; i++) {
        /* msquic 2.5.1 keeps the lists in network order and hands them back unswapped. */
        out[i] = ntohl(buf.vs.FullyDeployedVersions[i]);
    }
    *count = n;
    return status;
}

QUIC_STATUS pmq_configuration_set_versions(HQUIC configuration, const uint32_t *versions, uint32_t count)
{
    return set_versions(configuration, QUIC_PARAM_CONFIGURATION_VERSION_SETTINGS, versions, count);
}

QUIC_STATUS pmq_configuration_get_versions(HQUIC configuration, uint32_t *out, uint32_t *count)
{
    return get_versions(configuration, QUIC_PARAM_CONFIGURATION_VERSION_SETTINGS, out, count);
}

QUIC_STATUS pmq_global_set_versions(const uint32_t *versions, uint32_t count)
{
    if (pmq_api == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    return set_versions(NULL, QUIC_PARAM_GLOBAL_VERSION_SETTINGS, versions, count);
}

QUIC_STATUS pmq_global_get_versions(uint32_t *out, uint32_t *count)
{
    if (pmq_api == NULL) {
        return QUIC_STATUS_INVALID_STATE;
    }
    return get_versions(NULL, QUIC_PARAM_GLOBAL_VERSION_SETTINGS, out, count);
}
