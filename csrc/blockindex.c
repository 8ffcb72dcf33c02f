/* KV block index: 64-bit block key -> record, with per-tier capacity and eviction orderings.
 *
 * Records are 32 bytes in 64-byte-aligned, fixed-size chunks (growth never copies or doubles
 * memory, and a record never straddles two cache lines). The rarely used sharer masks live in a
 * small side map holding only the non-zero ones. The key table holds 8-byte slots (hash tag,
 * record id). Every tier keeps one ordering:
 *   LRU, FIFO, SIEVE  a doubly linked list, newest at head, victims looked for from the tail;
 *   LFU               a binary min-heap on (freq, last access);
 *   S3-FIFO           a small FIFO (10% of the tier), a main FIFO and a FIFO of ghost keys.
 * List links: `next` points toward the tail (older), `prev` toward the head (newer). */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define NIL UINT32_MAX
#define CHUNK_BITS 12   /* 4096 records: rounding up to whole chunks wastes little */
#define CHUNK (1u << CHUNK_BITS)
#define MAX_TIERS 16
#define TIER_GHOST (-2)
#define TIER_FREE (-3)
#define FREQ_MAX 65535u
#define OWNER_NONE 0xff

/* flags */
#define F_SMALL 0x01      /* S3-FIFO: in the small queue (else main) */
#define F_VISITED 0x02    /* SIEVE */
#define F_S3FREQ_SHIFT 2  /* S3-FIFO 2-bit access counter, bits 2-3 */
#define F_S3FREQ_MASK 0x0c

typedef struct {
    uint64_t key;         /* first field: the key table reads it */
    uint32_t prev, next;  /* list links; LFU keeps its heap position in prev */
    uint32_t bytes;
    uint32_t last;        /* access clock at the last access */
    uint16_t freq;        /* accesses since insertion; a ghost keeps its tier here */
    uint16_t refs;
    int8_t tier;
    uint8_t flags;
    uint8_t owner;
    uint8_t shared;       /* the record has a (non-zero) mask in the sharer map */
} rec;

/* 32 bytes: the index promises <= 64 B per block, key table included */
_Static_assert(sizeof(rec) == 32, "a record must stay 32 bytes: half a cache line");

typedef struct { uint32_t head, tail; int64_t n; uint64_t bytes; } list;

/* Sparse record id -> sharer mask, for the few records whose mask is non-zero (the pool's shared
 * blocks). Linear probing like the key table, load kept between 1/8 and 3/4, deletion by backward
 * shift (no tombstones). An empty table holds no array at all. */
typedef struct { uint32_t id1; uint64_t mask; } sharer_slot;   /* id1: record id + 1, 0 = empty */
typedef struct {
    sharer_slot *slots;
    uint64_t cap;      /* 0 or a power of two */
    uint64_t count;
} sharer_map;

typedef struct {
    int32_t ordering;
    uint64_t cap_bytes;   /* 0: no byte limit */
    int64_t cap_blocks;   /* < 0: no block limit */
    uint64_t used_bytes;
    int64_t blocks;
    list main;            /* the tier's list; S3-FIFO's main queue */
    list small;           /* S3-FIFO */
    list ghost;           /* S3-FIFO */
    uint32_t hand;        /* SIEVE */
    uint32_t *heap;       /* LFU */
    int64_t heap_cap;
    uint64_t hits, inserts, evictions;
} tier;

struct cxl_index {
    rec **chunks;
    sharer_map sharers;
    uint32_t n_chunks, cap_chunks;
    uint32_t n_recs;      /* records ever handed out */
    uint32_t free_head;   /* free record list through `next` */
    cxl_keytab tab;
    int32_t n_tiers;
    tier tiers[MAX_TIERS];
    uint32_t clock;
};

static inline rec *R(const cxl_index *x, uint32_t id)
{
    return &x->chunks[id >> CHUNK_BITS][id & (CHUNK - 1)];
}

static inline uint64_t rec_key(const cxl_index *x, uint32_t id) { return R(x, id)->key; }

/* ------------------------------------------------------------------ sharer map */

static inline uint64_t sharer_home(const sharer_map *m, uint32_t id)
{
    return cxl_mix64(id) & (m->cap - 1);
}

/* The slot holding id, or the empty slot where it would go (the table must not be full). */
static uint64_t sharer_slot_of(const sharer_map *m, uint32_t id)
{
    uint64_t i = sharer_home(m, id);
    while (m->slots[i].id1 && m->slots[i].id1 != id + 1) i = (i + 1) & (m->cap - 1);
    return i;
}

static int sharer_resize(sharer_map *m, uint64_t cap)
{
    sharer_slot *fresh = NULL;
    if (cap) {
        fresh = calloc(cap, sizeof *fresh);
        if (!fresh) return cxl_fail(CXL_ENOMEM, "index: out of memory");
    }
    sharer_map old = *m;
    *m = (sharer_map){fresh, cap, old.count};
    for (uint64_t j = 0; j < old.cap; j++)
        if (old.slots[j].id1) m->slots[sharer_slot_of(m, old.slots[j].id1 - 1)] = old.slots[j];
    free(old.slots);
    return CXL_OK;
}

static uint64_t sharer_get(const sharer_map *m, uint32_t id)
{
    if (!m->count) return 0;
    const sharer_slot *s = &m->slots[sharer_slot_of(m, id)];
    return s->id1 ? s->mask : 0;
}

static int sharer_put(sharer_map *m, uint32_t id, uint64_t mask)
{
    if ((m->count + 1) * 4 > m->cap * 3) {
        int st = sharer_resize(m, m->cap ? m->cap * 2 : 16);
        if (st) return st;
    }
    sharer_slot *s = &m->slots[sharer_slot_of(m, id)];
    if (!s->id1) m->count++;
    *s = (sharer_slot){id + 1, mask};
    return CXL_OK;
}

