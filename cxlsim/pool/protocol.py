"""The pool's wire format: the single source of truth for what travels between host and server.

A message is a ZeroMQ multipart message: one msgpack header frame, then zero or more raw data
frames (block bytes travel as their own frames, never inside msgpack, so nothing re-encodes them).

    request  header: {"v": VERSION, "id": int, "cmd": str, "args": {field: value, ...}}
    reply    header: {"v": VERSION, "id": int | None, "ok": True, "result": ...}
                     {"v": VERSION, "id": int | None, "ok": False,
                      "error": {"code": str, "message": str}}

Every request header is checked against the command's schema below (types, bounds, list
lengths, number of data frames) with explicit checks, never `assert`; any failure is a
ProtocolError naming the field, which the server answers with an error reply and no state change.
docs/protocol.md describes the commands for people; keep the two in step.
"""
from __future__ import annotations

import math
import struct
from array import array

import msgpack

from ..errors import ProtocolError
from .api import MAX_TIERS

VERSION = 8
MAX_HEADER_BYTES = 16 << 20         # a header larger than this is refused before decoding
DEFAULT_MAX_FRAME_BYTES = 64 << 20  # data frames (one block each); the server may lower it
MAX_BATCH = 1 << 16                 # keys per batched request
MAX_OPS = 1 << 20                   # replay ops one host hands in for one quantum
U64_MAX = (1 << 64) - 1
MAX_HOST = 63
MAX_BLOCK_BYTES = (1 << 32) - 1

# error codes of error replies
E_FRAME = "bad_frame"          # not msgpack, not a map, oversized, wrong number of data frames
E_VERSION = "bad_version"
E_COMMAND = "unknown_command"
E_ARGS = "bad_args"
E_ATTACH = "not_attached"      # the connection is not (or no longer) attached to a host
E_REFUSED = "refused"          # valid request the pool refused (quota, isolation, pool full, ...)
E_INTERNAL = "internal"        # a server bug; the server keeps serving


# ---------------------------------------------------------------------- field checkers
# Each checker takes (value, name) and returns the value (possibly normalised) or raises. Inside
# lists the name is a (parent name, index) pair, spelled out only for an error: formatting a
# name per element would cost more than checking it.
def _spell(name) -> str:
    return name if isinstance(name, str) else f"{_spell(name[0])}[{name[1]}]"


def _fail(name, what: str, value) -> ProtocolError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ProtocolError(f"{_spell(name)}: expected {what}, got {type(value).__name__} {shown}")


# A checker may carry `whole(list) -> bool`: True when every item of the list passes, found with
# a few passes in C (set, map, min, max) instead of one Python call per item. Lists of keys and
# the columns of a quantum's ops are the hot case.
WHOLE_FROM = 4          # shorter lists are checked item by item: fewer calls for one item


def _only(types: set, values) -> bool:
    return set(map(type, values)) <= types


def integer(lo: int, hi: int):
    def check(value, name):
        if type(value) is not int or not lo <= value <= hi:   # bool is not an int here
            raise _fail(name, f"an integer in {lo}..{hi}", value)
        return value
    check.whole = lambda v: _only({int}, v) and lo <= min(v) and max(v) <= hi
    return check


def boolean(value, name):
    if type(value) is not bool:
        raise _fail(name, "true or false", value)
    return value


boolean.whole = lambda v: _only({bool}, v)


def finite(value, name):
    if type(value) is not float or not math.isfinite(value) or value < 0:
        raise _fail(name, "a finite float >= 0", value)
    return value


finite.whole = lambda v: _only({float}, v) and all(map(math.isfinite, v)) and min(v) >= 0


def string(max_len: int):
    def check(value, name):
        if type(value) is not str or not 0 < len(value) <= max_len:
            raise _fail(name, f"a string of 1..{max_len} characters", value)
        return value
    check.whole = lambda v: (_only({str}, v) and min(map(len, v)) > 0
                             and max(map(len, v)) <= max_len)
    return check


def optional(inner):
    def check(value, name):
        return None if value is None else inner(value, name)
    return check


