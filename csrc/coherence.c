/* Sharer directory for blocks that several hosts cache (CXL 3.x back-invalidation flow).
 *
 * Per block: a bit per sharing host and the host holding it modified (-1: none). A write
 * back-invalidates every other sharer in parallel, so the writer waits for the slowest of them; a
 * read of a block another host modified waits for that host's snoop and write-back. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define MAX_HOSTS 64

typedef struct {
    uint64_t key;        /* first field: read by the key table */
    uint64_t sharers;
    int32_t modified_by;
    uint32_t next_free;
} coh_entry;

struct cxl_coherence {
    int32_t n_hosts;
    double bi_ns[MAX_HOSTS];
    double snoop_ns[MAX_HOSTS];
    coh_entry *entries;
    uint32_t n_entries, cap_entries, free_head;   /* free_head: id + 1, 0 when empty */
    cxl_keytab tab;
    cxl_coh_stats st;
};

static inline uint64_t entry_key(const cxl_coherence *c, uint32_t id) { return c->entries[id].key; }

int cxl_coh_new(int32_t n_hosts, const double *bi_ns, const double *snoop_ns, cxl_coherence **out)
{
    if (!out || !bi_ns || !snoop_ns) return cxl_fail(CXL_EINVAL, "coherence: NULL argument");
    if (n_hosts < 1 || n_hosts > MAX_HOSTS)
        return cxl_fail(CXL_EINVAL, "coherence: hosts must be 1..%d, got %d", MAX_HOSTS, n_hosts);
    for (int32_t h = 0; h < n_hosts; h++)
        if (!(bi_ns[h] >= 0) || !(snoop_ns[h] >= 0) || !isfinite(bi_ns[h]) ||
            !isfinite(snoop_ns[h]))
            return cxl_fail(CXL_EINVAL, "coherence: host %d costs must be finite and >= 0", h);
    cxl_coherence *c = calloc(1, sizeof *c);
    if (!c) return cxl_fail(CXL_ENOMEM, "coherence: out of memory");
    c->n_hosts = n_hosts;
    memcpy(c->bi_ns, bi_ns, (size_t)n_hosts * sizeof *bi_ns);
    memcpy(c->snoop_ns, snoop_ns, (size_t)n_hosts * sizeof *snoop_ns);
    int st = cxl_keytab_init(&c->tab, 64);
    if (st) { free(c); return st; }
    *out = c;
    return CXL_OK;
}

void cxl_coh_free(cxl_coherence *c)
{
    if (!c) return;
    cxl_keytab_destroy(&c->tab);
    free(c->entries);
    free(c);
}

static int check_host(const cxl_coherence *c, int32_t host)
{
    if (host < 0 || host >= c->n_hosts)
        return cxl_fail(CXL_EINVAL, "coherence: host %d out of range 0..%d", host, c->n_hosts - 1);
    return CXL_OK;
}

static coh_entry *find(cxl_coherence *c, uint64_t key)
{
    uint32_t id;
    CXL_KEYTAB_FIND(&c->tab, key, entry_key, c, id);
    return id == CXL_KEYTAB_MISS ? NULL : &c->entries[id];
}

static int find_or_add(cxl_coherence *c, uint64_t key, coh_entry **out)
{
    coh_entry *e = find(c, key);
    if (e) { *out = e; return CXL_OK; }
    uint32_t id;
    if (c->free_head) {
        id = c->free_head - 1;
        c->free_head = c->entries[id].next_free;
    } else {
        if (c->n_entries == c->cap_entries) {
            uint32_t ncap = c->cap_entries ? c->cap_entries * 2 : 64;
            coh_entry *p = realloc(c->entries, (size_t)ncap * sizeof *p);
            if (!p) return cxl_fail(CXL_ENOMEM, "coherence: out of memory");
            c->entries = p;
            c->cap_entries = ncap;
        }
        id = c->n_entries++;
    }
    c->entries[id] = (coh_entry){key, 0, -1, 0};
    int st = cxl_keytab_add(&c->tab, key, id);
    if (st) return st;
    c->st.tracked++;
    *out = &c->entries[id];
    return CXL_OK;
}

