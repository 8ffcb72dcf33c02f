"""mooncake-length-aware: LFU-like eviction that prefers blocks lying later in requests, after
the length-aware cache the Mooncake paper compares with LRU and LFU (arXiv 2407.00079, Table 1).
A prefix key always sits at the same position, and a block deep in a long prompt is only reused
by a request sharing all blocks before it, so it is the least likely to be reused.

Victim order per tier: lowest access count first, then the latest position in the request, then
the least recently used. Counts follow a block across tiers; hits promote to tier 0 and victims
demote one tier down (the base-class defaults)."""
import heapq

from .base import Policy
from .registry import register


@register("mooncake-length-aware")
class MooncakeLengthAware(Policy):
    def attach(self, view):
        super().attach(view)
        self.clock = 0
        self.state = {}                                   # key -> (freq, -pos, last)
        self.tier = {}
        self.heaps = [[] for _ in range(view.n_tiers)]    # (freq, -pos, last, key), lazy

    def _push(self, key):
        heapq.heappush(self.heaps[self.tier[key]], (*self.state[key], key))

    def on_insert(self, key, tier, pos, parent):
        self.clock += 1
        self.state[key] = (1, -pos, self.clock)
        self.tier[key] = tier
        self._push(key)

    def on_hit(self, key, tier, pos, parent):
        self.clock += 1
        freq, npos, _ = self.state[key]
        self.state[key] = (freq + 1, npos, self.clock)
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
                key = entry[3]
                if self.tier.get(key) != tier or self.state[key] != entry[:3]:
                    heapq.heappop(heap)                   # stale
                elif self.view.is_pinned(key):
                    skipped.append(heapq.heappop(heap))
                else:
                    return key
            raise LookupError(f"tier {tier}: every block is pinned")
        finally:
            for entry in skipped:
                heapq.heappush(heap, entry)