/* cold and out of line: the access loop only calls it for a victim that had sharers */
__attribute__((cold, noinline)) static void sharer_del(sharer_map *m, uint32_t id)
{
    if (!m->count) return;
    uint64_t i = sharer_slot_of(m, id), j = i, cmask = m->cap - 1;
    if (!m->slots[i].id1) return;
    /* backward shift: move up any later entry whose home slot does not lie in (i, j] */
    for (;;) {
        j = (j + 1) & cmask;
        if (!m->slots[j].id1) break;
        uint64_t home = sharer_home(m, m->slots[j].id1 - 1);
        int between = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!between) { m->slots[i] = m->slots[j]; i = j; }
    }
    m->slots[i].id1 = 0;
    m->count--;
    /* give memory back when most masks are gone (a failed shrink just keeps the larger table) */
    if (m->count * 8 < m->cap) sharer_resize(m, m->count ? m->cap / 2 : 0);
}

/* The record stops being a resident block (freed, a ghost, or reused for another key). */
static inline void forget_sharers(cxl_index *x, uint32_t id)
{
    rec *r = R(x, id);
    if (__builtin_expect(r->shared, 0)) {
        sharer_del(&x->sharers, id);
        r->shared = 0;
    }
}

/* ------------------------------------------------------------------ lists */

static void list_push_head(cxl_index *x, list *l, uint32_t id)
{
    rec *r = R(x, id);
    r->prev = NIL;
    r->next = l->head;
    if (l->head != NIL) R(x, l->head)->prev = id; else l->tail = id;
    l->head = id;
    l->n++;
    l->bytes += r->bytes;
}

static void list_unlink(cxl_index *x, list *l, uint32_t id)
{
    rec *r = R(x, id);
    if (r->prev != NIL) R(x, r->prev)->next = r->next; else l->head = r->next;
    if (r->next != NIL) R(x, r->next)->prev = r->prev; else l->tail = r->prev;
    r->prev = r->next = NIL;
    l->n--;
    l->bytes -= r->bytes;
}

/* ------------------------------------------------------------------ LFU heap */

static int lfu_less(const cxl_index *x, uint32_t a, uint32_t b)
{
    const rec *ra = R(x, a), *rb = R(x, b);
    if (ra->freq != rb->freq) return ra->freq < rb->freq;
    return ra->last < rb->last;
}

static void heap_set(cxl_index *x, tier *t, int64_t i, uint32_t id)
{
    t->heap[i] = id;
    R(x, id)->prev = (uint32_t)i;
}

static void heap_up(cxl_index *x, tier *t, int64_t i)
{
    uint32_t id = t->heap[i];
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!lfu_less(x, id, t->heap[p])) break;
        heap_set(x, t, i, t->heap[p]);
        i = p;
    }
    heap_set(x, t, i, id);
}

static void heap_down(cxl_index *x, tier *t, int64_t i)
{
    int64_t n = t->main.n;
    uint32_t id = t->heap[i];
    for (;;) {
        int64_t l = 2 * i + 1, m = l;
        if (l >= n) break;
        if (l + 1 < n && lfu_less(x, t->heap[l + 1], t->heap[l])) m = l + 1;
        if (!lfu_less(x, t->heap[m], id)) break;
        heap_set(x, t, i, t->heap[m]);
        i = m;
    }
    heap_set(x, t, i, id);
}

static int heap_push(cxl_index *x, tier *t, uint32_t id)
{
    if (t->main.n == t->heap_cap) {
        int64_t ncap = t->heap_cap ? t->heap_cap * 2 : 64;
        uint32_t *p = realloc(t->heap, (size_t)ncap * sizeof *p);
        if (!p) return cxl_fail(CXL_ENOMEM, "index: out of memory");
        t->heap = p;
        t->heap_cap = ncap;
    }
    int64_t i = t->main.n++;
    t->main.bytes += R(x, id)->bytes;
    heap_set(x, t, i, id);
    heap_up(x, t, i);
    return CXL_OK;
}

static void heap_remove(cxl_index *x, tier *t, uint32_t id)
{
    int64_t i = R(x, id)->prev;
    int64_t last = --t->main.n;
    t->main.bytes -= R(x, id)->bytes;
    if (i != last) {
        heap_set(x, t, i, t->heap[last]);
        heap_up(x, t, i);
        heap_down(x, t, R(x, t->heap[i])->prev);
    }
    R(x, id)->prev = R(x, id)->next = NIL;
}

/* ------------------------------------------------------------------ records */

static int rec_alloc(cxl_index *x, uint32_t *out)
{
    if (x->free_head != NIL) {
        *out = x->free_head;
        x->free_head = R(x, *out)->next;
        return CXL_OK;
    }
    if (x->n_recs == NIL - 1) return cxl_fail(CXL_ENOMEM, "index: record ids exhausted");
    if ((x->n_recs >> CHUNK_BITS) == x->n_chunks) {
        if (x->n_chunks == x->cap_chunks) {
            uint32_t ncap = x->cap_chunks ? x->cap_chunks * 2 : 16;
            rec **p = realloc(x->chunks, (size_t)ncap * sizeof *p);
            if (!p) return cxl_fail(CXL_ENOMEM, "index: out of memory");
            x->chunks = p;
            x->cap_chunks = ncap;
        }
        /* 64-byte aligned, so each 32-byte record sits in one cache line */
        rec *c = aligned_alloc(64, (size_t)CHUNK * sizeof *c);
        if (!c) return cxl_fail(CXL_ENOMEM, "index: out of memory");
        x->chunks[x->n_chunks++] = c;
    }
    *out = x->n_recs++;
    return CXL_OK;
}

static void rec_release(cxl_index *x, uint32_t id)
{
    rec *r = R(x, id);
    forget_sharers(x, id);
    cxl_keytab_del(&x->tab, r->key, id);
    r->tier = TIER_FREE;
    r->next = x->free_head;
    x->free_head = id;
}

static inline uint32_t find(const cxl_index *x, uint64_t key)
{
    uint32_t id;
    CXL_KEYTAB_FIND(&x->tab, key, rec_key, x, id);
    return id;
}

/* A resident record's id, or NIL for absent keys and ghosts. */
static uint32_t find_resident(const cxl_index *x, uint64_t key)
{
    uint32_t id = find(x, key);
    return (id != CXL_KEYTAB_MISS && R(x, id)->tier >= 0) ? id : NIL;
}

/* ------------------------------------------------------------------ orderings */

static int tier_fits(const tier *t, uint32_t bytes)
{
    if (t->cap_bytes && t->used_bytes + bytes > t->cap_bytes) return 0;
    if (t->cap_blocks >= 0 && t->blocks + 1 > t->cap_blocks) return 0;
    return 1;
}

