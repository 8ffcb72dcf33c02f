"""Runs of misses through a policy's admit_many make the same decisions as the per-block calls."""
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxlsim.index import BlockIndex, TierSpec
from cxlsim.errors import CxlsimError
from cxlsim.kv import KVStore, PolicyError
from cxlsim.policies import make_policy
from cxlsim.policies.base import Policy
from cxlsim.policies.registry import known_policies
from cxlsim.policies.lru import LRU


class BlockByBlockLRU(LRU):
    """The same LRU without the run methods: the engine makes every per-block call."""
    admit_many = hit_many = None


class MRU(Policy):
    """Evicts the newest block, so a run's victims are often blocks the same run inserted."""

    def attach(self, view):
        super().attach(view)
        self.order = OrderedDict()

    def on_insert(self, key, tier, pos, parent):
        self.order[key] = None

    def on_hit(self, key, tier, pos, parent):
        self.order.move_to_end(key)
        return tier

    def on_remove(self, key, tier):
        del self.order[key]

    def victim(self, tier):
        for key in reversed(self.order):
            if key not in self.view.pinned:
                return key
        raise LookupError("all pinned")


class FastMRU(MRU):
    admit_many = MRU.admit_by_block    # the spelled-out form, as a policy's own fast path


def _run(policy, capacity, keys, offsets, held=(), record=False):
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=capacity)]), policy,
                    record_moves=record)
    for key in held:                       # blocks a running request holds: never victims
        store.hold(key)
    out = store.access_requests(keys, offsets, 1)
    store.flush()
    resident = sorted(store.index.tier_keys(0).tolist())
    # the C index agrees with the engine's own view of residency (its mirror, reloaded if runs
    # driven from C changed the index)
    assert resident == sorted(k for k in set(keys.tolist()) if store.tier_of(k) == 0)
    return out.tolist(), resident, store.drops


requests = st.lists(st.lists(st.integers(1, 60), min_size=1, max_size=30), min_size=1, max_size=40)


def _arrays(reqs):
    keys = np.array([k for r in reqs for k in r], np.uint64)
    offsets = np.cumsum([0] + [len(r) for r in reqs])
    return keys, offsets


@settings(max_examples=150, deadline=None)
@given(reqs=requests, capacity=st.integers(1, 25),
       held=st.lists(st.integers(1, 60), max_size=4))
@pytest.mark.parametrize("fast, slow", [(LRU, BlockByBlockLRU), (FastMRU, MRU)],
                         ids=["lru", "mru"])
def test_runs_equal_block_by_block(fast, slow, reqs, capacity, held):
    # repeated keys inside a request, runs longer than the tier, held blocks: all covered. With
    # holds or recorded drops the runs go through the engine's mirror; without, C drives them.
    keys, offsets = _arrays(reqs)
    expected = _run(slow(), capacity, keys, offsets, held, True)
    assert _run(fast(), capacity, keys, offsets, held, True) == expected
    # without holds or recorded drops C drives both, by run and block by block
    reference = _run(slow(), capacity, keys, offsets, (), True)[:2]
    assert _run(fast(), capacity, keys, offsets)[:2] == reference
    assert _run(slow(), capacity, keys, offsets)[:2] == reference


def test_lru_runs_equal_the_c_ordering():
    rng = np.random.default_rng(7)
    keys = (rng.zipf(1.2, 20_000) % 3000).astype(np.uint64)
    offsets = np.unique(np.concatenate([[0, len(keys)], rng.integers(0, len(keys), 800)]))
    out = np.array(_run(LRU(), 500, keys, offsets)[0])
    expected = BlockIndex([TierSpec("hbm", capacity_blocks=500)]).access_batch(keys, 1)
    assert (out == expected).all()
    assert 0.1 < (out >= 0).mean() < 0.9


class _Liar(LRU):
    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    def admit_many(self, tier, keys, first_pos, parent, free_slots):
        if free_slots >= len(keys):          # truthful while the tier fills
            return super().admit_many(tier, keys, first_pos, parent, free_slots)
        return self.answer(self, keys, free_slots)


