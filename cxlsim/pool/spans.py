"""Disjoint byte spans of a host's window, kept sorted: the views `PoolClient.block_buffers` handed
out that nothing has written over since. A put of a buffer in the window must lie inside one of
them; anything that writes the window (a copying put, a get's blocks, new views) first cuts out
the spans it covers. Sorted starts and ends let each of those be a bisection, not a scan: a
64 MiB window holds some 16,000 views of 4 KiB blocks."""
from __future__ import annotations

from bisect import bisect_left, bisect_right


class Spans:
    def __init__(self):
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self):
        """The spans as (start, end), in order."""
        return zip(self._starts, self._ends)

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()

    def add_run(self, bounds: list[int]) -> None:
        """Spans [bounds[0], bounds[1]), [bounds[1], bounds[2]), ... one after another, over
        bytes no span covers (cut them out first)."""
        i = bisect_left(self._starts, bounds[0])
        self._starts[i:i] = bounds[:-1]
        self._ends[i:i] = bounds[1:]

    def cut(self, start: int, end: int) -> None:
        """Drop every span that overlaps [start, end)."""
        i = bisect_right(self._ends, start)       # first span ending after start
        j = bisect_left(self._starts, end)        # first span starting at or after end
        if i < j:
            del self._starts[i:j], self._ends[i:j]

    def holds(self, start: int, end: int) -> bool:
        """Whether [start, end) lies inside one span."""
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and end <= self._ends[i]
