"""Cross-host contention at the shared pool: the bytes each host moves to and from the pool go to
the barrier (OP_MOVE), come back to every host in the delta (PoolDelta.traffic), and each host's
fabric takes in the other hosts' as background transfers: they occupy the shared links and
devices and count in no statistic of that host."""
import math

import msgpack
import pytest

from cxlsim.errors import PoolError, ProtocolError
from cxlsim.fabric import Fabric
from cxlsim.policies import make_policy
from cxlsim.pool.api import OP_MOVE, OP_PUT, DeltaMerger, LazyDelta, PoolDelta, PoolOp, Release, \
    Traffic
from cxlsim.pool.client import delta_from_wire
from cxlsim.pool.local import LocalPool
from cxlsim.pool.server import _delta_to_wire
from cxlsim.serving.kvtiers import Tier, TieredKV
from cxlsim.serving.pooltier import PoolSide
from cxlsim.topology import parse_topology

MIB = 1 << 20


def two_hosts(queue_ns=0.0):
    """h0 and h1, each with hbm and dram of its own on a private link, and an x16-like link to
    switch sw, under which two 32 GB/s devices (loaded-latency term queue_ns) form the
    interleaved pool."""
    def mem(name, kind="cxl", bw=32.0):
        return {"name": name, "kind": kind, "capacity_gib": 16, "read_latency_ns": 100.0,
                "bandwidth_gbps": bw, "queue_ns": queue_ns if kind == "cxl" else 0.0}
    memories = [mem("m0"), mem("m1")]
    links = [{"ends": ["sw", "m0"], "bandwidth_gbps": 32, "latency_ns": 10},
             {"ends": ["sw", "m1"], "bandwidth_gbps": 32, "latency_ns": 10}]
    for h in ("h0", "h1"):
        memories += [mem(f"{h}.hbm", "hbm", 1000.0), mem(f"{h}.dram", "dram", 200.0)]
        links += [{"ends": [h, "sw"], "bandwidth_gbps": 64, "latency_ns": 10},
                  {"ends": [h, f"{h}.hbm"], "bandwidth_gbps": 200, "latency_ns": 10},
                  {"ends": [h, f"{h}.dram"], "bandwidth_gbps": 200, "latency_ns": 10}]
    return parse_topology({
        "topology": {"name": "two-hosts"}, "host": [{"name": "h0"}, {"name": "h1"}],
        "memory": memories, "switch": [{"name": "sw", "hop_latency_ns": 50}], "link": links,
        "interleave": [{"name": "pool", "members": ["m0", "m1"], "granularity": 256}]})


TIERS = {h: [f"h{h}.hbm", f"h{h}.dram"] for h in (0, 1)}


def host(h, topo):
    side = PoolSide(h, "pool", 1 << 30, TIERS)
    tiers = [Tier("hbm", f"h{h}.hbm", 1 << 30), Tier("dram", f"h{h}.dram", 1 << 30)]
    return side, TieredKV(tiers, make_policy("lru"), MIB, Fabric(topo), pool=side)


def test_background_transfers_occupy_shared_resources_and_count_nowhere():
    topo = two_hosts()

    def own_load(background):
        f = Fabric(topo)
        if background:
            f.background_batch([f.route(*r) for r, _ in background], [n for _, n in background],
                               [0.0] * len(background))
        done = f.transfer("pool", "h0.dram", 64 * MIB, 0.0)
        return done, [(s.name, s.bytes, s.busy_ns, s.energy_pj, s.transfers) for s in f.stats()]

    alone, stats = own_load([])
    shared, stats_shared = own_load([(("pool", "h1.dram"), 64 * MIB)])
    private, stats_private = own_load([(("h1.hbm", "h1.dram"), 64 * MIB)])
    # the two loads share the devices (64 GB/s together): the second takes about twice as long
    assert shared > 1.9 * alone
    assert private == alone                   # h1's own memories are not on h0's route
    assert stats_shared == stats_private == stats     # background bytes are the other host's
    with pytest.raises(ValueError, match="2 routes, 1 sizes"):
        Fabric(topo).background_batch([0, 0], [1], [0.0, 0.0])


