#ifndef CCRYPTO_SHIM_H
#define CCRYPTO_SHIM_H
/* The low-level SHA-256 API is deprecated in OpenSSL 3 but is the fastest path for
   the many 33- and 65-byte inputs Merkle hashing makes (no provider lookup, no heap
   context). It is wrapped here so Swift sees no deprecation warnings. */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/rand.h>
#include <openssl/err.h>
#include <openssl/hmac.h>

static inline int CCrypto_SHA256_Init(SHA256_CTX *c) { return SHA256_Init(c); }
static inline int CCrypto_SHA256_Update(SHA256_CTX *c, const void *data, size_t len) {
    return SHA256_Update(c, data, len);
}
static inline int CCrypto_SHA256_Final(void *md, SHA256_CTX *c) {
    return SHA256_Final((unsigned char *)md, c);
}
static inline int CCrypto_CRYPTO_memcmp(const void *a, const void *b, size_t len) {
    return CRYPTO_memcmp(a, b, len);
}
static inline void CCrypto_OPENSSL_cleanse(void *p, size_t len) { OPENSSL_cleanse(p, len); }
static inline int CCrypto_RAND_bytes(void *buf, int num) { return RAND_bytes((unsigned char *)buf, num); }
/* AES-GCM control codes are macros Swift cannot import as typed constants. */
static inline int CCrypto_GCM_SetTag(EVP_CIPHER_CTX *c, void *tag, int len) {
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, len, tag);
}
static inline int CCrypto_GCM_GetTag(EVP_CIPHER_CTX *c, void *tag, int len) {
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, len, tag);
}
#endif