def list_of(inner, max_len: int = MAX_BATCH):
    whole = getattr(inner, "whole", None)

    def check(value, name):
        if type(value) is not list or len(value) > max_len:
            raise _fail(name, f"a list of at most {max_len} items", value)
        if not value or (whole is not None and len(value) >= WHOLE_FROM and whole(value)):
            return value
        return [inner(v, (name, i)) for i, v in enumerate(value)]   # names the first fault
    return check


def record(*fields):
    """A fixed-length list [a, b, ...] with one checker per position."""
    def check(value, name):
        if type(value) is not list or len(value) != len(fields):
            raise _fail(name, f"a list of {len(fields)} items", value)
        return [f(v, (name, i)) for i, (f, v) in enumerate(zip(fields, value))]
    wholes = [getattr(f, "whole", None) for f in fields]
    if all(wholes):      # a list of records passes when each column does (shm places)
        check.whole = lambda v: (_only({list}, v) and set(map(len, v)) == {len(fields)}
                                 and all(w(col) for w, col in zip(wholes, zip(*v))))
    return check


def columns(max_len: int, *fields):
    """A table sent column by column: [[a0, a1, ...], [b0, b1, ...], ...], one checker per column,
    every column of the same length (at most max_len rows)."""
    cols = record(*(list_of(f, max_len) for f in fields))

    def check(value, name):
        value = cols(value, name)
        if len(set(map(len, value))) > 1:
            raise ProtocolError(f"{_spell(name)}: columns must have one length, got "
                                f"{[len(c) for c in value]}")
        return value
    return check


KEY = integer(0, U64_MAX)
KEYS = list_of(KEY)
SIZE = integer(1, MAX_BLOCK_BYTES)
OFFSET = integer(0, 1 << 48)
OP_KIND = string(8)
#: a quantum's ops as columns t_ns, seq, kind, key, nbytes, shared (row i is one op), checked a
#: column at a time
OPS = columns(MAX_OPS, finite, integer(0, 1 << 62), OP_KIND, KEY, integer(0, MAX_BLOCK_BYTES),
              boolean)

#: command -> (schema {field: checker}, data frames: "none" | "per_key" | "per_key_unless_shm")
COMMANDS: dict[str, tuple[dict, str]] = {
    # tag: what the hosts of one job must share (a replay's settings and trace, hashed); the
    # server refuses a host whose tag differs from the attached hosts' (null: none)
    "attach": ({"host": integer(0, MAX_HOST), "quota": integer(0, 1 << 62),
                "tag": optional(string(64))}, "none"),
    "resize": ({"quota": integer(0, 1 << 62)}, "none"),
    "detach": ({}, "none"),
    "heartbeat": ({}, "none"),
    "sync": ({}, "none"),
    "stats": ({}, "none"),
    "alloc": ({"keys": KEYS, "sizes": list_of(SIZE), "shared": boolean}, "none"),
    # put: data in frames (one per key) or, with shm, at [offset, nbytes] in the host's window
    "put": ({"keys": KEYS, "shared": boolean, "shm": optional(list_of(record(OFFSET, SIZE)))},
            "per_key_unless_shm"),
    "get": ({"keys": KEYS, "shm": boolean}, "none"),
    "free": ({"keys": KEYS}, "none"),
    "share": ({"keys": KEYS}, "none"),
    "lookup": ({"keys": KEYS}, "none"),
    "pin": ({"keys": KEYS}, "none"),
    "unpin": ({"keys": KEYS}, "none"),
    # ops: columns [t_ns...], [seq...], [kind...], [key...], [nbytes...], [shared...]; the
    # host is the connection's. next_ns: the host's next event time (None: no more work)
    "exchange": ({"quantum": integer(0, 1 << 62), "ops": OPS,
                  "next_ns": optional(finite)}, "none"),
    # the hand-in that follows this host's hand-in of barrier `follows`, sent before that
    # one's release comes: taken iff the release runs the host until exactly after_ns (reply:
    # its own release, as exchange's; null when not taken). Over the stream or ZeroMQ, never
    # the mailbox (so it may overtake the hand-in it follows: `follows` says which that is)
    "exchange_ahead": ({"follows": integer(0, 1 << 62), "ops": OPS, "next_ns": optional(finite),
                        "after_ns": finite}, "none"),
}

