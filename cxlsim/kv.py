"""KVStore: the engine that asks a policy and applies its decisions to the block index.

It is the only place where a Python policy's answers change state, so the checks live here: a
policy that names a tier out of range, or a victim that is pinned or not in the tier, gets a
PolicyError naming the policy. Data movements (promotions, demotions, drops) are recorded when
asked, so a serving engine can charge them on the fabric.

The per-block path calls the C index directly (one cffi crossing per step): it is the loop that
pure-Python policies are measured by.
"""
from __future__ import annotations

from . import _core
from ._core import lib
from .errors import CxlsimError
from .index import BlockIndex
from .policies.base import Policy


class PolicyError(CxlsimError, RuntimeError):
    """A policy returned a decision the engine cannot apply."""


class KVStore:
    """Applies `policy` to `index`. Not thread-safe."""

    def __init__(self, index: BlockIndex, policy: Policy, record_moves: bool = False):
        self.index = index
        self.policy = policy
        self.n_tiers = len(index.tiers)
        self.record_moves = record_moves
        self.moves: list[tuple[int, int, int, int]] = []   # (key, src tier, dst tier, bytes)
        self.drops: list[tuple[int, int, int]] = []        # (key, tier, bytes)
        self._h = index._h
        self._caps = [(t.capacity_bytes, t.capacity_blocks) for t in index.tiers]
        policy.attach(index.view)

    def _tier(self, tier, what: str) -> int:
        if type(tier) is not int or not 0 <= tier < self.n_tiers:
            raise PolicyError(f"policy {self.policy.name!r}: {what} returned tier {tier!r}; "
                              f"tiers are 0..{self.n_tiers - 1}")
        return tier

    def access(self, key: int, nbytes: int, pos: int = 0, parent: int | None = None) -> int:
        """One block access: the tier that hit, or -1 for a miss (the block is then inserted
        where the policy places it, unless no room can be made there)."""
        policy = self.policy
        tier = lib.cxl_index_hit(self._h, key)
        if tier >= 0:
            dest = policy.on_hit(key, tier, pos, parent)
            if dest != tier:
                self.relocate(key, tier, self._tier(dest, "on_hit"))
            return tier
        dest = policy.place(key, nbytes, pos, parent)
        if type(dest) is not int or not 0 <= dest < self.n_tiers:
            self._tier(dest, "place")
        if self.make_room(dest, nbytes):
            lib.cxl_index_insert(self._h, key, dest, nbytes, -1)
            policy.on_insert(key, dest, pos, parent)
        return -1

    def relocate(self, key: int, src: int, dst: int) -> bool:
        """Move a resident block, making room at dst while the block is held where it is."""
        h, index = self._h, self.index
        nbytes = lib.cxl_index_bytes_of(h, key)
        index.pin(key)          # not a candidate while room is made
        try:
            ok = self.make_room(dst, nbytes)
        finally:
            index.unpin(key)
        if not ok:
            return False
        _core.check(lib.cxl_index_move(h, key, dst))
        if self.record_moves:
            self.moves.append((key, src, dst, nbytes))
        self.policy.on_move(key, src, dst)
        return True

    def make_room(self, tier: int, nbytes: int) -> bool:
        """Evict from `tier` until nbytes fit; False if the policy cannot free enough."""
        h, policy = self._h, self.policy
        fits = lib.cxl_index_fits_now
        if fits(h, tier, nbytes):
            return True
        cap_bytes, cap_blocks = self._caps[tier]
        if (cap_bytes and nbytes > cap_bytes) or cap_blocks == 0:
            return False
        while not fits(h, tier, nbytes):
            try:
                victim = policy.victim(tier)
            except LookupError:
                return False   # everything pinned
            dest = policy.demote_to(victim, tier)
            if dest is not None:
                if lib.cxl_index_tier_of(h, victim) != tier or victim in self.index.pins:
                    self._bad_victim(victim, tier)
                if self.relocate(victim, tier, self._tier(dest, "demote_to")):
                    continue
            vbytes = lib.cxl_index_bytes_of(h, victim) if self.record_moves else 0
            if lib.cxl_index_remove_from(h, victim, tier):
                self._bad_victim(victim, tier)
            if self.record_moves:
                self.drops.append((victim, tier, vbytes))
            policy.on_remove(victim, tier)
        return True

    def _bad_victim(self, victim: int, tier: int):
        state = "pinned" if victim in self.index.pins else "not in that tier"
        raise PolicyError(f"policy {self.policy.name!r}: victim({tier}) returned block "
                          f"{victim}, which is {state}")
