"""A minimal event queue: events ordered by (time, insertion order)."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np


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

    def state_dict(self, encode_item: Callable[[Any], Any]) -> dict:
        """The entries in heap order and the next sequence number; items via ``encode_item``."""
        heap = self._heap
        nxt = next(self._seq)
        self._seq = itertools.count(nxt)  # the number just drawn is handed out again
        return {
            "time": np.array([e[0] for e in heap], dtype=np.float64),
            "seq": np.array([e[1] for e in heap], dtype=np.int64),
            "items": [encode_item(e[2]) for e in heap],
            "next_seq": nxt,
        }

    def load_state_dict(self, state: dict, decode_item: Callable[[Any], Any]) -> None:
        times, seqs, items = state["time"].tolist(), state["seq"].tolist(), state["items"]
        if not len(times) == len(seqs) == len(items):
            raise ValueError("event queue columns of different lengths")
        self._heap = [(t, s, decode_item(i)) for t, s, i in zip(times, seqs, items, strict=True)]
        heapq.heapify(self._heap)  # a no-op on a saved heap; keys are unique, so order is fixed
        self._seq = itertools.count(int(state["next_seq"]))

    def extract(self, pred: Callable[[Any], bool]) -> list[tuple[float, int, Any]]:
        """Take out every entry whose item satisfies ``pred``; returned in (time, seq) order."""
        taken = sorted(e for e in self._heap if pred(e[2]))
        if taken:
            self._heap = [e for e in self._heap if not pred(e[2])]
            heapq.heapify(self._heap)
        return taken

    def items_where(self, pred: Callable[[Any], bool]) -> list[Any]:
        """The queued items that satisfy ``pred`` (the objects themselves, in heap order)."""
        return [e[2] for e in self._heap if pred(e[2])]

    def peek_time(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def __len__(self) -> int:
        return len(self._heap)
