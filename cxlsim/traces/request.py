"""The request record every trace reader yields, and the block-key functions.

A block key names the KV cache of one block of prompt tokens *together with every
block before it*, so equal keys mean a reusable prefix.  Keys are unsigned 64-bit
ints and never 0, so a cache may use 0 as its empty-slot marker.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from cxlsim.errors import ConfigError

MASK64 = (1 << 64) - 1
# splitmix64 finalizer multipliers (odd, so each step is invertible mod 2**64)
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


@dataclass(frozen=True, slots=True)
class Request:
    request_id: int              # 0-based position in the trace
    arrival_ms: float            # ms since trace start
    input_tokens: int
    output_tokens: int
    block_keys: tuple[int, ...]  # prefix-chained u64 keys, one per prompt block (last may be partial)
    block_tokens: int            # tokens per block
    session: int = -1            # conversation id if known, else -1


def mooncake_key(hash_id: int) -> int:
    """Map a Mooncake hash id to a well-spread, nonzero u64 key.

    splitmix64's finalizer is a bijection of u64 that sends 0 to 0; applying it
    to ``hash_id + 1`` therefore gives distinct ids distinct, nonzero keys.
    """
    if not 0 <= hash_id < MASK64:
        raise ConfigError(f"hash id must be in [0, 2**64 - 1), got {hash_id}")
    z = hash_id + 1
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def mooncake_keys(hash_ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """Vectorised :func:`mooncake_key` (uint64 array in, uint64 array out)."""
    z = np.asarray(hash_ids, dtype=np.uint64) + np.uint64(1)
    # uint64 array arithmetic wraps mod 2**64, which is what the mix wants
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def hash64(data: bytes) -> int:
    """Deterministic nonzero 64-bit hash (blake2b, little-endian digest)."""
    h = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    return h or 1  # keep 0 free as a sentinel; a zero digest is ~2**-64 likely


def token_block_keys(token_ids: Sequence[int] | np.ndarray, block_tokens: int) -> tuple[int, ...]:
    """Chained prefix keys of a token sequence: key_i = H(key_{i-1} || block i).

    Block i's token ids are hashed as little-endian int32 after the previous key's
    8 bytes (key_{-1} = 0), so two prompts that share their first k*block_tokens
    tokens share exactly their first k keys.  The last block may be partial.
    """
    if block_tokens < 1:
        raise ConfigError(f"block_tokens must be >= 1, got {block_tokens}")
    buf = np.asarray(token_ids, dtype="<i4").tobytes()
    step = 4 * block_tokens
    keys = []
    prev = 0
    for start in range(0, len(buf), step):
        prev = hash64(prev.to_bytes(8, "little") + buf[start:start + step])
        keys.append(prev)
    return tuple(keys)
