"""Pool server and client over real loopback sockets: same answers as LocalPool, isolation,
malformed frames, CURVE, non-loopback refusal, server restart, early wake-up of parked hosts,
and when the server polls instead of sleeping."""
import io
import math
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import msgpack
import numpy as np
import pytest
import zmq

from cxlsim.errors import PoolError
from cxlsim.pool import protocol as P
from cxlsim.pool.api import LazyDelta, PoolDelta, PoolOp
from cxlsim.pool.client import PoolClient
from cxlsim.pool.local import LocalPool
from cxlsim.pool.server import PoolServer, _Conn
from pool_support import detach_and_close, pool_server, stop

MIB = 1 << 20


@pytest.fixture(scope="module")
def server():
    with pool_server(capacity_bytes=64 * MIB, extent_mib=1) as (endpoint, proc, log):
        yield endpoint


@pytest.fixture
def clients(server):
    opened = []

    def make(host, **kw):
        c = PoolClient(server, host, timeout_s=5.0, **kw)
        opened.append(c)
        return c
    yield make
    detach_and_close(opened)


def raw_socket(endpoint):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvtimeo = 5000
    s.sndtimeo = 5000
    s.connect(endpoint)
    return s


def rpc(sock, frames):
    sock.send_multipart(frames)
    return msgpack.unpackb(sock.recv_multipart()[0], raw=False)


SCRIPT = [  # (host, method, args) applied in order to both implementations
    ("attach", 0, (3 * MIB,)), ("attach", 1, (MIB,)),
    ("put", 0, (1, b"a" * 1000)), ("put", 0, (2, b"b" * 5000, True)),
    ("put", 1, (1, b"x")),                     # refused: host 0's private key
    ("get", 1, (2,)), ("lookup", 1, ([2, 1],)), ("lookup", 0, ([1, 2, 3],)),
    ("put", 1, (3, bytes(2 * MIB))), ("put", 1, (4, b"z")),   # quota exceeded
    ("pin", 1, ([2],)), ("free", 0, (2,)), ("get", 1, (2,)),
    ("unpin", 1, ([2],)), ("free", 1, (2,)), ("get", 1, (2,)),
    ("share", 0, (1,)), ("get", 1, (1,)), ("resize", 1, (0,)), ("resize", 1, (4 * MIB,)),
    ("alloc", 0, (7, 300)), ("get", 0, (7,)), ("free", 1, (3,)), ("resize", 1, (0,)),
    ("unpin", 0, ([1],)), ("detach", 1, ()),
]


def run_script(call):
    out = []
    for method, host, args in SCRIPT:
        try:
            out.append(("ok", call(host, method, args)))
        except PoolError as exc:
            out.append(("error", str(exc)))
    return out


def test_client_gives_the_same_answers_as_local_pool(server, clients):
    local = LocalPool(64 * MIB, extent_bytes=MIB)
    expected = run_script(lambda h, m, a: getattr(local, m)(h, *a))
    remote = {0: clients(0), 1: clients(1, use_shm=False)}
    got = run_script(lambda h, m, a: getattr(remote[h], m)(h, *a))
    assert [g[0] for g in got] == [e[0] for e in expected]
    for (kind, g), (_, e) in zip(got, expected):
        if kind == "ok":
            assert g == e
        else:
            assert e in g             # the client names the server, then the pool's reason
    assert any(kind == "error" for kind, _ in expected)
    s_local, s_remote = local.stats(), remote[0].stats()
    assert s_local == s_remote
    remote[0].detach(0)


@pytest.mark.parametrize("use_shm", [True, False])
def test_data_is_bit_exact_over_both_paths(clients, use_shm):
    c = clients(0, use_shm=use_shm, shm_bytes=4 * MIB)
    c.attach(0, 16 * MIB)
    assert (c.window is not None) == use_shm
    rng = np.random.default_rng(7)
    kv = rng.standard_normal((2, 16, 128)).astype(np.float16)          # 8 KiB
    big = rng.integers(0, 255, 6 * MIB, dtype=np.uint8)                 # larger than the window
    blobs = [rng.bytes(64 << 10) for _ in range(40)]                    # 2.5 MiB: two windows
    c.put(0, 1, kv)
    c.put(0, 2, big, shared=True)
    c.put_many(0, [(10 + i, b) for i, b in enumerate(blobs)])
    assert np.array_equal(np.frombuffer(c.get(0, 1), np.float16).reshape(kv.shape), kv)
    assert c.get(0, 2) == big.tobytes()
    assert c.get_many(0, [10 + i for i in range(40)]) == blobs


def test_isolation_between_hosts(clients):
    a, b = clients(0), clients(1)
    a.attach(0, MIB)
    b.attach(1, MIB)
    a.put(0, 5, b"mine")
    for call in (lambda: b.get(1, 5), lambda: b.free(1, 5), lambda: b.pin(1, [5]),
                 lambda: b.share(1, 5)):
        with pytest.raises(PoolError, match="not readable by host 1"):
            call()
    with pytest.raises(PoolError, match="this client is host 1"):
        b.get(0, 5)                                     # cannot speak for another host
    assert a.get(0, 5) == b"mine" and b.lookup(1, [5]) == 0
    a.share(0, 5)
    assert b.get(1, 5) == b"mine"


