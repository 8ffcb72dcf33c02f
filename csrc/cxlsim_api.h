/* Public C API of the cxlsim core.
 *
 * This file is read twice: by the C compiler (through cxlsim.h) and by cffi's cdef in
 * build_core.py, so it holds only declarations cffi understands: no macros, no #include.
 *
 * Conventions: every fallible call returns a status (CXL_OK or an error code) and writes results
 * through out-pointers; nothing aborts or exits. cxl_last_error() gives a message for the last
 * failure in this thread. Times are virtual nanoseconds (double), sizes are bytes, bandwidths are
 * bytes per ns (numerically equal to GB/s).
 */

enum {
    CXL_OK = 0,
    CXL_EINVAL = 1,     /* bad argument */
    CXL_ENOMEM = 2,     /* allocation failed */
    CXL_ENOTFOUND = 3,  /* key or id not present */
    CXL_EFULL = 4,      /* no room and nothing evictable */
    CXL_EPINNED = 5,    /* block is pinned (reference count > 0) */
    CXL_EEXIST = 6      /* key already present */
};

const char *cxl_last_error(void);

/* ------------------------------------------------------------------ fabric timing */

typedef struct cxl_fabric cxl_fabric;

typedef struct {
    double bytes;        /* bytes carried */
    double busy_ns;      /* time reserved on this resource */
    double energy_pj;    /* energy of the bytes carried */
    double free_at_ns;   /* end of the last reservation */
    uint64_t transfers;  /* transfers that used this resource */
} cxl_resource_stats;

int cxl_fabric_new(double util_window_ns, cxl_fabric **out);
void cxl_fabric_free(cxl_fabric *f);

/* A resource is one direction of a link, or a memory's media. queue_ns scales the loaded-latency
 * term queue_ns * u / (1 - u), u being the utilization seen in the previous window. */
int cxl_fabric_add_resource(cxl_fabric *f, double bytes_per_ns, double queue_ns,
                            double pj_per_bit, int32_t *out_id);

/* A route is what one transfer crosses. Entry i uses resource res[i] for the bytes of interleave
 * way way[i] (-1: all bytes, e.g. a host-side link) with its service time multiplied by
 * slowdown[i] (e.g. media write vs read bandwidth). Bytes are dealt to the n_ways ways by address
 * in chunks of `granularity` bytes. The route's fixed latency is base_latency_ns plus the largest
 * way_latency_ns among the ways the transfer touches. */
int cxl_fabric_add_route(cxl_fabric *f, int32_t n_entries, const int32_t *res, const int32_t *way,
                         const double *slowdown, int32_t n_ways, const double *way_latency_ns,
                         double base_latency_ns, uint64_t granularity, int32_t *out_id);

/* Completion time of `bytes` starting at address addr at time t_ns: every resource on the route
 * serves its share of the bytes from max(t_ns, the time it is next free) for bytes * slowdown /
 * bandwidth; the transfer completes when the last of them is done, plus the route latency and the
 * loaded-latency terms. */
int cxl_fabric_transfer(cxl_fabric *f, int32_t route, uint64_t addr, uint64_t bytes, double t_ns,
                        double *done_ns, double *energy_pj);

/* The same over arrays, in order; addr and energy_pj may be NULL. */
int cxl_fabric_transfer_batch(cxl_fabric *f, const int32_t *route, const uint64_t *addr,
                              const uint64_t *bytes, const double *t_ns, double *done_ns,
                              double *energy_pj, int64_t n);

/* Other hosts' transfers (a multi-host replay's barrier), in order: they queue on each resource's
 * background timeline (first-come first-served among themselves), which the host's own transfers
 * then wait for, and add their busy time to its utilization windows (none if older than the
 * previous window); they count in no resource statistic. addr may be NULL. */
int cxl_fabric_background_batch(cxl_fabric *f, const int32_t *route, const uint64_t *addr,
                                const uint64_t *bytes, const double *t_ns, int64_t n);

