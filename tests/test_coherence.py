"""Coherence directory: back-invalidation and snoop costs come from the fabric's paths."""
import pytest

from cxlsim.coherence import Coherence
from cxlsim.errors import BlockNotFound, InvalidArgument
from cxlsim.fabric import Fabric
from cxlsim.topology import load_topology


@pytest.fixture
def pool():
    fabric = Fabric(load_topology("cxl-mhd-4host"))
    return fabric, Coherence(fabric, "mhd0", bi_handling_ns=100.0)


def test_costs_follow_paths(pool):
    fabric, coh = pool
    rt = fabric.path_latency_ns("mhd0", "host0")
    assert coh.bi_ns[0] == rt + 100.0
    assert coh.snoop_ns[0] == 1.5 * rt + 100.0


def test_write_back_invalidates_other_sharers_in_parallel(pool):
    _, coh = pool
    key = 42
    for h in range(3):
        assert coh.read(key, h) == 0.0           # clean shared reads cost nothing extra
    assert coh.state(key) == ({0, 1, 2}, -1)
    cost = coh.write(key, 0)
    assert cost == max(coh.bi_ns[1], coh.bi_ns[2])   # parallel, not summed
    assert coh.state(key) == ({0}, 0)
    st = coh.stats()
    assert (st.invalidations, st.bi_events, st.bi_ns) == (2, 1, cost)
    assert coh.write(key, 0) == 0.0              # sole owner rewrites freely


def test_read_of_modified_block_snoops_the_modifier(pool):
    _, coh = pool
    coh.write(7, 2)
    assert coh.read(7, 1) == coh.snoop_ns[2]
    assert coh.state(7) == ({1, 2}, -1)          # modifier keeps a clean shared copy
    assert coh.read(7, 3) == 0.0
    assert coh.stats().snoops == 1


def test_drop_and_forget(pool):
    _, coh = pool
    coh.read(9, 0)
    coh.read(9, 1)
    coh.drop(9, 1)
    assert coh.write(9, 0) == 0.0                # host 1 no longer holds a copy
    coh.forget(9)
    assert coh.stats().tracked == 0
    with pytest.raises(BlockNotFound, match="block 9 is not tracked"):
        coh.forget(9)
    with pytest.raises(InvalidArgument, match="host 7 out of range"):
        coh.read(1, 7)
