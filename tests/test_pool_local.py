"""LocalPool: the in-process pool's semantics (quotas, isolation, eviction, barrier, coherence)."""
import math
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cxlsim.errors import PoolError
from cxlsim.pool.api import OP_FREE, OP_PUT, OP_TOUCH, Pool, PoolOp, Release
from cxlsim.pool.local import LocalPool

KIB = 1024


def pool(cap=64 * KIB, extent=4 * KIB, **kw):
    return LocalPool(cap, extent_bytes=extent, **kw)


def test_satisfies_contract():
    assert isinstance(pool(), Pool)


def test_bytes_and_arrays_round_trip_exactly():
    p = pool()
    p.attach(0, 16 * KIB)
    arr = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float16)
    p.put(0, 1, arr)
    p.put(0, 2, b"\x00\xffabc")
    assert np.array_equal(np.frombuffer(p.get(0, 1), np.float16).reshape(8, 16), arr)
    assert p.get(0, 2) == b"\x00\xffabc"
    p.alloc(0, 3, 100)
    assert p.get(0, 3) == bytes(100)


def test_quota_is_whole_extents_and_enforced():
    p = pool()
    p.attach(0, 5 * KIB)                       # rounds up to 2 extents = 8 KiB
    assert p.stats()["hosts"]["0"]["quota_bytes"] == 8 * KIB
    p.put(0, 1, bytes(8 * KIB))
    with pytest.raises(PoolError, match="quota exceeded"):
        p.put(0, 2, b"x")
    with pytest.raises(PoolError, match="shrink"):
        p.resize(0, 4 * KIB)
    p.resize(0, 12 * KIB)
    p.put(0, 2, b"x")
    with pytest.raises(PoolError, match="extents"):
        p.attach(1, 64 * KIB)                  # 3 extents granted already, 13 free
    p.attach(1, 52 * KIB)
    with pytest.raises(PoolError, match="free"):
        p.resize(0, 20 * KIB)


def test_private_blocks_are_isolated():
    p = pool()
    p.attach(0, 8 * KIB)
    p.attach(1, 8 * KIB)
    p.put(0, 7, b"secret")
    for call in (lambda: p.get(1, 7), lambda: p.free(1, 7), lambda: p.pin(1, [7]),
                 lambda: p.share(1, 7), lambda: p.put(1, 7, b"xxxxxx")):
        with pytest.raises(PoolError, match="not readable by host 1"):
            call()
    assert p.lookup(1, [7]) == 0 and p.lookup(0, [7]) == 1
    p.share(0, 7)
    assert p.get(1, 7) == b"secret" and p.lookup(1, [7]) == 1


def test_shared_lru_eviction_spares_private_and_pinned():
    p = pool(cap=16 * KIB)
    p.attach(0, 4 * KIB)
    p.attach(1, 0)
    p.put(0, 100, bytes(4 * KIB))              # private
    for k in range(3):
        p.put(1, k, bytes(4 * KIB), shared=True)
    p.pin(0, [0])
    p.get(0, 1)                                # 1 recent, 2 is the LRU unpinned shared block
    p.put(1, 3, bytes(4 * KIB), shared=True)
    assert p.lookup(0, [0, 1]) == 2 and p.lookup(0, [2]) == 0 and p.lookup(0, [3]) == 1
    assert p.lookup(0, [100]) == 1
    p.pin(1, [1, 3])
    with pytest.raises(PoolError, match="pool full"):
        p.put(1, 9, b"x", shared=True)
    assert p.stats()["used_bytes"] == 16 * KIB
    p.check()


def test_shared_block_lives_while_referenced():
    p = pool()
    p.attach(0, 0)
    p.attach(1, 0)
    p.put(0, 5, b"abc", shared=True)
    p.get(1, 5)                                # host 1 takes a reference by reading
    p.free(0, 5)
    assert p.get(1, 5) == b"abc"
    with pytest.raises(PoolError, match="no reference"):
        p.free(0, 5)
    p.free(1, 5)
    assert p.lookup(0, [5]) == 0 and p.stats()["used_bytes"] == 0


