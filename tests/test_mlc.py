"""`cxlsim mlc`: the idle matrix and loaded curve as a user runs them, and their errors."""
import json

import pytest

from cxlsim.cli import main


def test_idle_matrix_prints_every_host_and_memory(capsys):
    assert main(["mlc", "--idle", "--topology", "cxl-mhd-4host"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "mhd0" in lines[1]
    rows = [line.split() for line in lines if line.startswith("host")]
    assert [r[0] for r in rows] == ["host0", "host1", "host2", "host3"]
    # each host reaches its own DRAM and the shared device, not the other hosts' DRAM
    for i, row in enumerate(rows):
        cells = row[1:]
        assert cells[i] != "-" and cells[-1] != "-"
        assert all(c == "-" for j, c in enumerate(cells[:-1]) if j != i)
    assert "Assumed, not measured" in out


def test_idle_json(capsys):
    assert main(["mlc", "--topology", "cxl-switch-2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    lat = dict(zip(data["memories"], data["latency_ns"][0]))
    assert lat["cxl0"] > lat["host0.dram"]
    assert data["assumptions"]


def test_loaded_curve_rises_to_saturation(capsys):
    assert main(["mlc", "--loaded", "--path", "host0:cxl0", "--topology", "cxl-x8-direct",
                 "--points", "6", "--json"]) == 0
    curve = json.loads(capsys.readouterr().out)["curve"]
    bws = [p["bandwidth_gbps"] for p in curve]
    lats = [p["latency_ns"] for p in curve]
    assert bws == sorted(bws)
    assert lats[-1] > 2 * lats[0]
    assert bws[-1] <= 15.0 * 1.001      # never above the device's media bandwidth


@pytest.mark.parametrize("args,message", [
    (["--loaded"], "--loaded needs --path HOST:MEMORY"),
    (["--loaded", "--path", "host9:cxl0"], "no host named 'host9'"),
    (["--loaded", "--path", "host0:nope"], "unknown endpoint 'nope'"),
    (["--loaded", "--path", "host0:cxl0", "--read-ratio", "2"], "read-ratio must be between 0 and 1"),
    (["--topology", "nope"], "no topology preset named 'nope'"),
])
def test_bad_arguments(capsys, args, message):
    assert main(["mlc", "--topology", "cxl-x8-direct", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
