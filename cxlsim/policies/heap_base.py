"""Shared machinery for policies that evict the block with the smallest priority tuple: one
lazy min-heap per tier (stale entries are skipped when they surface), with priorities that follow
a block across tiers. Subclasses say only how a priority starts and how a hit changes it."""
import heapq

from .base import Policy


class HeapEvictionPolicy(Policy):
    """Evicts the unpinned block with the smallest priority; `clock` ticks on inserts and hits."""

    def new_priority(self, pos: int) -> tuple:
        raise NotImplementedError

    def hit_priority(self, old: tuple) -> tuple:
        raise NotImplementedError

    def attach(self, view):
        super().attach(view)
        self.clock = 0
        self.state = {}                                   # key -> priority tuple
        self.tier = {}
        self.heaps = [[] for _ in range(view.n_tiers)]    # (*priority, key), lazy

    def _push(self, key):
        heapq.heappush(self.heaps[self.tier[key]], (*self.state[key], key))

    def on_insert(self, key, tier, pos, parent):
        self.clock += 1
        self.state[key] = self.new_priority(pos)
        self.tier[key] = tier
        self._push(key)

    def on_hit(self, key, tier, pos, parent):
        self.clock += 1
        self.state[key] = self.hit_priority(self.state[key])
        self._push(key)
        return 0 if self.promote_on_hit else tier

    def on_move(self, key, src, dst):
        self.tier[key] = dst
        self._push(key)

    def on_remove(self, key, tier):
        del self.state[key], self.tier[key]

    def victim(self, tier):
        heap, skipped = self.heaps[tier], []
        try:
            while heap:
                entry = heap[0]
                key = entry[-1]
                if self.tier.get(key) != tier or self.state[key] != entry[:-1]:
                    heapq.heappop(heap)                   # stale entry
                elif self.view.is_pinned(key):
                    skipped.append(heapq.heappop(heap))
                else:
                    return key
            raise LookupError(f"tier {tier}: every block is pinned")
        finally:
            for entry in skipped:
                heapq.heappush(heap, entry)
