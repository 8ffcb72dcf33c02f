"""LocalPool: the shared CXL pool kept in this process (the `Pool` contract of api.py).

It is also the state machine inside the pool server (server.py holds one and feeds it decoded
requests), so the in-process pool and the remote one cannot disagree: same code, same order.

Semantics (the contract's details; docs/protocol.md repeats them for the wire):

* Capacity is bytes. The global index is a one-tier C BlockIndex (LRU) of `capacity_bytes`;
  owner = writing host, sharers = hosts holding a reference.
* Dynamic capacity: a host's quota is a whole number of extents (`extent_bytes`, CXL DCD style),
  granted at attach and grown/shrunk by resize. The extents granted to all hosts never exceed the
  pool. A quota bounds the host's *private* bytes; shrinking below them is refused.
* Private blocks: only the owner reads, frees, pins or shares them; never evicted (each holds an
  ownership reference in the index, so the C LRU skips them).
* Shared blocks: readable by every attached host; a pool cache. They live in space no private
  block uses and the pool's LRU over *unpinned* shared blocks evicts them when a put needs room.
  Hosts that put, read (get/touch), pin or share a block hold a reference; `free` drops it and the
  block leaves when its last reference goes. A dead or detached host's references are dropped too,
  so shared blocks that others still reference stay.
* Blocks put by a replay op or `alloc` hold no bytes yet and read as zeros.
* Coherence (when a fabric and memory are given): a write of a shared block back-invalidates the
  other sharers (Coherence.write), a read may snoop a modifier (Coherence.read), a free drops the
  host from the directory, removal forgets the block. Extra ns are summed per host.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np

from ..errors import CoreError, PoolError
from ..index import BlockIndex, TierSpec
from .api import (MAX_MOVE_NS, MAX_TIERS, OP_FREE, OP_KINDS, OP_MOVE, OP_PUT, OP_TOUCH,
                  DeltaMerger, PoolDelta, PoolOp, Release, Traffic)

MAX_HOSTS = 64
MAX_BLOCK_BYTES = (1 << 32) - 1       # the C index keeps block sizes in 32 bits
KEY_MAX = (1 << 64) - 1
DEFAULT_EXTENT_BYTES = 256 << 20
# ops apply in (t_ns, host, seq) order; equal keys (a host repeating a seq) keep hand-in order
_APPLY_ORDER = operator.itemgetter(0, 1, 2)


@dataclass
class _Block:
    nbytes: int
    owner: int
    shared: bool
    refs: int = 0                      # bitmask of hosts holding a reference (shared blocks)


@dataclass
class _Host:
    extents: int
    private_bytes: int = 0
    private_keys: set = field(default_factory=set)
    pins: dict = field(default_factory=dict)   # key -> pin count by this host
    coherence_ns: float = 0.0


def as_bytes(data) -> bytes:
    """Immutable copy of bytes-like data or a numpy array (C order), bit for bit."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).tobytes()
    try:
        return memoryview(data).tobytes()
    except TypeError:
        raise PoolError(f"block data must be bytes-like or a numpy array, "
                        f"got {type(data).__name__}") from None