#: a barrier's delta as the server sends it (server._delta_to_wire); the client checks every
#: field, so a malformed delta is a clear error and never a wrong replay
MAX_DELTA_KEYS = 1 << 26
_DELTA_FIELDS = {
    "quantum": integer(0, 1 << 62),
    "added": list_of(KEY, MAX_DELTA_KEYS),
    "removed": list_of(KEY, MAX_DELTA_KEYS),
    # every host's rejections and moves, of every barrier a parked host missed
    "rejected": list_of(record(integer(0, MAX_HOST), integer(0, 1 << 62), string(4096)),
                        MAX_DELTA_KEYS),
    "used_bytes": integer(0, 1 << 62),
    "capacity_bytes": integer(0, 1 << 62),
    "coherence_ns": list_of(record(integer(0, MAX_HOST), finite), MAX_HOST + 1),
    "next_ns": optional(finite),
    "run_until_ns": optional(finite),
    "horizon_ns": optional(finite),
    "horizon_host": integer(-1, MAX_HOST),
    # columns t_ns, host, tier, to_pool, nbytes: every host's moves (api.Traffic)
    "traffic": columns(MAX_DELTA_KEYS, finite, integer(0, MAX_HOST), integer(0, MAX_TIERS - 1),
                       boolean, integer(1, MAX_BLOCK_BYTES)),
}


def check_delta(d) -> dict:
    """Check a delta from the wire field by field (ProtocolError names the first fault)."""
    if type(d) is not dict or d.keys() != _DELTA_FIELDS.keys():
        got = sorted(d) if type(d) is dict else type(d).__name__
        raise ProtocolError(f"a delta has the fields {sorted(_DELTA_FIELDS)}, got {got}")
    for name, check in _DELTA_FIELDS.items():
        check(d[name], name)
    return d


# ---------------------------------------------------------------------- encode / decode
def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(raw: bytes, max_bytes: int, max_items: int = MAX_OPS, max_map: int = 64):
    if len(raw) > max_bytes:
        raise ProtocolError(f"header frame of {len(raw)} B exceeds the limit of {max_bytes} B")
    try:
        # limits stop a small frame from declaring a huge container; ext types are refused
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, max_ext_len=0,
                               max_str_len=max_bytes, max_bin_len=max_bytes,
                               max_array_len=max_items, max_map_len=max_map)
    except Exception as exc:   # msgpack raises many types for corrupt input; all mean "not msgpack"
        raise ProtocolError(f"header frame is not valid msgpack ({type(exc).__name__}: "
                            f"{str(exc)[:80]})") from None


def encode_request(req_id: int, cmd: str, args: dict) -> bytes:
    return pack({"v": VERSION, "id": req_id, "cmd": cmd, "args": args})


def decode_request(frames: list, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
                   ) -> tuple[int | None, str, dict, list]:
    """Check a request completely. Returns (id, cmd, args, data frames) or raises ProtocolError,
    with `.req_id` set to the request id when it could be read (so the reply can carry it)."""
    if not frames:
        raise ProtocolError("empty message")
    if max(map(len, frames)) > max_frame_bytes:
        i, size = next((i, len(f)) for i, f in enumerate(frames) if len(f) > max_frame_bytes)
        raise ProtocolError(f"frame {i} of {size} B exceeds the limit of {max_frame_bytes} B")
    header = _unpack(bytes(frames[0]), min(MAX_HEADER_BYTES, max_frame_bytes))
    if type(header) is not dict:
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    req_id = header.get("id")
    if type(req_id) is not int or not 0 <= req_id <= U64_MAX:
        raise ProtocolError(f"id: expected an integer in 0..2**64-1, got {req_id!r:.60}")
    try:
        return _check_request(header, req_id, frames[1:])
    except ProtocolError as exc:
        exc.req_id = req_id
        raise


_HEADER_FIELDS = frozenset({"v", "id", "cmd", "args"})
# per command: its fields, and (field, checker, the name an error gives it), made once
_SPECS = {cmd: (frozenset(schema), tuple((f, c, f"{cmd}.{f}") for f, c in schema.items()),
                rule) for cmd, (schema, rule) in COMMANDS.items()}


