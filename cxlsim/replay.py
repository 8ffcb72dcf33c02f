"""`cxlsim replay`: configuration, wiring of one replay, and its output files.

A replay = a trace + a model on tp accelerators per host + a topology (host DRAM, CXL pool) + a
policy. This module builds the pieces (hardware presets, fabric with each host's HBM attached,
KV tiers, serving hosts), runs them and writes DIR/summary.json, DIR/requests.csv and plots.
The serving model itself lives in cxlsim/serving/; docs/replay.md explains it.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import ConfigError, PoolError
from .fabric import Fabric
from .hardware import load_accelerator, load_model
from .policies import make_policy
from .serving.cost import DEFAULT_MBU, DEFAULT_MFU, DEFAULT_RESERVE, Deployment, default_tp
from .serving.host import RequestLog, ServingHost
from .serving.kvtiers import Tier, TieredKV
from .serving.metrics import (CSV_COLUMNS, fabric_summary, latency_summary, percentiles,
                              request_table)
from .serving.pooltier import PoolSide
from .serving.scheduler import DEFAULT_MAX_BATCH, DEFAULT_TOKEN_BUDGET, SchedulerConfig
from .tomlfile import read_toml
from .topology import GIB, Link, Memory, load_topology
from .traces import open_trace, trace_arrays

#: PCIe link energy [?]: ~6 pJ/bit quoted for PCIe 4.0 in the introduction of Sun et al.,
#: "Demystifying CXL Memory ...", MICRO'23 (arXiv 2303.15375); the topology presets use the same.
PCIE_PJ_PER_BIT = 6.0
#: [assumption] an idle accelerator draws this share of its board power (no cited figure).
DEFAULT_IDLE_POWER_FRACTION = 0.1
ASSIGN_RULES = ("round-robin", "session", "prefix")


@dataclass(frozen=True)
class ReplayConfig:
    """Every setting of a replay; the [replay] table of a config file has the same keys."""
    trace: str = ""
    model: str = "llama-3-70b"
    accel: str = "h100-sxm"
    topology: str = "kv-tiered"
    policy: str = "demote-on-evict"
    tp: int = 0                          # 0: default_tp(model, accel)
    dram_gib: float | None = None        # KV capacity in host DRAM (None: the whole memory)
    cxl_gib: float | None = None         # KV capacity in the CXL pool (None: all its devices)
    hosts: int = 1
    assign: str = "round-robin"
    quantum_us: float = 1000.0
    contention: bool = True              # multi-host: hosts' pool traffic shares the pool's links
    token_budget: int = DEFAULT_TOKEN_BUDGET
    max_batch: int = DEFAULT_MAX_BATCH
    overlap: bool = True
    mfu: float = DEFAULT_MFU
    mbu: float = DEFAULT_MBU
    reserve: float = DEFAULT_RESERVE
    idle_power_fraction: float = DEFAULT_IDLE_POWER_FRACTION
    format: str = "auto"
    block_tokens: int = 0                # 0: the reader's default (Mooncake/Azure 512, token ids 16)
    prefix_model: str = "none"           # Azure traces: see cxlsim.traces.PREFIX_MODELS
    max_requests: int = 0                # 0: the whole trace
    time_scale: float = 1.0              # arrival times x this (2 = half the request rate)
    sample_ms: float = 1000.0            # tier-occupancy sampling period for plots
    label: str = ""

    def with_overrides(self, **kw) -> "ReplayConfig":
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    def job_tag(self, trace: dict) -> str:
        """What the host processes of one multi-host replay must share, hashed: every setting
        that shapes the results, the model, accelerator and topology as loaded (a path names a
        file whose contents may differ between machines), and `trace` as read (read_trace). The
        trace's path, the label, and the settings that only shape how the trace is read (which
        its arrays then show) are left out, so hosts that read the same requests agree however
        they name or read them. The pool server refuses a host whose tag differs from the
        others' (PoolClient.attach)."""
        digest = hashlib.sha256()
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IN_TAG}
        # (its path, and a name that may come from the file's name, are not results)
        topology = dataclasses.replace(load_topology(self.topology), origin="", name="")
        settings.update(model=repr(load_model(self.model)), accel=repr(load_accelerator(self.accel)),
                        topology=repr(topology))
        digest.update(json.dumps(settings, sort_keys=True).encode())
        for name in sorted(trace):
            column = np.ascontiguousarray(trace[name])
            digest.update(f"{name} {column.dtype.str} {column.shape}".encode())
            digest.update(column.tobytes())
        return "replay-" + digest.hexdigest()[:32]