/* Idle latency of the route for an access of `bytes` at addr (no queueing, no contention). */
int cxl_fabric_idle_latency(cxl_fabric *f, int32_t route, uint64_t addr, uint64_t bytes,
                            double *out_ns);

/* Closed-loop load in the style of Intel MLC: `threads` issuers each keep one access of
 * access_bytes in flight and wait delay_ns after each completion before issuing the next; a
 * deterministic read_ratio share of accesses use read_route, the rest write_route; addresses
 * advance sequentially. Runs n_accesses and reports mean latency and achieved bandwidth. */
int cxl_fabric_closed_loop(cxl_fabric *f, int32_t read_route, int32_t write_route,
                           double read_ratio, int32_t threads, double delay_ns,
                           uint64_t access_bytes, int64_t n_accesses, double *mean_latency_ns,
                           double *bandwidth_gbps);

int cxl_fabric_resource_stats(cxl_fabric *f, int32_t res, cxl_resource_stats *out);
int32_t cxl_fabric_n_resources(cxl_fabric *f);
/* Clear timelines, utilization windows and counters (topology stays). */
void cxl_fabric_reset(cxl_fabric *f);

/* ------------------------------------------------------------------ coherence */

typedef struct cxl_coherence cxl_coherence;

typedef struct {
    uint64_t reads;
    uint64_t writes;
    uint64_t invalidations;   /* sharer copies back-invalidated */
    uint64_t bi_events;       /* writes that had to back-invalidate someone */
    uint64_t snoops;          /* reads that found the block modified by another host */
    double bi_ns;             /* total time writers waited on back-invalidation */
    double snoop_ns;          /* total time readers waited on snoop + write-back */
    int64_t tracked;          /* blocks in the directory */
} cxl_coh_stats;

/* Directory for blocks shared by up to 64 hosts. bi_ns[h]: time to back-invalidate host h's
 * copy; snoop_ns[h]: time to snoop host h and write its modified data back. */
int cxl_coh_new(int32_t n_hosts, const double *bi_ns, const double *snoop_ns,
                cxl_coherence **out);
void cxl_coh_free(cxl_coherence *c);
int cxl_coh_read(cxl_coherence *c, uint64_t key, int32_t host, double *extra_ns);
int cxl_coh_write(cxl_coherence *c, uint64_t key, int32_t host, double *extra_ns);
int cxl_coh_drop(cxl_coherence *c, uint64_t key, int32_t host);
int cxl_coh_forget(cxl_coherence *c, uint64_t key);
int cxl_coh_state(cxl_coherence *c, uint64_t key, uint64_t *sharers, int32_t *modified_by);
void cxl_coh_stats_get(cxl_coherence *c, cxl_coh_stats *out);

/* ------------------------------------------------------------------ KV block index */

typedef struct cxl_index cxl_index;

enum {
    CXL_ORD_LRU = 0,
    CXL_ORD_FIFO = 1,
    CXL_ORD_LFU = 2,      /* least frequent first, ties by least recent */
    CXL_ORD_S3FIFO = 3,   /* small FIFO + main FIFO + ghost keys */
    CXL_ORD_SIEVE = 4
};

enum {
    CXL_ACCESS_PROMOTE = 1,   /* a hit below tier 0 moves the block up to tier 0 */
    CXL_ACCESS_DEMOTE = 2     /* a block evicted from tier t goes to tier t+1 instead of leaving */
};

typedef struct {
    int32_t tier;
    uint32_t bytes;
    uint32_t refs;
    int32_t owner;
    uint64_t sharers;
    uint32_t freq;          /* accesses since insertion (saturates at 65535) */
    uint32_t last_access;   /* value of the access clock at the last access */
} cxl_block_info;