@pytest.mark.parametrize("answer, message", [
    (lambda p, keys, free: [], "fewer than the run needs"),
    (lambda p, keys, free: [2, 3, 4], "more than the run needs"),   # 2, then 3 are fine
    (lambda p, keys, free: [999] * (len(keys) - free), "which is not in that tier"),
    (lambda p, keys, free: [1] * (len(keys) - free), "which is pinned"),
])
def test_wrong_victims_are_refused(answer, message):
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=2)]), _Liar(answer))
    store.access_requests(np.array([1, 2], np.uint64), [0, 2], 1)   # fills the tier
    store.hold(1)                                          # runs go through the mirror
    with pytest.raises(PolicyError, match=message):
        store.access_requests(np.array([3, 4], np.uint64), [0, 2], 1)


@pytest.mark.parametrize("answer, message", [
    (lambda p, keys, free: [], "fewer than the run needs"),
    (lambda p, keys, free: [1, 2, 1], "more than the run needs"),
    (lambda p, keys, free: [999] * (len(keys) - free), "block 999, which is not in that tier"),
    (lambda p, keys, free: [1] * (len(keys) - free), "block 1, which is not in that tier"),
    (lambda p, keys, free: ["1", 2], "not block keys: '1'"),
])
def test_wrong_victims_are_refused_when_c_drives_the_runs(answer, message):
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=2)]), _Liar(answer))
    store.access_requests(np.array([1, 2], np.uint64), [0, 2], 1)   # fills the tier
    with pytest.raises(PolicyError, match=message):
        store.access_requests(np.array([3, 4], np.uint64), [0, 2], 1)


def test_c_runs_and_per_block_calls_mix():
    """access() between runs driven from C sees the index those runs left (the mirror is
    reloaded), and the whole sequence decides as the per-block engine through the mirror
    (recording moves keeps it there) does."""
    rng = np.random.default_rng(3)
    fast = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=40)]), LRU())
    slow = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=40)]), BlockByBlockLRU(),
                   record_moves=True)
    for _ in range(30):
        keys, offsets = _arrays([rng.integers(1, 120, 12).tolist() for _ in range(3)])
        assert (fast.access_requests(keys, offsets, 1) ==
                slow.access_requests(keys, offsets, 1)).all()
        for key in rng.integers(1, 120, 5).tolist():
            assert fast.access(key, 1) == slow.access(key, 1)
    assert fast.view.usage(0) == slow.view.usage(0) == (40, 40)
    fast.flush(), slow.flush()
    assert sorted(fast.index.tier_keys(0).tolist()) == sorted(slow.index.tier_keys(0).tolist())


class _MovesOnHit(LRU):
    def hit_many(self, tier, keys, first_pos, parent):
        return 0, 1                       # tier 1 does not exist


@pytest.mark.parametrize("stop, message", [
    ((0, 1), "on_hit returned tier 1 for block 1; the index has one tier"),
    ((1, 0), "hit_many stopped at block 2, which stays in tier 0"),
    ((5, 1), r"hit_many returned \(5, 1\); expected None or \(index in the run, tier\)"),
])
def test_a_hit_run_that_asks_to_move_is_refused(stop, message):
    policy = _MovesOnHit()
    policy.hit_many = lambda tier, keys, first_pos, parent: stop
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=4)]), policy)
    store.access_requests(np.array([1, 2], np.uint64), [0, 2], 1)
    with pytest.raises(PolicyError, match=message):
        store.access_requests(np.array([1, 2], np.uint64), [0, 2], 1)


def test_a_subclass_that_changes_on_hit_is_not_bypassed_by_the_inherited_hit_many():
    seen = []

    class CountingLRU(LRU):
        def on_hit(self, key, tier, pos, parent):
            seen.append(key)
            return super().on_hit(key, tier, pos, parent)

    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=4)]), CountingLRU())
    store.access_requests(np.array([1, 2, 1, 2, 3], np.uint64), [0, 2, 5], 1)
    assert seen == [1, 2]


def test_a_subclass_that_changes_victim_is_not_bypassed_by_the_inherited_fast_path():
    """LRU.admit_many stands in for LRU's victim/on_insert/on_remove; a subclass overriding one
    of them must get its own decisions, so the engine falls back to per-block calls."""
    class EvictNewest(LRU):
        def victim(self, tier):
            return next(reversed(self.lists[tier]))

    keys, offsets = _arrays([[1, 2, 3], [4, 5], [1, 2, 3]])
    assert _run(EvictNewest(), 3, keys, offsets)[:2] == _run(
        type("EvictNewestByBlock", (EvictNewest,), {"admit_many": None})(), 3, keys, offsets,
        (), True)[:2]
    assert _run(EvictNewest(), 3, keys, offsets)[1] == [1, 3, 5]


