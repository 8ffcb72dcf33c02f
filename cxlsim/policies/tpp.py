"""tpp: after TPP (Maruf et al., ASPLOS'23, arXiv 2206.02878), which places new pages in the fast
tier, demotes cold pages down instead of dropping them, and promotes a slow-tier page only when
it proves hot. Here: new blocks in tier 0; LRU victims demote one tier down; a block in a lower
tier is promoted to tier 0 on its `threshold`-th hit there (default 2), its count restarting
whenever it moves. Until then a serving engine reads it from where it is."""
from .demote_on_evict import DemoteOnEvict
from .registry import register


@register("tpp")
class TPP(DemoteOnEvict):
    """LRU per tier, demotion on evict, promotion after `threshold` hits in a lower tier."""

    c_ordering = None

    def __init__(self, threshold: int = 2):
        super().__init__()
        if type(threshold) is not int or threshold < 1:
            raise ValueError(f"threshold must be an integer >= 1, got {threshold!r}")
        self.threshold = threshold

    def attach(self, view):
        super().attach(view)
        self.low_hits = {}                      # key -> hits since it entered its lower tier

    def on_hit(self, key, tier, pos, parent):
        self.lists[tier].move_to_end(key)
        if tier == 0:
            return 0
        hits = self.low_hits.get(key, 0) + 1
        if hits >= self.threshold:
            return 0
        self.low_hits[key] = hits
        return tier

    def on_move(self, key, src, dst):
        super().on_move(key, src, dst)
        self.low_hits.pop(key, None)

    def on_remove(self, key, tier):
        super().on_remove(key, tier)
        self.low_hits.pop(key, None)
