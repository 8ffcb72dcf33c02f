"""A host's view of the shared CXL pool during a multi-host replay (the quantum barrier of
cxlsim/pool/api.py).

During a quantum the host reads `mirror`, the pool's key set as of the last barrier, and buffers
what it does to the pool as PoolOps: a put when a block leaves its last local tier, a touch when it
reuses a pool block. At the barrier the ops go to the pool (in-process or a server); every host gets
the same delta back and updates its mirror. A block the host put becomes visible, to it and to
everyone else, at the next barrier, so no host's view depends on another host's progress inside a
quantum.

The bytes a host moves to and from the pool go to the barrier too (moves), and every other host
keeps them from the delta (`traffic_in`) until its fabric takes them in, before its next transfer
across the pool's shared links and devices (TieredKV): those carry every host's traffic, one
quantum late like the key set (docs/multihost.md, Contention).

A host process may get its release before the delta's pool changes (PoolClient.exchange_lazy: a
LazyDelta). Only two things read a delta: `in` (the mirror) and a transfer that crosses a link or
device other hosts' pool traffic uses (TieredKV settles first, for the traffic; a transfer nobody
waits for is held back instead, to its next transfer or hand-in). So the side applies such a
delta at the first of those, or before the next hand-in, and results stay those of a delta
applied at once; meanwhile the host runs its quantum while the server applies the barrier's ops.
A host process even runs its next quantum before its release comes (replay._run_ahead): then the
same points (and `lazy`, which TieredKV asks) fetch the release first (await_release).
"""
from __future__ import annotations

from ..pool.api import OP_MOVE, OP_PUT, OP_TOUCH, LazyDelta, PoolDelta, PoolOp, Traffic
from ..pool.local import MAX_BLOCK_BYTES


class PoolSide:
    """Host `host`'s mirror of the pool and its buffered ops."""

    def __init__(self, host: int, endpoint: str, capacity_bytes: int,
                 tiers_by_host: dict[int, list[str]] | None = None):
        self.host = host
        self.endpoint = endpoint            # fabric endpoint of the pool (an interleave set)
        self.capacity_bytes = capacity_bytes
        # the tier endpoints of every host of the replay (this one too), by host: where the
        # other hosts' moves came from or went to. None: the hosts do not share their traffic
        # (no moves handed in, no contention between them)
        self.shares_traffic = tiers_by_host is not None
        self.tiers_by_host = tiers_by_host or {}
        # every host's moves from the deltas (one tuple per delta, in order) until the host's
        # fabric takes the other hosts' in (take_traffic): one background batch per transfer
        # that needs them, not one per barrier and host
        self.traffic_in: list[tuple[Traffic, ...]] = []
        self._taken_bytes = 0
        self.mirror: set[int] = set()
        self.ops: list[PoolOp] = []
        self._seq = 0
        self.puts = self.touches = 0
        self.rejected = 0
        self._lazy: LazyDelta | None = None      # a delta whose pool changes are not in yet
        # while the host runs ahead of its release (replay.run_quanta): what brings the release
        self._release_source = None
        self._released: PoolDelta | LazyDelta | None = None   # the release it brought

    def __contains__(self, key: int) -> bool:
        if self.lazy:
            self.settle()
        return key in self.mirror

    def _op(self, kind: str, key: int, nbytes: int, t_ns: float) -> None:
        self.ops.append(PoolOp(t_ns, self.host, self._seq, kind, key, nbytes, True))
        self._seq += 1

    def put(self, key: int, nbytes: int, t_ns: float) -> None:
        self._op(OP_PUT, key, nbytes, t_ns)
        self.puts += 1

    def touch(self, key: int, t_ns: float) -> None:
        self._op(OP_TOUCH, key, 0, t_ns)
        self.touches += 1

    def move(self, tier: int, to_pool: bool, nbytes: int, t_ns: float) -> None:
        """Bytes moved between the pool and this host's tier `tier` at t_ns: OP_MOVE ops (the
        tier index in `key`, the direction in `shared`), of at most MAX_BLOCK_BYTES each since a
        move's bytes travel in an op's nbytes. Nothing when the hosts do not share traffic."""
        while nbytes > 0 and self.shares_traffic:
            part = min(nbytes, MAX_BLOCK_BYTES)
            self.ops.append(PoolOp(t_ns, self.host, self._seq, OP_MOVE, tier, part, to_pool))
            self._seq += 1
            nbytes -= part

    @property
    def lazy(self) -> bool:
        """Whether a delta was given whose changes are not applied yet, or its release has not
        come (settle applies them)."""
        return self._lazy is not None or self._release_source is not None

    @property
    def release_pending(self) -> bool:
        """Whether the release awaited (await_release) has not been fetched yet: the host has
        not looked at the pool since it handed in."""
        return self._release_source is not None

    def await_release(self, source) -> None:
        """The host runs ahead of its release: `source()` brings it (a PoolDelta or LazyDelta),
        which the side fetches and applies when it must look at the pool (settle), or when
        `take_release` asks for it."""
        self._release_source = source

    def take_release(self) -> PoolDelta | LazyDelta:
        """The release awaited (fetched now if the host has not needed it yet)."""
        if self._release_source is not None:
            self._fetch_release()
        released, self._released = self._released, None
        return released

    def _fetch_release(self) -> None:
        source, self._release_source = self._release_source, None
        self._released = source()
        self.apply(self._released)

    def take_traffic(self) -> list[Traffic]:
        """The other hosts' moves received so far (the delta a LazyDelta brings included), in
        order; they are the caller's to take in."""
        if self.lazy:
            self.settle()
        traffic = list(self._from_others())
        self.traffic_in = []
        self._taken_bytes += sum(tr.nbytes for tr in traffic)
        return traffic

    @property
    def taken_in_bytes(self) -> int:
        """The other hosts' moved bytes this host received, taken in or not yet."""
        return self._taken_bytes + sum(tr.nbytes for tr in self._from_others())

    def _from_others(self):
        """The other hosts' moves in traffic_in, in order."""
        me = self.host
        return (tr for part in self.traffic_in for tr in part if tr.host != me)

    def take_ops(self) -> list[PoolOp]:
        if self.lazy:
            self.settle()                # the last barrier's changes go in before the next
        ops, self.ops = self.ops, []
        return ops

    def apply(self, delta: PoolDelta | LazyDelta) -> None:
        if self._lazy is not None:       # deltas go in in order
            self.settle()
        if isinstance(delta, LazyDelta):
            self._lazy = delta
            return
        self.mirror.difference_update(delta.removed)
        self.mirror.update(delta.added)
        self.rejected += sum(1 for host, _, _ in delta.rejected if host == self.host)
        if delta.traffic:
            self.traffic_in.append(delta.traffic)

    def settle(self) -> None:
        """Apply a LazyDelta given to apply(), once its pool changes are in (waits for them),
        after fetching the release awaited, if any."""
        if self._release_source is not None:
            self._fetch_release()
        lazy, self._lazy = self._lazy, None
        if lazy is not None:
            self.apply(lazy.result())
