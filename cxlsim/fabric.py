"""The fabric: a Topology compiled into C resources and routes, with a transfer API.

Resources: one per memory (its media, shared by reads and writes, writes slowed by the read/write
bandwidth ratio) and one per direction of every link (links are full duplex). A route between
two endpoints (hosts, memories or interleave sets) is the lowest-latency path through switches;
a path may pass through a host only where that host is an end of the transfer or the host a
memory hangs off (accelerator HBM, local DRAM). When a transfer involves several hosts (host0
reading host1's DRAM) they must be joined by a direct link, as sockets of one machine are: a CXL
switch gives no host access to another host's private memory, so such pairs are Unreachable.

Times are virtual ns, sizes bytes, bandwidths GB/s (= bytes/ns). See docs/model.md.
"""
from __future__ import annotations

import heapq
import weakref
from dataclasses import dataclass

import numpy as np

from . import _core
from ._core import ffi, lib
from .errors import ConfigError


class Unreachable(ConfigError):
    """No route joins the two endpoints (e.g. another host's private DRAM across a switch)."""
from .topology import Interleave, Memory, Topology


@dataclass(frozen=True)
class ResourceStats:
    name: str
    bytes: float
    busy_ns: float
    energy_pj: float
    free_at_ns: float
    transfers: int


@dataclass(frozen=True)
class _Path:
    links: tuple[tuple[str, str], ...]  # directed hops
    latency_ns: float                   # link and switch latency, no media


# node paths by topology: they depend on it alone, and a multi-host replay builds a fabric per host
_PATHS: "weakref.WeakKeyDictionary[Topology, dict]" = weakref.WeakKeyDictionary()


