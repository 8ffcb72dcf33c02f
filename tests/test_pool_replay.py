"""Multi-process replay equals in-process replay: `cxlsim replay TRACE --hosts 4` in one process
and the same replay as four `--pool EP --host-id H` processes against a pool server give the same
per-request results, exactly (wall-clock fields aside)."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pool_support import pool_server

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


def test_four_host_processes_equal_in_process_replay(tmp_path):
    why = replay_missing()
    if why:
        pytest.skip(f"multi-host replay engine not ready: {why}")
    solo = cxlsim("replay", TRACE, *COMMON, "--out", tmp_path / "inproc", "--json")
    assert solo.returncode == 0, solo.stderr
    with pool_server("--topology", "kv-pool-4host", "--memory", "pool",
                     capacity_bytes=1 << 30, extent_mib=1, heartbeat_s=30) as (ep, proc, log):
        procs = [subprocess.Popen([sys.executable, "-m", "cxlsim", "replay", str(TRACE), *COMMON,
                                   "--pool", ep, "--host-id", str(h), "--out",
                                   str(tmp_path / f"host{h}"), "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=ROOT) for h in range(HOSTS)]
        try:
            for h, p in enumerate(procs):
                out, err = p.communicate(timeout=120)
                assert p.returncode == 0, f"host {h}: {err}"
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