def test_negative_keys_are_named_when_c_drives_the_runs():
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=4)]), LRU())
    with pytest.raises(CxlsimError, match="block keys must be integers in 0..2\\*\\*64-1, got -3"):
        store.access_requests(np.array([7, -3], np.int64), [0, 2], 1)
    assert store.view.usage(0) == (0, 0)          # nothing was applied


class _Peeking(LRU):
    """Reads the view from inside its run methods (outside the contract for choices, but it
    must still see the index as it is, and leave the engine consistent)."""

    def attach(self, view):
        super().attach(view)
        self.seen = []

    def admit_many(self, tier, keys, first_pos, parent, free_slots):
        self.seen.append((self.view.usage(0), self.view.tier_of(keys[0]), self.view.fits(0, 1)))
        return super().admit_many(tier, keys, first_pos, parent, free_slots)


def test_the_view_reads_the_index_while_c_drives_the_runs():
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=3)]), _Peeking())
    store.access_requests(np.array([1, 2, 5, 1, 3, 4], np.uint64), [0, 2, 3, 6], 1)
    # before each miss run: blocks held, the run's first key absent, room left
    assert store.policy.seen == [((0, 0), -1, True), ((2, 2), -1, True), ((3, 3), -1, False)]
    assert store.access(5, 1) == -1 and store.access(4, 1) == 0   # the mirror, reloaded
    assert store.view.usage(0) == (3, 3)


def test_long_requests_with_repeats_split_into_runs_decide_the_same():
    """C hands over at most 64 misses at once and ends a run before a key the run already
    holds; requests of hundreds of blocks with repeats must still decide block by block."""
    rng = np.random.default_rng(11)
    reqs = [rng.integers(1, 400, int(rng.integers(100, 300))).tolist() for _ in range(20)]
    keys, offsets = _arrays(reqs)
    for capacity in (50, 150, 1000):
        assert _run(LRU(), capacity, keys, offsets)[:2] == \
            _run(BlockByBlockLRU(), capacity, keys, offsets, (), True)[:2]


def test_bad_offsets_are_refused_before_c_reads_anything():
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=4)]), LRU())
    keys = np.array([1, 2, 3, 4], np.uint64)
    for offsets in ([10**10, 10**10 + 1], [0, 4000], [0, 3, 2, 4], [-1, 2]):
        with pytest.raises(CxlsimError, match="request offsets must not decrease"):
            store.access_requests(keys, offsets, 1)
    assert store.view.usage(0) == (0, 0)
    # requests covering part of the keys: one result per covered block, as block by block
    assert store.access_requests(keys, [2, 4], 1).tolist() == \
        KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=4)]), BlockByBlockLRU(),
                record_moves=True).access_requests(keys, [2, 4], 1).tolist() == [-1, -1]


class _CountsTouches(LRU):
    """Reads access statistics in on_hit (slow, but the per-block contract allows it): it has
    admit_many from LRU but its own on_hit, so hits reach it one at a time."""

    def attach(self, view):
        super().attach(view)
        self.freqs = []

    def on_hit(self, key, tier, pos, parent):
        self.freqs.append(self.view.info(key).freq)
        return super().on_hit(key, tier, pos, parent)


def test_a_policy_without_hit_many_sees_each_hit_touched_alone():
    keys, offsets = _arrays([[1], [1, 1, 1]])
    fast = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=4)]), _CountsTouches())
    fast.access_requests(keys, offsets, 1)
    slow = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=4)]),
                   type("ByBlock", (_CountsTouches,), {"admit_many": None})(), record_moves=True)
    slow.access_requests(keys, offsets, 1)
    assert fast.policy.freqs == slow.policy.freqs == [2, 3, 4]


def test_numpy_victims_are_accepted():
    class NumpyVictims(LRU):
        def admit_many(self, tier, keys, first_pos, parent, free_slots):
            return np.array(super().admit_many(tier, keys, first_pos, parent, free_slots),
                            np.uint64)

    keys, offsets = _arrays([[1, 2, 3], [4, 5], [1, 6]])
    assert _run(NumpyVictims(), 3, keys, offsets)[:2] == \
        _run(BlockByBlockLRU(), 3, keys, offsets, (), True)[:2]


