"""`cxlsim trace synth`: write a seeded synthetic multi-turn trace in Mooncake format."""
from __future__ import annotations

from ..errors import ConfigError
from ..traces import reuse_ratio, synthesize, write_mooncake


def add_parser(sub):
    p = sub.add_parser("trace", help="trace tools (synth: seeded multi-turn conversations)")
    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    s = tsub.add_parser("synth", help="generate a Mooncake-format trace (docs/traces.md)")
    s.add_argument("--requests", "-n", type=int, required=True, help="number of requests")
    s.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same file)")
    s.add_argument("--out", "-o", required=True, help="output .jsonl path")
    return p


def run(args) -> int:
    if args.requests < 1:
        raise ConfigError(f"--requests must be >= 1, got {args.requests}")
    reqs = synthesize(args.requests, args.seed)
    write_mooncake(reqs, args.out)
    span = reqs[-1].arrival_ms / 1e3 if reqs else 0.0
    print(f"wrote {args.out}: {len(reqs)} requests over {span:.0f} s, seed {args.seed}, "
          f"block reuse {reuse_ratio(reqs):.1%}")
    return 0
