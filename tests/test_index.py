"""Block index invariants (hypothesis state machine) and C orderings vs their Python references."""
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cxlsim.errors import (BlockExists, BlockNotFound, BlockPinned, ConfigError, CxlsimError,
                           TierFull)
from cxlsim.index import ORDERINGS, BlockIndex, TierSpec
from cxlsim.kv import KVStore, PolicyError
from cxlsim.policies import Policy, make_policy

KEYS = st.integers(1, 40)


class IndexMachine(RuleBasedStateMachine):
    """Random inserts, moves, pins, evictions and fast-path accesses against a model of the index."""

    def __init__(self):
        super().__init__()
        self.caps = [(600, 6), (1000, -1), (0, 12)]   # bytes, blocks per tier
        self.index = None

    @rule(ordering=st.sampled_from(sorted(ORDERINGS)))
    @precondition(lambda self: self.index is None)
    def create(self, ordering):
        self.index = BlockIndex([TierSpec(f"t{i}", b, n, ordering) for i, (b, n) in enumerate(self.caps)])
        self.model = {}      # key -> (tier, bytes)
        self.pins = {}

    def fits(self, tier, nbytes):
        used = sum(b for t, b in self.model.values() if t == tier)
        count = sum(1 for t, _ in self.model.values() if t == tier)
        cap_b, cap_n = self.caps[tier]
        return (cap_b == 0 or used + nbytes <= cap_b) and (cap_n < 0 or count + 1 <= cap_n)

    @rule(key=KEYS, tier=st.integers(0, 2), nbytes=st.integers(1, 300))
    @precondition(lambda self: self.index is not None)
    def insert(self, key, tier, nbytes):
        if key in self.model:
            with pytest.raises(BlockExists):
                self.index.insert(key, tier, nbytes)
        elif not self.fits(tier, nbytes):
            with pytest.raises(TierFull):
                self.index.insert(key, tier, nbytes)
        else:
            self.index.insert(key, tier, nbytes)
            self.model[key] = (tier, nbytes)

    @rule(key=KEYS, tier=st.integers(0, 2))
    @precondition(lambda self: self.index is not None)
    def move(self, key, tier):
        if key not in self.model:
            with pytest.raises(BlockNotFound):
                self.index.move(key, tier)
            return
        cur, nbytes = self.model[key]
        if cur == tier:
            self.index.move(key, tier)
        elif self.pins.get(key):
            with pytest.raises(BlockPinned):
                self.index.move(key, tier)
        elif not self.fits(tier, nbytes):
            with pytest.raises(TierFull):
                self.index.move(key, tier)
        else:
            self.index.move(key, tier)
            self.model[key] = (tier, nbytes)

    @rule(key=KEYS)
    @precondition(lambda self: self.index is not None)
    def pin(self, key):
        if key in self.model:
            self.index.pin(key)
            self.pins[key] = self.pins.get(key, 0) + 1

    @rule(key=KEYS)
    @precondition(lambda self: self.index is not None)
    def unpin(self, key):
        if self.pins.get(key):
            self.index.unpin(key)
            self.pins[key] -= 1

    @rule(key=KEYS)
    @precondition(lambda self: self.index is not None)
    def remove(self, key):
        if key not in self.model:
            with pytest.raises(BlockNotFound):
                self.index.remove(key)
        elif self.pins.get(key):
            with pytest.raises(BlockPinned):
                self.index.remove(key)
        else:
            self.index.remove(key)
            del self.model[key]
            assert self.index.lookup(key) == -1

    @rule(tier=st.integers(0, 2))
    @precondition(lambda self: self.index is not None)
    def evict(self, tier):
        unpinned = [k for k, (t, _) in self.model.items() if t == tier and not self.pins.get(k)]
        if not unpinned:
            with pytest.raises(TierFull):
                self.index.evict_one(tier)
            return
        key, nbytes = self.index.evict_one(tier)
        assert key in unpinned, "a pinned block or a block of another tier was evicted"
        assert nbytes == self.model.pop(key)[1]
        assert self.index.lookup(key) == -1          # evict-then-lookup misses

    @rule(keys=st.lists(KEYS, min_size=1, max_size=20), nbytes=st.integers(1, 200))
    @precondition(lambda self: self.index is not None)
    def access_batch(self, keys, nbytes):
        before = dict(self.model)
        out = self.index.access_batch(np.array(keys, np.uint64), nbytes)
        # hits are reported where the block was; pinned blocks never leave
        for i, (k, t) in enumerate(zip(keys, out)):
            if t >= 0:
                assert k in before or k in keys[:i], "a hit on a block that was never there"
        for k in list(self.model):
            if self.pins.get(k):
                assert self.index.lookup(k) >= 0
        self.resync()

    def resync(self):
        self.model = {}
        for tier in range(3):
            for k in self.index.tier_keys(tier).tolist():
                self.model[k] = (tier, self.index.info(k).bytes)

    @invariant()
    def capacity_and_accounting(self):
        if self.index is None:
            return
        seen = set()
        for tier, (cap_b, cap_n) in enumerate(self.caps):
            s = self.index.tier_stats(tier)
            keys = self.index.tier_keys(tier).tolist()
            assert not seen & set(keys), "a block is in two tiers"
            seen |= set(keys)
            assert s.blocks == len(keys)
            assert s.used_bytes == sum(self.index.info(k).bytes for k in keys)   # used + free = total
            assert cap_b == 0 or s.used_bytes <= cap_b
            assert cap_n < 0 or s.blocks <= cap_n
            assert all(self.index.lookup(k) == tier for k in keys)
        assert seen == set(self.model)
        assert len(self.index) == len(seen)


