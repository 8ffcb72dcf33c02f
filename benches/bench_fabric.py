"""Fabric timing speed: transfers per second through the batch API and the per-call path.
Goal (issue 2): at least 10 million transfer timings per second on one core via the batch API."""
import numpy as np
import pytest

from conftest import report
from cxlsim.fabric import Fabric
from cxlsim.topology import load_topology

N = 2_000_000


@pytest.fixture(scope="module")
def workload():
    fabric = Fabric(load_topology("kv-tiered"))
    rng = np.random.default_rng(0)
    routes = np.array([fabric.route("pool", "host0"), fabric.route("host0.dram", "host0"),
                       fabric.route("host0", "pool")], np.int32)
    return (fabric, routes[rng.integers(0, 3, N)], np.full(N, 4096, np.uint64),
            np.cumsum(rng.exponential(50.0, N)), np.arange(N, dtype=np.uint64) * 4096)


def test_batch_transfers_per_second(benchmark, workload):
    fabric, routes, sizes, starts, addrs = workload

    def run():
        fabric.reset()
        return fabric.transfer_batch(routes, sizes, starts, addrs)

    done = benchmark.pedantic(run, rounds=5, iterations=1)
    assert (done > starts).all()
    report(benchmark, transfers=N, transfers_per_s=N / benchmark.stats.stats.min,
           goal_per_s=10e6)


def test_per_call_transfers_per_second(benchmark, workload):
    fabric = workload[0]
    route = fabric.route("pool", "host0")
    n = 100_000

    def run():
        fabric.reset()
        transfer = fabric.transfer_route
        for i in range(n):
            transfer(route, 4096, float(i) * 50.0)

    benchmark.pedantic(run, rounds=3, iterations=1)
    report(benchmark, transfers=n, transfers_per_s=n / benchmark.stats.stats.min)
