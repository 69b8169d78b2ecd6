"""Communication topologies: who may talk to whom, as a connected networkx graph on nodes 0..n-1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from peerlearn.components import TOPOLOGIES
from peerlearn.registry import resolve

__all__ = ["TOPOLOGIES", "build_topology", "metropolis_hastings_weights", "read_edge_list"]

# Random regular graphs with degree >= 3 are connected with high probability, so a few retries
# suffice; the bound turns an impossible request into an error instead of a hang.
_REGULAR_TRIES = 100


def build_topology(
    kind: str,
    n: int,
    *,
    degree: int = 4,
    rewire_p: float = 0.1,
    path: str | None = None,
    seed: int = 1,
    **params: Any,
) -> nx.Graph:
    """Build a connected undirected graph with nodes 0..n-1; ValueError names the bad parameter.

    ``kind`` is a registered topology (``peerlearn.components.TOPOLOGIES``); ``params`` are the
    keys of a plugin topology's own config section."""
    if kind not in TOPOLOGIES:
        raise ValueError(f"unknown topology kind {kind!r}; choose one of {sorted(TOPOLOGIES)}")
    if n < 2:
        raise ValueError(f"topology needs n >= 2 nodes, got n={n}")
    if path is not None and kind != "file":
        raise ValueError(f"topology path is only used with kind='file', got kind={kind!r}")
    builder = resolve(TOPOLOGIES.get(kind).builder)
    graph = builder(n, seed=seed, degree=degree, rewire_p=rewire_p, path=path, **params)
    if not isinstance(graph, nx.Graph) or set(graph.nodes()) != set(range(n)):
        raise ValueError(f"topology {kind!r} did not give a graph on nodes 0..{n - 1}")
    if not nx.is_connected(graph):
        raise ValueError(f"topology {kind!r} gave a disconnected graph on {n} nodes")
    # A fresh graph with nodes inserted in order keeps iteration order independent of how it was
    # built, so downstream neighbour lists are deterministic.
    out = nx.Graph()
    out.add_nodes_from(range(n))
    out.add_edges_from(sorted((min(u, v), max(u, v)) for u, v in graph.edges()))
    return out


# -- the built-in topologies: builder(n, seed=, **topology keys) -> nx.Graph ---------------------


def ring(n: int, **_: Any) -> nx.Graph:
    return nx.cycle_graph(n)


def full(n: int, **_: Any) -> nx.Graph:
    return nx.complete_graph(n)


def regular(n: int, *, degree: int, seed: int, **_: Any) -> nx.Graph:
    return _regular(n, degree, seed)


def small_world(n: int, *, degree: int, rewire_p: float, seed: int, **_: Any) -> nx.Graph:
    return _small_world(n, degree, rewire_p, seed)


def edge_file(n: int, *, path: str | None, **_: Any) -> nx.Graph:
    if path is None:
        raise ValueError("topology kind 'file' needs path (an edge-list file)")
    return read_edge_list(path, n)


def _derived_seed(seed: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


def _regular(n: int, degree: int, seed: int) -> nx.Graph:
    if not 1 <= degree < n:
        raise ValueError(f"regular topology needs 1 <= degree < n, got degree={degree}, n={n}")
    if n * degree % 2:
        raise ValueError(f"regular topology needs n*degree even, got n={n}, degree={degree}")
    if degree == 1 and n > 2:
        raise ValueError(f"regular topology with degree=1 is disconnected for n={n} > 2")
    if degree == 2:
        # The connected 2-regular graphs are exactly the Hamiltonian cycles; a random one is drawn
        # directly, because a random 2-regular graph is usually several disjoint cycles.
        order = np.random.default_rng(seed).permutation(n)
        return nx.cycle_graph([int(v) for v in order])
    for attempt in range(_REGULAR_TRIES):
        graph = nx.random_regular_graph(degree, n, seed=_derived_seed(seed, attempt))
        if nx.is_connected(graph):
            return graph
    raise ValueError(
        f"no connected {degree}-regular graph on {n} nodes after {_REGULAR_TRIES} tries "
        f"(seed={seed})"
    )


def _small_world(n: int, degree: int, rewire_p: float, seed: int) -> nx.Graph:
    if degree % 2 or not 2 <= degree < n:
        raise ValueError(
            f"small_world needs an even degree with 2 <= degree < n, got degree={degree}"
        )
    if not 0.0 <= rewire_p <= 1.0:
        raise ValueError(f"small_world needs 0 <= rewire_p <= 1, got rewire_p={rewire_p}")
    try:
        return nx.connected_watts_strogatz_graph(n, degree, rewire_p, tries=100, seed=seed)
    except nx.NetworkXError as err:
        raise ValueError(
            f"small_world: {err} (n={n}, degree={degree}, rewire_p={rewire_p})"
        ) from err


def read_edge_list(path: str | Path, n: int) -> nx.Graph:
    """Read 'u v' lines ('#' comments and blank lines ignored) into a connected graph on 0..n-1.

    decentralizepy's edge files start with a line holding only the node count; it must equal n.
    Each undirected edge may appear once or in both directions.
    """
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    seen_line = False
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ValueError(f"{path}: cannot read topology file: {err}") from err
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        fields = line.split()
        try:
            ids = [int(f) for f in fields]
        except ValueError:
            raise ValueError(f"{where}: expected integer node ids, got {raw.strip()!r}") from None
        first, seen_line = not seen_line, True
        if first and len(ids) == 1:
            if ids[0] != n:
                raise ValueError(f"{where}: file declares {ids[0]} nodes but n={n}")
            continue
        if len(ids) != 2:
            raise ValueError(f"{where}: expected 'u v', got {raw.strip()!r}")
        u, v = ids
        if not (0 <= u < n and 0 <= v < n):
            raise ValueError(f"{where}: node id out of range 0..{n - 1} in {raw.strip()!r}")
        if u == v:
            raise ValueError(f"{where}: self-loop {u} {v}")
        graph.add_edge(u, v)
    if not nx.is_connected(graph):
        parts = nx.number_connected_components(graph)
        raise ValueError(f"{path}: topology is not connected ({parts} components for n={n})")
    return graph


def metropolis_hastings_weights(graph: nx.Graph) -> dict[int, dict[int, float]]:
    """Symmetric doubly stochastic mixing weights: w_ij = 1/(1+max(d_i,d_j)), w_ii = 1 - sum."""
    deg = dict(graph.degree())
    weights: dict[int, dict[int, float]] = {}
    for i in sorted(graph.nodes()):
        row = {j: 1.0 / (1.0 + max(deg[i], deg[j])) for j in sorted(graph.neighbors(i)) if j != i}
        row[i] = 1.0 - sum(row.values())
        weights[i] = row
    return weights