class LocalPool:
    """The pool in this process. Not thread-safe: one engine (or the server loop) drives it."""

    def __init__(self, capacity_bytes: int, quantum_ns: float = 1_000_000.0, fabric=None,
                 memory: str | None = None, extent_bytes: int = DEFAULT_EXTENT_BYTES):
        if int(capacity_bytes) < 1:
            raise PoolError(f"pool capacity must be >= 1 byte, got {capacity_bytes}")
        if int(extent_bytes) < 1:
            raise PoolError(f"extent size must be >= 1 byte, got {extent_bytes}")
        if not quantum_ns > 0:
            raise PoolError(f"quantum_ns must be > 0, got {quantum_ns}")
        if (fabric is None) != (memory is None):
            raise PoolError("coherence needs both a fabric and the pool's memory name")
        self.capacity_bytes = int(capacity_bytes)
        self.extent_bytes = int(extent_bytes)
        self.extents_total = self.capacity_bytes // self.extent_bytes
        self.quantum_ns = float(quantum_ns)
        self.index = BlockIndex([TierSpec("pool", capacity_bytes=self.capacity_bytes,
                                          ordering="lru")])
        self.coherence = None
        if fabric is not None:
            from ..coherence import Coherence
            self.coherence = Coherence(fabric, memory)
        self.quantum = 0                       # next quantum the barrier will apply
        self._blocks: dict[int, _Block] = {}
        self._data: dict[int, bytes | None] = {}
        self._hosts: dict[int, _Host] = {}
        self._pins: dict[int, int] = {}        # key -> pin count over all hosts
        self._used = 0
        self._shared_bytes = 0
        self._pinned_shared_bytes = 0
        self._evictions = 0
        self._changed: dict[int, bool] = {}    # key -> was visible to all at the last delta
        self._pending: dict[int, list[PoolOp]] = {}
        self._next: dict[int, float] = {}          # next event time each host last reported
        self._held: dict[int, DeltaMerger] = {}        # parked host -> what it missed, merged
        self._unfolded: list[PoolDelta] = []           # the last barrier's, until settle()
        self._time_quantum = 0                     # virtual-time quantum the next barrier ends
        self._quantum_coh: dict[int, float] = {}
        self._traffic: list[Traffic] = []          # this quantum's moves (OP_MOVE)

    # ------------------------------------------------------------------ checks
    def _host(self, host) -> _Host:
        state = self._hosts.get(host) if type(host) is int else None
        if state is None:
            raise PoolError(f"host {host!r} is not attached to the pool")
        return state

    @staticmethod
    def _key(key) -> int:
        if type(key) is not int and not isinstance(key, np.integer):
            raise PoolError(f"block keys are unsigned 64-bit integers, got {type(key).__name__}")
        key = int(key)
        if not 0 <= key <= KEY_MAX:
            raise PoolError(f"block key {key} is outside 0..2**64-1")
        return key

    def _readable(self, host: int, key: int) -> _Block:
        block = self._blocks.get(key)
        if block is None or not (block.shared or block.owner == host):
            # one message for both: a host must not learn that another's private key exists
            raise PoolError(f"block {key} is not in the pool or not readable by host {host}")
        return block

    def _extents_for(self, quota_bytes) -> int:
        if type(quota_bytes) is not int or quota_bytes < 0:
            raise PoolError(f"quota must be a byte count >= 0, got {quota_bytes!r}")
        return -(-quota_bytes // self.extent_bytes)

    def _free_extents(self, exclude: int | None = None) -> int:
        return self.extents_total - sum(h.extents for i, h in self._hosts.items() if i != exclude)

    # ------------------------------------------------------------------ membership
    def attach(self, host: int, quota_bytes: int = 0) -> None:
        if type(host) is not int or not 0 <= host < MAX_HOSTS:
            raise PoolError(f"host ids are ints 0..{MAX_HOSTS - 1}, got {host!r}")
        if host in self._hosts:
            raise PoolError(f"host {host} is already attached")
        if self.coherence is not None and host >= len(self.coherence.hosts):
            raise PoolError(f"host {host} has no host in the topology (it has "
                            f"{len(self.coherence.hosts)})")
        extents = self._extents_for(quota_bytes)
        if extents > self._free_extents():
            raise PoolError(f"host {host}: quota of {quota_bytes} B needs {extents} extents of "
                            f"{self.extent_bytes} B, only {self._free_extents()} are free")
        self._hosts[host] = _Host(extents)

    def resize(self, host: int, quota_bytes: int) -> None:
        """Grow or shrink a host's dynamic capacity, in whole extents."""
        state = self._host(host)
        extents = self._extents_for(quota_bytes)
        if extents > self._free_extents(exclude=host):
            raise PoolError(f"host {host}: cannot grow to {extents} extents, only "
                            f"{self._free_extents(exclude=host)} are free to it")
        if extents * self.extent_bytes < state.private_bytes:
            raise PoolError(f"host {host}: cannot shrink to {extents} extents "
                            f"({extents * self.extent_bytes} B) while it holds "
                            f"{state.private_bytes} B of private blocks; free some first")
        state.extents = extents

    def detach(self, host: int) -> None:
        """Leave the pool (also what the server does for a dead host): private blocks and pins go,
        references to shared blocks are dropped; shared blocks others reference stay."""
        state = self._host(host)
        for key, count in sorted(state.pins.items()):
            for _ in range(count):
                self._unpin_one(host, state, key)
        for key in sorted(state.private_keys):
            self._remove(key)
        bit = 1 << host
        for key in sorted(k for k, b in self._blocks.items() if b.shared and b.refs & bit):
            self._drop_ref(host, key)
        del self._hosts[host]
        self._pending.pop(host, None)
        self._next.pop(host, None)
        self._held.pop(host, None)

    def heartbeat(self, host: int) -> None:
        self._host(host)

    @property
    def hosts(self) -> list[int]:
        return sorted(self._hosts)

    # ------------------------------------------------------------------ internals
    def _room(self, nbytes: int) -> str | None:
        """Make room for nbytes by evicting unpinned shared blocks (LRU). Reason if impossible;
        checked before any eviction so a refused put changes nothing."""
        free = self.capacity_bytes - self._used
        if free >= nbytes:
            return None
        evictable = self._shared_bytes - self._pinned_shared_bytes
        if free + evictable < nbytes:
            return (f"pool full: {nbytes} B needed, {free} B free and {evictable} B of unpinned "
                    f"shared blocks to evict (capacity {self.capacity_bytes} B)")
        while self.capacity_bytes - self._used < nbytes:
            key, _ = self.index.evict_one(0)
            self._evictions += 1
            self._forget(key)
        return None

    def _forget(self, key: int) -> None:
        """Drop Python-side state of a block that already left the C index."""
        block = self._blocks.pop(key)
        self._data.pop(key, None)
        self._used -= block.nbytes
        if block.shared:
            self._shared_bytes -= block.nbytes
            self._changed.setdefault(key, True)
            if self.coherence is not None:
                self.coherence.forget(key)
        else:
            state = self._hosts[block.owner]
            state.private_bytes -= block.nbytes
            state.private_keys.discard(key)

    def _remove(self, key: int) -> None:
        block = self._blocks[key]
        if not block.shared:
            self.index.unpin(key)          # the ownership reference
        self.index.remove(key)
        self._forget(key)

    def _coh(self, host: int, ns: float) -> None:
        if ns:
            self._hosts[host].coherence_ns += ns
            self._quantum_coh[host] = self._quantum_coh.get(host, 0.0) + ns

    def _ref(self, host: int, key: int, block: _Block) -> None:
        if not block.refs & (1 << host):
            block.refs |= 1 << host
            self.index.set_sharers(key, block.refs)

    def _drop_ref(self, host: int, key: int) -> None:
        block = self._blocks[key]
        block.refs &= ~(1 << host)
        if self.coherence is not None:
            self.coherence.drop(key, host)
        if block.refs == 0 and not self._pins.get(key):
            self._remove(key)
        else:
            self.index.set_sharers(key, block.refs)

    def _put(self, host: int, key: int, nbytes: int, shared: bool, data: bytes | None) -> None:
        state = self._host(host)
        if type(nbytes) is not int or not 1 <= nbytes <= MAX_BLOCK_BYTES:
            raise PoolError(f"block size must be 1..{MAX_BLOCK_BYTES} B, got {nbytes!r}")
        block = self._blocks.get(key)
        if block is not None:
            # rewriting: own private block, or a shared block (dedupe of the same prefix block)
            if not (block.shared or block.owner == host):
                raise PoolError(f"block {key} is not in the pool or not readable by host {host}")
            if block.nbytes != nbytes:
                raise PoolError(f"block {key} holds {block.nbytes} B, a write of {nbytes} B "
                                f"cannot replace it")
            if shared and not block.shared:
                self._share(host, key, block)      # publishing counts as the write
            elif block.shared:
                self._ref(host, key, block)
                if self.coherence is not None:
                    self._coh(host, self.coherence.write(key, host))
            self.index.touch(key)
            self._data[key] = data
            return
        if not shared and state.private_bytes + nbytes > state.extents * self.extent_bytes:
            raise PoolError(f"host {host} quota exceeded: {state.private_bytes} B private + "
                            f"{nbytes} B > {state.extents} extents x {self.extent_bytes} B")
        reason = self._room(nbytes)
        if reason:
            raise PoolError(f"block {key}: {reason}")
        self.index.insert(key, 0, nbytes, owner=host)
        block = _Block(nbytes, host, shared)
        self._blocks[key] = block
        self._data[key] = data
        self._used += nbytes
        if shared:
            self._shared_bytes += nbytes
            self._changed.setdefault(key, False)
            self._ref(host, key, block)
            if self.coherence is not None:
                self._coh(host, self.coherence.write(key, host))
        else:
            self.index.pin(key)            # ownership reference: the LRU never picks it
            state.private_bytes += nbytes
            state.private_keys.add(key)

    def _share(self, host: int, key: int, block: _Block) -> None:
        state = self._hosts[host]
        self.index.unpin(key)              # no longer owned privately: evictable unless pinned
        block.shared = True
        state.private_bytes -= block.nbytes
        state.private_keys.discard(key)
        self._shared_bytes += block.nbytes
        if self._pins.get(key):
            self._pinned_shared_bytes += block.nbytes
        self._changed.setdefault(key, False)
        self._ref(host, key, block)
        if self.coherence is not None:
            self._coh(host, self.coherence.write(key, host))

    def _read(self, host: int, key: int, block: _Block) -> None:
        self.index.touch(key)
        if block.shared:
            self._ref(host, key, block)
            if self.coherence is not None:
                self._coh(host, self.coherence.read(key, host))

    def _free(self, host: int, key: int) -> None:
        block = self._readable(host, key)
        state = self._hosts[host]
        if state.pins.get(key):
            raise PoolError(f"block {key} is pinned by host {host}; unpin it before freeing")
        if not block.shared:
            self._remove(key)
        elif not block.refs & (1 << host):
            raise PoolError(f"host {host} holds no reference to shared block {key}")
        else:
            self._drop_ref(host, key)

    def _unpin_one(self, host: int, state: _Host, key: int) -> None:
        self.index.unpin(key)
        state.pins[key] -= 1
        if not state.pins[key]:
            del state.pins[key]
        self._pins[key] -= 1
        block = self._blocks[key]
        if not self._pins[key]:
            del self._pins[key]
            if block.shared:
                self._pinned_shared_bytes -= block.nbytes
                if not block.refs:
                    self._remove(key)

    # ------------------------------------------------------------------ data path
    def put(self, host: int, key: int, data, shared: bool = False) -> None:
        data = as_bytes(data)
        self._put(host, self._key(key), len(data), bool(shared), data)

    def put_many(self, host: int, items, shared: bool = False) -> list[str | None]:
        """Put (key, data) pairs in order; per item None or the reason it was refused."""
        out = []
        for key, data in items:
            try:
                self.put(host, key, data, shared)
                out.append(None)
            except PoolError as exc:
                out.append(str(exc))
        return out

    def put_later(self, host: int, sized_keys, shared: bool = False) -> list[str | None]:
        """Check and account puts of (key, nbytes) whose bytes the caller gives to fill() before
        anything else uses the pool (the server answers first and copies after: server.py);
        per item None or the reason it was refused, as put_many."""
        out = []
        for key, nbytes in sized_keys:
            try:
                self._put(host, self._key(key), nbytes, bool(shared), None)
                out.append(None)
            except PoolError as exc:
                out.append(str(exc))
        return out

    def fill(self, key: int, data: bytes) -> None:
        """The bytes of a block put_later accepted (if a later put of the same batch has not
        evicted it meanwhile)."""
        if key in self._blocks:
            self._data[key] = data

    def discard(self, key: int) -> None:
        """Remove a block put_later accepted whose bytes cannot be given (it must not read as
        zeros), with any pins on it."""
        if key not in self._blocks:
            return
        for host, state in self._hosts.items():
            while state.pins.get(key):
                self._unpin_one(host, state, key)
        if key in self._blocks:          # (an unpinned shared block nobody holds is gone)
            self._remove(key)

    def alloc(self, host: int, key: int, nbytes: int, shared: bool = False) -> None:
        """Reserve a block of nbytes (reads as zeros until put)."""
        self._put(host, self._key(key), nbytes, bool(shared), None)

    def get(self, host: int, key: int) -> bytes:
        return self.get_many(host, [key])[0]

    def get_many(self, host: int, keys) -> list[bytes]:
        """All or nothing: every key must be readable by host, else nothing is read."""
        self._host(host)
        keys = [self._key(k) for k in keys]
        blocks = [self._readable(host, k) for k in keys]
        out = []
        for key, block in zip(keys, blocks):
            self._read(host, key, block)
            data = self._data[key]
            out.append(bytes(block.nbytes) if data is None else data)
        return out

    def free(self, host: int, key: int) -> None:
        self._host(host)
        self._free(host, self._key(key))

    def free_many(self, host: int, keys) -> list[str | None]:
        self._host(host)
        out = []
        for key in keys:
            try:
                self._free(host, self._key(key))
                out.append(None)
            except PoolError as exc:
                out.append(str(exc))
        return out

    def share(self, host: int, key: int) -> None:
        """Publish the host's private block to every host (or take a reference to a shared one)."""
        self._host(host)
        key = self._key(key)
        block = self._readable(host, key)
        if block.shared:
            self._ref(host, key, block)
        else:
            self._share(host, key, block)

    def lookup(self, host: int, keys) -> int:
        """How many leading keys host can read (prefix reuse). Changes nothing."""
        self._host(host)
        n = 0
        for key in keys:
            block = self._blocks.get(self._key(key))
            if block is None or not (block.shared or block.owner == host):
                break
            n += 1
        return n

    def pin(self, host: int, keys) -> None:
        """All or nothing. Pinned blocks are never evicted; a pin on a shared block is a reference."""
        state = self._host(host)
        keys = [self._key(k) for k in keys]
        for key in keys:
            self._readable(host, key)
        for key in keys:
            block = self._blocks[key]
            self.index.pin(key)
            state.pins[key] = state.pins.get(key, 0) + 1
            self._pins[key] = self._pins.get(key, 0) + 1
            if block.shared:
                if self._pins[key] == 1:
                    self._pinned_shared_bytes += block.nbytes
                self._ref(host, key, block)

    def unpin(self, host: int, keys) -> None:
        """All or nothing: every key must be pinned by this host (as often as it appears)."""
        state = self._host(host)
        keys = [self._key(k) for k in keys]
        need: dict[int, int] = {}
        for key in keys:
            need[key] = need.get(key, 0) + 1
            if state.pins.get(key, 0) < need[key]:
                raise PoolError(f"block {key} is not pinned by host {host}")
        for key in keys:
            self._unpin_one(host, state, key)

    def stats(self) -> dict:
        coh = None
        if self.coherence is not None:
            c = self.coherence.stats()
            coh = {"reads": c.reads, "writes": c.writes, "invalidations": c.invalidations,
                   "bi_events": c.bi_events, "snoops": c.snoops, "bi_ns": c.bi_ns,
                   "snoop_ns": c.snoop_ns, "tracked": c.tracked}
        return {
            "capacity_bytes": self.capacity_bytes, "used_bytes": self._used,
            "free_bytes": self.capacity_bytes - self._used,
            "shared_bytes": self._shared_bytes, "private_bytes": self._used - self._shared_bytes,
            "pinned_shared_bytes": self._pinned_shared_bytes,
            "blocks": len(self._blocks), "index_blocks": len(self.index),
            "index_used_bytes": self.index.tier_stats(0).used_bytes,
            "evictions": self._evictions, "extent_bytes": self.extent_bytes,
            "extents_total": self.extents_total,
            "extents_granted": sum(h.extents for h in self._hosts.values()),
            "quantum": self.quantum, "quantum_ns": self.quantum_ns,
            "hosts": {str(h): {"quota_bytes": s.extents * self.extent_bytes,
                               "private_bytes": s.private_bytes,
                               "private_blocks": len(s.private_keys),
                               "pins": sum(s.pins.values()), "coherence_ns": s.coherence_ns}
                      for h, s in sorted(self._hosts.items())},
            "coherence": coh,
        }

    # ------------------------------------------------------------------ replay path
    def _apply_op(self, op: PoolOp) -> None:
        if op.kind == OP_PUT:
            self._put(op.host, self._key(op.key), op.nbytes, bool(op.shared), None)
        elif op.kind == OP_TOUCH:
            key = self._key(op.key)
            self._read(op.host, key, self._readable(op.host, key))
        elif op.kind == OP_FREE:
            self._free(op.host, self._key(op.key))
        elif op.kind == OP_MOVE:
            if not 0 <= op.key < MAX_TIERS or op.nbytes <= 0 or not op.t_ns < MAX_MOVE_NS:
                raise PoolError(f"a move needs a tier index below {MAX_TIERS}, bytes > 0 and a "
                                f"time below {MAX_MOVE_NS:g} ns, got tier {op.key}, {op.nbytes} B "
                                f"at {op.t_ns:g} ns")
            self._traffic.append(Traffic(op.t_ns, op.host, op.key, bool(op.shared), op.nbytes))
        else:
            raise PoolError(f"unknown op kind {op.kind!r} (known: {', '.join(OP_KINDS)})")

    def _apply_quantum(self, quantum: int, ops_by_host: dict[int, list[PoolOp]],
                       next_ns: float = float("inf")) -> PoolDelta:
        ops = []
        for host, host_ops in ops_by_host.items():
            for op in host_ops:
                if op.host != host:
                    raise PoolError(f"an op of host {op.host} was handed in by host {host}")
            ops.extend(host_ops)
        ops.sort(key=_APPLY_ORDER)        # (t_ns, host, seq): never the order of arrival
        rejected = []
        for op in ops:
            try:
                self._apply_op(op)
            except (PoolError, CoreError) as exc:
                rejected.append((op.host, op.seq, str(exc)[:4096] or type(exc).__name__))
        self._time_quantum, run_until = self._schedule(next_ns)
        delta = self._delta(quantum, tuple(rejected), next_ns, run_until)
        self.quantum = quantum + 1
        return delta

    def _schedule(self, next_ns: float) -> tuple[int, float]:
        """(the new time quantum, run_until_ns) of a barrier whose earliest next event of any
        host is next_ns: the next barrier ends the quantum holding that event."""
        if not math.isfinite(next_ns):
            return self._time_quantum, math.inf
        ends = max(self._time_quantum, int(next_ns // self.quantum_ns)) + 1
        return ends, ends * self.quantum_ns

    @staticmethod
    def _runs(next_ns: float, run_until: float) -> bool:
        """A host with its next event at next_ns is released by a barrier that schedules
        run_until (all are, when the replay is over); the others stay parked."""
        return next_ns < run_until or not math.isfinite(run_until)

    def _delta(self, quantum: int, rejected, next_ns: float = float("inf"),
               run_until: float = float("inf")) -> PoolDelta:
        added, removed = [], []
        for key, was in self._changed.items():
            block = self._blocks.get(key)
            now = block is not None and block.shared
            if now and not was:
                added.append(key)
            elif was and not now:
                removed.append(key)
        self._changed = {}
        coh = tuple(sorted(self._quantum_coh.items()))
        self._quantum_coh = {}
        traffic, self._traffic = tuple(self._traffic), []
        return PoolDelta(quantum, tuple(sorted(added)), tuple(sorted(removed)), rejected,
                         self._used, self.capacity_bytes, coh, next_ns, run_until,
                         traffic=traffic)

    def exchange_all(self, quantum: int, ops_by_host: dict[int, list[PoolOp]],
                     next_ns: dict[int, float] | None = None) -> PoolDelta:
        """In-process barrier: every attached host's ops for `quantum` at once (next_ns: each
        host's next event time, whose minimum the delta carries)."""
        if quantum != self.quantum:
            raise PoolError(f"quantum {quantum} handed in, the pool is at quantum {self.quantum}")
        missing = set(self._hosts) - set(ops_by_host)
        unknown = set(ops_by_host) - set(self._hosts)
        if missing or unknown:
            raise PoolError(f"quantum {quantum}: ops must come from exactly the attached hosts "
                            f"(missing {sorted(missing)}, not attached {sorted(unknown)})")
        self._pending = {}
        self._next = {}
        return self._apply_quantum(quantum, ops_by_host, min((next_ns or {}).values(),
                                                             default=float("inf")))

    def exchange(self, host: int, quantum: int, ops: list[PoolOp],
                 next_ns: float | None = None) -> dict[int, PoolDelta]:
        """Per-host barrier (the server's): host hands in its ops for barrier `quantum` and its
        next event time. Returns {host: delta} for the hosts to release now: empty while the
        barrier waits; when it completes, the hosts with work before the next barrier's end,
        each with every delta it has not seen merged into one (all hosts once none has work).
        A host whose next event lies beyond that stays parked: it counts as having handed in
        nothing until the barrier in which it has work, so it makes no round trip for barriers
        in which it could only wait."""
        self._host(host)
        if quantum != self.quantum:
            raise PoolError(f"host {host} handed in quantum {quantum}, the pool is at quantum "
                            f"{self.quantum}")
        if host in self._pending or host in self._held:
            raise PoolError(f"host {host} already handed in quantum {quantum}")
        self._pending[host] = list(ops)
        self._next[host] = float("inf") if next_ns is None else float(next_ns)
        return self.try_complete()

    def try_complete(self) -> dict[int, PoolDelta]:
        """Apply the pending barrier if every attached host has handed it in or is parked, and
        return the releases (see exchange)."""
        self.settle()
        pending, held = self._pending, self._held      # disjoint: see exchange
        if not (pending or held) or any(h not in pending and h not in held for h in self._hosts):
            return {}                    # (a host that left may leave only parked ones behind)
        self._pending = {}
        delta = self._apply_quantum(self.quantum, pending, min(self._next.values(),
                                                                default=float("inf")))
        released = {}
        for host in sorted([*pending, *held]):
            owed = held.pop(host, None)
            if self._runs(self._next[host], delta.run_until_ns):
                if owed is not None:     # parked through earlier barriers: all of them at once
                    owed.add(delta)
                horizon_ns, horizon_host = _horizon(self._next, host)
                released[host] = (delta if owed is None else owed.result())._replace(
                    horizon_ns=horizon_ns, horizon_host=horizon_host)
            else:                        # parked: owed this delta too (settle)
                held[host] = owed if owed is not None else DeltaMerger()
        if held:
            self._unfolded.append(delta)
        return released

    def settle(self) -> None:
        """Fold the last barrier's delta into what each parked host is owed. try_complete leaves
        this for later so that a server can send the releases first and fold while the released
        hosts run; the next try_complete settles first in any case."""
        for delta in self._unfolded:
            for owed in self._held.values():
                owed.add(delta)
        self._unfolded.clear()

    def due(self, host: int, quantum: int, next_ns: float | None) -> dict[int, Release]:
        """The hosts the barrier would release if `host` handed in `quantum` now with next_ns,
        each with its schedule (the Release its delta will carry): empty while other hosts still
        have to hand in, or if exchange would refuse this hand-in. Changes nothing; the server
        uses it to tell a waiting host its release and schedule before it applies the barrier's
        ops, so that host can run while they are applied (protocol.md, Quantum barrier)."""
        if (host not in self._hosts or quantum != self.quantum or host in self._pending
                or host in self._held):
            return {}
        waiting = {*self._pending, *self._held, host}
        if any(h not in waiting for h in self._hosts):
            return {}
        nexts = {**self._next, host: math.inf if next_ns is None else float(next_ns)}
        _, run_until = self._schedule(min(nexts.values()))
        return {h: Release(self.quantum, run_until, _horizon(nexts, h)[0])
                for h in sorted(waiting) if self._runs(nexts[h], run_until)}

    @property
    def waiting(self) -> list[int]:
        """Hosts that handed in the current barrier or are parked, waiting for the others."""
        return sorted(set(self._pending) | set(self._held))

    # ------------------------------------------------------------------ invariants
    def check(self) -> None:
        """Raise if the Python accounting and the C index disagree (tests, server debug)."""
        stats = self.index.tier_stats(0)
        total = sum(b.nbytes for b in self._blocks.values())
        if not (stats.used_bytes == self._used == total and stats.blocks == len(self._blocks)):
            raise PoolError(f"pool accounting drift: index {stats.used_bytes} B / {stats.blocks} "
                            f"blocks, pool {self._used} B / {len(self._blocks)} blocks, "
                            f"sum {total} B")
        if self._used > self.capacity_bytes:
            raise PoolError(f"pool over capacity: {self._used} > {self.capacity_bytes}")
        if not self._data.keys() <= self._blocks.keys():
            raise PoolError(f"bytes kept for {len(self._data.keys() - self._blocks.keys())} "
                            f"blocks that left the pool")


def _horizon(nexts: dict[int, float], host: int) -> tuple[float, int]:
    """The earliest next event of any host but `host`, and that host (the lowest id of those
    that tie; -1 if none has one): PoolDelta.horizon_ns and horizon_host."""
    return min(((t, h) for h, t in nexts.items() if h != host and t < math.inf),
               default=(math.inf, -1))