def test_detach_frees_private_and_pins_keeps_others_shared():
    p = pool()
    p.attach(0, 8 * KIB)
    p.attach(1, 8 * KIB)
    p.put(0, 1, b"p" * 10)
    p.put(0, 2, b"s" * 20, shared=True)
    p.put(0, 3, b"t" * 30, shared=True)
    p.get(1, 2)
    p.pin(0, [1, 2, 3])
    p.detach(0)
    s = p.stats()
    assert s["used_bytes"] == 20 and s["pinned_shared_bytes"] == 0
    assert p.get(1, 2) == b"s" * 20 and p.lookup(1, [3]) == 0
    assert s["used_bytes"] + s["free_bytes"] == s["capacity_bytes"]
    p.check()


def test_unpin_is_all_or_nothing():
    p = pool()
    p.attach(0, 8 * KIB)
    p.put(0, 1, b"a")
    p.pin(0, [1])
    with pytest.raises(PoolError, match="not pinned"):
        p.unpin(0, [1, 1])
    assert p.stats()["hosts"]["0"]["pins"] == 1
    with pytest.raises(PoolError, match="pinned by host 0"):
        p.free(0, 1)


def test_coherence_write_back_invalidates_sharers():
    from cxlsim.fabric import Fabric
    from cxlsim.topology import load_topology
    fab = Fabric(load_topology("kv-pool-4host"))
    p = LocalPool(1 << 20, extent_bytes=64 * KIB, fabric=fab, memory="pool")
    for h in range(3):
        p.attach(h, 0)
    p.put(0, 1, b"v1", shared=True)
    p.get(1, 1)
    p.get(2, 1)
    p.put(0, 1, b"v2", shared=True)            # write: 1 and 2 are back-invalidated
    c = p.stats()["coherence"]
    assert c["invalidations"] == 2 and c["bi_events"] == 1
    assert p.stats()["hosts"]["0"]["coherence_ns"] > 0


def ops(host, items):
    return [PoolOp(t, host, i, kind, key, nbytes, shared)
            for i, (t, kind, key, nbytes, shared) in enumerate(items)]


def test_barrier_order_does_not_depend_on_arrival():
    def run(order):
        p = pool(cap=8 * KIB)
        for h in range(3):
            p.attach(h, 0)
        by_host = {0: ops(0, [(5.0, OP_PUT, 1, 4 * KIB, True), (6.0, OP_TOUCH, 1, 0, True)]),
                   1: ops(1, [(1.0, OP_PUT, 2, 4 * KIB, True)]),
                   2: ops(2, [(5.0, OP_PUT, 3, 4 * KIB, True), (7.0, OP_FREE, 2, 0, True)])}
        for h in order:
            released = p.exchange(h, 0, by_host[h])
            if h != order[-1]:
                assert released == {}
        assert sorted(released) == [0, 1, 2]            # nobody has a next event: all go on
        assert released[0] == released[1] == released[2]
        return released[0], p.stats()
    a, b = run([0, 1, 2]), run([2, 0, 1])
    assert a == b
    delta = a[0]
    # order: put 2 (t=1), put 1 (t=5,h0), put 3 (t=5,h2) evicts LRU 2, touch 1, free 2 rejected
    assert delta.added == (1, 3) and delta.removed == ()
    assert [r[:2] for r in delta.rejected] == [(2, 1)]
    assert delta.used_bytes == 8 * KIB


def test_exchange_checks_quantum_and_hosts():
    p = pool()
    p.attach(0, 0)
    p.attach(1, 0)
    with pytest.raises(PoolError, match="quantum 3"):
        p.exchange(0, 3, [])
    with pytest.raises(PoolError, match="missing"):
        p.exchange_all(0, {0: []})
    assert p.exchange(0, 0, []) == {}
    with pytest.raises(PoolError, match="already"):
        p.exchange(0, 0, [])
    p.detach(1)
    assert p.try_complete()[0].quantum == 0 and p.quantum == 1


