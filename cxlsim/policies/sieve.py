"""SIEVE (Zhang et al., NSDI'24): one FIFO with a visited bit per block and a hand that sweeps from
the oldest block toward the newest, sparing (and clearing) visited blocks. Reference for the C
ordering (see csrc/blockindex.c)."""
from .base import Policy
from .registry import register


class _Ring:
    """Doubly linked list, newest at head; `newer[k]` is toward the head."""

    def __init__(self):
        self.newer, self.older = {}, {}
        self.head = self.tail = self.hand = None

    def push_head(self, key):
        self.newer[key], self.older[key] = None, self.head
        if self.head is not None:
            self.newer[self.head] = key
        else:
            self.tail = key
        self.head = key

    def unlink(self, key):
        newer, older = self.newer.pop(key), self.older.pop(key)
        if self.hand == key:
            self.hand = newer
        if newer is not None:
            self.older[newer] = older
        else:
            self.head = older
        if older is not None:
            self.newer[older] = newer
        else:
            self.tail = newer


@register("sieve")
class SIEVE(Policy):
    c_ordering = "sieve"

    def attach(self, view):
        super().attach(view)
        self.rings = [_Ring() for _ in range(view.n_tiers)]
        self.visited = set()

    def on_insert(self, key, tier, pos, parent):
        self.visited.discard(key)
        self.rings[tier].push_head(key)

    def on_hit(self, key, tier, pos, parent):
        self.visited.add(key)
        return 0 if self.promote_on_hit else tier

    def on_move(self, key, src, dst):
        self.rings[src].unlink(key)
        self.visited.discard(key)
        self.rings[dst].push_head(key)

    def on_remove(self, key, tier):
        self.rings[tier].unlink(key)
        self.visited.discard(key)

    def victim(self, tier):
        ring, pinned = self.rings[tier], self.view.is_pinned
        key = ring.hand if ring.hand is not None else ring.tail
        budget = 3 * len(ring.newer) + 3
        while key is not None and budget > 0:
            budget -= 1
            if key not in self.visited and not pinned(key):
                ring.hand = ring.newer[key]
                return key
            if not pinned(key):
                self.visited.discard(key)
            key = ring.newer[key] if ring.newer[key] is not None else ring.tail
        raise LookupError(f"tier {tier}: every block is pinned")
