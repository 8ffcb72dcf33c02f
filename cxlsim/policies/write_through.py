"""write-through: new KV blocks are written to host DRAM as soon as they are computed (SGLang
HiCache's write-through mode), so evicting them from HBM later needs no copy. LRU per tier,
promotion to HBM on a hit, demotion one tier down on eviction."""
from .demote_on_evict import DemoteOnEvict
from .registry import register


@register("write-through")
class WriteThrough(DemoteOnEvict):
    """LRU with write_through: the serving engine copies each new block HBM -> tier 1 when its
    prefill ends and charges nothing for the HBM -> tier 1 demotion."""

    c_ordering = None          # same decisions as lru, but engines must see write_through
    write_through = True