IndexMachine.TestCase.settings = settings(max_examples=int(__import__("os").environ.get("CXLSIM_STATEFUL_EXAMPLES", 60)), stateful_step_count=40, deadline=None)
TestIndexMachine = IndexMachine.TestCase


def _stream(seed, n=6000, universe=300):
    rng = np.random.default_rng(seed)
    return (rng.zipf(1.3, n) % universe + 1).astype(np.uint64)


@pytest.mark.parametrize("ordering", sorted(ORDERINGS))
@pytest.mark.parametrize("tiers", [[40], [12, 25, 30]], ids=["1-tier", "3-tier"])
@pytest.mark.parametrize("seed", [1, 2])
def test_c_ordering_equals_python_reference(ordering, tiers, seed):
    specs = [TierSpec(f"t{i}", capacity_blocks=c, ordering=ordering) for i, c in enumerate(tiers)]
    keys = _stream(seed)
    c_out = BlockIndex(specs).access_batch(keys, 1)
    store = KVStore(BlockIndex(specs), make_policy(ordering))
    py_out = np.array([store.access(int(k), 1) for k in keys], np.int8)
    assert (c_out == py_out).all(), f"first divergence at access {np.argmax(c_out != py_out)}"
    assert 0.05 < (c_out >= 0).mean() < 0.98      # the stream exercises hits and misses


def test_byte_capacities_and_sizes_agree_too():
    specs = [TierSpec("a", capacity_bytes=5000, ordering="s3fifo"),
             TierSpec("b", capacity_bytes=9000, ordering="s3fifo")]
    keys = _stream(3, 4000)
    sizes = (keys.astype(np.int64) % 7 * 100 + 100).astype(np.uint32)
    c_out = BlockIndex(specs).access_batch(keys, sizes)
    store = KVStore(BlockIndex(specs), make_policy("s3fifo"))
    py_out = np.array([store.access(int(k), int(b)) for k, b in zip(keys, sizes)], np.int8)
    assert (c_out == py_out).all()


@pytest.mark.parametrize("ordering", ["lru", "fifo"])
def test_one_list_tier_fast_path_agrees_on_everything(ordering):
    """One LRU or FIFO tier limited by blocks takes access_batch's specialised loop (a full tier's
    victim record is reused in place): answers, order, counters and sizes match the Python path."""
    specs = [TierSpec("t0", capacity_blocks=40, ordering=ordering)]
    keys = _stream(4)
    sizes = (keys.astype(np.int64) % 7 * 100 + 100).astype(np.uint32)
    fast = BlockIndex(specs)
    c_out = fast.access_batch(keys, sizes)
    store = KVStore(BlockIndex(specs), make_policy(ordering))
    py_out = np.array([store.access(int(k), int(b)) for k, b in zip(keys, sizes)], np.int8)
    store.flush()
    assert (c_out == py_out).all()
    assert fast.tier_keys(0).tolist() == store.index.tier_keys(0).tolist()
    assert fast.tier_stats(0) == store.index.tier_stats(0)
    assert all(fast.info(k) == store.index.info(k) for k in fast.tier_keys(0).tolist())


