#ifndef PORTFORWARD_CSSL_SHIM_H
#define PORTFORWARD_CSSL_SHIM_H
/* OpenSSL 3's TLS API, and small inline helpers for what OpenSSL spells as macros (which Swift
   cannot call) or as C callbacks. No I/O here: the TLS target drives SSL objects through memory
   BIOs from the reactor. */
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <string.h>

static inline long pf_ssl_ctx_set_min_tls12(SSL_CTX *ctx) {
    return SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}

/* No renegotiation (a cost a client could ask for at will), no compression (CRIME). */
static inline void pf_ssl_ctx_set_hardening(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
}

static inline int pf_ssl_set_sni(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

static inline size_t pf_bio_pending(BIO *bio) {
    return BIO_ctrl_pending(bio);
}

/* The server's ALPN choice: h2 when the client offers it, else http/1.1 when offered; a client
   that offers neither (or no ALPN at all) goes on without ALPN, and the relay's first-request
   detection decides (kubectl's upgrade connections offer none). */
static const unsigned char pf_alpn_server_protocols[] = "\x02h2\x08http/1.1";

static inline int pf_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                 const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl; (void)arg;
    unsigned char *chosen = NULL;
    unsigned char chosenLength = 0;
    if (SSL_select_next_proto(&chosen, &chosenLength, pf_alpn_server_protocols,
                              sizeof(pf_alpn_server_protocols) - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    *out = chosen;
    *outlen = chosenLength;
    return SSL_TLSEXT_ERR_OK;
}

static inline void pf_ssl_ctx_server_alpn(SSL_CTX *ctx) {
    SSL_CTX_set_alpn_select_cb(ctx, pf_alpn_select, NULL);
}

/* The client offers h2 only: it speaks HTTP/2 with prior knowledge over TLS. */
static inline int pf_ssl_ctx_client_alpn_h2(SSL_CTX *ctx) {
    static const unsigned char protocols[] = "\x02h2";
    return SSL_CTX_set_alpn_protos(ctx, protocols, sizeof(protocols) - 1);
}

/* The protocol ALPN chose, copied into `out` (at most `capacity` - 1 bytes); 0 when none. */
static inline int pf_ssl_alpn(const SSL *ssl, char *out, int capacity) {
    const unsigned char *data = NULL;
    unsigned int length = 0;
    SSL_get0_alpn_selected(ssl, &data, &length);
    if (data == NULL || length == 0 || (int)length >= capacity) { out[0] = 0; return 0; }
    memcpy(out, data, length);
    out[length] = 0;
    return (int)length;
}

/* The UTF-8 text of the index-th entry of `nid` in the subject of `cert`, and its length in bytes
   (which counts any NUL inside it: the caller takes that many bytes, not a C string); -1 when there
   is no such entry or it cannot be converted, -2 when it does not fit in `capacity`. */
static inline int pf_x509_subject_text(X509 *cert, int nid, int index, char *out, int capacity) {
    X509_NAME *name = X509_get_subject_name(cert);
    int position = -1;
    for (int found = 0; ; found++) {
        position = X509_NAME_get_index_by_NID(name, nid, position);
        if (position < 0) return -1;
        if (found == index) break;
    }
    X509_NAME_ENTRY *entry = X509_NAME_get_entry(name, position);
    unsigned char *text = NULL;
    int length = ASN1_STRING_to_UTF8(&text, X509_NAME_ENTRY_get_data(entry));
    if (length < 0) return -1;
    if (length >= capacity) { OPENSSL_free(text); return -2; }
    memcpy(out, text, (size_t)length);
    out[length] = 0;
    OPENSSL_free(text);
    return length;
}
#endif
