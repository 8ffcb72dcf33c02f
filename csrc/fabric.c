/* Fabric timing in virtual time.
 *
 * A resource is one direction of a link or one memory's media. Each keeps a FIFO timeline (the time
 * it is next free) and the busy time seen in fixed utilization windows. Each resource on a transfer's
 * route serves its share of the bytes first-come first-served: from max(arrival, free) for its own
 * serialization time, so concurrent transfers queue and no resource ever carries more than its
 * bandwidth. The transfer completes when its slowest resource is done, plus the route's fixed
 * latency and a loaded-latency term queue_ns * u / (1 - u) per resource.
 *
 * Background transfers (other hosts' bytes, taken in at a barrier of a multi-host replay) queue on
 * a timeline of their own per resource, first-come first-served among themselves, and add their
 * busy time to the utilization windows; the host's own transfers start no earlier than that
 * timeline's end. They count in no statistic: the bytes are the other host's, and its own fabric
 * counts them. A background transfer never waits for the host's own: it was issued during the
 * quantum just ended, before the host knew of it, and queueing it behind the host's later bytes
 * would delay the host's next transfers by bytes long gone. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define UTIL_CAP 0.95   /* keep u / (1 - u) finite: at most 19 x queue_ns */
#define MAX_START_NS 1e18   /* 31 years: window indices stay well inside int64 */

typedef struct {
    double bytes_per_ns;  /* <= 0: unlimited (never a bottleneck) */
    double ns_per_byte;   /* 1 / bytes_per_ns, or 0 when unlimited: multiply, don't divide */
    double queue_ns;
    double pj_per_bit;
    int64_t window;       /* index of the current utilization window */
    double window_busy;   /* busy ns reserved by transfers arriving in the current window */
    double prev_busy;     /* the same for the previous window */
    double bg_free_at;    /* when the background transfers (other hosts') leave it free */
    cxl_resource_stats st;
} resource;

typedef struct {
    int32_t res;
    int32_t way;          /* -1: carries every byte of the transfer */
    double slowdown;
} route_entry;

typedef struct {
    int32_t n_entries;
    route_entry *entries;
    int32_t n_ways;
    double *way_latency;
    double base_latency;
    uint64_t granularity;
} route;

struct cxl_fabric {
    double window_ns;
    double per_window;    /* 1 / window_ns */
    resource *res;
    int32_t n_res, cap_res;
    route *routes;
    int32_t n_routes, cap_routes;
    uint64_t *way_bytes;  /* scratch, max_ways long */
    int32_t max_ways;
};

int cxl_fabric_new(double util_window_ns, cxl_fabric **out)
{
    if (!out) return cxl_fail(CXL_EINVAL, "fabric: out is NULL");
    if (!(util_window_ns > 0) || !isfinite(util_window_ns))
        return cxl_fail(CXL_EINVAL, "fabric: util_window_ns must be positive and finite, got %g",
                        util_window_ns);
    cxl_fabric *f = calloc(1, sizeof *f);
    if (!f) return cxl_fail(CXL_ENOMEM, "fabric: out of memory");
    f->window_ns = util_window_ns;
    f->per_window = 1.0 / util_window_ns;
    *out = f;
    return CXL_OK;
}

void cxl_fabric_free(cxl_fabric *f)
{
    if (!f) return;
    for (int32_t i = 0; i < f->n_routes; i++) {
        free(f->routes[i].entries);
        free(f->routes[i].way_latency);
    }
    free(f->routes);
    free(f->res);
    free(f->way_bytes);
    free(f);
}

static int grow_array(void **arr, int32_t *cap, size_t elem)
{
    int32_t ncap = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, (size_t)ncap * elem);
    if (!p) return cxl_fail(CXL_ENOMEM, "fabric: out of memory");
    *arr = p;
    *cap = ncap;
    return CXL_OK;
}