static int s3_small_over_target(const tier *t)
{
    /* the small queue holds 10% of the tier: by blocks when the tier counts blocks */
    if (t->cap_blocks >= 0) return t->small.n * 10 >= t->cap_blocks;
    return t->small.bytes * 10 >= t->cap_bytes;
}

static void ghost_trim(cxl_index *x, tier *t)
{
    int64_t limit = t->blocks > 0 ? t->blocks : 1;
    while (t->ghost.n > limit) {
        uint32_t g = t->ghost.tail;
        list_unlink(x, &t->ghost, g);
        rec_release(x, g);
    }
}

/* Link a record (already holding key, bytes, tier) into tier ti's ordering. */
static int order_insert(cxl_index *x, int32_t ti, uint32_t id, int to_main)
{
    tier *t = &x->tiers[ti];
    rec *r = R(x, id);
    r->flags = 0;
    switch (t->ordering) {
    case CXL_ORD_LFU:
        return heap_push(x, t, id);
    case CXL_ORD_S3FIFO:
        if (to_main) list_push_head(x, &t->main, id);
        else { r->flags = F_SMALL; list_push_head(x, &t->small, id); }
        return CXL_OK;
    default:
        list_push_head(x, &t->main, id);
        return CXL_OK;
    }
}

static void order_remove(cxl_index *x, int32_t ti, uint32_t id)
{
    tier *t = &x->tiers[ti];
    rec *r = R(x, id);
    switch (t->ordering) {
    case CXL_ORD_LFU:
        heap_remove(x, t, id);
        return;
    case CXL_ORD_S3FIFO:
        list_unlink(x, (r->flags & F_SMALL) ? &t->small : &t->main, id);
        return;
    case CXL_ORD_SIEVE:
        if (t->hand == id) t->hand = r->prev;
        /* fall through */
    default:
        list_unlink(x, &t->main, id);
    }
}

static void order_touch(cxl_index *x, int32_t ti, uint32_t id)
{
    tier *t = &x->tiers[ti];
    rec *r = R(x, id);
    switch (t->ordering) {
    case CXL_ORD_LRU:
        if (t->main.head != id) { list_unlink(x, &t->main, id); list_push_head(x, &t->main, id); }
        return;
    case CXL_ORD_LFU:
        heap_down(x, t, r->prev);   /* freq or last grew: the record can only sink */
        return;
    case CXL_ORD_S3FIFO: {
        uint8_t f = (r->flags & F_S3FREQ_MASK) >> F_S3FREQ_SHIFT;
        if (f < 3) f++;
        r->flags = (uint8_t)((r->flags & ~F_S3FREQ_MASK) | (f << F_S3FREQ_SHIFT));
        return;
    }
    case CXL_ORD_SIEVE:
        r->flags |= F_VISITED;
        return;
    default:
        return;   /* FIFO */
    }
}

/* Smallest unpinned entry of the LFU heap: walk the heap from the root in priority order,
 * descending only below pinned entries (they are few). */
static uint32_t lfu_victim(cxl_index *x, tier *t)
{
    if (!t->main.n) return NIL;
    if (!R(x, t->heap[0])->refs) return t->heap[0];
    int64_t cap = 64, n = 0;
    int64_t *cand = malloc((size_t)cap * sizeof *cand);
    if (!cand) return NIL;
    uint32_t found = NIL;
    cand[n++] = 0;
    while (n) {
        int64_t best = 0;   /* linear pick: the frontier stays small */
        for (int64_t j = 1; j < n; j++)
            if (lfu_less(x, t->heap[cand[j]], t->heap[cand[best]])) best = j;
        int64_t i = cand[best];
        cand[best] = cand[--n];
        if (!R(x, t->heap[i])->refs) { found = t->heap[i]; break; }
        for (int64_t c = 2 * i + 1; c <= 2 * i + 2 && c < t->main.n; c++) {
            if (n == cap) {
                int64_t *p = realloc(cand, (size_t)(cap *= 2) * sizeof *p);
                if (!p) { n = 0; break; }
                cand = p;
            }
            cand[n++] = c;
        }
    }
    free(cand);
    return found;
}

/* Choose the tier's next victim, updating the ordering's own state on the way (S3-FIFO moves
 * between queues, SIEVE clears visited bits and moves its hand). NIL when everything is pinned. */
static uint32_t order_victim(cxl_index *x, int32_t ti)
{
    tier *t = &x->tiers[ti];
    int64_t budget = 3 * t->blocks + 3;   /* enough for every rule to see each block twice */
    switch (t->ordering) {
    case CXL_ORD_LFU:
        return lfu_victim(x, t);
    case CXL_ORD_S3FIFO: {
        int64_t pinned_in_a_row = 0;   /* a full lap of pinned blocks in main: take from small */
        while (budget-- > 0) {
            if (t->small.n && (s3_small_over_target(t) || !t->main.n ||
                               pinned_in_a_row >= t->main.n)) {
                uint32_t id = t->small.tail;
                rec *r = R(x, id);
                if (((r->flags & F_S3FREQ_MASK) >> F_S3FREQ_SHIFT) > 1 || r->refs) {
                    list_unlink(x, &t->small, id);   /* reused while small: promote to main */
                    r->flags = 0;
                    list_push_head(x, &t->main, id);
                    continue;
                }
                return id;
            }
            if (!t->main.n) return NIL;
            uint32_t id = t->main.tail;
            rec *r = R(x, id);
            uint8_t f = (r->flags & F_S3FREQ_MASK) >> F_S3FREQ_SHIFT;
            if (f || r->refs) {
                pinned_in_a_row = r->refs ? pinned_in_a_row + 1 : 0;
                if (f) f--;
                list_unlink(x, &t->main, id);
                list_push_head(x, &t->main, id);
                r->flags = (uint8_t)(f << F_S3FREQ_SHIFT);
                continue;
            }
            return id;
        }
        return NIL;
    }
    case CXL_ORD_SIEVE: {
        uint32_t o = t->hand != NIL ? t->hand : t->main.tail;
        while (o != NIL && budget-- > 0) {
            rec *r = R(x, o);
            if (!(r->flags & F_VISITED) && !r->refs) {
                t->hand = r->prev;
                return o;
            }
            if (!r->refs) r->flags &= (uint8_t)~F_VISITED;
            o = r->prev != NIL ? r->prev : t->main.tail;
        }
        return NIL;
    }
    default:   /* LRU, FIFO: oldest unpinned */
        for (uint32_t o = t->main.tail; o != NIL; o = R(x, o)->prev)
            if (!R(x, o)->refs) return o;
        return NIL;
    }
}

