"""The seeded churn model: every node alternates online and offline periods.

Offline periods are exponential with mean ``mean_offline_s``; online periods exponential with
mean ``mean_offline_s * (1 - f) / f``, so in the long run a fraction ``f`` of the time (and of
the nodes, on average) is offline. With ``start_offline`` a node starts offline with probability
``f`` (the stationary state), else every node starts online. Each node draws from its own stream
of the run seed, so the schedule does not depend on the number of changes asked for.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import numpy as np

from peerlearn.network.traces import AvailabilityChange

_CHURN_STREAM = 0xC4


def exponential_churn(
    n: int, *, offline_fraction: float, mean_offline_s: float, start_offline: bool, seed: int
) -> Iterator[AvailabilityChange]:
    """Availability changes of all nodes in time order (ties by node id), without end."""
    f = offline_fraction
    if f <= 0:
        return iter(())
    mean_online = mean_offline_s * (1 - f) / f

    def node_changes(i: int) -> Iterator[AvailabilityChange]:
        rng = np.random.default_rng([seed, i, _CHURN_STREAM])
        online = not (start_offline and rng.random() < f)
        t = 0.0
        if not online:
            yield AvailabilityChange(0.0, i, False)
        while True:
            t += float(rng.exponential(mean_online if online else mean_offline_s))
            online = not online
            yield AvailabilityChange(t, i, online)

    return heapq.merge(*(node_changes(i) for i in range(n)), key=lambda c: (c.time_s, c.node))