def _check_request(header: dict, req_id: int, data: list):
    if not header.keys() <= _HEADER_FIELDS:
        extra = sorted(map(str, header.keys() - _HEADER_FIELDS))
        raise ProtocolError(f"unknown header fields {extra}")
    if header.get("v") != VERSION or type(header.get("v")) is not int:
        exc = ProtocolError(f"protocol version {header.get('v')!r:.20} is not supported "
                            f"(this server speaks version {VERSION})")
        exc.code = E_VERSION
        raise exc
    cmd = header.get("cmd")
    if type(cmd) is not str or cmd not in _SPECS:
        exc = ProtocolError(f"unknown command {cmd!r:.40} (known: {', '.join(COMMANDS)})")
        exc.code = E_COMMAND
        raise exc
    fields, checks, frames_rule = _SPECS[cmd]
    args = header.get("args")
    if type(args) is not dict:
        raise ProtocolError(f"{cmd}: args must be a map, got {type(args).__name__}")
    if args.keys() != fields:
        raise ProtocolError(f"{cmd}: unknown fields {sorted(map(str, args.keys() - fields))}, "
                            f"missing fields {sorted(fields - args.keys())}")
    checked = {f: check(args[f], name) for f, check, name in checks}
    want = 0
    if frames_rule == "per_key" or (frames_rule == "per_key_unless_shm" and
                                     checked.get("shm") is None):
        want = len(checked["keys"])
    if frames_rule == "per_key_unless_shm" and checked.get("shm") is not None \
            and len(checked["shm"]) != len(checked["keys"]):
        raise ProtocolError(f"{cmd}: shm has {len(checked['shm'])} entries for "
                            f"{len(checked['keys'])} keys")
    if cmd == "alloc" and len(checked["sizes"]) != len(checked["keys"]):
        raise ProtocolError(f"alloc: {len(checked['sizes'])} sizes for {len(checked['keys'])} keys")
    if len(data) != want:
        raise ProtocolError(f"{cmd}: expected {want} data frames, got {len(data)}")
    return req_id, cmd, checked, data


def encode_stream_hello(token: str) -> bytes:
    """First message on a local stream (stream.py): the token the attach reply gave."""
    return pack({"v": VERSION, "stream_token": token})


def decode_stream_hello(raw) -> str:
    hello = _unpack(bytes(raw), 256, max_items=4, max_map=4)
    if type(hello) is not dict or hello.get("v") != VERSION \
            or type(hello.get("stream_token")) is not str:
        raise ProtocolError(f"not a version-{VERSION} stream hello: {str(hello)[:60]}")
    return hello["stream_token"]


def encode_reply(req_id, result=None) -> bytes:
    return pack({"v": VERSION, "id": req_id, "ok": True, "result": result})


def encode_soon_notice(quantum: int, release) -> bytes:
    """Unsolicited (id null): this parked host's wait in barrier `quantum` ends with `release`
    (an api.Release: the schedule of its coming delta). It may run its next quantum at once and
    read the delta's pool changes when they arrive. Needs no answer."""
    ends = [None if math.isinf(x) else x for x in (release.run_until_ns, release.horizon_ns)]
    return pack({"v": VERSION, "id": None, "ok": True,
                 "result": {"soon": quantum, "release": [release.quantum, *ends]}})


def is_soon_notice(msg: dict, quantum: int) -> bool:
    result = msg.get("result")
    return msg.get("id") is None and type(result) is dict and result.get("soon") == quantum


def notice_release(msg: dict) -> tuple[int, float, float]:
    """(quantum, run_until_ns, horizon_ns) of a soon notice (is_soon_notice), checked."""
    rel = msg["result"].get("release")
    if not (type(rel) is list and len(rel) == 3 and type(rel[0]) is int and rel[0] >= 0
            and all(x is None or (type(x) is float and x >= 0 and not math.isnan(x))
                    for x in rel[1:])):
        raise ProtocolError(f"a soon notice's release must be [barrier, run_until_ns | null, "
                            f"horizon_ns | null], got {str(rel)[:80]}")
    return rel[0], *(math.inf if x is None else x for x in rel[1:])