/* ------------------------------------------------------------------ placement */

static void detach(cxl_index *x, uint32_t id)
{
    rec *r = R(x, id);
    tier *t = &x->tiers[r->tier];
    order_remove(x, r->tier, id);
    t->used_bytes -= r->bytes;
    t->blocks--;
}

static int attach(cxl_index *x, uint32_t id, int32_t ti, int to_main)
{
    tier *t = &x->tiers[ti];
    rec *r = R(x, id);
    r->tier = (int8_t)ti;
    t->used_bytes += r->bytes;
    t->blocks++;
    t->inserts++;
    return order_insert(x, ti, id, to_main);
}

/* The record leaves the index; an S3-FIFO tier remembers its key as a ghost. */
static void drop(cxl_index *x, uint32_t id, int32_t ti)
{
    tier *t = &x->tiers[ti];
    rec *r = R(x, id);
    if (t->ordering == CXL_ORD_S3FIFO) {
        forget_sharers(x, id);
        r->tier = TIER_GHOST;
        r->freq = (uint16_t)ti;
        r->flags = 0;
        list_push_head(x, &t->ghost, id);
        ghost_trim(x, t);
    } else {
        rec_release(x, id);
    }
}

static int make_room(cxl_index *x, int32_t ti, uint32_t bytes, int32_t flags);
static inline void prefetch_next_victim(const cxl_index *x, const tier *t);

/* Move an unpinned, detached record into tier ti, making room there first; drop it if the tier
 * cannot take it (everything pinned, or the block is larger than the tier). */
static int place_demoted(cxl_index *x, uint32_t id, int32_t ti, int32_t flags)
{
    if (make_room(x, ti, R(x, id)->bytes, flags) != CXL_OK) {
        R(x, id)->tier = (int8_t)(ti - 1);
        drop(x, id, ti - 1);
        return CXL_OK;
    }
    return attach(x, id, ti, 0);
}

static int make_room(cxl_index *x, int32_t ti, uint32_t bytes, int32_t flags)
{
    tier *t = &x->tiers[ti];
    if ((t->cap_bytes && bytes > t->cap_bytes) || t->cap_blocks == 0)
        return cxl_fail(CXL_EFULL, "index: a %u-byte block cannot fit tier %d", bytes, ti);
    while (!tier_fits(t, bytes)) {
        uint32_t v = order_victim(x, ti);
        if (v == NIL)
            return cxl_fail(CXL_EFULL, "index: tier %d is full and every block in it is pinned",
                            ti);
        detach(x, v);
        t->evictions++;
        if ((flags & CXL_ACCESS_DEMOTE) && ti + 1 < x->n_tiers) {
            int st = place_demoted(x, v, ti + 1, flags);
            if (st) return st;
        } else {
            drop(x, v, ti);
        }
        prefetch_next_victim(x, t);
    }
    return CXL_OK;
}

/* Take a free record for key, reusing its ghost if it has one; *to_main tells whether the ghost
 * belonged to tier ti (S3-FIFO then admits straight to main). */
static int claim(cxl_index *x, uint64_t key, uint32_t found, int32_t ti, uint32_t *out,
                 int *to_main)
{
    uint32_t id = found;
    *to_main = 0;
    if (id != CXL_KEYTAB_MISS) {
        rec *r = R(x, id);
        int32_t gt = r->freq;
        *to_main = (gt == ti);
        list_unlink(x, &x->tiers[gt].ghost, id);
        *out = id;
        return CXL_OK;
    }
    int st = rec_alloc(x, &id);
    if (st) return st;
    R(x, id)->key = key;
    st = cxl_keytab_add(&x->tab, key, id);
    if (st) {
        R(x, id)->next = x->free_head;
        x->free_head = id;
        return st;
    }
    *out = id;
    return CXL_OK;
}

/* found: what find(x, key) returned (a ghost's id, or CXL_KEYTAB_MISS). */
static int insert_new(cxl_index *x, uint64_t key, uint32_t found, int32_t ti, uint32_t bytes,
                      int32_t owner)
{
    uint32_t id;
    int to_main;
    int st = claim(x, key, found, ti, &id, &to_main);
    if (st) return st;
    rec *r = R(x, id);
    r->shared = 0;   /* a fresh chunk's record holds garbage; a reused one was cleared on leaving */
    r->bytes = bytes;
    r->last = ++x->clock;
    r->freq = 1;
    r->refs = 0;
    r->owner = owner < 0 ? OWNER_NONE : (uint8_t)owner;
    r->prev = r->next = NIL;
    return attach(x, id, ti, to_main);
}

static void touch(cxl_index *x, uint32_t id)
{
    rec *r = R(x, id);
    if (r->freq < FREQ_MAX) r->freq++;
    r->last = ++x->clock;
    order_touch(x, r->tier, id);
}

static inline void prefetch_record(const cxl_index *x, uint64_t key)
{
    uint64_t h = cxl_mix64(key);
    uint64_t slot = x->tab.slots[h & x->tab.mask];
    if (slot && (uint32_t)(slot >> 32) == (uint32_t)h) {
        uint32_t id = (uint32_t)slot - 1;
        __builtin_prefetch(&x->chunks[id >> CHUNK_BITS][id & (CHUNK - 1)]);
    }
}

/* After an eviction from a list tier, start loading what the next evictions will touch, far
 * enough ahead to hide a memory miss: the next victim's key slot, the slot of the one after it,
 * and the record after that. Each step finds its records already loaded by earlier steps. */
static inline void prefetch_next_victim(const cxl_index *x, const tier *t)
{
    if ((t->ordering != CXL_ORD_LRU && t->ordering != CXL_ORD_FIFO) || t->main.tail == NIL) return;
    const rec *v1 = R(x, t->main.tail);
    cxl_keytab_prefetch(&x->tab, v1->key);
    if (v1->prev == NIL) return;
    const rec *v2 = R(x, v1->prev);
    cxl_keytab_prefetch(&x->tab, v2->key);
    if (v2->prev != NIL) __builtin_prefetch(R(x, v2->prev));
}