# left out of the job tag: paths and names, and what only shapes the trace's arrays (hashed)
_NOT_IN_TAG = ("trace", "label", "format", "block_tokens", "prefix_model", "max_requests",
               "time_scale")


_TYPES = {f.name: f.type for f in fields(ReplayConfig)}


def _coerce(origin: str, key: str, value, typ: str):
    where = f"{origin}: [replay] {key}"
    if value is None:
        return None
    want = typ.replace(" | None", "")
    ok = {"str": isinstance(value, str), "bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool)}[want]
    if not ok:
        raise ConfigError(f"{where}: expected {want}, got {value!r}")
    if want == "float" and not math.isfinite(value):
        raise ConfigError(f"{where}: must be finite, got {value!r}")
    return float(value) if want == "float" else value


def load_config(path: str | Path) -> ReplayConfig:
    """A [replay] table of a TOML file; relative trace paths are taken from the file's folder."""
    path = Path(path)
    data = read_toml(path, "config file")
    extra = sorted(set(data) - {"replay"})
    if extra:
        raise ConfigError(f"{path}: {extra[0]}: unknown table (a config holds one [replay] table)")
    table = data.get("replay")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [replay]: missing")
    values = {}
    for key, value in table.items():
        if key not in _TYPES:
            raise ConfigError(f"{path}: [replay] {key}: unknown key (known: {', '.join(_TYPES)})")
        values[key] = _coerce(str(path), key, value, _TYPES[key])
    if values.get("trace") and not Path(values["trace"]).is_absolute():
        candidate = path.parent / values["trace"]
        if candidate.exists():
            values["trace"] = str(candidate)
    cfg = ReplayConfig(**values)
    validate(cfg, str(path))
    return cfg


def validate(cfg: ReplayConfig, origin: str = "replay") -> None:
    def bad(key, problem):
        raise ConfigError(f"{origin}: {key}: {problem}")
    for key in ("dram_gib", "cxl_gib"):
        v = getattr(cfg, key)
        if v is not None and v < 0:
            bad(key, f"must be >= 0, got {v}")
    if cfg.hosts < 1:
        bad("hosts", f"must be >= 1, got {cfg.hosts}")
    if cfg.tp < 0:
        bad("tp", f"must be >= 0 (0 = automatic), got {cfg.tp}")
    if cfg.assign not in ASSIGN_RULES:
        bad("assign", f"must be one of {', '.join(ASSIGN_RULES)}, got {cfg.assign!r}")
    if cfg.quantum_us <= 0:
        bad("quantum_us", f"must be > 0, got {cfg.quantum_us}")
    if not 0 <= cfg.idle_power_fraction <= 1:
        bad("idle_power_fraction", f"must be in [0, 1], got {cfg.idle_power_fraction}")
    if cfg.sample_ms <= 0:
        bad("sample_ms", f"must be > 0, got {cfg.sample_ms}")
    if not cfg.time_scale > 0:
        bad("time_scale", f"must be > 0, got {cfg.time_scale}")
    if cfg.max_requests < 0 or cfg.block_tokens < 0:
        bad("max_requests" if cfg.max_requests < 0 else "block_tokens", "must be >= 0")
    if not cfg.trace:
        bad("trace", "missing (give a trace file)")


# ----------------------------------------------------------------------------- building

def read_trace(cfg: ReplayConfig) -> dict:
    kw = {}
    if cfg.block_tokens:
        kw["block_tokens"] = cfg.block_tokens
    fmt = cfg.format
    if fmt == "azure" or (fmt == "auto" and cfg.trace.lower().endswith(".csv")):
        kw["prefix_model"] = cfg.prefix_model
    if not Path(cfg.trace).exists():
        raise ConfigError(f"{cfg.trace}: no such trace file")
    if Path(cfg.trace).is_dir():
        raise ConfigError(f"{cfg.trace}: is a directory, not a trace file")
    reqs = open_trace(cfg.trace, fmt, **kw)
    if cfg.max_requests:
        from itertools import islice
        reqs = islice(reqs, cfg.max_requests)
    arrays = trace_arrays(reqs)
    if cfg.time_scale != 1.0:                # replay the same requests at another rate
        arrays["arrival_ms"] = arrays["arrival_ms"] * cfg.time_scale
    return arrays


def _memory_tiers(topo, host: str, cfg: ReplayConfig) -> list[tuple[str, str, int]]:
    """(tier name, endpoint, capacity bytes) below HBM for one host: its DRAM, then the CXL pool."""
    linked = {b for link in topo.links for a, b in ((link.a, link.b), (link.b, link.a)) if a == host}
    out = []
    drams = [m for m in topo.memories if m.kind == "dram" and m.name in linked]
    if drams:
        cap = drams[0].capacity_bytes if cfg.dram_gib is None else int(cfg.dram_gib * GIB)
        if cap:
            out.append(("dram", drams[0].name, cap))
    elif cfg.dram_gib:
        raise ConfigError(f"{topo.origin}: host {host!r} has no DRAM linked to it; "
                          f"dram_gib = {cfg.dram_gib} cannot be honoured")
    cxl_names = {m.name for m in topo.memories if m.kind == "cxl"}
    sets = [il for il in topo.interleaves if set(il.members) <= cxl_names]
    if sets:
        endpoint = sets[0].name
        full = sum(topo.memory(m).capacity_bytes for m in sets[0].members)
    elif cxl_names:
        first = next(m for m in topo.memories if m.kind == "cxl")
        endpoint, full = first.name, first.capacity_bytes
    else:
        endpoint, full = None, 0
    cap = full if cfg.cxl_gib is None else int(cfg.cxl_gib * GIB)
    if endpoint and cap:
        out.append(("cxl", endpoint, cap))
    elif cfg.cxl_gib and not endpoint:
        raise ConfigError(f"{topo.origin}: no CXL memory; cxl_gib = {cfg.cxl_gib} cannot be honoured")
    return out


def attach_hbm(topo, hosts: list[str], dep: Deployment):
    """The topology with each host's accelerator HBM (tp devices as one memory) on a PCIe link."""
    a = dep.accel
    for h in hosts:
        hbm = Memory(
            name=f"{h}.hbm", kind="hbm", capacity_bytes=dep.hbm_bytes, read_latency_ns=0.0,
            write_latency_ns=0.0, bandwidth_gbps=dep.tp * a.memory_bandwidth_gbps,
            write_bandwidth_gbps=dep.tp * a.memory_bandwidth_gbps, pj_per_bit=a.memory_pj_per_bit,
            source=f"{a.display_name} x{dep.tp}: {a.source}",
            assumptions=("read_latency_ns", "write_latency_ns"))
        link = Link(a=h, b=hbm.name, bandwidth_gbps=dep.host_link_gbps,
                    latency_ns=a.host_link.latency_ns, pj_per_bit=PCIE_PJ_PER_BIT,
                    source=f"{a.host_link.name} x{dep.tp} devices: {a.source}; pj_per_bit: "
                           f"PCIe energy quoted by Sun et al., MICRO'23 [?]")
        topo = topo.with_memory(hbm, link)
    return topo


def assign_hosts(trace: dict, n_hosts: int, rule: str) -> np.ndarray:
    """Host of every request. round-robin: i mod N; session: the trace's conversation id mod N
    (falls back to round-robin without ids); prefix: first block key mod N (requests sharing a
    first block meet on one host, as a prefix-aware router sends them)."""
    n = len(trace["arrival_ms"])
    if n_hosts == 1:
        return np.zeros(n, np.int64)
    if rule == "prefix":
        off, keys = trace["block_offsets"], trace["block_keys"]
        first = np.where(np.diff(off) > 0, keys[np.minimum(off[:-1], max(len(keys) - 1, 0))]
                         if len(keys) else 0, np.arange(n, dtype=np.uint64))
        return (first % np.uint64(n_hosts)).astype(np.int64)
    if rule == "session" and "session" in trace and (trace["session"] >= 0).all():
        return trace["session"] % n_hosts
    return np.arange(n, dtype=np.int64) % n_hosts


@dataclass
class ReplayResult:
    summary: dict
    table: dict
    occupancy: list = field(default_factory=list)     # per host: [(t ns, bytes per tier...)]
    transfers: dict = field(default_factory=dict)     # resource -> (start ns array, bytes array)
    tier_names: list = field(default_factory=list)
    link_gbps: dict = field(default_factory=dict)     # link resource -> GB/s (for plots)


def run_replay(cfg: ReplayConfig, progress: bool = False, trace: dict | None = None,
               closed_form: bool = True, pool_client=None, host_id: int | None = None,
               wait_for_hosts=None) -> ReplayResult:
    """One replay. With several hosts they share the CXL pool through the quantum barrier:
    all of them in this process, or only `host_id` when `pool_client` (a PoolClient attached as
    that host) reaches a pool server that the other hosts' processes use too. `wait_for_hosts`
    is called once the server is known to fit this replay, before the first barrier."""
    validate(cfg)
    wall0 = time.perf_counter()
    model, accel = load_model(cfg.model), load_accelerator(cfg.accel)
    tp = cfg.tp or default_tp(model, accel, cfg.reserve)
    dep = Deployment(model, accel, tp, cfg.mfu, cfg.mbu, cfg.reserve)
    sched = SchedulerConfig(cfg.token_budget, cfg.max_batch, cfg.overlap)
    policy_probe = make_policy(cfg.policy)
    topo = load_topology(cfg.topology)
    if cfg.hosts > len(topo.hosts):
        raise ConfigError(f"{topo.origin}: hosts = {cfg.hosts} but the topology has "
                          f"{len(topo.hosts)} ({', '.join(h.name for h in topo.hosts)})")
    if trace is None:
        trace = read_trace(cfg)
    if cfg.hosts > 1 or pool_client is not None:
        return _run_pooled(cfg, dep, sched, topo, trace, wall0, progress, closed_form,
                           pool_client, host_id, wait_for_hosts)
    host = topo.hosts[0].name
    topo = attach_hbm(topo, [host], dep)
    fabric = Fabric(topo)
    bt = int(trace["block_tokens"])
    block_bytes = bt * model.kv_bytes_per_token
    tiers = [Tier("hbm", f"{host}.hbm", dep.kv_capacity_bytes)]
    tiers += [Tier(*t) for t in _memory_tiers(topo, host, cfg)]
    tiers = tiers[: getattr(policy_probe, "max_tiers", None) or len(tiers)]
    kv = TieredKV(tiers, policy_probe, block_bytes, fabric, record_every_ns=cfg.sample_ms * 1e6)
    n = len(trace["arrival_ms"])
    log = RequestLog(n, len(tiers))
    server = ServingHost(0, dep, kv, trace, np.arange(n), sched, log)
    server.closed_form = closed_form
    bar = _progress(n, cfg, progress)
    if bar is not None:
        server.on_finish = lambda rid, now: bar.update(1)
    server.start()
    server.loop.run()
    if bar is not None:
        bar.close()
    kv.sample(server.last_event_ns)
    return _result(cfg, dep, trace, log, [server], [kv], fabric, topo, tiers, wall0)


class _MergedFabric:
    """Resource counters summed over the per-host fabrics of a pooled replay."""

    def __init__(self, fabrics: list[Fabric]):
        self.fabrics = fabrics

    def stats(self):
        per_host = [f.stats() for f in self.fabrics]
        merged = []
        for same in zip(*per_host):
            merged.append(dataclasses.replace(
                same[0], bytes=sum(s.bytes for s in same), busy_ns=sum(s.busy_ns for s in same),
                energy_pj=sum(s.energy_pj for s in same), transfers=sum(s.transfers for s in same),
                free_at_ns=max(s.free_at_ns for s in same)))
        return merged

    def route_resources(self, src: str, dst: str) -> list[str]:
        return self.fabrics[0].route_resources(src, dst)


def run_quanta(servers: list[ServingHost], sides: list[PoolSide], exchange, quantum_ns: float,
               on_barrier=None, hand_in=None, release=None, hand_in_ahead=None) -> int:
    """Advance hosts barrier by barrier. `exchange(seq, ops_by_host, next_ns_by_host)` is the
    barrier; the pool's delta says how far to run next (`run_until_ns`: the end of the quantum
    holding the earliest next event of ANY host, so idle stretches cost no barriers, the same
    in every process). A host process whose pool parked it through barriers in which it had
    nothing to do gets one merged delta, so `seq` follows the delta, not a local count.
    A host process may split the barrier into `hand_in(seq, ops_by_host, next_ns_by_host)` and
    `release()`, and then runs its next quantum between the two (_run_ahead); with
    `hand_in_ahead(ops, next_ns, after_ns)` as well, it may hand in the
    barrier after that one before its release comes (_hand_in_ahead).
    Returns the number of barriers exchanged."""
    horizon = -math.inf                        # (the other hosts' earliest event, last heard)

    def barrier(seq, handed=False):
        if not handed:
            for srv in servers:
                srv.kv.flush()                 # transfers held back go out before the hand-in
            ops = {s.host: s.take_ops() for s in sides}
            nexts = {srv.id: srv.loop.peek_time() for srv in servers}
        if hand_in is not None:                # (a host process: one host)
            assert len(servers) == len(sides) == 1
            if not handed:
                hand_in(seq, ops, nexts)
            delta, handed = _run_ahead(servers[0], sides[0], release, quantum_ns,
                                       hand_in_ahead, horizon)
        else:
            delta = exchange(seq, ops, nexts)
            for side in sides:
                side.apply(delta)
        if on_barrier is not None:
            on_barrier()
        return delta, handed

    delta, handed = barrier(0)                 # agree on where the first work is
    while math.isfinite(delta.run_until_ns):
        horizon = delta.horizon_ns
        if not handed:
            for srv in servers:
                srv.loop.run(until=delta.run_until_ns)
            if len(servers) == 1:
                _run_alone(servers[0], sides[0], delta.run_until_ns, horizon, quantum_ns)
        delta, handed = barrier(delta.quantum + 1, handed)
    for side in sides:
        side.settle()                          # the last delta's changes count (rejections)
    return delta.quantum + 1


def _run_ahead(server: ServingHost, side: PoolSide, release, quantum_ns: float,
               hand_in_ahead=None, horizon: float = -math.inf):
    """Run the host's next quantum while its release is on the way; (its release, whether the
    barrier after it is handed in already). The pool releases a host for the quantum holding
    its next event (every earlier event of any host lies in that quantum or before it), so the
    host knows how far it will run before it is told. An event that must look at the pool
    (PoolSide.settle) fetches the release there and waits for the pool's changes; the others
    run meanwhile, off the barrier chain."""
    side.await_release(release)
    upcoming = server.loop.peek_time()
    sent = None
    if math.isfinite(upcoming):
        ahead = (upcoming // quantum_ns + 1) * quantum_ns
        server.loop.run(until=ahead)
        if hand_in_ahead is not None:
            sent = _hand_in_ahead(server, side, hand_in_ahead, ahead, horizon, quantum_ns)
    delta = side.take_release()
    if math.isfinite(upcoming) and delta.run_until_ns < ahead:    # (later: run_quanta runs on)
        raise PoolError(f"the pool released host {side.host} to run until {delta.run_until_ns:g} "
                        f"ns; its next event at {upcoming:g} ns lies in the quantum ending at "
                        f"{ahead:g} ns, which it ran ahead")
    if sent is None:
        return delta, False
    if delta.run_until_ns == ahead:           # the pool's rule too: it took the hand-in
        server.kv.flush()                     # (what the hand-in would have issued first)
        return delta, True
    side.ops = sent + side.ops                # not taken: they go in the usual hand-in
    return delta, False


def _hand_in_ahead(server: ServingHost, side: PoolSide, hand_in_ahead, ahead: float,
                   horizon: float, quantum_ns: float) -> list | None:
    """After running ahead to `ahead` without looking at the pool: run on alone as far as the
    other hosts' last known earliest event allows (it only grows, so no host has work there),
    and hand in the barrier after the release still to come. The pool takes it if that
    release runs this host to `ahead` (the usual case), so the next barrier needs no round
    trip through this host; results equal a barrier at every quantum either way. Not done
    once the host looked at the pool (it has its release then). Transfers held back stay held
    until the release comes (_run_ahead issues them then, after the other hosts' moves it
    brings, as the hand-in would have). The ops it handed in, or None."""
    if not side.release_pending:
        return None
    _run_alone(server, side, ahead, horizon, quantum_ns)
    if not side.release_pending:
        return None
    ops, side.ops = side.ops, []
    hand_in_ahead(ops, server.loop.peek_time(), ahead)
    return ops


def _run_alone(server: ServingHost, side: PoolSide, until: float, horizon: float,
               quantum_ns: float) -> None:
    """Run on, quantum by quantum, while the next barrier could change nothing: this host handed
    the pool nothing, and no other host has an event before the next quantum ends (their next
    events are fixed while they wait: `horizon`). It picks the same quanta the pool would (the
    one holding the next event), so results equal a barrier at every quantum; it saves the
    round trips only, which is why a host process does it and one process need not."""
    done = round(until / quantum_ns)          # quanta finished so far
    while not side.ops:
        upcoming = server.loop.peek_time()
        if not math.isfinite(upcoming):
            return                            # finished: tell the others at the barrier
        k = max(done, int(min(upcoming, horizon) // quantum_ns))
        if horizon < (k + 1) * quantum_ns:
            return                            # another host has work in that quantum
        server.loop.run(until=(k + 1) * quantum_ns)
        done = k + 1


def _run_pooled(cfg, dep, sched, topo, trace, wall0, progress, closed_form, client, only,
                wait_for_hosts=None):
    """Several hosts, each with HBM and DRAM of its own, sharing the CXL pool."""
    if cfg.hosts > len(topo.hosts):
        raise ConfigError(f"{topo.origin}: hosts = {cfg.hosts} but the topology has "
                          f"{len(topo.hosts)}")
    if client is not None and (only is None or not 0 <= only < cfg.hosts):
        raise ConfigError(f"--host-id must be in 0..{cfg.hosts - 1} with --pool, got {only}")
    names = [h.name for h in topo.hosts[: cfg.hosts]]
    topo = attach_hbm(topo, names, dep)
    pool_tier = [t for t in _memory_tiers(topo, names[0], cfg) if t[0] == "cxl"]
    if not pool_tier:
        raise ConfigError(f"{topo.origin}: a multi-host replay shares a CXL pool, and this "
                          f"topology has none (or cxl_gib = 0)")
    _, pool_endpoint, pool_bytes = pool_tier[0]
    block_bytes = int(trace["block_tokens"]) * dep.model.kv_bytes_per_token
    owner = assign_hosts(trace, cfg.hosts, cfg.assign)
    mine = range(cfg.hosts) if client is None else [only]
    servers, kvs, fabrics, sides = [], [], [], []
    n = len(trace["arrival_ms"])
    log = None
    max_tiers = getattr(make_policy(cfg.policy), "max_tiers", None)

    def local_tiers(h):
        tiers = [Tier("hbm", f"{names[h]}.hbm", dep.kv_capacity_bytes)]
        tiers += [Tier(*t) for t in _memory_tiers(topo, names[h], cfg) if t[0] == "dram"]
        return tiers[: max_tiers or len(tiers)]
    # where each host's pool traffic comes from or goes to, for the others' fabrics (None: the
    # hosts keep their traffic to themselves, no contention between them)
    tiers_by_host = ({h: [t.endpoint for t in local_tiers(h)] for h in range(cfg.hosts)}
                     if cfg.contention else None)
    for h in mine:
        # per host: a host's timelines see the other hosts' pool traffic only at barriers
        fabric = Fabric(topo)
        policy = make_policy(cfg.policy)
        local = local_tiers(h)
        side = PoolSide(h, pool_endpoint, pool_bytes, tiers_by_host)
        kv = TieredKV(local, policy, block_bytes, fabric, cfg.sample_ms * 1e6, pool=side)
        if log is None:
            log = RequestLog(n, kv.n_report)
        server = ServingHost(h, dep, kv, trace, np.flatnonzero(owner == h), sched, log)
        server.closed_form = closed_form
        servers.append(server), kvs.append(kv), fabrics.append(fabric), sides.append(side)
    tiers = list(kvs[0].tiers) + [Tier("cxl", pool_endpoint, pool_bytes)]
    if client is None:
        from .pool.local import LocalPool
        pool = LocalPool(pool_bytes, cfg.quantum_us * 1e3)
        for h in range(cfg.hosts):
            pool.attach(h, 0)
        exchange = pool.exchange_all
    else:
        if client.server_info["capacity_bytes"] != pool_bytes:
            # the pool's capacity decides what stays in it: a different one changes every result
            served = client.server_info["capacity_bytes"]
            raise ConfigError(f"pool server {client.endpoint} holds {served} B, this replay's "
                              f"pool ({pool_endpoint}) {pool_bytes} B: start the server with "
                              f"--capacity-bytes {pool_bytes}, or give the replay --cxl-gib "
                              f"to match the server")
        if not math.isclose(client.quantum_ns, cfg.quantum_us * 1e3, rel_tol=1e-9):
            # the server keeps the schedule, so its quantum is the one every host runs by
            raise ConfigError(f"pool server {client.endpoint} runs quanta of "
                              f"{client.quantum_ns:g} ns, this replay asks for "
                              f"{cfg.quantum_us * 1e3:g} ns: pass --quantum-us "
                              f"{client.quantum_ns / 1e3:g}, or start the server with "
                              f"--quantum-ns {cfg.quantum_us * 1e3:g}")

        def exchange(seq, ops, nexts):
            return client.exchange_lazy(only, seq, ops[only], nexts[only])

        def hand_in(seq, ops, nexts):
            client.hand_in(only, seq, ops[only], nexts[only])

        def hand_in_ahead(ops, next_ns, after_ns):
            client.hand_in_ahead(only, ops, next_ns, after_ns)
        if wait_for_hosts is not None:
            wait_for_hosts()
    bar = _progress(int(sum(np.isin(owner, list(mine)))), cfg, progress)
    if bar is not None:
        for server in servers:
            server.on_finish = lambda rid, now: bar.update(1)
    for server in servers:
        server.start()
    # a host process runs by the server's quantum (the one its schedule uses), equal to ours
    quantum_ns = cfg.quantum_us * 1e3 if client is None else client.quantum_ns
    if client is None:
        barriers = run_quanta(servers, sides, exchange, quantum_ns)
    else:
        barriers = run_quanta(servers, sides, exchange, quantum_ns, hand_in=hand_in,
                              release=client.release, hand_in_ahead=hand_in_ahead)
    if bar is not None:
        bar.close()
    for server, kv in zip(servers, kvs):
        kv.sample(server.last_event_ns)
    extra = {"pool": {"hosts": cfg.hosts, "assign": cfg.assign, "quantum_us": cfg.quantum_us,
                      "contention": cfg.contention,
                      "barriers": barriers, "endpoint": pool_endpoint,
                      "capacity_gib": pool_bytes / GIB,
                      "puts": sum(s.puts for s in sides), "touches": sum(s.touches for s in sides),
                      "rejected_ops": sum(s.rejected for s in sides),
                      # other hosts' pool traffic the hosts' fabrics carried (each host's count)
                      "taken_in_bytes": sum(s.taken_in_bytes for s in sides),
                      "mode": "in-process" if client is None else f"host {only} of a pool server"}}
    rows = None if client is None else owner == only    # a host process reports its own requests
    result = _result(cfg, dep, trace, log, servers, kvs, _MergedFabric(fabrics), topo, tiers,
                     wall0, extra, rows)
    result.summary["pool"]["per_host"] = _per_host(result.table, servers, sides)
    return result


def _per_host(table: dict, servers: list[ServingHost], sides: list[PoolSide]) -> list[dict]:
    """Each host's share of a pooled replay (the hosts this process ran): where load and latency
    pile up when requests are routed by session or prefix."""
    out = []
    for server, side in zip(servers, sides):
        rows = table["host"] == server.id
        done = rows & ~np.isnan(table["finish_ms"])
        out.append({"host": server.id, "requests": int(rows.sum()), "completed": int(done.sum()),
                    "ttft_ms": percentiles(table["ttft_ms"][done]),
                    "tpot_ms": percentiles(table["tpot_ms"][done]),
                    "prefill_tokens_saved": int(table["prefix_tokens"][rows].sum()),
                    "loaded_bytes": int(table["loaded_bytes"][rows].sum()),
                    "accelerator_busy_s": server.busy_ns / 1e9,
                    "puts": side.puts, "touches": side.touches, "rejected_ops": side.rejected,
                    "taken_in_bytes": side.taken_in_bytes})
    return out


def _progress(n: int, cfg: ReplayConfig, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=n, unit="req", leave=False, disable=None,
                desc=f"replay {cfg.label or cfg.policy}")


def _result(cfg, dep, trace, log, servers, kvs, fabric, topo, tiers, wall0,
            extra: dict | None = None, rows: np.ndarray | None = None) -> ReplayResult:
    """The summary and per-request table; `rows` (a mask) keeps only some requests."""
    table = request_table(trace, log)
    admitted = log.admit_ns == log.admit_ns
    tier_hits, block_hits = log.tier_hits, log.block_hits
    if rows is not None:
        table = {k: v[rows] for k, v in table.items()}
        admitted, tier_hits, block_hits = admitted & rows, tier_hits[rows], block_hits[rows]
    accesses = int(np.diff(trace["block_offsets"])[admitted].sum())
    summary = latency_summary(table, accesses, [t.name for t in tiers], tier_hits, block_hits)
    span_ns = summary["makespan_s"] * 1e9
    kinds = {m.name: m.kind for m in topo.memories}
    fab = fabric_summary(fabric.stats(), span_ns, kinds)
    busy_s = sum(s.busy_ns for s in servers) / 1e9
    idle_s = max(0.0, len(servers) * summary["makespan_s"] - busy_s)
    compute_j = dep.power_w * (busy_s + cfg.idle_power_fraction * idle_s)
    mem = dict(fab["energy"]["memory"])
    hbm_compute_j = sum(s.hbm_bytes for s in servers) * 8 * dep.accel.memory_pj_per_bit * 1e-12
    mem["hbm"] = mem.get("hbm", 0.0) + hbm_compute_j
    total = compute_j + fab["energy"]["links"] + sum(v for k, v in mem.items() if k != "hbm")
    summary.update({
        "bytes_moved": fab["bytes_moved"],
        "link_utilization": fab["link_utilization"],
        "energy_j": {"compute": compute_j, "memory": mem, "links": fab["energy"]["links"],
                     "total": total,
                     "note": "total = compute + links + memory except hbm (board power includes HBM)"},
        "tokens_per_joule": summary["output_tokens"] / total if total > 0 else 0.0,
        "accelerator_busy_s": busy_s,
        "iterations": sum(s.iterations for s in servers),
    })
    summary["deployment"] = {
        "model": dep.model.name, "accel": dep.accel.name, "tp": dep.tp,
        "kv_bytes_per_token": dep.model.kv_bytes_per_token,
        "block_tokens": int(trace["block_tokens"]),
        "block_bytes": int(trace["block_tokens"]) * dep.model.kv_bytes_per_token,
        "tiers": {t.name: {"endpoint": t.endpoint, "capacity_gib": t.capacity_bytes / GIB}
                  for t in tiers},
        "hbm_kv_capacity_blocks": tiers[0].capacity_bytes // (int(trace["block_tokens"])
                                                               * dep.model.kv_bytes_per_token),
        "mfu": dep.mfu, "mbu": dep.mbu, "reserve": dep.reserve,
    }
    summary["config"] = dataclasses.asdict(cfg)
    summary["assumptions"] = topo.assumptions() + [
        f"accelerator {dep.accel.name}: {', '.join(dep.accel.assumptions)}",
        f"mfu {dep.mfu}, mbu {dep.mbu}, idle_power_fraction {cfg.idle_power_fraction} [assumption]"]
    if extra:
        summary.update(extra)
    summary["sim_wall_s"] = time.perf_counter() - wall0
    transfers = _transfer_log(kvs, fabric)
    link_gbps = {f"link {a}->{b}": link.bandwidth_gbps for link in topo.links
                 if link.bandwidth_gbps for a, b in ((link.a, link.b), (link.b, link.a))}
    return ReplayResult(summary, table, [kv.occupancy for kv in kvs], transfers,
                        [t.name for t in tiers], link_gbps)


def _transfer_log(kvs, fabric) -> dict:
    """Per link resource: (start ns, bytes) of every KV transfer that crossed it. Route ids are
    per host fabric (hosts of a pooled replay each have one), so each host's log is read with
    its own routes."""
    parts: dict[str, list] = {}
    for kv in kvs:
        t = np.asarray(kv.log_t, np.float64)
        route = np.asarray(kv.log_route, np.int64)
        nbytes = np.asarray(kv.log_bytes, np.float64)
        for (src, dst), rid in sorted(kv.routes_used().items(), key=lambda item: item[1]):
            mask = route == rid
            if mask.any():
                for res in fabric.route_resources(src, dst):
                    if res.startswith("link "):
                        parts.setdefault(res, []).append((t[mask], nbytes[mask]))
    return {res: (np.concatenate([a for a, _ in p]), np.concatenate([b for _, b in p]))
            for res, p in parts.items()}


# ----------------------------------------------------------------------------- outputs

def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def write_outputs(result: ReplayResult, out_dir: str | Path, plots: bool = True) -> list[str]:
    """summary.json, requests.csv and (with matplotlib) plots; returns notes for the user."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(_json_safe(result.summary), indent=2) + "\n")
    write_requests_csv(result.table, out / "requests.csv")
    notes = []
    if plots:
        from . import plots as plotting
        notes += plotting.replay_plots(result, out)
    return notes


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else repr(round(float(v), 6))
    return str(int(v))


def write_requests_csv(table: dict, path: Path) -> None:
    cols = [table[c] for c in CSV_COLUMNS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for row in zip(*cols):
            w.writerow([_fmt(v) for v in row])
