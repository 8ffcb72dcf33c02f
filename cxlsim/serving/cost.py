"""Roofline cost of one serving iteration on a tensor-parallel group of accelerators.

An iteration runs a batch: prefill chunks (n new tokens after c tokens already in the KV cache)
and decode steps (one new token after L tokens). Its time is the larger of

  compute: FLOPs / (tp * dense peak * mfu)
           FLOPs = 2 * active_params * new_tokens + 4 * layers * q_heads * head_dim * attn_pairs
           attn_pairs = sum over new tokens of the tokens each attends to (causal)
  memory:  HBM bytes / (tp * HBM bandwidth * mbu)
           HBM bytes = weight bytes (read once per iteration) + kv_bytes_per_token * kv_tokens
           kv_tokens = tokens whose KV the batch reads or writes (c + n per chunk, L + 1 per step)

mfu and mbu (model FLOPs / bandwidth utilisation) are explicit assumptions, see DEFAULTS and
docs/replay.md. For MLA the attention term uses q_heads * head_dim as for GQA: an approximation.

Decode-only stretches are summed in closed form: with D requests whose contexts sum to S0, step k
(0-based) has attn_pairs = kv_tokens = S0 + D + D*k, so both roofline terms are linear in k and
the time of K steps is a sum of at most two arithmetic series (`decode_ns`). The engine uses the
same function for one step (K = 1), so a stretch and step-by-step replay agree exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..hardware import Accelerator, Model

#: efficiency assumptions (docs/replay.md, "Assumptions")
DEFAULT_MFU = 0.5          # [assumption] share of dense peak FLOPs a large prefill batch reaches
DEFAULT_MBU = 0.8          # [assumption] share of HBM peak bandwidth decode kernels sustain
#: HBM held back for activations, CUDA graphs and fragmentation: vLLM's default
#: --gpu-memory-utilization 0.9 leaves 10% of the device outside its KV cache [vLLM engine args]
DEFAULT_RESERVE = 0.10
MAX_TP = 64


@dataclass(frozen=True)
class Deployment:
    """A model on `tp` accelerators of one kind: the unit one host serves with."""
    model: Model
    accel: Accelerator
    tp: int
    mfu: float = DEFAULT_MFU
    mbu: float = DEFAULT_MBU
    reserve: float = DEFAULT_RESERVE

    def __post_init__(self):
        for name, value in (("mfu", self.mfu), ("mbu", self.mbu)):
            if not 0 < value <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        if not 0 <= self.reserve < 1:
            raise ConfigError(f"reserve must be in [0, 1), got {self.reserve}")
        if type(self.tp) is not int or not 1 <= self.tp <= MAX_TP:
            raise ConfigError(f"tp must be an integer in 1..{MAX_TP}, got {self.tp!r}")
        if self.kv_capacity_bytes <= 0:
            raise ConfigError(
                f"{self.model.name} weights ({self.model.weight_bytes / 2**30:.1f} GiB) do not fit "
                f"in tp={self.tp} x {self.accel.name} ({self.hbm_bytes / 2**30:.1f} GiB, "
                f"{self.reserve:.0%} reserved); raise --tp (default rule picks {default_tp(self.model, self.accel, self.reserve)})")

    # ---- scaled hardware
    @property
    def hbm_bytes(self) -> int:
        return self.tp * self.accel.memory_bytes

    @property
    def kv_capacity_bytes(self) -> int:
        return int(self.hbm_bytes * (1 - self.reserve)) - self.model.weight_bytes

    @property
    def flops_per_ns(self) -> float:
        return self.tp * self.accel.tflops(self.model.compute_dtype) * 1e3 * self.mfu

    @property
    def bytes_per_ns(self) -> float:
        return self.tp * self.accel.memory_bandwidth_gbps * self.mbu

    @property
    def host_link_gbps(self) -> float:
        return self.tp * self.accel.host_link.bandwidth_gbps

    @property
    def power_w(self) -> float:
        return self.tp * self.accel.board_power_w

    # ---- per-token constants
    @property
    def flops_per_token(self) -> float:
        return 2.0 * self.model.active_params_b * 1e9

    @property
    def flops_per_pair(self) -> float:
        m = self.model
        return 4.0 * m.layers * m.q_heads * m.head_dim

    # ---- costs
    def iteration_ns(self, new_tokens: int, attn_pairs: int, kv_tokens: int) -> float:
        flops = self.flops_per_token * new_tokens + self.flops_per_pair * attn_pairs
        nbytes = self.model.weight_bytes + self.model.kv_bytes_per_token * kv_tokens
        return max(flops / self.flops_per_ns, nbytes / self.bytes_per_ns)

    def iteration_hbm_bytes(self, kv_tokens: int) -> int:
        return self.model.weight_bytes + self.model.kv_bytes_per_token * kv_tokens

    def _decode_lines(self, n: int, ctx_sum: int) -> tuple[float, float, float, float]:
        """Step k takes max(a1 + b1 k, a2 + b2 k): compute line and memory line."""
        base = ctx_sum + n
        f, b = self.flops_per_ns, self.bytes_per_ns
        a1 = (self.flops_per_token * n + self.flops_per_pair * base) / f
        b1 = self.flops_per_pair * n / f
        a2 = (self.model.weight_bytes + self.model.kv_bytes_per_token * base) / b
        b2 = self.model.kv_bytes_per_token * n / b
        return a1, b1, a2, b2

    def decode_ns(self, n: int, ctx_sum: int, steps: int) -> float:
        """Time of `steps` decode-only steps of n requests whose contexts sum to ctx_sum."""
        if steps <= 0:
            return 0.0
        a1, b1, a2, b2 = self._decode_lines(n, ctx_sum)
        # the lines cross at most once: find the first step where the other line wins
        if b1 == b2:
            a, b = (a1, b1) if a1 >= a2 else (a2, b2)
            return _series(a, b, 0, steps)
        cross = (a2 - a1) / (b1 - b2)          # a1 + b1 x = a2 + b2 x
        first_hi, second_hi = ((a2, b2), (a1, b1)) if b1 > b2 else ((a1, b1), (a2, b2))
        k = min(steps, max(0, int(cross) + 1)) if cross >= 0 else 0
        # steps [0, k) use the line that is higher before the crossing, [k, steps) the other
        return _series(*first_hi, 0, k) + _series(*second_hi, k, steps)

    def decode_steps_until(self, n: int, ctx_sum: int, dt: float, max_steps: int) -> int:
        """Smallest k in 1..max_steps with decode_ns(k) >= dt (max_steps if none)."""
        lo, hi = 1, max_steps
        if self.decode_ns(n, ctx_sum, hi) < dt:
            return max_steps
        while lo < hi:
            mid = (lo + hi) // 2
            if self.decode_ns(n, ctx_sum, mid) >= dt:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def decode_hbm_bytes(self, n: int, ctx_sum: int, steps: int) -> float:
        """HBM bytes read and written by `steps` decode steps (weights + KV), for energy."""
        kv_tokens = steps * (ctx_sum + n) + n * steps * (steps - 1) // 2
        return steps * self.model.weight_bytes + self.model.kv_bytes_per_token * kv_tokens


def _series(a: float, b: float, lo: int, hi: int) -> float:
    """sum_{k=lo}^{hi-1} (a + b k)."""
    n = hi - lo
    if n <= 0:
        return 0.0
    return n * a + b * (n * (lo + hi - 1) / 2)


def default_tp(model: Model, accel: Accelerator, reserve: float = DEFAULT_RESERVE) -> int:
    """Smallest power of two whose usable HBM (after the reserve) is at least twice the weights,
    i.e. weights take at most half and the KV cache gets the other half or more. Llama-3-70B in
    BF16 (131.5 GiB) needs tp >= 2 on 80 GiB H100s just to hold the weights; this rule gives 4."""
    tp = 1
    while tp < MAX_TP and tp * accel.memory_bytes * (1 - reserve) < 2 * model.weight_bytes:
        tp *= 2
    return tp
