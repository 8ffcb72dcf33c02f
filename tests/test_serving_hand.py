"""TTFT and TPOT on hand-sized scenarios, checked against numbers worked out by hand.

The hand hardware (tests/ files below) makes every roofline term an integer number of ns:
weights 1000 params x 4 B = 4000 B, HBM 1 GB/s (1 B/ns), 0.001 TFLOPS BF16 (1 FLOP/ns),
mfu = mbu = 1, KV 4 B/token (1 layer, 1 KV head of size 1, 2 bytes), attention 4 FLOPs per pair.
  prefill chunk of n tokens after c cached: compute 2000 n + 4 (n c + n (n+1) / 2) ns
                                            memory 4000 + 4 (c + n) ns (compute wins)
  decode step at context L:                 memory 4000 + 4 (L + 1) ns (wins over 2000 + 4 (L + 1))
"""
import json

import pytest

from cxlsim.replay import ReplayConfig, run_replay
from cxlsim.serving.cost import Deployment
from cxlsim.hardware import load_accelerator, load_model

MODEL = """[tiny]
display_name = "hand model"
params_b = 1e-6
active_params_b = 1e-6
layers = 1
hidden_size = 1
attention = "gqa"
q_heads = 1
kv_heads = 1
head_dim = 1
kv_dtype_bytes = 2
weight_dtype_bytes = 4
source = "test fixture: numbers chosen so every cost is a whole number of ns"
"""
ACCEL = """[hand]
display_name = "hand accelerator"
vendor = "test"
memory_kind = "hbm"
memory_gib = 0.001
memory_bandwidth_gbps = 1.0
dense_tflops = { bf16 = 0.001 }
board_power_w = 100.0
memory_pj_per_bit = 1.0
host_link = { name = "PCIe Gen5 x16", bandwidth_gbps = 64.0, latency_ns = 500.0 }
source = "test fixture"
"""


@pytest.fixture
def hw(tmp_path):
    (tmp_path / "model.toml").write_text(MODEL)
    (tmp_path / "accel.toml").write_text(ACCEL)
    return tmp_path


def trace(tmp_path, rows):
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def replay(hw, rows, **kw):
    cfg = ReplayConfig(trace=trace(hw, rows), model=str(hw / "model.toml"),
                       accel=str(hw / "accel.toml"), tp=1, mfu=1.0, mbu=1.0, reserve=0.0,
                       policy=kw.pop("policy", "demote-on-evict"), **kw)
    return run_replay(cfg)