def test_background_bytes_that_left_before_the_hosts_own_do_not_hold_it_up():
    """Taken in at the barrier, after the host's own late transfer: the other host's early bytes
    were gone long before, so the host's next transfer starts when its own bytes are done."""
    topo = two_hosts()

    def next_load(background_at, own_before=True):
        f = Fabric(topo)
        if own_before:
            f.transfer("pool", "h0.dram", MIB, 999_000.0)
        if background_at is not None:
            f.background_batch([f.route("pool", "h1.dram")], [MIB], [background_at])
        return f.transfer("pool", "h0.dram", MIB, 1_000_000.0)
    assert next_load(0.0) == next_load(None)
    # bytes still on the devices (16 us for 1 MiB at 64 GB/s): the host queues behind them
    idle = next_load(None, own_before=False)
    assert next_load(999_990.0, own_before=False) > idle + 0.9 * MIB / 64.0


def test_background_bytes_count_in_the_utilization_window_they_fell_in():
    """With a loaded-latency term, the other host's bytes raise the host's latency when they
    fell in the window before its transfer (1 us windows), and not when they are older."""
    topo = two_hosts(queue_ns=100.0)

    def latency(background_at):
        f = Fabric(topo)
        if background_at is not None:
            f.background_batch([f.route("pool", "h1.dram")], [16_000], [background_at])
        return f.transfer("pool", "h0.dram", 64, 10_000.0) - 10_000.0
    idle = latency(None)
    assert latency(9_500.0) > idle + 10          # the previous window was busy
    assert latency(8_500.0) == idle              # two windows back: no longer counted


def test_a_background_transfer_at_an_absurd_time_is_refused_clearly():
    f = Fabric(two_hosts())
    with pytest.raises(ValueError, match=r"background_batch: item 1: transfer: start time must be "
                                         r"in \[0, 1e\+18\) ns, got 1e\+300"):
        f.background_batch([f.route("pool", "h1.dram")] * 2, [64, 64], [0.0, 1e300])


def test_moves_reach_every_host_in_application_order():
    def run(per_host):
        p = LocalPool(1 << 30, 1000.0)
        for h in range(3):
            p.attach(h, 0)
        ops = {0: [PoolOp(5.0, 0, 0, OP_MOVE, 1, 4096, True),
                   PoolOp(5.0, 0, 1, OP_PUT, 9, 64, True)],
               1: [PoolOp(2.0, 1, 0, OP_MOVE, 0, 100, False),
                   PoolOp(7.0, 1, 1, OP_MOVE, 64, 100, False),      # no such tier: refused
                   PoolOp(8.0, 1, 2, OP_MOVE, 0, 0, True),          # no bytes: refused
                   PoolOp(9.0, 1, 3, OP_MOVE, -1, 10, True),        # no such tier: refused
                   PoolOp(1e300, 1, 4, OP_MOVE, 0, 10, True)],      # no such time: refused
               2: []}
        if not per_host:
            return p.exchange_all(0, ops)
        for h in (2, 1):
            assert p.exchange(h, 0, ops[h]) == {}
        released = p.exchange(0, 0, ops[0])
        assert released[0].traffic == released[1].traffic == released[2].traffic
        return released[0]
    delta = run(per_host=False)
    assert delta.traffic == (Traffic(2.0, 1, 0, False, 100), Traffic(5.0, 0, 1, True, 4096))
    assert delta.added == (9,)
    assert [(h, s) for h, s, _ in delta.rejected] == [(1, 1), (1, 2), (1, 3), (1, 4)]
    assert all("a move needs a tier index" in why for _, _, why in delta.rejected)
    assert run(per_host=True).traffic == delta.traffic


def test_a_parked_host_takes_in_every_barrier_it_missed_in_order():
    first = PoolDelta(0, (), (), traffic=(Traffic(1.0, 1, 0, True, 10),))
    second = PoolDelta(1, (), (), traffic=(Traffic(1500.0, 0, 1, False, 20),
                                           Traffic(1600.0, 1, 0, False, 30)))
    merger = DeltaMerger()
    merger.add(first)
    merger.add(second)
    side = PoolSide(0, "pool", 1)
    side.apply(merger.result())
    assert side.take_traffic() == [Traffic(1.0, 1, 0, True, 10), Traffic(1600.0, 1, 0, False, 30)]
    assert side.take_traffic() == [] and side.taken_in_bytes == 40


