"""Cache-only replay: the block stream of a trace through the tiered index under one policy.

Built-in policies run the whole stream in C (BlockIndex.access_batch); any other policy runs
through KVStore, one Python decision per block. Both count the same way:
- block_hits / block_accesses: every block access counted independently (as libCacheSim does);
- prefix_hit_tokens: tokens a request can reuse as a cached prefix, i.e. its blocks up to the
  first miss (a block past a missing one is useless to attention), capped at its input length;
- tier_hits: hits per tier, when several tiers are configured.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .index import BlockIndex, TierSpec
from .kv import KVStore
from .policies import make_policy, policy_class
from .policies.base import Policy

CHUNK = 1 << 20  # accesses per C call: keeps the progress bar moving on long traces


@dataclass(frozen=True)
class CacheSimResult:
    capacity_blocks: int
    requests: int
    block_accesses: int
    block_hits: int
    block_hit_ratio: float
    prefix_hit_tokens: int
    prefix_hit_ratio: float
    tier_hits: dict[str, int] | None
    accesses_per_s: float

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in (
            "capacity_blocks", "requests", "block_accesses", "block_hits", "block_hit_ratio",
            "prefix_hit_tokens", "prefix_hit_ratio", "tier_hits", "accesses_per_s")}
        if out["tier_hits"] is None:
            del out["tier_hits"]
        return out


def uses_c_fast_path(policy: Policy) -> bool:
    """True when the policy is exactly a built-in whose decisions a C ordering reproduces."""
    return policy.c_ordering is not None and type(policy) is policy_class(policy.c_ordering)


def tier_specs(capacity_blocks: int, lower: list[tuple[str, int]], ordering: str) -> list[TierSpec]:
    if capacity_blocks < 1:
        raise ConfigError(f"--capacity-blocks must be >= 1, got {capacity_blocks}")
    tiers = [TierSpec("hbm", capacity_blocks=capacity_blocks, ordering=ordering)]
    for name, blocks in lower:
        if blocks < 1:
            raise ConfigError(f"--tiers: tier {name!r} needs a capacity >= 1 block, got {blocks}")
        tiers.append(TierSpec(name, capacity_blocks=blocks, ordering=ordering))
    return tiers


def parse_tiers(text: str | None) -> list[tuple[str, int]]:
    """'dram:20000,cxl:80000' -> [('dram', 20000), ('cxl', 80000)] (tiers below HBM)."""
    if not text:
        return []
    out = []
    for part in text.split(","):
        name, sep, blocks = part.strip().partition(":")
        if not sep or not name or not blocks.strip().isdigit():
            raise ConfigError(f"--tiers: expected NAME:BLOCKS[,NAME:BLOCKS...], got {part!r}")
        out.append((name, int(blocks)))
    names = ["hbm"] + [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"--tiers: tier names must be unique (tier 0 is 'hbm'), got {names}")
    return out


def _run_python(policy: Policy, index: BlockIndex, keys: np.ndarray, offsets: np.ndarray,
                progress) -> np.ndarray:
    store = KVStore(index, policy)
    out = np.empty(len(keys), np.int8)
    step = 1000                      # requests per call: keeps the progress bar moving
    for first in range(0, len(offsets) - 1, step):
        bounds = offsets[first:first + step + 1]
        lo, hi = int(bounds[0]), int(bounds[-1])
        out[lo:hi] = store.access_requests(keys[lo:hi], bounds - lo, 1)
        if progress is not None:
            progress.update(hi - lo)
    store.flush()
    return out


def simulate(arrays: dict, policy: str | Policy, capacity_blocks: int,
             lower_tiers: list[tuple[str, int]] = (), progress: bool = False) -> CacheSimResult:
    """Replay trace_arrays(...) through one cache configuration."""
    policy = make_policy(policy)
    keys, offsets = arrays["block_keys"], arrays["block_offsets"]
    fast = uses_c_fast_path(policy)
    tiers = tier_specs(capacity_blocks, list(lower_tiers), policy.c_ordering if fast else "lru")
    index = BlockIndex(tiers)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(keys), unit="blk", unit_scale=True, leave=False, disable=None,
                   desc=f"{policy.name} @ {capacity_blocks}")
    start = time.perf_counter()
    if fast:
        out = np.empty(len(keys), np.int8)
        for lo in range(0, len(keys), CHUNK):
            hi = min(lo + CHUNK, len(keys))
            out[lo:hi] = index.access_batch(keys[lo:hi], 1, promote=policy.promote_on_hit,
                                            demote=policy.demote_on_evict)
            if bar is not None:
                bar.update(hi - lo)
    else:
        out = _run_python(policy, index, keys, offsets, bar)
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return summarize(out, arrays, [t.name for t in tiers], capacity_blocks, elapsed)


def prefix_hit_blocks(hit: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per request, how many leading blocks hit (the reusable prefix, in blocks)."""
    n_req = len(offsets) - 1
    lengths = np.diff(offsets)
    pos = np.arange(len(hit)) - np.repeat(offsets[:-1], lengths)
    first_miss_pos = np.where(hit, np.iinfo(np.int64).max, pos)
    result = lengths.copy()
    nonempty = lengths > 0
    if nonempty.any():
        firsts = np.minimum.reduceat(first_miss_pos, offsets[:-1][nonempty])
        result[nonempty] = np.minimum(firsts, lengths[nonempty])
    return result[:n_req]


def summarize(out: np.ndarray, arrays: dict, tier_names: list[str], capacity_blocks: int,
              elapsed: float) -> CacheSimResult:
    offsets = arrays["block_offsets"]
    hit = out >= 0
    block_tokens = int(arrays.get("block_tokens", 512))
    input_tokens = arrays["input_tokens"]
    reused = np.minimum(prefix_hit_blocks(hit, offsets) * block_tokens, input_tokens)
    n = len(out)
    hits = int(hit.sum())
    tier_hits = None
    if len(tier_names) > 1:
        counts = np.bincount(out[hit].astype(np.int64), minlength=len(tier_names))
        tier_hits = {name: int(c) for name, c in zip(tier_names, counts)}
    total_tokens = int(input_tokens.sum())
    return CacheSimResult(
        capacity_blocks=capacity_blocks, requests=len(offsets) - 1, block_accesses=n,
        block_hits=hits, block_hit_ratio=hits / n if n else 0.0,
        prefix_hit_tokens=int(reused.sum()),
        prefix_hit_ratio=float(reused.sum()) / total_tokens if total_tokens else 0.0,
        tier_hits=tier_hits, accesses_per_s=n / elapsed if elapsed > 0 else float("inf"))
