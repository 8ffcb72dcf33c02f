"""LFU: evict the least frequently used block; ties go to the least recently used."""
import heapq

from .base import Policy
from .registry import register


@register("lfu")
class LFU(Policy):
    """Least frequently used first (reference for the C ordering).

    A block's count starts at 1 when it enters the index and follows it across tiers; ties break
    by the last access, counted on one clock that ticks on every insert and hit (as in C)."""

    c_ordering = "lfu"

    def attach(self, view):
        super().attach(view)
        self.clock = 0
        self.state = {}                                   # key -> (freq, last)
        self.heaps = [[] for _ in range(view.n_tiers)]    # (freq, last, key), stale entries skipped
        self.tier = {}

    def _push(self, key, tier):
        freq, last = self.state[key]
        heapq.heappush(self.heaps[tier], (freq, last, key))

    def on_insert(self, key, tier, pos, parent):
        self.clock += 1
        self.state[key] = (1, self.clock)
        self.tier[key] = tier
        self._push(key, tier)

    def on_hit(self, key, tier, pos, parent):
        self.clock += 1
        freq, _ = self.state[key]
        self.state[key] = (min(freq + 1, 65535), self.clock)
        self._push(key, tier)
        return 0 if self.promote_on_hit else tier

    def on_move(self, key, src, dst):
        self.tier[key] = dst
        self._push(key, dst)

    def on_remove(self, key, tier):
        del self.state[key], self.tier[key]

    def victim(self, tier):
        heap, skipped = self.heaps[tier], []
        try:
            while heap:
                freq, last, key = heap[0]
                if self.tier.get(key) != tier or self.state[key] != (freq, last):
                    heapq.heappop(heap)               # stale entry
                elif self.view.is_pinned(key):
                    skipped.append(heapq.heappop(heap))
                else:
                    return key
            raise LookupError(f"tier {tier}: every block is pinned")
        finally:
            for entry in skipped:
                heapq.heappush(heap, entry)