def test_unattached_connection_is_refused_and_host_ids_unique(server, clients):
    a = clients(0)
    a.attach(0, 0)
    s = raw_socket(server)
    try:
        rep = rpc(s, [P.encode_request(1, "get", {"keys": [1], "shm": False})])
        assert rep["ok"] is False and rep["error"]["code"] == P.E_ATTACH
        rep = rpc(s, [P.encode_request(9, "stats", {})])    # read-only: no attach needed
        assert rep["ok"] is True and list(rep["result"]["hosts"]) == ["0"]
        rep = rpc(s, [P.encode_request(2, "attach", {"host": 0, "quota": 0, "tag": None})])
        assert rep["error"]["code"] == P.E_REFUSED and "already attached" in rep["error"]["message"]
        # windows come only with a stream's hello (a descriptor), never by name
        rep = rpc(s, [P.encode_request(3, "attach", {"host": 1, "quota": 0,
                                                     "shm": "../../etc/passwd"})])
        assert rep["error"]["code"] == P.E_ARGS and "unknown fields ['shm']" in \
            rep["error"]["message"]
    finally:
        s.close(0)


@pytest.mark.parametrize("frames, code", [
    ([b"\xc1\xc1"], P.E_FRAME),                                      # not msgpack
    ([msgpack.packb([1, 2, 3])], P.E_FRAME),                         # not a map
    ([msgpack.packb({"v": 99, "id": 1, "cmd": "stats", "args": {}})], P.E_VERSION),
    ([msgpack.packb({"v": P.VERSION, "id": 1, "cmd": "format_disk", "args": {}})], P.E_COMMAND),
    ([msgpack.packb({"v": P.VERSION, "id": 1, "cmd": "lookup", "args": {"keys": ["1"]}})], P.E_ARGS),
    ([msgpack.packb({"v": P.VERSION, "id": 1, "cmd": "lookup", "args": {"keys": [-1]}})], P.E_ARGS),
    ([msgpack.packb({"v": P.VERSION, "id": 1, "cmd": "put",
                     "args": {"keys": [1], "shared": False, "shm": None}})], P.E_ARGS),
    ([msgpack.packb({"v": P.VERSION, "id": 1, "cmd": "stats", "args": {}}), b"x" * (64 * MIB + 1)],
     P.E_FRAME),                                                     # oversized frame
])
def test_malformed_frames_get_error_replies(server, frames, code):
    s = raw_socket(server)
    try:
        rep = rpc(s, frames)
        assert rep["ok"] is False and rep["error"]["code"] == code, rep
        assert rep["error"]["message"]
        # and the server still serves this very socket
        assert rpc(s, [P.encode_request(9, "sync", {})])["ok"] is True
    finally:
        s.close(0)


def test_exchange_through_server_matches_local_pool_exactly():
    from concurrent.futures import ThreadPoolExecutor

    def quantum_ops(q):
        # 3 hosts put 64 KiB shared blocks into a 2 MiB pool: evictions, dedupe, rejects
        return {h: [PoolOp(float(10 * i + h + q), h, i, "put", (100 * h + i + 7 * q) % 250,
                           64 * 1024, True) for i in range(12)]
                + [PoolOp(300.0, h, 50, "touch", 100 * ((h + 1) % 3), 0, True),
                   PoolOp(301.0, h, 51, "free", 100 * h + 1, 0, True),
                   PoolOp(float(5 + h + q), h, 52, "move", h % 2, 1000 * (h + 1), h != 1)]
                for h in range(3)}
    local = LocalPool(2 * MIB, extent_bytes=MIB)
    for h in range(3):
        local.attach(h, 0)
    want = [local.exchange_all(q, quantum_ops(q)) for q in range(4)]
    assert any(d.removed for d in want) and any(d.rejected for d in want)
    assert all(len(d.traffic) == 3 for d in want)          # every host's move, to every host
    with pool_server(capacity_bytes=2 * MIB) as (ep, proc, log):
        cs = [PoolClient(ep, h, timeout_s=5.0) for h in range(3)]
        try:
            for h, c in enumerate(cs):
                c.attach(h, 0)
            with ThreadPoolExecutor(3) as ex:
                for q in range(4):
                    ops = quantum_ops(q)
                    got = list(ex.map(lambda h: cs[h].exchange(h, q, ops[h]), range(3)))
                    assert got[0] == got[1] == got[2] == want[q]
            assert cs[0].stats() == local.stats()
        finally:
            for c in cs:
                c.close()


