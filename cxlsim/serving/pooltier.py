"""A host's view of the shared CXL pool during a multi-host replay (the quantum barrier of
cxlsim/pool/api.py).

During a quantum the host reads `mirror`, the pool's key set as of the last barrier, and buffers
what it does to the pool as PoolOps: a put when a block leaves its last local tier, a touch when it
reuses a pool block. At the barrier the ops go to the pool (in-process or a server); every host gets
the same delta back and updates its mirror. A block the host put becomes visible, to it and to
everyone else, at the next barrier, so no host's view depends on another host's progress inside a
quantum.
"""
from __future__ import annotations

from ..pool.api import OP_PUT, OP_TOUCH, PoolDelta, PoolOp


class PoolSide:
    """Host `host`'s mirror of the pool and its buffered ops."""

    def __init__(self, host: int, endpoint: str, capacity_bytes: int):
        self.host = host
        self.endpoint = endpoint            # fabric endpoint of the pool (an interleave set)
        self.capacity_bytes = capacity_bytes
        self.mirror: set[int] = set()
        self.ops: list[PoolOp] = []
        self._seq = 0
        self.puts = self.touches = 0
        self.rejected = 0

    def __contains__(self, key: int) -> bool:
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

    def take_ops(self) -> list[PoolOp]:
        ops, self.ops = self.ops, []
        return ops

    def apply(self, delta: PoolDelta) -> None:
        self.mirror.difference_update(delta.removed)
        self.mirror.update(delta.added)
        self.rejected += sum(1 for host, _, _ in delta.rejected if host == self.host)
