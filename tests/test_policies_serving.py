"""Serving-baseline policies against hand-made access sequences (KVStore, blocks of 1 byte)."""
import pytest

from cxlsim.index import BlockIndex, TierSpec
from cxlsim.kv import KVStore
from cxlsim.policies import make_policy


def store(policy, *caps):
    index = BlockIndex([TierSpec(f"t{i}", capacity_blocks=c) for i, c in enumerate(caps)])
    return KVStore(index, make_policy(policy) if isinstance(policy, str) else policy,
                   record_moves=True)


def run(s, keys, parents=None):
    """Access keys in order (pos = index in a request when parents given); hit tiers."""
    out = []
    for i, k in enumerate(keys):
        parent = parents[i] if parents else None
        out.append(s.access(k, 1, i if parents else 0, parent))
    s.flush()
    return out


def test_hbm_only_drops_and_recomputes():
    s = store("hbm-only", 2)
    assert run(s, [1, 2, 3, 1]) == [-1, -1, -1, -1]     # 1 was dropped by 3, misses again
    assert s.moves == []
    assert [d[0] for d in s.drops] == [1, 2]
    assert getattr(s.policy, "max_tiers") == 1


def test_demote_on_evict_cascades_and_promotes():
    s = store("demote-on-evict", 1, 1, 1)
    assert run(s, [1, 2, 3]) == [-1, -1, -1]
    assert [(k, a, b) for k, a, b, _ in s.moves] == [(1, 0, 1), (1, 1, 2), (2, 0, 1)]
    s.moves.clear()
    assert run(s, [1]) == [2]                           # hit in tier 2, promoted to HBM
    assert s.tier_of(1) == 0
    # room is made while 1 still holds tier 2: 3 -> t1 pushes 2 out of t1, and t2 has no room
    # for it (1 is held there), so 2 is dropped; then 1 moves up
    assert [(k, a, b) for k, a, b, _ in s.moves] == [(3, 0, 1), (1, 2, 0)]
    assert [(k, t) for k, t, _ in s.drops] == [(2, 1)]


@pytest.mark.parametrize("policy,second_victim", [("demote-on-evict", 3), ("lru", 1)])
def test_demote_on_evict_skips_pinned_blocks_and_keeps_them_recent(policy, second_victim):
    s = store(policy, 3, 8)
    run(s, [1, 2, 3])
    s.pin(1)
    run(s, [4])                                         # 1 is oldest but pinned: 2 goes
    assert s.tier_of(1) == 0 and s.tier_of(2) == 1
    s.unpin(1)
    run(s, [5])
    # demote-on-evict counted 1 as used when its scan met it in use, so 3 goes; lru evicts 1
    assert s.tier_of(second_victim) == 1


def test_write_through_flag():
    p = make_policy("write-through")
    assert p.write_through and p.demote_on_evict and p.promote_on_hit
    s = store(p, 1, 2)
    run(s, [1, 2])
    assert [(k, a, b) for k, a, b, _ in s.moves] == [(1, 0, 1)]


def test_tpp_promotes_on_the_second_hit():
    s = store("tpp", 1, 4)
    run(s, [1, 2])                                      # 1 demoted to tier 1
    assert run(s, [1]) == [1] and s.tier_of(1) == 1     # first hit there: stays
    assert run(s, [1]) == [1] and s.tier_of(1) == 0     # second: promoted, 2 demoted
    assert s.tier_of(2) == 1
    assert run(s, [2]) == [1] and s.tier_of(2) == 1     # the count restarted when 2 moved


def test_tpp_threshold_parameter():
    s = store(make_policy("tpp", threshold=1), 1, 4)
    run(s, [1, 2])
    assert run(s, [1]) == [1] and s.tier_of(1) == 0


def test_mooncake_length_aware_evicts_later_positions_first():
    s = store("mooncake-length-aware", 3, 0 + 8)
    # request A: blocks 10 (pos 0), 11 (pos 1), 12 (pos 2); all seen once
    run(s, [10, 11, 12], parents=[None, 10, 11])
    s.access(99, 1, 0, None)                             # a new block: evict the deepest, 12
    s.flush()
    assert s.tier_of(12) == 1 and s.tier_of(10) == 0 and s.tier_of(11) == 0
    # 10 is hit again: with 99 (freq 1, pos 0) and 11 (freq 1, pos 1), 11 goes next
    s.access(10, 1, 0, None)
    s.access(98, 1, 0, None)
    s.flush()
    assert s.tier_of(11) == 1 and s.tier_of(99) == 0


def test_tail_first_keeps_parents_of_cached_children():
    s = store("tail-first", 3, 8)
    run(s, [1, 2], parents=[None, 1])                    # chain 1 -> 2
    s.access(5, 1, 0, None)                              # standalone, newer than 1 and 2
    s.access(6, 1, 0, None)                              # needs room: leaves are 2 and 5
    s.flush()
    # LRU would evict 1 (oldest); tail-first evicts the oldest leaf, 2, and keeps the root
    assert s.tier_of(2) == 1 and s.tier_of(1) == 0
    s.access(7, 1, 0, None)                              # now 1 is a leaf (its child left)
    s.flush()
    assert s.tier_of(1) == 1 and s.tier_of(5) == 0


def test_tail_first_falls_back_when_only_parents_are_unpinned():
    s = store("tail-first", 2, 8)
    run(s, [1, 2], parents=[None, 1])
    s.pin(2)
    s.access(3, 1, 0, None)                              # the only leaf is pinned: 1 goes
    s.flush()
    assert s.tier_of(1) == 1 and s.tier_of(2) == 0