def test_a_parked_host_hears_its_release_is_coming(server):
    """Host 0 is parked (its next event is later); when host 1's hand-in completes the barrier
    that releases host 0, the server first sends host 0 a `soon` notice with the release's
    schedule (so it can run while the ops are applied), then the release itself."""
    a, b = raw_socket(server), raw_socket(server)
    try:
        for h, s in ((0, a), (1, b)):
            attach = P.encode_request(1, "attach", {"host": h, "quota": 0, "tag": None})
            assert rpc(s, [attach])["ok"]
        none = [[], [], [], [], [], []]
        a.send_multipart([P.encode_request(2, "exchange", {"quantum": 0, "ops": none,
                                                           "next_ns": 5e6})])
        first = rpc(b, [P.encode_request(2, "exchange", {"quantum": 0, "ops": none,
                                                         "next_ns": 1e3})])
        assert first["id"] == 2 and first["result"]["run_until_ns"] == 1e6   # host 1 runs alone
        assert a.poll(200) == 0                                              # host 0 is parked
        put = [[500.0], [0], ["put"], [42], [4096], [True]]
        b.send_multipart([P.encode_request(3, "exchange", {"quantum": 1, "ops": put,
                                                           "next_ns": None})])
        notice = msgpack.unpackb(a.recv_multipart()[0], raw=False)
        assert P.is_soon_notice(notice, 0)
        release = msgpack.unpackb(a.recv_multipart()[0], raw=False)
        assert release["id"] == 2 and release["result"]["added"] == [42]
        assert release["result"]["run_until_ns"] == 6e6
        promised = P.notice_release(notice)          # (barrier, run_until_ns, horizon_ns)
        assert promised == (release["result"]["quantum"], 6e6, float("inf"))
    finally:
        a.close(0)
        b.close(0)


def _park_then_release(ep, **client_kw):
    """Hosts 0 and 1 on server `ep`: host 0 hands in barrier 0 with its next event at 5 ms
    (in a thread, through exchange_lazy) and stays parked while host 1 runs barrier 0 alone;
    host 1's hand-in of barrier 1, with a put, releases both. (host 0's client, its
    exchange_lazy result, host 1's delta)"""
    from concurrent.futures import ThreadPoolExecutor
    put = [PoolOp(500.0, 1, 0, "put", 42, 4096, True)]
    a, b = (PoolClient(ep, h, timeout_s=5.0, **client_kw) for h in (0, 1))
    try:
        a.attach(0, 0)
        b.attach(1, 0)
        with ThreadPoolExecutor(1) as ex:
            parked = ex.submit(a.exchange_lazy, 0, 0, [], 5e6)
            time.sleep(0.2)                                      # (its hand-in is in)
            alone = b.exchange(1, 0, [], 1e3)
            assert alone.run_until_ns == 1e6 and not parked.done()   # host 1 runs alone
            full = b.exchange(1, 1, put, 5.5e6)
            got = parked.result(timeout=5)
    finally:
        b.close()
    return a, got, full


def test_a_parked_host_runs_on_its_release_before_the_delta_comes():
    """exchange_lazy of a parked host returns on the `soon` notice: a LazyDelta with the
    release's schedule, whose pool changes come after. The client's next request receives them
    first, and result() is then the delta the host that completed the barrier got."""
    with pool_server(capacity_bytes=MIB) as (ep, proc, log):
        # one stream (no mailbox): the notice and the reply arrive in the order sent
        a, lazy, full = _park_then_release(ep, use_shm=False, keepalive=False)
        try:
            assert isinstance(lazy, LazyDelta) and not lazy.arrived
            assert (lazy.quantum, lazy.run_until_ns, lazy.horizon_ns) == (1, 6e6, 5.5e6)
            assert (full.quantum, full.run_until_ns, full.horizon_ns) == (1, 6e6, 5e6)
            assert a.stats()["quantum"] == 2
            assert lazy.arrived                      # received before the stats request went
            assert lazy.result().added == full.added == (42,)
            assert lazy.result()._replace(horizon_ns=0, horizon_host=0) == full._replace(horizon_ns=0, horizon_host=0)
        finally:
            a.close()


def test_a_lazy_release_through_the_mailbox_and_the_keep_alive_thread():
    """Through the mailbox (the release's reply there, the notice on the stream beside it),
    with the keep-alive thread the one to receive the delta while the host computes; the
    result is the delta either way. (Here the reply may win the race with the notice, and
    exchange_lazy then returns the whole delta at once.)"""
    with pool_server(capacity_bytes=MIB, heartbeat_s=0.3) as (ep, proc, log):
        a, got, full = _park_then_release(ep, shm_bytes=1 << 20)
        try:
            assert a.transport == "mailbox"
            time.sleep(0.5)                          # a heartbeat is due: the delta first
            assert isinstance(got, PoolDelta) or got.arrived
            delta = got if isinstance(got, PoolDelta) else got.result()
            assert delta._replace(horizon_ns=0, horizon_host=0) == full._replace(horizon_ns=0, horizon_host=0)
            assert delta.horizon_ns == 5.5e6 and a.stats()["quantum"] == 2
        finally:
            a.close()