int cxl_fabric_add_resource(cxl_fabric *f, double bytes_per_ns, double queue_ns,
                            double pj_per_bit, int32_t *out_id)
{
    if (!f || !out_id) return cxl_fail(CXL_EINVAL, "fabric: NULL argument");
    if (isnan(bytes_per_ns) || !(queue_ns >= 0) || !isfinite(queue_ns) || !(pj_per_bit >= 0) ||
        !isfinite(pj_per_bit))
        return cxl_fail(CXL_EINVAL,
                        "fabric: resource needs bandwidth (<= 0 for unlimited), queue_ns >= 0 and "
                        "pj_per_bit >= 0; got %g, %g, %g", bytes_per_ns, queue_ns, pj_per_bit);
    if (f->n_res == f->cap_res) {
        int st = grow_array((void **)&f->res, &f->cap_res, sizeof *f->res);
        if (st) return st;
    }
    resource *r = &f->res[f->n_res];
    memset(r, 0, sizeof *r);
    r->bytes_per_ns = isfinite(bytes_per_ns) && bytes_per_ns > 0 ? bytes_per_ns : 0;
    r->ns_per_byte = r->bytes_per_ns > 0 ? 1.0 / r->bytes_per_ns : 0;
    r->queue_ns = queue_ns;
    r->pj_per_bit = pj_per_bit;
    *out_id = f->n_res++;
    return CXL_OK;
}

int cxl_fabric_add_route(cxl_fabric *f, int32_t n_entries, const int32_t *res, const int32_t *way,
                         const double *slowdown, int32_t n_ways, const double *way_latency_ns,
                         double base_latency_ns, uint64_t granularity, int32_t *out_id)
{
    if (!f || !out_id || n_entries < 0 || (n_entries && (!res || !way || !slowdown)))
        return cxl_fail(CXL_EINVAL, "route: bad entry arrays");
    if (n_ways < 1 || !way_latency_ns)
        return cxl_fail(CXL_EINVAL, "route: needs at least one way, got %d", n_ways);
    if (n_ways > 1 && granularity == 0)
        return cxl_fail(CXL_EINVAL, "route: an interleaved route needs granularity > 0");
    if (!(base_latency_ns >= 0) || !isfinite(base_latency_ns))
        return cxl_fail(CXL_EINVAL, "route: base latency must be >= 0, got %g", base_latency_ns);
    for (int32_t w = 0; w < n_ways; w++)
        if (!(way_latency_ns[w] >= 0) || !isfinite(way_latency_ns[w]))
            return cxl_fail(CXL_EINVAL, "route: way %d latency must be >= 0, got %g", w,
                            way_latency_ns[w]);
    for (int32_t i = 0; i < n_entries; i++) {
        if (res[i] < 0 || res[i] >= f->n_res)
            return cxl_fail(CXL_EINVAL, "route: entry %d names resource %d of %d", i, res[i],
                            f->n_res);
        if (way[i] < -1 || way[i] >= n_ways)
            return cxl_fail(CXL_EINVAL, "route: entry %d names way %d of %d", i, way[i], n_ways);
        if (!(slowdown[i] > 0) || !isfinite(slowdown[i]))
            return cxl_fail(CXL_EINVAL, "route: entry %d slowdown must be > 0, got %g", i,
                            slowdown[i]);
    }
    if (f->n_routes == f->cap_routes) {
        int st = grow_array((void **)&f->routes, &f->cap_routes, sizeof *f->routes);
        if (st) return st;
    }
    if (n_ways > f->max_ways) {
        uint64_t *p = realloc(f->way_bytes, (size_t)n_ways * sizeof *p);
        if (!p) return cxl_fail(CXL_ENOMEM, "route: out of memory");
        f->way_bytes = p;
        f->max_ways = n_ways;
    }
    route *r = &f->routes[f->n_routes];
    r->entries = malloc((size_t)(n_entries ? n_entries : 1) * sizeof *r->entries);
    r->way_latency = malloc((size_t)n_ways * sizeof *r->way_latency);
    if (!r->entries || !r->way_latency) {
        free(r->entries);
        free(r->way_latency);
        return cxl_fail(CXL_ENOMEM, "route: out of memory");
    }
    for (int32_t i = 0; i < n_entries; i++)
        r->entries[i] = (route_entry){res[i], way[i], slowdown[i]};
    memcpy(r->way_latency, way_latency_ns, (size_t)n_ways * sizeof *r->way_latency);
    r->n_entries = n_entries;
    r->n_ways = n_ways;
    r->base_latency = base_latency_ns;
    r->granularity = granularity;
    *out_id = f->n_routes++;
    return CXL_OK;
}