typedef struct {
    uint64_t used_bytes;
    uint64_t cap_bytes;
    int64_t blocks;
    int64_t cap_blocks;
    uint64_t hits;
    uint64_t inserts;
    uint64_t evictions;     /* blocks that left the tier to make room */
} cxl_tier_stats;

/* cap_blocks[t] < 0 means no block-count limit; cap_bytes[t] == 0 means no byte limit. */
int cxl_index_new(int32_t n_tiers, const uint64_t *cap_bytes, const int64_t *cap_blocks,
                  const int32_t *ordering, cxl_index **out);
void cxl_index_free(cxl_index *x);
int32_t cxl_index_n_tiers(cxl_index *x);
int64_t cxl_index_size(cxl_index *x);
uint64_t cxl_index_memory_bytes(cxl_index *x);

int cxl_index_lookup(cxl_index *x, uint64_t key, int32_t *tier);           /* tier -1: absent */
int cxl_index_lookup_batch(cxl_index *x, const uint64_t *keys, int32_t *tiers, int64_t n);
/* bytes[i]: the size of resident block keys[i], -1 if absent. */
int cxl_index_bytes_batch(cxl_index *x, const uint64_t *keys, int64_t *bytes, int64_t n);
/* Infallible forms for the per-block Python path (x must be a live index, tier in range). */
int32_t cxl_index_tier_of(cxl_index *x, uint64_t key);                     /* -1: absent */
int32_t cxl_index_fits_now(cxl_index *x, int32_t tier, uint32_t bytes);    /* 1: fits */
int32_t cxl_index_refs_of(cxl_index *x, uint64_t key);                     /* -1: absent */
int64_t cxl_index_bytes_of(cxl_index *x, uint64_t key);                    /* -1: absent */
/* Look up and, on a hit, count it and update the tier's ordering, in one call: tier or -1. */
int32_t cxl_index_hit(cxl_index *x, uint64_t key);
/* Remove a block that must be resident in `tier` and unpinned (EINVAL / EPINNED otherwise). */
int cxl_index_remove_from(cxl_index *x, uint64_t key, int32_t tier);
int cxl_index_info(cxl_index *x, uint64_t key, cxl_block_info *out);
int cxl_index_insert(cxl_index *x, uint64_t key, int32_t tier, uint32_t bytes, int32_t owner);
int cxl_index_remove(cxl_index *x, uint64_t key);
int cxl_index_move(cxl_index *x, uint64_t key, int32_t tier);
int cxl_index_touch(cxl_index *x, uint64_t key);
int cxl_index_pin(cxl_index *x, uint64_t key);
int cxl_index_unpin(cxl_index *x, uint64_t key);
int cxl_index_set_sharers(cxl_index *x, uint64_t key, uint64_t sharers);
/* Queued operations applied in order, for engines that batch their changes: TOUCH (a hit),
 * INSERT (key into tier with bytes), REMOVE (key, which must be unpinned in tier), MOVE (key to
 * tier, which must have room). Stops at the first failure: *failed_at is its index, or -1. */
enum { CXL_OP_TOUCH = 0, CXL_OP_INSERT = 1, CXL_OP_REMOVE = 2, CXL_OP_MOVE = 3 };
int cxl_index_apply(cxl_index *x, const uint8_t *op, const uint64_t *keys, const int32_t *tier,
                    const uint32_t *bytes, int64_t n, int64_t *failed_at);
/* For engines that drive a Python policy by runs, with the index exact at every call.
 * next_run: the run of keys[pos..end) that starts at pos: up to max_hit consecutive blocks
 * resident in one tier, each touched as a hit, or up to max_miss consecutive absent blocks,
 * none repeating another of the run (the run is compared pairwise: keep max_miss small).
 * out[i] gets the tier of each block of the run, or -1 for a miss; *tier gets the run's tier or
 * -1. Returns where the run ends (pos itself, with nothing done, unless 0 <= pos < end and both
 * limits are >= 1); the caller guarantees keys and out hold `end` entries. */
