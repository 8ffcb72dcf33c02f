/* Helpers shared by the core's translation units; not part of the public API. */
#ifndef CXLSIM_INTERNAL_H
#define CXLSIM_INTERNAL_H
#include "cxlsim.h"

/* Record the message for cxl_last_error() and return the status, so callers can write
 * `return cxl_fail(CXL_EINVAL, "...", ...);`. */
int cxl_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Open-addressing table from a 64-bit key to a record id. The keys themselves live in the
 * records (first field of each record, `stride` bytes apart), so a slot costs 4 bytes. */
typedef struct {
    uint32_t *slots;   /* record id + 1; 0 marks an empty slot */
    uint64_t mask;     /* capacity - 1, capacity a power of two */
    int64_t count;
} cxl_keytab;

#define CXL_KEYTAB_MISS UINT32_MAX

int cxl_keytab_init(cxl_keytab *t, uint64_t capacity);
void cxl_keytab_destroy(cxl_keytab *t);
/* The record id holding key, or CXL_KEYTAB_MISS. `key_of(ctx, id)` reads a record's key. */
typedef uint64_t (*cxl_key_of)(const void *ctx, uint32_t id);
uint32_t cxl_keytab_find(const cxl_keytab *t, uint64_t key, cxl_key_of key_of, const void *ctx);
int cxl_keytab_add(cxl_keytab *t, uint64_t key, uint32_t id, cxl_key_of key_of, const void *ctx);
void cxl_keytab_del(cxl_keytab *t, uint64_t key, cxl_key_of key_of, const void *ctx);

static inline uint64_t cxl_mix64(uint64_t x)
{
    /* splitmix64 finalizer: trace keys may be small consecutive integers */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}
#endif
