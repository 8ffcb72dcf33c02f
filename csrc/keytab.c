/* Linear-probing hash table of record ids, keyed by the 64-bit key stored in each record.
 * Deletion shifts later entries back (no tombstones), so probe chains stay short. */
#include <stdlib.h>
#include "internal.h"

int cxl_keytab_init(cxl_keytab *t, uint64_t capacity)
{
    uint64_t cap = 16;
    while (cap < capacity) cap <<= 1;
    t->slots = calloc(cap, sizeof *t->slots);
    if (!t->slots) return cxl_fail(CXL_ENOMEM, "keytab: cannot allocate %llu slots",
                                   (unsigned long long)cap);
    t->mask = cap - 1;
    t->count = 0;
    return CXL_OK;
}

void cxl_keytab_destroy(cxl_keytab *t)
{
    free(t->slots);
    t->slots = NULL;
}

uint32_t cxl_keytab_find(const cxl_keytab *t, uint64_t key, cxl_key_of key_of, const void *ctx)
{
    uint64_t i = cxl_mix64(key) & t->mask;
    for (;;) {
        uint32_t s = t->slots[i];
        if (s == 0) return CXL_KEYTAB_MISS;
        if (key_of(ctx, s - 1) == key) return s - 1;
        i = (i + 1) & t->mask;
    }
}

static int grow(cxl_keytab *t, cxl_key_of key_of, const void *ctx)
{
    uint64_t old_cap = t->mask + 1;
    uint32_t *old = t->slots;
    int st = cxl_keytab_init(t, old_cap * 2);
    if (st) { t->slots = old; t->mask = old_cap - 1; return st; }
    for (uint64_t j = 0; j < old_cap; j++) {
        if (!old[j]) continue;
        uint64_t i = cxl_mix64(key_of(ctx, old[j] - 1)) & t->mask;
        while (t->slots[i]) i = (i + 1) & t->mask;
        t->slots[i] = old[j];
        t->count++;
    }
    free(old);
    return CXL_OK;
}

int cxl_keytab_add(cxl_keytab *t, uint64_t key, uint32_t id, cxl_key_of key_of, const void *ctx)
{
    /* keep the load under 3/4 */
    if ((uint64_t)(t->count + 1) * 4 > (t->mask + 1) * 3) {
        int st = grow(t, key_of, ctx);
        if (st) return st;
    }
    uint64_t i = cxl_mix64(key) & t->mask;
    while (t->slots[i]) i = (i + 1) & t->mask;
    t->slots[i] = id + 1;
    t->count++;
    return CXL_OK;
}

void cxl_keytab_del(cxl_keytab *t, uint64_t key, cxl_key_of key_of, const void *ctx)
{
    uint64_t i = cxl_mix64(key) & t->mask;
    for (;;) {
        uint32_t s = t->slots[i];
        if (s == 0) return;
        if (key_of(ctx, s - 1) == key) break;
        i = (i + 1) & t->mask;
    }
    /* backward-shift: move up any later entry whose home slot does not lie in (i, j] */
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & t->mask;
        uint32_t s = t->slots[j];
        if (s == 0) break;
        uint64_t home = cxl_mix64(key_of(ctx, s - 1)) & t->mask;
        int between = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!between) { t->slots[i] = s; i = j; }
    }
    t->slots[i] = 0;
    t->count--;
}
