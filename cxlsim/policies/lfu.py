"""LFU: evict the least frequently used block; ties go to the least recently used."""
from .heap_base import HeapEvictionPolicy
from .registry import register


@register("lfu")
class LFU(HeapEvictionPolicy):
    """Least frequently used first (reference for the C ordering).

    A block's count starts at 1 when it enters the index and follows it across tiers; ties break
    by the last access, counted on one clock that ticks on every insert and hit (as in C)."""

    c_ordering = "lfu"

    def new_priority(self, pos):
        return (1, self.clock)

    def hit_priority(self, old):
        return (min(old[0] + 1, 65535), self.clock)