def test_hosts_without_work_are_parked_and_get_what_they_missed():
    """Three hosts, 1 us quanta. Only hosts with an event before the next barrier's end are
    released; a parked host later gets every delta it missed merged into one, and the schedule
    (run_until_ns per barrier) is the one the in-process barrier computes."""
    def put(h, t, key):
        return [PoolOp(t, h, 0, OP_PUT, key, KIB, True)]

    p = pool(quantum_ns=1000.0)
    for h in range(3):
        p.attach(h, 0)
    assert p.exchange(0, 0, [], 100.0) == {} and p.exchange(1, 0, [], 1500.0) == {}
    r0 = p.exchange(2, 0, [], 5500.0)
    assert sorted(r0) == [0] and r0[0].run_until_ns == 1000.0       # quantum 0 holds t=100
    r1 = p.exchange(0, 1, put(0, 100.0, 1), 2500.0)
    assert sorted(r1) == [1] and r1[1].run_until_ns == 2000.0 and r1[1].added == (1,)
    r2 = p.exchange(1, 2, put(1, 1600.0, 2), None)
    assert sorted(r2) == [0] and r2[0].run_until_ns == 3000.0 and r2[0].added == (1, 2)
    r3 = p.exchange(0, 3, [PoolOp(2500.0, 0, 1, OP_FREE, 1, 0, True)], None)
    assert sorted(r3) == [2] and r3[2].run_until_ns == 6000.0      # the idle quanta skipped
    assert r3[2].added == (2,) and r3[2].removed == (1,) and r3[2].quantum == 3
    r4 = p.exchange(2, 4, [], None)
    assert sorted(r4) == [0, 1, 2] and r4[0].run_until_ns == float("inf")

    dense = pool(quantum_ns=1000.0)                  # the same barriers, every host each time
    for h in range(3):
        dense.attach(h, 0)
    schedule = [dense.exchange_all(0, {0: [], 1: [], 2: []}, {0: 100.0, 1: 1500.0, 2: 5500.0}),
                dense.exchange_all(1, {0: put(0, 100.0, 1), 1: [], 2: []},
                                   {0: 2500.0, 1: 1500.0, 2: 5500.0}),
                dense.exchange_all(2, {0: [], 1: put(1, 1600.0, 2), 2: []},
                                   {0: 2500.0, 1: math.inf, 2: 5500.0}),
                dense.exchange_all(3, {0: [PoolOp(2500.0, 0, 1, OP_FREE, 1, 0, True)], 1: [],
                                       2: []}, {0: math.inf, 1: math.inf, 2: 5500.0}),
                dense.exchange_all(4, {0: [], 1: [], 2: []}, {})]
    assert [d.run_until_ns for d in schedule] == [1000.0, 2000.0, 3000.0, 6000.0, math.inf]
    assert dense.stats() == p.stats()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["put", "sput", "get", "free", "pin",
                                                              "unpin", "share", "detach"]),
                          st.integers(0, 7), st.integers(1, 3000)), max_size=60))
def test_accounting_invariants_hold_under_any_sequence(steps):
    p = pool(cap=12 * KIB, extent=2 * KIB)
    for h in range(3):
        p.attach(h, 2 * KIB)
    for host, op, key, n in steps:
        try:
            if op == "detach":
                p.detach(host)
                p.attach(host, 2 * KIB)
            elif op in ("put", "sput"):
                p.put(host, key, bytes([key]) * n, shared=op == "sput")
            elif op == "get":
                assert set(p.get(host, key)) <= {key, 0}
            elif op == "free":
                p.free(host, key)
            elif op in ("pin", "unpin"):
                getattr(p, op)(host, [key])
            else:
                p.share(host, key)
        except PoolError:
            pass
        p.check()
        s = p.stats()
        assert s["used_bytes"] + s["free_bytes"] == s["capacity_bytes"]
        for h, hs in s["hosts"].items():
            assert hs["private_bytes"] <= hs["quota_bytes"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sets(st.integers(0, 9)), st.sets(st.integers(0, 9))),
                min_size=1, max_size=6),
       st.sets(st.integers(0, 9)))
def test_a_merged_delta_has_the_effect_of_its_parts_in_order(changes, mirror):
    from cxlsim.pool.api import DeltaMerger, PoolDelta
    from cxlsim.serving.pooltier import PoolSide

    deltas = [PoolDelta(q, tuple(sorted(a)), tuple(sorted(r)), ((1, q, "x"),))
              for q, (a, r) in enumerate(changes)]
    one_by_one, merged = PoolSide(1, "pool", 1), PoolSide(1, "pool", 1)
    one_by_one.mirror, merged.mirror = set(mirror), set(mirror)
    for d in deltas:
        one_by_one.apply(d)
    merger = DeltaMerger()
    for d in deltas:
        merger.add(d)
    merged.apply(merger.result())
    assert merged.mirror == one_by_one.mirror
    assert merged.rejected == one_by_one.rejected == len(deltas)