/* Deal [addr, addr + bytes) to the ways in chunks of g bytes, chunk c going to way c % k. */
static void deal_bytes(uint64_t addr, uint64_t bytes, uint64_t g, int32_t k, uint64_t *wb)
{
    memset(wb, 0, (size_t)k * sizeof *wb);
    if (k == 1) { wb[0] = bytes; return; }
    uint64_t end = addr + bytes;
    uint64_t c = addr / g;
    /* first, possibly partial, chunk */
    uint64_t first_end = (c + 1) * g;
    if (end <= first_end) { wb[c % k] = bytes; return; }
    wb[c % k] += first_end - addr;
    c++;
    uint64_t last_c = end / g;          /* chunk holding the tail, if end is not aligned */
    uint64_t full = last_c - c;         /* whole chunks in between */
    uint64_t rounds = full / k, rest = full % k;
    for (int32_t w = 0; w < k; w++) wb[w] += rounds * g;
    for (uint64_t j = 0; j < rest; j++) wb[(c + j) % k] += g;
    if (end > last_c * g) wb[last_c % k] += end - last_c * g;
}

/* Index of the utilization window holding t >= 0 (truncation is floor), saturating rather than
 * overflowing int64 for a tiny window and a late t. */
static int64_t window_of(double t, double per_window)
{
    double w = t * per_window;
    return w < 9e18 ? (int64_t)w : INT64_MAX;
}

static double utilization(resource *r, double t, double per_window)
{
    int64_t w = window_of(t, per_window);
    if (w > r->window) {
        r->prev_busy = (r->window < INT64_MAX && w == r->window + 1) ? r->window_busy : 0;
        r->window_busy = 0;
        r->window = w;
    }
    double u = r->prev_busy * per_window;
    return u > UTIL_CAP ? UTIL_CAP : u;
}

static double route_latency(const route *rt, const uint64_t *wb, uint64_t addr)
{
    double lat = -1;
    for (int32_t w = 0; w < rt->n_ways; w++)
        if (wb[w] && rt->way_latency[w] > lat) lat = rt->way_latency[w];
    if (lat < 0)   /* a zero-byte access still travels to the way its address falls in */
        lat = rt->way_latency[rt->n_ways > 1 ? (addr / rt->granularity) % rt->n_ways : 0];
    return rt->base_latency + lat;
}

/* Add busy ns to the utilization window holding t. A background transfer may lie before the
 * resource's current window (it happened on another host during the quantum just ended): it
 * counts in the previous window if it fell there, and in none if it is older still. */
static void note_busy(resource *r, double t, double serv, double per_window)
{
    int64_t w = window_of(t, per_window);
    if (w >= r->window) {
        utilization(r, t, per_window);     /* rolls the windows forward to t */
        r->window_busy += serv;
    } else if (w == r->window - 1) {
        r->prev_busy += serv;
    }
}

