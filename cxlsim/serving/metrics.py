"""Summary numbers of a replay, computed from the per-request log and the hosts' counters.

Definitions (docs/replay.md, "Outputs"):
  ttft = first token - arrival; tpot = (finish - first token) / (output - 1), requests with
  output > 1; e2e = finish - arrival. Percentiles use numpy's linear interpolation.
  hit_ratio.overall = blocks found in any tier / block accesses; per_tier likewise per tier;
  hit_ratio.prefix_tokens = prompt tokens reused (not recomputed) / prompt tokens.
  Energy: compute = board power x tp x (busy + idle_power_fraction x idle) time; memory = bytes
  through each memory x its pJ/bit (HBM: compute traffic + KV copies); links = fabric links.
  total = compute + links + DRAM + CXL memory: board power already includes the HBM, so HBM
  energy is reported but not added again.
"""
from __future__ import annotations

import numpy as np

CSV_COLUMNS = ("request_id", "host", "arrival_ms", "input_tokens", "output_tokens", "rejected",
               "admit_ms", "first_token_ms", "finish_ms", "ttft_ms", "tpot_ms", "e2e_ms",
               "prefix_tokens", "computed_tokens", "generated_tokens", "loaded_bytes")


def percentiles(values: np.ndarray) -> dict:
    values = values[~np.isnan(values)]
    if not len(values):
        return {"p50": None, "p90": None, "p99": None, "mean": None, "count": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(values.mean()), "count": int(len(values))}


def request_table(trace: dict, log) -> dict:
    """Columns of requests.csv as numpy arrays (times in ms)."""
    arrival = trace["arrival_ms"]
    out = trace["output_tokens"]
    first = log.first_token_ns / 1e6
    finish = log.finish_ns / 1e6
    tpot = np.full(len(arrival), np.nan)
    many = out > 1
    tpot[many] = (finish[many] - first[many]) / (out[many] - 1)
    ttft = np.where(out > 0, first - arrival, np.nan)
    return {
        "request_id": np.arange(len(arrival)), "host": log.host, "arrival_ms": arrival,
        "input_tokens": trace["input_tokens"], "output_tokens": out, "rejected": log.rejected,
        "admit_ms": log.admit_ns / 1e6, "first_token_ms": first, "finish_ms": finish,
        "ttft_ms": ttft, "tpot_ms": tpot, "e2e_ms": finish - arrival,
        "prefix_tokens": log.prefix_tokens, "computed_tokens": log.computed_tokens,
        "generated_tokens": log.generated, "loaded_bytes": log.loaded_bytes,
    }


def latency_summary(table: dict, block_accesses: int, tier_names: list[str],
                    tier_hits: np.ndarray, block_hits: np.ndarray) -> dict:
    """The parts of summary.json that come from the per-request rows (mergeable across hosts)."""
    done = ~np.isnan(table["finish_ms"])
    arrival, finish = table["arrival_ms"], table["finish_ms"]
    span_ms = float(finish[done].max() - arrival.min()) if done.any() else 0.0
    generated = int(table["generated_tokens"].sum())
    input_tokens = int(table["input_tokens"][done].sum())
    saved = int(table["prefix_tokens"].sum())
    hits = block_hits.sum(axis=0)
    prefix_hits = tier_hits.sum(axis=0)
    return {
        "requests": {"total": int(len(arrival)), "completed": int(done.sum()),
                     "rejected": int(table["rejected"].sum())},
        "ttft_ms": percentiles(table["ttft_ms"][done]),
        "tpot_ms": percentiles(table["tpot_ms"][done]),
        "e2e_ms": percentiles(table["e2e_ms"][done]),
        "makespan_s": span_ms / 1e3,
        "input_tokens": input_tokens,
        "output_tokens": generated,
        "throughput_tokens_per_s": generated / (span_ms / 1e3) if span_ms > 0 else 0.0,
        "prefill_tokens_saved": saved,
        "prefill_tokens_computed": int(table["computed_tokens"].sum()),
        "hit_ratio": {
            "overall": float(hits.sum() / block_accesses) if block_accesses else 0.0,
            "per_tier": {n: float(h / block_accesses) if block_accesses else 0.0
                         for n, h in zip(tier_names, hits)},
            "prefix_blocks_per_tier": {n: int(h) for n, h in zip(tier_names, prefix_hits)},
            "prefix_tokens": saved / input_tokens if input_tokens else 0.0,
            "block_accesses": int(block_accesses),
        },
    }


def fabric_summary(stats, span_ns: float, memory_kind: dict) -> dict:
    """bytes_moved and link_utilization per resource, and memory/link energy in J."""
    moved, util = {}, {}
    energy = {"links": 0.0, "memory": {}}
    for s in stats:
        if s.bytes <= 0:
            continue
        kind, _, name = s.name.partition(" ")
        moved[s.name] = int(s.bytes)
        if kind == "link":
            if s.busy_ns > 0:                  # links without a bandwidth are never busy
                util[s.name] = s.busy_ns / span_ns if span_ns > 0 else 0.0
            energy["links"] += s.energy_pj * 1e-12
        else:
            mk = memory_kind.get(name, "other")
            energy["memory"][mk] = energy["memory"].get(mk, 0.0) + s.energy_pj * 1e-12
    return {"bytes_moved": moved, "link_utilization": util, "energy": energy}