def test_a_lazy_delta_applies_at_the_first_look_at_the_mirror_or_before_the_next_hand_in():
    """A host side given a LazyDelta fetches its pool changes only when it reads the mirror or
    hands in its next ops, and ends up as if the delta had been applied at once."""
    from cxlsim.pool.api import LazyDelta, PoolDelta
    from cxlsim.serving.pooltier import PoolSide

    delta = PoolDelta(3, (7,), (5,), ((1, 0, "full"),), run_until_ns=4e6, horizon_ns=9e6)
    fetched = []

    def lazy():
        out = LazyDelta(Release(3, 4e6, 9e6), lambda: (fetched.append(1), out.deliver(delta)))
        return out
    eager, side = PoolSide(1, "pool", 1), PoolSide(1, "pool", 1)
    eager.mirror, side.mirror = {5}, {5}
    eager.apply(delta)
    side.apply(lazy())
    side.put(8, 4096, 1.0)                    # buffering ops reads nothing
    assert fetched == []
    assert 7 in side and 5 not in side and fetched == [1]
    assert (side.mirror, side.rejected) == (eager.mirror, eager.rejected)
    again = PoolSide(1, "pool", 1)
    again.apply(lazy())
    assert [op.key for op in again.take_ops()] == [] and fetched == [1, 1]
    assert again.mirror == {7}


def test_a_lazy_delta_refuses_a_delta_its_release_did_not_promise():
    from cxlsim.pool.api import LazyDelta, PoolDelta
    lazy = LazyDelta(Release(3, 4e6, 9e6), lambda: None)
    with pytest.raises(PoolError, match="released this host with"):
        lazy.deliver(PoolDelta(3, (), (), run_until_ns=5e6, horizon_ns=9e6))
    with pytest.raises(PoolError, match="never came"):
        lazy.result()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.floats(0.0, 20_000.0)), min_size=3, max_size=3),
                min_size=1, max_size=12))
def test_due_names_the_hosts_a_hand_in_releases(rounds):
    """`due` (the server's early release of a parked host) predicts exactly which hosts the
    barrier then releases and the schedule each delta carries, and nothing while other hosts
    still have to hand in. Each round, the hosts that were released hand in again with the next
    event times drawn."""
    p = pool(quantum_ns=1000.0)
    for h in range(3):
        p.attach(h, 0)
    running, q = [0, 1, 2], 0
    for nexts in rounds:
        if not running:
            break
        for i, h in enumerate(running):
            predicted = p.due(h, q, nexts[h])
            assert p.due(h, q + 1, nexts[h]) == {}         # a hand-in exchange would refuse
            released = p.exchange(h, q, [], nexts[h])
            if i < len(running) - 1:
                assert predicted == {} and released == {}
            else:
                assert predicted == {r: Release(d.quantum, d.run_until_ns, d.horizon_ns)
                                     for r, d in released.items()}
                for r, d in released.items():     # the host holding the horizon is named
                    others = {o: t for o, t in p._next.items() if o != r and t < math.inf}
                    if others:
                        assert others[d.horizon_host] == d.horizon_ns == min(others.values())
                    else:
                        assert (d.horizon_host, d.horizon_ns) == (-1, math.inf)
        q += 1
        running = sorted(released)
        if any(math.isinf(d.run_until_ns) for d in released.values()):
            break


def test_ops_that_tie_apply_in_hand_in_order():
    """Ops sort by (t_ns, host, seq) only: a host that repeats a seq gets its ops applied in the
    order it handed them in (a put, then the free of the same block), not by kind or key."""
    p = pool()
    p.attach(0, 0)
    tied = [PoolOp(1.0, 0, 0, OP_PUT, 5, KIB, True), PoolOp(1.0, 0, 0, OP_FREE, 5, 0, True)]
    delta = p.exchange_all(0, {0: tied})
    assert delta.rejected == () and delta.added == () and p.lookup(0, [5]) == 0
    again = p.exchange_all(1, {0: tied[::-1]})           # a free of nothing, then the put
    assert len(again.rejected) == 1 and again.added == (5,)


