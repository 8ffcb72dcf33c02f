"""LRU: evict the least recently used block of the tier (reference for the C ordering)."""
from collections import OrderedDict, deque
from itertools import repeat
from operator import itemgetter

from .base import Policy
from .registry import register

_first = itemgetter(0)


@register("lru")
class LRU(Policy):
    """Least recently used first. Hits promote to tier 0; victims demote one tier down."""

    c_ordering = "lru"

    def attach(self, view):
        super().attach(view)
        self.lists = [OrderedDict() for _ in range(view.n_tiers)]  # oldest first

    def on_insert(self, key, tier, pos, parent):
        self.lists[tier][key] = None

    def on_hit(self, key, tier, pos, parent):
        self.lists[tier].move_to_end(key)
        return 0 if self.promote_on_hit else tier

    def on_move(self, key, src, dst):
        del self.lists[src][key]
        self.lists[dst][key] = None

    def on_remove(self, key, tier):
        del self.lists[tier][key]

    def hit_many(self, tier, keys, first_pos, parent):
        if tier and self.promote_on_hit:      # the first block leaves for tier 0
            return self.hit_by_block(tier, keys, first_pos, parent)
        deque(map(self.lists[tier].move_to_end, keys), 0)
        return None

    def admit_many(self, tier, keys, first_pos, parent, free_slots):
        order, need = self.lists[tier], len(keys) - free_slots
        if need <= 0 or (not self.view.pinned and need <= len(order)):
            # the run's victims are the `need` oldest blocks, all older than the run itself
            victims = list(map(_first, map(order.popitem, repeat(False, need))))
            order.update(zip(keys, repeat(None)))
            return victims
        # pins, or a run longer than the tier: block by block
        return self.admit_by_block(tier, keys, first_pos, parent, free_slots)

    def victim(self, tier):
        pinned = self.view.pinned
        for key in self.lists[tier]:
            if key not in pinned:
                return key
        raise LookupError(f"tier {tier}: every block is pinned")