static int transfer_one(cxl_fabric *f, int32_t route_id, uint64_t addr, uint64_t bytes, double t,
                        int counted, double *done, double *energy)
{
    if (route_id < 0 || route_id >= f->n_routes)
        return cxl_fail(CXL_EINVAL, "transfer: unknown route %d (fabric has %d)", route_id,
                        f->n_routes);
    if (!(t >= 0) || !(t < MAX_START_NS))
        return cxl_fail(CXL_EINVAL, "transfer: start time must be in [0, %g) ns, got %g",
                        MAX_START_NS, t);
    const route *rt = &f->routes[route_id];
    uint64_t *wb = f->way_bytes;
    deal_bytes(addr, bytes, rt->granularity, rt->n_ways, wb);

    double end = t, extra = 0, pj = 0;
    for (int32_t i = 0; i < rt->n_entries; i++) {
        const route_entry *e = &rt->entries[i];
        uint64_t b = e->way < 0 ? bytes : wb[e->way];
        if (!b) continue;
        resource *r = &f->res[e->res];
        double serv = (double)b * e->slowdown * r->ns_per_byte;
        if (r->queue_ns > 0) {   /* only a queueing term needs the utilization windows */
            if (counted) {
                double u = utilization(r, t, f->per_window);
                extra += r->queue_ns * u / (1 - u);
                r->window_busy += serv;
            } else {
                note_busy(r, t, serv, f->per_window);
            }
        }
        if (!counted) {
            r->bg_free_at = (r->bg_free_at > t ? r->bg_free_at : t) + serv;
            continue;
        }
        double from = r->st.free_at_ns > t ? r->st.free_at_ns : t;
        if (r->bg_free_at > from) from = r->bg_free_at;
        r->st.free_at_ns = from + serv;
        if (r->st.free_at_ns > end) end = r->st.free_at_ns;
        double e_pj = (double)b * 8.0 * r->pj_per_bit;
        r->st.bytes += (double)b;
        r->st.busy_ns += serv;
        r->st.energy_pj += e_pj;
        r->st.transfers++;
        pj += e_pj;
    }
    *done = end + route_latency(rt, wb, addr) + extra;
    if (energy) *energy = pj;
    return CXL_OK;
}

int cxl_fabric_transfer(cxl_fabric *f, int32_t route, uint64_t addr, uint64_t bytes, double t_ns,
                        double *done_ns, double *energy_pj)
{
    if (!f || !done_ns) return cxl_fail(CXL_EINVAL, "transfer: NULL argument");
    return transfer_one(f, route, addr, bytes, t_ns, 1, done_ns, energy_pj);
}

int cxl_fabric_transfer_batch(cxl_fabric *f, const int32_t *route, const uint64_t *addr,
                              const uint64_t *bytes, const double *t_ns, double *done_ns,
                              double *energy_pj, int64_t n)
{
    if (!f || n < 0 || (n && (!route || !bytes || !t_ns || !done_ns)))
        return cxl_fail(CXL_EINVAL, "transfer_batch: NULL array");
    for (int64_t i = 0; i < n; i++) {
        int st = transfer_one(f, route[i], addr ? addr[i] : 0, bytes[i], t_ns[i], 1, &done_ns[i],
                              energy_pj ? &energy_pj[i] : NULL);
        if (st) return cxl_fail(st, "transfer_batch: item %lld: %s", (long long)i,
                                cxl_last_error());
    }
    return CXL_OK;
}

int cxl_fabric_background_batch(cxl_fabric *f, const int32_t *route, const uint64_t *addr,
                                const uint64_t *bytes, const double *t_ns, int64_t n)
{
    if (!f || n < 0 || (n && (!route || !bytes || !t_ns)))
        return cxl_fail(CXL_EINVAL, "background_batch: NULL array");
    double done;
    for (int64_t i = 0; i < n; i++) {
        int st = transfer_one(f, route[i], addr ? addr[i] : 0, bytes[i], t_ns[i], 0, &done, NULL);
        if (st) return cxl_fail(st, "background_batch: item %lld: %s", (long long)i,
                                cxl_last_error());
    }
    return CXL_OK;
}

int cxl_fabric_idle_latency(cxl_fabric *f, int32_t route_id, uint64_t addr, uint64_t bytes,
                            double *out_ns)
{
    if (!f || !out_ns) return cxl_fail(CXL_EINVAL, "idle_latency: NULL argument");
    if (route_id < 0 || route_id >= f->n_routes)
        return cxl_fail(CXL_EINVAL, "idle_latency: unknown route %d", route_id);
    const route *rt = &f->routes[route_id];
    deal_bytes(addr, bytes, rt->granularity, rt->n_ways, f->way_bytes);
    double serv = 0;
    for (int32_t i = 0; i < rt->n_entries; i++) {
        const route_entry *e = &rt->entries[i];
        uint64_t b = e->way < 0 ? bytes : f->way_bytes[e->way];
        const resource *r = &f->res[e->res];
        double s = (double)b * e->slowdown * r->ns_per_byte;
        if (s > serv) serv = s;
    }
    *out_ns = route_latency(rt, f->way_bytes, addr) + serv;
    return CXL_OK;
}

