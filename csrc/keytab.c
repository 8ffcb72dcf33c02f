/* Linear-probing hash table of record ids (see internal.h). Load stays under 4/5; deletion shifts
 * later entries back (no tombstones), so probe chains stay short. */
#include <stdlib.h>
#include "internal.h"

#define HASH_OF(s) ((uint32_t)((s) >> 32))

int cxl_keytab_init(cxl_keytab *t, uint64_t min_entries)
{
    uint64_t cap = 16;
    while (cap * 2 < min_entries * 3) cap <<= 1;
    t->slots = cxl_alloc_big(cap * sizeof *t->slots);
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

static void put(cxl_keytab *t, uint64_t slot)
{
    uint64_t i = HASH_OF(slot) & t->mask;
    while (t->slots[i]) i = (i + 1) & t->mask;
    t->slots[i] = slot;
    t->count++;
}

static int grow(cxl_keytab *t)
{
    uint64_t old_cap = t->mask + 1;
    uint64_t *old = t->slots;
    uint64_t *fresh = cxl_alloc_big(old_cap * 2 * sizeof *fresh);
    if (!fresh) return cxl_fail(CXL_ENOMEM, "keytab: cannot grow to %llu slots",
                                (unsigned long long)(old_cap * 2));
    t->slots = fresh;
    t->mask = old_cap * 2 - 1;
    t->count = 0;
    for (uint64_t j = 0; j < old_cap; j++)
        if (old[j]) put(t, old[j]);
    free(old);
    return CXL_OK;
}

int cxl_keytab_add(cxl_keytab *t, uint64_t key, uint32_t id)
{
    if ((uint64_t)(t->count + 1) * 3 > (t->mask + 1) * 2) {
        int st = grow(t);
        if (st) return st;
    }
    put(t, ((uint64_t)(uint32_t)cxl_mix64(key) << 32) | (uint64_t)(id + 1));
    return CXL_OK;
}

void cxl_keytab_del(cxl_keytab *t, uint64_t key, uint32_t id)
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
        uint64_t home = HASH_OF(s) & t->mask;
        int between = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!between) { t->slots[i] = s; i = j; }
    }
    t->slots[i] = 0;
    t->count--;
}
