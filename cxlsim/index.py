"""Python face of the C block index: tiers of KV blocks keyed by 64-bit prefix keys.

`BlockIndex` changes state and is owned by an engine (kv.KVStore, the cache simulator, the pool
server). Policies only ever see an `IndexView`, which has no method that changes anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from ._core import ffi, lib
from .errors import ConfigError

ORDERINGS = {"lru": lib.CXL_ORD_LRU, "fifo": lib.CXL_ORD_FIFO, "lfu": lib.CXL_ORD_LFU,
             "s3fifo": lib.CXL_ORD_S3FIFO, "sieve": lib.CXL_ORD_SIEVE}
U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class TierSpec:
    """One tier: a name (hbm, dram, cxl, ...), its capacity and the C eviction ordering it keeps."""
    name: str
    capacity_bytes: int = 0      # 0: no byte limit
    capacity_blocks: int = -1    # < 0: no block-count limit
    ordering: str = "lru"

    def __post_init__(self):
        if self.ordering not in ORDERINGS:
            raise ConfigError(f"tier {self.name!r}: ordering: unknown {self.ordering!r} "
                              f"(known: {', '.join(ORDERINGS)})")
        if self.capacity_bytes < 0:
            raise ConfigError(f"tier {self.name!r}: capacity_bytes must be >= 0")


@dataclass(frozen=True)
class BlockInfo:
    tier: int
    bytes: int
    refs: int
    owner: int
    sharers: int
    freq: int
    last_access: int


@dataclass(frozen=True)
class TierStats:
    used_bytes: int
    capacity_bytes: int
    blocks: int
    capacity_blocks: int
    hits: int
    inserts: int
    evictions: int


def _key(key) -> int:
    key = int(key)
    if not 0 <= key <= U64_MAX:
        raise ValueError(f"block keys are unsigned 64-bit integers, got {key}")
    return key


class BlockIndex:
    """Tiered block index in C. Tier 0 is the fastest (HBM)."""

    def __init__(self, tiers: list[TierSpec]):
        if not tiers:
            raise ConfigError("an index needs at least one tier")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ConfigError(f"tier names must be unique, got {names}")
        self.tiers = tuple(tiers)
        self.tier_names = tuple(names)
        n = len(tiers)
        cap_bytes = ffi.new("uint64_t[]", [t.capacity_bytes for t in tiers])
        cap_blocks = ffi.new("int64_t[]", [t.capacity_blocks for t in tiers])
        ordering = ffi.new("int32_t[]", [ORDERINGS[t.ordering] for t in tiers])
        self._h = _core.new_handle(lib.cxl_index_new, lib.cxl_index_free, n, cap_bytes,
                                   cap_blocks, ordering)
        self._i32 = ffi.new("int32_t *")
        # pins mirrored in Python: policies ask is_pinned() on every victim, so keep it a dict hit
        self.pins: dict[int, int] = {}
        self.view = IndexView(self)

    def tier_id(self, name_or_id) -> int:
        if isinstance(name_or_id, str):
            if name_or_id not in self.tier_names:
                raise ConfigError(f"unknown tier {name_or_id!r} (tiers: {', '.join(self.tier_names)})")
            return self.tier_names.index(name_or_id)
        tier = int(name_or_id)
        if not 0 <= tier < len(self.tiers):
            raise ValueError(f"tier {tier} out of range 0..{len(self.tiers) - 1}")
        return tier

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return lib.cxl_index_size(self._h)

    def __contains__(self, key) -> bool:
        return lib.cxl_index_tier_of(self._h, _key(key)) >= 0

    def lookup(self, key) -> int:
        """Tier holding key, or -1."""
        return lib.cxl_index_tier_of(self._h, _key(key))

    def lookup_batch(self, keys) -> np.ndarray:
        keys = _core.as_array(keys, np.uint64)
        out = np.empty(len(keys), np.int32)
        _core.check(lib.cxl_index_lookup_batch(self._h, _core.ptr(keys, "uint64_t"),
                                               _core.ptr(out, "int32_t"), len(keys)))
        return out

    def info(self, key) -> BlockInfo:
        out = ffi.new("cxl_block_info *")
        _core.check(lib.cxl_index_info(self._h, _key(key), out))
        return BlockInfo(out.tier, out.bytes, out.refs, out.owner, out.sharers, out.freq,
                         out.last_access)

    def fits(self, tier, nbytes: int) -> bool:
        _core.check(lib.cxl_index_fits(self._h, self.tier_id(tier), nbytes, self._i32))
        return bool(self._i32[0])

    def tier_keys(self, tier, limit: int | None = None) -> np.ndarray:
        """Keys of a tier, next victim of its C ordering first."""
        tier = self.tier_id(tier)
        n = self.tier_stats(tier).blocks if limit is None else limit
        out = np.empty(n, np.uint64)
        got = ffi.new("int64_t *")
        _core.check(lib.cxl_index_tier_keys(self._h, tier, _core.ptr(out, "uint64_t"), n, got))
        return out[: got[0]]

    def tier_stats(self, tier) -> TierStats:
        out = ffi.new("cxl_tier_stats *")
        _core.check(lib.cxl_index_tier_stats(self._h, self.tier_id(tier), out))
        return TierStats(out.used_bytes, out.cap_bytes, out.blocks, out.cap_blocks, out.hits,
                         out.inserts, out.evictions)

    def memory_bytes(self) -> int:
        """Bytes the C index holds for records, key table and heaps."""
        return lib.cxl_index_memory_bytes(self._h)

    # ------------------------------------------------------------------ changes
    def insert(self, key, tier, nbytes: int, owner: int = -1) -> None:
        _core.check(lib.cxl_index_insert(self._h, _key(key), self.tier_id(tier), nbytes, owner))

    def remove(self, key) -> None:
        _core.check(lib.cxl_index_remove(self._h, _key(key)))

    def move(self, key, tier) -> None:
        _core.check(lib.cxl_index_move(self._h, _key(key), self.tier_id(tier)))

    def touch(self, key) -> None:
        _core.check(lib.cxl_index_touch(self._h, _key(key)))

    def pin(self, key) -> None:
        key = _key(key)
        _core.check(lib.cxl_index_pin(self._h, key))
        self.pins[key] = self.pins.get(key, 0) + 1

    def unpin(self, key) -> None:
        key = _key(key)
        _core.check(lib.cxl_index_unpin(self._h, key))
        if self.pins[key] == 1:
            del self.pins[key]
        else:
            self.pins[key] -= 1

    def set_sharers(self, key, sharers: int) -> None:
        _core.check(lib.cxl_index_set_sharers(self._h, _key(key), sharers))

    def evict_one(self, tier) -> tuple[int, int]:
        """Let the tier's C ordering pick a victim; it leaves the index. Returns (key, bytes)."""
        key, nbytes = ffi.new("uint64_t *"), ffi.new("uint32_t *")
        _core.check(lib.cxl_index_evict_one(self._h, self.tier_id(tier), key, nbytes))
        return key[0], nbytes[0]

    def access_batch(self, keys, nbytes=1, promote: bool = True, demote: bool = True
                     ) -> np.ndarray:
        """Built-in fast path over a key stream: the hit tier per access, -1 for a miss.

        nbytes: one size for every block, or an array of sizes."""
        keys = _core.as_array(keys, np.uint64)
        out = np.empty(len(keys), np.int8)
        sizes = None
        if np.ndim(nbytes):
            sizes = _core.as_array(nbytes, np.uint32)
            if len(sizes) != len(keys):
                raise ValueError("nbytes must be one size or one per key")
        flags = (lib.CXL_ACCESS_PROMOTE if promote else 0) | (lib.CXL_ACCESS_DEMOTE if demote else 0)
        _core.check(lib.cxl_index_access_batch(
            self._h, _core.ptr(keys, "uint64_t"),
            ffi.NULL if sizes is None else _core.ptr(sizes, "uint32_t"),
            0 if sizes is not None else int(nbytes), len(keys), flags, _core.ptr(out, "int8_t")))
        return out


