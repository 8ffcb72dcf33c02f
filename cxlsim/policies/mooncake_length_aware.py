"""mooncake-length-aware: LFU-like eviction that prefers blocks lying later in requests, after
the length-aware cache the Mooncake paper compares with LRU and LFU (arXiv 2407.00079, Table 1).
A prefix key always sits at the same position, and a block deep in a long prompt is only reused
by a request sharing all blocks before it, so it is the least likely to be reused.

Victim order per tier: lowest access count first, then the latest position in the request, then
the least recently used. Counts follow a block across tiers; hits promote to tier 0 and victims
demote one tier down (the base-class defaults)."""
from .heap_base import HeapEvictionPolicy
from .registry import register


@register("mooncake-length-aware")
class MooncakeLengthAware(HeapEvictionPolicy):
    def new_priority(self, pos):
        return (1, -pos, self.clock)

    def hit_priority(self, old):
        freq, npos, _ = old
        return (freq + 1, npos, self.clock)
