"""The mailbox (requests through a host's shared-memory window) and blocks written in place:
requests and replies that fit go through the window, larger ones over the stream; a sleeping
server or client is rung, never left waiting; a host scribbling on its own mailbox gets error
replies and changes nothing; blocks written into block_buffers are stored without a copy."""
import fcntl
import io
import os
import signal
import socket
import threading
import time
import warnings

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

import cxlsim.pool.client as client_module
import cxlsim.pool.server as server_module
import cxlsim.pool.shm as shm_module
from cxlsim._core import ffi, lib
from cxlsim.errors import PoolError, PoolTimeout
from cxlsim.pool import protocol as P
from cxlsim.pool.client import PoolClient
from cxlsim.pool.local import LocalPool
from cxlsim.pool.mailbox import DATA_START, REPLY_BYTES, REQUEST_BYTES, Mailbox
from cxlsim.pool.server import PoolServer
from cxlsim.pool.shm import ShmWindow
from pool_support import detach_and_close, fuzz_changes_nothing, pool_server, raw_mail
from test_pool_fuzz import malformed

MIB = 1 << 20


@pytest.fixture(scope="module")
def server():
    with pool_server(capacity_bytes=64 * MIB, extent_mib=1, heartbeat_s=60) as (ep, proc, log):
        yield ep, proc, log


@pytest.fixture
def host(server):
    opened = []

    def make(host_id, **kw):
        # no keep-alive thread: tests that post raw requests must be the mailbox's only user
        c = PoolClient(server[0], host_id, timeout_s=5.0, use_shm=True, shm_bytes=4 * MIB,
                       keepalive=False, **kw)
        c.attach(host_id, 8 * MIB)
        opened.append(c)
        return c
    yield make
    detach_and_close(opened)


def test_a_post_and_a_sleeper_never_miss_each_other():
    window = ShmWindow.create(DATA_START + 4096)
    try:
        host, server = Mailbox(window, "host"), Mailbox(window, "server")
        assert host.post(1, b"request") is False          # the server is awake: no ring
        assert server.inbound_seq() == 1 and server.read() == b"request"
        host.sleeping(True)
        assert server.post(1, b"reply") is True           # the host sleeps: ring it
        assert host.wait(1, 0.0) and host.read() == b"reply"
        host.sleeping(False)
        server.sleeping(True)
        assert host.post(2, b"again") is True
        assert not host.wait(3, 0.001)                    # nothing numbered 3 came
        assert not host.fits(b"x" * (REQUEST_BYTES + 1)) and host.fits(b"x" * REQUEST_BYTES)
        del host, server          # their words hold the mapping: they go before the window
    finally:
        window.close()


def test_requests_travel_through_the_mailbox_and_large_ones_over_the_stream(host):
    c = host(1)
    assert c.transport == "mailbox"
    rng = np.random.default_rng(11)
    blobs = [rng.bytes(64 << 10) for _ in range(8)]
    c.put_many(1, [(100 + i, b) for i, b in enumerate(blobs)])
    assert c._mailbox.inbound_seq() == c._seq          # that reply came through the mailbox
    assert c.get_many(1, [100 + i for i in range(8)]) == blobs
    assert c._mailbox.inbound_seq() == c._seq
    # a request header larger than the request slot goes over the stream ...
    many = list(range(10**6, 10**6 + 60_000))
    assert len(P.encode_request(1, "lookup", {"keys": many})) > REQUEST_BYTES
    before = c._mailbox.inbound_seq()
    assert c.lookup(1, many) == 0
    assert c._mailbox.inbound_seq() == before
    # ... and a reply larger than the reply slot comes over the stream (an empty mailbox reply
    # says so): 40,000 one-byte blocks, whose places in the window make a long reply
    tiny = [(5000 + i, bytes([i % 256])) for i in range(40_000)]
    c.put_many(1, tiny)
    got = c.get_many(1, [k for k, _ in tiny])
    assert len(P.encode_reply(1, [[DATA_START + i, 1] for i in range(40_000)])) > REPLY_BYTES
    assert c._mailbox.inbound_seq() == c._seq and c._mailbox.read() == b""
    assert got == [d for _, d in tiny]
    assert c.transport == "mailbox" and c.lookup(1, [100, 101]) == 2