/* The fast path's deeper version: victims leave from the tail in order, so walk back from it
 * (each record already loaded by earlier calls) and prefetch the key slot of the victim 3
 * evictions ahead and the record 6 ahead (measured: a little better than 1-2 and 3 ahead). */
static inline void prefetch_victims_ahead(const cxl_index *x, const tier *t)
{
    enum { SLOT_AHEAD = 3, REC_AHEAD = 6 };
    uint32_t v = t->main.tail;
    for (int k = 1; k < REC_AHEAD && v != NIL; k++) {
        const rec *r = R(x, v);
        if (k == SLOT_AHEAD) cxl_keytab_prefetch(&x->tab, r->key);
        v = r->prev;
    }
    if (v != NIL) __builtin_prefetch(R(x, v));
}

/* ------------------------------------------------------------------ public API */

int cxl_index_new(int32_t n_tiers, const uint64_t *cap_bytes, const int64_t *cap_blocks,
                  const int32_t *ordering, cxl_index **out)
{
    if (!out || !cap_bytes || !cap_blocks || !ordering)
        return cxl_fail(CXL_EINVAL, "index: NULL argument");
    if (n_tiers < 1 || n_tiers > MAX_TIERS)
        return cxl_fail(CXL_EINVAL, "index: tiers must be 1..%d, got %d", MAX_TIERS, n_tiers);
    for (int32_t i = 0; i < n_tiers; i++) {
        if (ordering[i] < CXL_ORD_LRU || ordering[i] > CXL_ORD_SIEVE)
            return cxl_fail(CXL_EINVAL, "index: tier %d has unknown ordering %d", i, ordering[i]);
        if (ordering[i] == CXL_ORD_S3FIFO && cap_blocks[i] < 0 && cap_bytes[i] == 0)
            return cxl_fail(CXL_EINVAL, "index: tier %d: S3-FIFO needs a capacity", i);
    }
    cxl_index *x = calloc(1, sizeof *x);
    if (!x) return cxl_fail(CXL_ENOMEM, "index: out of memory");
    x->free_head = NIL;
    x->n_tiers = n_tiers;
    for (int32_t i = 0; i < n_tiers; i++) {
        tier *t = &x->tiers[i];
        t->ordering = ordering[i];
        t->cap_bytes = cap_bytes[i];
        t->cap_blocks = cap_blocks[i];
        t->main = t->small = t->ghost = (list){NIL, NIL, 0, 0};
        t->hand = NIL;
    }
    /* size the key table for the block limits up front (S3-FIFO ghosts double a tier) */
    uint64_t expect = 0;
    for (int32_t i = 0; i < n_tiers; i++)
        if (cap_blocks[i] > 0) expect += (uint64_t)cap_blocks[i] * (ordering[i] == CXL_ORD_S3FIFO ? 2 : 1);
    if (expect > (1u << 26)) expect = 1u << 26;
    int st = cxl_keytab_init(&x->tab, expect > 1024 ? expect : 1024);
    if (st) { free(x); return st; }
    *out = x;
    return CXL_OK;
}

void cxl_index_free(cxl_index *x)
{
    if (!x) return;
    for (uint32_t i = 0; i < x->n_chunks; i++) free(x->chunks[i]);
    free(x->chunks);
    free(x->sharers.slots);
    for (int32_t i = 0; i < x->n_tiers; i++) free(x->tiers[i].heap);
    cxl_keytab_destroy(&x->tab);
    free(x);
}

int32_t cxl_index_n_tiers(cxl_index *x) { return x ? x->n_tiers : 0; }

int64_t cxl_index_size(cxl_index *x)
{
    int64_t n = 0;
    for (int32_t i = 0; x && i < x->n_tiers; i++) n += x->tiers[i].blocks;
    return n;
}

uint64_t cxl_index_memory_bytes(cxl_index *x)
{
    if (!x) return 0;
    uint64_t m = sizeof *x + (uint64_t)x->n_chunks * CHUNK * sizeof(rec) +
                 (uint64_t)x->cap_chunks * sizeof(rec *) +
                 (x->tab.mask + 1) * sizeof *x->tab.slots +
                 x->sharers.cap * sizeof(sharer_slot);
    for (int32_t i = 0; i < x->n_tiers; i++) m += (uint64_t)x->tiers[i].heap_cap * 4;
    return m;
}

static int check_tier(const cxl_index *x, int32_t ti)
{
    if (ti < 0 || ti >= x->n_tiers)
        return cxl_fail(CXL_EINVAL, "index: tier %d out of range 0..%d", ti, x->n_tiers - 1);
    return CXL_OK;
}

static int resident(const cxl_index *x, uint64_t key, uint32_t *id)
{
    *id = find_resident(x, key);
    if (*id == NIL)
        return cxl_fail(CXL_ENOTFOUND, "index: block %llu is not in the index",
                        (unsigned long long)key);
    return CXL_OK;
}

int cxl_index_lookup(cxl_index *x, uint64_t key, int32_t *tier_out)
{
    if (!x || !tier_out) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    uint32_t id = find_resident(x, key);
    *tier_out = id == NIL ? -1 : R(x, id)->tier;
    return CXL_OK;
}

int32_t cxl_index_tier_of(cxl_index *x, uint64_t key)
{
    uint32_t id = find_resident(x, key);
    return id == NIL ? -1 : R(x, id)->tier;
}

int32_t cxl_index_fits_now(cxl_index *x, int32_t ti, uint32_t bytes)
{
    return ti >= 0 && ti < x->n_tiers && tier_fits(&x->tiers[ti], bytes);
}

int32_t cxl_index_refs_of(cxl_index *x, uint64_t key)
{
    uint32_t id = find_resident(x, key);
    return id == NIL ? -1 : R(x, id)->refs;
}

int64_t cxl_index_bytes_of(cxl_index *x, uint64_t key)
{
    uint32_t id = find_resident(x, key);
    return id == NIL ? -1 : (int64_t)R(x, id)->bytes;
}

