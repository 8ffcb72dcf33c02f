"""Fabric timing: exact timelines on hand-computed scenarios, and properties on random ones."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxlsim.errors import ConfigError, InvalidArgument
from cxlsim.fabric import Fabric, Unreachable
from cxlsim.topology import parse_topology


def mem(name, lat=100.0, bw=32.0, **kw):
    return {"name": name, "kind": "cxl", "capacity_gib": 1, "read_latency_ns": lat,
            "bandwidth_gbps": bw, **kw}


def small_topology(**overrides):
    """host h0 -- (64 GB/s, 10 ns) -- switch sw (50 ns hop) -- (32 GB/s, 10 ns) -- m0, m1."""
    data = {
        "topology": {"name": "t"},
        "host": [{"name": "h0"}],
        "memory": [mem("m0"), mem("m1")],
        "switch": [{"name": "sw", "hop_latency_ns": 50}],
        "link": [{"ends": ["h0", "sw"], "bandwidth_gbps": 64, "latency_ns": 10},
                 {"ends": ["sw", "m0"], "bandwidth_gbps": 32, "latency_ns": 10},
                 {"ends": ["sw", "m1"], "bandwidth_gbps": 32, "latency_ns": 10}],
        "interleave": [{"name": "pool", "members": ["m0", "m1"], "granularity": 256}],
    }
    data.update(overrides)
    return parse_topology(data)


def test_direct_transfer_latency_plus_serialization():
    f = Fabric(small_topology())
    # 10 + 50 (hop) + 10 ns of links/switch + 100 ns media; 4096 B at the 32 GB/s bottleneck = 128 ns
    assert f.transfer("m0", "h0", 4096, 0.0) == 170.0 + 128.0
    assert f.idle_latency("m0", "h0", 64) == 170.0 + 2.0


def test_two_transfers_contend_on_one_link():
    f = Fabric(small_topology())
    first = f.transfer("m0", "h0", 4096, 0.0)
    second = f.transfer("m0", "h0", 4096, 0.0)
    # the second waits for the m0 link and media to finish serving the first (128 ns)
    assert (first, second) == (298.0, 426.0)
    # a transfer arriving after the backlog drained sees an idle path again
    assert f.transfer("m0", "h0", 4096, 1000.0) == 1298.0


def test_opposite_directions_do_not_contend():
    f = Fabric(small_topology())
    read = f.transfer("m0", "h0", 4096, 0.0)
    write = f.transfer("h0", "m1", 4096, 0.0)   # different device: only shares h0<->sw, other direction
    assert read == write == 298.0


def test_switch_hop_adds_its_latency():
    direct = parse_topology({
        "topology": {"name": "d"}, "host": [{"name": "h0"}], "memory": [mem("m0")],
        "link": [{"ends": ["h0", "m0"], "bandwidth_gbps": 32, "latency_ns": 20}]})
    assert Fabric(direct).idle_latency("m0", "h0", 64) == 20 + 100 + 2
    assert Fabric(small_topology()).idle_latency("m0", "h0", 64) == 10 + 50 + 10 + 100 + 2


def test_interleave_set_aggregates_bandwidth():
    f = Fabric(small_topology())
    # 4096 B dealt in 256 B chunks: 2048 B per device (64 ns each), 4096 B on the 64 GB/s uplink
    assert f.transfer("pool", "h0", 4096, 0.0) == 170.0 + 64.0
    f.reset()
    # an access inside one chunk touches one device only
    assert f.transfer("pool", "h0", 64, 0.0, addr=256) == 170.0 + 2.0
    stats = {s.name: s for s in f.stats()}
    assert stats["media m1"].bytes == 64 and stats["media m0"].bytes == 0


def test_write_slowdown_uses_write_bandwidth():
    topo = small_topology(memory=[mem("m0", write_bandwidth_gbps=16.0), mem("m1")])
    f = Fabric(topo)
    # media writes at 16 GB/s: 4096 B take 256 ns and are the bottleneck
    assert f.transfer("h0", "m0", 4096, 0.0) == 170.0 + 256.0


def test_batch_equals_single_calls_and_is_deterministic():
    rng = np.random.default_rng(7)
    n = 2000
    f1, f2 = Fabric(small_topology()), Fabric(small_topology())
    routes = np.array([f1.route("m0", "h0"), f1.route("pool", "h0"), f1.route("h0", "m1")])
    for f in (f2,):
        for a, b in (("m0", "h0"), ("pool", "h0"), ("h0", "m1")):
            f.route(a, b)
    pick = routes[rng.integers(0, 3, n)]
    sizes = rng.integers(1, 1 << 16, n).astype(np.uint64)
    starts = np.sort(rng.uniform(0, 1e5, n))
    batch = f1.transfer_batch(pick, sizes, starts)
    single = [f2.transfer_route(int(r), int(b), float(t))[0] for r, b, t in zip(pick, sizes, starts)]
    assert batch.tolist() == single
    f1.reset()
    assert f1.transfer_batch(pick, sizes, starts).tolist() == batch.tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([("m0", "h0"), ("pool", "h0"), ("h0", "m1"), ("m1", "h0")]),
                          st.integers(1, 200_000), st.floats(0, 50_000, allow_nan=False),
                          st.integers(0, 1 << 20)), min_size=1, max_size=60))
def test_properties_latency_bandwidth_conservation(transfers):
    f = Fabric(small_topology())
    transfers = sorted(transfers, key=lambda x: x[2])
    energy_total = 0.0
    for (src, dst), nbytes, t, addr in transfers:
        done, pj = f.transfer_route(f.route(src, dst), nbytes, t, addr)
        # never before start + the idle latency of the same access
        assert done >= t + f.idle_latency(src, dst, nbytes, addr) - 1e-9
        energy_total += pj
    stats = f.stats()
    for s in stats:
        if s.bytes:
            bw = 64.0 if "h0->sw" in s.name or "sw->h0" in s.name else 32.0
            # reservations never overlap, so busy time is exactly bytes / bandwidth
            assert math.isclose(s.busy_ns, s.bytes / bw, rel_tol=1e-9)
            # and the link cannot have finished before carrying its bytes at full bandwidth
            assert s.free_at_ns >= min(t for _, _, t, _ in transfers) + s.busy_ns - 1e-6
    assert math.isclose(sum(s.energy_pj for s in stats), energy_total, rel_tol=1e-9, abs_tol=1e-9)
    # every transfer's bytes cross the host uplink exactly once
    uplink = sum(s.bytes for s in stats if s.name in ("link sw->h0", "link h0->sw"))
    assert uplink == sum(n for _, n, _, _ in transfers)


def test_no_window_exceeds_bandwidth():
    """Saturate one link and check bytes delivered by any time never exceed bandwidth x time."""
    f = Fabric(small_topology())
    starts = np.zeros(500)
    done = f.transfer_batch(np.full(500, f.route("m0", "h0")), np.full(500, 4096), starts)
    served = np.sort(done) - 170.0          # serialization end times on the 32 GB/s bottleneck
    for k, end in enumerate(served, 1):
        assert k * 4096 <= 32.0 * end + 1e-6


def test_loaded_latency_rises_toward_saturation():
    topo = small_topology(memory=[mem("m0", queue_ns=30.0), mem("m1", queue_ns=30.0)])
    f = Fabric(topo)
    light_lat, light_bw = f.closed_loop("h0", "m0", 1.0, threads=1024, delay_ns=800_000)
    heavy_lat, heavy_bw = f.closed_loop("h0", "m0", 1.0, threads=1024, delay_ns=0)
    assert light_lat == pytest.approx(f.idle_latency("m0", "h0"), rel=0.05)
    assert heavy_lat > 2 * light_lat
    assert heavy_bw <= 32.0 + 1e-9 and heavy_bw > 0.9 * 32.0


def test_errors_are_clear():
    f = Fabric(small_topology())
    with pytest.raises(ConfigError, match="unknown endpoint 'nope'"):
        f.transfer("nope", "h0", 64, 0.0)
    with pytest.raises(InvalidArgument, match="start time"):
        f.transfer("m0", "h0", 64, -1.0)
    with pytest.raises(ValueError, match="bytes and address"):
        f.transfer("m0", "h0", -5, 0.0)
    with pytest.raises(InvalidArgument, match="item 1"):
        f.transfer_batch([f.route("m0", "h0"), 99], [64, 64], [0.0, 0.0])


def test_private_memory_of_another_host_is_unreachable():
    topo = small_topology(
        host=[{"name": "h0"}, {"name": "h1"}],
        memory=[mem("m0"), mem("m1"), mem("h1.dram", kind="dram")],
        link=small_topology_links() + [{"ends": ["h1", "sw"], "bandwidth_gbps": 64, "latency_ns": 10},
                                       {"ends": ["h1", "h1.dram"], "bandwidth_gbps": 100, "latency_ns": 0}])
    f = Fabric(topo)
    assert f.idle_latency("m0", "h1") == f.idle_latency("m0", "h0")
    with pytest.raises(Unreachable):
        f.idle_latency("h1.dram", "h0")


def small_topology_links():
    return [{"ends": ["h0", "sw"], "bandwidth_gbps": 64, "latency_ns": 10},
            {"ends": ["sw", "m0"], "bandwidth_gbps": 32, "latency_ns": 10},
            {"ends": ["sw", "m1"], "bandwidth_gbps": 32, "latency_ns": 10}]


def test_read_write_mix_uses_both_link_directions():
    """With media faster than the x8 link, all-reads saturate the link's read direction while a
    2:1 mix also uses the write direction: the mix gets more total bandwidth (as vendors quote
    for CXL expanders), capped by the media."""
    topo = parse_topology({
        "topology": {"name": "mix"}, "host": [{"name": "h0"}],
        "memory": [mem("m0", bw=40.0)],
        "link": [{"ends": ["h0", "m0"], "bandwidth_gbps": 32, "latency_ns": 20}]})
    f = Fabric(topo)
    _, reads = f.closed_loop("h0", "m0", 1.0, threads=512, delay_ns=0, accesses=200_000)
    _, mixed = f.closed_loop("h0", "m0", 2 / 3, threads=512, delay_ns=0, accesses=200_000)
    assert reads == pytest.approx(32.0, rel=0.02)
    assert mixed == pytest.approx(40.0, rel=0.02)