def test_a_reused_record_forgets_its_sharers():
    index = BlockIndex([TierSpec("hbm", capacity_blocks=2)])
    index.access_batch(np.array([1, 2], np.uint64), 1)
    index.set_sharers(1, 0b101)
    index.access_batch(np.array([2], np.uint64), 1)
    assert index.info(1).sharers == 0b101
    index.access_batch(np.array([3], np.uint64), 1)      # evicts 1: its record now holds 3
    assert index.lookup(1) == -1
    assert index.info(3).sharers == 0


@pytest.mark.parametrize("ordering", sorted(ORDERINGS))
@pytest.mark.parametrize("tiers", [1, 2])
def test_sharer_masks_of_many_blocks_survive_evictions_and_clearing(ordering, tiers):
    # the masks sit in a sparse side table that grows, shrinks and loses entries on eviction
    index = BlockIndex([TierSpec(f"t{i}", capacity_blocks=600, ordering=ordering)
                        for i in range(tiers)])
    index.access_batch(np.arange(1, 601, dtype=np.uint64), 1)
    masks = {k: (k * 0x9E3779B97F4A7C15 & (2**64 - 1)) | 1 for k in range(1, 601, 2)}
    for k, m in masks.items():
        index.set_sharers(k, m)
    for k in range(1, 601, 6):
        index.set_sharers(k, 0)                                 # a zero mask is not stored
        masks.pop(k, None)
    index.remove(3)
    masks.pop(3)
    index.access_batch(np.arange(1000, 1300, dtype=np.uint64), 1)   # evicts (or demotes) many
    resident = [k for k in range(1, 1300) if index.lookup(k) >= 0]
    assert any(k in masks for k in resident) and len(resident) < 900
    assert all(index.info(k).sharers == masks.get(k, 0) for k in resident)
    # freed records come back for new keys with no mask
    index.access_batch(np.arange(5000, 5000 + 600 * tiers, dtype=np.uint64), 1)
    assert all(index.info(k).sharers == masks.get(k, 0) for k in range(1, 6200)
               if index.lookup(k) >= 0)


@pytest.mark.parametrize("ordering", sorted(ORDERINGS))
def test_sharer_masks_are_counted_and_their_memory_given_back(ordering):
    n = 20_000
    index = BlockIndex([TierSpec("hbm", capacity_blocks=n, ordering=ordering)])
    for r in range(3):      # steady state: S3-FIFO's ghosts have taken their records too
        index.access_batch(np.arange(r * n + 1, (r + 1) * n + 1, dtype=np.uint64), 1)
    keys = index.tier_keys(0).tolist()
    base = index.memory_bytes()
    for k in keys:
        index.set_sharers(k, 0b11)
    assert index.memory_bytes() >= base + n * 16          # 16-byte entries, counted
    for k in keys[: n // 4]:
        index.set_sharers(k, 0)
    for k in keys[n // 4: n // 2]:
        index.remove(k)
    for r in range(3, 6):   # evicts every other block, through the fast path for LRU and FIFO
        index.access_batch(np.arange(r * n + 1, (r + 1) * n + 1, dtype=np.uint64), 1)
    assert all(index.info(k).sharers == 0 for k in index.tier_keys(0).tolist())
    assert index.memory_bytes() == base                    # no mask left behind

def test_pinned_blocks_survive_the_fast_path():
    index = BlockIndex([TierSpec("hbm", capacity_blocks=4)])
    index.access_batch(np.array([1, 2, 3, 4], np.uint64), 1)
    index.pin(1)
    index.access_batch(np.arange(10, 30, dtype=np.uint64), 1)
    assert index.lookup(1) == 0
    assert index.tier_stats(0).blocks == 4


def test_all_pinned_tier_is_not_cached_and_reports_nothing_wrong():
    index = BlockIndex([TierSpec("hbm", capacity_blocks=2)])
    index.access_batch(np.array([1, 2], np.uint64), 1)
    index.pin(1), index.pin(2)
    out = index.access_batch(np.array([3, 1], np.uint64), 1)
    assert out.tolist() == [-1, 0]
    assert index.lookup(3) == -1


def test_memory_per_block_is_bounded():
    index = BlockIndex([TierSpec("hbm", capacity_blocks=200_000)])
    index.access_batch(np.arange(1, 1_000_000, dtype=np.uint64), 1)
    assert len(index) == 200_000
    assert index.memory_bytes() / len(index) <= 64


class BadVictim(Policy):
    name = "bad-victim"

    def victim(self, tier):
        return 123456


class BadPlace(Policy):
    name = "bad-place"

    def place(self, key, nbytes, pos, parent):
        return 5


def test_engine_rejects_bad_policy_decisions():
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=1)]), BadVictim())
    store.access(1, 1)
    with pytest.raises(PolicyError, match="'bad-victim': victim\\(0\\) returned block 123456, which is not in that tier"):
        store.access(2, 1)
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=1)]), BadPlace())
    with pytest.raises(PolicyError, match="'bad-place': place returned tier 5; tiers are 0..0"):
        store.access(1, 1)


