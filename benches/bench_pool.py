"""Pool server benchmarks: batched small-command round trips, and put/get throughput of 64 KiB and
2 MiB blocks over ZeroMQ, over the local stream (a Unix socket) and over the shared-memory path
(requests through the mailbox in the host's window; puts of blocks copied in, or written in place),
side by side with redis-py SET/GET on a redis-server this benchmark starts itself on a free
loopback port (skipped if absent); and a 4-process replay against the same replay in one process.
Figures: docs/performance.md."""
import json
import shutil
import statistics
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pool_support import pool_server  # noqa: E402

from cxlsim.pool.client import PoolClient  # noqa: E402
from cxlsim.pool.stream import CLIENT_SPIN_US  # noqa: E402

from conftest import report  # noqa: E402

SIZES = {"64KiB": 64 << 10, "2MiB": 2 << 20}
ROUNDS = {"64KiB": 2000, "2MiB": 150}


@pytest.fixture(scope="module")
def endpoint():
    with pool_server(capacity_bytes=1 << 30, extent_mib=16, heartbeat_s=600) as (ep, proc, log):
        yield ep


# shm: requests through the mailbox in the host's shared-memory window, bytes through the window
TRANSPORTS = ["zeromq", "stream", "shm"]


@pytest.fixture(scope="module", params=TRANSPORTS)
def client(request, endpoint):
    mode = request.param
    c = PoolClient(endpoint, TRANSPORTS.index(mode), timeout_s=30.0, use_shm=mode == "shm",
                   use_stream=mode != "zeromq", shm_bytes=8 << 20)
    c.attach(c.host_id, 64 << 20)
    assert c.transport == {"zeromq": "zeromq", "stream": "stream", "shm": "mailbox"}[mode]
    yield mode, c
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


REPO = Path(__file__).resolve().parents[1]
PAIRS = 9          # replay pairs: single pairs range over 1.6x-3.3x here, so the median needs many
REPLAY_ARGS = ["--hosts", "4", "--topology", "kv-pool-4host", "--cxl-gib", "64", "--no-plots",
               "--no-progress", "--json"]


def _replay_in_process(trace, out):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cxlsim", "replay", str(trace), *REPLAY_ARGS,
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - start, json.loads(done.stdout)


