"""S3-FIFO (Yang et al., SOSP'23): a small FIFO filters one-hit blocks, a main FIFO keeps the
rest with a 2-bit reuse counter, and ghost keys let a returning block skip the small queue.
Reference for the C ordering: the same rules in the same order (see csrc/blockindex.c)."""
from collections import OrderedDict

from .base import Policy
from .registry import register


@register("s3fifo")
class S3FIFO(Policy):
    """Small queue = 10% of the tier (by blocks if the tier counts blocks, else by bytes)."""

    c_ordering = "s3fifo"

    def attach(self, view):
        super().attach(view)
        n = view.n_tiers
        self.small = [OrderedDict() for _ in range(n)]   # key -> bytes, oldest first
        self.main = [OrderedDict() for _ in range(n)]
        self.ghost = [OrderedDict() for _ in range(n)]
        self.small_bytes = [0] * n
        self.freq = {}
        self.caps = [view.tier_stats(t) for t in range(n)]

    def _size(self, key):
        return self.view.bytes_of(key)

    def _enter(self, key, tier, to_main):
        self.freq[key] = 0
        nbytes = self._size(key)
        if to_main:
            self.main[tier][key] = nbytes
        else:
            self.small[tier][key] = nbytes
            self.small_bytes[tier] += nbytes

    def _leave(self, key, tier):
        if key in self.small[tier]:
            self.small_bytes[tier] -= self.small[tier].pop(key)
        else:
            del self.main[tier][key]
        del self.freq[key]

    def on_insert(self, key, tier, pos, parent):
        to_main = key in self.ghost[tier]
        for g in self.ghost:             # a key is a ghost of at most one tier
            g.pop(key, None)
        self._enter(key, tier, to_main)

    def on_hit(self, key, tier, pos, parent):
        self.freq[key] = min(self.freq[key] + 1, 3)
        return 0 if self.promote_on_hit else tier

    def on_move(self, key, src, dst):
        self._leave(key, src)
        self._enter(key, dst, False)

    def on_remove(self, key, tier):
        self._leave(key, tier)
        ghost = self.ghost[tier]
        ghost[key] = None
        limit = max(self.view.usage(tier)[1], 1)
        while len(ghost) > limit:
            ghost.popitem(last=False)

    def _small_over_target(self, tier):
        cap = self.caps[tier]
        if cap.capacity_blocks >= 0:
            return len(self.small[tier]) * 10 >= cap.capacity_blocks
        return self.small_bytes[tier] * 10 >= cap.capacity_bytes

    def victim(self, tier):
        small, main, pinned = self.small[tier], self.main[tier], self.view.is_pinned
        budget = 3 * (len(small) + len(main)) + 3
        pinned_in_a_row = 0   # a full lap of pinned blocks in main: take from small
        while budget > 0:
            budget -= 1
            if small and (self._small_over_target(tier) or not main or pinned_in_a_row >= len(main)):
                key = next(iter(small))
                if self.freq[key] > 1 or pinned(key):
                    self.small_bytes[tier] -= small.pop(key)   # reused while small: to main
                    main[key] = self.view.bytes_of(key)
                    self.freq[key] = 0
                    continue
                return key
            if not main:
                break
            key = next(iter(main))
            if self.freq[key] or pinned(key):
                pinned_in_a_row = pinned_in_a_row + 1 if pinned(key) else 0
                self.freq[key] = max(self.freq[key] - 1, 0)
                main.move_to_end(key)
                continue
            return key
        raise LookupError(f"tier {tier}: every block is pinned")
