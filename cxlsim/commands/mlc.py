"""`cxlsim mlc`: idle-latency matrix and loaded-latency curves, after Intel MLC."""
from __future__ import annotations

import json

from ..errors import ConfigError
from ..fabric import Fabric
from ..mlc import idle_matrix, loaded_curve
from ..topology import load_topology, preset_names


def add_parser(sub):
    p = sub.add_parser("mlc", help="idle latency matrix or loaded-latency curve of a topology",
                       description="Memory Latency Checker on the model. Topology presets: "
                       + ", ".join(preset_names()))
    p.add_argument("--topology", "-t", default="cxl-x8-direct", help="preset name or TOML path")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--idle", action="store_true", help="idle latency matrix (default)")
    mode.add_argument("--loaded", action="store_true", help="bandwidth vs latency sweep")
    p.add_argument("--path", help="HOST:MEMORY for --loaded (memory or interleave set)")
    p.add_argument("--read-ratio", type=float, default=1.0, help="share of reads (1 = all reads)")
    p.add_argument("--points", type=int, default=12, help="points on the loaded curve")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args) -> int:
    topo = load_topology(args.topology)
    fabric = Fabric(topo)
    assumptions = topo.assumptions()
    if args.loaded:
        if not args.path or ":" not in args.path:
            raise ConfigError("--loaded needs --path HOST:MEMORY, e.g. --path host0:cxl0")
        host, memory = args.path.split(":", 1)
        topo.host(host)
        curve = loaded_curve(fabric, host, memory, args.read_ratio, args.points)
        if args.json:
            print(json.dumps({"topology": topo.name, "path": args.path, "read_ratio": args.read_ratio,
                              "curve": curve, "assumptions": assumptions}, indent=2))
            return 0
        print(f"Loaded latency, {topo.name}, {host} -> {memory}, read ratio {args.read_ratio:g}")
        print(f"{'inject delay (ns)':>18} {'bandwidth (GB/s)':>17} {'latency (ns)':>13}")
        for pt in curve:
            print(f"{pt['delay_ns']:18.1f} {pt['bandwidth_gbps']:17.2f} {pt['latency_ns']:13.1f}")
    else:
        matrix = idle_matrix(fabric)
        if args.json:
            print(json.dumps({"topology": topo.name, **matrix, "assumptions": assumptions}, indent=2))
            return 0
        print(f"Idle latency (ns) of a 64-byte read, {topo.name}: rows are hosts, columns memories")
        width = max(10, *(len(m) + 1 for m in matrix["memories"]))
        print(f"{'':10}" + "".join(f"{m:>{width}}" for m in matrix["memories"]))
        for host, row in zip(matrix["hosts"], matrix["latency_ns"]):
            cells = "".join(f"{'-':>{width}}" if v is None else f"{v:{width}.1f}" for v in row)
            print(f"{host:10}{cells}")
        print("(- : no route; another host's private memory is not reachable through CXL)")
    if assumptions:
        print("Assumed, not measured (sources in docs/calibration.md):")
        for line in assumptions:
            print(f"  {line}")
    return 0