def encode_error(req_id, code: str, message: str) -> bytes:
    return pack({"v": VERSION, "id": req_id, "ok": False,
                 "error": {"code": code, "message": message}})


def decode_reply(raw: bytes) -> dict:
    """Check a reply header (the client trusts the server less than nothing either)."""
    msg = _unpack(bytes(raw), MAX_HEADER_BYTES * 16, max_items=1 << 26, max_map=1 << 16)
    if type(msg) is not dict or msg.get("v") != VERSION or type(msg.get("ok")) is not bool:
        raise ProtocolError(f"reply is not a version-{VERSION} pool reply: {str(msg)[:80]}")
    if not msg["ok"]:
        err = msg.get("error")
        if type(err) is not dict or type(err.get("code")) is not str \
                or type(err.get("message")) is not str:
            raise ProtocolError(f"error reply without code and message: {str(msg)[:80]}")
    return msg


# ---------------------------------------------------------------------- the compact form
# The hot data-path commands through the mailbox (mailbox.py), where a request costs so little
# that decoding a msgpack map and checking it field by field would be a third of it. Both ends
# are on one machine, so words are in its native byte order:
#
#   head   16 bytes: magic 0xC1, version, command code, flags, count n (u32), request id (u64)
#   put    request: n keys, n offsets, n sizes (u64 each; the blocks lie in the host's window);
#          flags: 1 = shared. Reply: the head only, n = the count (every block accepted)
#   get    request: n keys; flags: 1 = through the window. Reply: n offsets, n sizes
#   lookup request: n keys. Reply: the head only, n = the number of leading keys readable
#
# 0xC1 is the one byte msgpack never uses, so the first byte tells the two forms apart. What the
# compact form cannot say (a refused block, an error, blocks that did not fit the window) is
# said in msgpack, which a host must accept in reply to either form.
COMPACT_MAGIC = 0xC1
_HEAD = struct.Struct("=BBBBIQ")
COMPACT_HEAD_BYTES = _HEAD.size
COMPACT_COMMANDS = ("put", "get", "lookup")       # code = position + 1
_CODES = {cmd: i + 1 for i, cmd in enumerate(COMPACT_COMMANDS)}
_WORDS_PER_KEY = {"put": 3, "get": 1, "lookup": 1}
COMPACT_FLAG = 1            # put: shared; get: through the window


def is_compact(raw) -> bool:
    return len(raw) > 0 and raw[0] == COMPACT_MAGIC


def encode_compact_request(req_id: int, cmd: str, args: dict) -> bytes | None:
    """The compact form of a request, or None where it has none (another command, a put whose
    blocks travel as frames, a key out of range: msgpack carries those, and their errors)."""
    code = _CODES.get(cmd)
    if code is None:
        return None
    keys = args["keys"]
    if cmd == "put":
        places = args["shm"]
        if places is None:
            return None
        flags = COMPACT_FLAG if args["shared"] else 0
        words = [*keys, *(off for off, _ in places), *(n for _, n in places)]
    else:
        flags = COMPACT_FLAG if args.get("shm") else 0
        words = keys
    try:
        return _HEAD.pack(COMPACT_MAGIC, VERSION, code, flags, len(keys), req_id) + \
            array("Q", words).tobytes()
    except (OverflowError, TypeError, struct.error):
        return None


def _compact_fail(req_id, message: str, code: str = E_ARGS) -> ProtocolError:
    exc = ProtocolError(f"compact request: {message}")
    exc.req_id, exc.code = req_id, code
    return exc