def test_the_host_that_hands_in_wakes_the_host_it_releases(tmp_path):
    """Host 1's hand-in releases parked host 0, the host holding host 1's horizon: host 1
    rings host 0's wake socket as it hands in, so host 0 polls for its release instead of
    waking for the notice later. A ring changes nothing else, and a stray one is harmless."""
    with pool_server(capacity_bytes=MIB) as (ep, proc, log):
        a, got, full = _park_then_release(ep, use_shm=False, keepalive=False)
        try:
            assert a.woken_by_peers == 1
            wake = os.path.join(os.path.dirname(a.server_info["stream"]), "wake-0")
            assert os.path.exists(wake)
            delta = got.result() if isinstance(got, LazyDelta) else got
            assert delta.added == full.added == (42,) and full.horizon_host == 0
            stray = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            stray.sendto(b"?", wake)                  # a ring out of turn: only a stale ring
            stray.close()
            assert a.stats()["quantum"] == 2
        finally:
            a.close()
        assert not os.path.exists(wake)               # the client removes its socket


def test_an_error_receiving_a_lazy_delta_reaches_result_whoever_received_it(monkeypatch):
    """A failure while receiving the delta (here: every delta contradicts its notice), also in
    the keep-alive thread, which receives it when a heartbeat falls due, is what result()
    raises, not a delta said never to have come."""
    def contradicts(self, delta):
        raise PoolError("the pool released this host with one schedule and then sent another")
    monkeypatch.setattr(LazyDelta, "deliver", contradicts)
    with pool_server(capacity_bytes=MIB, heartbeat_s=0.3) as (ep, proc, log):
        a, lazy, full = _park_then_release(ep, use_shm=False)
        try:
            assert isinstance(lazy, LazyDelta)
            time.sleep(0.5)                          # the keep-alive thread receives the delta
            with pytest.raises(PoolError, match="released this host with one schedule"):
                lazy.result()
        finally:
            a.close()


def test_server_restart_gives_a_clear_error(tmp_path):
    port_ep = None
    with pool_server() as (endpoint, proc, log):
        c = PoolClient(endpoint, 0, timeout_s=1.0)
        try:
            c.attach(0, 0)
            c.put(0, 1, b"x", shared=True)
            stop(proc)
            # over the local stream the client sees the socket close at once; over ZeroMQ the
            # request times out: either way the message says what happened
            with pytest.raises(PoolError, match="restarted(, is| or) (down|unreachable)"):
                c.get(0, 1)
            port_ep = endpoint
            with pool_server(bind=port_ep) as (endpoint2, proc2, log2):
                with pytest.raises(PoolError, match="not attached.*restarted"):
                    c.get(0, 1)
                c.attach(0, 0)                  # and it can start over
                assert c.lookup(0, [1]) == 0
        finally:
            c.close()