int32_t cxl_index_hit(cxl_index *x, uint64_t key)
{
    uint32_t id = find_resident(x, key);
    if (id == NIL) return -1;
    int32_t ti = R(x, id)->tier;
    x->tiers[ti].hits++;
    touch(x, id);
    return ti;
}

int cxl_index_remove_from(cxl_index *x, uint64_t key, int32_t ti)
{
    if (!x) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    uint32_t id = find_resident(x, key);
    if (id == NIL || R(x, id)->tier != ti)
        return cxl_fail(CXL_EINVAL, "index: block %llu is not in tier %d",
                        (unsigned long long)key, ti);
    if (R(x, id)->refs)
        return cxl_fail(CXL_EPINNED, "index: block %llu is pinned (%u references)",
                        (unsigned long long)key, R(x, id)->refs);
    detach(x, id);
    x->tiers[ti].evictions++;
    rec_release(x, id);
    return CXL_OK;
}

int cxl_index_apply(cxl_index *x, const uint8_t *op, const uint64_t *keys, const int32_t *tier,
                    const uint32_t *bytes, int64_t n, int64_t *failed_at)
{
    if (!x || !failed_at || n < 0 || (n && (!op || !keys || !tier || !bytes)))
        return cxl_fail(CXL_EINVAL, "index: NULL array");
    *failed_at = -1;
    for (int64_t i = 0; i < n; i++) {
        int st;
        switch (op[i]) {
        case CXL_OP_TOUCH: st = cxl_index_touch(x, keys[i]); break;
        case CXL_OP_INSERT: st = cxl_index_insert(x, keys[i], tier[i], bytes[i], -1); break;
        case CXL_OP_REMOVE: st = cxl_index_remove_from(x, keys[i], tier[i]); break;
        case CXL_OP_MOVE: st = cxl_index_move(x, keys[i], tier[i]); break;
        default: st = cxl_fail(CXL_EINVAL, "index: unknown operation %u", op[i]);
        }
        if (st) {
            *failed_at = i;
            return st;
        }
    }
    return CXL_OK;
}

int64_t cxl_index_next_run(cxl_index *x, const uint64_t *keys, int8_t *out, int64_t pos,
                           int64_t end, int64_t max_miss, int64_t max_hit, int32_t *tier)
{
    *tier = -1;
    if (pos < 0 || pos >= end || max_miss < 1 || max_hit < 1) return pos;
    uint32_t id = find_resident(x, keys[pos]);
    int64_t i = pos;
    if (id == NIL) {
        if (end - pos > max_miss) end = pos + max_miss;
        out[i++] = -1;
        for (; i < end && find_resident(x, keys[i]) == NIL; i++) {
            for (int64_t j = pos; j < i; j++)   /* a repeat will hit once its first is in */
                if (keys[j] == keys[i]) return i;
            out[i] = -1;
        }
        return i;
    }
    int32_t ti = R(x, id)->tier;
    *tier = ti;
    if (end - pos > max_hit) end = pos + max_hit;
    do {
        x->tiers[ti].hits++;
        touch(x, id);
        out[i++] = (int8_t)ti;
    } while (i < end && (id = find_resident(x, keys[i])) != NIL && R(x, id)->tier == ti);
    return i;
}

int cxl_index_admit_run(cxl_index *x, int32_t ti, const uint64_t *keys, int64_t pos, int64_t n,
                        uint32_t bytes, int64_t free_slots, const uint64_t *victims,
                        const uint8_t *skip, int64_t n_victims, int64_t *failed_at,
                        int64_t *added)
{
    if (!x || !failed_at || !added || n < 0 || pos < 0 || (n && !keys)
            || (n_victims && !victims))
        return cxl_fail(CXL_EINVAL, "index: NULL array");
    *failed_at = -1;
    *added = 0;
    int st = check_tier(x, ti);
    if (st) return st;
    int64_t need = n > free_slots ? n - free_slots : 0;
    if (n_victims != need)
        return cxl_fail(CXL_EINVAL, "index: %lld victims for a run that needs %lld",
                        (long long)n_victims, (long long)need);
    for (int64_t i = 0, j = 0; i < n; i++) {
        if (i >= free_slots) {
            int64_t v = j++;
            if (skip && skip[v]) continue;
            st = cxl_index_remove_from(x, victims[v], ti);
            if (st) {
                *failed_at = v;
                return st;
            }
            --*added;
        }
        st = cxl_index_insert(x, keys[pos + i], ti, bytes, -1);
        if (st) return st;
        ++*added;
    }
    return CXL_OK;
}

void cxl_index_usage(cxl_index *x, uint64_t *used_bytes, int64_t *blocks)
{
    for (int32_t i = 0; x && i < x->n_tiers; i++) {
        used_bytes[i] = x->tiers[i].used_bytes;
        blocks[i] = x->tiers[i].blocks;
    }
}

int cxl_index_lookup_batch(cxl_index *x, const uint64_t *keys, int32_t *tiers, int64_t n)
{
    if (!x || n < 0 || (n && (!keys || !tiers))) return cxl_fail(CXL_EINVAL, "index: NULL array");
    for (int64_t i = 0; i < n; i++) {
        uint32_t id = find_resident(x, keys[i]);
        tiers[i] = id == NIL ? -1 : R(x, id)->tier;
    }
    return CXL_OK;
}

int cxl_index_bytes_batch(cxl_index *x, const uint64_t *keys, int64_t *bytes, int64_t n)
{
    if (!x || n < 0 || (n && (!keys || !bytes)))
        return cxl_fail(CXL_EINVAL, "index: NULL array");
    for (int64_t i = 0; i < n; i++) bytes[i] = cxl_index_bytes_of(x, keys[i]);
    return CXL_OK;
}

int cxl_index_info(cxl_index *x, uint64_t key, cxl_block_info *out)
{
    if (!x || !out) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    uint32_t id;
    int st = resident(x, key, &id);
    if (st) return st;
    const rec *r = R(x, id);
    out->tier = r->tier;
    out->bytes = r->bytes;
    out->refs = r->refs;
    out->owner = r->owner == OWNER_NONE ? -1 : r->owner;
    out->sharers = r->shared ? sharer_get(&x->sharers, id) : 0;
    out->freq = r->freq;
    out->last_access = r->last;
    return CXL_OK;
}

