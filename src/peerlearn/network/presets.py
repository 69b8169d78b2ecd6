"""Network presets: per-node link capacities, pairwise latencies and optional shared links.

``build_network`` checks what every preset shares and calls the registered preset's builder
(``peerlearn.components.PRESETS``; the built-ins are registered in ``network.catalog``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from peerlearn.components import PRESETS
from peerlearn.network.spec import NetworkSpec, RouteTable, mbps_to_Bps
from peerlearn.registry import resolve

__all__ = ["PRESETS", "NetworkSpec", "RouteTable", "build_network", "mbps_to_Bps"]

#: the DivShare artifact's example_topology_60n7cs5.xml: the 7 stragglers' access links (Mbps)
DIVSHARE_STRAGGLER_MBPS = (12.0, 12.0, 12.0, 13.0, 10.0, 13.0, 11.0)
DIVSHARE_FAST_MBPS = 60.0

#: the artifact's example_topology_60n_diablo.xml: regions in file order, 6 replicas each
DIABLO_REGIONS = (
    "capetown",
    "tokyo",
    "mumbai",
    "sydney",
    "stockholm",
    "milan",
    "bahrain",
    "saopaulo",
    "ohio",
    "oregon",
)
DIABLO_REPLICAS = 6
#: symmetric region-to-region Mbps, upper triangle row by row in DIABLO_REGIONS order
_DIABLO_UPPER = (
    (26, 36, 21, 60, 67, 34, 27, 44, 36),
    (89, 112, 42, 48, 67, 39, 86, 109),
    (76, 81, 103, 336, 31, 53, 49),
    (32, 42, 60, 31, 57, 81),
    (405, 82, 48, 95, 68),
    (106, 49, 105, 70),
    (30, 49, 39),
    (92, 61),
    (105,),
)


def diablo_mbps() -> np.ndarray:
    """The (10, 10) symmetric region-to-region matrix in Mbps (diagonal 0: no link)."""
    r = len(DIABLO_REGIONS)
    m = np.zeros((r, r))
    for a, row in enumerate(_DIABLO_UPPER):
        for k, mbps in enumerate(row):
            m[a, a + 1 + k] = m[a + 1 + k, a] = mbps
    return m


def build_network(
    preset: str,
    n: int,
    *,
    mbps: float = 100.0,
    fast_mbps: float = 60.0,
    slowdown: float = 5.0,
    stragglers: int = 0,
    straggler_ids: list[int] | None = None,
    latency_ms: float = 1.0,
    seed: int = 1,  # reserved for randomized presets (jittered capacities, traces)
    kollaps_xml: str | None = None,
    intra_region_mbps: float | None = None,
    **params: Any,
) -> NetworkSpec:
    """Build a preset; ValueError names the parameter that is out of range.

    ``params``: the keys of a plugin preset's own config section.

    For the artifact presets and ``kollaps``, ``latency_ms`` is the latency of each *link* (the
    XML's 1 ms), and a path's latency is the sum over its links, as in Kollaps.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; choose one of {sorted(PRESETS)}")
    if n < 1:
        raise ValueError(f"network needs n >= 1 nodes, got n={n}")
    if not latency_ms >= 0 or not np.isfinite(latency_ms):
        raise ValueError(f"latency_ms must be finite and >= 0, got {latency_ms}")
    if kollaps_xml is not None and preset != "kollaps":
        raise ValueError(f"kollaps_xml is only used by preset 'kollaps', not {preset!r}")
    if intra_region_mbps is not None:
        if preset not in ("diablo_60n", "kollaps"):
            raise ValueError(
                f"intra_region_mbps only applies to presets 'diablo_60n' and 'kollaps', "
                f"not {preset!r}"
            )
        _check_positive("intra_region_mbps", intra_region_mbps)
    spec = resolve(PRESETS.get(preset).builder)(
        n,
        seed=seed,
        mbps=mbps,
        fast_mbps=fast_mbps,
        slowdown=slowdown,
        stragglers=stragglers,
        straggler_ids=straggler_ids,
        latency_ms=latency_ms,
        kollaps_xml=kollaps_xml,
        intra_region_mbps=intra_region_mbps,
        **params,
    )
    if not isinstance(spec, NetworkSpec) or spec.n != n:
        raise ValueError(f"preset {preset!r} did not give a NetworkSpec of {n} nodes")
    return spec


# -- the built-in presets: builder(n, seed=, **network keys) -> NetworkSpec ----------------------


def _latency(n: int, latency_ms: float) -> np.ndarray:
    latency = np.full((n, n), latency_ms / 1e3)
    np.fill_diagonal(latency, 0.0)
    return latency


def uniform(n: int, *, mbps: float, latency_ms: float, **_: Any) -> NetworkSpec:
    _check_positive("mbps", mbps)
    cap = np.full(n, mbps_to_Bps(mbps))
    desc = f"uniform: {n} nodes at {mbps:g} Mbps, {latency_ms:g} ms"
    return NetworkSpec(cap, cap.copy(), _latency(n, latency_ms), description=desc)


def stragglers(
    n: int,
    *,
    fast_mbps: float,
    slowdown: float,
    stragglers: int,
    straggler_ids: list[int] | None,
    latency_ms: float,
    **_: Any,
) -> NetworkSpec:
    _check_positive("fast_mbps", fast_mbps)
    if not (np.isfinite(slowdown) and slowdown >= 1):
        raise ValueError(f"slowdown must be >= 1, got {slowdown}")
    slow = _straggler_ids(n, stragglers, straggler_ids)
    cap = np.full(n, mbps_to_Bps(fast_mbps))
    cap[slow] = mbps_to_Bps(fast_mbps / slowdown)  # symmetric: up = down, as in the artifact
    desc = (
        f"stragglers: {len(slow)} of {n} nodes at {fast_mbps / slowdown:g} Mbps, "
        f"others at {fast_mbps:g} Mbps, {latency_ms:g} ms"
    )
    return NetworkSpec(cap, cap.copy(), _latency(n, latency_ms), description=desc)


def ideal(n: int, **_: Any) -> NetworkSpec:
    cap = np.full(n, np.inf)
    return NetworkSpec(cap, cap.copy(), np.zeros((n, n)), description="ideal: instant delivery")


def kollaps(
    n: int,
    *,
    kollaps_xml: str | None,
    intra_region_mbps: float | None,
    latency_ms: float,
    **_: Any,
) -> NetworkSpec:
    if not kollaps_xml:
        raise ValueError("preset 'kollaps' needs kollaps_xml (a Kollaps topology XML file)")
    from peerlearn.network.kollaps import import_kollaps

    spec = import_kollaps(kollaps_xml, intra_service_mbps=intra_region_mbps, latency_ms=latency_ms)
    if spec.n != n:
        raise ValueError(f"{kollaps_xml} defines {spec.n} nodes but the run has n={n}")
    return spec


def _check_artifact_nodes(preset: str, n: int) -> None:
    if n != 60:
        raise ValueError(f"preset {preset!r} is the artifact's 60-node network; got n={n}")


def divshare_60n7cs5(n: int = 60, *, latency_ms: float = 1.0, **_: Any) -> NetworkSpec:
    """The artifact's straggler star: ids 0..6 at 12,12,12,13,10,13,11 Mbps, the rest 60 Mbps.

    Up = down (symmetric access links). Every message crosses two access links (sender to switch,
    switch to receiver), each of ``latency_ms``, so pairs are 2 x latency_ms apart, as Kollaps
    sums latencies along a path.
    """
    _check_artifact_nodes("divshare_60n7cs5", n)
    mbps = np.full(n, DIVSHARE_FAST_MBPS)
    mbps[: len(DIVSHARE_STRAGGLER_MBPS)] = DIVSHARE_STRAGGLER_MBPS
    cap = mbps_to_Bps(mbps)
    latency = np.full((n, n), 2 * latency_ms / 1e3)
    np.fill_diagonal(latency, 0.0)
    desc = (
        "divshare_60n7cs5: 7 stragglers (ids 0..6) at 10-13 Mbps, 53 nodes at 60 Mbps, "
        f"{2 * latency_ms:g} ms end to end"
    )
    return NetworkSpec(cap, cap.copy(), latency, description=desc)


def diablo_60n(
    n: int = 60, *, latency_ms: float = 1.0, intra_region_mbps: float | None = None, **_: Any
) -> NetworkSpec:
    """The artifact's Diablo network: node i is replica i % 6 of region i // 6.

    Every ordered pair of nodes in two regions has its own link at the regions' measured Mbps
    (Kollaps gives each replica pair its own link: ``share="false"``), ``latency_ms`` away; nodes
    have no cap of their own. The file has no link inside a region. By default such a pair gets
    what Kollaps's routing gives it: a two-hop path through replica 0 of the first other region
    (tokyo for capetown, capetown for every other region), bounded by and sharing both of those
    links, 2 x latency_ms. With ``intra_region_mbps`` it gets a private link of that capacity,
    ``latency_ms`` away.
    """
    _check_artifact_nodes("diablo_60n", n)
    reps = DIABLO_REPLICAS
    region = np.arange(n) // reps
    table = diablo_mbps()
    links: list[float] = []
    link_of: dict[tuple[int, int], int] = {}
    latency = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if region[i] != region[j]:
                link_of[(i, j)] = len(links)
                links.append(mbps_to_Bps(table[region[i], region[j]]))
                latency[i, j] = latency_ms / 1e3
    routes = {pair: (k,) for pair, k in link_of.items()}
    for i in range(n):
        for j in range(n):
            if i == j or region[i] != region[j]:
                continue
            if intra_region_mbps is not None:
                routes[(i, j)] = (len(links),)
                links.append(mbps_to_Bps(intra_region_mbps))
                latency[i, j] = latency_ms / 1e3
            else:
                relay = (1 if region[i] == 0 else 0) * reps
                routes[(i, j)] = (link_of[(i, relay)], link_of[(relay, j)])
                latency[i, j] = 2 * latency_ms / 1e3
    inf = np.full(n, np.inf)
    intra = (
        f"{intra_region_mbps:g} Mbps inside a region"
        if intra_region_mbps is not None
        else "same-region pairs relayed as Kollaps routes them"
    )
    return NetworkSpec(
        inf,
        inf.copy(),
        latency,
        links=links,
        route=RouteTable(n, routes),
        description=f"diablo_60n: 10 regions x 6 nodes, 21-405 Mbps per pair, {intra}",
    )


def _check_positive(name: str, value: float) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def _straggler_ids(n: int, count: int, ids: list[int] | None) -> list[int]:
    """Stragglers are 0..count-1 by default (as in the DivShare artifact), or the given ids."""
    if count < 0 or count > n:
        raise ValueError(f"stragglers must be in 0..{n}, got {count}")
    if ids is None:
        return list(range(count))
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise ValueError(f"straggler_ids out of range 0..{n - 1}: {bad}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"straggler_ids has duplicates: {ids}")
    if count not in (0, len(ids)):
        raise ValueError(f"stragglers={count} but straggler_ids lists {len(ids)} ids")
    return sorted(ids)