def test_the_view_answers_alike_with_a_fresh_or_a_stale_mirror():
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=4)]), LRU())
    answers = []
    for _ in range(2):
        answers.append((store.view.tier_of(-1), store.view.bytes_of("x"), store.view.fits(5, 1),
                        store.view.fits(-1, 1), store.view.tier_of(1)))
        store.access_requests(np.array([1], np.uint64), [0, 1], 1)   # now the mirror is stale
    assert answers[0][:4] == answers[1][:4] == (-1, -1, False, False)
    assert (answers[0][4], answers[1][4]) == (-1, 0)


def test_the_mirror_reloads_blocks_of_every_size():
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=8)]), LRU())
    for key, size in ((1, 10), (2, 20), (3, 10)):
        store.access(key, size)
    store.access_requests(np.array([4, 1], np.uint64), [0, 2], 30)    # C drives: mirror stale
    assert [store.bytes_of(k) for k in (1, 2, 3, 4, 5)] == [10, 20, 10, 30, -1]
    assert store.view.usage(0) == (70, 4)


class _ViewSpy:
    """Stands in for a policy's view and logs every read with its answer."""

    def __init__(self, view, log):
        self._view, self._log = view, log

    def __getattr__(self, name):
        value = getattr(self._view, name)
        if not callable(value):
            self._log.append((name, len(value) if name == "pinned" else value))
            return value

        def read(*args):
            answer = value(*args)
            self._log.append((name, args, answer))
            return answer
        return read


@pytest.mark.parametrize("name", known_policies())
def test_every_policy_decides_alike_driven_from_c_or_through_the_mirror(name):
    """With one tier and nothing held, C drives every policy (by run or block by block); with
    moves recorded the engine keeps its mirror. The decisions must be the same, and for a policy
    taking blocks one at a time so must every answer its view gives (several built-ins read it;
    runs may be cut differently by the two engines, so a run-taking policy's reads may not)."""
    rng = np.random.default_rng(5)
    reqs = []
    for _ in range(150):
        start = int(rng.integers(0, 40))
        reqs.append([start * 100 + i for i in range(int(rng.integers(1, 30)))]   # prefixes
                    + rng.integers(1, 500, int(rng.integers(0, 5))).tolist())     # and repeats
    keys, offsets = _arrays(reqs)
    results = []
    for record in (False, True):
        policy = make_policy(name)
        store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=120)]), policy,
                        record_moves=record)
        log = []
        policy.view = _ViewSpy(policy.view, log)
        for key in range(10_000, 10_030):                 # resident blocks of another size
            store.access(key, 3)
        out = store.access_requests(keys, offsets, 1)
        store.flush()
        results.append((out.tolist(), sorted(store.index.tier_keys(0).tolist()), log))
    assert results[0][:2] == results[1][:2]
    if policy.admit_many is None:
        assert results[0][2] == results[1][2]
    assert 0.05 < np.mean(np.array(results[0][0]) >= 0) < 0.95


def test_a_demote_to_set_on_the_instance_keeps_a_moving_block_held():
    """relocate skips holding a block that moves down only for the base class's demote_to; one
    set on the instance may send the cascade back up to the block's own tier."""
    class DemoteOnHit(LRU):
        def on_hit(self, key, tier, pos, parent):
            super().on_hit(key, tier, pos, parent)
            return 1 if key == 1 else tier

    policy = DemoteOnHit()
    policy.demote_to = lambda key, tier: 1 - tier        # victims swap tiers
    index = BlockIndex([TierSpec("a", capacity_blocks=1), TierSpec("b", capacity_blocks=1)])
    store = KVStore(index, policy, record_moves=True)
    store.access(2, 1)
    store.access(1, 1)                                   # 2 went down to b, 1 is in a
    # 1 moves down; room in b would send 2 up, but a holds only 1, held: 2 is dropped
    store.access(1, 1)
    store.flush()
    assert (index.tier_keys(0).tolist(), index.tier_keys(1).tolist()) == ([], [1])
    assert store.drops == [(2, 1, 1)]
    assert (store.view.usage(0), store.view.usage(1)) == ((0, 0), (1, 1))


def test_the_view_checks_a_tier_alike_with_a_fresh_or_a_stale_mirror():
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=4)]), LRU())
    for _ in range(2):
        assert store.view.usage("hbm") == store.view.usage(0)
        for bad in (1, -1):
            with pytest.raises(ValueError, match="out of range"):
                store.view.usage(bad)
        store.access_requests(np.array([1], np.uint64), [0, 1], 1)   # now the mirror is stale
