"""FIFO: evict the block that entered the tier first; hits change nothing in the order."""
from .lru import LRU
from .registry import register


@register("fifo")
class FIFO(LRU):
    """First in, first out per tier (reference for the C ordering)."""

    c_ordering = "fifo"

    def on_hit(self, key, tier, pos, parent):
        return 0 if self.promote_on_hit else tier