def decode_compact_request(raw: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
                           ) -> tuple[int | None, str, dict, list]:
    """Check a compact request completely; as decode_request (the same args, so one handler
    serves both forms), or ProtocolError naming the field."""
    if len(raw) < COMPACT_HEAD_BYTES:
        raise ProtocolError(f"compact request of {len(raw)} B is shorter than its "
                            f"{COMPACT_HEAD_BYTES}-byte head")
    _, version, code, flags, n, req_id = _HEAD.unpack_from(raw)
    if len(raw) > max_frame_bytes:
        raise _compact_fail(req_id, f"frame 0 of {len(raw)} B exceeds the limit of "
                            f"{max_frame_bytes} B", E_FRAME)
    if version != VERSION:
        raise _compact_fail(req_id, f"protocol version {version} is not supported (this server "
                            f"speaks version {VERSION})", E_VERSION)
    if not 1 <= code <= len(COMPACT_COMMANDS):
        raise _compact_fail(req_id, f"unknown command code {code} (known: "
                            f"{', '.join(f'{c} {_CODES[c]}' for c in COMPACT_COMMANDS)})",
                            E_COMMAND)
    cmd = COMPACT_COMMANDS[code - 1]
    if flags & ~COMPACT_FLAG or (cmd == "lookup" and flags):
        raise _compact_fail(req_id, f"{cmd}: unknown flags {flags:#x}")
    if n > MAX_BATCH:
        raise _compact_fail(req_id, f"{cmd}: count {n} exceeds {MAX_BATCH} keys")
    want = COMPACT_HEAD_BYTES + 8 * _WORDS_PER_KEY[cmd] * n
    if len(raw) != want:
        raise _compact_fail(req_id, f"{cmd}: {len(raw)} B for {n} keys, expected {want} B")
    words = memoryview(raw)[COMPACT_HEAD_BYTES:].cast("Q")
    keys = words[:n].tolist()
    if cmd == "lookup":
        return req_id, cmd, {"keys": keys}, []
    if cmd == "get":
        return req_id, cmd, {"keys": keys, "shm": bool(flags)}, []
    offsets, sizes = words[n:2 * n].tolist(), words[2 * n:].tolist()
    if n and (max(offsets) > 1 << 48 or min(sizes) < 1 or max(sizes) > MAX_BLOCK_BYTES):
        i = next(i for i in range(n) if offsets[i] > 1 << 48 or not 1 <= sizes[i] <= MAX_BLOCK_BYTES)
        raise _compact_fail(req_id, f"put: block {i} at offset {offsets[i]} of {sizes[i]} B "
                            f"(offsets 0..2**48, sizes 1..{MAX_BLOCK_BYTES})")
    return req_id, cmd, {"keys": keys, "shared": bool(flags), "shm": list(zip(offsets, sizes))}, []


def encode_compact_reply(cmd: str, req_id: int, result) -> bytes | None:
    """The compact form of a successful reply to a compact request, or None where msgpack must
    say it (a refused block; blocks sent as frames)."""
    if cmd == "lookup":
        return _HEAD.pack(COMPACT_MAGIC, VERSION, _CODES[cmd], 0, result, req_id)
    if cmd == "put":
        if any(result):
            return None
        return _HEAD.pack(COMPACT_MAGIC, VERSION, _CODES[cmd], 0, len(result), req_id)
    if cmd == "get" and result is not None and all(off >= 0 for off, _ in result):
        return _HEAD.pack(COMPACT_MAGIC, VERSION, _CODES[cmd], 0, len(result), req_id) + \
            array("Q", [*(off for off, _ in result), *(n for _, n in result)]).tobytes()
    return None


def decode_compact_reply(raw: bytes, cmd: str) -> dict:
    """A compact reply to a `cmd` request as the dict decode_reply gives for the same reply in
    msgpack."""
    if len(raw) < COMPACT_HEAD_BYTES:
        raise ProtocolError(f"compact reply of {len(raw)} B is shorter than its head")
    _, version, code, flags, n, req_id = _HEAD.unpack_from(raw)
    if version != VERSION or code != _CODES.get(cmd) or flags:
        raise ProtocolError(f"compact reply with version {version}, command code {code}, "
                            f"flags {flags}: not a version-{VERSION} reply to {cmd}")
    want = COMPACT_HEAD_BYTES + (16 * n if cmd == "get" else 0)
    if len(raw) != want:
        raise ProtocolError(f"compact {cmd} reply of {len(raw)} B, expected {want} B")
    if cmd == "lookup":
        result = n
    elif cmd == "put":
        result = [None] * n
    else:
        words = memoryview(raw)[COMPACT_HEAD_BYTES:].cast("Q")
        result = list(zip(words[:n].tolist(), words[n:].tolist()))
    return {"v": VERSION, "id": req_id, "ok": True, "result": result}