def prefill(n, c=0):
    return 2000 * n + 4 * (n * c + n * (n + 1) // 2)


def step(L):
    return 4000 + 4 * (L + 1)


def test_hand_costs_are_what_the_docstring_says(hw):
    dep = Deployment(load_model(str(hw / "model.toml")), load_accelerator(str(hw / "accel.toml")),
                     tp=1, mfu=1.0, mbu=1.0, reserve=0.0)
    assert dep.iteration_ns(1000, 1000 * 1001 // 2, 1000) == prefill(1000) == 4_002_000
    assert dep.decode_ns(1, 1000, 1) == step(1000) == 8004
    assert dep.decode_ns(1, 1000, 2) == step(1000) + step(1001)


def test_single_request(hw):
    r = replay(hw, [{"timestamp": 0, "input_length": 1000, "output_length": 3, "hash_ids": [0, 1]}])
    t = r.table
    assert t["ttft_ms"][0] * 1e6 == pytest.approx(4_002_000, abs=1e-6)
    assert t["finish_ms"][0] * 1e6 == pytest.approx(4_002_000 + 8004 + 8008, abs=1e-6)
    assert t["tpot_ms"][0] * 1e6 == pytest.approx((8004 + 8008) / 2, abs=1e-6)
    assert r.summary["output_tokens"] == 3


def test_second_request_joins_at_the_next_step_boundary(hw):
    """r1 arrives at 4.005 ms, during r0's first decode step (4,002,000 .. 4,010,004): it joins
    the batch at 4,010,004 with a 600-token chunk beside r0's decode step at L = 1001."""
    rows = [{"timestamp": 0, "input_length": 1000, "output_length": 3, "hash_ids": [0, 1]},
            {"timestamp": 4.005, "input_length": 600, "output_length": 2, "hash_ids": [2, 3]}]
    t = replay(hw, rows).table
    mixed = 2000 * 601 + 4 * (600 * 601 // 2 + 1002)          # 1,927,208 (compute-bound)
    assert mixed == 1_927_208
    end_mixed = 4_002_000 + 8004 + mixed
    assert t["finish_ms"][0] * 1e6 == pytest.approx(end_mixed, abs=1e-6)
    assert t["tpot_ms"][0] * 1e6 == pytest.approx((end_mixed - 4_002_000) / 2, abs=1e-6)
    assert t["ttft_ms"][1] * 1e6 == pytest.approx(end_mixed - 4_005_000, abs=1e-6)
    assert t["finish_ms"][1] * 1e6 == pytest.approx(end_mixed + step(600), abs=1e-6)
    assert t["tpot_ms"][1] * 1e6 == pytest.approx(step(600), abs=1e-6)


def test_prefix_hit_in_hbm_skips_its_tokens(hw):
    rows = [{"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [0, 1]},
            {"timestamp": 10, "input_length": 1024, "output_length": 1, "hash_ids": [0, 2]}]
    r = replay(hw, rows)
    t = r.table
    assert t["ttft_ms"][0] * 1e6 == pytest.approx(prefill(1024), abs=1e-6)
    assert t["ttft_ms"][1] * 1e6 == pytest.approx(prefill(512, 512), abs=1e-6)   # 2,597,888
    assert prefill(512, 512) == 2_597_888
    assert list(t["prefix_tokens"]) == [0, 512]
    assert r.summary["hit_ratio"]["per_tier"]["hbm"] == pytest.approx(1 / 4)
    assert r.summary["prefill_tokens_saved"] == 512


def test_hbm_only_recomputes_after_eviction(hw):
    """HBM holds 1,073,741 - 4000 B of KV = 523 blocks of 2048 B; a 600-block request evicts
    the shared block, so hbm-only recomputes it while a DRAM tier keeps it."""
    big = 600 * 512 // 2        # 300 blocks per request, two requests in a row would not fit
    rows = [{"timestamp": 0, "input_length": 512, "output_length": 1, "hash_ids": [0]},
            {"timestamp": 100, "input_length": big, "output_length": 1,
             "hash_ids": list(range(1, 1 + big // 512))},
            {"timestamp": 1e6, "input_length": big, "output_length": 1,
             "hash_ids": list(range(1000, 1000 + big // 512))},
            {"timestamp": 3e6, "input_length": 1024, "output_length": 1, "hash_ids": [0, 5000]}]
    only = replay(hw, rows, policy="hbm-only")
    tiered = replay(hw, rows, policy="demote-on-evict")
    assert only.table["prefix_tokens"][3] == 0
    assert tiered.table["prefix_tokens"][3] == 512
    assert tiered.table["loaded_bytes"][3] == 2048        # the block came back from DRAM
    assert tiered.table["ttft_ms"][3] < only.table["ttft_ms"][3]


def test_chunked_prefill_keeps_the_compute(hw):
    """A 512-token budget splits 1000 tokens into 512 + 488; the attention pairs add up to the
    same 500,500, so the compute-bound TTFT is unchanged."""
    assert prefill(512) + prefill(488, 512) == prefill(1000)
    r = replay(hw, [{"timestamp": 0, "input_length": 1000, "output_length": 1,
                     "hash_ids": [0, 1]}], token_budget=512, max_batch=8)
    assert r.table["ttft_ms"][0] * 1e6 == pytest.approx(prefill(1000), abs=1e-6)
    assert r.summary["iterations"] == 2