int cxl_coh_read(cxl_coherence *c, uint64_t key, int32_t host, double *extra_ns)
{
    if (!c || !extra_ns) return cxl_fail(CXL_EINVAL, "coherence: NULL argument");
    int st = check_host(c, host);
    if (st) return st;
    coh_entry *e;
    if ((st = find_or_add(c, key, &e))) return st;
    double cost = 0;
    if (e->modified_by >= 0 && e->modified_by != host) {
        /* the modifier writes the data back and keeps a shared copy */
        cost = c->snoop_ns[e->modified_by];
        e->modified_by = -1;
        c->st.snoops++;
        c->st.snoop_ns += cost;
    }
    e->sharers |= 1ULL << host;
    c->st.reads++;
    *extra_ns = cost;
    return CXL_OK;
}

int cxl_coh_write(cxl_coherence *c, uint64_t key, int32_t host, double *extra_ns)
{
    if (!c || !extra_ns) return cxl_fail(CXL_EINVAL, "coherence: NULL argument");
    int st = check_host(c, host);
    if (st) return st;
    coh_entry *e;
    if ((st = find_or_add(c, key, &e))) return st;
    uint64_t others = e->sharers & ~(1ULL << host);
    if (e->modified_by >= 0 && e->modified_by != host) others |= 1ULL << e->modified_by;
    double cost = 0;
    int n = 0;
    for (int32_t h = 0; h < c->n_hosts; h++) {
        if (!(others >> h & 1)) continue;
        n++;
        if (c->bi_ns[h] > cost) cost = c->bi_ns[h];   /* invalidations go out in parallel */
    }
    if (n) {
        c->st.invalidations += (uint64_t)n;
        c->st.bi_events++;
        c->st.bi_ns += cost;
    }
    e->sharers = 1ULL << host;
    e->modified_by = host;
    c->st.writes++;
    *extra_ns = cost;
    return CXL_OK;
}

int cxl_coh_drop(cxl_coherence *c, uint64_t key, int32_t host)
{
    if (!c) return cxl_fail(CXL_EINVAL, "coherence: NULL argument");
    int st = check_host(c, host);
    if (st) return st;
    coh_entry *e = find(c, key);
    if (!e) return cxl_fail(CXL_ENOTFOUND, "coherence: block %llu is not tracked",
                            (unsigned long long)key);
    e->sharers &= ~(1ULL << host);
    if (e->modified_by == host) e->modified_by = -1;   /* a dirty copy is written back on drop */
    return CXL_OK;
}

int cxl_coh_forget(cxl_coherence *c, uint64_t key)
{
    if (!c) return cxl_fail(CXL_EINVAL, "coherence: NULL argument");
    uint32_t id;
    CXL_KEYTAB_FIND(&c->tab, key, entry_key, c, id);
    if (id == CXL_KEYTAB_MISS)
        return cxl_fail(CXL_ENOTFOUND, "coherence: block %llu is not tracked",
                        (unsigned long long)key);
    cxl_keytab_del(&c->tab, key, id);
    c->entries[id].next_free = c->free_head;
    c->free_head = id + 1;
    c->st.tracked--;
    return CXL_OK;
}

int cxl_coh_state(cxl_coherence *c, uint64_t key, uint64_t *sharers, int32_t *modified_by)
{
    if (!c || !sharers || !modified_by) return cxl_fail(CXL_EINVAL, "coherence: NULL argument");
    coh_entry *e = find(c, key);
    if (!e) return cxl_fail(CXL_ENOTFOUND, "coherence: block %llu is not tracked",
                            (unsigned long long)key);
    *sharers = e->sharers;
    *modified_by = e->modified_by;
    return CXL_OK;
}

void cxl_coh_stats_get(cxl_coherence *c, cxl_coh_stats *out)
{
    if (c && out) *out = c->st;
}