class IndexView:
    """Read-only view of a BlockIndex: what a policy may look at."""

    __slots__ = ("_index", "_h", "_pins", "tier_names", "n_tiers")

    def __init__(self, index: BlockIndex):
        self._index = index
        self._h = index._h
        self._pins = index.pins
        self.tier_names = index.tier_names
        self.n_tiers = len(self.tier_names)   # read-only by contract; an attribute because
                                              # demote_to reads it for every victim

    def tier_of(self, key: int) -> int:
        """Tier holding key, or -1."""
        return lib.cxl_index_tier_of(self._h, key)

    def is_pinned(self, key: int) -> bool:
        """True while a running request holds the block (it must not be chosen as a victim)."""
        return key in self._pins

    @property
    def pinned(self):
        """Read-only mapping of pinned keys (for `key in view.pinned` in tight victim loops)."""
        return self._pins

    def fits(self, tier: int, nbytes: int) -> bool:
        return bool(lib.cxl_index_fits_now(self._h, tier, nbytes))

    def bytes_of(self, key: int) -> int:
        """Size of a resident block (-1 if absent)."""
        return lib.cxl_index_bytes_of(self._h, key)

    def usage(self, tier: int) -> tuple[int, int]:
        """(bytes used, blocks held) in the tier."""
        stats = self._index.tier_stats(tier)
        return stats.used_bytes, stats.blocks

    def info(self, key: int) -> BlockInfo:
        return self._index.info(key)

    def tier_stats(self, tier) -> TierStats:
        return self._index.tier_stats(tier)
