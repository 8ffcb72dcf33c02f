"""`cxlsim replay`: replay a serving trace through the serving model and write DIR/summary.json,
DIR/requests.csv and plots."""
from __future__ import annotations

import json
import sys

from ..errors import ConfigError
from ..hardware import known_accelerators, known_models
from ..policies import known_policies
from ..replay import ReplayConfig, load_config, read_trace, run_replay, validate, write_outputs

#: CLI flag -> ReplayConfig field, for flags that override a config file
OVERRIDES = ("model", "accel", "topology", "policy", "tp", "dram_gib", "cxl_gib", "hosts",
             "assign", "quantum_us", "token_budget", "max_batch", "mfu", "mbu", "reserve",
             "idle_power_fraction", "format", "block_tokens", "prefix_model", "max_requests",
             "time_scale", "sample_ms", "label")


def add_config_args(p, trace_optional: bool = True) -> None:
    """Arguments shared by replay and compare: every ReplayConfig field."""
    p.add_argument("trace", nargs="?" if trace_optional else None,
                   help="trace file (Mooncake JSONL, Azure CSV, token-id JSONL)")
    p.add_argument("--config", "-c", help="TOML file with a [replay] table (flags override it)")
    p.add_argument("--model", "-m", help=f"model preset or FILE.toml[:NAME] ({', '.join(known_models())})")
    p.add_argument("--accel", "-a", help=f"accelerator preset or FILE.toml[:NAME] ({', '.join(known_accelerators())})")
    p.add_argument("--topology", "-t", help="topology preset or TOML path (default kv-tiered)")
    p.add_argument("--tp", type=int, help="accelerators per host (default or 0: weights take <= half the usable HBM)")
    p.add_argument("--dram-gib", type=float, help="KV capacity in host DRAM, GiB (default: the whole memory; 0: no DRAM tier)")
    p.add_argument("--cxl-gib", type=float, help="KV capacity in the CXL pool, GiB (default: all its devices; 0: no CXL tier)")
    p.add_argument("--hosts", type=int, help="serving hosts (multi-host shares the CXL pool)")
    p.add_argument("--assign", help="request-to-host rule: round-robin (default), session, prefix")
    p.add_argument("--quantum-us", type=float, help="pool barrier quantum in us (multi-host)")
    p.add_argument("--no-contention", action="store_true",
                   help="multi-host: hosts' pool traffic does not contend on the pool's links")
    p.add_argument("--token-budget", type=int, help="tokens per iteration (chunked prefill)")
    p.add_argument("--max-batch", type=int, help="running requests per host")
    p.add_argument("--no-overlap", action="store_true", help="load reused KV before computing (no layer-wise overlap)")
    p.add_argument("--mfu", type=float, help="model FLOPs utilisation [assumption, default 0.5]")
    p.add_argument("--mbu", type=float, help="HBM bandwidth utilisation [assumption, default 0.8]")
    p.add_argument("--reserve", type=float, help="share of HBM kept for activations (default 0.1)")
    p.add_argument("--idle-power-fraction", type=float, help="idle share of board power [assumption, default 0.1]")
    p.add_argument("--format", help="trace format: auto, mooncake, azure, token_ids")
    p.add_argument("--block-tokens", type=int, help="tokens per KV block (token-id traces; Mooncake is 512)")
    p.add_argument("--prefix-model", help="Azure traces: none or shared-system-prompt:N")
    p.add_argument("--max-requests", type=int, help="replay only the first N requests (0: all)")
    p.add_argument("--time-scale", type=float,
                   help="multiply arrival times (2 = half the request rate; default 1)")
    p.add_argument("--sample-ms", type=float, help="tier-occupancy sampling period (plots)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args, **extra) -> ReplayConfig:
    cfg = load_config(args.config) if args.config else ReplayConfig()
    values = {k: getattr(args, k, None) for k in OVERRIDES}
    values.update(extra)
    if args.trace:
        values["trace"] = args.trace
    if getattr(args, "no_overlap", False):
        values["overlap"] = False
    if getattr(args, "no_contention", False):
        values["contention"] = False
    cfg = cfg.with_overrides(**values)
    validate(cfg, args.config or "command line")
    return cfg


def add_parser(sub):
    p = sub.add_parser("replay", help="replay a serving trace: TTFT, TPOT, throughput, energy",
                       description="Replays a trace through continuous batching on a model and "
                       "accelerator with HBM, host DRAM and CXL KV tiers (docs/replay.md). "
                       f"Policies: {', '.join(known_policies())}.")
    add_config_args(p)
    p.add_argument("--policy", "-p", help="KV placement policy (default demote-on-evict)")
    p.add_argument("--label", help="name of this run in tables and plots")
    p.add_argument("--out", "-o", help="output folder (summary.json, requests.csv, plots)")
    p.add_argument("--no-plots", action="store_true", help="skip plots")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout")
    p.add_argument("--pool", metavar="ENDPOINT",
                   help="run one host (--host-id) against a pool server (`cxlsim pool serve`): "
                        "start one such process per host; docs/multihost.md")
    p.add_argument("--host-id", type=int, help="with --pool: which host this process runs")
    p.add_argument("--server-key", metavar="FILE",
                   help="with --pool: the server's CURVE public key file, if it uses CURVE")
    p.add_argument("--pool-timeout-s", type=float, default=60.0,
                   help="with --pool: seconds to wait for any pool reply (default 60)")
    p.add_argument("--pool-spin-us", type=float, default=None,
                   help="with --pool: poll this long for a reply before sleeping (default 300; "
                        "0: always sleep; docs/multihost.md)")
    return p


def headline(s: dict) -> str:
    t, p, h = s["ttft_ms"], s["tpot_ms"], s["hit_ratio"]
    tiers = ", ".join(f"{k} {v:.1%}" for k, v in h["per_tier"].items())
    return (f"{s['requests']['completed']}/{s['requests']['total']} requests; "
            f"TTFT p50 {_ms(t['p50'])} p99 {_ms(t['p99'])}; TPOT p50 {_ms(p['p50'])}; "
            f"{s['throughput_tokens_per_s']:.0f} tok/s; hits {tiers}; "
            f"prefill saved {h['prefix_tokens']:.1%}; {s['energy_j']['total'] / 1e3:.1f} kJ, "
            f"{s['tokens_per_joule']:.3f} tok/J; wall {s['sim_wall_s']:.2f} s")


def _ms(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1e3:.2f} s" if v >= 1e4 else f"{v:.1f} ms"


def _run_remote_host(cfg, args):
    """This process runs host --host-id; the pool server coordinates it with the others."""
    from ..errors import PoolError
    from ..pool.client import PoolClient
    if args.host_id is None or not 0 <= args.host_id < cfg.hosts:
        got = "none" if args.host_id is None else args.host_id
        raise ConfigError(f"--pool needs --host-id H in 0..{cfg.hosts - 1} (--hosts {cfg.hosts}), "
                          f"got {got}")
    if not 0 < args.pool_timeout_s < float("inf"):
        raise ConfigError(f"--pool-timeout-s must be > 0, got {args.pool_timeout_s}")
    key = None
    if args.server_key:
        from .pool import read_key
        key = read_key(args.server_key)
    spin = {} if args.pool_spin_us is None else {"spin_us": args.pool_spin_us}
    if args.pool_spin_us is not None:
        from ..pool.stream import spin_budget_s
        spin_budget_s(args.pool_spin_us, "--pool-spin-us")   # the flag's name in the error
    validate(cfg)
    trace = read_trace(cfg)                 # read once: the job tag hashes it, the replay runs it
    client = PoolClient(args.pool, args.host_id, timeout_s=args.pool_timeout_s,
                        server_public_key=key, **spin)
    try:
        client.attach(args.host_id, 0, tag=cfg.job_tag(trace))   # hosts must share trace & settings
        try:
            result = run_replay(cfg, progress=not args.no_progress, pool_client=client,
                                host_id=args.host_id, trace=trace,
                                wait_for_hosts=lambda: _wait_for_hosts(client, cfg.hosts,
                                                                       args.pool_timeout_s))
        except PoolError:
            raise                    # the server is gone or refused us: it reaps us if it lives
        except BaseException:
            try:                     # leave the pool if it still answers; report the first error
                client.detach(args.host_id)
            except PoolError:
                pass
            raise
        client.detach(args.host_id)
        return result
    finally:
        client.close()


def _wait_for_hosts(client, hosts: int, timeout_s: float) -> None:
    """The barrier counts attached hosts, so no host may start before all of them are there."""
    import time
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        stats = client.stats()
        attached = sorted(int(h) for h in stats["hosts"])
        if not told and len(attached) < hosts:
            print(f"cxlsim replay: host {client.host_id} waits for {hosts - len(attached)} more "
                  f"host(s) to attach to {client.endpoint}", file=sys.stderr, flush=True)
            told = True
        if stats["quantum"] != 0:
            raise ConfigError(f"pool server {client.endpoint} has already run {stats['quantum']} "
                              f"barriers: start a fresh server for each multi-host replay")
        if len(attached) >= hosts:
            if attached != list(range(hosts)):
                raise ConfigError(f"pool server {client.endpoint}: attached hosts {attached}, "
                                  f"expected 0..{hosts - 1}")
            return
        if time.monotonic() > deadline:
            raise ConfigError(f"pool server {client.endpoint}: only hosts {attached} of "
                              f"{hosts} attached within {timeout_s:g} s")
        client.heartbeat(client.host_id)
        time.sleep(0.01)


def run(args) -> int:
    cfg = config_from_args(args)
    if not cfg.trace:
        raise ConfigError("no trace: give TRACE or a config with [replay] trace")
    if args.pool is None:
        if args.host_id is not None:
            raise ConfigError("--host-id goes with --pool (one host per process)")
        result = run_replay(cfg, progress=not args.no_progress)
    else:
        result = _run_remote_host(cfg, args)
    notes = []
    if args.out:
        notes = write_outputs(result, args.out, plots=not args.no_plots)
    if args.json:
        from ..replay import _json_safe
        print(json.dumps(_json_safe(result.summary), indent=2))
    else:
        print(f"{cfg.trace}: {cfg.model} on {result.summary['deployment']['tp']} x {cfg.accel}, "
              f"policy {cfg.policy}")
        print("  " + headline(result.summary))
        if args.out:
            print(f"  wrote {args.out}/summary.json, {args.out}/requests.csv")
    for note in notes:
        print("  " + note)
    return 0
