"""Topology description: hosts, memories, switches, links and interleave sets, loaded from TOML.

A topology is plain validated data; fabric.py turns it into C resources and routes. Every error
names the file, the element and the field, e.g.
`cxl.toml: [[memory]] #2 'cxl0': read_latency_ns: must be a number >= 0, got -5`.
The schema is documented in docs/model.md; presets live in cxlsim/presets/topologies/.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError
from .tomlfile import read_toml

PRESET_DIR = Path(__file__).resolve().parent / "presets" / "topologies"
MEMORY_KINDS = ("dram", "cxl", "hbm")
GIB = 1 << 30


@dataclass(frozen=True)
class Host:
    name: str
    source: str = ""


@dataclass(frozen=True)
class Memory:
    name: str
    kind: str
    capacity_bytes: int
    read_latency_ns: float
    write_latency_ns: float
    bandwidth_gbps: float
    write_bandwidth_gbps: float
    queue_ns: float = 0.0
    pj_per_bit: float = 0.0
    source: str = ""
    assumptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Switch:
    name: str
    hop_latency_ns: float
    source: str = ""
    assumptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    bandwidth_gbps: float | None  # per direction; None: never a bottleneck
    latency_ns: float
    queue_ns: float = 0.0
    pj_per_bit: float = 0.0
    source: str = ""
    assumptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Interleave:
    name: str
    members: tuple[str, ...]
    granularity: int


@dataclass(frozen=True)
class Topology:
    name: str
    description: str = ""
    util_window_ns: float = 1000.0
    hosts: tuple[Host, ...] = ()
    memories: tuple[Memory, ...] = ()
    switches: tuple[Switch, ...] = ()
    links: tuple[Link, ...] = ()
    interleaves: tuple[Interleave, ...] = ()
    origin: str = field(default="<memory>", compare=False)

    def host(self, name: str) -> Host:
        return _by_name(self.hosts, name, "host", self.origin)

    def memory(self, name: str) -> Memory:
        return _by_name(self.memories, name, "memory", self.origin)

    def interleave(self, name: str) -> Interleave:
        return _by_name(self.interleaves, name, "interleave set", self.origin)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in (*self.hosts, *self.memories, *self.switches)]

    def endpoint_names(self) -> list[str]:
        return [n.name for n in (*self.hosts, *self.memories, *self.interleaves)]

    def assumptions(self) -> list[str]:
        """One line per element whose parameters are assumptions rather than measurements."""
        out = [f"{item.name}: {', '.join(item.assumptions)}"
               for item in (*self.memories, *self.switches) if item.assumptions]
        out += [f"link {link.a}-{link.b}: {', '.join(link.assumptions)}"
                for link in self.links if link.assumptions]
        return out

    def with_memory(self, memory: Memory, link: Link) -> "Topology":
        """A copy with one more memory attached by one more link (used to add accelerator HBM)."""
        topo = replace(self, memories=(*self.memories, memory), links=(*self.links, link))
        _check_graph(topo)
        return topo


def _by_name(items, name, what, origin):
    for item in items:
        if item.name == name:
            return item
    known = ", ".join(i.name for i in items) or "none"
    raise ConfigError(f"{origin}: no {what} named {name!r} (known: {known})")


# ----------------------------------------------------------------------------- validation

class _Fields:
    """Reads one TOML table, naming the place on every error and rejecting unknown keys."""

    def __init__(self, origin: str, where: str, table: dict, allowed: set[str]):
        self.origin, self.where, self.table = origin, where, table
        if not isinstance(table, dict):
            self.fail("", f"expected a table, got {type(table).__name__}")
        unknown = sorted(set(table) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def fail(self, key: str, problem: str):
        place = f"{self.where}: {key}" if key else self.where
        raise ConfigError(f"{self.origin}: {place}: {problem}")

    def str(self, key: str, default: str | None = None) -> str:
        value = self.table.get(key, default)
        if value is None:
            self.fail(key, "missing")
        if not isinstance(value, str) or (default is None and not value):
            self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def num(self, key: str, default: float | None = None, minimum: float = 0.0,
            positive: bool = False) -> float:
        value = self.table.get(key, default)
        if value is None:
            self.fail(key, "missing")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < minimum or (positive and value <= 0):
            bound = "> 0" if positive else f">= {minimum:g}"
            self.fail(key, f"must be a number {bound}, got {value!r}")
        return float(value)

    def names(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"must be a list of strings, got {value!r}")
        return tuple(value)


_COMMON = {"source", "assumptions"}
_MEMORY_KEYS = {"name", "kind", "capacity_gib", "read_latency_ns", "write_latency_ns",
                "bandwidth_gbps", "write_bandwidth_gbps", "queue_ns", "pj_per_bit"} | _COMMON
_SWITCH_KEYS = {"name", "hop_latency_ns"} | _COMMON
_LINK_KEYS = {"ends", "bandwidth_gbps", "latency_ns", "queue_ns", "pj_per_bit"} | _COMMON


def _check_assumptions(f: _Fields, keys: set[str]) -> tuple[str, ...]:
    names = f.names("assumptions")
    for n in names:
        if n not in keys:
            f.fail("assumptions", f"{n!r} is not a parameter of this element")
    return names


def _parse_memory(f: _Fields) -> Memory:
    kind = f.str("kind")
    if kind not in MEMORY_KINDS:
        f.fail("kind", f"must be one of {', '.join(MEMORY_KINDS)}, got {kind!r}")
    bw = f.num("bandwidth_gbps", positive=True)
    read_lat = f.num("read_latency_ns")
    return Memory(
        name=f.str("name"), kind=kind,
        capacity_bytes=int(f.num("capacity_gib", positive=True) * GIB),
        read_latency_ns=read_lat,
        write_latency_ns=f.num("write_latency_ns", default=read_lat),
        bandwidth_gbps=bw,
        write_bandwidth_gbps=f.num("write_bandwidth_gbps", default=bw, positive=True),
        queue_ns=f.num("queue_ns", default=0.0), pj_per_bit=f.num("pj_per_bit", default=0.0),
        source=f.str("source", default=""), assumptions=_check_assumptions(f, _MEMORY_KEYS),
    )


def _parse_link(f: _Fields) -> Link:
    ends = f.table.get("ends")
    if (not isinstance(ends, list) or len(ends) != 2 or not all(isinstance(e, str) for e in ends)
            or ends[0] == ends[1]):
        f.fail("ends", f"must be two different node names, got {ends!r}")
    bw = None if "bandwidth_gbps" not in f.table else f.num("bandwidth_gbps", positive=True)
    return Link(a=ends[0], b=ends[1], bandwidth_gbps=bw, latency_ns=f.num("latency_ns"),
                queue_ns=f.num("queue_ns", default=0.0), pj_per_bit=f.num("pj_per_bit", default=0.0),
                source=f.str("source", default=""), assumptions=_check_assumptions(f, _LINK_KEYS))


def parse_topology(data: dict, origin: str = "<memory>") -> Topology:
    """Validate a TOML-shaped dict into a Topology; errors name `origin` and the field."""
    top = _Fields(origin, "top level", data,
                  {"topology", "host", "memory", "switch", "link", "interleave"})
    head = _Fields(origin, "[topology]", data.get("topology", {}),
                   {"name", "description", "util_window_ns"})

    def items(key):
        value = data.get(key, [])
        if not isinstance(value, list):
            top.fail(key, f"must be an array of tables ([[{key}]])")
        return value

    def where(key, i, t):
        name = t.get("name") if isinstance(t, dict) else None
        return f"[[{key}]] #{i + 1}" + (f" {name!r}" if isinstance(name, str) else "")

    hosts = []
    for i, t in enumerate(items("host")):
        f = _Fields(origin, where("host", i, t), t, {"name", "source"})
        hosts.append(Host(name=f.str("name"), source=f.str("source", default="")))
    hosts = tuple(hosts)
    memories = tuple(_parse_memory(_Fields(origin, where("memory", i, t), t, _MEMORY_KEYS))
                     for i, t in enumerate(items("memory")))
    switches = []
    for i, t in enumerate(items("switch")):
        f = _Fields(origin, where("switch", i, t), t, _SWITCH_KEYS)
        switches.append(Switch(name=f.str("name"), hop_latency_ns=f.num("hop_latency_ns"),
                               source=f.str("source", default=""),
                               assumptions=_check_assumptions(f, _SWITCH_KEYS)))
    links = tuple(_parse_link(_Fields(origin, f"[[link]] #{i + 1}", t, _LINK_KEYS))
                  for i, t in enumerate(items("link")))
    interleaves = []
    for i, t in enumerate(items("interleave")):
        f = _Fields(origin, where("interleave", i, t), t, {"name", "members", "granularity"})
        members = f.names("members")
        if len(members) < 2 or len(set(members)) != len(members):
            f.fail("members", f"must name at least two different memories, got {list(members)}")
        gran = f.num("granularity", positive=True)
        if gran != int(gran) or int(gran) & (int(gran) - 1):
            f.fail("granularity", f"must be a power of two in bytes, got {gran:g}")
        interleaves.append(Interleave(name=f.str("name"), members=members, granularity=int(gran)))
    topo = Topology(
        name=head.str("name", default=Path(origin).stem), description=head.str("description", default=""),
        util_window_ns=head.num("util_window_ns", default=1000.0, positive=True),
        hosts=hosts, memories=memories, switches=tuple(switches), links=links,
        interleaves=tuple(interleaves), origin=origin,
    )
    _check_graph(topo)
    return topo


def _check_graph(topo: Topology) -> None:
    origin = topo.origin
    if not topo.hosts:
        raise ConfigError(f"{origin}: a topology needs at least one [[host]]")
    seen: dict[str, str] = {}
    for kind, group in (("host", topo.hosts), ("memory", topo.memories), ("switch", topo.switches),
                        ("interleave", topo.interleaves)):
        for item in group:
            if item.name in seen:
                raise ConfigError(f"{origin}: [[{kind}]] {item.name!r}: name: already used by a "
                                  f"{seen[item.name]}")
            seen[item.name] = kind
    pairs = set()
    for i, link in enumerate(topo.links):
        for end in (link.a, link.b):
            if seen.get(end) in (None, "interleave"):
                raise ConfigError(f"{origin}: [[link]] #{i + 1}: ends: {end!r} is not a host, "
                                  f"memory or switch")
        pair = frozenset((link.a, link.b))
        if pair in pairs:
            raise ConfigError(f"{origin}: [[link]] #{i + 1}: ends: {link.a}-{link.b} is linked twice")
        pairs.add(pair)
    linked = {e for link in topo.links for e in (link.a, link.b)}
    for mem in topo.memories:
        if mem.name not in linked:
            raise ConfigError(f"{origin}: [[memory]] {mem.name!r}: not connected by any [[link]]")
    for il in topo.interleaves:
        for m in il.members:
            if seen.get(m) != "memory":
                raise ConfigError(f"{origin}: [[interleave]] {il.name!r}: members: {m!r} is not a "
                                  f"memory")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_topology(name_or_path: str | Path) -> Topology:
    """Load a preset by name (see preset_names()) or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = PRESET_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ConfigError(f"no topology preset named {str(name_or_path)!r} "
                              f"(presets: {', '.join(preset_names())}; or give a .toml path)")
    return parse_topology(read_toml(path, "topology file"), origin=str(path))
