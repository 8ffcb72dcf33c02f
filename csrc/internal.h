/* Helpers shared by the core's translation units; not part of the public API. */
#ifndef CXLSIM_INTERNAL_H
#define CXLSIM_INTERNAL_H
#include "cxlsim.h"

/* Record the message for cxl_last_error() and return the status, so callers can write
 * `return cxl_fail(CXL_EINVAL, "...", ...);`. */
int cxl_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Zeroed allocation for large, randomly probed arrays (the key table): 2 MiB aligned and advised
 * for transparent huge pages, since random probes over many 4 KiB pages miss the TLB as often as
 * the cache. Sizes at or above 2 MiB are rounded up to whole huge pages. Free with free(). */
void *cxl_alloc_big(size_t bytes);

static inline uint64_t cxl_mix64(uint64_t x)
{
    /* splitmix64 finalizer: trace keys may be small consecutive integers */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* Open-addressing table from a 64-bit key to a record id. A slot is 8 bytes: the low 32 bits of
 * the key's hash (which also give its home slot) and the record id + 1, so probing, deleting and
 * growing never touch the records; only a hash match reads the record's key (its first field). */
typedef struct {
    uint64_t *slots;   /* (hash32 << 32) | (id + 1); 0 marks an empty slot */
    uint64_t mask;     /* capacity - 1, capacity a power of two */
    int64_t count;
} cxl_keytab;

#define CXL_KEYTAB_MISS UINT32_MAX

int cxl_keytab_init(cxl_keytab *t, uint64_t min_entries);
void cxl_keytab_destroy(cxl_keytab *t);
/* Double the capacity (out of line: rare). */
int cxl_keytab_grow(cxl_keytab *t);

/* add and del are inline: the access loop calls them once per miss */
static inline void cxl_keytab_put(cxl_keytab *t, uint64_t slot)
{
    uint64_t i = (slot >> 32) & t->mask;
    while (t->slots[i]) i = (i + 1) & t->mask;
    t->slots[i] = slot;
    t->count++;
}

static inline int cxl_keytab_add(cxl_keytab *t, uint64_t key, uint32_t id)
{
    if ((uint64_t)(t->count + 1) * 3 > (t->mask + 1) * 2) {
        int st = cxl_keytab_grow(t);
        if (st) return st;
    }
    cxl_keytab_put(t, ((uint64_t)(uint32_t)cxl_mix64(key) << 32) | (uint64_t)(id + 1));
    return CXL_OK;
}

/* Remove the slot that maps to record id (which holds key). Linear probing keeps load under 2/3;
 * deletion shifts later entries back (no tombstones), so probe chains stay short. */
static inline void cxl_keytab_del(cxl_keytab *t, uint64_t key, uint32_t id)
{
    uint64_t i = (uint32_t)cxl_mix64(key) & t->mask;
    while (t->slots[i] && (uint32_t)t->slots[i] != id + 1) i = (i + 1) & t->mask;
    if (!t->slots[i]) return;
    /* backward shift: move up any later entry whose home slot does not lie in (i, j] */
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & t->mask;
        uint64_t s = t->slots[j];
        if (!s) break;
        uint64_t home = (s >> 32) & t->mask;
        int between = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!between) { t->slots[i] = s; i = j; }
    }
    t->slots[i] = 0;
    t->count--;
}

static inline void cxl_keytab_prefetch(const cxl_keytab *t, uint64_t key)
{
    __builtin_prefetch(&t->slots[cxl_mix64(key) & t->mask]);
}

/* Record id holding key, or CXL_KEYTAB_MISS; key_of reads a record's key (inlined by callers). */
#define CXL_KEYTAB_FIND(t, key, key_of, ctx, out)                                   \
    do {                                                                          \
        uint64_t h_ = cxl_mix64(key), i_ = h_ & (t)->mask;                        \
        uint32_t tag_ = (uint32_t)h_;                                             \
        (out) = CXL_KEYTAB_MISS;                                                  \
        for (;;) {                                                                \
            uint64_t s_ = (t)->slots[i_];                                         \
            if (!s_) break;                                                       \
            if ((uint32_t)(s_ >> 32) == tag_ &&                                   \
                key_of((ctx), (uint32_t)s_ - 1) == (key)) {                       \
                (out) = (uint32_t)s_ - 1;                                         \
                break;                                                            \
            }                                                                     \
            i_ = (i_ + 1) & (t)->mask;                                            \
        }                                                                         \
    } while (0)
#endif
