"""Accelerator and model presets: KV bytes per token, sources, TP rule, clear errors."""
import pytest

from cxlsim.errors import ConfigError
from cxlsim.hardware import (known_accelerators, known_models, load_accelerator, load_model)
from cxlsim.serving.cost import Deployment, default_tp

# 2 * layers * kv_heads * head_dim * 2 bytes (GQA); layers * (kv_lora_rank + rope) * 2 (MLA)
KV_BYTES = {"llama-3-8b": 2 * 32 * 8 * 128 * 2, "llama-3-70b": 327_680,
            "qwen2.5-72b": 2 * 80 * 8 * 128 * 2, "deepseek-v3": 61 * (512 + 64) * 2}


@pytest.mark.parametrize("name,expected", KV_BYTES.items())
def test_kv_bytes_per_token(name, expected):
    assert load_model(name).kv_bytes_per_token == expected


def test_llama_70b_is_327680_bytes_per_token():
    assert load_model("llama-3-70b").kv_bytes_per_token == 327_680


@pytest.mark.parametrize("name", ["h100-sxm", "h200", "b200", "rngd", "atom", "rebel-quad"])
def test_accelerator_presets_load_with_sources(name):
    a = load_accelerator(name)
    assert a.source and a.memory_bytes > 0 and a.dense_tflops and a.board_power_w > 0
    assert "PCIe Gen5 x16" in a.host_link.name


def test_every_model_cites_a_source():
    for name in known_models():
        assert load_model(name).source


def test_default_tp_for_70b_on_h100():
    model, accel = load_model("llama-3-70b"), load_accelerator("h100-sxm")
    with pytest.raises(ConfigError, match="do not fit"):
        Deployment(model, accel, tp=1)            # 131.5 GiB of weights on one 80 GiB device
    assert Deployment(model, accel, tp=2).kv_capacity_bytes > 0
    assert default_tp(model, accel) == 4
    assert default_tp(load_model("llama-3-8b"), accel) == 1


def test_unknown_names_list_known_ones():
    with pytest.raises(ConfigError, match="known: .*h100-sxm"):
        load_accelerator("h900")
    with pytest.raises(ConfigError, match="known: .*llama-3-70b"):
        load_model("llama-9")


def test_bad_model_file_names_file_table_and_field(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[tiny]\ndisplay_name = "t"\nparams_b = 1.0\nactive_params_b = 1.0\n'
                    'layers = -3\nhidden_size = 8\nattention = "gqa"\nq_heads = 1\nkv_heads = 1\n'
                    'head_dim = 8\nkv_dtype_bytes = 2\nweight_dtype_bytes = 2\nsource = "x"\n')
    with pytest.raises(ConfigError, match=r"m\.toml: \[tiny\]: layers: must be a number > 0"):
        load_model(str(path))


def test_bad_accelerator_field(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[x]\ndisplay_name = "x"\nvendor = "v"\nmemory_kind = "hbm3"\nmemory_gib = 1\n'
                    'memory_bandwidth_gbps = 1\ndense_tflops = { bf17 = 1.0 }\nboard_power_w = 1\n'
                    'memory_pj_per_bit = 1\nhost_link = { name = "p", bandwidth_gbps = 1, '
                    'latency_ns = 1 }\nsource = "s"\n')
    with pytest.raises(ConfigError, match=r"a\.toml: \[x\] dense_tflops: bf17: unknown key"):
        load_accelerator(str(path))


def test_known_lists():
    assert "h100-sxm" in known_accelerators() and "deepseek-v3" in known_models()
