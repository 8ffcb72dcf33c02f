"""tail-first: evict the tails of cached prefixes first, as radix-tree prefix caches do (SGLang's
RadixAttention evicts leaf nodes in LRU order). A block whose successor blocks (children: blocks
whose parent key is this one) sit in the same tier stays; among the leaves of a tier the least
recently used goes. If every unpinned block of the tier has a child there (children pinned by a
running request), the least recently used unpinned block goes. Hits promote to tier 0 and
victims demote one tier down (the base-class defaults)."""
import heapq
from collections import OrderedDict

from .base import Policy
from .registry import register


@register("tail-first")
class TailFirst(Policy):
    def attach(self, view):
        super().attach(view)
        self.clock = 0
        self.last = {}          # key -> clock of its last insert/hit
        self.tier = {}
        self.parent = {}
        self.children = {}      # key -> set of resident child keys (any tier)
        self.kids = {}          # key -> resident children in the key's own tier
        self.heaps = [[] for _ in range(view.n_tiers)]        # leaves: (last, key), lazy
        self.lru = [OrderedDict() for _ in range(view.n_tiers)]  # fallback order, oldest first

    def _leaf_push(self, key):
        if self.kids[key] == 0:
            heapq.heappush(self.heaps[self.tier[key]], (self.last[key], key))

    def _enter(self, key, tier):
        """key now resides in tier: count its children there, tell its parent."""
        self.tier[key] = tier
        self.lru[tier][key] = None
        self.kids[key] = sum(1 for c in self.children.get(key, ()) if self.tier.get(c) == tier)
        p = self.parent.get(key)
        if p is not None and self.tier.get(p) == tier:
            self.kids[p] += 1
        self._leaf_push(key)

    def _leave(self, key, tier):
        del self.lru[tier][key]
        p = self.parent.get(key)
        if p is not None and self.tier.get(p) == tier:
            self.kids[p] -= 1
            self._leaf_push(p)

    def on_insert(self, key, tier, pos, parent):
        self.clock += 1
        self.last[key] = self.clock
        self.parent[key] = parent
        if parent is not None:
            self.children.setdefault(parent, set()).add(key)
        self._enter(key, tier)

    def on_hit(self, key, tier, pos, parent):
        self.clock += 1
        self.last[key] = self.clock
        self.lru[tier].move_to_end(key)
        self._leaf_push(key)
        return 0 if self.promote_on_hit else tier

    def on_move(self, key, src, dst):
        self._leave(key, src)
        self._enter(key, dst)

    def on_remove(self, key, tier):
        self._leave(key, tier)
        p = self.parent.pop(key)
        if p is not None and p in self.children:
            self.children[p].discard(key)
            if not self.children[p]:
                del self.children[p]
        del self.tier[key], self.last[key], self.kids[key]

    def victim(self, tier):
        heap, pinned, skipped = self.heaps[tier], self.view.pinned, []
        try:
            while heap:
                last, key = heap[0]
                if self.tier.get(key) != tier or self.last[key] != last or self.kids[key]:
                    heapq.heappop(heap)      # stale, or no longer a leaf (pushed again when it is)
                elif key in pinned:
                    skipped.append(heapq.heappop(heap))
                else:
                    return key
        finally:
            for entry in skipped:
                heapq.heappush(heap, entry)
        for key in self.lru[tier]:
            if key not in pinned:
                return key
        raise LookupError(f"tier {tier}: every block is pinned")
