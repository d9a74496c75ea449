/*
 * Certificates chosen by server name: a listener's small table of names, each
 * with its own configuration (one credential each, the same ALPN and settings),
 * looked up in NEW_CONNECTION from the ClientHello's server name, in C. Names
 * are ASCII (IDNA-encoded by Python) and compared case-insensitively; an entry
 * "*.example.com" matches exactly one more label ("a.example.com", not
 * "example.com" nor "a.b.example.com"). Exact names win over wildcards.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

QUIC_STATUS pmq_sni_add(pmq_sni_table *t, const char *name, HQUIC configuration, uint32_t tag, uint32_t cert_mode)
{
    size_t len = strlen(name);
    if (len == 0 || len > 255 || configuration == NULL) {
        return QUIC_STATUS_INVALID_PARAMETER;
    }
    pmq_sni_entry *entries = realloc(t->entries, (t->count + 1) * sizeof(*entries));
    if (entries == NULL) {
        return QUIC_STATUS_OUT_OF_MEMORY;
    }
    t->entries = entries;
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        return QUIC_STATUS_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i <= len; i++) {
        char ch = name[i];
        copy[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    pmq_sni_entry *e = &t->entries[t->count++];
    e->name = copy;
    e->len = len;
    e->configuration = configuration;
    e->tag = tag;
    e->cert_mode = cert_mode;
    return QUIC_STATUS_SUCCESS;
}

const pmq_sni_entry *pmq_sni_lookup(const pmq_sni_table *t, const char *name, size_t len)
{
    if (name == NULL || len == 0) {
        return NULL;
    }
    if (name[len - 1] == '.') {
        len--; /* a fully qualified name: the same host */
    }
    const pmq_sni_entry *wildcard = NULL;
    const char *dot = memchr(name, '.', len);
    for (size_t i = 0; i < t->count; i++) {
        const pmq_sni_entry *e = &t->entries[i];
        if (e->len == len && strncasecmp(e->name, name, len) == 0) {
            return e;
        }
        /* "*.rest" against "label.rest": the label must be non-empty. */
        if (wildcard == NULL && dot != NULL && dot != name && e->len >= 2 && e->name[0] == '*' &&
            e->name[1] == '.' && e->len - 1 == len - (size_t)(dot - name) &&
            strncasecmp(e->name + 1, dot, e->len - 1) == 0) {
            wildcard = e;
        }
    }
    return wildcard;
}

void pmq_sni_free(pmq_sni_table *t)
{
    for (size_t i = 0; i < t->count; i++) {
        free(t->entries[i].name);
    }
    free(t->entries);
    memset(t, 0, sizeof(*t));
}
