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

/* The server's ALPN choice: portforward-h2 (our client's name for HTTP/2 carrying our
   port-forward protocol, which only our relay and gateway speak: a Kubernetes API server agrees
   to h2 for its API but port-forwards only after an HTTP/1.1 upgrade) when the client offers it,
   else h2, else http/1.1; a client that offers none of them (or no ALPN at all) goes on without
   ALPN, and the relay's first-request detection decides (kubectl's upgrade connections offer
   none). */
static const unsigned char pf_alpn_server_protocols[] = "\x0eportforward-h2\x02h2\x08http/1.1";

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
/* A certificate after the leaf in a client certificate held in memory (the context takes it). */
static inline long pf_ssl_ctx_add_extra_chain_cert(SSL_CTX *ctx, X509 *certificate) {
    return SSL_CTX_add_extra_chain_cert(ctx, certificate);
}


/* The span BIO: OpenSSL's ciphertext I/O straight from and to the reactor's pooled buffers, where
   memory BIOs would copy it into and out of memory of their own. `input` is the unread rest of
   a buffer the reactor received from the socket; `output` the free room of the buffer the pump
   will write to the socket. Each side says "retry" when it is empty (input) or full (output): the
   pump then gives it the next buffer, and OpenSSL's call is made again. The state belongs to the
   pump (TLSConnection), which outlives the BIO. */
typedef struct {
    const unsigned char *input;
    size_t inputCount;
    unsigned char *output;
    size_t outputCount;
    size_t outputCapacity;
    /* KeyUpdate messages the peer sent (TLS 1.3), counted by pf_count_key_updates; past
       keyUpdateLimit the BIO gives OpenSSL no more input, so a flood of them (each costs a key
       derivation) stops within the limit, not at the end of the buffer. */
    unsigned long keyUpdates;
    unsigned long keyUpdateLimit;
} pf_span_state;

static int pf_span_read(BIO *bio, char *out, size_t wanted, size_t *done) {
    pf_span_state *state = (pf_span_state *)BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (state->inputCount == 0 || state->keyUpdates > state->keyUpdateLimit) {
        BIO_set_retry_read(bio);
        *done = 0;
        return 0;
    }
    size_t count = wanted < state->inputCount ? wanted : state->inputCount;
    memcpy(out, state->input, count);
    state->input += count;
    state->inputCount -= count;
    *done = count;
    return 1;
}

static int pf_span_write(BIO *bio, const char *in, size_t length, size_t *done) {
    pf_span_state *state = (pf_span_state *)BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    size_t room = state->output == NULL ? 0 : state->outputCapacity - state->outputCount;
    if (room == 0) {
        BIO_set_retry_write(bio);
        *done = 0;
        return 0;
    }
    size_t count = length < room ? length : room;
    memcpy(state->output + state->outputCount, in, count);
    state->outputCount += count;
    *done = count;
    return 1;
}

static long pf_span_ctrl(BIO *bio, int command, long number, void *pointer) {
    (void)number; (void)pointer;
    pf_span_state *state = (pf_span_state *)BIO_get_data(bio);
    switch (command) {
    case BIO_CTRL_FLUSH: return 1;              /* the pump sends what is in `output` */
    case BIO_CTRL_PENDING: return (long)state->inputCount;
    case BIO_CTRL_WPENDING: return (long)state->outputCount;
    default: return 0;
    }
}

static int pf_span_create(BIO *bio) {
    BIO_set_init(bio, 1);
    return 1;
}

/* One method for every span BIO of the process (made once by the TLS target). */
static inline BIO_METHOD *pf_span_method_new(void) {
    BIO_METHOD *method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "portforward span");
    if (method == NULL) return NULL;
    BIO_meth_set_read_ex(method, pf_span_read);
    BIO_meth_set_write_ex(method, pf_span_write);
    BIO_meth_set_ctrl(method, pf_span_ctrl);
    BIO_meth_set_create(method, pf_span_create);
    return method;
}

static inline BIO *pf_span_bio(BIO_METHOD *method, pf_span_state *state) {
    BIO *bio = BIO_new(method);
    if (bio != NULL) BIO_set_data(bio, state);
    return bio;
}

/* The pump's modes: records read ahead (fewer, larger reads from the span BIO); with
   `releaseBuffers`, OpenSSL frees its record buffers whenever they are empty (an idle
   connection then holds none). */
/* The message callback that counts the peer's KeyUpdate messages into the span state. */
static void pf_count_key_updates(int write_p, int version, int content_type, const void *buf, size_t len,
                                 SSL *ssl, void *arg) {
    (void)version; (void)ssl;
    if (write_p == 0 && content_type == SSL3_RT_HANDSHAKE && len > 0
        && ((const unsigned char *)buf)[0] == SSL3_MT_KEY_UPDATE) {
        ((pf_span_state *)arg)->keyUpdates += 1;
    }
}

static inline void pf_ssl_count_key_updates(SSL *ssl, pf_span_state *state) {
    SSL_set_msg_callback(ssl, pf_count_key_updates);
    SSL_set_msg_callback_arg(ssl, state);
}

static inline void pf_ssl_pump_modes(SSL *ssl, int releaseBuffers) {
    SSL_set_read_ahead(ssl, 1);
    if (releaseBuffers) SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
}
#endif
