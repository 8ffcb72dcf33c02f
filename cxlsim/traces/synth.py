"""Seeded synthetic multi-turn conversation traces in Mooncake format.

Model (every random draw comes from numpy.random.Generator(PCG64(seed))):
  * A few system prompts, picked with Zipf popularity; their whole 512-token
    blocks are shared by every session that uses them.
  * Sessions start by a two-state Markov-modulated Poisson process (calm/burst
    rates, exponential sojourn in each state), so arrivals come in bursts.
  * A session has 1 + Geometric turns.  Turn k's prompt is turn k-1's prompt +
    turn k-1's output + new user text, so it keeps every block that was full in
    turn k-1's prompt (a partial last block changes and gets a new id).
  * Between turns: the answer streams (decode_ms_per_token per output token),
    then the user thinks (lognormal).  A session ends early once its context
    would pass max_context tokens.
Hash ids are numbered in order of first appearance, as in Mooncake's traces.
"""
from __future__ import annotations

import heapq
import itertools
import json
import os
from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np

from cxlsim.errors import ConfigError
from cxlsim.traces.request import Request, mooncake_key

BLOCK = 512  # Mooncake block size, fixed by the format


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the generator; lognormals are given as (median, sigma of the log)."""
    n_system_prompts: int = 6
    system_zipf: float = 1.2            # popularity of system prompt r is 1 / r**system_zipf
    system_median: float = 1024.0       # tokens (2 blocks)
    system_sigma: float = 0.6
    turns_mean: float = 2.0             # turns per session ~ Geometric(1 / turns_mean), >= 1
    user_median: float = 3000.0         # new user text per turn, tokens (long pastes, as in Mooncake)
    user_sigma: float = 1.2
    output_median: float = 250.0        # generated tokens per turn
    output_sigma: float = 0.8
    output_max: int = 4096
    max_context: int = 32768            # stop a session before its prompt passes this
    think_median_s: float = 25.0        # user think time between turns
    think_sigma: float = 0.8
    decode_ms_per_token: float = 25.0   # time for the previous answer to stream back
    rate_calm: float = 0.8              # session starts per second, calm state
    rate_burst: float = 6.0             # session starts per second, burst state
    calm_mean_s: float = 60.0           # mean sojourn in the calm state
    burst_mean_s: float = 10.0          # mean sojourn in the burst state


def _lognormal(rng: np.random.Generator, median: float, sigma: float) -> float:
    return float(rng.lognormal(np.log(median), sigma))


def synthesize(n_requests: int, seed: int, params: SynthParams | None = None, **overrides) -> list[Request]:
    """`n_requests` requests, sorted by arrival; `overrides` replace SynthParams fields."""
    if n_requests < 1:
        raise ConfigError(f"n_requests must be >= 1, got {n_requests}")
    p = replace(params or SynthParams(), **overrides)
    rng = np.random.Generator(np.random.PCG64(seed))
    next_id = itertools.count().__next__  # raw ids; renumbered by first appearance below

    weights = 1.0 / np.arange(1, p.n_system_prompts + 1) ** p.system_zipf
    weights /= weights.sum()
    sys_len = [max(1, round(_lognormal(rng, p.system_median, p.system_sigma))) for _ in weights]
    sys_ids = [[next_id() for _ in range(n // BLOCK)] for n in sys_len]

    turns: list[tuple[int, int, int, int, int, list[int]]] = []  # (ms, session, k, in, out, ids)
    t_s, burst, state_end = 0.0, False, float(rng.exponential(p.calm_mean_s))
    session, settled, pending = 0, 0, []  # pending: arrivals not yet before t_s (a heap)
    while True:
        s = int(rng.choice(p.n_system_prompts, p=weights))
        context = sys_len[s]                  # tokens before this turn's user text
        full = list(sys_ids[s])               # ids of the blocks already full in `context`
        t_ms = t_s * 1000.0
        for k in range(int(rng.geometric(1.0 / p.turns_mean))):
            n_in = context + max(1, round(_lognormal(rng, p.user_median, p.user_sigma)))
            if n_in > p.max_context and k > 0:
                break
            n_out = min(p.output_max, max(1, round(_lognormal(rng, p.output_median, p.output_sigma))))
            ids = full + [next_id() for _ in range(-(-n_in // BLOCK) - len(full))]
            turns.append((round(t_ms), session, k, n_in, n_out, ids))
            full = ids[: n_in // BLOCK]
            context = n_in + n_out
            t_ms += n_out * p.decode_ms_per_token + 1000.0 * _lognormal(rng, p.think_median_s, p.think_sigma)
            heapq.heappush(pending, turns[-1][0])
        session += 1
        while True:  # MMPP: next start, switching state whenever the sojourn ends first
            gap = float(rng.exponential(1.0 / (p.rate_burst if burst else p.rate_calm)))
            if t_s + gap <= state_end:
                t_s += gap
                break
            t_s, burst = state_end, not burst
            state_end = t_s + float(rng.exponential(p.burst_mean_s if burst else p.calm_mean_s))
        # every later turn arrives at or after t_s, so turns before it are settled;
        # stop once n are (ties in whole ms sort by session, so later sessions go after)
        while pending and pending[0] < t_s * 1000.0:
            heapq.heappop(pending)
            settled += 1
        if settled >= n_requests:
            break

    turns.sort(key=lambda t: (t[0], t[1], t[2]))
    renumber: dict[int, int] = {}
    out = []
    for i, (ms, sess, _, n_in, n_out, ids) in enumerate(turns[:n_requests]):
        keys = tuple(mooncake_key(renumber.setdefault(h, len(renumber))) for h in ids)
        out.append(Request(i, float(ms), n_in, n_out, keys, BLOCK, session=sess))
    return out


def write_mooncake(requests: Iterable[Request], path: str | os.PathLike) -> None:
    """Write Mooncake JSON lines; block keys become dense hash ids in order of first
    appearance (so synthesize() output round-trips to the same ids)."""
    ids: dict[int, int] = {}
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in requests:
            if r.block_tokens != BLOCK or len(r.block_keys) != -(-r.input_tokens // BLOCK):
                raise ConfigError(f"request {r.request_id}: Mooncake format needs one key per "
                                 f"{BLOCK}-token block, got {len(r.block_keys)} keys of "
                                 f"{r.block_tokens} tokens for {r.input_tokens} input tokens")
            row = {"timestamp": round(r.arrival_ms), "input_length": r.input_tokens,
                   "output_length": r.output_tokens,
                   "hash_ids": [ids.setdefault(k, len(ids)) for k in r.block_keys]}
            f.write(json.dumps(row) + "\n")


def reuse_ratio(requests: Iterable[Request]) -> float:
    """Prefix reuse with an unbounded cache: the fraction of all block accesses
    (every block of every request, repeats included) whose key appeared in an
    earlier access.  Equals 1 - distinct keys / block accesses; 0.0 if no blocks."""
    seen: set[int] = set()
    total = 0
    for r in requests:
        seen.update(r.block_keys)
        total += len(r.block_keys)
    return 1.0 - len(seen) / total if total else 0.0
