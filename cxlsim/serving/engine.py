"""A tiny discrete-event loop: a heap of (time, priority, sequence, handler, payload).

Ties at one time break by priority (smaller first), then by the order events were scheduled, so a
run is deterministic. Handlers take (now, payload) and return an iterable of new events
(time, priority, handler, payload) or None. No globals: each host owns its own loop.
"""
from __future__ import annotations

import heapq
from itertools import count

#: priorities: arrivals join the queue before the scheduler looks at it at the same instant
ARRIVAL, WAKE, ITERATION = 0, 1, 2


class EventLoop:
    def __init__(self):
        self._heap: list = []
        self._seq = count()
        self.now = 0.0

    def schedule(self, time: float, priority: int, handler, payload=None) -> None:
        if time < self.now:
            raise ValueError(f"event at {time} ns scheduled in the past (now {self.now} ns)")
        heapq.heappush(self._heap, (time, priority, next(self._seq), handler, payload))

    def peek_time(self) -> float:
        return self._heap[0][0] if self._heap else float("inf")

    def __bool__(self) -> bool:
        return bool(self._heap)

    def run(self, until: float = float("inf")) -> None:
        """Run every event with time < until (all of them by default)."""
        heap, pop, push, seq = self._heap, heapq.heappop, heapq.heappush, self._seq
        while heap and heap[0][0] < until:
            time, _, _, handler, payload = pop(heap)
            self.now = time
            new = handler(time, payload)
            if new:
                for t, prio, h, p in new:
                    if t < time:
                        raise ValueError(f"{h.__qualname__}: event at {t} ns is before now ({time} ns)")
                    push(heap, (t, prio, next(seq), h, p))
