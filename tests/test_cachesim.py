"""Cache-only replay: hit counts cross-checked with independent LRU/FIFO implementations, prefix
accounting by hand, the CLI's JSON contract, policy loading and its errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxlsim.cachesim import parse_tiers, prefix_hit_blocks, simulate
from cxlsim.cli import main
from cxlsim.errors import ConfigError
from cxlsim.policies import Policy, make_policy, policy_class, register
from cxlsim.policies.lru import LRU
from cxlsim.traces import trace_arrays

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "traces"
SAMPLE = REPO / "traces" / "synth_medium.jsonl"
needs_shared = pytest.mark.skipif(not (SHARED / "conversation_trace.jsonl").exists(),
                                  reason="../shared/traces not present: real public traces are not "
                                         "shipped with the repo")


def cachetools_hits(keys, capacity, kind):
    cachetools = pytest.importorskip("cachetools")
    cache = (cachetools.LRUCache if kind == "lru" else cachetools.FIFOCache)(maxsize=capacity)
    hits = 0
    for k in keys:
        if k in cache:
            hits += 1
            cache[k]          # refresh recency (a no-op for FIFO)
        else:
            cache[k] = True
    return hits


def libcachesim_hits(keys, capacity, kind, tmp_path):
    lcs = pytest.importorskip("libcachesim")
    dtype = np.dtype([("t", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])
    rec = np.zeros(len(keys), dtype)
    rec["t"], rec["id"], rec["size"], rec["next"] = np.arange(len(keys)) // 1000, keys, 1, -1
    path = tmp_path / "stream.oracleGeneral"
    rec.tofile(path)
    reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
    cache = (lcs.LRU if kind == "lru" else lcs.FIFO)(capacity)
    miss_ratio, _ = cache.process_trace(reader)
    return round((1 - miss_ratio) * len(keys))


@pytest.mark.parametrize("kind", ["lru", "fifo"])
@pytest.mark.parametrize("capacity", [500, 4000])
def test_shipped_sample_matches_cachetools(kind, capacity):
    arrays = trace_arrays(SAMPLE)
    ours = simulate(arrays, kind, capacity)
    assert ours.block_hits == cachetools_hits(arrays["block_keys"].tolist(), capacity, kind)


@needs_shared
@pytest.mark.parametrize("kind", ["lru", "fifo"])
@pytest.mark.parametrize("capacity", [1000, 30000])
def test_conversation_trace_matches_libcachesim_and_cachetools(kind, capacity, tmp_path):
    arrays = trace_arrays(SHARED / "conversation_trace.jsonl")
    ours = simulate(arrays, kind, capacity)
    assert ours.block_accesses == 288_500
    assert ours.block_hits == libcachesim_hits(arrays["block_keys"], capacity, kind, tmp_path)
    assert ours.block_hits == cachetools_hits(arrays["block_keys"].tolist(), capacity, kind)


def test_prefix_hits_stop_at_first_miss():
    # request 0: hit hit miss hit -> 2 leading; request 1: empty; request 2: miss -> 0; 3: all hit
    hit = np.array([1, 1, 0, 1, 0, 1, 1], bool)
    offsets = np.array([0, 4, 4, 5, 7])
    assert prefix_hit_blocks(hit, offsets).tolist() == [2, 0, 0, 2]


def test_prefix_tokens_capped_at_input_length(tmp_path):
    trace = tmp_path / "t.jsonl"
    lines = [{"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [1, 2]},
             {"timestamp": 1, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]},
             {"timestamp": 2, "input_length": 1100, "output_length": 5, "hash_ids": [1, 3, 4]}]
    trace.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    r = simulate(trace_arrays(trace), "lru", 10)
    # request 1 reuses both blocks but has only 600 tokens; request 2 reuses its first block
    assert r.prefix_hit_tokens == 600 + 512
    assert r.prefix_hit_ratio == pytest.approx(1112 / 2400)
    assert (r.block_accesses, r.block_hits) == (7, 3)


def test_python_policy_path_equals_c_path():
    arrays = trace_arrays(SAMPLE)

    class SlowLRU(LRU):          # a subclass: the engine must not take the C fast path
        pass

    fast = simulate(arrays, "lru", 800, [("dram", 1500), ("cxl", 3000)])
    slow = simulate(arrays, SlowLRU(), 800, [("dram", 1500), ("cxl", 3000)])
    assert fast.as_dict() | {"accesses_per_s": 0} == slow.as_dict() | {"accesses_per_s": 0}
    assert sum(fast.tier_hits.values()) == fast.block_hits
    assert fast.tier_hits["dram"] > 0 and fast.tier_hits["cxl"] > 0


def test_cli_json_has_exactly_the_documented_keys(capsys):
    assert main(["cachesim", str(SAMPLE), "--capacity-blocks", "100,1000", "--tiers", "dram:400",
                 "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["capacity_blocks"] for r in out["results"]] == [100, 1000]
    assert set(out["results"][0]) == {"capacity_blocks", "requests", "block_accesses", "block_hits",
                                      "block_hit_ratio", "prefix_hit_tokens", "prefix_hit_ratio",
                                      "tier_hits", "accesses_per_s"}
    assert out["results"][1]["block_hits"] >= out["results"][0]["block_hits"]


@pytest.mark.parametrize("args,message", [
    (["--capacity-blocks", "0"], "capacities must be >= 1"),
    (["--capacity-blocks", "ten"], "expected N\\[,N...\\], got 'ten'"),
    (["--capacity-blocks", "10", "--tiers", "dram"], "--tiers: expected NAME:BLOCKS"),
    (["--capacity-blocks", "10", "--policy", "nope"], "unknown policy 'nope'; known: .*lru"),
    (["--capacity-blocks", "10", "--policy", "os:path"], "not a cxlsim Policy subclass"),
])
def test_cli_errors_are_one_clear_line(capsys, args, message):
    assert main(["cachesim", str(SAMPLE), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxlsim cachesim: error: ")
    assert "Traceback" not in err
    import re
    assert re.search(message, err), err


def test_bad_trace_line_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n{"oops"\n')
    assert main(["cachesim", str(bad), "--capacity-blocks", "5", "--no-progress"]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err


def test_registry_rules():
    with pytest.raises(ConfigError, match="'lru' is already registered"):
        @register("lru")
        class Again(Policy):
            pass
    assert policy_class("cxlsim.policies.lru:LRU") is LRU
    assert isinstance(make_policy("sieve"), Policy)


def test_third_party_policy_by_module_path(tmp_path):
    (tmp_path / "mypolicy.py").write_text(
        "from cxlsim.policies.fifo import FIFO\n"
        "class Mine(FIFO):\n    pass\n")
    env_path = f"{tmp_path}"
    proc = subprocess.run([sys.executable, "-m", "cxlsim", "cachesim", str(SAMPLE), "--policy",
                           "mypolicy:Mine", "--capacity-blocks", "500", "--json", "--no-progress"],
                          capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    mine = json.loads(proc.stdout)["results"][0]
    assert mine["block_hits"] == simulate(trace_arrays(SAMPLE), "fifo", 500).block_hits


def test_parse_tiers():
    assert parse_tiers("dram:10, cxl:20") == [("dram", 10), ("cxl", 20)]
    with pytest.raises(ConfigError, match="must be unique"):
        parse_tiers("hbm:5")


def test_policy_from_an_installed_packages_entry_point(tmp_path, monkeypatch):
    """A package that declares [project.entry-points."cxlsim.policies"] is found by name."""
    (tmp_path / "thirdparty_policy.py").write_text(
        "from cxlsim.policies.fifo import FIFO\nclass TheirFIFO(FIFO):\n    pass\n")
    dist = tmp_path / "thirdparty_policy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-policy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[cxlsim.policies]\ntheir-fifo = thirdparty_policy:TheirFIFO\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from cxlsim.policies import known_policies
    assert "their-fifo" in known_policies()
    cls = policy_class("their-fifo")
    assert cls.__name__ == "TheirFIFO"
    arrays = trace_arrays(SAMPLE)
    assert simulate(arrays, cls(), 500).block_hits == simulate(arrays, "fifo", 500).block_hits
