"""The compact form of put, get and lookup (protocol.py): through the mailbox these travel as a
fixed head and columns of 64-bit words instead of a msgpack map. They must mean exactly what the
msgpack requests mean, say in msgpack what the compact form cannot (refusals, errors, large
replies), and every malformed compact request gets an error reply naming its fault and changes
nothing."""
import struct

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from cxlsim.errors import PoolError, ProtocolError
from cxlsim.pool import protocol as P
from cxlsim.pool.client import PoolClient
from cxlsim.pool.local import LocalPool
from cxlsim.pool.mailbox import DATA_START, REQUEST_AT
from pool_support import detach_and_close, fuzz_changes_nothing, pool_server, raw_mail

MIB = 1 << 20
HEAD = struct.Struct("=BBBBIQ")


def test_compact_requests_decode_to_the_args_msgpack_gives():
    cases = [
        ("put", {"keys": [1, 2**64 - 1], "shared": True, "shm": [[DATA_START, 10], [DATA_START + 10, 5]]}),
        ("put", {"keys": [7], "shared": False, "shm": [[DATA_START, 1]]}),
        ("get", {"keys": [3, 4, 5], "shm": True}),
        ("get", {"keys": [3], "shm": False}),
        ("lookup", {"keys": list(range(40))}),
        ("lookup", {"keys": []}),
    ]
    for cmd, args in cases:
        raw = P.encode_compact_request(99, cmd, args)
        assert P.is_compact(raw) and not P.is_compact(P.encode_request(99, cmd, args))
        req_id, got_cmd, got, data = P.decode_compact_request(raw)
        want = P.decode_request([P.encode_request(99, cmd, args)])[2]
        if cmd == "put":          # places come as pairs either way
            got["shm"], want["shm"] = [list(p) for p in got["shm"]], [list(p) for p in want["shm"]]
        assert (req_id, got_cmd, got, data) == (99, cmd, want, [])
    # what the compact form cannot say goes in msgpack
    assert P.encode_compact_request(1, "put", {"keys": [1], "shared": False, "shm": None}) is None
    assert P.encode_compact_request(1, "lookup", {"keys": [-1]}) is None
    assert P.encode_compact_request(1, "lookup", {"keys": [2**64]}) is None
    assert P.encode_compact_request(1, "free", {"keys": [1]}) is None


def test_compact_replies_decode_to_what_msgpack_says():
    for cmd, result in [("put", [None, None]), ("lookup", 17),
                        ("get", [[DATA_START, 5], [DATA_START + 5, 3]])]:
        raw = P.encode_compact_reply(cmd, 5, result)
        msg = P.decode_compact_reply(raw, cmd)
        want = P.decode_reply(P.encode_reply(5, result))
        if cmd == "get":
            msg["result"] = [list(p) for p in msg["result"]]
        assert msg == want
    assert P.encode_compact_reply("put", 5, [None, "quota exceeded"]) is None
    assert P.encode_compact_reply("get", 5, [[DATA_START, 5], [-1, 9]]) is None
    with pytest.raises(ProtocolError, match="of 40 B, expected 32 B"):
        P.decode_compact_reply(P.encode_compact_reply("get", 5, [[DATA_START, 5]]) + b"x" * 8,
                               "get")
    with pytest.raises(ProtocolError, match="command code 9"):
        P.decode_compact_reply(HEAD.pack(0xC1, P.VERSION, 9, 0, 0, 5), "put")
    # a lookup's reply
    with pytest.raises(ProtocolError, match=f"not a version-{P.VERSION} reply to put"):
        P.decode_compact_reply(P.encode_compact_reply("lookup", 5, 3), "put")


