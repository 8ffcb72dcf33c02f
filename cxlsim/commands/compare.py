"""`cxlsim compare`: several policies or configurations on one trace, one side-by-side table."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import ConfigError
from ..replay import ReplayConfig, _json_safe, read_trace, run_replay, write_outputs
from .replay import _ms, add_config_args, config_from_args

_FIELDS = {f.name: f.type for f in dataclasses.fields(ReplayConfig)}


def add_parser(sub):
    p = sub.add_parser("compare", help="compare policies/configs on one trace in one table",
                       description="Runs one replay per policy (--policies) or per --run spec "
                       "and prints TTFT, TPOT, throughput, hit ratio per tier, energy and tokens/J.")
    add_config_args(p)
    p.add_argument("--policies", help="comma-separated policies, one run each")
    p.add_argument("--run", action="append", default=[], metavar="SPEC", dest="runs",
                   help="one run: 'POLICY [key=value ...]' with ReplayConfig keys, e.g. "
                   "'demote-on-evict cxl_gib=0 label=dram-only' (repeatable)")
    p.add_argument("--out", "-o", help="folder: one sub-folder per run, compare.json, plot")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


def parse_run(spec: str) -> dict:
    parts = spec.split()
    if not parts:
        raise ConfigError("--run: empty spec")
    values = {"policy": parts[0]}
    for item in parts[1:]:
        key, sep, text = item.partition("=")
        if not sep or key not in _FIELDS:
            raise ConfigError(f"--run {spec!r}: {item!r}: expected key=value with a key of: "
                              f"{', '.join(_FIELDS)}")
        typ = _FIELDS[key].replace(" | None", "")
        try:
            values[key] = {"int": int, "float": float, "str": str,
                           "bool": lambda s: s.lower() in ("1", "true", "yes")}[typ](text)
        except ValueError:
            raise ConfigError(f"--run {spec!r}: {key}: expected {typ}, got {text!r}") from None
    return values


def rows_for(results) -> list[dict]:
    rows = []
    for label, s in results:
        rows.append({
            "run": label, "ttft_p50_ms": s["ttft_ms"]["p50"], "ttft_p99_ms": s["ttft_ms"]["p99"],
            "tpot_p50_ms": s["tpot_ms"]["p50"], "throughput_tok_s": s["throughput_tokens_per_s"],
            "prefill_saved": s["hit_ratio"]["prefix_tokens"],
            "hits": s["hit_ratio"]["per_tier"], "energy_kj": s["energy_j"]["total"] / 1e3,
            "tokens_per_j": s["tokens_per_joule"], "wall_s": s["sim_wall_s"]})
    return rows


def format_table(rows: list[dict]) -> str:
    tiers = ["hbm", "dram", "cxl"]
    head = (f"{'run':<26} {'TTFT p50':>10} {'TTFT p99':>10} {'TPOT p50':>9} {'tok/s':>7} "
            f"{'saved':>6} " + " ".join(f"{'hit ' + t:>8}" for t in tiers)
            + f" {'energy kJ':>9} {'tok/J':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        hits = " ".join(f"{r['hits'][t]:>8.1%}" if t in r["hits"] else f"{'-':>8}" for t in tiers)
        lines.append(f"{r['run'][:26]:<26} {_ms(r['ttft_p50_ms']):>10} {_ms(r['ttft_p99_ms']):>10} "
                     f"{_ms(r['tpot_p50_ms']):>9} {r['throughput_tok_s']:>7.0f} "
                     f"{r['prefill_saved']:>6.1%} {hits} {r['energy_kj']:>9.1f} "
                     f"{r['tokens_per_j']:>6.3f}")
    return "\n".join(lines)


def run(args) -> int:
    base = config_from_args(args)
    specs = [{"policy": p.strip()} for p in (args.policies or "").split(",") if p.strip()]
    specs += [parse_run(s) for s in args.runs]
    if not specs:
        raise ConfigError("compare needs --policies a,b,... or at least one --run")
    trace = read_trace(base)                      # read once, shared by every run
    results, full = [], []
    for spec in specs:
        cfg = base.with_overrides(**spec)
        label = cfg.label or " ".join(f"{k}={v}" if k != "policy" else v for k, v in spec.items())
        cfg = dataclasses.replace(cfg, label=label)
        res = run_replay(cfg, progress=not args.no_progress, trace=trace)
        results.append((label, res.summary))
        full.append(res)
    rows = rows_for(results)
    if args.json:
        print(json.dumps(_json_safe(rows), indent=2))
    else:
        s0 = results[0][1]["deployment"]
        print(f"{base.trace}: {s0['model']} on {s0['tp']} x {s0['accel']}, "
              f"HBM KV {s0['hbm_kv_capacity_blocks']} blocks of {s0['block_tokens']} tokens")
        print(format_table(rows))
    if args.out:
        out = Path(args.out)
        for (label, _), res in zip(results, full):
            write_outputs(res, out / _slug(label), plots=False)
        (out / "compare.json").write_text(json.dumps(_json_safe(rows), indent=2) + "\n")
        from .. import plots
        for note in plots.compare_plot(full, [lbl for lbl, _ in results], out):
            print(note)
    return 0


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
