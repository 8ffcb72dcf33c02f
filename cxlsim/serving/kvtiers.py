"""One host's KV-cache tiers (HBM, host DRAM, CXL) and the data movement they cost on the fabric.

The policy decides through a KVStore; this module turns the store's recorded moves into fabric
transfers and keeps the HBM budget of running requests. Rules (docs/replay.md, "KV tiers"):

* Admission of a request reserves its whole HBM footprint up front: one block of HBM for every
  prompt block (resident there, or a scratch copy when the policy keeps it in a lower tier) plus
  ceil(output / block_tokens) blocks for the KV it will generate. Blocks already pinned in HBM by
  another running request cost nothing. If the footprint does not fit next to the pinned blocks
  of running requests the request waits (FCFS); if it does not fit in an empty HBM it is rejected.
* The reusable prefix is the run of leading blocks resident in any tier. Hits in HBM are used in
  place; hits in DRAM/CXL are loaded into HBM (a promotion the policy chose, or a scratch copy).
  Every move the policy makes (promotion, demotion cascade) is a transfer between the tiers'
  fabric endpoints, issued at admission; the request's prefill waits for all of them (a demotion
  frees the HBM its blocks need). Drops cost nothing. With a write-through policy, blocks computed
  by the request are also written to the next tier when its prefill ends, and demotion from HBM
  to that tier is free (the copy is already there).
* Blocks the request uses stay pinned in HBM until it finishes; scratch blocks (output KV, copies)
  are freed then: the trace cannot say which later prompt blocks the generated tokens become.
* Multi-host (a PoolSide given): the CXL tier is the shared pool, not a local tier. A block absent
  from the host's tiers but in the pool's mirror is a pool hit: in the reusable prefix it is loaded
  from the pool into HBM (and the pool is told, a touch). Every block a request computes is
  published to the pool when its prefill ends (a put and its HBM -> pool transfer), as Mooncake's
  and LMCache's global stores do, so other hosts can reuse it; a block that leaves the host's last
  local tier and is not in the pool is written there too, when the policy demotes on eviction.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import PoolError
from ..fabric import Fabric
from ..index import BlockIndex, TierSpec
from ..kv import KVStore
from ..policies.base import Policy
from .pooltier import PoolSide

SCRATCH_BASE = 0xFFFF_FFFF_0000_0000   # scratch keys: far from the dense ranges tests use
MAX_BLOCK_BYTES = (1 << 32) - 1        # the C index keeps block sizes in 32 bits


@dataclass(frozen=True)
class Tier:
    name: str            # "hbm", "dram", "cxl"
    endpoint: str        # fabric endpoint the tier's blocks live in
    capacity_bytes: int


@dataclass
class Admission:
    prefix_blocks: int                 # leading blocks reused
    tier_hits: list                    # per tier: prefix blocks found there
    block_hits: list                   # per tier: any block of the request found there
    ready_ns: float                    # all loads and demotions done
    loaded_bytes: int
    pinned: list = field(default_factory=list)
    scratch: list = field(default_factory=list)
    writes: list = field(default_factory=list)  # (route id, bytes) issued when prefill ends
    publish: list = field(default_factory=list)  # keys put into the shared pool when prefill ends


class TieredKV:
    """HBM/DRAM/CXL tiers of one host under one policy, charged on a shared fabric."""

    def __init__(self, tiers: list[Tier], policy: Policy, block_bytes: int, fabric: Fabric,
                 record_every_ns: float = 0.0, pool: PoolSide | None = None):
        if block_bytes > MAX_BLOCK_BYTES:
            raise ValueError(f"a KV block of {block_bytes} bytes exceeds the index's 4 GiB limit; "
                             f"use smaller blocks")
        self.tiers = tiers
        self.block_bytes = block_bytes
        self.fabric = fabric
        index = BlockIndex([TierSpec(t.name, capacity_bytes=t.capacity_bytes) for t in tiers])
        self.store = KVStore(index, policy, record_moves=True)
        self.write_through = bool(policy.write_through) and len(tiers) > 1
        self.pool = pool
        self.offload = pool is not None and policy.demote_on_evict
        # hit counters have one more column for the pool when there is one
        self.n_report = len(tiers) + (pool is not None)
        self.hbm_capacity = tiers[0].capacity_bytes
        self.pinned_hbm = 0
        self._pin_count: dict[int, int] = {}
        self._routes: dict[tuple[int, int], int] = {}
        self._pool_flows: dict[int, tuple[int, bool]] = {}   # pool route -> (tier, to_pool)
        self._peer_routes: dict[tuple[int, int, bool], int] = {}
        self._contended: dict[int, bool] = {}       # route -> shares a resource with a peer's
        self._peer_resources: set[str] | None = None
        # transfers nothing waits for, held back while the pool's last delta is still coming
        # (a host process): issued before the host's next transfer or hand-in (flush)
        self._unissued: list[tuple[list[tuple[int, int]], float]] = []
        self._next_scratch = SCRATCH_BASE
        # transfer log for link-utilization plots: start ns, route, bytes
        self.log_t: list[float] = []
        self.log_route: list[int] = []
        self.log_bytes: list[int] = []
        self.record_every_ns = record_every_ns
        self.occupancy: list[tuple] = []   # (t ns, used bytes per tier...)
        self._next_sample = 0.0

    # ------------------------------------------------------------------ fabric
    def route(self, src: int, dst: int) -> int:
        key = (src, dst)
        rid = self._routes.get(key)
        if rid is None:
            rid = self._routes[key] = self.fabric.route(self.tiers[src].endpoint,
                                                        self.tiers[dst].endpoint)
        return rid

    def pool_route(self, to_pool: bool, tier: int) -> int:
        """Route between the pool and a local tier (either direction)."""
        key = ("pool", to_pool, tier)
        rid = self._routes.get(key)
        if rid is None:
            rid = self._routes[key] = self._pool_route_of(self.tiers[tier].endpoint, to_pool)
            self._pool_flows[rid] = (tier, to_pool)
        return rid

    # ------------------------------------------------------------------ other hosts' traffic
    def _take_in_received(self) -> None:
        """Take in the other hosts' moves the pool side has received (settling its delta)."""
        traffic = self.pool.take_traffic()
        if traffic:
            self._take_in(traffic)

    def _take_in(self, traffic) -> None:
        """Other hosts' moves of past barriers (PoolSide.take_traffic): they occupy the pool's
        shared links and devices on this host's fabric, counted in no statistic of it."""
        self.fabric.background_batch([self._peer_route(tr.host, tr.tier, tr.to_pool)
                                      for tr in traffic],
                                     [tr.nbytes for tr in traffic], [tr.t_ns for tr in traffic])

    def _peer_route(self, host: int, tier: int, to_pool: bool) -> int:
        key = (host, tier, to_pool)
        rid = self._peer_routes.get(key)
        if rid is None:
            tiers = self.pool.tiers_by_host.get(host)
            if tiers is None:
                raise PoolError(f"host {host} moved bytes to or from the pool, and this replay "
                                f"has hosts {sorted(self.pool.tiers_by_host)} only")
            if not 0 <= tier < len(tiers):
                raise PoolError(f"host {host} moved bytes through its tier {tier}, and this "
                                f"replay gives it {len(tiers)} tiers: do the hosts run with one "
                                f"topology and policy?")
            rid = self._peer_routes[key] = self._pool_route_of(tiers[tier], to_pool)
        return rid

    def _pool_route_of(self, endpoint: str, to_pool: bool) -> int:
        """The fabric route between a tier's endpoint and the pool, in the given direction."""
        pool = self.pool.endpoint
        return self.fabric.route(endpoint, pool) if to_pool else self.fabric.route(pool, endpoint)

    def _shares_with_peers(self, route: int) -> bool:
        """Whether a route of this host crosses a resource other hosts' pool traffic uses (its
        transfers must then wait for the other hosts' moves of the last barrier)."""
        hit = self._contended.get(route)
        if hit is None:
            if self._peer_resources is None:
                pool, fabric = self.pool, self.fabric
                self._peer_resources = {
                    name for host, tiers in pool.tiers_by_host.items() if host != pool.host
                    for ep in tiers for pair in ((ep, pool.endpoint), (pool.endpoint, ep))
                    for name in fabric.route_resources(*pair)}
            hit = self._contended[route] = not self._peer_resources.isdisjoint(
                self.fabric.resources_of_route(route))
        return hit

    def routes_used(self) -> dict:
        """(src endpoint, dst endpoint) -> fabric route id, for every route used so far."""
        out = {}
        for key, rid in self._routes.items():
            if key[0] == "pool":
                _, to_pool, tier = key
                ends = (self.tiers[tier].endpoint, self.pool.endpoint)
                out[ends if to_pool else ends[::-1]] = rid
            else:
                out[(self.tiers[key[0]].endpoint, self.tiers[key[1]].endpoint)] = rid
        return out

    def _transfer(self, items: list[tuple[int, int]], t: float, awaited: bool = True) -> float:
        """Issue (route, bytes) transfers at t in order; latest completion (t if none). With a
        pool, the bytes moved to or from it are handed in too (PoolSide.move), for the other
        hosts' fabrics, whose moves go into this fabric first. A transfer whose completion
        nobody awaits, which would wait for a delta still coming, is held back (returns t) and
        issued before the next transfer or hand-in: the same order, without the wait."""
        if not items:
            return t
        if self._unissued:
            self.flush()
        pool = self.pool
        if pool is not None:
            self._record_moves(items, t)
            if (pool.lazy or pool.traffic_in) and any(self._shares_with_peers(r) for r, _ in items):
                if pool.lazy and not awaited:
                    self._unissued.append((items, t))
                    return t
                self._take_in_received()          # the other hosts' moves go in first
        return self._issue(items, t)

    def flush(self) -> None:
        """Issue the transfers held back (see _transfer), after the other hosts' moves."""
        held, self._unissued = self._unissued, []
        if held:
            self._take_in_received()
            for items, t in held:
                self._issue(items, t)

    def _record_moves(self, items: list[tuple[int, int]], t: float) -> None:
        """The pool's share of a batch, one move per tier and direction (PoolSide.move)."""
        flows = self._pool_flows
        moved: dict[tuple[int, bool], int] = {}
        for r, b in items:
            flow = flows.get(r)
            if flow is not None:
                moved[flow] = moved.get(flow, 0) + b
        for (tier, to_pool), nbytes in moved.items():
            self.pool.move(tier, to_pool, nbytes, t)

    def _issue(self, items: list[tuple[int, int]], t: float) -> float:
        self.log_t.extend([t] * len(items))
        self.log_route.extend(r for r, _ in items)
        self.log_bytes.extend(b for _, b in items)
        if len(items) == 1:
            return self.fabric.transfer_route(items[0][0], items[0][1], t)[0]
        routes = np.fromiter((r for r, _ in items), np.int32, len(items))
        sizes = np.fromiter((b for _, b in items), np.uint64, len(items))
        return float(self.fabric.transfer_batch(routes, sizes, t).max())

    def prefill_done(self, adm: Admission, t: float) -> None:
        """The request's prompt KV exists: write-through copies and pool publications go out
        (nothing waits for them)."""
        items = list(adm.writes)
        if adm.publish:
            route = self.pool_route(True, 0)
            for key in adm.publish:
                self.pool.put(key, self.block_bytes, t)
                items.append((route, self.block_bytes))
        self._transfer(items, t, awaited=False)

    # ------------------------------------------------------------------ admission
    def footprint(self, keys: list[int], extra_blocks: int) -> int:
        """HBM bytes a request would add to the pinned ones (extra_blocks: scratch it needs)."""
        pinned = self._pin_count
        resident = sum(1 for k in keys if k in pinned)
        return (len(keys) - resident + extra_blocks) * self.block_bytes

    def admit(self, key_array: np.ndarray, extra_blocks: int, t: float) -> Admission | None:
        """Reserve HBM for a request and move its reused blocks in; None if it must wait.
        extra_blocks: scratch blocks besides the keyed prompt blocks (output KV, prompt blocks
        the trace gives no key for). The caller checks that the footprint can ever fit."""
        keys = key_array.tolist()
        if self.pinned_hbm + self.footprint(keys, extra_blocks) > self.hbm_capacity:
            return None
        store, bb = self.store, self.block_bytes
        tier_of = store.tier_of
        n_tiers = len(self.tiers)
        # guard every block of the request (resident or about to be inserted) while others are
        # evicted to make room; with all of them held, the tier each access hits is the tier
        # the block was in when the request arrived
        hold, release = store.hold, store.release
        for k in keys:
            hold(k)
        hit = np.empty(len(keys), np.int8)
        store.access_many(key_array, bb, hit)
        store.flush()
        before = hit.tolist()
        pool = self.pool
        if pool is not None:                              # the pool is tier n_tiers in reports
            before = [n_tiers if tb < 0 and k in pool else tb for k, tb in zip(keys, before)]
        prefix = 0
        while prefix < len(before) and before[prefix] >= 0:
            prefix += 1
        tier_hits = [0] * self.n_report
        block_hits = [0] * self.n_report
        for i, tb in enumerate(before):
            if tb >= 0:
                block_hits[tb] += 1
                if i < prefix:
                    tier_hits[tb] += 1
        # every move the policy made, charged in order
        items = []
        wt = self.write_through
        loaded = 0
        for _k, src, dst, nbytes in store.moves:
            if wt and src == 0 and dst == 1:
                continue                                  # already written through
            items.append((self.route(src, dst), nbytes))
            if dst == 0:
                loaded += nbytes
        store.moves.clear()
        self._offload_drops(t, items)
        adm = Admission(prefix, tier_hits, block_hits, t, 0)
        scratch_needed = extra_blocks
        for i, k in enumerate(keys):
            tier = tier_of(k)
            from_pool = i < prefix and before[i] == n_tiers
            if from_pool:                                 # reused from the shared pool
                items.append((self.pool_route(False, 0), bb))
                loaded += bb
                pool.touch(k, t)
            elif pool is not None and before[i] < 0 and k not in pool:
                adm.publish.append(k)                     # computed here: share it
            if tier == 0:
                self._pin(k)
                adm.pinned.append(k)
                if wt and before[i] < 0:
                    adm.writes.append((self.route(0, 1), bb))
                continue
            scratch_needed += 1
            if from_pool:
                pass                                      # loaded above, into a scratch block
            elif i < prefix:                              # reused from a lower tier, not promoted
                items.append((self.route(before[i], 0), bb))
                loaded += bb
            elif tier > 0:                                # computed here, kept in a lower tier
                adm.writes.append((self.route(0, tier), bb))
        for k in keys:
            release(k)
        for _ in range(scratch_needed):
            k = self._scratch_key()
            if not store.insert(k, 0, bb):
                raise RuntimeError("HBM reservation broke: no room for scratch KV")  # a bug
            adm.scratch.append(k)
        if adm.scratch:
            store.flush()                                 # C must know a key before pinning it
            for k in adm.scratch:
                self._pin(k)
        self._offload_drops(t, items)                     # scratch inserts may have evicted
        adm.ready_ns = self._transfer(items, t)
        adm.loaded_bytes = loaded
        if self.record_every_ns and t >= self._next_sample:
            self.sample(t)
        return adm

    def _offload_drops(self, t: float, items: list) -> None:
        """Blocks the policy dropped: with a pool, those leaving the last local tier go to it."""
        store = self.store
        if self.offload:
            last = len(self.tiers) - 1
            for key, tier, nbytes in store.drops:
                if tier == last and key < SCRATCH_BASE and key not in self.pool:
                    self.pool.put(key, nbytes, t)
                    items.append((self.pool_route(True, tier), nbytes))
        store.drops.clear()

    def release(self, adm: Admission) -> None:
        """The request finished: unpin its blocks, free its scratch KV."""
        store = self.store
        for k in adm.pinned:
            self._unpin(k)
        for k in adm.scratch:
            self._unpin(k)
            store.discard(k)

    def sample(self, t: float) -> None:
        self.occupancy.append((t, *self.used_bytes()))
        self._next_sample = t + self.record_every_ns

    # ------------------------------------------------------------------ pins
    def _pin(self, key: int) -> None:
        n = self._pin_count.get(key, 0)
        if n == 0:
            self.store.index.pin(key)
            self.pinned_hbm += self.block_bytes
        self._pin_count[key] = n + 1

    def _unpin(self, key: int) -> None:
        n = self._pin_count[key]
        if n == 1:
            del self._pin_count[key]
            self.store.index.unpin(key)       # a pinned key cannot have a queued change
            self.pinned_hbm -= self.block_bytes
        else:
            self._pin_count[key] = n - 1

    def _scratch_key(self) -> int:
        tier_of = self.store.tier_of
        k = self._next_scratch
        while tier_of(k) >= 0:
            k += 1
        self._next_scratch = k + 1 if k + 1 <= (1 << 64) - 1 else SCRATCH_BASE
        return k

    def used_bytes(self) -> list[int]:
        return [self.store.view.usage(t)[0] for t in range(len(self.tiers))]