class Fabric:
    """Timing model of one topology. Not thread-safe; one per simulation."""

    def __init__(self, topology: Topology):
        self.topology = topology
        self._h = _core.new_handle(lib.cxl_fabric_new, lib.cxl_fabric_free,
                                   topology.util_window_ns)
        self.resource_names: list[str] = []
        self._media: dict[str, int] = {}
        self._link_res: dict[tuple[str, str], int] = {}
        self._routes: dict[tuple[str, str], int] = {}
        self._route_info: dict[tuple[str, str], dict] = {}
        self._route_ends: dict[int, tuple[str, str]] = {}     # route id -> (src, dst)
        self._adj: dict[str, list[tuple[str, float]]] = {n: [] for n in topology.node_names}
        self._hop = {s.name: s.hop_latency_ns for s in topology.switches}
        self._homes: dict[str, set[str]] = {m.name: set() for m in topology.memories}
        host_names = {h.name for h in topology.hosts}
        for mem in topology.memories:
            self._media[mem.name] = self._add_resource(
                f"media {mem.name}", mem.bandwidth_gbps, mem.queue_ns, mem.pj_per_bit)
        for link in topology.links:
            for a, b in ((link.a, link.b), (link.b, link.a)):
                self._link_res[(a, b)] = self._add_resource(
                    f"link {a}->{b}", link.bandwidth_gbps or 0.0, link.queue_ns, link.pj_per_bit)
                self._adj[a].append((b, link.latency_ns))
                if a in host_names and b in self._homes:
                    self._homes[b].add(a)
        # only a memory private to one host has a home; a multi-headed device belongs to none
        self._homes = {m: hs if len(hs) == 1 else set() for m, hs in self._homes.items()}
        self._paths: dict[tuple[str, str], _Path] = _PATHS.setdefault(topology, {})

    def _add_resource(self, name: str, bw: float, queue_ns: float, pj: float) -> int:
        out = ffi.new("int32_t *")
        _core.check(lib.cxl_fabric_add_resource(self._h, bw, queue_ns, pj, out))
        self.resource_names.append(name)
        return out[0]

    # ------------------------------------------------------------------ routing

    def _path(self, src: str, dst: str) -> _Path:
        path = self._paths.get((src, dst))
        if path is None:
            path = self._paths[(src, dst)] = self._find_path(src, dst)
        return path

    def _find_path(self, src: str, dst: str) -> _Path:
        """Lowest-latency node path from src to dst (Dijkstra; ties broken by name order)."""
        hosts = {h.name for h in self.topology.hosts}
        allowed_hosts = ({src, dst} & hosts) | self._homes.get(src, set()) | self._homes.get(dst, set())
        for a in allowed_hosts:
            for b in allowed_hosts:
                if a < b and not any(n == b for n, _ in self._adj[a]):
                    raise Unreachable(f"{self.topology.origin}: {src!r} and {dst!r} are not joined: "
                                      f"hosts {a!r} and {b!r} share no direct link")
        best = {src: 0.0}
        prev: dict[str, str] = {}
        heap = [(0.0, src)]
        while heap:
            d, node = heapq.heappop(heap)
            if node == dst:
                break
            if d > best[node]:
                continue
            if node != src and (node in self._media or (node in hosts and node not in allowed_hosts)):
                continue  # memories are never transit; third hosts neither
            for nxt, lat in sorted(self._adj[node]):
                nd = d + lat + self._hop.get(nxt, 0.0)
                if nd < best.get(nxt, float("inf")):
                    best[nxt], prev[nxt] = nd, node
                    heapq.heappush(heap, (nd, nxt))
        if dst not in best:
            raise Unreachable(f"{self.topology.origin}: no path from {src!r} to {dst!r}")
        hops, node = [], dst
        while node != src:
            hops.append((prev[node], node))
            node = prev[node]
        return _Path(tuple(reversed(hops)), best[dst])

    def _endpoint(self, name: str) -> tuple[list[str], int, Interleave | None]:
        """(member memories or [name], granularity, interleave) for an endpoint name."""
        for il in self.topology.interleaves:
            if il.name == name:
                return list(il.members), il.granularity, il
        if name not in self._adj:
            raise ConfigError(f"{self.topology.origin}: unknown endpoint {name!r} (endpoints: "
                              f"{', '.join(self.topology.endpoint_names())})")
        return [name], 0, None

    def route(self, src: str, dst: str) -> int:
        """Route id for data flowing from src to dst (host, memory or interleave set)."""
        key = (src, dst)
        if key in self._routes:
            return self._routes[key]
        if src == dst:
            raise ConfigError(f"a transfer needs two different endpoints, got {src!r} twice")
        src_members, sg, s_il = self._endpoint(src)
        dst_members, dg, d_il = self._endpoint(dst)
        if s_il and d_il:
            raise ConfigError(f"transfers between two interleave sets ({src}, {dst}) are not modelled")
        interleaved, gran = (src_members, sg) if s_il else (dst_members, dg)
        fixed = dst_members[0] if s_il else src_members[0]
        mem = {m.name: m for m in self.topology.memories}

        ways = []  # per way: list of (resource, slowdown), latency
        for member in interleaved:
            a, b = (member, fixed) if s_il else (fixed, member)
            path = self._path(a, b)
            res = [(self._link_res[h], 1.0) for h in path.links]
            lat = path.latency_ns
            if b in mem:  # writing into a memory
                m = mem[b]
                res.append((self._media[b], m.bandwidth_gbps / m.write_bandwidth_gbps))
                lat += m.write_latency_ns
            if a in mem:  # reading out of a memory
                res.append((self._media[a], 1.0))
                lat += mem[a].read_latency_ns
            ways.append((res, lat))

        # resources every way crosses carry all the bytes; the rest only their way's share
        common = set.intersection(*(set(r for r, _ in res) for res, _ in ways))
        entries = [(r, -1, s) for r, s in ways[0][0] if r in common]
        entries += [(r, w, s) for w, (res, _) in enumerate(ways) for r, s in res if r not in common]
        n = len(entries)
        res_arr = ffi.new("int32_t[]", [e[0] for e in entries])
        way_arr = ffi.new("int32_t[]", [e[1] for e in entries])
        slow_arr = ffi.new("double[]", [e[2] for e in entries])
        lat_arr = ffi.new("double[]", [lat for _, lat in ways])
        out = ffi.new("int32_t *")
        _core.check(lib.cxl_fabric_add_route(self._h, n, res_arr, way_arr, slow_arr, len(ways),
                                             lat_arr, 0.0, gran, out))
        self._routes[key] = out[0]
        self._route_info[key] = {"resources": [self.resource_names[e[0]] for e in entries],
                                 "way_latency_ns": [lat for _, lat in ways]}
        self._route_ends[out[0]] = key
        return out[0]

    def route_resources(self, src: str, dst: str) -> list[str]:
        """Names of the resources a src -> dst transfer crosses (for reports and tests)."""
        self.route(src, dst)
        return list(self._route_info[(src, dst)]["resources"])

    def resources_of_route(self, route: int) -> list[str]:
        """route_resources of a route id this fabric gave out."""
        return self.route_resources(*self._route_ends[route])

    def path_latency_ns(self, a: str, b: str) -> float:
        """Link + switch latency between two nodes, no media: what a load adds crossing them
        (request and response together, as topology latencies are calibrated)."""
        return self._path(a, b).latency_ns

    # ------------------------------------------------------------------ timing

    def transfer(self, src: str, dst: str, nbytes: int, t_ns: float, addr: int = 0) -> float:
        """Completion time (ns) of nbytes moving src -> dst, starting at t_ns."""
        return self.transfer_route(self.route(src, dst), nbytes, t_ns, addr)[0]

    def transfer_route(self, route: int, nbytes: int, t_ns: float, addr: int = 0
                       ) -> tuple[float, float]:
        """(completion ns, energy pJ) of one transfer on a route id."""
        if nbytes < 0 or addr < 0:
            raise ValueError(f"bytes and address must be >= 0, got {nbytes} and {addr}")
        done, pj = ffi.new("double *"), ffi.new("double *")
        _core.check(lib.cxl_fabric_transfer(self._h, route, addr, nbytes, t_ns, done, pj))
        return done[0], pj[0]

    def transfer_batch(self, routes, nbytes, t_ns, addr=None, with_energy: bool = False):
        """Completion times for arrays of transfers, processed in order, with no Python per item.

        routes: int32 route ids; nbytes: uint64; t_ns: float64 start times; addr: uint64 or None.
        Returns done_ns (and energy_pj when with_energy)."""
        routes = _core.as_array(routes, np.int32)
        n = len(routes)
        sizes = _core.as_array(np.broadcast_to(nbytes, (n,)), np.uint64)
        starts = _core.as_array(np.broadcast_to(t_ns, (n,)), np.float64)
        addrs = None if addr is None else _core.as_array(np.broadcast_to(addr, (n,)), np.uint64)
        done = np.empty(n, np.float64)
        energy = np.empty(n, np.float64) if with_energy else None
        _core.check(lib.cxl_fabric_transfer_batch(
            self._h, _core.ptr(routes, "int32_t"),
            ffi.NULL if addrs is None else _core.ptr(addrs, "uint64_t"),
            _core.ptr(sizes, "uint64_t"), _core.ptr(starts, "double"), _core.ptr(done, "double"),
            ffi.NULL if energy is None else _core.ptr(energy, "double"), n))
        return (done, energy) if with_energy else done

    def background_batch(self, routes, nbytes, t_ns) -> None:
        """Other hosts' transfers (a multi-host replay takes them in after a barrier), in order:
        they queue on each resource's background timeline, which this fabric's own transfers
        then wait for, add their busy time to the utilization windows, and count in no statistic
        (docs/model.md, Background transfers). routes, nbytes, t_ns: sequences of one length (a
        few per barrier; no numpy round trip)."""
        n = len(routes)
        if not len(nbytes) == len(t_ns) == n:
            raise ValueError(f"background_batch: {n} routes, {len(nbytes)} sizes and "
                             f"{len(t_ns)} start times")
        _core.check(lib.cxl_fabric_background_batch(
            self._h, ffi.new("int32_t[]", list(routes)), ffi.NULL,
            ffi.new("uint64_t[]", list(nbytes)), ffi.new("double[]", list(t_ns)), n))

    def idle_latency(self, src: str, dst: str, nbytes: int = 64, addr: int = 0) -> float:
        """Unloaded latency (ns) of an access of nbytes from src to dst."""
        out = ffi.new("double *")
        _core.check(lib.cxl_fabric_idle_latency(self._h, self.route(src, dst), addr, nbytes, out))
        return out[0]

    def closed_loop(self, host: str, memory: str, read_ratio: float, threads: int,
                    delay_ns: float, access_bytes: int = 64, accesses: int = 200_000
                    ) -> tuple[float, float]:
        """MLC-style loaded point: (mean latency ns, bandwidth GB/s). Resets the fabric first."""
        read_route, write_route = self.route(memory, host), self.route(host, memory)
        lat, bw = ffi.new("double *"), ffi.new("double *")
        self.reset()
        _core.check(lib.cxl_fabric_closed_loop(self._h, read_route, write_route, read_ratio,
                                               threads, delay_ns, access_bytes, accesses, lat, bw))
        return lat[0], bw[0]

    def stats(self) -> list[ResourceStats]:
        out = ffi.new("cxl_resource_stats *")
        result = []
        for i, name in enumerate(self.resource_names):
            _core.check(lib.cxl_fabric_resource_stats(self._h, i, out))
            result.append(ResourceStats(name, out.bytes, out.busy_ns, out.energy_pj,
                                        out.free_at_ns, out.transfers))
        return result

    def reset(self) -> None:
        """Clear timelines and counters; the topology and routes stay."""
        lib.cxl_fabric_reset(self._h)

    def memory(self, name: str) -> Memory:
        return self.topology.memory(name)