def test_a_host_hands_in_its_pool_bytes_and_takes_in_the_others_at_the_barrier():
    """Host 1 loads 64 MiB from the pool in quantum 0. Host 0's 64 MiB load in quantum 1 then
    waits for the devices (they serve 64 GB/s, host 0's link 64 GB/s alone); host 1's fabric
    counts only its own bytes, and host 0's counts none of host 1's."""
    topo = two_hosts()

    def run(host1_loads):
        (s0, kv0), (s1, kv1) = host(0, topo), host(1, topo)
        if host1_loads:
            kv1._transfer([(kv1.pool_route(False, 1), 64 * MIB)], 100.0)
        pool = LocalPool(1 << 30, 1000.0)
        pool.attach(0, 0)
        pool.attach(1, 0)
        ops = {0: s0.take_ops(), 1: s1.take_ops()}
        delta = pool.exchange_all(0, ops)
        s0.apply(delta)
        s1.apply(delta)
        done = kv0._transfer([(kv0.pool_route(False, 0), 64 * MIB)], 1000.0)
        return ops, delta, done, sum(s.bytes for s in kv0.fabric.stats())

    ops, delta, contended, bytes0 = run(True)
    assert [(o.kind, o.key, o.nbytes, o.shared) for o in ops[1]] == [(OP_MOVE, 1, 64 * MIB, False)]
    assert delta.traffic == (Traffic(100.0, 1, 1, False, 64 * MIB),)
    _, quiet, alone, bytes_alone = run(False)
    assert quiet.traffic == ()
    assert contended > alone + 0.8 * (64 * MIB / 64.0)     # behind most of host 1's bytes
    assert bytes0 == bytes_alone


def test_a_lazy_delta_is_settled_before_a_transfer_that_crosses_the_others_traffic():
    topo = two_hosts()
    delta = PoolDelta(4, (), (), run_until_ns=5000.0, horizon_ns=math.inf,
                      traffic=(Traffic(3000.0, 1, 0, False, 64 * MIB),))
    eager_side, eager = host(0, topo)
    eager_side.apply(delta)
    expected = eager._transfer([(eager.pool_route(False, 0), 64 * MIB)], 4000.0)

    side, kv = host(0, topo)
    fetched = []
    lazy = LazyDelta(Release(4, 5000.0, math.inf),
                     lambda: (fetched.append(1), lazy.deliver(delta)))
    side.apply(lazy)
    kv._transfer([(kv.route(0, 1), MIB)], 4000.0)       # hbm -> dram: h1 never crosses it
    assert side.lazy and fetched == []
    assert kv._transfer([(kv.pool_route(False, 0), 64 * MIB)], 4000.0) == expected
    assert not side.lazy and fetched == [1]


def test_traffic_from_a_tier_or_host_the_replay_does_not_have_is_a_clear_error():
    for traffic, says in [(Traffic(1.0, 1, 5, True, 10), "host 1 moved bytes through its tier 5"),
                          (Traffic(1.0, 7, 0, True, 10),
                           r"host 7 moved bytes .* has hosts \[0, 1\] only")]:
        side, kv = host(0, two_hosts())
        side.apply(PoolDelta(0, (), (), traffic=(traffic,)))
        with pytest.raises(PoolError, match=says):     # at the next transfer that takes it in
            kv._transfer([(kv.pool_route(False, 0), 64)], 2000.0)


def test_a_delta_crosses_the_wire_intact():
    delta = PoolDelta(7, (1, 2), (3,), ((1, 4, "pool full"),), 10, 20, ((0, 12.5),), 3e3, 4e3,
                      math.inf, -1, (Traffic(2.5, 1, 0, True, 64), Traffic(3.0, 0, 1, False, 8)))
    wire = msgpack.unpackb(msgpack.packb(_delta_to_wire(delta)))
    assert delta_from_wire(wire) == delta
    empty = PoolDelta(0, (), ())
    assert delta_from_wire(msgpack.unpackb(msgpack.packb(_delta_to_wire(empty)))) == empty


