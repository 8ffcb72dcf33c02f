"""MLC-style measurements on the model, as Intel Memory Latency Checker reports them on hardware.

idle_matrix: unloaded latency of a 64-byte read from every host to every memory and interleave set.
loaded_curve: a closed loop of `threads` issuers, each with one 64-byte access in flight, injects
with a delay between accesses; sweeping the delay from long to zero traces bandwidth (GB/s)
against mean latency (ns) up to saturation, like `mlc --loaded_latency`.
"""
from __future__ import annotations

import math

from .errors import ConfigError
from .fabric import Fabric, Unreachable

ACCESS_BYTES = 64


def idle_matrix(fabric: Fabric) -> dict:
    """{"hosts": [...], "memories": [...], "latency_ns": [[ns or None per memory] per host]}."""
    topo = fabric.topology
    memories = [m.name for m in topo.memories] + [i.name for i in topo.interleaves]
    rows = []
    for host in topo.hosts:
        row = []
        for mem in memories:
            try:
                row.append(fabric.idle_latency(mem, host.name, ACCESS_BYTES))
            except Unreachable:
                row.append(None)
        rows.append(row)
    return {"hosts": [h.name for h in topo.hosts], "memories": memories, "latency_ns": rows}


def loaded_curve(fabric: Fabric, host: str, memory: str, read_ratio: float = 1.0,
                 points: int = 12, accesses: int = 100_000) -> list[dict]:
    """Points of (delay_ns, bandwidth_gbps, latency_ns), from light load to saturation."""
    if not 0.0 <= read_ratio <= 1.0:
        raise ConfigError(f"--read-ratio must be between 0 and 1, got {read_ratio}")
    if points < 2:
        raise ConfigError(f"--points must be at least 2, got {points}")
    idle = fabric.idle_latency(memory, host, ACCESS_BYTES)
    # enough issuers to saturate (Little's law) even at the highest loaded latency the model can
    # give: the idle latency plus 19 x queue_ns (u capped at 0.95) of every memory and link
    upper_gbps = max(m.bandwidth_gbps for m in fabric.topology.memories)
    worst = idle + 19 * (sum(m.queue_ns for m in fabric.topology.memories)
                         + sum(link.queue_ns for link in fabric.topology.links))
    threads = max(16, math.ceil(1.2 * upper_gbps * worst / ACCESS_BYTES))
    _, peak = fabric.closed_loop(host, memory, read_ratio, threads, 0.0, ACCESS_BYTES, accesses)
    curve = []
    for i in range(points):
        # injection rates spread from 5% of the saturated bandwidth up to it
        target = peak * (0.05 + 0.95 * i / (points - 1))
        delay = max(0.0, threads * ACCESS_BYTES / target - idle)
        lat, bw = fabric.closed_loop(host, memory, read_ratio, threads, delay, ACCESS_BYTES,
                                     accesses)
        curve.append({"delay_ns": delay, "bandwidth_gbps": bw, "latency_ns": lat})
    fabric.reset()
    return curve
