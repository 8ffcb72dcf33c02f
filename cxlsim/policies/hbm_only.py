"""hbm-only: the KV cache lives in HBM alone; an evicted block is dropped and recomputed on its
next use. What vLLM's automatic prefix caching does without an offload connector."""
from .demote_on_evict import DemoteOnEvict
from .registry import register


@register("hbm-only")
class HbmOnly(DemoteOnEvict):
    """LRU in tier 0 (in-use blocks count as used, see demote-on-evict); victims are dropped. Serving engines build only the HBM tier for it."""

    c_ordering = None          # its tier layout differs from plain lru: no C fast path
    demote_on_evict = False
    #: read by serving engines: use at most this many tiers (HBM only)
    max_tiers = 1

    def place(self, key, nbytes, pos, parent):
        return 0

    def demote_to(self, key, tier):
        return None