@pytest.mark.parametrize("field, value", [
    ("traffic", [[1.0], [99], [0], [True], [8]]),          # no such host
    ("traffic", [[1.0], [0], [0], [True]]),                # a column missing
    ("traffic", [[1.0, 2.0], [0], [0], [True], [8]]),      # ragged
    ("added", [-1]),
    ("next_ns", "soon"),
    ("rejected", [[0, 1]]),
    ("horizon_host", 64),
    ("coherence_ns", [[0, float("nan")]]),
])
def test_a_malformed_delta_names_its_field(field, value):
    wire = _delta_to_wire(PoolDelta(0, (), ()))
    wire[field] = value
    with pytest.raises(ProtocolError, match=field):
        delta_from_wire(wire)


def test_a_delta_with_missing_or_extra_fields_is_refused():
    wire = _delta_to_wire(PoolDelta(0, (), ()))
    del wire["traffic"]
    with pytest.raises(ProtocolError, match="fields"):
        delta_from_wire(wire)
    with pytest.raises(ProtocolError, match="fields"):
        delta_from_wire([1, 2])


def test_the_medium_trace_replay_feels_the_other_hosts_traffic(monkeypatch):
    """Four hosts on kv-pool-4host replaying the shipped medium trace: some of a host's pool
    loads queue behind other hosts' publications, so time to first token grows with the
    traffic taken in. `contention = False` (--no-contention) leaves it out, the same as a
    fabric that ignores what it is given. (The multi-process replay test runs this case against
    a real server.)"""
    from pathlib import Path

    from cxlsim.replay import ReplayConfig, run_replay
    trace = Path(__file__).resolve().parents[1] / "traces" / "synth_medium.jsonl"
    cfg = ReplayConfig(trace=str(trace), hosts=4, topology="kv-pool-4host", cxl_gib=2048.0)
    felt = run_replay(cfg).summary
    alone = run_replay(cfg.with_overrides(contention=False)).summary
    assert felt["ttft_ms"]["mean"] > alone["ttft_ms"]["mean"]
    assert felt["ttft_ms"]["p50"] > alone["ttft_ms"]["p50"]
    assert felt["pool"]["taken_in_bytes"] > 0 == alone["pool"]["taken_in_bytes"]
    assert (felt["pool"]["contention"], alone["pool"]["contention"]) == (True, False)
    monkeypatch.setattr(TieredKV, "_take_in", lambda self, traffic: None)
    ignored = run_replay(cfg).summary
    assert (ignored["ttft_ms"], ignored["tpot_ms"]) == (alone["ttft_ms"], alone["tpot_ms"])


def test_a_transfer_nobody_awaits_is_held_back_not_waited_for():
    """A publication (nothing waits for it) that would wait for a delta still coming is held
    back: the host runs on, and the transfer goes out before its next transfer, after the other
    hosts' moves, so the fabric sees the order it would have seen with the delta in at once."""
    topo = two_hosts()
    delta = PoolDelta(4, (), (), run_until_ns=5000.0, horizon_ns=math.inf,
                      traffic=(Traffic(3000.0, 1, 0, False, 64 * MIB),))
    eager_side, eager = host(0, topo)
    eager_side.apply(delta)
    eager._transfer([(eager.pool_route(True, 0), 8 * MIB)], 4000.0, awaited=False)
    expected = eager._transfer([(eager.route(0, 1), 8 * MIB)], 4100.0)

    side, kv = host(0, topo)
    fetched = []
    lazy = LazyDelta(Release(4, 5000.0, math.inf),
                     lambda: (fetched.append(1), lazy.deliver(delta)))
    side.apply(lazy)
    assert kv._transfer([(kv.pool_route(True, 0), 8 * MIB)], 4000.0, awaited=False) == 4000.0
    assert fetched == [] and [op.kind for op in side.ops] == [OP_MOVE]   # handed in all the same
    assert kv._transfer([(kv.route(0, 1), 8 * MIB)], 4100.0) == expected  # hbm -> dram waits
    assert fetched == [1]            # for the held publication's bytes on the hbm link
    assert [s.bytes for s in kv.fabric.stats()] == [s.bytes for s in eager.fabric.stats()]
