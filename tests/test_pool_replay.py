"""Multi-process replay equals in-process replay: `cxlsim replay TRACE --hosts 4` in one process
and the same replay as four `--pool EP --host-id H` processes against a pool server give the same
per-request results, exactly (wall-clock fields aside)."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pool_support import pool_server, wait_for

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "traces" / "synth_small.jsonl"
HOSTS = 4
COMMON = ["--hosts", str(HOSTS), "--topology", "kv-pool-4host", "--cxl-gib", "1",
          "--no-plots", "--no-progress"]
WALL_FIELDS = {"sim_wall_s", "wall_s", "wall_time_s"}


def cxlsim(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "cxlsim", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def replay_missing() -> str | None:
    """What the replay engine still lacks for this test, or None."""
    help_text = cxlsim("replay", "--help").stdout
    missing = [flag for flag in ("--pool", "--host-id") if flag not in help_text]
    if missing:
        return f"`cxlsim replay` has no {' / '.join(missing)} option (one host per process)"
    probe = cxlsim("replay", TRACE, *COMMON, "--max-requests", "2", "--json")
    if probe.returncode != 0:
        return f"`cxlsim replay --hosts {HOSTS}` fails: {probe.stderr.strip()[-200:]}"
    return None


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in csv.DictReader(f)]


@pytest.mark.parametrize("trace, extra, nonzero", [
    ("synth_small.jsonl", [], "puts"),
    ("synth_small.jsonl", ["--cxl-gib", "4", "--assign", "session"], "touches"),  # others' blocks
    ("synth_small.jsonl", ["--cxl-gib", "0.02", "--assign", "prefix", "--policy", "lru"],
     "rejected_ops"),                                                              # a full pool
    # results that depend on the pool traffic hosts take in from each other
    # (test_pool_contention): the server must hand every host's moves to every host
    ("synth_medium.jsonl", ["--cxl-gib", "2048"], "taken_in_bytes"),
    # the same behind one multi-headed device (no switch), docs/multihost.md's second case
    ("synth_medium.jsonl", ["--topology", "cxl-mhd-4host", "--cxl-gib", "64"], "taken_in_bytes"),
], ids=["default", "pool-hits", "pool-full-prefix-lru", "medium-contention", "mhd-contention"])
def test_four_host_processes_equal_in_process_replay(tmp_path, trace, extra, nonzero):
    why = replay_missing()
    if why:
        pytest.skip(f"multi-host replay engine not ready: {why}")
    args = [*COMMON, *extra]
    trace = TRACE.parent / trace
    gib = float(args[len(args) - 1 - args[::-1].index("--cxl-gib") + 1])
    solo = cxlsim("replay", trace, *args, "--out", tmp_path / "inproc", "--json")
    assert solo.returncode == 0, solo.stderr
    with pool_server("--topology", "kv-pool-4host", "--memory", "pool",
                     capacity_bytes=int(gib * (1 << 30)), extent_mib=1,
                     heartbeat_s=30) as (ep, proc, log):
        procs = [subprocess.Popen([sys.executable, "-m", "cxlsim", "replay", str(trace), *args,
                                   "--pool", ep, "--host-id", str(h), "--out",
                                   str(tmp_path / f"host{h}"), "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=ROOT) for h in range(HOSTS)]
        hosts = []
        try:
            for h, p in enumerate(procs):
                out, err = p.communicate(timeout=120)
                assert p.returncode == 0, f"host {h}: {err}"
                hosts.append(json.loads(out))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
    want = sorted(rows(tmp_path / "inproc" / "requests.csv"), key=lambda r: int(r["request_id"]))
    got = sorted((r for h in range(HOSTS) for r in rows(tmp_path / f"host{h}" / "requests.csv")),
                 key=lambda r: int(r["request_id"]))
    assert got == want
    summary = json.loads(solo.stdout)
    assert summary["requests"]["completed"] == len(want)
    # the pool's counters, summed over the host processes (a host counts its own ops)
    for counter in ("puts", "touches", "rejected_ops", "taken_in_bytes"):
        assert sum(s["pool"][counter] for s in hosts) == summary["pool"][counter], counter
    # each host process's own share is the in-process run's entry for that host
    assert [s["pool"]["per_host"] for s in hosts] == [[e] for e in summary["pool"]["per_host"]]
    assert summary["pool"][nonzero] > 0          # what this case is for does happen


def test_sigkill_of_one_replay_host_loses_no_capacity_and_others_finish(tmp_path):
    """Four replay processes; host 3 is killed mid-replay. After the heartbeat timeout the server
    drops it from the barrier, the three others finish all their requests, and the pool's
    accounting still adds up (used + free = total, the C index agrees)."""
    import signal
    import time

    from cxlsim.pool.client import PoolClient

    trace = ROOT / "traces" / "synth_medium.jsonl"
    args = ["--hosts", str(HOSTS), "--topology", "kv-pool-4host", "--cxl-gib", "64", "--no-plots",
            "--no-progress", "--json"]
    with pool_server(capacity_bytes=64 << 30, extent_mib=1, heartbeat_s=2) as (ep, proc, log):
        procs = [subprocess.Popen([sys.executable, "-m", "cxlsim", "replay", str(trace), *args,
                                   "--pool", ep, "--host-id", str(h), "--pool-timeout-s", "30"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=ROOT) for h in range(HOSTS)]
        try:
            time.sleep(2.5)                       # attached and replaying by now
            assert procs[3].poll() is None, "host 3 finished before it could be killed"
            procs[3].send_signal(signal.SIGKILL)
            procs[3].wait(10)
            for h in range(3):
                out, err = procs[h].communicate(timeout=120)
                assert procs[h].returncode == 0, f"host {h}: {err}"
                summary = json.loads(out)
                assert summary["requests"]["completed"] == summary["requests"]["total"] > 0
            assert proc.poll() is None            # the server kept serving
            probe = PoolClient(ep, 9, timeout_s=10.0, use_shm=False)
            try:
                probe.attach(9, 0)
                stats = probe.stats()
                probe.detach(9)
            finally:
                probe.close()
            assert "3" not in stats["hosts"]      # the dead host was reaped
            assert stats["used_bytes"] + stats["free_bytes"] == stats["capacity_bytes"]
            assert stats["index_used_bytes"] == stats["used_bytes"]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)


def test_a_host_refuses_a_server_whose_pool_differs(tmp_path):
    """A pool of another size changes every result, so a host process says so and stops."""
    with pool_server(capacity_bytes=2 << 30, extent_mib=1) as (ep, proc, log):
        one_host = [a if a != str(HOSTS) else "1" for a in COMMON]   # nobody else to wait for
        out = subprocess.run([sys.executable, "-m", "cxlsim", "replay", str(TRACE), *one_host,
                              "--pool", ep, "--host-id", "0", "--out", str(tmp_path / "h0")],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2
    assert f"holds {2 << 30} B, this replay's pool" in out.stderr and "--capacity-bytes" in out.stderr


def test_a_host_refuses_a_wrong_pool_before_waiting_for_the_others(tmp_path):
    """The size check comes before the wait for the other hosts: one host of four against a
    server of the wrong size says so at once, not after the attach timeout."""
    with pool_server(capacity_bytes=2 << 30, extent_mib=1) as (ep, proc, log):
        out = subprocess.run([sys.executable, "-m", "cxlsim", "replay", str(TRACE), *COMMON,
                              "--pool", ep, "--host-id", "0", "--pool-timeout-s", "120",
                              "--out", str(tmp_path / "h0")],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and f"holds {2 << 30} B" in out.stderr


def test_host_processes_given_different_settings_are_refused(tmp_path):
    """Hosts that split the trace by different rules would serve some requests twice and others
    never, and each would exit 0: the server refuses the host whose trace or settings differ."""
    with pool_server(capacity_bytes=1 << 30, extent_mib=1) as (ep, proc, log):
        first = subprocess.Popen([sys.executable, "-m", "cxlsim", "replay", str(TRACE), *COMMON,
                                  "--assign", "session", "--pool", ep, "--host-id", "0",
                                  "--pool-timeout-s", "30", "--out", str(tmp_path / "h0")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=ROOT)
        try:
            wait_for(lambda: "host 0 attached" in Path(log).read_text(), 60, "host 0 to attach")
            other = subprocess.run([sys.executable, "-m", "cxlsim", "replay", str(TRACE),
                                    *COMMON, "--pool", ep, "--host-id", "1",
                                    "--out", str(tmp_path / "h1")],
                                   capture_output=True, text=True, cwd=ROOT, timeout=60)
        finally:
            first.kill()
            first.communicate()
    assert other.returncode == 2, other.stderr
    assert "differs from the tag of the hosts attached (host 0: replay-" in other.stderr
    assert "same trace and settings" in other.stderr


def test_a_host_whose_server_dies_says_so_at_once(tmp_path):
    """Killed mid-wait, the server's stream closes: the host reports that, within seconds, not
    a timeout of a `detach` sent to a server that is gone."""
    with pool_server(capacity_bytes=1 << 30, extent_mib=1) as (ep, proc, log):
        host = subprocess.Popen([sys.executable, "-m", "cxlsim", "replay", str(TRACE), *COMMON,
                                 "--pool", ep, "--host-id", "0", "--pool-timeout-s", "100",
                                 "--out", str(tmp_path / "h0")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=ROOT)
        try:
            line = host.stderr.readline()               # it waits for the three other hosts
            assert "waits for 3 more host(s)" in line, line
            proc.kill()
            _, err = host.communicate(timeout=30)
        finally:
            host.kill()
    assert host.returncode == 2
    # closed while it read, or broken while it sent its next heartbeat: either way it says so
    assert "local stream" in err and "restarted, is down" in err, err
    assert "no reply to detach" not in err


@pytest.mark.parametrize("args, says", [
    (["--pool", "tcp://127.0.0.1:5701", "--host-id", "4"], "--host-id H in 0..3"),
    (["--pool", "tcp://127.0.0.1:5701"], "--host-id H in 0..3 (--hosts 4), got none"),
    (["--pool", "foo", "--host-id", "0"], "'foo' is not a pool endpoint"),
    (["--pool", "tcp://127.0.0.1:70000", "--host-id", "0"], "port must be 1..65535"),
    (["--pool", "tcp://127.0.0.1:5701", "--host-id", "0", "--pool-timeout-s", "0"],
     "--pool-timeout-s must be > 0"),
    (["--pool", "tcp://127.0.0.1:5701", "--host-id", "0", "--pool-spin-us", "inf"],
     "--pool-spin-us must be 0..50000 us"),
])
def test_bad_pool_arguments_are_named(args, says):
    out = cxlsim("replay", TRACE, *COMMON, *args, timeout=60)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_trace_that_is_a_directory_is_named(tmp_path):
    out = cxlsim("replay", tmp_path, "--no-plots", timeout=60)
    assert out.returncode == 2 and "is a directory, not a trace file" in out.stderr


def test_the_job_tag_covers_what_shapes_results_and_not_paths(tmp_path):
    """Host processes on several machines name their files by different paths, and may read a
    trace differently to the same effect: the tag hashes the trace as read and the topology as
    loaded, so equal contents agree and unequal differ."""
    import dataclasses
    import shutil
    from cxlsim.replay import ReplayConfig, read_trace

    def tag(cfg):
        return cfg.job_tag(read_trace(cfg))
    base = ReplayConfig(trace=str(TRACE), hosts=4, topology="kv-pool-4host")
    want = tag(base)
    shutil.copy(TRACE, tmp_path / "copy.jsonl")
    assert tag(dataclasses.replace(base, trace=str(tmp_path / "copy.jsonl"), label="mine")) == want
    # the same requests, read another way: an explicit format, a trailing blank line
    (tmp_path / "blank.jsonl").write_text(TRACE.read_text() + "\n")
    assert tag(dataclasses.replace(base, trace=str(tmp_path / "blank.jsonl"),
                                   format="mooncake")) == want
    lines = TRACE.read_text().splitlines(keepends=True)
    (tmp_path / "shorter.jsonl").write_text("".join(lines[:-1]))
    assert tag(dataclasses.replace(base, trace=str(tmp_path / "shorter.jsonl"))) != want
    assert tag(base.with_overrides(max_requests=len(lines) - 1)) != want
    assert tag(base.with_overrides(time_scale=2.0)) != want
    assert tag(base.with_overrides(assign="session")) != want
    text = (ROOT / "cxlsim" / "presets" / "topologies" / "kv-pool-4host.toml").read_text()
    (tmp_path / "same.toml").write_text(text)
    assert tag(base.with_overrides(topology=str(tmp_path / "same.toml"))) == want
    (tmp_path / "slower.toml").write_text(text.replace("bandwidth_gbps = ", "bandwidth_gbps = 1", 1))
    assert tag(base.with_overrides(topology=str(tmp_path / "slower.toml"))) != want
