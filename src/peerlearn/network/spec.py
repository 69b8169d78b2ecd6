"""What a network is, for every engine: capacities, latencies and shared links.

The simulator turns a spec into its flow model (``peerlearn.sim.network``); the emulator shapes
real links from it. Nothing here knows about either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


class RouteTable:
    """``route(src, dst)``: the shared links a pair crosses, from a table (picklable)."""

    def __init__(self, n: int, routes: dict[tuple[int, int], tuple[int, ...]]) -> None:
        self.n = n
        self.routes = routes

    def __call__(self, src: int, dst: int) -> tuple[int, ...]:
        return self.routes.get((src, dst), ())


def mbps_to_Bps(mbps: float) -> float:
    """Megabits (1e6 bits) per second to bytes per second."""
    return mbps * 1e6 / 8.0


@dataclass
class NetworkSpec:
    """What the flow model needs; ``links``/``route`` leave room for Kollaps-style topologies."""

    up_Bps: np.ndarray  # (n,)
    down_Bps: np.ndarray  # (n,)
    latency_s: np.ndarray  # (n, n), zero diagonal
    links: list[float] = field(default_factory=list)
    route: Callable[[int, int], Sequence[int]] | None = None
    description: str = ""

    @property
    def n(self) -> int:
        return len(self.up_Bps)
