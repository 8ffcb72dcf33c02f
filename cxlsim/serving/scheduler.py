"""Continuous batching with a token budget (the vLLM / Sarathi "chunked prefill" shape).

Each iteration: every running request that has finished its prefill decodes one token; the budget
left (token_budget - decodes) goes to prefill chunks of the other running requests in admission
order, a request taking min(its remaining prompt, budget left). New requests are admitted in
arrival order (FCFS, no overtaking) before each iteration while fewer than max_batch run and the
KV tiers can reserve their HBM footprint.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

#: defaults [assumption]: vLLM's --max-num-seqs default is 256; a budget of 8192 batched tokens
#: is a common chunked-prefill setting for 80 GB-class GPUs (vLLM engine arguments).
DEFAULT_TOKEN_BUDGET = 8192
DEFAULT_MAX_BATCH = 256


@dataclass(frozen=True)
class SchedulerConfig:
    token_budget: int = DEFAULT_TOKEN_BUDGET
    max_batch: int = DEFAULT_MAX_BATCH
    overlap: bool = True     # load DRAM/CXL hits layer by layer while the chunk computes

    def __post_init__(self):
        if type(self.max_batch) is not int or self.max_batch < 1:
            raise ConfigError(f"max_batch must be an integer >= 1, got {self.max_batch!r}")
        if type(self.token_budget) is not int or self.token_budget < self.max_batch:
            raise ConfigError(f"token_budget must be an integer >= max_batch ({self.max_batch}) "
                              f"so every running request can decode each iteration, got "
                              f"{self.token_budget!r}")


class Running:
    """A request between admission and completion."""
    __slots__ = ("rid", "ctx", "left", "out", "generated", "ready_ns", "adm")

    def __init__(self, rid: int, ctx: int, left: int, out: int, ready_ns: float, adm):
        self.rid = rid              # index in the trace
        self.ctx = ctx              # tokens whose KV is in HBM
        self.left = left            # prompt tokens still to compute
        self.out = out              # output tokens to generate
        self.generated = 0
        self.ready_ns = ready_ns    # its reused KV has arrived in HBM
        self.adm = adm              # the KV tiers' admission record


def plan(running: list[Running], now: float, cfg: SchedulerConfig):
    """(chunks [(request, tokens)], decodes [request]) for an iteration starting at `now`."""
    decodes = [r for r in running if r.left == 0 and r.generated < r.out]
    budget = cfg.token_budget - len(decodes)
    chunks = []
    for r in running:
        if budget <= 0:
            break
        if r.left > 0 and (cfg.overlap or r.ready_ns <= now):
            n = min(r.left, budget)
            chunks.append((r, n))
            budget -= n
    return chunks, decodes
