"""Topologies that change every round: a fresh random connected d-regular graph per round.

The graph of round r depends only on (n, d, run seed, r), so every node computes the same graph
on its own, in the simulator and in a deployment, without exchanging a message. Used by
``[topology] dynamic = true`` (D-PSGD and the round-based sparse algorithms) and by EL-Oracle
(``algorithms/epidemic.py``): with the same degree and seed, both see the same graphs.
"""

from __future__ import annotations

import functools

import numpy as np

from peerlearn.network.topology import build_topology

#: separates the per-round graph stream from every other use of the run seed
_ROUND_GRAPH_STREAM = 0xD7A

__all__ = ["RoundGraph", "round_neighbors", "round_seed"]


def round_seed(seed: int, round_: int) -> int:
    """The seed of round ``round_``'s graph: a hash of (run seed, stream, round)."""
    if round_ < 0:
        raise ValueError(f"round must be >= 0, got {round_}")
    return int(np.random.SeedSequence([seed, _ROUND_GRAPH_STREAM, round_]).generate_state(1)[0])


# Every node of a simulated run asks for the same few rounds (synchronous nodes are at most a
# few rounds apart), so one graph per round is built for all of them.
@functools.lru_cache(maxsize=64)
def round_neighbors(n: int, degree: int, seed: int, round_: int) -> tuple[tuple[int, ...], ...]:
    """Each node's sorted neighbours in round ``round_``'s random connected ``degree``-regular
    graph on nodes 0..n-1 (ValueError, naming the parameter, if no such graph exists)."""
    graph = build_topology("regular", n, degree=degree, seed=round_seed(seed, round_))
    return tuple(tuple(sorted(graph.neighbors(i))) for i in range(n))


class RoundGraph:
    """``node``'s neighbours per round: the callable a ``NodeContext.neighbors_at`` holds."""

    __slots__ = ("degree", "n", "node", "seed")

    def __init__(self, n: int, degree: int, seed: int, node: int) -> None:
        self.n, self.degree, self.seed, self.node = n, degree, seed, node

    def __call__(self, round_: int) -> tuple[int, ...]:
        return round_neighbors(self.n, self.degree, self.seed, round_)[self.node]
