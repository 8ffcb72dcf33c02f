"""Serving replay speed (issue 4). Goals: the full Mooncake conversation trace (12,031 requests,
288,500 block accesses) with Llama-3-70B on H100 (default tp 4) and DRAM + CXL tiers in under
10 s on one core; the Azure conversation trace (19,366 requests) in under 5 s (10x Vidur's 48 s);
cost linear in the number of blocks."""
import time

from conftest import report
from cxlsim.replay import ReplayConfig, read_trace, run_replay


def _cfg(path, **kw):
    return ReplayConfig(trace=str(path), model="llama-3-70b", accel="h100-sxm",
                        topology="kv-tiered", policy="demote-on-evict", **kw)


def test_conversation_trace_replay(benchmark, conversation_trace):
    cfg = _cfg(conversation_trace)
    trace = read_trace(cfg)
    result = benchmark.pedantic(lambda: run_replay(cfg, trace=trace), rounds=1, iterations=1)
    s = result.summary
    report(benchmark, requests=s["requests"]["completed"], wall_s=s["sim_wall_s"],
           hit_ratio=s["hit_ratio"]["overall"], ttft_p50_s=s["ttft_ms"]["p50"] / 1e3)
    assert s["requests"]["completed"] == 12_031


def test_azure_conversation_replay(benchmark, azure_trace):
    cfg = _cfg(azure_trace)
    trace = read_trace(cfg)
    result = benchmark.pedantic(lambda: run_replay(cfg, trace=trace), rounds=1, iterations=1)
    s = result.summary
    report(benchmark, requests=s["requests"]["completed"], wall_s=s["sim_wall_s"],
           ttft_p50_ms=s["ttft_ms"]["p50"], tpot_p50_ms=s["tpot_ms"]["p50"])
    assert s["requests"]["completed"] == 19_366


def test_cost_is_linear_in_blocks(benchmark, conversation_trace):
    """Wall time per block access over growing trace prefixes: a linear cost keeps it flat."""
    full = read_trace(_cfg(conversation_trace))
    per_block = {}

    def sweep():
        for n in (3000, 6000, 12_031):
            cfg = _cfg(conversation_trace, max_requests=n)
            trace = read_trace(cfg)
            t0 = time.perf_counter()
            run_replay(cfg, trace=trace)
            per_block[n] = (time.perf_counter() - t0) / int(trace["block_offsets"][-1])
    benchmark.pedantic(sweep, rounds=1, iterations=1)
    us = {n: v * 1e6 for n, v in per_block.items()}
    report(benchmark, **{f"us_per_block_{n}": v for n, v in us.items()})
    assert len(full["arrival_ms"]) == 12_031
    # linear: the largest prefix costs no more than 2x per block than the smallest
    assert us[12_031] < 2 * us[3000]
