"""Coherence directory for blocks several hosts share (CXL 3.x back-invalidation).

Costs come from the fabric. A link's or switch's latency in a topology is what a load crossing it
adds, request and response together, so the device<->host path latency is already a round trip.
Back-invalidating host h's copy takes that round trip plus an assumed fixed handling time; a read
of a block another host modified waits for the round trip to the modifier, the same handling time,
and one more one-way trip (half the round trip) for its write-back to reach the device. Nothing measured is public for either handling time: both are explicit
assumptions (docs/model.md) and reported as such.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import _core
from ._core import ffi, lib
from .errors import ConfigError
from .fabric import Fabric

#: assumed device-side handling of one back-invalidation / snoop (no public measurement exists)
DEFAULT_BI_HANDLING_NS = 100.0


@dataclass(frozen=True)
class CoherenceStats:
    reads: int
    writes: int
    invalidations: int
    bi_events: int
    snoops: int
    bi_ns: float
    snoop_ns: float
    tracked: int


class Coherence:
    """Sharer directory over the hosts of a fabric, for blocks held in `memory`."""

    def __init__(self, fabric: Fabric, memory: str, hosts: list[str] | None = None,
                 bi_handling_ns: float = DEFAULT_BI_HANDLING_NS):
        self.hosts = list(hosts or [h.name for h in fabric.topology.hosts])
        topo = fabric.topology
        sets = {i.name for i in topo.interleaves}
        if memory not in sets and memory not in {m.name for m in topo.memories}:
            known = [*sorted(sets), *(m.name for m in topo.memories)]
            raise ConfigError(f"{topo.origin}: no memory or interleave set named {memory!r} "
                              f"(known: {', '.join(known)})")
        device = topo.interleave(memory).members[0] if memory in sets else memory
        bi, snoop = [], []
        for host in self.hosts:
            round_trip = fabric.path_latency_ns(device, host)
            bi.append(round_trip + bi_handling_ns)
            snoop.append(1.5 * round_trip + bi_handling_ns)
        self.bi_ns, self.snoop_ns = bi, snoop
        self._h = _core.new_handle(lib.cxl_coh_new, lib.cxl_coh_free, len(self.hosts),
                                   ffi.new("double[]", bi), ffi.new("double[]", snoop))
        self._out = ffi.new("double *")

    def host_id(self, host) -> int:
        return host if isinstance(host, int) else self.hosts.index(host)

    def read(self, key: int, host) -> float:
        """Extra ns a read by host waits (snoop + write-back if another host modified it)."""
        _core.check(lib.cxl_coh_read(self._h, key, self.host_id(host), self._out))
        return self._out[0]

    def write(self, key: int, host) -> float:
        """Extra ns a write by host waits for back-invalidating the other sharers."""
        _core.check(lib.cxl_coh_write(self._h, key, self.host_id(host), self._out))
        return self._out[0]

    def drop(self, key: int, host) -> None:
        _core.check(lib.cxl_coh_drop(self._h, key, self.host_id(host)))

    def forget(self, key: int) -> None:
        _core.check(lib.cxl_coh_forget(self._h, key))

    def state(self, key: int) -> tuple[set[int], int]:
        """(sharer host ids, modifying host id or -1)."""
        sharers, mod = ffi.new("uint64_t *"), ffi.new("int32_t *")
        _core.check(lib.cxl_coh_state(self._h, key, sharers, mod))
        return {h for h in range(len(self.hosts)) if sharers[0] >> h & 1}, mod[0]

    def stats(self) -> CoherenceStats:
        out = ffi.new("cxl_coh_stats *")
        lib.cxl_coh_stats_get(self._h, out)
        return CoherenceStats(out.reads, out.writes, out.invalidations, out.bi_events,
                              out.snoops, out.bi_ns, out.snoop_ns, out.tracked)
