"""The shared-pool contract: what a host sees of a CXL memory pool that several hosts share.

Two implementations keep it: `cxlsim.pool.local.LocalPool` (in-process) and
`cxlsim.pool.client.PoolClient` (a ZeroMQ client of `cxlsim pool serve`). Engines hold a `Pool`
and never know which one they have; the tests prove both give identical answers.

Two ways to use a pool:

* The data path (immediate): attach / put / get / lookup / free / share / pin / unpin / stats /
  detach. Real bytes, capacity enforced in bytes, per-host quotas, isolation (a host sees its own
  private blocks and blocks shared with it, nothing else).

* The replay path (deterministic virtual time): hosts advance in quanta of `quantum_ns`. During
  a quantum a host reads a local mirror of the pool's key set (as of the last barrier) and buffers
  what it does to the pool as `PoolOp`s. At the barrier, `exchange(host, k, ops, next_ns)` hands
  them over with the host's next event time; the pool applies the ops of ALL hosts for barrier k
  in (t_ns, host, seq) order and returns the `PoolDelta`, which updates the mirror and carries the
  schedule (`run_until_ns`: run every event before it, then hand in barrier `delta.quantum + 1`).
  Because the order of application never depends on which host reached the barrier first, N
  hosts in one process and N host processes against a server give the same result, bit for bit.

  How the barrier is called (the choice both implementations make):
  - In one process, `LocalPool.exchange_all(k, {host: ops, ...}, {host: next_ns, ...})` takes
    every attached host's ops at once and returns the delta: every host runs every barrier.
  - `LocalPool.exchange(host, k, ops, next_ns)` is the server's per-host barrier: it returns
    {host: delta} for the hosts to release now. A host with no event before the next barrier's
    end stays parked (it counts as handing in nothing) and later gets one merged delta for every
    barrier it missed. `PoolClient.exchange` blocks until its host is released;
    `PoolClient.exchange_lazy` returns once the release is scheduled, with a `LazyDelta` whose
    pool changes come while the host runs. A host that detaches (or dies: heartbeat timeout)
    leaves the barrier and the others proceed.
  Barriers are numbered 0, 1, 2, ... with no gaps. A host attaching later joins at the pool's
  current barrier (`stats()["quantum"]`). An op that cannot be applied (quota, pool full of pinned
  blocks, block gone) is not an error: it comes back in `PoolDelta.rejected` as (host, seq, reason).
  Data path calls change the pool at once; their effect on the shared key set shows in the next
  delta. Detailed semantics (quotas, extents, shared-block references, eviction): pool/local.py.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from ..errors import PoolError

#: op kinds a host may buffer during a quantum
OP_PUT = "put"        # write a block into the pool (owner = host); key, nbytes, shared
OP_TOUCH = "touch"    # a host read the block (recency for the pool's eviction, coherence read)
OP_FREE = "free"      # the host no longer needs its private block / its reference to a shared one
#: bytes the host moved between the pool and one of its own tiers: key = that tier's index,
#: nbytes = the bytes, shared = True into the pool / False out of it. Changes nothing in the
#: pool; the delta hands it to the other hosts, whose fabrics take it in (PoolDelta.traffic)
OP_MOVE = "move"
OP_KINDS = (OP_PUT, OP_TOUCH, OP_FREE, OP_MOVE)
MAX_TIERS = 64        # a move names one of its host's tiers by index, below this
MAX_MOVE_NS = 1e18    # and happens before this (the fabric's bound on start times, csrc/fabric.c)


class PoolOp(NamedTuple):
    """One buffered pool operation. Application order is (t_ns, host, seq) (LocalPool sorts by
    those three fields only). A named tuple, not a dataclass: a replay makes one per block that
    moves to or is read from the pool, and builds them several times faster this way."""
    t_ns: float
    host: int
    seq: int
    kind: str
    key: int
    nbytes: int = 0
    shared: bool = True


class Traffic(NamedTuple):
    """Bytes one host moved between the pool and one of its tiers at t_ns (an OP_MOVE)."""
    t_ns: float
    host: int
    tier: int          # the index of the host's tier the bytes came from or went to
    to_pool: bool
    nbytes: int


class PoolDelta(NamedTuple):
    """What changed in the pool during one quantum, identical for every host."""
    quantum: int
    added: tuple[int, ...]       # keys now readable by every host (shared blocks put this quantum)
    removed: tuple[int, ...]     # keys evicted or freed this quantum
    rejected: tuple[tuple[int, int, str], ...] = ()  # (host, seq, reason) for ops not applied
    used_bytes: int = 0
    capacity_bytes: int = 0
    coherence_ns: tuple[tuple[int, float], ...] = ()  # (host, extra ns) this quantum, by host
    #: earliest next event any host reported with its ops (inf: none has more work). Hosts skip
    #: the quanta before it together, so idle stretches of a trace cost no barriers.
    next_ns: float = float("inf")
    #: the schedule: hosts run their events before this virtual time, then hand in the next
    #: barrier (the end of the quantum holding next_ns; inf: the replay is over)
    run_until_ns: float = float("inf")
    #: for the host this delta is given to: the earliest next event of any OTHER host. Until
    #: then the host alone has work, so after a quantum in which it handed nothing to the pool
    #: the barrier could change nothing, and a host process may run on without it.
    horizon_ns: float = float("inf")
    #: the host whose next event is horizon_ns (-1: no other host has one). A host process
    #: that hands in knows from it which host its hand-in will release next, and wakes it.
    horizon_host: int = -1
    #: every host's moves this quantum (OP_MOVE), in application order, as Traffic: each host
    #: takes in the other hosts' on its own fabric, so the pool's shared links and devices carry
    #: every host's bytes from the next quantum on (docs/multihost.md, Contention)
    traffic: tuple[Traffic, ...] = ()


class Release(NamedTuple):
    """A barrier's schedule for one host it releases, known before the barrier's ops are applied
    (it depends only on the hosts' next event times): the fields of the same name in its delta."""
    quantum: int
    run_until_ns: float
    horizon_ns: float


class LazyDelta:
    """A release whose schedule came first and whose pool changes come later
    (PoolClient.exchange_lazy): the host can run its quantum while the server applies the
    barrier's ops, and needs `result()`, the whole delta, only when it looks at the pool."""

    def __init__(self, release: Release, fetch):
        self.quantum, self.run_until_ns, self.horizon_ns = self.release = release
        self._fetch = fetch            # receives the delta and hands it to deliver() or fail()
        self._delta: PoolDelta | None = None
        self._error: Exception | None = None

    @property
    def arrived(self) -> bool:
        """Whether the delta is in (result() will not wait)."""
        return self._delta is not None

    def deliver(self, delta: PoolDelta) -> None:
        promised = Release(delta.quantum, delta.run_until_ns, delta.horizon_ns)
        if promised != self.release:
            raise PoolError(f"the pool released this host with {self.release} and then sent a "
                            f"delta for {promised}")
        self._delta = delta

    def fail(self, error: Exception) -> None:
        """Receiving the delta failed (perhaps in another thread): result() raises `error`."""
        self._error = error

    def result(self) -> PoolDelta:
        if self._delta is None and self._error is None:
            self._fetch()
        if self._error is not None:
            raise self._error
        if self._delta is None:
            raise PoolError(f"the delta of barrier {self.quantum} never came: its client was "
                            f"closed first")
        return self._delta


class DeltaMerger:
    """Deltas folded one at a time into one with the effect of all of them in order (for a host
    parked across barriers): a key ends up added or removed by its last change; rejections,
    coherence and traffic add up; the rest is the last delta's. Each fold costs only that delta's
    changes."""

    def __init__(self) -> None:
        self.added: set[int] = set()
        self.removed: set[int] = set()
        self.rejected: list = []
        self.coherence: dict[int, float] = {}
        self.traffic: list[Traffic] = []
        self.last: PoolDelta | None = None

    def add(self, d: PoolDelta) -> None:
        self.added.difference_update(d.removed)
        self.removed.update(d.removed)
        self.removed.difference_update(d.added)
        self.added.update(d.added)
        self.rejected += d.rejected
        for host, ns in d.coherence_ns:
            self.coherence[host] = self.coherence.get(host, 0.0) + ns
        self.traffic += d.traffic
        self.last = d

    def result(self) -> PoolDelta:
        last = self.last
        return PoolDelta(last.quantum, tuple(sorted(self.added)), tuple(sorted(self.removed)),
                         tuple(self.rejected), last.used_bytes, last.capacity_bytes,
                         tuple(sorted(self.coherence.items())), last.next_ns, last.run_until_ns,
                         last.horizon_ns, last.horizon_host, tuple(self.traffic))


@runtime_checkable
class Pool(Protocol):
    """A shared CXL pool as one host uses it. Host ids are small ints (0..63)."""

    quantum_ns: float

    # ---- membership
    def attach(self, host: int, quota_bytes: int) -> None: ...
    def resize(self, host: int, quota_bytes: int) -> None: ...   # dynamic capacity, in extents
    def detach(self, host: int) -> None: ...
    def heartbeat(self, host: int) -> None: ...

    # ---- data path
    def put(self, host: int, key: int, data: bytes | np.ndarray, shared: bool = False) -> None: ...
    def get(self, host: int, key: int) -> bytes: ...
    def free(self, host: int, key: int) -> None: ...
    def share(self, host: int, key: int) -> None: ...
    def lookup(self, host: int, keys: list[int]) -> int: ...     # leading keys readable by host
    def pin(self, host: int, keys: list[int]) -> None: ...
    def unpin(self, host: int, keys: list[int]) -> None: ...
    def stats(self) -> dict: ...

    # ---- replay path
    # PoolClient: blocks, returns this host's delta; LocalPool: the server's primitive, returns
    # {host: delta} for the hosts to release (see the module docstring)
    def exchange(self, host: int, quantum: int, ops: list[PoolOp], next_ns: float | None = None
                 ): ...
