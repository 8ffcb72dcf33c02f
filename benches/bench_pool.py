"""Pool server benchmarks: batched small-command round trips, and put/get throughput of 64 KiB and
2 MiB blocks over sockets and over the shared-memory path, side by side with redis-py SET/GET on
a redis-server this benchmark starts itself on a free loopback port (skipped if absent).
Figures: docs/performance-pool.md."""
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pool_support import pool_server  # noqa: E402

from cxlsim.pool.client import PoolClient  # noqa: E402

from conftest import report  # noqa: E402

SIZES = {"64KiB": 64 << 10, "2MiB": 2 << 20}
ROUNDS = {"64KiB": 2000, "2MiB": 150}


@pytest.fixture(scope="module")
def endpoint():
    with pool_server(capacity_bytes=1 << 30, extent_mib=16, heartbeat_s=600) as (ep, proc, log):
        yield ep


@pytest.fixture(scope="module", params=["socket", "shm"])
def client(request, endpoint):
    c = PoolClient(endpoint, 0 if request.param == "socket" else 1, timeout_s=30.0,
                   use_shm=request.param == "shm", shm_bytes=8 << 20)
    c.attach(c.host_id, 64 << 20)
    yield request.param, c
    c.detach(c.host_id)
    c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_client():
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not on PATH (make bench installs the Debian package)")
    redis = pytest.importorskip("redis")
    port = _free_port()
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
        end = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > end:
                    pytest.skip("redis-server did not start")
                time.sleep(0.05)
        yield r
        r.close()
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _gbps(benchmark, nbytes):
    return nbytes / benchmark.stats.stats.mean / 1e9


def test_batched_lookup_round_trips(benchmark, client):
    mode, c = client
    keys = list(range(32))
    benchmark.pedantic(c.lookup, args=(c.host_id, keys), rounds=3000, iterations=1,
                       warmup_rounds=50)
    report(benchmark, transport=mode, round_trips_per_s=1 / benchmark.stats.stats.mean)


@pytest.mark.parametrize("size", SIZES)
def test_pool_put(benchmark, client, size):
    mode, c = client
    data = bytes(range(256)) * (SIZES[size] // 256)
    key = 10 + SIZES[size]           # one key per size: a rewrite must keep the block's size
    benchmark.pedantic(c.put, args=(c.host_id, key, data), rounds=ROUNDS[size], warmup_rounds=5)
    report(benchmark, transport=mode, size=size, gb_per_s=_gbps(benchmark, SIZES[size]))


@pytest.mark.parametrize("size", SIZES)
def test_pool_get(benchmark, client, size):
    mode, c = client
    data = bytes(range(256)) * (SIZES[size] // 256)
    key = 20 + SIZES[size]
    c.put(c.host_id, key, data)
    out = benchmark.pedantic(c.get, args=(c.host_id, key), rounds=ROUNDS[size], warmup_rounds=5)
    assert out == data
    report(benchmark, transport=mode, size=size, gb_per_s=_gbps(benchmark, SIZES[size]))


@pytest.mark.parametrize("size", SIZES)
def test_redis_set(benchmark, redis_client, size):
    data = bytes(range(256)) * (SIZES[size] // 256)
    benchmark.pedantic(redis_client.set, args=("k1", data), rounds=ROUNDS[size], warmup_rounds=5)
    report(benchmark, transport="redis", size=size, gb_per_s=_gbps(benchmark, SIZES[size]))


@pytest.mark.parametrize("size", SIZES)
def test_redis_get(benchmark, redis_client, size):
    data = bytes(range(256)) * (SIZES[size] // 256)
    redis_client.set("k2", data)
    out = benchmark.pedantic(redis_client.get, args=("k2",), rounds=ROUNDS[size], warmup_rounds=5)
    assert out == data
    report(benchmark, transport="redis", size=size, gb_per_s=_gbps(benchmark, SIZES[size]))


def test_redis_ping_round_trips(benchmark, redis_client):
    benchmark.pedantic(redis_client.exists, args=("k1",), rounds=3000, warmup_rounds=50)
    report(benchmark, transport="redis", round_trips_per_s=1 / benchmark.stats.stats.mean)


BATCH = 32      # 32 x 64 KiB = 2 MiB per round trip: one decode step's blocks in one request


def test_pool_put_batch_64k(benchmark, client):
    mode, c = client
    items = [(1000 + i, bytes([i]) * (64 << 10)) for i in range(BATCH)]
    benchmark.pedantic(c.put_many, args=(c.host_id, items), rounds=150, warmup_rounds=5)
    report(benchmark, transport=mode, size=f"{BATCH}x64KiB", gb_per_s=_gbps(benchmark, BATCH << 16))


def test_pool_get_batch_64k(benchmark, client):
    mode, c = client
    items = [(2000 + i, bytes([i]) * (64 << 10)) for i in range(BATCH)]
    c.put_many(c.host_id, items)
    keys = [k for k, _ in items]
    out = benchmark.pedantic(c.get_many, args=(c.host_id, keys), rounds=150, warmup_rounds=5)
    assert out == [d for _, d in items]
    report(benchmark, transport=mode, size=f"{BATCH}x64KiB", gb_per_s=_gbps(benchmark, BATCH << 16))


def test_redis_mset_batch_64k(benchmark, redis_client):
    items = {f"b{i}": bytes([i]) * (64 << 10) for i in range(BATCH)}
    benchmark.pedantic(redis_client.mset, args=(items,), rounds=150, warmup_rounds=5)
    report(benchmark, transport="redis", size=f"{BATCH}x64KiB", gb_per_s=_gbps(benchmark, BATCH << 16))


def test_redis_mget_batch_64k(benchmark, redis_client):
    items = {f"c{i}": bytes([i]) * (64 << 10) for i in range(BATCH)}
    redis_client.mset(items)
    out = benchmark.pedantic(redis_client.mget, args=(list(items),), rounds=150, warmup_rounds=5)
    assert out == list(items.values())
    report(benchmark, transport="redis", size=f"{BATCH}x64KiB", gb_per_s=_gbps(benchmark, BATCH << 16))
