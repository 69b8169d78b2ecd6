"""Generated capacity traces: stragglers that move, and a day-long rhythm.

Each generator yields ``CapacityChange``s in time order, lazily (a run without a time limit never
runs out of them), and draws its randomness from the run seed only, so the same config gives the
same trace in every engine and every resumed run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from peerlearn.network.traces import CapacityChange

#: separates the dynamics streams from every other use of the run seed
_ROTATE_STREAM = 0xD7A
_DIURNAL_STREAM = 0xD1E


def rotating_stragglers(
    up_Bps: np.ndarray,
    down_Bps: np.ndarray,
    factors: np.ndarray,
    *,
    period_s: float,
    count: int,
    slowdown: float,
    slow_compute: bool,
    seed: int,
) -> Iterator[CapacityChange]:
    """Every ``period_s`` (from 0), ``count`` nodes drawn at random are slowed ``slowdown`` times
    (capacities divided; compute factor multiplied too with ``slow_compute``); the others are at
    their preset values. Only nodes whose values change get a change."""
    n = len(up_Bps)
    if not 0 <= count <= n:
        raise ValueError(f"dynamics.stragglers must be in 0..{n}, got {count}")
    rng = np.random.default_rng([seed, _ROTATE_STREAM])
    slow: set[int] = set()
    k = 0
    while True:
        t = k * period_s
        new = set(rng.choice(n, size=count, replace=False).tolist())
        for i in sorted(slow ^ new):
            s = slowdown if i in new else 1.0
            f = float(factors[i]) * s if slow_compute else None
            yield CapacityChange(t, i, float(up_Bps[i]) / s, float(down_Bps[i]) / s, f)
        slow = new
        k += 1


def diurnal(
    up_Bps: np.ndarray,
    down_Bps: np.ndarray,
    *,
    period_s: float,
    amplitude: float,
    step_s: float | None,
    seed: int,
) -> Iterator[CapacityChange]:
    """Capacities times ``1 - amplitude * (1 - cos(2π (t / period_s + phase_i))) / 2``, held for
    ``step_s``; each node's phase is drawn uniformly (nodes in different time zones)."""
    n = len(up_Bps)
    step = step_s if step_s is not None else period_s / 24
    phase = np.random.default_rng([seed, _DIURNAL_STREAM]).random(n)
    k = 0
    while True:
        t = k * step
        scale = 1.0 - amplitude * (1.0 - np.cos(2 * math.pi * (t / period_s + phase))) / 2
        for i in range(n):
            s = float(scale[i])
            yield CapacityChange(t, i, float(up_Bps[i]) * s, float(down_Bps[i]) * s, None)
        k += 1
