#ifndef TETHER_COPENSSL_SHIM_H
#define TETHER_COPENSSL_SHIM_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/bio.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <stdint.h>

// Swift imports OpenSSL's functions but not its function-like macros, nor the SSL_OP_* constants
// built from SSL_OP_BIT. These one-line wrappers expose exactly what TetherTLS uses.

static inline long tether_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) { return SSL_CTX_set_min_proto_version(ctx, version); }
static inline long tether_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) { return SSL_CTX_set_max_proto_version(ctx, version); }
static inline long tether_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
static inline long tether_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_session_cache_mode(ctx, mode); }
static inline long tether_SSL_set_tlsext_host_name(SSL *ssl, const char *name) { return SSL_set_tlsext_host_name(ssl, name); }

static inline uint64_t tether_SSL_OP_NO_TICKET(void) { return SSL_OP_NO_TICKET; }
static inline uint64_t tether_SSL_OP_NO_RENEGOTIATION(void) { return SSL_OP_NO_RENEGOTIATION; }
static inline uint64_t tether_SSL_OP_NO_COMPRESSION(void) { return SSL_OP_NO_COMPRESSION; }
static inline uint64_t tether_SSL_OP_CIPHER_SERVER_PREFERENCE(void) { return SSL_OP_CIPHER_SERVER_PREFERENCE; }

static inline void tether_BIO_set_retry_read(BIO *bio) { BIO_set_retry_read(bio); }
static inline void tether_BIO_clear_retry_flags(BIO *bio) { BIO_clear_retry_flags(bio); }

// Test aid (memory-per-connection measurements): glibc's malloc statistics, which Swift's
// Glibc module does not expose (<malloc.h> is not part of it).
#if defined(__GLIBC__)
#include <malloc.h>
static inline size_t tether_malloc_bytes_in_use(void) { struct mallinfo2 m = mallinfo2(); return m.uordblks + m.hblkhd; }
static inline int tether_malloc_trim(void) { return malloc_trim(0); }
#endif

#endif