int cxl_index_insert(cxl_index *x, uint64_t key, int32_t ti, uint32_t bytes, int32_t owner)
{
    if (!x) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    int st = check_tier(x, ti);
    if (st) return st;
    if (owner < -1 || owner >= OWNER_NONE)
        return cxl_fail(CXL_EINVAL, "index: owner %d out of range -1..%d", owner, OWNER_NONE - 1);
    if (find_resident(x, key) != NIL)
        return cxl_fail(CXL_EEXIST, "index: block %llu is already in tier %d",
                        (unsigned long long)key, R(x, find_resident(x, key))->tier);
    if (!tier_fits(&x->tiers[ti], bytes))
        return cxl_fail(CXL_EFULL, "index: tier %d has no room for %u more bytes", ti, bytes);
    return insert_new(x, key, find(x, key), ti, bytes, owner);
}

int cxl_index_remove(cxl_index *x, uint64_t key)
{
    if (!x) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    uint32_t id;
    int st = resident(x, key, &id);
    if (st) return st;
    if (R(x, id)->refs)
        return cxl_fail(CXL_EPINNED, "index: block %llu is pinned (%u references)",
                        (unsigned long long)key, R(x, id)->refs);
    detach(x, id);
    rec_release(x, id);
    return CXL_OK;
}

int cxl_index_move(cxl_index *x, uint64_t key, int32_t ti)
{
    if (!x) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    int st = check_tier(x, ti);
    if (st) return st;
    uint32_t id;
    if ((st = resident(x, key, &id))) return st;
    rec *r = R(x, id);
    if (r->tier == ti) return CXL_OK;
    if (r->refs)
        return cxl_fail(CXL_EPINNED, "index: block %llu is pinned and cannot move",
                        (unsigned long long)key);
    if (!tier_fits(&x->tiers[ti], r->bytes))
        return cxl_fail(CXL_EFULL, "index: tier %d has no room for %u more bytes", ti, r->bytes);
    detach(x, id);
    return attach(x, id, ti, 0);
}

int cxl_index_touch(cxl_index *x, uint64_t key)
{
    if (!x) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    uint32_t id;
    int st = resident(x, key, &id);
    if (st) return st;
    x->tiers[R(x, id)->tier].hits++;
    touch(x, id);
    return CXL_OK;
}

int cxl_index_pin(cxl_index *x, uint64_t key)
{
    if (!x) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    uint32_t id;
    int st = resident(x, key, &id);
    if (st) return st;
    if (R(x, id)->refs == UINT16_MAX)
        return cxl_fail(CXL_EINVAL, "index: block %llu has too many pins",
                        (unsigned long long)key);
    R(x, id)->refs++;
    return CXL_OK;
}

int cxl_index_unpin(cxl_index *x, uint64_t key)
{
    if (!x) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    uint32_t id;
    int st = resident(x, key, &id);
    if (st) return st;
    if (!R(x, id)->refs)
        return cxl_fail(CXL_EINVAL, "index: block %llu is not pinned", (unsigned long long)key);
    R(x, id)->refs--;
    return CXL_OK;
}

int cxl_index_set_sharers(cxl_index *x, uint64_t key, uint64_t sharers)
{
    if (!x) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    uint32_t id;
    int st = resident(x, key, &id);
    if (st) return st;
    if (!sharers) {
        forget_sharers(x, id);   /* only non-zero masks are stored */
        return CXL_OK;
    }
    if ((st = sharer_put(&x->sharers, id, sharers))) return st;
    R(x, id)->shared = 1;
    return CXL_OK;
}

int cxl_index_fits(cxl_index *x, int32_t ti, uint32_t bytes, int32_t *out)
{
    if (!x || !out) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    int st = check_tier(x, ti);
    if (st) return st;
    *out = tier_fits(&x->tiers[ti], bytes);
    return CXL_OK;
}

int cxl_index_evict_one(cxl_index *x, int32_t ti, uint64_t *key, uint32_t *bytes)
{
    if (!x || !key || !bytes) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    int st = check_tier(x, ti);
    if (st) return st;
    uint32_t v = order_victim(x, ti);
    if (v == NIL)
        return cxl_fail(CXL_EFULL, "index: tier %d has no unpinned block to evict", ti);
    *key = R(x, v)->key;
    *bytes = R(x, v)->bytes;
    detach(x, v);
    x->tiers[ti].evictions++;
    drop(x, v, ti);
    return CXL_OK;
}

static int cmp_lfu_ctx_sort(const void *a, const void *b, void *ctx)
{
    uint32_t ia = *(const uint32_t *)a, ib = *(const uint32_t *)b;
    if (lfu_less(ctx, ia, ib)) return -1;
    if (lfu_less(ctx, ib, ia)) return 1;
    return 0;
}

int cxl_index_tier_keys(cxl_index *x, int32_t ti, uint64_t *keys, int64_t max, int64_t *n)
{
    if (!x || !n || (max > 0 && !keys)) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    int st = check_tier(x, ti);
    if (st) return st;
    tier *t = &x->tiers[ti];
    int64_t k = 0;
    if (t->ordering == CXL_ORD_LFU) {
        uint32_t *ids = malloc((size_t)(t->main.n ? t->main.n : 1) * sizeof *ids);
        if (!ids) return cxl_fail(CXL_ENOMEM, "index: out of memory");
        memcpy(ids, t->heap, (size_t)t->main.n * sizeof *ids);
        qsort_r(ids, (size_t)t->main.n, sizeof *ids, cmp_lfu_ctx_sort, x);
        for (; k < t->main.n && k < max; k++) keys[k] = R(x, ids[k])->key;
        free(ids);
    } else {
        /* oldest first: S3-FIFO's small queue, then its main queue */
        const list *ls[2] = {&t->small, &t->main};
        for (int li = 0; li < 2; li++)
            for (uint32_t o = ls[li]->tail; o != NIL && k < max; o = R(x, o)->prev)
                keys[k++] = R(x, o)->key;
    }
    *n = k;
    return CXL_OK;
}

