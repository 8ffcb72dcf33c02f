"""Topology loading: presets load and match their documented idle latencies; bad files say where."""
import pytest

from cxlsim.errors import ConfigError
from cxlsim.fabric import Fabric
from cxlsim.topology import load_topology, preset_names

# idle load-to-use sums documented in docs/calibration.md (links + switches + media), without the
# 64-byte serialization that idle_latency adds on top
DOCUMENTED_IDLE_NS = {
    ("local-ddr5", "host0", "host0.dram"): 110,
    ("remote-numa", "host0", "host1.dram"): 180,
    ("cxl-x8-direct", "host0", "cxl0"): 243,
    ("cxl-switch-1", "host0", "cxl0"): 323,
    ("cxl-switch-2", "host0", "cxl0"): 403,
    ("cxl-mhd-4host", "host3", "mhd0"): 243,
    ("cxl-pool-16host", "host15", "pool"): 403,
    ("kv-tiered", "host0", "pool"): 323,
}


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_cites_sources(name):
    topo = load_topology(name)
    assert topo.name == name
    for m in topo.memories:
        assert m.source, f"{name}: memory {m.name} has no source"
    for link in topo.links:
        assert link.source, f"{name}: link {link.a}-{link.b} has no source"


@pytest.mark.parametrize("key,ns", DOCUMENTED_IDLE_NS.items(), ids=lambda v: str(v))
def test_preset_idle_latency_matches_calibration(key, ns):
    name, host, memory = key
    fabric = Fabric(load_topology(name))
    route_lat = fabric.idle_latency(memory, host, 0)
    assert route_lat == pytest.approx(ns, abs=0.5)


def write(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


GOOD = """
[topology]
name = "bad"
[[host]]
name = "h0"
[[memory]]
name = "m0"
kind = "cxl"
capacity_gib = 64
read_latency_ns = 150
bandwidth_gbps = 30
[[link]]
ends = ["h0", "m0"]
bandwidth_gbps = 32
latency_ns = 20
"""


@pytest.mark.parametrize("old,new,message", [
    ("read_latency_ns = 150", "read_latency_ns = -5",
     r"bad.toml: \[\[memory\]\] #1 'm0': read_latency_ns: must be a number >= 0, got -5"),
    ("read_latency_ns = 150", "read_latency_ns = \"fast\"", r"read_latency_ns: must be a number"),
    ("kind = \"cxl\"", "kind = \"sram\"", r"'m0': kind: must be one of dram, cxl, hbm"),
    ("bandwidth_gbps = 30", "bandwidth_gbps = 30\nbandwith = 3", r"'m0': bandwith: unknown key"),
    ("capacity_gib = 64\n", "", r"'m0': capacity_gib: missing"),
    ("ends = [\"h0\", \"m0\"]", "ends = [\"h0\", \"m9\"]", r"\[\[link\]\] #1: ends: 'm9' is not a host"),
    ("ends = [\"h0\", \"m0\"]", "ends = [\"h0\"]", r"\[\[link\]\] #1: ends: must be two different"),
    ("name = \"m0\"", "name = \"h0\"", r"name: already used by a host"),
])
def test_bad_toml_names_file_element_and_field(tmp_path, old, new, message):
    assert old in GOOD
    with pytest.raises(ConfigError, match=message):
        load_topology(write(tmp_path, GOOD.replace(old, new)))


def test_not_toml_and_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_topology(write(tmp_path, "[topology\nname="))
    with pytest.raises(ConfigError, match="no such topology file"):
        load_topology(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match=r"no topology preset named 'nope' \(presets: .*kv-tiered"):
        load_topology("nope")


def test_unconnected_memory_is_rejected(tmp_path):
    text = GOOD + "\n[[memory]]\nname = \"m1\"\nkind = \"dram\"\ncapacity_gib = 1\nread_latency_ns = 80\nbandwidth_gbps = 10\n"
    with pytest.raises(ConfigError, match="'m1': not connected by any"):
        load_topology(write(tmp_path, text))
