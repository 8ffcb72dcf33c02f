"""Accelerator and model presets: TOML tables loaded into frozen, validated dataclasses.

Presets live in cxlsim/presets/{accelerators,models}.toml, one table per part or model, each with
a `source` that cites its figures (tags: M measured, V vendor claim, ? weak, spec, S model) and an
`assumptions` list naming the keys we chose rather than took from a source. A user file with the
same schema can be given by path instead of a preset name. Every error names the file, the table
and the field; an unknown name lists the known ones.

KV-cache bytes per token (docs/replay.md, "KV-cache size"):
  gqa: 2 (K and V) * layers * kv_heads * head_dim * kv_dtype_bytes
  mla: layers * (kv_lora_rank + rope_head_dim) * kv_dtype_bytes  (one latent + the RoPE key)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .tomlfile import read_toml
from .topology import GIB, _Fields

PRESETS = Path(__file__).resolve().parent / "presets"
DTYPES = ("bf16", "fp16", "fp8")
ATTENTION = ("gqa", "mla")


@dataclass(frozen=True)
class HostLink:
    name: str
    bandwidth_gbps: float   # per direction, GB/s (= bytes/ns)
    latency_ns: float


@dataclass(frozen=True)
class Accelerator:
    name: str
    display_name: str
    vendor: str
    memory_kind: str
    memory_bytes: int
    memory_bandwidth_gbps: float
    dense_tflops: dict          # dtype -> dense peak TFLOPS (no structured sparsity)
    board_power_w: float
    memory_pj_per_bit: float
    host_link: HostLink
    source: str
    assumptions: tuple[str, ...] = ()

    def tflops(self, dtype: str) -> float:
        if dtype not in self.dense_tflops:
            raise ConfigError(f"accelerator {self.name!r} has no dense_tflops for {dtype!r} "
                              f"(it has: {', '.join(self.dense_tflops)})")
        return self.dense_tflops[dtype]


@dataclass(frozen=True)
class Model:
    name: str
    display_name: str
    params_b: float
    active_params_b: float
    layers: int
    hidden_size: int
    attention: str
    q_heads: int
    kv_heads: int
    head_dim: int
    kv_lora_rank: int
    rope_head_dim: int
    kv_dtype_bytes: int
    weight_dtype_bytes: int
    source: str

    @property
    def kv_bytes_per_token(self) -> int:
        if self.attention == "mla":
            return self.layers * (self.kv_lora_rank + self.rope_head_dim) * self.kv_dtype_bytes
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_dtype_bytes

    @property
    def weight_bytes(self) -> int:
        """All parameters (every expert of a MoE model must sit in HBM)."""
        return int(round(self.params_b * 1e9 * self.weight_dtype_bytes))

    @property
    def compute_dtype(self) -> str:
        """Tensor-core dtype the matmuls run in: FP8 for 1-byte weights, else BF16."""
        return "fp8" if self.weight_dtype_bytes == 1 else "bf16"


# ----------------------------------------------------------------------------- loading

def _load_toml(path: Path) -> dict:
    return read_toml(path)


def _int(f: _Fields, key: str, default: int | None = None, positive: bool = True) -> int:
    value = f.num(key, default=default, positive=positive)
    if value != int(value):
        f.fail(key, f"must be a whole number, got {value:g}")
    return int(value)


def _assumptions(f: _Fields, allowed: set[str]) -> tuple[str, ...]:
    names = f.names("assumptions")
    for n in names:
        if n.split(".")[0] not in allowed:
            f.fail("assumptions", f"{n!r} is not a key of this table")
    return names


_ACCEL_KEYS = {"display_name", "vendor", "memory_kind", "memory_gib", "memory_bandwidth_gbps",
               "dense_tflops", "board_power_w", "memory_pj_per_bit", "host_link", "source",
               "assumptions"}
_MODEL_KEYS = {"display_name", "params_b", "active_params_b", "layers", "hidden_size",
               "attention", "q_heads", "kv_heads", "head_dim", "kv_lora_rank", "rope_head_dim",
               "kv_dtype_bytes", "weight_dtype_bytes", "source"}


def parse_accelerator(name: str, table: dict, origin: str) -> Accelerator:
    f = _Fields(origin, f"[{name}]", table, _ACCEL_KEYS)
    flops_table = table.get("dense_tflops")
    ff = _Fields(origin, f"[{name}] dense_tflops", flops_table if flops_table is not None else {},
                 set(DTYPES))
    flops = {d: ff.num(d, positive=True) for d in DTYPES if d in ff.table}
    if not flops:
        f.fail("dense_tflops", f"needs at least one of {', '.join(DTYPES)}")
    link_table = table.get("host_link")
    if link_table is None:
        f.fail("host_link", "missing")
    lf = _Fields(origin, f"[{name}] host_link", link_table, {"name", "bandwidth_gbps", "latency_ns"})
    return Accelerator(
        name=name, display_name=f.str("display_name"), vendor=f.str("vendor"),
        memory_kind=f.str("memory_kind"),
        memory_bytes=int(f.num("memory_gib", positive=True) * GIB),
        memory_bandwidth_gbps=f.num("memory_bandwidth_gbps", positive=True),
        dense_tflops=flops, board_power_w=f.num("board_power_w", positive=True),
        memory_pj_per_bit=f.num("memory_pj_per_bit"),
        host_link=HostLink(lf.str("name"), lf.num("bandwidth_gbps", positive=True),
                           lf.num("latency_ns")),
        source=f.str("source"), assumptions=_assumptions(f, _ACCEL_KEYS))


def parse_model(name: str, table: dict, origin: str) -> Model:
    f = _Fields(origin, f"[{name}]", table, _MODEL_KEYS)
    attention = f.str("attention")
    if attention not in ATTENTION:
        f.fail("attention", f"must be one of {', '.join(ATTENTION)}, got {attention!r}")
    mla = attention == "mla"
    params, active = f.num("params_b", positive=True), f.num("active_params_b", positive=True)
    if active > params:
        f.fail("active_params_b", f"must be <= params_b ({params:g}), got {active:g}")
    model = Model(
        name=name, display_name=f.str("display_name"), params_b=params, active_params_b=active,
        layers=_int(f, "layers"), hidden_size=_int(f, "hidden_size"), attention=attention,
        q_heads=_int(f, "q_heads"), kv_heads=_int(f, "kv_heads"), head_dim=_int(f, "head_dim"),
        kv_lora_rank=_int(f, "kv_lora_rank", default=None if mla else 0, positive=mla),
        rope_head_dim=_int(f, "rope_head_dim", default=None if mla else 0, positive=False),
        kv_dtype_bytes=_int(f, "kv_dtype_bytes"), weight_dtype_bytes=_int(f, "weight_dtype_bytes"),
        source=f.str("source"))
    if model.q_heads % model.kv_heads and not mla:
        f.fail("kv_heads", f"must divide q_heads ({model.q_heads}), got {model.kv_heads}")
    return model


def _load_all(path: Path, parse) -> dict:
    data = _load_toml(path)
    out = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name}: expected a table [{name}], got a "
                              f"{type(table).__name__}")
        out[name] = parse(name, table, str(path))
    return out


def _resolve(name_or_path: str, kind: str, parse, preset_file: str):
    """A preset by name, or `FILE.toml` (its only table) or `FILE.toml:NAME` by path."""
    text = str(name_or_path)
    file_part, _, table = text.partition(".toml:")
    if text.endswith(".toml") or table:
        path = Path(file_part if table else text[:-5]).with_suffix(".toml")
        items = _load_all(path, parse)
        if table:
            if table not in items:
                raise ConfigError(f"{path}: no {kind} table [{table}] (tables: "
                                  f"{', '.join(items) or 'none'})")
            return items[table]
        if len(items) != 1:
            raise ConfigError(f"{path}: holds {len(items)} {kind} tables; pick one with "
                              f"{path}:NAME (tables: {', '.join(items)})")
        return next(iter(items.values()))
    items = _load_all(PRESETS / preset_file, parse)
    if text not in items:
        raise ConfigError(f"unknown {kind} {text!r}; known: {', '.join(sorted(items))} "
                          f"(or give FILE.toml[:NAME])")
    return items[text]


def load_accelerator(name_or_path: str) -> Accelerator:
    return _resolve(name_or_path, "accelerator", parse_accelerator, "accelerators.toml")


def load_model(name_or_path: str) -> Model:
    return _resolve(name_or_path, "model", parse_model, "models.toml")


def known_accelerators() -> list[str]:
    return sorted(_load_toml(PRESETS / "accelerators.toml"))


def known_models() -> list[str]:
    return sorted(_load_toml(PRESETS / "models.toml"))
