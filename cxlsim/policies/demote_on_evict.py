"""demote-on-evict: LRU down the hierarchy HBM -> DRAM -> CXL. A victim moves one tier down (the
copy is made when it is evicted), a hit in a lower tier promotes the block back to HBM, the
last tier's victims are dropped. The decisions equal `lru`'s; the name is the serving baseline's
(LMCache-style offload of evicted blocks)."""
from .lru import LRU
from .registry import register


@register("demote-on-evict")
class DemoteOnEvict(LRU):
    """LRU with promotion on hit and demotion on evict (the base-class defaults, kept explicit)."""

    c_ordering = None
    promote_on_hit = True
    demote_on_evict = True
