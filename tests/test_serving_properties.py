"""Properties of whole replays on a shipped trace: causality, token counts, byte conservation,
closed-form decode = step-by-step decode, determinism; and the cost model's closed form."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cxlsim.hardware import load_accelerator, load_model
from cxlsim.replay import ReplayConfig, read_trace, run_replay
from cxlsim.serving.cost import Deployment

SMALL = "traces/synth_small.jsonl"
POLICIES = ["hbm-only", "demote-on-evict", "write-through", "tpp", "tail-first",
            "mooncake-length-aware", "lru"]


@pytest.fixture(scope="module")
def small_trace():
    return read_trace(ReplayConfig(trace=SMALL, max_requests=120))


def _cfg(policy, **kw):
    # DRAM 2 GiB (12 blocks) so that blocks cascade down to CXL within 120 requests
    return ReplayConfig(trace=SMALL, policy=policy, dram_gib=2, cxl_gib=16, max_requests=120, **kw)


@pytest.mark.parametrize("policy", POLICIES)
def test_replay_properties(policy, small_trace):
    r = run_replay(_cfg(policy), trace=small_trace)
    t, s = r.table, r.summary
    assert s["requests"]["completed"] == s["requests"]["total"] == 120
    # causality: arrival <= admission <= first token <= finish
    assert np.all(t["admit_ms"] >= t["arrival_ms"])
    assert np.all(t["first_token_ms"] > t["admit_ms"])
    assert np.all(t["finish_ms"] >= t["first_token_ms"])
    # every request generates exactly the trace's output length
    assert np.array_equal(t["generated_tokens"], small_trace["output_tokens"])
    assert s["output_tokens"] == int(small_trace["output_tokens"].sum())
    # prompt tokens are either reused or computed
    assert np.array_equal(t["prefix_tokens"] + t["computed_tokens"], small_trace["input_tokens"])
    # every byte loaded into HBM crossed the host -> HBM link, and nothing else did
    assert s["bytes_moved"].get("link host0->host0.hbm", 0) == int(t["loaded_bytes"].sum())
    hits = s["hit_ratio"]
    assert hits["overall"] == pytest.approx(sum(hits["per_tier"].values()))
    e = s["energy_j"]
    assert e["total"] == pytest.approx(e["compute"] + e["links"]
                                       + sum(v for k, v in e["memory"].items() if k != "hbm"))


def test_tiers_reduce_recompute(small_trace):
    only = run_replay(_cfg("hbm-only"), trace=small_trace).summary
    tiered = run_replay(_cfg("demote-on-evict"), trace=small_trace).summary
    assert tiered["prefill_tokens_saved"] >= only["prefill_tokens_saved"]
    assert tiered["hit_ratio"]["per_tier"]["cxl"] > 0       # the scenario reaches the CXL tier
    assert tiered["bytes_moved"]["link host0->sw0"] > 0     # demotions into the pool


def test_closed_form_decode_equals_step_by_step(small_trace):
    a = run_replay(_cfg("demote-on-evict"), trace=small_trace)
    b = run_replay(_cfg("demote-on-evict"), trace=small_trace, closed_form=False)
    assert b.summary["iterations"] > a.summary["iterations"]
    for col in ("admit_ms", "first_token_ms", "finish_ms"):
        np.testing.assert_allclose(a.table[col], b.table[col], rtol=1e-12, atol=1e-9)


def test_same_inputs_same_outputs(small_trace):
    a = run_replay(_cfg("tail-first"), trace=small_trace)
    b = run_replay(_cfg("tail-first"), trace=small_trace)
    for col, values in a.table.items():
        np.testing.assert_array_equal(values, b.table[col])
    sa = {k: v for k, v in a.summary.items() if k != "sim_wall_s"}
    sb = {k: v for k, v in b.summary.items() if k != "sim_wall_s"}
    assert sa == sb


def test_no_overlap_waits_for_loads(small_trace):
    over = run_replay(_cfg("demote-on-evict"), trace=small_trace).table
    wait = run_replay(_cfg("demote-on-evict", overlap=False), trace=small_trace).table
    loaded = over["loaded_bytes"] > 0
    assert loaded.any()
    # a request that loads blocks is never faster when it must wait for them first
    assert np.nanmean(wait["ttft_ms"][loaded]) >= np.nanmean(over["ttft_ms"][loaded])


H100 = load_accelerator("h100-sxm")


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(["llama-3-8b", "llama-3-70b", "deepseek-v3"]),
       n=st.integers(1, 300), ctx=st.integers(0, 200_000), steps=st.integers(1, 400))
def test_decode_closed_form_matches_the_sum(model, n, ctx, steps):
    m = load_model(model)
    dep = Deployment(m, H100, tp=64 if model == "deepseek-v3" else 8)
    ctx_sum = n * ctx
    manual = math.fsum(dep.iteration_ns(n, ctx_sum + n + n * k, ctx_sum + n + n * k)
                       for k in range(steps))
    assert dep.decode_ns(n, ctx_sum, steps) == pytest.approx(manual, rel=1e-11)
    k = dep.decode_steps_until(n, ctx_sum, manual / 2, steps)
    assert dep.decode_ns(n, ctx_sum, k) >= manual / 2 * (1 - 1e-12)
    assert k == 1 or dep.decode_ns(n, ctx_sum, k - 1) < manual / 2
