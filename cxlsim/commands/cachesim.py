"""`cxlsim cachesim`: replay a trace's block stream through the tiered index."""
from __future__ import annotations

import json

from ..cachesim import parse_tiers, simulate
from ..errors import ConfigError
from ..policies import known_policies
from ..traces import trace_arrays


def add_parser(sub):
    p = sub.add_parser("cachesim", help="cache-only replay of a trace's KV blocks under a policy",
                       description="Replays every block access of a trace through the block "
                       "index. Policies: " + ", ".join(known_policies()) + " (or module:Class).")
    p.add_argument("trace", help="trace file (Mooncake JSONL, Azure CSV or token-id JSONL)")
    p.add_argument("--policy", default="lru", help="policy name or module:Class")
    p.add_argument("--capacity-blocks", required=True,
                   help="tier-0 (HBM) capacity in blocks; several, comma-separated, run one each")
    p.add_argument("--tiers", help="lower tiers as NAME:BLOCKS[,...], e.g. dram:20000,cxl:80000")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _capacities(text: str) -> list[int]:
    try:
        caps = [int(c) for c in text.split(",")]
    except ValueError:
        raise ConfigError(f"--capacity-blocks: expected N[,N...], got {text!r}") from None
    if not caps or any(c < 1 for c in caps):
        raise ConfigError(f"--capacity-blocks: capacities must be >= 1, got {text!r}")
    return caps


def run(args) -> int:
    caps = _capacities(args.capacity_blocks)
    lower = parse_tiers(args.tiers)
    arrays = trace_arrays(args.trace)
    results = [simulate(arrays, args.policy, cap, lower, progress=not args.no_progress)
               for cap in caps]
    if args.json:
        print(json.dumps({"trace": str(args.trace), "policy": args.policy,
                          "tiers": ["hbm"] + [n for n, _ in lower],
                          "results": [r.as_dict() for r in results]}, indent=2))
        return 0
    tier_names = [n for n, _ in lower]
    head = (f"{'capacity':>10} {'requests':>9} {'accesses':>10} {'hits':>10} {'hit ratio':>9} "
            f"{'prefix tok':>12} {'prefix ratio':>12} {'Maccess/s':>9}")
    if tier_names:
        head += "".join(f" {('hits ' + n):>12}" for n in ["hbm"] + tier_names)
    print(f"{args.trace}: policy {args.policy}")
    print(head)
    for r in results:
        line = (f"{r.capacity_blocks:>10} {r.requests:>9} {r.block_accesses:>10} {r.block_hits:>10} "
                f"{r.block_hit_ratio:>9.4f} {r.prefix_hit_tokens:>12} {r.prefix_hit_ratio:>12.4f} "
                f"{r.accesses_per_s / 1e6:>9.2f}")
        if r.tier_hits:
            line += "".join(f" {v:>12}" for v in r.tier_hits.values())
        print(line)
    return 0
