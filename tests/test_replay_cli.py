"""`cxlsim replay`, `compare` and `trace synth` end to end; errors name the place."""
import csv
import json

import pytest
from pathlib import Path

from cxlsim.errors import ConfigError

from cxlsim.cli import main

SMALL = "traces/synth_small.jsonl"
FAST = ["--max-requests", "40", "--no-progress"]


def test_replay_writes_summary_and_requests(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["replay", SMALL, "--model", "llama-3-70b", "--accel", "h100-sxm", "--topology",
                 "kv-tiered", "--policy", "demote-on-evict", "--out", str(out), "--no-plots",
                 *FAST]) == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("requests", "ttft_ms", "tpot_ms", "e2e_ms", "throughput_tokens_per_s",
                "hit_ratio", "prefill_tokens_saved", "bytes_moved", "link_utilization",
                "energy_j", "tokens_per_joule", "sim_wall_s"):
        assert key in s, key
    for key in ("p50", "p90", "p99", "mean"):
        assert s["ttft_ms"][key] > 0 and s["tpot_ms"][key] > 0
    assert set(s["hit_ratio"]["per_tier"]) == {"hbm", "dram", "cxl"}
    assert set(s["energy_j"]) >= {"compute", "memory", "links", "total"}
    rows = list(csv.DictReader(open(out / "requests.csv")))
    assert len(rows) == 40 == s["requests"]["completed"]
    assert sum(int(r["generated_tokens"]) for r in rows) == s["output_tokens"]
    assert "TTFT p50" in capsys.readouterr().out