def test_a_key_the_index_cannot_hold_is_named():
    store = KVStore(BlockIndex([TierSpec("hbm", capacity_blocks=4)]), make_policy("fifo"))
    store.access(7, 1)
    store.access(-3, 1)
    with pytest.raises(CxlsimError, match="block keys must be integers in 0..2\\*\\*64-1, got -3"):
        store.flush()


def test_tier_spec_errors():
    with pytest.raises(ConfigError, match="ordering: unknown 'mru'"):
        TierSpec("x", ordering="mru")
    with pytest.raises(ConfigError, match="tier names must be unique"):
        BlockIndex([TierSpec("a"), TierSpec("a")])
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        BlockIndex([TierSpec("a")]).lookup(-1)


@pytest.mark.parametrize("ordering", sorted(ORDERINGS))
def test_evicts_the_only_unpinned_block_behind_pinned_ones(ordering):
    """Regression (found by the state machine): S3-FIFO kept cycling a main queue of pinned
    blocks and never fell back to its small queue."""
    index = BlockIndex([TierSpec("t0", 600, 6, ordering), TierSpec("t1", 1000, -1, ordering)])
    index.access_batch(np.array([2, 3, 4, 1, 5, 6, 7], np.uint64), 1)
    index.pin(2)
    index.move(2, 1) if index.lookup(2) == 0 else None
    index.move(1, 1) if index.lookup(1) == 0 else None
    assert sorted(index.tier_keys(1).tolist()) == [1, 2]
    assert index.evict_one(1) == (1, 1)


def test_a_policy_that_reads_info_mid_access_loses_no_change():
    """Regression: view.info() flushes queued changes; the engine's cached queue must survive it."""
    from cxlsim.policies.lru import LRU

    class Curious(LRU):
        def place(self, key, nbytes, pos, parent):
            self.view.tier_stats(0)           # flushes
            return 0

        def on_hit(self, key, tier, pos, parent):
            self.view.info(key)               # flushes
            return super().on_hit(key, tier, pos, parent)

    specs = [TierSpec("a", capacity_blocks=4), TierSpec("b", capacity_blocks=6)]
    keys = _stream(5, 3000, 40)
    expected = BlockIndex(specs).access_batch(keys, 1)
    store = KVStore(BlockIndex(specs), Curious())
    out = np.empty(len(keys), np.int8)
    store.access_many(keys, 1, out)
    store.flush()
    assert (out == expected).all()
    for tier in range(2):                     # the C index agrees with the engine's mirror
        assert sorted(store.index.tier_keys(tier).tolist()) == sorted(
            k for k, (t, _) in store._where.items() if t == tier)