int cxl_index_tier_stats(cxl_index *x, int32_t ti, cxl_tier_stats *out)
{
    if (!x || !out) return cxl_fail(CXL_EINVAL, "index: NULL argument");
    int st = check_tier(x, ti);
    if (st) return st;
    const tier *t = &x->tiers[ti];
    *out = (cxl_tier_stats){t->used_bytes, t->cap_bytes, t->blocks, t->cap_blocks,
                            t->hits, t->inserts, t->evictions};
    return CXL_OK;
}

/* access_batch for the common cache-simulation case: one LRU or FIFO tier limited by blocks only.
 * Same results as the general loop below, in far fewer instructions: no ordering dispatch, and
 * a miss in a full tier reuses the evicted record for the new key in place (the general path
 * frees it and takes it straight back off the free list: the same record, the same state).
 * Anything else (room left, a pinned tail) goes through the general helpers. */
static int access_one_list_tier(cxl_index *x, const uint64_t *keys, const uint32_t *bytes,
                                uint32_t default_bytes, int64_t n, int32_t flags,
                                int8_t *out_tier)
{
    tier *t = &x->tiers[0];
    const int lru = t->ordering == CXL_ORD_LRU;
    for (int64_t i = 0; i < n; i++) {
        if (i + 8 < n) cxl_keytab_prefetch(&x->tab, keys[i + 8]);
        if (i + 4 < n) prefetch_record(x, keys[i + 4]);
        uint64_t key = keys[i];
        uint32_t id = find(x, key);   /* a list tier keeps no ghosts: a found record is resident */
        if (id != CXL_KEYTAB_MISS) {
            rec *r = R(x, id);
            out_tier[i] = 0;
            t->hits++;
            if (r->freq < FREQ_MAX) r->freq++;
            r->last = ++x->clock;
            if (lru && t->main.head != id) {
                /* unlink (it is not the head, so it has a newer neighbour), push at the head */
                R(x, r->prev)->next = r->next;
                if (r->next != NIL) R(x, r->next)->prev = r->prev; else t->main.tail = r->prev;
                r->prev = NIL;
                r->next = t->main.head;
                R(x, t->main.head)->prev = id;
                t->main.head = id;
            }
            continue;
        }
        out_tier[i] = -1;
        uint32_t b = bytes ? bytes[i] : default_bytes;
        uint32_t v = t->main.tail;
        if (t->blocks != t->cap_blocks || v == NIL || R(x, v)->refs) {
            int st = make_room(x, 0, b, flags);
            if (st == CXL_EFULL) continue;
            if (!st) st = insert_new(x, key, CXL_KEYTAB_MISS, 0, b, -1);
            if (st) return cxl_fail(st, "access %lld: %s", (long long)i, cxl_last_error());
            continue;
        }
        /* full, unpinned tail: it becomes the new key's record, moved from tail to head */
        rec *r = R(x, v);
        forget_sharers(x, v);
        cxl_keytab_del(&x->tab, r->key, v);
        r->key = key;
        /* cannot fail: the delete just made room, so the table keeps its size (no growth) */
        int st = cxl_keytab_add(&x->tab, key, v);
        if (st) return cxl_fail(st, "access %lld: %s", (long long)i, cxl_last_error());
        t->evictions++;
        t->inserts++;
        t->used_bytes += (uint64_t)b - r->bytes;
        t->main.bytes += (uint64_t)b - r->bytes;
        r->bytes = b;
        r->last = ++x->clock;
        r->freq = 1;
        r->flags = 0;
        r->owner = OWNER_NONE;
        if (t->main.head != v) {
            t->main.tail = r->prev;
            R(x, r->prev)->next = NIL;
            r->prev = NIL;
            r->next = t->main.head;
            R(x, t->main.head)->prev = v;
            t->main.head = v;
        }
        prefetch_victims_ahead(x, t);
    }
    return CXL_OK;
}

int cxl_index_access_batch(cxl_index *x, const uint64_t *keys, const uint32_t *bytes,
                           uint32_t default_bytes, int64_t n, int32_t flags, int8_t *out_tier)
{
    if (!x || n < 0 || (n && (!keys || !out_tier)))
        return cxl_fail(CXL_EINVAL, "index: NULL array");
    if (x->n_tiers == 1 && x->tiers[0].cap_bytes == 0 &&
        (x->tiers[0].ordering == CXL_ORD_LRU || x->tiers[0].ordering == CXL_ORD_FIFO))
        return access_one_list_tier(x, keys, bytes, default_bytes, n, flags, out_tier);
    for (int64_t i = 0; i < n; i++) {
        /* two-stage prefetch: the slot 8 keys ahead, the record behind it 4 keys ahead */
        if (i + 8 < n) cxl_keytab_prefetch(&x->tab, keys[i + 8]);
        if (i + 4 < n) prefetch_record(x, keys[i + 4]);
        uint32_t found = find(x, keys[i]);
        uint32_t id = (found != CXL_KEYTAB_MISS && R(x, found)->tier >= 0) ? found : NIL;
        if (id != NIL) {
            int32_t ti = R(x, id)->tier;
            out_tier[i] = (int8_t)ti;
            x->tiers[ti].hits++;
            touch(x, id);
            if ((flags & CXL_ACCESS_PROMOTE) && ti > 0 && !R(x, id)->refs) {
                /* hold the block where it is while room is made in tier 0, so the cascade
                 * cannot pick it; if no room can be made it simply stays */
                R(x, id)->refs++;
                int st = make_room(x, 0, R(x, id)->bytes, flags);
                R(x, id)->refs--;
                if (st == CXL_OK) {
                    detach(x, id);
                    attach(x, id, 0, 0);
                } else if (st != CXL_EFULL) {
                    return cxl_fail(st, "access %lld: %s", (long long)i, cxl_last_error());
                }
            }
            continue;
        }
        out_tier[i] = -1;
        uint32_t b = bytes ? bytes[i] : default_bytes;
        int st = make_room(x, 0, b, flags);
        if (st == CXL_EFULL) continue;   /* larger than the tier, or all pinned: not cached */
        /* making room may have trimmed this key's own ghost (records are not reused there) */
        if (found != CXL_KEYTAB_MISS && R(x, found)->tier != TIER_GHOST) found = CXL_KEYTAB_MISS;
        if (!st) st = insert_new(x, keys[i], found, 0, b, -1);
        if (st) return cxl_fail(st, "access %lld: %s", (long long)i, cxl_last_error());
    }
    return CXL_OK;
}