def test_a_host_runs_its_next_quantum_ahead_of_its_release():
    """replay._run_ahead: after handing in, a host runs the quantum holding its next event (the
    one the pool will release it for) before the release comes, fetching the release only when
    an event looks at the pool; a release for another quantum is a clear error."""
    from cxlsim.pool.api import PoolDelta
    from cxlsim.replay import _run_ahead
    from cxlsim.serving.pooltier import PoolSide

    class Host:                       # a serving host's event loop, reduced to what is used
        def __init__(self, side, looks):
            self.side, self.looks, self.ran_until, self.loop = side, looks, None, self

        def peek_time(self):
            return 1500.0

        def run(self, until):
            if self.looks:
                self.seen = 7 in self.side       # an admission looking at the pool's keys
            self.ran_until = until

    for looks in (False, True):
        fetched = []
        side = PoolSide(0, "pool", 1)
        host = Host(side, looks)

        def release():
            fetched.append(host.ran_until)
            return PoolDelta(3, (7,), (), run_until_ns=2000.0)
        delta, handed = _run_ahead(host, side, release, 1000.0)
        assert host.ran_until == 2000.0 and delta.run_until_ns == 2000.0 and 7 in side.mirror
        assert not handed             # (nothing to hand in ahead with)
        # fetched after the run when nothing looked, inside it when an event did
        assert fetched == ([None] if looks else [2000.0])
        if looks:
            assert host.seen
    side = PoolSide(0, "pool", 1)
    side.await_release(lambda: PoolDelta(3, (), ()))
    assert side.lazy                  # a transfer across the pool's links fetches it first
    # a release for a later end is fine (run_quanta runs on to it); an earlier one is not
    side = PoolSide(0, "pool", 1)
    later, _ = _run_ahead(Host(side, False), side,
                          lambda: PoolDelta(3, (), (), run_until_ns=3e3), 1000.0)
    assert later.run_until_ns == 3e3
    side = PoolSide(0, "pool", 1)
    with pytest.raises(PoolError, match="released host 0 to run until 1000 ns; its next event "
                                        "at 1500 ns lies in the quantum ending at 2000 ns"):
        _run_ahead(Host(side, False), side, lambda: PoolDelta(3, (), (), run_until_ns=1e3),
                   1000.0)


def test_a_host_hands_in_ahead_only_what_needed_no_pool_and_takes_it_back_if_refused():
    """replay._run_ahead with hand_in_ahead: a host that ran its quantum ahead without looking
    at the pool and holds no transfers back runs on alone as far as the others' last known
    earliest event allows, then hands in the next barrier before its release comes. Taken when
    the release runs it to the end it ran ahead to; otherwise its ops go back for the usual
    hand-in. A host that looked at the pool does not hand in ahead; transfers held back are
    issued once the release comes, as the hand-in would have issued them."""
    from cxlsim.pool.api import PoolDelta, PoolOp
    from cxlsim.replay import _run_ahead
    from cxlsim.serving.pooltier import PoolSide

    class Host:                       # event loop with one event per quantum at 1500, 2500, ...
        def __init__(self, side, looks=False, op_at=None):
            self.side, self.looks, self.op_at, self.loop, self.kv = side, looks, op_at, self, self
            self.now, self.flushed = 0.0, 0

        def flush(self):                      # TieredKV.flush: held transfers go out
            self.flushed += 1

        def peek_time(self):
            return (self.now // 1000) * 1000 + 1500.0

        def run(self, until):
            while self.peek_time() < until:
                t = self.peek_time()
                if self.looks:
                    assert 7 not in self.side      # looks at the pool
                if t == self.op_at:
                    self.side.ops.append(PoolOp(t, 0, 0, "touch", 9, 0, False))
                self.now = t

    def run(host, side, run_until, horizon):
        sent = []
        delta, handed = _run_ahead(host, side, lambda: PoolDelta(3, (), (),
                                                                 run_until_ns=run_until),
                                   1000.0, lambda ops, nxt, after: sent.append((ops, nxt, after)),
                                   horizon)
        return handed, sent

    # ran ahead to 2000 without looking, then alone up to the others' earliest event (4200):
    # the quanta ending 3000 and 4000; an op at 3500 ends running alone there
    side = PoolSide(0, "pool", 1)
    host = Host(side, op_at=3500.0)
    handed, sent = run(host, side, 2000.0, 4200.0)
    assert handed and len(sent) == 1 and host.flushed == 1
    ops, next_ns, after = sent[0]
    assert [op.t_ns for op in ops] == [3500.0] and next_ns == 4500.0 and after == 2000.0
    assert side.ops == []
    # the release runs it elsewhere: not taken, the ops come back for the usual hand-in
    side = PoolSide(0, "pool", 1)
    handed, sent = run(Host(side, op_at=2500.0), side, 3000.0, 9000.0)
    assert not handed and len(sent) == 1 and [op.t_ns for op in side.ops] == [2500.0]
    # looked at the pool (fetched its release): no hand-in ahead
    side = PoolSide(0, "pool", 1)
    handed, sent = run(Host(side, looks=True), side, 2000.0, 9000.0)
    assert not handed and sent == []