def test_errors_come_back_through_the_mailbox(host):
    c = host(2)
    c.put(2, 1, b"mine")
    with pytest.raises(PoolError, match=r"pin refused \[refused\]"):
        c.pin(2, [999])
    assert c._mailbox.inbound_seq() == c._seq
    assert c.get(2, 1) == b"mine"


def test_a_host_scribbling_on_its_mailbox_gets_errors_and_changes_nothing(host):
    c, other = host(3), host(4)
    other.put(4, 7, b"other's", shared=False)
    c.put(3, 8, b"shared", shared=True)
    before = c.stats()
    seq = c._seq + 100
    rep = raw_mail(c, seq + 1, b"\x92 not msgpack")
    assert rep["ok"] is False and rep["error"]["code"] == P.E_FRAME
    # a length word past the request slot
    raw = ffi.from_buffer(c.window.buf)
    words = ffi.cast("uint64_t *", raw)
    lib.cxl_mbox_post(words + 1, REQUEST_BYTES + 1, words, seq + 3, words + 16)
    assert c._mailbox.wait(seq + 3, 5.0)
    rep = msgpack.unpackb(c._mailbox.read(), raw=False)
    assert rep["error"]["code"] == P.E_FRAME and "out of range" in rep["error"]["message"]
    ffi.release(raw)
    # a valid put whose block lies in the mailbox, not the data area
    put = P.encode_request(seq + 4, "put", {"keys": [9], "shared": False, "shm": [[0, 16]]})
    rep = raw_mail(c, seq + 4, put)
    assert rep["error"]["code"] == P.E_REFUSED and "data area" in rep["error"]["message"]
    c._seq = seq + 10                     # the client goes on after the numbers used above
    assert c.stats() == before
    assert other.get(4, 7) == b"other's" and c.get(3, 8) == b"shared"