def test_non_loopback_bind_is_refused_without_keys():
    out = subprocess.run([sys.executable, "-m", "cxlsim", "pool", "serve", "--bind",
                          "tcp://0.0.0.0:1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "refusing to bind tcp://0.0.0.0:1" in out.stderr


def test_curve_client_without_key_is_not_served(tmp_path):
    subprocess.run([sys.executable, "-m", "cxlsim", "pool", "keygen", str(tmp_path)], check=True,
                   capture_output=True, timeout=30)
    public = (tmp_path / "pool.public").read_bytes().strip()
    assert oct(os.stat(tmp_path / "pool.secret").st_mode & 0o777) == "0o600"
    with pool_server("--curve-secret-key", str(tmp_path / "pool.secret")) as (ep, proc, log):
        with pytest.raises(PoolError, match="no reply.*needs CurveZMQ keys: give server_public"):
            PoolClient(ep, 0, timeout_s=1.0)                    # plain: handshake never completes
        other_public, _ = zmq.curve_keypair()
        with pytest.raises(PoolError, match="wrong server public key"):
            PoolClient(ep, 0, timeout_s=1.0, server_public_key=other_public)
        with PoolClient(ep, 0, timeout_s=5.0, server_public_key=public) as c:
            c.attach(0, 0)
            c.put(0, 1, b"secret", shared=True)
            assert c.get(0, 1) == b"secret"
    # a second keygen would lock those hosts out: refused unless --force
    again = subprocess.run([sys.executable, "-m", "cxlsim", "pool", "keygen", str(tmp_path)],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "pool.public").read_bytes().strip() == public
    os.chmod(tmp_path / "pool.secret", 0o644)       # --force writes fresh files, mode 0600
    subprocess.run([sys.executable, "-m", "cxlsim", "pool", "keygen", str(tmp_path), "--force"],
                   check=True, capture_output=True, timeout=30)
    assert (tmp_path / "pool.public").read_bytes().strip() != public
    assert oct(os.stat(tmp_path / "pool.secret").st_mode & 0o777) == "0o600"


def test_a_secret_key_that_is_not_the_pairs_secret_is_named(tmp_path):
    """The server's key is checked against the public key keygen wrote beside it: a public key
    (or another pair's secret) would start a server no host can reach, saying nothing."""
    for d in ("a", "b"):
        subprocess.run([sys.executable, "-m", "cxlsim", "pool", "keygen", str(tmp_path / d)],
                       check=True, capture_output=True, timeout=30)
    (tmp_path / "a" / "other.secret").write_bytes((tmp_path / "b" / "pool.secret").read_bytes())
    (tmp_path / "bad.secret").write_text("~" * 40 + "\n")
    (tmp_path / "over.secret").write_text("#" * 40 + "\n")      # z85 characters, too large
    for key, says in ((tmp_path / "a" / "pool.public", "holds the public key of"),
                      (tmp_path / "a" / "other.secret", "is not the secret key of"),
                      (tmp_path / "bad.secret", "not a CURVE key (not z85"),
                      (tmp_path / "over.secret", "not a CURVE key")):
        out = subprocess.run([sys.executable, "-m", "cxlsim", "pool", "serve", "--bind",
                              "tcp://127.0.0.1:*", "--curve-secret-key", str(key)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, \
            out.stderr


def test_local_stream_carries_requests_and_large_blocks(clients):
    fast, plain = clients(20, use_shm=False), clients(21, use_shm=False, use_stream=False)
    fast.attach(20, 8 * MIB)
    plain.attach(21, 8 * MIB)
    assert (fast.transport, plain.transport) == ("stream", "zeromq")
    block = np.random.default_rng(3).integers(0, 255, 3 * MIB, dtype=np.uint8)
    fast.put(20, 7001, block, shared=True)          # one 3 MiB frame over the stream
    fast.put_many(20, [(7002 + i, bytes([i]) * 70_000) for i in range(40)])
    assert fast.get(20, 7001) == block.tobytes() == plain.get(21, 7001)
    assert fast.get_many(20, [7002 + i for i in range(40)]) == \
        [bytes([i]) * 70_000 for i in range(40)]
    # only this user can even reach the socket: its directory is closed to everyone else
    assert os.stat(os.path.dirname(fast.server_info["stream"])).st_mode & 0o077 == 0


def test_bad_streams_are_closed_and_the_server_keeps_serving(clients):
    import socket
    import struct

    from cxlsim.pool.stream import send_message
    good = clients(22, use_shm=False)
    good.attach(22, 0)
    path = good.server_info["stream"]
    attempts = [
        lambda s: send_message(s, [P.encode_stream_hello("not-the-token")], 5.0),
        lambda s: send_message(s, [b"\x93not a hello"], 5.0),
        lambda s: s.sendall(struct.pack("<I", 0) + b"garbage"),            # zero frames
        lambda s: s.sendall(struct.pack("<II", 1, 1 << 31)),               # frame too large
        # before any hello: announces 65,537 frames of 64 MiB (used to be allocated at once)
        lambda s: s.sendall(struct.pack("<I", 65537) + struct.pack("<I", 64 << 20) * 65537),
        lambda s: s.sendall(struct.pack("<II", 1, 200)),                   # then silence
    ]
    for attempt in attempts:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(10)
        raw.connect(path)
        try:
            attempt(raw)
            assert raw.recv(100) == b""             # the server hung up on it (at most 2 s on)
        except (BrokenPipeError, ConnectionResetError):
            pass                                    # it hung up while we were still writing
        raw.close()
    assert good.transport == "stream" and good.lookup(22, [1, 2]) == 0


def test_many_frames_and_replies_follow_the_request(clients):
    c = clients(23, use_shm=False)
    c.attach(23, 8 * MIB)
    assert c.transport == "stream"
    items = [(9000 + i, bytes([i % 251]) * 100) for i in range(1100)]   # > 1024 buffers per send
    c.put_many(23, items)
    assert c.get_many(23, [k for k, _ in items]) == [d for _, d in items]
    # a request that comes over ZeroMQ is answered there, though this host has a stream
    stream, c._stream = c._stream, None
    try:
        assert c.lookup(23, [9000, 9001]) == 2 and c.stats()["hosts"]["23"]["private_blocks"] == 1100
    finally:
        c._stream = stream
    assert c.lookup(23, [1]) == 0                   # and the stream still works


def test_a_block_over_the_frame_limit_is_refused_with_a_clear_error(clients):
    c = clients(24, use_shm=False)
    c.attach(24, 0)
    limit = c.server_info["max_frame_bytes"]
    with pytest.raises(PoolError, match=f"block 5 is {limit + 1} B; this server takes blocks up "
                                        f"to {limit} B"):
        c.put(24, 5, b"x" * (limit + 1))
    assert c.transport == "stream" and c.lookup(24, [5]) == 0     # nothing sent, nothing broken


def test_server_polls_only_while_a_core_is_left_for_each_active_host(monkeypatch):
    import cxlsim.pool.server as server_module
    monkeypatch.setattr(server_module, "ACTIVE_S", 3600.0)   # "recent" whatever the machine does
    srv = PoolServer(LocalPool(MIB, extent_bytes=64 * 1024), "tcp://127.0.0.1:*", log=io.StringIO())
    try:
        srv._cores = 2
        now = time.monotonic()
        srv._conns = {b"a": _Conn(0, now), b"b": _Conn(1, now - 7200.0)}
        assert srv._should_spin()                  # host 0 active, host 1 idle for two hours
        srv._conns[b"b"].released = now            # a barrier just released host 1
        assert not srv._should_spin()              # two active hosts on two cores
        srv._waiting[1] = (7, 0, None)
        assert srv._should_spin()                  # host 1 parked in a barrier again
        srv._waiting[0] = (8, 0, None)
        assert not srv._should_spin()              # nobody runs: sleep
    finally:
        srv._conns.clear()
        srv.close()


@pytest.mark.parametrize("bind, says", [
    ("5702", "'5702' is not a pool endpoint"),
    ("udp://127.0.0.1:5702", "is not a pool endpoint"),
    ("tcp://127.0.0.1:99999", "port must be 1..65535 or *"),
    ("ipc:///nonexistent-cxlsim-dir/pool.sock", "cannot bind ipc:///nonexistent-cxlsim-dir"),
])
def test_bad_binds_are_named(bind, says):
    out = subprocess.run([sys.executable, "-m", "cxlsim", "pool", "serve", "--bind", bind],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_port_in_use_is_named(server):
    out = subprocess.run([sys.executable, "-m", "cxlsim", "pool", "serve", "--bind", server],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"cannot bind {server}" in out.stderr, out.stderr


def test_an_idle_client_stays_attached_unless_keepalive_is_off():
    """A host that computes for longer than the heartbeat timeout between requests is not taken
    for dead: the client heartbeats on its own while idle. Without that, the server detaches it
    and frees its private blocks."""
    with pool_server(heartbeat_s=1.0) as (ep, proc, log):
        kept = PoolClient(ep, 0, timeout_s=5.0, use_shm=False)
        bare = PoolClient(ep, 1, timeout_s=5.0, use_shm=False, keepalive=False)
        try:
            for h, c in ((0, kept), (1, bare)):
                c.attach(h, 1 << 20)
                c.put(h, 10 + h, b"private", shared=False)
            time.sleep(3.0)                      # three heartbeat timeouts without a request
            assert kept.get(0, 10) == b"private"
            with pytest.raises(PoolError, match="detached this host after a heartbeat timeout"):
                bare.get(1, 11)                  # its stream was closed when it was detached
        finally:
            kept.close()
            bare.close()


def test_hosts_of_one_job_must_share_its_tag(clients):
    a, b, c, d = clients(30), clients(31), clients(32), clients(33)
    c.attach(32, 0)                                   # no tag: no job may join meanwhile
    with pytest.raises(PoolError, match="host 30: hosts without a tag are attached \\(\\[32\\]\\)"):
        a.attach(30, 0, tag="replay-1")
    c.detach(32)
    a.attach(30, 0, tag="replay-1")
    with pytest.raises(PoolError, match="host 31: its job's tag replay-2 differs from the tag "
                                        "of the hosts attached \\(host 30: replay-1\\)"):
        b.attach(31, 0, tag="replay-2")
    assert "31" not in a.stats()["hosts"]             # refused before it joined the pool
    with pytest.raises(PoolError, match="host 33: attaches without a tag while the hosts of a "
                                        "job are attached"):
        d.attach(33, 0)                               # it would hold up the job's barriers
    b.attach(31, 0, tag="replay-1")
    a.detach(30)
    b.detach(31)
    d.attach(33, 0, tag="replay-2")                   # the hosts of the first job have left
    with pytest.raises(PoolError, match="expected a string of 1..64 characters"):
        a.attach(30, 0, tag="x" * 65)


def test_a_reply_with_the_wrong_number_of_items_is_a_clear_error(monkeypatch):
    """A server answering a batch with fewer entries than items (a bug) must not let the client
    drop the missing items' refusals, or read past the blocks it was sent."""
    import threading
    monkeypatch.setattr(PoolServer, "_cmd_free", lambda self, *a: ([None], ()))
    monkeypatch.setattr(PoolServer, "_cmd_get", lambda self, *a: ([], ()))
    srv = PoolServer(LocalPool(16 * MIB, extent_bytes=MIB), "tcp://127.0.0.1:*",
                     log=io.StringIO())
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    try:
        for shm in (False, True):
            with PoolClient(srv.endpoint, int(shm), timeout_s=5.0, use_shm=shm) as c:
                c.attach(int(shm), MIB)
                c.put_many(int(shm), [(1, b"a"), (2, b"b")])
                with pytest.raises(PoolError, match="bad reply to free: 1 entries for 2 items"):
                    c.free_many(int(shm), [1, 2])
                views = c.block_buffers([10]) if shm else []
                with pytest.raises(PoolError, match="bad reply to get: 0 entries for 1 items"):
                    c.get(int(shm), 1)
                for view in views:        # the server might have written over it: not trusted
                    with pytest.raises(PoolError, match="in no view"):
                        c.put(int(shm), 3, view)
                c.detach(int(shm))
    finally:
        srv.stop()
        thread.join(10)
        srv.close()


@pytest.mark.parametrize("use_shm", [False, True], ids=["stream", "mailbox"])
def test_hand_in_then_release_and_a_request_between_them(use_shm):
    """hand_in sends and returns; release() is its answer. A host parked by its hand-in gets the
    release the host completing the barrier brings; a request made between the two (a keep-alive
    heartbeat, stats) receives the release first and keeps it for release(). Out of order: a
    clear error."""
    put = [PoolOp(500.0, 1, 0, "put", 42, 4096, True)]
    with two_attached_hosts(use_shm) as (a, b):
        with pytest.raises(PoolError, match="without a hand-in"):
            a.release()
        a.hand_in(0, 0, [], 5e6)                  # parked: host 1 has work before it
        with pytest.raises(PoolError, match="before receiving the release"):
            a.hand_in(0, 1, [], 5e6)
        assert b.exchange(1, 0, [], 1e3).run_until_ns == 1e6
        full = b.exchange(1, 1, put, 5.5e6)       # releases host 0 too
        a.stats()                                 # receives the release first, and keeps it
        import threading
        out = []                                  # (lost, release() would wait for good)
        waiter = threading.Thread(target=lambda: out.append(a.release()), daemon=True)
        waiter.start()
        waiter.join(10)
        assert out, "release() did not return: the request before it lost the release"
        got = out[0]
        delta = got.result() if isinstance(got, LazyDelta) else got
        assert delta.added == full.added == (42,) and delta.run_until_ns == 6e6
        with pytest.raises(PoolError, match="without a hand-in"):
            a.release()


@contextmanager
def two_attached_hosts(use_shm):
    """Hosts 0 and 1 attached to a fresh server (a barrier of their own)."""
    with pool_server(capacity_bytes=MIB) as (ep, proc, log):
        a, b = (PoolClient(ep, h, timeout_s=5.0, use_shm=use_shm) for h in (0, 1))
        try:
            a.attach(0, 0)
            b.attach(1, 0)
            yield a, b
        finally:
            a.close()
            b.close()


def test_a_refused_hand_in_is_raised_by_release_even_if_a_heartbeat_received_it():
    with pool_server(capacity_bytes=MIB) as (ep, proc, log):
        a = PoolClient(ep, 0, timeout_s=5.0, keepalive=False)
        try:
            a.attach(0, 0)
            a.hand_in(0, 7, [], 5e6)                  # the pool is at barrier 0: refused
            a.heartbeat(0)                            # receives the refusal first
            with pytest.raises(PoolError, match="handed in quantum 7, the pool is at quantum 0"):
                a.release()
        finally:
            a.close()


def test_a_host_that_detaches_while_its_hand_in_waits_does_not_wait_for_the_release():
    """A host that fails while running ahead detaches at once: the others go on without it."""
    with pool_server(capacity_bytes=MIB) as (ep, proc, log):
        a, b = (PoolClient(ep, h, timeout_s=5.0) for h in (0, 1))
        try:
            a.attach(0, 0)
            b.attach(1, 0)
            a.hand_in(0, 0, [], 5e6)                  # parked: host 1 has work first
            assert b.exchange(1, 0, [], 1e3).run_until_ns == 1e6
            start = time.monotonic()
            a.detach(0)
            assert time.monotonic() - start < 2.0     # (it would wait for host 1 otherwise)
            assert b.exchange(1, 1, [], 5.5e6).run_until_ns == 6e6
        finally:
            a.close()
            b.close()


@pytest.mark.parametrize("use_shm", [False, True], ids=["stream", "mailbox"])
def test_a_hand_in_sent_ahead_completes_the_next_barrier_without_the_host(use_shm):
    """exchange_ahead: a parked host hands in the barrier after its release before that release
    comes. The server takes it when the release runs the host to the end it names, so the next
    barrier completes with no further request from that host; otherwise it answers null and
    the host hands in as usual."""
    put = [PoolOp(1.5e6, 0, 0, "put", 42, 4096, True)]
    with two_attached_hosts(use_shm) as (a, b):
        a.hand_in(0, 0, [], 1.5e6)                # parked: host 1 has work first
        assert b.exchange(1, 0, [], 1e3).run_until_ns == 1e6
        with pytest.raises(PoolError, match="without a hand-in"):
            b.hand_in_ahead(1, [], 2e6, 2e6)
        # host 0 ran its quantum (ending 2e6) ahead: its hand-in of the barrier after
        a.hand_in_ahead(0, put, 9e6, 2e6)
        # host 1's hand-in releases host 0 to 2e6, which takes host 0's hand-in ahead: that
        # completes the next barrier too, and host 1 comes back with host 0's put
        got = b.exchange(1, 1, [], 3.5e6)
        delta = got.result() if isinstance(got, LazyDelta) else got
        assert delta.added == (42,) and delta.run_until_ns == 4e6
        first = a.release()
        assert a.ahead_taken and first.run_until_ns == 2e6
        b.hand_in(1, delta.quantum + 1, [], None)     # host 1 is done: host 0 runs on
        second = a.release()
        assert second.quantum == delta.quantum + 1 and second.run_until_ns == 1e7
        # a release that runs the host elsewhere: answered null, handed in as usual
        a.hand_in(0, second.quantum + 1, [], 1.25e7)
        a.hand_in_ahead(0, [], 2e7, 1.4e7)
        third = a.release()
        assert not a.ahead_taken and third.run_until_ns == 1.3e7
        assert a.exchange(0, third.quantum + 1, [], None).run_until_ns == math.inf
        assert b.release().run_until_ns == math.inf     # (parked until nobody had work)
        assert a.stats()["used_bytes"] == 4096


@contextmanager
def server_thread(pool):
    """A PoolServer serving `pool` on a thread of this process (to slow its pool down)."""
    import threading
    srv = PoolServer(pool, "tcp://127.0.0.1:*", log=io.StringIO())
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop()
        thread.join(10)
        srv.close()


TRANSPORTS = {"stream": {"use_shm": False}, "mailbox": {"use_shm": True},
              "zeromq": {"use_shm": False, "use_stream": False}}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_hand_in_ahead_not_taken_keeps_the_delta_that_came_before_its_answer(transport):
    """The release came as a notice, its delta follows on the same channel, and then the null
    answer to the hand-in sent ahead: reading the null must keep the delta (it was dropped as
    a stale reply, and the host waited for it forever)."""
    import threading
    with server_thread(LocalPool(16 * MIB, extent_bytes=MIB)) as srv:
        a, b = (PoolClient(srv.endpoint, h, timeout_s=3.0, keepalive=False,
                           **TRANSPORTS[transport]) for h in (0, 1))
        try:
            a.attach(0, 0)
            b.attach(1, 0)
            a.hand_in(0, 0, [], 1.5e6)                # parked
            assert b.exchange(1, 0, [], 1e3).run_until_ns == 1e6
            a.hand_in_ahead(0, [], 9e6, 3e6)          # an end its release will not run it to
            b.hand_in(1, 1, [PoolOp(1.2e6, 1, 0, "put", 7, 4096, True)], 3.5e6)
            time.sleep(0.3)                           # notice, delta and null are all sent
            first = a.release()
            assert not a.ahead_taken and first.run_until_ns == 2e6
            out = []
            reader = threading.Thread(daemon=True, target=lambda: out.append(
                first.result() if isinstance(first, LazyDelta) else first))
            reader.start()
            reader.join(8)
            assert out and out[0].added == (7,), "the delta before the null answer was lost"
        finally:
            a.close()
            b.close()


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
def test_a_heartbeat_while_waiting_for_a_delta_does_not_take_the_next_release(transport):
    """After a hand-in sent ahead is taken, the host waits for the delta of the release before
    it. When that wait is long enough to send a heartbeat, the heartbeat must not first wait
    for the release of the hand-in sent ahead (it dropped the delta it was waiting for, or
    lost track of that hand-in)."""
    import threading

    class SlowPool(LocalPool):
        slow_s = 0.0

        def exchange(self, *args, **kw):
            time.sleep(self.slow_s)
            return super().exchange(*args, **kw)
    pool = SlowPool(16 * MIB, extent_bytes=MIB)
    with server_thread(pool) as srv:
        a = PoolClient(srv.endpoint, 0, timeout_s=3.0, heartbeat_s=0.05, keepalive=False,
                       **TRANSPORTS[transport])
        b = PoolClient(srv.endpoint, 1, timeout_s=10.0, keepalive=False, **TRANSPORTS[transport])
        try:
            a.attach(0, 0)
            b.attach(1, 0)
            a.hand_in(0, 0, [], 1.5e6)                # parked: host 1 has work first
            assert b.exchange(1, 0, [], 1e3).run_until_ns == 1e6
            a.hand_in_ahead(0, [], 9e6, 2e6)          # host 0 ran its quantum to 2e6 ahead
            pool.slow_s = 0.5                         # the notice comes long before the delta
            b.hand_in(1, 1, [], 3.5e6)
            first = a.release()
            assert a.ahead_taken and first.run_until_ns == 2e6

            def host_1():                              # finishes once host 0's delta is due
                time.sleep(1.5)
                pool.slow_s = 0.0
                got = b.release()
                b.hand_in(1, got.quantum + 1, [], None)
            threading.Thread(target=host_1, daemon=True).start()
            out = []
            reader = threading.Thread(daemon=True, target=lambda: out.append(
                first.result() if isinstance(first, LazyDelta) else first))
            reader.start()
            reader.join(10)
            assert out and out[0].run_until_ns == 2e6, "the delta never came"
            second = a.release()                      # the hand-in sent ahead is still known
            assert second.run_until_ns == 1e7         # (parked until host 1 was done)
        finally:
            a.close()
            b.close()


def test_a_hand_in_ahead_of_a_barrier_the_host_is_not_in_is_refused_and_changes_nothing():
    with two_attached_hosts(False) as (a, b):
        a.hand_in(0, 0, [], 1.5e6)
        assert b.exchange(1, 0, [], 1e3).run_until_ns == 1e6
        wrong = {"follows": 5, "ops": [[], [], [], [], [], []], "next_ns": 9e6, "after_ns": 2e6}
        with pytest.raises(PoolError, match="ahead of barrier 5, which is neither its last "
                                            "hand-in nor the barrier in progress"):
            b._call("exchange_ahead", wrong)
        a.hand_in_ahead(0, [], 9e6, 2e6)              # the host's own, right one is still taken
        got = b.exchange(1, 1, [], 3.5e6)
        assert got.run_until_ns == 4e6
        assert a.release().run_until_ns == 2e6 and a.ahead_taken
