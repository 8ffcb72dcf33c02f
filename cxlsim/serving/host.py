"""One serving host: a tensor-parallel accelerator group running continuous batching over its
share of the trace, with its KV tiers. Discrete events on the host's own EventLoop:

  arrival(i)        request i joins the queue; the next arrival is scheduled
  iteration end     the batch's tokens are applied; finished requests release their KV; the
                    scheduler forms the next batch at once (same instant)
  wake              (no overlap) the earliest load finished while nothing else could run

Decode-only stretches are advanced in closed form (cost.Deployment.decode_ns) up to the first
completion, or the first step boundary at or after the next arrival / load completion: exactly
the times step-by-step replay would give, with O(requests) events instead of O(tokens).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from .cost import Deployment
from .engine import ARRIVAL, ITERATION, WAKE, EventLoop
from .kvtiers import TieredKV
from .scheduler import Running, SchedulerConfig, plan


class RequestLog:
    """Per-request results, indexed by position in the trace (NaN = did not happen)."""

    FIELDS = ("admit_ns", "first_token_ns", "finish_ns")
    COUNTS = ("host", "prefix_tokens", "computed_tokens", "generated", "loaded_bytes", "rejected")

    def __init__(self, n: int, n_tiers: int):
        for f in self.FIELDS:
            setattr(self, f, np.full(n, np.nan))
        for f in self.COUNTS:
            setattr(self, f, np.zeros(n, np.int64))
        self.host[:] = -1
        self.tier_hits = np.zeros((n, n_tiers), np.int64)     # prefix blocks per tier
        self.block_hits = np.zeros((n, n_tiers), np.int64)    # any block per tier


class ServingHost:
    def __init__(self, host_id: int, dep: Deployment, kv: TieredKV, trace: dict,
                 requests: np.ndarray, cfg: SchedulerConfig, log: RequestLog,
                 loop: EventLoop | None = None):
        self.id = host_id
        self.dep = dep
        self.kv = kv
        self.cfg = cfg
        self.log = log
        self.loop = loop or EventLoop()
        self.arrival_ns = trace["arrival_ms"] * 1e6
        self.n_in = trace["input_tokens"]
        self.n_out = trace["output_tokens"]
        self.offsets = trace["block_offsets"]
        self.keys = trace["block_keys"]
        self.bt = int(trace["block_tokens"])
        self.requests = requests                 # this host's trace indices, in arrival order
        self._next = 0
        self.next_arrival_ns = float("inf")      # the scheduled, not yet handled arrival
        self.waiting: deque[int] = deque()
        self.running: list[Running] = []
        self.in_flight = False
        self._wake_gen = 0
        self.busy_ns = 0.0
        self.hbm_bytes = 0.0                     # HBM traffic of compute (weights + KV)
        self.iterations = 0
        self.last_event_ns = 0.0
        self.on_finish = None                    # optional callback(rid, now)
        self.closed_form = True                  # False: one decode step per event (tests)

    # ------------------------------------------------------------------ events
    def start(self) -> None:
        self._schedule_next_arrival()

    def _schedule_next_arrival(self) -> None:
        """Arrivals are scheduled one at a time: the heap stays small."""
        self.next_arrival_ns = float("inf")
        if self._next < len(self.requests):
            i = int(self.requests[self._next])
            self._next += 1
            self.next_arrival_ns = float(self.arrival_ns[i])
            self.loop.schedule(self.next_arrival_ns, ARRIVAL, self._on_arrival, i)

    def _on_arrival(self, now: float, i: int):
        self.waiting.append(i)
        self.log.host[i] = self.id
        self._schedule_next_arrival()
        if not self.in_flight:
            return self._iterate(now)
        return None

    def _on_wake(self, now: float, gen: int):
        if gen == self._wake_gen and not self.in_flight:
            return self._iterate(now)
        return None

    # ------------------------------------------------------------------ scheduling
    def _admit(self, now: float) -> None:
        kv, log, bt = self.kv, self.log, self.bt
        cap = kv.hbm_capacity
        while self.waiting and len(self.running) < self.cfg.max_batch:
            i = self.waiting[0]
            keys = self.keys[self.offsets[i]:self.offsets[i + 1]]
            n_in, n_out = int(self.n_in[i]), int(self.n_out[i])
            extra = max(0, -(-n_in // bt) - len(keys)) + -(-n_out // bt)
            if (len(keys) + extra) * kv.block_bytes > cap:
                self.waiting.popleft()               # can never fit in this HBM
                log.rejected[i] = 1
                continue
            adm = kv.admit(keys, extra, now)
            if adm is None:
                break                                # FCFS: wait for running requests to end
            self.waiting.popleft()
            reused = min(adm.prefix_blocks * bt, n_in)
            left = max(1, n_in - reused)
            log.admit_ns[i] = now
            log.prefix_tokens[i] = n_in - left if n_in else 0
            log.computed_tokens[i] = left
            log.loaded_bytes[i] = adm.loaded_bytes
            log.tier_hits[i] = adm.tier_hits
            log.block_hits[i] = adm.block_hits
            self.running.append(Running(i, max(0, n_in - left), left, n_out, adm.ready_ns, adm))

    def _iterate(self, now: float):
        """Admit, plan the next batch and schedule its end; nothing if there is no work."""
        self._admit(now)
        if not self.running:
            self.in_flight = False
            return None
        chunks, decodes = plan(self.running, now, self.cfg)
        dep = self.dep
        if chunks:
            new = len(decodes)
            pairs = kv_tok = 0
            for r, n in chunks:
                new += n
                pairs += n * r.ctx + n * (n + 1) // 2
                kv_tok += r.ctx + n
            for r in decodes:
                pairs += r.ctx + 1
                kv_tok += r.ctx + 1
            dur = dep.iteration_ns(new, pairs, kv_tok)
            end = now + dur
            if self.cfg.overlap:                     # the last layer waits for its KV to arrive
                stall = max((r.ready_ns for r, _ in chunks), default=now)
                if stall > now:
                    end = max(end, stall + dur / dep.model.layers)
            self.hbm_bytes += dep.iteration_hbm_bytes(kv_tok)
            steps = 1
        elif decodes:
            n = len(decodes)
            ctx_sum = sum(r.ctx for r in decodes)
            steps = min(r.out - r.generated for r in decodes) if self.closed_form else 1
            horizon = self.next_arrival_ns
            if not self.cfg.overlap:
                horizon = min([horizon] + [r.ready_ns for r in self.running if r.left > 0])
            if horizon < now + dep.decode_ns(n, ctx_sum, steps):
                steps = dep.decode_steps_until(n, ctx_sum, horizon - now, steps)
            dur = dep.decode_ns(n, ctx_sum, steps)
            end = now + dur
            self.hbm_bytes += dep.decode_hbm_bytes(n, ctx_sum, steps)
        else:                                        # only requests waiting for their loads
            self.in_flight = False
            self._wake_gen += 1
            wake = min(r.ready_ns for r in self.running if r.left > 0)
            return [(wake, WAKE, self._on_wake, self._wake_gen)]
        self.in_flight = True
        self.busy_ns += dur
        self.iterations += 1
        return [(end, ITERATION, self._on_iteration_end, (chunks, decodes, steps))]

    def _on_iteration_end(self, now: float, batch):
        chunks, decodes, steps = batch
        log = self.log
        finished = []
        for r in decodes:
            r.ctx += steps
            r.generated += steps
            if r.generated >= r.out:
                finished.append(r)
        for r, n in chunks:
            r.ctx += n
            r.left -= n
            if r.left == 0:
                log.first_token_ns[r.rid] = now
                if r.out > 0:
                    r.generated = 1
                if r.adm.writes or r.adm.publish:
                    self.kv.prefill_done(r.adm, now)
                if r.generated >= r.out:
                    finished.append(r)
        if finished:
            done = {id(r) for r in finished}
            self.running = [r for r in self.running if id(r) not in done]
            for r in finished:
                log.finish_ns[r.rid] = now
                log.generated[r.rid] = r.generated
                self.kv.release(r.adm)
                if self.on_finish is not None:
                    self.on_finish(r.rid, now)
        self.last_event_ns = now
        return self._iterate(now)
