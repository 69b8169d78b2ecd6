"""Network presets: per-node link capacities, pairwise latencies and optional shared links."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from peerlearn.sim.flows import FlowNetwork
from peerlearn.sim.send_buffer import SendBuffer

PRESETS: dict[str, str] = {
    "uniform": "every node at mbps up and down, latency_ms between every pair",
    "stragglers": "fast nodes at fast_mbps; `stragglers` nodes (ids 0..k-1) at fast_mbps/slowdown",
    "ideal": "infinite capacity and zero latency: every message arrives at once",
    "divshare_60n7cs5": "DivShare artifact: 60 nodes, ids 0..6 at 10-13 Mbps, others 60 Mbps, star",
    "diablo_60n": "DivShare artifact: 10 regions x 6 nodes, measured inter-region Mbps per pair",
    "kollaps": "import a Kollaps 2.0 topology XML (kollaps_xml), collapsed to end-to-end paths",
}

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

    def to_flow_network(
        self, rate_update_s: float = 0.0, send_buffer: SendBuffer | None = None
    ) -> FlowNetwork:
        """A fresh flow model at time 0 (the spec itself is never mutated)."""
        return FlowNetwork(
            self.up_Bps,
            self.down_Bps,
            self.latency_s,
            self.links,
            self.route,
            rate_update_s=rate_update_s,
            send_buffer=send_buffer,
        )


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
) -> NetworkSpec:
    """Build a preset; ValueError names the parameter that is out of range.

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

    if preset == "divshare_60n7cs5":
        return divshare_60n7cs5(n, latency_ms=latency_ms)
    if preset == "diablo_60n":
        return diablo_60n(n, latency_ms=latency_ms, intra_region_mbps=intra_region_mbps)
    if preset == "kollaps":
        if not kollaps_xml:
            raise ValueError("preset 'kollaps' needs kollaps_xml (a Kollaps topology XML file)")
        from peerlearn.network.kollaps import import_kollaps  # imports this module

        spec = import_kollaps(
            kollaps_xml, intra_service_mbps=intra_region_mbps, latency_ms=latency_ms
        )
        if spec.n != n:
            raise ValueError(f"{kollaps_xml} defines {spec.n} nodes but the run has n={n}")
        return spec
    latency = np.full((n, n), latency_ms / 1e3)
    np.fill_diagonal(latency, 0.0)

    if preset == "uniform":
        _check_positive("mbps", mbps)
        cap = np.full(n, mbps_to_Bps(mbps))
        desc = f"uniform: {n} nodes at {mbps:g} Mbps, {latency_ms:g} ms"
        return NetworkSpec(cap, cap.copy(), latency, description=desc)

    if preset == "stragglers":
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
        return NetworkSpec(cap, cap.copy(), latency, description=desc)

    # ideal
    cap = np.full(n, np.inf)
    return NetworkSpec(cap, cap.copy(), np.zeros((n, n)), description="ideal: instant delivery")


def _check_artifact_nodes(preset: str, n: int) -> None:
    if n != 60:
        raise ValueError(f"preset {preset!r} is the artifact's 60-node network; got n={n}")


def divshare_60n7cs5(n: int = 60, *, latency_ms: float = 1.0) -> NetworkSpec:
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
    n: int = 60, *, latency_ms: float = 1.0, intra_region_mbps: float | None = None
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