def _replay_four_processes(trace, out):
    """Server start-up excluded (a pool outlives replays); host processes' start-up included."""
    with pool_server(capacity_bytes=64 << 30, extent_mib=1) as (ep, proc, log):
        start = time.perf_counter()
        hosts = [subprocess.Popen([sys.executable, "-m", "cxlsim", "replay", str(trace),
                                   *REPLAY_ARGS, "--out", str(out / f"h{h}"), "--pool", ep,
                                   "--host-id", str(h)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=REPO)
                 for h in range(4)]
        outs = [p.communicate(timeout=600) for p in hosts]
        wall = time.perf_counter() - start
    for p, (_, err) in zip(hosts, outs):
        assert p.returncode == 0, err
    return wall, [json.loads(o) for o, _ in outs]


def test_four_process_replay_vs_in_process(benchmark, tmp_path):
    """Goal: a replay with 4 host processes and a pool server costs at most 2x the same replay
    with 4 hosts in one process (both whole `cxlsim replay` commands, start-up included)."""
    trace = REPO / "traces" / "synth_medium.jsonl"
    ratios, walls = [], []
    for i in range(PAIRS):    # alternate the two: the machine is shared and drifts
        solo, summary = _replay_in_process(trace, tmp_path / f"in{i}")
        multi, summaries = _replay_four_processes(trace, tmp_path / f"mp{i}")
        assert len({s["pool"]["barriers"] for s in summaries}) == 1   # one count for all hosts
        ratios.append(multi / solo)
        walls.append((solo, multi))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    report(benchmark, barriers_in_process=summary["pool"]["barriers"],
           barriers_host_processes=summaries[0]["pool"]["barriers"],
           in_process_s=statistics.median(w[0] for w in walls),
           four_processes_s=statistics.median(w[1] for w in walls),
           ratio_median=statistics.median(ratios), ratio_min=min(ratios),
           ratio_max=max(ratios), goal_ratio=2.0)


def _per_op_s(fn, n):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


@pytest.fixture(scope="module")
def sleeping_endpoint():
    """A server that sleeps whenever it waits (no polling: stream.py, Waiting), as Redis does."""
    with pool_server("--spin-us", "0", capacity_bytes=1 << 30, extent_mib=16,
                     heartbeat_s=600) as (ep, proc, log):
        yield ep


@pytest.mark.parametrize("mode", ["stream", "shm", "stream-sleeping"])
def test_pool_vs_redis_alternating(benchmark, request, redis_client, mode):
    """Ratios against Redis the way the goals state them (>= 1x over sockets, >= 5x with shared
    memory): each operation measured in alternating blocks, pool then Redis, and the median of
    the per-pair ratios quoted, so drift on a shared machine hits both sides alike.
    stream-sleeping: server and client sleep while they wait, as Redis and redis-py do, which
    shows what the bounded polling of the default buys."""
    sleeping = mode == "stream-sleeping"
    endpoint = request.getfixturevalue("sleeping_endpoint" if sleeping else "endpoint")
    c = PoolClient(endpoint, 10 + (mode == "shm"), timeout_s=30.0, use_shm=mode == "shm",
                   shm_bytes=8 << 20, spin_us=0 if sleeping else CLIENT_SPIN_US)
    c.attach(c.host_id, 64 << 20)
    try:
        blobs = {size: bytes(range(256)) * (n // 256) for size, n in SIZES.items()}
        for size, data in blobs.items():
            c.put(c.host_id, 500 + len(data), data)
            redis_client.set(f"g{size}", data)
        keys = list(range(32))
        in_place = {}      # shm: a block the host wrote straight into its window (block_buffers)

        def write_in_place(size):    # before that case's rounds: other cases reuse the window
            (in_place[size],) = c.block_buffers([len(blobs[size])])
            in_place[size][:] = blobs[size]
        cases = {   # what: (pool operation, Redis operation, operations per block)
            "round_trip": (lambda: c.lookup(c.host_id, keys), lambda: redis_client.exists("k1"), 400),
            **{f"put_{size}": (lambda d=d: c.put(c.host_id, 400 + len(d), d),
                               lambda d=d, s=size: redis_client.set(f"p{s}", d), ROUNDS[size] // 10)
               for size, d in blobs.items()},
            **{f"get_{size}": (lambda d=d: c.get(c.host_id, 500 + len(d)),
                               lambda s=size: redis_client.get(f"g{s}"), ROUNDS[size] // 10)
               for size, d in blobs.items()},
            # the same SET against a put of a block already in the window: no copy on the host
            **{f"put_{size}_in_place": (lambda s=size: c.put(c.host_id, 300 + len(blobs[s]),
                                                             in_place[s]),
                                        lambda d=d, s=size: redis_client.set(f"p{s}", d),
                                        ROUNDS[size] // 10)
               for size, d in blobs.items() if mode == "shm"},
        }
        figures = {}
        for what, (ours, theirs, n) in cases.items():
            if what.endswith("_in_place"):
                write_in_place(what[len("put_"):-len("_in_place")])
            ratios = []
            for _ in range(5):
                ratios.append(_per_op_s(theirs, n) / _per_op_s(ours, n))
            figures[f"{what}_x_redis"] = statistics.median(ratios)
        for size, data in blobs.items():      # what was put is what is stored
            assert c.get(c.host_id, 400 + len(data)) == data
            if mode == "shm":
                assert c.get(c.host_id, 300 + len(data)) == data
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        report(benchmark, transport=mode, **figures)
    finally:
        c.detach(c.host_id)
        c.close()
