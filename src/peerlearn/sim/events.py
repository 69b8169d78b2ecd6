"""A minimal event queue: events ordered by (time, insertion order)."""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any


class EventQueue:
    """Priority queue of (time, seq, item); ties keep insertion order, so runs are deterministic."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()

    def push(self, time: float, item: Any) -> None:
        heapq.heappush(self._heap, (time, next(self._seq), item))

    def pop_entry(self) -> tuple[float, int, Any]:
        """The next (time, seq, item); ``requeue`` puts back what is left of it in its place."""
        return heapq.heappop(self._heap)

    def requeue(self, time: float, seq: int, item: Any) -> None:
        """Push an item under the key of one popped with ``pop_entry``: it keeps its turn."""
        heapq.heappush(self._heap, (time, seq, item))

    def peek_time(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def __len__(self) -> int:
        return len(self._heap)