def test_compact_bounds_are_the_msgpack_bounds():
    """Offsets 0..2**48 and sizes 1..2**32-1, as the msgpack schema; the frame limit too."""
    def put(off, size):
        raw = HEAD.pack(0xC1, P.VERSION, 1, 0, 1, 3) + struct.pack("=3Q", 9, off, size)
        return P.decode_compact_request(raw)[2]["shm"]
    assert put(1 << 48, P.MAX_BLOCK_BYTES) == [(1 << 48, P.MAX_BLOCK_BYTES)]
    for off, size in [((1 << 48) + 1, 1), (0, P.MAX_BLOCK_BYTES + 1), (0, 0)]:
        with pytest.raises(ProtocolError, match="offsets 0..2\\*\\*48, sizes 1..") as info:
            put(off, size)
        assert info.value.req_id == 3 and info.value.code == P.E_ARGS
        msgpack_form = P.encode_request(3, "put", {"keys": [9], "shared": False,
                                                   "shm": [[off, size]]})
        with pytest.raises(ProtocolError):
            P.decode_request([msgpack_form])
    lookup = P.encode_compact_request(4, "lookup", {"keys": list(range(200))})
    with pytest.raises(ProtocolError, match=f"frame 0 of {len(lookup)} B exceeds the limit") \
            as info:
        P.decode_compact_request(lookup, max_frame_bytes=1024)
    assert info.value.req_id == 4 and info.value.code == P.E_FRAME


@pytest.fixture(scope="module")
def server():
    with pool_server(capacity_bytes=64 * MIB, extent_mib=1, heartbeat_s=60) as (ep, proc, log):
        yield ep


@pytest.fixture
def host(server):
    opened = []

    def make(host_id):
        c = PoolClient(server, host_id, timeout_s=5.0, use_shm=True, shm_bytes=4 * MIB,
                       keepalive=False)
        c.attach(host_id, 2 * MIB)
        assert c.transport == "mailbox"
        opened.append(c)
        return c
    yield make
    detach_and_close(opened)


def _last_exchange_was_compact(c) -> bool:
    request = bytes(c.window.buf[REQUEST_AT:REQUEST_AT + 1])
    return P.is_compact(request) and P.is_compact(c._mailbox.read())


def test_hot_commands_go_compact_and_answer_as_the_local_pool(host):
    """The same puts, gets and lookups against the server (compact through the mailbox) and a
    LocalPool in this process give the same answers, refusals word for word."""
    c, other = host(1), host(2)
    local = LocalPool(64 * MIB, extent_bytes=MIB)
    local.attach(1, 2 * MIB)
    local.attach(2, 2 * MIB)
    blobs = [bytes([i]) * (1000 + i) for i in range(20)]
    items = [(100 + i, b) for i, b in enumerate(blobs)]
    assert c.put_many(1, items) == local.put_many(1, items) == [None] * 20
    assert _last_exchange_was_compact(c)
    assert c.get_many(1, [100, 119, 105]) == local.get_many(1, [100, 119, 105])
    assert _last_exchange_was_compact(c)
    assert c.lookup(1, [100, 101, 555, 102]) == local.lookup(1, [100, 101, 555, 102]) == 2
    assert _last_exchange_was_compact(c)
    # shared blocks, read by another host
    assert c.put_many(1, [(7, b"shared")], shared=True) == \
        local.put_many(1, [(7, b"shared")], shared=True)
    assert other.get(2, 7) == local.get(2, 7) == b"shared"
    assert other.lookup(2, [7, 100]) == local.lookup(2, [7, 100]) == 1   # 100 is private to 1
    # refusals: a rewrite of another size and a quota overrun come back item by item
    bad = [(100, b"x" * 5), (200, b"y" * (3 * MIB)), (201, b"z")]
    got = c.put_many(1, bad, raise_on_error=False)
    assert got == local.put_many(1, bad) and got[0] and got[1] and got[2] is None
    assert not P.is_compact(c._mailbox.read())          # said in msgpack
    with pytest.raises(PoolError, match="not in the pool or not readable by host 2"):
        other.get(2, 100)
    ours, theirs = c.stats(), local.stats()
    assert ours["used_bytes"] == theirs["used_bytes"]
    assert ours["hosts"]["1"]["private_bytes"] == theirs["hosts"]["1"]["private_bytes"]


def _post_raw(c, payload) -> dict:
    """Post `payload` as c's next request; its reply (raw_mail checks it is msgpack)."""
    c._seq += 1
    return raw_mail(c, c._seq, payload)