int64_t cxl_index_next_run(cxl_index *x, const uint64_t *keys, int8_t *out, int64_t pos,
                           int64_t end, int64_t max_miss, int64_t max_hit, int32_t *tier);
/* admit_run: absent keys[pos..pos+n) enter tier ti in order, each taking a free slot while
 * free_slots last, then the next victim's place: the victim, which must be resident in ti and
 * unpinned, is removed; skip[j] (skip may be NULL) means victim j is none and that key is not
 * cached. n_victims must equal max(n - free_slots, 0). Stops at the first bad victim (EINVAL:
 * not in the tier, EPINNED) with *failed_at its index, or -1; the steps before it stay applied,
 * as they would have one block at a time. *added: blocks added to ti. */
int cxl_index_admit_run(cxl_index *x, int32_t ti, const uint64_t *keys, int64_t pos, int64_t n,
                        uint32_t bytes, int64_t free_slots, const uint64_t *victims,
                        const uint8_t *skip, int64_t n_victims, int64_t *failed_at,
                        int64_t *added);
/* Bytes used and blocks held per tier (arrays of n_tiers). */
void cxl_index_usage(cxl_index *x, uint64_t *used_bytes, int64_t *blocks);
/* Would `bytes` more fit in the tier without evicting? */
int cxl_index_fits(cxl_index *x, int32_t tier, uint32_t bytes, int32_t *out);
/* The tier's ordering picks its next victim (pinned blocks are skipped) and the block leaves the
 * tier: it is removed from the index; the caller decides to drop it or insert it elsewhere. */
int cxl_index_evict_one(cxl_index *x, int32_t tier, uint64_t *key, uint32_t *bytes);
/* Keys of a tier from the next victim onwards (up to max); no state changes. */
int cxl_index_tier_keys(cxl_index *x, int32_t tier, uint64_t *keys, int64_t max, int64_t *n);
int cxl_index_tier_stats(cxl_index *x, int32_t tier, cxl_tier_stats *out);

/* The built-in fast path: each key is looked up; a hit is touched (and promoted with
 * CXL_ACCESS_PROMOTE, the block held in place while room is made in tier 0); a miss is inserted
 * into tier 0, making room by the tiers' orderings (demoting with CXL_ACCESS_DEMOTE; a victim
 * the next tier cannot take is dropped). A block that cannot get room (larger than the tier, or
 * everything pinned) is not cached. out_tier[i] is the tier that hit, or -1 for a miss. */
int cxl_index_access_batch(cxl_index *x, const uint64_t *keys, const uint32_t *bytes,
                           uint32_t default_bytes, int64_t n, int32_t flags, int8_t *out_tier);

/* ------------------------------------------------------------------ shared-memory mailbox */
/* Words in memory shared between processes (cxlsim/pool/mailbox.py), all accessed with
 * sequentially consistent atomics. post: store *len_word = len, then *seq_word = seq, then
 * return *peer_sleeping (nonzero: the peer sleeps on its socket and must be rung). wait: poll
 * until *word == value (returns 1) or for spin_s seconds (returns 0), without sleeping. */
uint64_t cxl_mbox_load(const uint64_t *word);
void cxl_mbox_store(uint64_t *word, uint64_t value);
uint64_t cxl_mbox_post(uint64_t *len_word, uint64_t len, uint64_t *seq_word, uint64_t seq,
                       const uint64_t *peer_sleeping);
int cxl_mbox_wait(const uint64_t *word, uint64_t value, double spin_s);
/* As wait, until *word >= value (a counter that only grows). */
int cxl_mbox_wait_reach(const uint64_t *word, uint64_t value, double spin_s);
/* The first i in from..n-1 with *words[i] != seen[i], or -1: one look at many mailboxes. */
int64_t cxl_mbox_changed(uint64_t *const *words, const uint64_t *seen, int64_t from, int64_t n);
