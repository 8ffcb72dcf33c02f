/* Linear-probing hash table of record ids: the rare, out-of-line parts. add, del and find are
 * inline in internal.h, where the table is described. */
#include <stdlib.h>
#include "internal.h"

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

int cxl_keytab_grow(cxl_keytab *t)
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
        if (old[j]) cxl_keytab_put(t, old[j]);
    free(old);
    return CXL_OK;
}