@settings(max_examples=30, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(st.lists(malformed(), min_size=100, max_size=100))
def _fuzz_mailbox(c, sent, messages):
    for frames in messages:
        if len(frames) != 1 or len(frames[0]) > REQUEST_BYTES:
            continue
        sent[0] += 1
        rep = raw_mail(c, sent[0] + 1000, frames[0])
        assert rep["ok"] is False, (frames, rep)


def test_fuzzed_mailbox_requests_change_nothing(host):
    def fuzz(c, sent):
        _fuzz_mailbox(c, sent)
        c._seq = sent[0] + 2000           # the client goes on after the numbers used above
    fuzz_changes_nothing(host(5), host(6), fuzz)


def test_sleeping_server_and_client_are_rung(monkeypatch):
    """Neither side ever wakes by itself here (the server sleeps an hour per poll, the client
    an hour per slice), so a lost wake-up would be a timeout."""
    monkeypatch.setattr(server_module, "POLL_MS", 3_600_000)
    monkeypatch.setattr(client_module, "WAIT_SLICE_S", 3600.0)
    srv = PoolServer(LocalPool(16 * MIB, extent_bytes=MIB), "tcp://127.0.0.1:*", spin_us=0,
                     log=io.StringIO())
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    c = PoolClient(srv.endpoint, 0, timeout_s=10.0, use_shm=True, shm_bytes=2 * MIB, spin_us=0)
    try:
        c.attach(0, MIB)
        assert c.transport == "mailbox"
        for i in range(200):
            c.put(0, i, bytes([i % 256]) * 100)
            assert c.get(0, i) == bytes([i % 256]) * 100
        assert c.lookup(0, list(range(200))) == 200
    finally:
        srv.stop()
        c.close()
        poke = zmq.Context.instance().socket(zmq.DEALER)
        poke.connect(srv.endpoint)          # any message wakes the server, which then stops
        poke.send_multipart([P.encode_request(1, "sync", {})])
        thread.join(10)
        poke.close(0)
        assert not thread.is_alive()
        srv.close()


def test_block_buffers_store_blocks_written_in_place(host):
    c = host(7)
    kv = np.random.default_rng(5).standard_normal((2, 8, 64)).astype(np.float16)
    a, b = c.block_buffers([kv.nbytes, 1000])
    np.frombuffer(a, np.float16).reshape(kv.shape)[...] = kv
    b[:] = b"z" * 1000
    c.put_many(7, [(1, a), (2, b)])
    assert np.array_equal(np.frombuffer(c.get(7, 1), np.float16).reshape(kv.shape), kv)
    assert c.get(7, 2) == b"z" * 1000
    # a view from the window beside plain bytes: laying out the bytes must not overwrite it
    (view,) = c.block_buffers([5000])
    view[:] = b"v" * 5000
    c.put_many(7, [(3, b"p" * 7000), (4, view)])
    assert c.get(7, 3) == b"p" * 7000 and c.get(7, 4) == b"v" * 5000
    with pytest.raises(PoolError, match="the window holds"):
        c.block_buffers([4 * MIB])


def test_block_buffers_need_a_window(server):
    with PoolClient(server[0], 8, timeout_s=5.0, use_shm=False) as c:
        c.attach(8, 0)
        assert c.window is None and c.transport == "stream"
        with pytest.raises(PoolError, match="needs a shared-memory window"):
            c.block_buffers([10])
        c.detach(8)
    with pytest.raises(PoolError, match=f"shm_bytes must be an integer above {DATA_START}"):
        PoolClient(server[0], 9, use_shm=True, shm_bytes=4096)
    with pytest.raises(PoolError, match="use_shm=True needs use_stream=True"):
        PoolClient(server[0], 9, use_shm=True, use_stream=False)


def test_a_window_is_sealed_so_its_host_cannot_shrink_it():
    """A host that could truncate its window would make the server die of SIGBUS the next time
    it looks at the mailbox; the window's seals refuse it."""
    window = ShmWindow.create(DATA_START + 4096)
    try:
        for size in (0, DATA_START, DATA_START + 8192):
            with pytest.raises(PermissionError):
                os.ftruncate(window.fd, size)
        assert os.fstat(window.fd).st_size == DATA_START + 4096
    finally:
        window.close()


_CREATE = ShmWindow.create


def _unsealed(size):
    fd = os.memfd_create("not-sealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    return ShmWindow(fd, size, keep_fd=True)


def _no_memfd(size):
    raise OSError("memfd_create: Function not implemented")


@pytest.mark.parametrize("make, says", [
    (_unsealed, "sealed against shrinking"),
    (lambda size: _CREATE(DATA_START), f"of {DATA_START + 1}.."),   # no room for data
    (_no_memfd, "cannot make a sealed shared-memory window"),       # refused by the host itself
])
def test_the_server_maps_only_sealed_windows_with_room(server, monkeypatch, make, says):
    monkeypatch.setattr(client_module.ShmWindow, "create", staticmethod(make))
    with PoolClient(server[0], 13, timeout_s=5.0, use_shm=True, shm_bytes=2 * MIB) as c:
        with pytest.warns(RuntimeWarning, match="no shared-memory window") as warned:
            c.attach(13, MIB)
        # refused: the local stream without a window, and the client says why
        assert c.window is None and c.transport == "stream"
        assert says in c.window_refused and says in str(warned[0].message)
        c.put(13, 77, b"still served")
        assert c.get(13, 77) == b"still served"
        c.detach(13)
    if make is not _no_memfd:
        with open(server[2]) as log:
            assert says in log.read()


def test_a_host_that_insists_on_shm_hears_why_it_has_none(server):
    """use_shm=True where no local stream can be opened (as on another machine): a warning
    that names the transport used instead, not a silent fall-back."""
    with PoolClient(server[0], 16, timeout_s=5.0, use_shm=True, use_stream=True) as c:
        c._want_stream = False           # as if the stream's path were on another machine
        with pytest.warns(RuntimeWarning, match="no local stream.*it uses zeromq"):
            c.attach(16, MIB)
        assert c.window is None and "another machine" in c.window_refused
        assert c.lookup(16, [1]) == 0
        c.detach(16)


def test_detach_unmaps_the_window(host):
    c = host(14)
    assert c.window is not None and c.window.fd is None      # handed over, descriptor closed
    c.detach(14)
    assert c.window is None and c.transport == "zeromq"


def test_puts_answered_before_their_copy_are_never_overwritten(server):
    """Through the mailbox the server answers a put before it copies the blocks out of the
    window, so the client writes its next blocks elsewhere, or waits for that copy when the
    window has no room elsewhere: here every 2 MiB block must land where the last one is still
    being copied (a window of 1.5 blocks), and each must still arrive intact."""
    block = 2 * MIB
    with PoolClient(server[0], 10, timeout_s=5.0, use_shm=True,
                    shm_bytes=DATA_START + block * 3 // 2) as c:
        c.attach(10, 40 * MIB)
        assert c.transport == "mailbox"
        blobs = [bytes([i]) * block for i in range(8)]
        for i, blob in enumerate(blobs):
            c.put(10, i, blob)
        assert c.get_many(10, range(8)) == blobs
        # the same with blocks written in place
        for i in range(8):
            (view,) = c.block_buffers([block])
            view[:] = bytes([100 + i]) * block
            c.put(10, 100 + i, view)
        assert [c.get(10, 100 + i) == bytes([100 + i]) * block for i in range(8)] == [True] * 8
        c.detach(10)


def test_a_put_answered_before_its_copy_stores_only_what_was_accepted(host):
    c = host(11)
    c.put(11, 1, b"a" * 100)
    out = c.put_many(11, [(1, b"b" * 50), (2, b"c" * 70), (1, b"d" * 100)],
                     raise_on_error=False)
    assert out[0] is not None and "holds 100 B" in out[0] and out[1:] == [None, None]
    assert c.get(11, 1) == b"d" * 100 and c.get(11, 2) == b"c" * 70
    assert c.stats()["hosts"]["11"]["private_bytes"] == 170


def test_barriers_through_the_mailbox_match_the_local_pool_and_large_deltas_take_the_stream():
    """Hand-ins through the mailbox: the releases are the in-process pool's, bit for bit; a
    release too large for the reply slot (60,000 keys added) comes over the stream instead."""
    from concurrent.futures import ThreadPoolExecutor

    from cxlsim.pool.api import PoolOp
    n = 60_000
    quanta = [{0: [], 1: [PoolOp(float(i), 1, i, "put", 10**6 + i, 1, True) for i in range(n)]},
              {0: [PoolOp(5.0, 0, 0, "touch", 10**6 + 3, 0, True)],
               1: [PoolOp(6.0, 1, 0, "free", 10**6 + 4, 0, True)]}]
    local = LocalPool(MIB, extent_bytes=MIB)
    for h in range(2):
        local.attach(h, 0)
    want = [local.exchange_all(q, ops) for q, ops in enumerate(quanta)]
    with pool_server(capacity_bytes=MIB, extent_mib=1) as (ep, proc, log):
        cs = [PoolClient(ep, h, timeout_s=10.0, use_shm=True, shm_bytes=2 * MIB, keepalive=False)
              for h in range(2)]
        try:
            for h, c in enumerate(cs):
                c.attach(h, 0)
                assert c.transport == "mailbox"
            with ThreadPoolExecutor(2) as ex:
                for q, ops in enumerate(quanta):
                    got = list(ex.map(lambda h: cs[h].exchange(h, q, ops[h]), range(2)))
                    assert got == [want[q], want[q]]
                    # host 1's first hand-in (60,000 ops) is too large for the mailbox: it goes
                    # over the stream, and so does its reply; host 0's goes through the mailbox,
                    # and its release, listing 60,000 keys, comes over the stream, which an
                    # empty mailbox reply says
                    for c in cs if q else cs[:1]:
                        assert c._mailbox.inbound_seq() == c._seq
                        assert (c._mailbox.read() == b"") == (q == 0)
            assert len(want[0].added) == n and cs[0].stats() == local.stats()
        finally:
            for c in cs:
                c.close()


def test_each_mailbox_is_served_when_another_host_leaves(server):
    """The server looks at every mailbox in one call; dropping one host's mailbox must not
    lose or mix up the others' requests."""
    cs = [PoolClient(server[0], 20 + i, timeout_s=5.0, use_shm=True, shm_bytes=2 * MIB,
                     keepalive=False) for i in range(4)]
    try:
        for i, c in enumerate(cs):
            c.attach(20 + i, MIB)
            c.put(20 + i, 900 + i, bytes([i]) * 64)
        cs[1].detach(21)
        for i in (0, 2, 3):
            assert cs[i].get(20 + i, 900 + i) == bytes([i]) * 64
            cs[i].put(20 + i, 910 + i, bytes([i + 10]) * 64)
        cs[0].detach(20)
        assert cs[3].get(23, 913) == bytes([13]) * 64 and cs[2].get(22, 912) == bytes([12]) * 64
        for i in (2, 3):
            cs[i].detach(20 + i)
    finally:
        for c in cs:
            c.close()


def test_successive_block_buffers_hand_out_distinct_bytes(host):
    c = host(12)
    (a,) = c.block_buffers([1000])
    (b,) = c.block_buffers([1000])
    a[:] = b"A" * 1000
    b[:] = b"B" * 1000
    c.put_many(12, [(1, a), (2, b)])
    assert c.get(12, 1) == b"A" * 1000 and c.get(12, 2) == b"B" * 1000


def test_blocks_evicted_by_a_later_item_of_the_same_put_keep_no_bytes():
    """put_later accounts a whole batch before fill gives the bytes: a shared block the batch
    itself evicted must not get bytes back (they would stay in memory for nothing)."""
    pool = LocalPool(4 * 1024, extent_bytes=4 * 1024)
    pool.attach(0, 0)
    sized = [(k, 1024) for k in range(8)]          # 8 shared 1 KiB blocks into 4 KiB
    assert pool.put_later(0, sized, shared=True) == [None] * 8
    for k, n in sized:
        pool.fill(k, bytes([k]) * n)
    pool.check()
    assert pool.lookup(0, [4, 5, 6, 7]) == 4 and pool.lookup(0, [0]) == 0
    assert pool.get(0, 7) == bytes([7]) * 1024


def test_a_block_that_cannot_be_copied_out_leaves_the_pool(monkeypatch):
    """The reply came first; if the copy then fails (no memory), the block must not read as
    zeros: it leaves the pool, and the server keeps serving."""
    pool = LocalPool(16 * MIB, extent_bytes=MIB)
    srv = PoolServer(pool, "tcp://127.0.0.1:*", log=io.StringIO())
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    real_fill = pool.fill

    def fill(key, data):
        if key == 2:
            raise MemoryError
        real_fill(key, data)
    monkeypatch.setattr(pool, "fill", fill)
    c = PoolClient(srv.endpoint, 0, timeout_s=5.0, use_shm=True, shm_bytes=2 * MIB,
                   keepalive=False)
    try:
        c.attach(0, MIB)
        assert c.transport == "mailbox"
        assert c.put_many(0, [(1, b"a" * 100), (2, b"b" * 100)]) == [None, None]
        assert c.get(0, 1) == b"a" * 100
        with pytest.raises(PoolError, match="block 2 is not in the pool"):
            c.get(0, 2)
        assert c.stats()["hosts"]["0"]["private_bytes"] == 100
        pool.check()
    finally:
        srv.stop()
        c.close()
        poke = zmq.Context.instance().socket(zmq.DEALER)
        poke.connect(srv.endpoint)
        poke.send_multipart([P.encode_request(1, "sync", {})])
        thread.join(10)
        poke.close(0)
        srv.close()


def _sealed_against_writes(size):
    fd = os.memfd_create("write-sealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
    return _Handed(fd)


def _read_only(size):
    window = _CREATE(size)
    fd = os.open(f"/proc/self/fd/{window.fd}", os.O_RDONLY)   # the same memfd, read-only
    window.close()
    return _Handed(fd)


class _Handed:
    """Just a descriptor to hand over, as a hostile host might."""
    def __init__(self, fd):
        self.fd, self.buf = fd, None

    def drop_fd(self):
        os.close(self.fd)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@pytest.mark.parametrize("make", [_sealed_against_writes, _read_only])
def test_a_window_the_server_could_not_write_is_refused_and_the_server_lives(server, monkeypatch,
                                                                             make):
    monkeypatch.setattr(client_module.ShmWindow, "create", staticmethod(make))
    with PoolClient(server[0], 15, timeout_s=5.0, use_shm="auto", shm_bytes=2 * MIB) as c:
        with warnings.catch_warnings():
            warnings.simplefilter("error")         # "auto" falls back without a warning
            c.attach(15, MIB)
        assert c.window is None and c.transport == "stream"
        assert "refused the window" in c.window_refused
        assert c.lookup(15, [1]) == 0 and server[1].poll() is None
        c.detach(15)


def test_a_descriptor_that_blocks_on_close_does_not_stall_the_server(server):
    """A local process (no token needed) hands the server a TCP socket whose unsent data and
    SO_LINGER make close() block; the server must close it off its serving loop."""
    import struct
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stuck.connect(listener.getsockname())
    peer, _ = listener.accept()
    stuck.setblocking(False)
    try:
        while True:
            stuck.send(b"x" * 65536)
    except BlockingIOError:
        pass                                  # its send queue is full and will stay so
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 30))
    with PoolClient(server[0], 16, timeout_s=3.0, use_shm=False, use_stream=False) as good:
        good.attach(16, 0)
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(good.server_info["stream"])
        hello = b"\x81\xa1v\x04"              # not a hello: the server closes the stream
        socket.send_fds(raw, [struct.pack("<II", 1, len(hello)) + hello], [stuck.fileno()])
        stuck.close()                         # the server holds the last reference now
        time.sleep(0.3)
        for _ in range(3):                    # each within 3 s, though close() takes 30
            assert good.lookup(16, [1]) == 0
        good.detach(16)
        raw.close()
    peer.close()
    listener.close()


def test_a_timed_out_put_gives_up_the_window_and_never_stores_other_bytes(server):
    """The server stalls past the client's timeout while a put waits in the mailbox. It may
    still carry the put out later, reading the window: the client gives the window up, so its
    next blocks cannot land there."""
    with PoolClient(server[0], 17, timeout_s=1.0, use_shm=True, shm_bytes=2 * MIB,
                    keepalive=False) as c:
        c.attach(17, 4 * MIB)
        assert c.transport == "mailbox"
        os.kill(server[1].pid, signal.SIGSTOP)
        try:
            with pytest.raises(PoolTimeout):
                c.put(17, 1, b"A" * 65536)
        finally:
            threading.Timer(0.3, os.kill, (server[1].pid, signal.SIGCONT)).start()
        assert c.window is None and c.transport == "zeromq"
        assert "put timed out" in c.window_refused
        c.timeout_s = 5.0
        c.put(17, 2, b"B" * 65536)            # over the socket now
        try:
            assert c.get(17, 1) == b"A" * 65536   # the late put, with its own bytes
        except PoolError as exc:
            assert "not in the pool" in str(exc)  # or not carried out at all
        assert c.get(17, 2) == b"B" * 65536
        c.detach(17)


def test_after_a_server_restart_a_host_attaches_again_with_a_new_window():
    port = _free_port()
    bind = f"tcp://127.0.0.1:{port}"
    c = None
    try:
        with pool_server(bind=bind, heartbeat_s=60) as (ep, proc, log):
            c = PoolClient(bind, 1, timeout_s=1.0, use_shm=True,
                           shm_bytes=DATA_START + 2 * MIB, keepalive=False)
            c.attach(1, 16 * MIB)
            c.put(1, 1, b"A" * (3 * MIB // 2))     # answered before its copy
        with pool_server(bind=bind, heartbeat_s=60) as (ep, proc, log):
            with pytest.raises(PoolError):
                c.stats()                           # the old attachment is gone
            c.attach(1, 16 * MIB)
            assert c.transport == "mailbox"
            for i in range(3):                      # each needs the last one's region
                c.put(1, 2 + i, bytes([i]) * (3 * MIB // 2))
                assert c.get(1, 2 + i) == bytes([i]) * (3 * MIB // 2)
            c.detach(1)
    finally:
        if c is not None:
            c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_puts_after_the_window_is_gone_forget_the_views_of_it(server, monkeypatch):
    """block_buffers once used, then the window goes (detach) and the re-attach gets none: a
    put of plain bytes goes over the stream, not looking for views of a window it lacks."""
    with PoolClient(server[0], 18, timeout_s=5.0, use_shm="auto", shm_bytes=2 * MIB) as c:
        c.attach(18, 4 * MIB)
        (view,) = c.block_buffers([1000])
        view[:] = b"v" * 1000
        c.put(18, 1, view)
        c.detach(18)
        monkeypatch.setattr(client_module.ShmWindow, "create", staticmethod(_no_memfd))
        c.attach(18, 4 * MIB)
        assert c.transport == "stream" and "cannot make" in c.window_refused
        c.put(18, 2, b"w" * 1000)
        assert c.get(18, 2) == b"w" * 1000
        seq = c._seq
        assert c.put_many(18, []) == [] and c._seq == seq       # nothing to send
        c.detach(18)


def test_a_window_that_cannot_be_mapped_leaves_its_descriptor_to_the_caller(monkeypatch):
    """The server closes a refused descriptor itself (off its loop): adopt must not have closed
    it already, or the second close could hit a descriptor another thread opened meanwhile."""
    window = ShmWindow.create(DATA_START + 4096)
    fd = os.dup(window.fd)
    window.close()

    def no_map(*args, **kw):
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(shm_module.mmap, "mmap", no_map)
    try:
        with pytest.raises(PoolError, match="cannot map it"):
            ShmWindow.adopt(fd, DATA_START)
        os.fstat(fd)                          # still open: the caller's to close
    finally:
        os.close(fd)


def test_a_low_frame_limit_sends_what_fits_it(monkeypatch):
    """A server taking frames of at most 64 KiB: batches whose compact form would exceed that go
    in msgpack, which packs small keys tighter, and are served."""
    with pool_server("--max-frame-bytes", "65536", capacity_bytes=64 * MIB) as (ep, proc, log):
        with PoolClient(ep, 19, timeout_s=5.0, use_shm=True, shm_bytes=2 * MIB) as c:
            c.attach(19, 8 * MIB)
            assert c.transport == "mailbox"
            items = [(i, bytes([i % 256]) * 100) for i in range(4000)]
            assert P.encode_compact_request(1, "put", {"keys": list(range(4000)), "shared": False,
                                                       "shm": [[DATA_START, 100]] * 4000}) \
                is not None                   # (96 KiB compact: over the limit)
            c.put_many(19, items)
            assert c.lookup(19, list(range(10_000))) == 4000
            assert c.get_many(19, range(3000)) == [d for _, d in items[:3000]]
            c.detach(19)


def test_a_view_reused_by_a_later_get_is_refused_not_stored(host):
    """A get writes its blocks into the window from the start of the data area: a view handed
    out there before holds those bytes now. Putting it must fail, not store another block's
    bytes; views elsewhere stay good."""
    c = host(20)
    c.put(20, 1, b"g" * (512 << 10))
    early, = c.block_buffers([1000])          # at the start of the data area
    early[:] = b"e" * 1000
    c.block_buffers([600 << 10])              # (moves the next views past the get's bytes)
    late, = c.block_buffers([1000])
    late[:] = b"l" * 1000
    assert c.get(20, 1) == b"g" * (512 << 10)  # overwrites `early`, not `late`
    with pytest.raises(PoolError, match="block 2's buffer lies in this host's window but in no"):
        c.put(20, 2, early)
    c.put(20, 3, late)
    assert c.get(20, 3) == b"l" * 1000
    with pytest.raises(PoolError, match="in no view"):     # a slice of the window, not a view
        c.put(20, 4, c.window.buf[DATA_START + 100:DATA_START + 200])
    with pytest.raises(PoolError, match="not in the pool"):
        c.get(20, 2)
    # a put of plain bytes is copied into the window from its data area's start, over a view
    first, = c.block_buffers([c._room - 4096])      # (wraps: starts at the data area's start)
    first[:100] = b"f" * 100
    c.put(20, 5, b"p" * 1000)
    with pytest.raises(PoolError, match="in no view"):
        c.put(20, 6, first[:100])