# one fault per request: (name, the error code it must get, whether the head (and id) survive)
FAULTS = ["short head", "version", "command", "flags", "count", "length", "offset", "size"]


@st.composite
def broken_compact(draw):
    fault = draw(st.sampled_from(FAULTS))
    cmd = "put" if fault in ("offset", "size") else draw(st.sampled_from(P.COMPACT_COMMANDS))
    code = P.COMPACT_COMMANDS.index(cmd) + 1
    n = draw(st.integers(0 if fault not in ("offset", "size") else 1, 4))
    req_id = draw(st.integers(1, 2**64 - 1))
    flags = 0 if cmd == "lookup" else draw(st.integers(0, 1))
    version = P.VERSION
    words = draw(st.lists(st.integers(0, 2**64 - 1), min_size=n * (3 if cmd == "put" else 1),
                          max_size=n * (3 if cmd == "put" else 1)))
    if cmd == "put":       # valid places unless the fault is in them
        for i in range(n):
            words[n + i] = DATA_START + draw(st.integers(0, 1 << 20))
            words[2 * n + i] = draw(st.integers(1, 4096))
    want = P.E_ARGS
    if fault == "short head":
        return draw(st.binary(max_size=15).map(lambda b: b"\xc1" + b[:14])), P.E_FRAME, None
    if fault == "version":
        version, want = draw(st.integers(0, 255).filter(lambda v: v != P.VERSION)), P.E_VERSION
    elif fault == "command":
        code, want = draw(st.sampled_from([0, *range(len(P.COMPACT_COMMANDS) + 1, 256)])), \
            P.E_COMMAND
    elif fault == "flags":
        flags = draw(st.integers(2, 255) if cmd != "lookup" else st.integers(1, 255))
    elif fault == "count":
        n = draw(st.integers(P.MAX_BATCH + 1, 2**32 - 1))
    elif fault == "offset":
        words[n + draw(st.integers(0, n - 1))] = draw(st.integers((1 << 48) + 1, 2**64 - 1))
    elif fault == "size":
        words[2 * n + draw(st.integers(0, n - 1))] = draw(
            st.sampled_from([0, P.MAX_BLOCK_BYTES + 1, 2**64 - 1]))
    body = struct.pack(f"={len(words)}Q", *words)
    if fault == "length":
        cut = draw(st.integers(1, 16))
        body = body[:-cut] if len(body) >= cut and draw(st.booleans()) else body + b"\0" * cut
    return HEAD.pack(0xC1, version, code, flags, n, req_id) + body, want, req_id


@settings(max_examples=25, deadline=None, database=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(st.lists(broken_compact(), min_size=40, max_size=40))
def _fuzz_compact(c, sent, requests):
    for payload, code, req_id in requests:
        rep = _post_raw(c, payload)
        sent[0] += 1
        assert rep["ok"] is False and rep["error"]["code"] == code, (payload, rep)
        assert rep["id"] == req_id and "compact" in rep["error"]["message"], (payload, rep)


def test_malformed_compact_requests_get_errors_and_change_nothing(host):
    c = host(3)
    fuzz_changes_nothing(c, host(4), _fuzz_compact)
    assert _last_exchange_was_compact(c)


def test_the_compact_form_is_refused_over_sockets(server, host):
    """Only a mailbox takes the compact form: over ZeroMQ or the stream a whole, valid compact
    lookup is a frame that is not msgpack."""
    import time
    import zmq
    from cxlsim.pool.stream import recv_message, send_message
    lookup = P.encode_compact_request(1, "lookup", {"keys": [1, 2]})
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server)
    try:
        sock.send_multipart([lookup])
        assert sock.poll(5000)
        rep = P.decode_reply(sock.recv_multipart()[0])
    finally:
        sock.close()
    assert rep["ok"] is False and rep["error"]["code"] == P.E_FRAME
    c = host(5)
    send_message(c._stream, [lookup], 5.0)
    frames = recv_message(c._stream_reader, time.monotonic() + 5.0, c._stream_pending)
    rep = P.decode_reply(frames[0])
    assert rep["ok"] is False and rep["error"]["code"] == P.E_FRAME
    assert c.lookup(5, [1]) == 0                     # and the host goes on
