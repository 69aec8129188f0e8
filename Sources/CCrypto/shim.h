#ifndef PORTFORWARD_CCRYPTO_SHIM_H
#define PORTFORWARD_CCRYPTO_SHIM_H
/* Only the digest API: the WebSocket accept key is SHA-1 (RFC 6455 section 4.2.2). EVP_Digest rather
   than SHA1(), which OpenSSL 3 keeps only for compatibility. */
#include <openssl/evp.h>
#endif