def test_plots_or_a_note(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["replay", SMALL, "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    try:
        import matplotlib  # noqa: F401
        assert (out / "ttft_cdf.png").exists() and (out / "tier_occupancy.png").exists()
        assert (out / "link_utilization.png").exists()
    except ImportError:
        assert "plots skipped" in text


def test_config_file_equals_flags(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[replay]\ntrace = "{SMALL}"\npolicy = "tpp"\ntp = 4\ndram_gib = 8.0\n'
                   'max_requests = 40\n')
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["replay", "--config", str(cfg), "--out", str(a), "--no-plots", "--no-progress"]) == 0
    assert main(["replay", SMALL, "--policy", "tpp", "--tp", "4", "--dram-gib", "8",
                 "--out", str(b), "--no-plots", *FAST]) == 0
    assert (a / "requests.csv").read_text() == (b / "requests.csv").read_text()


def test_compare_prints_one_table(tmp_path, capsys):
    assert main(["compare", SMALL, "--policies", "hbm-only,demote-on-evict", "--run",
                 "demote-on-evict cxl_gib=0 label=dram-only", *FAST, "--out",
                 str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "TTFT p50" in out and "hbm-only" in out and "dram-only" in out
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert [r["run"] for r in rows] == ["hbm-only", "demote-on-evict", "dram-only"]
    assert "cxl" not in rows[2]["hits"] and "dram" not in rows[0]["hits"]


def test_trace_synth_is_seeded(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["trace", "synth", "--requests", "50", "--seed", "7", "--out", str(a)]) == 0
    assert main(["trace", "synth", "--requests", "50", "--seed", "7", "--out", str(b)]) == 0
    assert a.read_text() == b.read_text() and len(a.read_text().splitlines()) == 50
    assert main(["replay", str(a), *FAST]) == 0


def error(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_trace_line_names_file_line_field(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [0]}\n'
                   '{"timestamp": 5, "input_length": 10, "output_length": -1, "hash_ids": [1]}\n')
    err = error(capsys, ["replay", str(bad), "--no-progress"])
    assert f"{bad}:2: output_length: must not be negative" in err
    assert "Traceback" not in err


def test_bad_config_names_file_and_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[replay]\ntrace = "{SMALL}"\ntp = "four"\n')
    assert f"{cfg}: [replay] tp: expected int" in error(capsys, ["replay", "--config", str(cfg)])
    cfg.write_text(f'[replay]\ntrace = "{SMALL}"\ndram_gb = 4\n')
    assert "[replay] dram_gb: unknown key" in error(capsys, ["replay", "--config", str(cfg)])


@pytest.mark.parametrize("argv,message", [
    (["--model", "llama-9"], "unknown model 'llama-9'; known:"),
    (["--accel", "h900"], "unknown accelerator 'h900'; known:"),
    (["--policy", "nope"], "unknown policy 'nope'; known:"),
    (["--topology", "nope"], "no topology preset named 'nope'"),
    (["--tp", "1"], "do not fit in tp=1"),
    (["--dram-gib", "-1"], "dram_gib: must be >= 0"),
    (["--assign", "random"], "assign: must be one of"),
])
def test_bad_arguments(capsys, argv, message):
    assert message in error(capsys, ["replay", SMALL, *FAST, *argv])


def test_missing_trace(capsys):
    assert "no such trace file" in error(capsys, ["replay", "nope.jsonl", "--no-progress"])


def test_time_scale_stretches_arrivals_and_rejects_bad_values(tmp_path):
    from cxlsim.replay import ReplayConfig, read_trace, validate
    trace = str(Path(__file__).resolve().parents[1] / "traces" / "synth_small.jsonl")
    base = read_trace(ReplayConfig(trace=trace))
    slow = read_trace(ReplayConfig(trace=trace, time_scale=4.0))
    assert (slow["arrival_ms"] == base["arrival_ms"] * 4.0).all()
    assert (slow["block_keys"] == base["block_keys"]).all()
    with pytest.raises(ConfigError, match="time_scale: must be > 0"):
        validate(ReplayConfig(trace=trace, time_scale=0.0))


def test_multi_host_replay_writes_its_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    trace = Path(__file__).resolve().parents[1] / "traces" / "synth_small.jsonl"
    out = tmp_path / "run"
    assert main(["replay", str(trace), "--hosts", "4", "--topology", "kv-pool-4host",
                 "--no-progress", "--out", str(out)]) == 0
    assert {"summary.json", "requests.csv", "ttft_cdf.png", "tier_occupancy.png"} <= {
        p.name for p in out.iterdir()}
    assert "wrote" in capsys.readouterr().out


def test_a_pooled_replay_logs_each_hosts_transfers_on_its_own_links(monkeypatch):
    """Route ids are per host fabric: the per-link transfer log (the link-utilization plot) must
    read each host's log with its own routes, so every host's links carry what its fabric
    counted."""
    import cxlsim.replay as replay
    counted = {}
    real = replay._transfer_log

    def spy(kvs, fabric):
        counted.update((s.name, s.bytes) for s in fabric.stats())
        return real(kvs, fabric)
    monkeypatch.setattr(replay, "_transfer_log", spy)
    trace = Path(__file__).resolve().parents[1] / "traces" / "synth_small.jsonl"
    result = replay.run_replay(replay.ReplayConfig(trace=str(trace), hosts=4, cxl_gib=1.0,
                                                   topology="kv-pool-4host"))
    uplinks = [f"link host{h}->sw0" for h in range(4)] + [f"link host{h}.hbm->host{h}"
                                                            for h in range(4)]
    for link in uplinks:            # links that carry every byte of the transfers crossing them
        assert counted[link] > 0
        assert result.transfers[link][1].sum() == counted[link], link


def test_no_contention_reaches_the_config_and_the_job_tag(tmp_path):
    """--no-contention is a setting like any other: in the config, in the summary, and in the tag
    that keeps host processes of one replay alike."""
    import argparse

    from cxlsim.commands.replay import add_config_args, config_from_args
    from cxlsim.replay import read_trace

    parser = argparse.ArgumentParser()
    add_config_args(parser)
    trace = str(Path(__file__).resolve().parents[1] / "traces" / "synth_small.jsonl")
    on = config_from_args(parser.parse_args([trace, "--hosts", "4"]))
    off = config_from_args(parser.parse_args([trace, "--hosts", "4", "--no-contention"]))
    assert (on.contention, off.contention) == (True, False)
    assert on.job_tag(read_trace(on)) != off.job_tag(read_trace(off))


def test_a_pooled_replay_breaks_its_totals_down_by_host():
    from cxlsim.replay import ReplayConfig, run_replay
    trace = Path(__file__).resolve().parents[1] / "traces" / "synth_small.jsonl"
    summary = run_replay(ReplayConfig(trace=str(trace), hosts=4, cxl_gib=1.0, assign="prefix",
                                      topology="kv-pool-4host")).summary
    per_host = summary["pool"]["per_host"]
    assert [e["host"] for e in per_host] == [0, 1, 2, 3]
    for field, total in [("requests", summary["requests"]["total"]),
                         ("completed", summary["requests"]["completed"]),
                         ("prefill_tokens_saved", summary["prefill_tokens_saved"]),
                         ("puts", summary["pool"]["puts"]),
                         ("touches", summary["pool"]["touches"]),
                         ("taken_in_bytes", summary["pool"]["taken_in_bytes"])]:
        assert sum(e[field] for e in per_host) == total, field
    assert sum(e["accelerator_busy_s"] for e in per_host) == pytest.approx(
        summary["accelerator_busy_s"])
    assert len({e["requests"] for e in per_host}) > 1       # prefix routing: uneven shares
