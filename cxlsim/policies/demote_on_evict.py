"""demote-on-evict: LRU down the hierarchy HBM -> DRAM -> CXL. A victim moves one tier down (the
copy is made when it is evicted), a hit in a lower tier promotes the block back to HBM, the
last tier's victims are dropped (LMCache-style offload of evicted blocks).

One difference from `lru`: a block pinned by a running request is in use (attention reads it every
step), so when the victim scan meets it, it counts as used now and moves to the recent end,
as vLLM's block manager only queues a block for eviction once no request holds it. Besides
being the serving semantics, this keeps victim() O(1) amortised when many blocks are pinned."""
from collections import deque
from itertools import takewhile

from .lru import LRU
from .registry import register


@register("demote-on-evict")
class DemoteOnEvict(LRU):
    """LRU with promotion on hit and demotion on evict (the base-class defaults, kept explicit)."""

    c_ordering = None
    promote_on_hit = True
    demote_on_evict = True

    def victim(self, tier):
        order, pinned = self.lists[tier], self.view.pinned
        oldest = next(iter(order), None)
        if oldest is not None and oldest not in pinned:
            return oldest                    # the common case
        # the pinned blocks at the old end, found and moved without a Python step per block
        in_use = list(takewhile(pinned.__contains__, order))
        if len(in_use) == len(order):
            raise LookupError(f"tier {tier}: every block is pinned")
        deque(map(order.move_to_end, in_use), 0)           # in use: as recent as now
        return next(iter(order))