/* ---------------------------------------------------------------- closed-loop load generator */

typedef struct { double t; int32_t thread; } issue_slot;

static int slot_before(const issue_slot *a, const issue_slot *b)
{
    return a->t < b->t || (a->t == b->t && a->thread < b->thread);
}

static void heap_down(issue_slot *h, int32_t n, int32_t i)
{
    for (;;) {
        int32_t l = 2 * i + 1, m = i;
        if (l < n && slot_before(&h[l], &h[m])) m = l;
        if (l + 1 < n && slot_before(&h[l + 1], &h[m])) m = l + 1;
        if (m == i) return;
        issue_slot tmp = h[i]; h[i] = h[m]; h[m] = tmp;
        i = m;
    }
}

int cxl_fabric_closed_loop(cxl_fabric *f, int32_t read_route, int32_t write_route,
                           double read_ratio, int32_t threads, double delay_ns,
                           uint64_t access_bytes, int64_t n_accesses, double *mean_latency_ns,
                           double *bandwidth_gbps)
{
    if (!f || !mean_latency_ns || !bandwidth_gbps)
        return cxl_fail(CXL_EINVAL, "closed_loop: NULL argument");
    if (!(read_ratio >= 0 && read_ratio <= 1))
        return cxl_fail(CXL_EINVAL, "closed_loop: read ratio must be in [0, 1], got %g", read_ratio);
    if (threads < 1 || n_accesses < 1 || access_bytes == 0 || !(delay_ns >= 0))
        return cxl_fail(CXL_EINVAL, "closed_loop: need threads >= 1, accesses >= 1, bytes > 0, "
                                    "delay >= 0");
    issue_slot *heap = malloc((size_t)threads * sizeof *heap);
    if (!heap) return cxl_fail(CXL_ENOMEM, "closed_loop: out of memory");
    /* stagger the first issues over one delay period so the issuers do not move in lockstep
     * (ascending start times already form a valid heap) */
    for (int32_t k = 0; k < threads; k++) heap[k] = (issue_slot){delay_ns * k / threads, k};
    /* bandwidth is measured once every issuer is running: bytes of accesses issued from t0 on,
     * over [t0, last completion] */
    double t0 = delay_ns * (threads - 1) / threads;
    double lat_sum = 0, last_done = 0, steady_bytes = 0;
    int st = CXL_OK;
    for (int64_t i = 0; i < n_accesses; i++) {
        /* deterministic read/write mix: access i reads when floor((i+1)R) steps past floor(iR) */
        int is_read = floor((double)(i + 1) * read_ratio) > floor((double)i * read_ratio);
        double t = heap[0].t, done;
        st = transfer_one(f, is_read ? read_route : write_route, (uint64_t)i * access_bytes,
                          access_bytes, t, 1, &done, NULL);
        if (st) break;
        lat_sum += done - t;
        if (done > last_done) last_done = done;
        if (t >= t0) steady_bytes += (double)access_bytes;
        heap[0].t = done + delay_ns;
        heap_down(heap, threads, 0);
    }
    free(heap);
    if (st) return st;
    *mean_latency_ns = lat_sum / (double)n_accesses;
    *bandwidth_gbps = last_done > t0 ? steady_bytes / (last_done - t0) : 0;
    return CXL_OK;
}

int cxl_fabric_resource_stats(cxl_fabric *f, int32_t res, cxl_resource_stats *out)
{
    if (!f || !out) return cxl_fail(CXL_EINVAL, "resource_stats: NULL argument");
    if (res < 0 || res >= f->n_res)
        return cxl_fail(CXL_EINVAL, "resource_stats: unknown resource %d", res);
    *out = f->res[res].st;
    return CXL_OK;
}

int32_t cxl_fabric_n_resources(cxl_fabric *f) { return f ? f->n_res : 0; }

void cxl_fabric_reset(cxl_fabric *f)
{
    if (!f) return;
    for (int32_t i = 0; i < f->n_res; i++) {
        resource *r = &f->res[i];
        memset(&r->st, 0, sizeof r->st);
        r->window = 0;
        r->window_busy = r->prev_busy = r->bg_free_at = 0;
    }
}
