"""The placement-policy contract.

A policy decides; it never changes state. The engine (cxlsim.kv.KVStore) owns the block index,
asks the policy at each decision point, checks the answer and applies it, then tells the policy
what happened so it can keep its own bookkeeping (recency lists, counters, ghost keys).

Decision points, in the order the engine reaches them for one block access:

1. The block is resident in tier `t`: `on_hit(key, t, pos, parent)` returns the tier it should
   be in after this hit (`t` to stay, a smaller tier to promote). If that tier is full the engine
   makes room there first (step 3), then moves the block and calls `on_move`.
2. The block is absent: `place(key, nbytes, pos, parent)` returns the tier for the new block, the
   engine makes room there (step 3), inserts it and calls `on_insert`.
3. Making room in tier `t`: while the new block does not fit, the engine calls `victim(t)`, which
   must return the key of an unpinned block resident in `t`, then `demote_to(key, t)`: a tier to
   move it to (room is made there the same way) or None to drop it. The engine then calls
   `on_move(key, t, dest)` or `on_remove(key, t)`.

Arguments: `key` is the 64-bit prefix key of the block (it stands for the block and every block
before it in the request), `pos` the block's position in the request (0 = first), `parent` the key
of the block before it (None for pos 0), `nbytes` its size, tiers are ints (0 = fastest; names in
`self.view.tier_names`).

What a policy may read: `self.view` (an IndexView: tier_of, is_pinned, pinned, fits, bytes_of,
usage, info, tier_stats) and its own state. All but the last two are cheap; info and tier_stats
may make the engine flush queued changes to C, so keep them out of per-block paths. What it must
never do: change the index, return a pinned or non-resident victim, or rely on being told about
blocks the engine pins or unpins (pinning is the engine's).
Policies must be deterministic: the same calls in the same order give the same answers.

Runs of misses (optional, for speed): calls cost more than most policies' own work, and most
accesses in a full cache are misses that cost three calls (victim, on_remove, on_insert). A
policy may define `admit_many(tier, keys, first_pos, parent, free_slots)`; the engine then hands
it a whole run of consecutive absent blocks of one request when all of them go to `tier` and
their victims can only be dropped (place() and demote_to() not overridden and nothing to demote
to, or demote_on_evict False; capacity counted in blocks). For each key in order it must: if no
free slot is left, choose a victim exactly as victim(tier) would and forget it as on_remove would
(or append None if every block is pinned, and not record that key); then record the key as
on_insert would (position first_pos + i, parent the previous key). It returns the victims, one
entry per key that needed room. The engine checks every victim and applies the run in order.
While the run is handled, the view does not yet show its changes, so a policy whose choices read
the view (usage, bytes_of, tier_of) must not define it. Tests compare it with the per-block calls.
A subclass that overrides victim, on_insert, on_remove, place or demote_to of the class defining
admit_many does not get runs (the inherited admit_many would bypass its override) unless it
defines admit_many again.

Runs of hits (optional, for speed): `hit_many(tier, keys, first_pos, parent)` records hits to
consecutive blocks of one request, all resident in `tier`, exactly as on_hit would one by one,
and returns None when every block stays in `tier`. If on_hit would move a block, it stops there
(on_hit's bookkeeping for that block done, none for the rest) and returns `(i, dest)`: the index
of that block in `keys` and the tier on_hit chose. `hit_by_block` is the same spelled out with
on_hit. The engine uses it in cache-only replays over one tier (where every hit stays). The
index has already counted the whole run's hits when hit_many is called (the view's access
statistics show them all), so a policy whose on_hit reads the view must not define it; as with
admit_many, a subclass overriding on_hit does not get the inherited hit_many (it hears each hit
alone, the index touching the block just before, as block by block).

A policy whose decisions equal one of the C orderings sets `c_ordering` (and `promote_on_hit`,
`demote_on_evict` to match its on_hit/demote_to); engines may then run the whole stream in C
(BlockIndex.access_batch). The pure-Python methods stay the reference: tests check both agree.
"""
from __future__ import annotations

from typing import ClassVar

from ..index import IndexView


class Policy:
    """Base class: places new blocks in tier 0, never promotes, demotes victims one tier down."""

    #: registry name, set by @register
    name: ClassVar[str] = ""
    #: C ordering with identical decisions ("lru", "fifo", "lfu", "s3fifo", "sieve") or None
    c_ordering: ClassVar[str | None] = None
    promote_on_hit: ClassVar[bool] = True
    demote_on_evict: ClassVar[bool] = True
    #: serving engines write new blocks through to the next tier as well (SGLang HiCache style)
    write_through: ClassVar[bool] = False

    def __init__(self) -> None:
        self.view: IndexView | None = None

    def attach(self, view: IndexView) -> None:
        """Called once, before any other method, with the read-only index view."""
        self.view = view

    # ---- decisions -------------------------------------------------------------------------
    def place(self, key: int, nbytes: int, pos: int, parent: int | None) -> int:
        """Tier for a block that is not resident. Default: the fastest tier."""
        return 0

    def on_hit(self, key: int, tier: int, pos: int, parent: int | None) -> int:
        """Tier the block should occupy after this hit. Default: promote to 0 if promote_on_hit."""
        return 0 if self.promote_on_hit else tier

    def victim(self, tier: int) -> int:
        """Key of the next unpinned block to leave `tier`. Must be overridden."""
        raise NotImplementedError(f"policy {self.name!r} does not choose victims")

    def demote_to(self, key: int, tier: int) -> int | None:
        """Where a victim of `tier` goes: the next tier down if demote_on_evict, else dropped."""
        if self.demote_on_evict and tier + 1 < self.view.n_tiers:
            return tier + 1
        return None

    # ---- optional fast path -----------------------------------------------------------------
    #: Optional: `admit_many(tier, keys, first_pos, parent, free_slots) -> victims`. None means
    #: the engine makes the per-block calls. See the module docstring, "Runs of misses".
    admit_many = None

    #: Optional: `hit_many(tier, keys, first_pos, parent) -> None | (i, dest)`. See the module
    #: docstring, "Runs of hits".
    hit_many = None

    def hit_by_block(self, tier: int, keys: list[int], first_pos: int,
                     parent: int | None) -> tuple[int, int] | None:
        """hit_many spelled out with on_hit: what a policy's own hit_many must equal."""
        for i, key in enumerate(keys):
            dest = self.on_hit(key, tier, first_pos + i, parent)
            if dest != tier:
                return i, dest
            parent = key
        return None

    def admit_by_block(self, tier: int, keys: list[int], first_pos: int, parent: int | None,
                       free_slots: int) -> list[int | None]:
        """admit_many spelled out with the per-block methods: what a policy's own admit_many
        must equal, and a fallback for the runs its shortcut does not cover."""
        victims: list[int | None] = []
        for i, key in enumerate(keys):
            if free_slots > 0:
                free_slots -= 1
            else:
                try:
                    victim = self.victim(tier)
                except LookupError:        # every block pinned: this one is not cached
                    victims.append(None)
                    parent = key
                    continue
                victims.append(victim)
                self.on_remove(victim, tier)
            self.on_insert(key, tier, first_pos + i, parent)
            parent = key
        return victims

    # ---- notifications (bookkeeping only) --------------------------------------------------
    def on_insert(self, key: int, tier: int, pos: int, parent: int | None) -> None:
        """A new block entered `tier`."""

    def on_move(self, key: int, src: int, dst: int) -> None:
        """A resident block moved from tier src to tier dst (promotion or demotion)."""

    def on_remove(self, key: int, tier: int) -> None:
        """A block left the index from `tier` (evicted and dropped)."""
