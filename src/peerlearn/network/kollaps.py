"""Import a Kollaps 2.0 topology (XML) as a ``NetworkSpec``, collapsed the way Kollaps does it.

The DivShare artifact emulated its networks with Kollaps, so reading its files with Kollaps's own
rules is what makes a simulated run comparable. The rules, as Kollaps applies them:

- every replica of a service is its own container; ``supervisor`` services (the dashboard) are not
  learning nodes;
- a ``<link origin dest latency upload [download]>`` between two names creates one directed link
  for *every* (origin replica, dest replica) pair at ``upload``, and the reverse ones at
  ``download`` if given (no ``download``: one-way). With ``share="true"`` on a service its
  replicas share one link through an internal bridge instead;
- each container reaches every other by a shortest path in hops (ties: the first path found when
  nodes are visited level by level in declaration order and links in creation order, as Kollaps's
  Dijkstra does). Latency is the sum along the path; a flow is bounded by every link it crosses
  and shares each link max-min fairly with the other flows on it.

Paths may relay through another container (Kollaps does not care). In the artifact's Diablo file,
two replicas of one region have no link, so Kollaps routes them through the first replica of the
first other region: that is what we reproduce unless ``intra_service_mbps`` gives such pairs a
private one-hop link instead.

Node ids: services whose name starts with one of ``first_prefixes`` (``slowWorker``) come first,
then the others, each in file order, as the artifact's launcher lists slow workers first
(stragglers are ids 0..6).

The result is canonical: a link crossed by exactly all flows out of one node becomes that node's
upload cap (into one node: download cap); other links stay shared links with a route per pair.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peerlearn.network.spec import NetworkSpec, RouteTable

_BANDWIDTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)bps\s*$")
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}

Pair = tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Link:
    src: int  # graph vertex
    dst: int
    latency_ms: float
    bps: float


class _Graph:
    """Kollaps's expanded graph: one vertex per container, bridge and internal bridge."""

    def __init__(self) -> None:
        self.names: dict[str, list[int]] = {}  # service or bridge name -> vertices
        self.labels: list[str] = []  # vertex -> "service#replica" or bridge name
        self.service: list[str | None] = []  # vertex -> service name (None for bridges)
        self.shared: dict[str, bool] = {}
        self.links: list[_Link] = []
        self.adj: list[list[int]] = []  # vertex -> outgoing link ids, in creation order

    def add_vertex(self, label: str, service: str | None) -> int:
        self.labels.append(label)
        self.service.append(service)
        self.adj.append([])
        return len(self.labels) - 1

    def connect(self, a: str, b: str, latency_ms: float, bps: float) -> None:
        """Directed links from every vertex named ``a`` to every vertex named ``b``."""
        for u in self.names[a]:
            for v in self.names[b]:
                self.adj[u].append(len(self.links))
                self.links.append(_Link(u, v, latency_ms, bps))


def _fail(path: str | Path, problem: str) -> ValueError:
    return ValueError(f"kollaps topology {path}: {problem}")


def _bandwidth(path: str | Path, text: str | None, where: str) -> float:
    match = _BANDWIDTH.match(text or "")
    if not match:
        raise _fail(path, f"{where}: bandwidth {text!r} is not like '60Mbps' ([0-9]+[KMG]bps)")
    bps = float(match.group(1)) * _UNITS[match.group(2)]
    if bps <= 0:
        raise _fail(path, f"{where}: bandwidth must be > 0, got {text!r}")
    return bps


def _number(path: str | Path, text: str | None, where: str, default: float | None = None) -> float:
    if text is None:
        if default is None:
            raise _fail(path, f"{where} is missing")
        return default
    try:
        value = float(text)
    except ValueError:
        raise _fail(path, f"{where} = {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise _fail(path, f"{where} = {text!r} must be finite and >= 0")
    return value


def _parse(path: str | Path) -> tuple[_Graph, list[tuple[str, int]]]:
    """The expanded graph and the learning services (name, replicas) in file order."""
    try:
        root = ET.parse(path).getroot()
    except OSError as exc:
        raise _fail(path, f"cannot read it ({exc.strerror or exc})") from None
    except ET.ParseError as exc:
        raise _fail(path, f"not well-formed XML ({exc})") from None
    if root.tag != "experiment":
        raise _fail(path, f"the root element must be <experiment>, got <{root.tag}>")
    blocks: dict[str, ET.Element] = {}
    for child in root:
        if child.tag == "dynamic":
            raise _fail(path, "<dynamic> events (joins, leaves, link changes) are not supported")
        if child.tag not in ("services", "bridges", "links"):
            raise _fail(path, f"unknown element <{child.tag}> in <experiment>")
        if child.tag in blocks:
            raise _fail(path, f"more than one <{child.tag}> block")
        blocks[child.tag] = child
    for needed in ("services", "links"):
        if needed not in blocks:
            raise _fail(path, f"no <{needed}> block")

    g = _Graph()
    learners: list[tuple[str, int]] = []
    for el in blocks["services"]:
        if el.tag != "service":
            raise _fail(path, f"unexpected <{el.tag}> inside <services>")
        name = el.get("name")
        if not name:
            raise _fail(path, "a <service> has no name")
        if name in g.names:
            raise _fail(path, f"service {name!r} is declared twice")
        try:
            replicas = int(el.get("replicas", "1"))
        except ValueError:
            raise _fail(path, f"service {name!r}: replicas={el.get('replicas')!r}") from None
        if replicas < 1:
            raise _fail(path, f"service {name!r}: replicas must be >= 1, got {replicas}")
        g.shared[name] = el.get("share") == "true"
        g.names[name] = [g.add_vertex(f"{name}#{r}", name) for r in range(replicas)]
        if el.get("supervisor") is None:
            learners.append((name, replicas))
    for el in blocks.get("bridges", ()):
        name = el.get("name")
        if el.tag != "bridge" or not name:
            raise _fail(path, "every entry of <bridges> must be <bridge name=...>")
        if name in g.names:
            raise _fail(path, f"bridge {name!r} reuses a name already declared")
        g.shared[name] = False
        g.names[name] = [g.add_vertex(name, None)]
    if not learners:
        raise _fail(path, "no (non-supervisor) service, so no learning node")

    meta = 0
    for i, el in enumerate(blocks["links"], 1):
        if el.tag != "link":
            raise _fail(path, f"unexpected <{el.tag}> inside <links>")
        a, b = el.get("origin"), el.get("dest")
        where = f"link {i} ({a} -> {b})"
        for end in (a, b):
            if end not in g.names:
                raise _fail(path, f"{where}: {end!r} is no declared service or bridge")
        assert a is not None and b is not None
        latency = _number(path, el.get("latency"), f"{where}: latency")
        if _number(path, el.get("drop"), f"{where}: drop", 0.0) > 0:
            raise _fail(path, f"{where}: packet loss (drop > 0) is not modelled")
        if _number(path, el.get("jitter"), f"{where}: jitter", 0.0) > 0:
            raise _fail(path, f"{where}: jitter is not modelled")
        up = _bandwidth(path, el.get("upload"), f"{where}: upload")
        down = None
        if "download" in el.attrib:  # without it Kollaps makes the link one-way
            down = _bandwidth(path, el.get("download"), f"{where}: download")

        def link(x: str, y: str, lat: float, up_: float, down_: float | None) -> None:
            g.connect(x, y, lat, up_)
            if down_ is not None:
                g.connect(y, x, lat, down_)

        # share="true": the replicas reach the link through one internal bridge (Kollaps's rule)
        ends = []
        for end in (a, b):
            if g.shared[end]:
                meta += 1
                hub = f"<shared {end} {meta}>"
                g.shared[hub] = False
                g.names[hub] = [g.add_vertex(hub, None)]
                ends.append(hub)
            else:
                ends.append(end)
        link(ends[0], ends[1], latency, up, down)
        if ends[0] != a:
            link(a, ends[0], 0.0, up, down)
        if ends[1] != b:
            # the internal bridge forwards towards the service: origin->dest direction is "up"
            g.connect(ends[1], b, 0.0, up)
            if down is not None:
                g.connect(b, ends[1], 0.0, down)
    return g, learners


def _shortest_paths(g: _Graph, root: int) -> dict[int, tuple[int, ...]]:
    """Vertex -> link ids of the first shortest path found, Kollaps's visiting order."""
    paths: dict[int, tuple[int, ...]] = {root: ()}
    frontier = [root]
    while frontier:
        nxt: list[int] = []
        for u in sorted(frontier):  # vertices are numbered in declaration order
            for lid in g.adj[u]:
                v = g.links[lid].dst
                if v not in paths:
                    paths[v] = (*paths[u], lid)
                    nxt.append(v)
        frontier = nxt
    return paths


def import_kollaps(
    path: str | Path,
    *,
    intra_service_mbps: float | None = None,
    latency_ms: float = 1.0,
    first_prefixes: Sequence[str] = ("slowWorker",),
) -> NetworkSpec:
    """Read ``path`` and collapse it to per-node caps, shared links, routes and latencies.

    ``intra_service_mbps``: two replicas of one service whose Kollaps path relays through another
    container get a private link of this capacity and ``latency_ms`` instead (None: keep Kollaps's
    relay). A ValueError names the file and the problem.
    """
    g, learners = _parse(path)
    ordered = [s for s in learners if s[0].startswith(tuple(first_prefixes))]
    ordered += [s for s in learners if s not in ordered]
    vertices = [v for name, _ in ordered for v in g.names[name]]
    n = len(vertices)
    if n < 2:
        raise _fail(path, f"needs at least 2 learning containers, found {n}")

    latency = np.zeros((n, n))
    # resource key -> (capacity in bits/s, pairs crossing it); keys are link ids or private pairs
    crossing: dict[object, tuple[float, list[Pair]]] = {}
    for i, root in enumerate(vertices):
        paths = _shortest_paths(g, root)
        for j, v in enumerate(vertices):
            if i == j:
                continue
            if v not in paths:
                raise _fail(path, f"no path from {g.labels[root]} to {g.labels[v]}")
            hops = paths[v]
            relays = [g.links[lid].dst for lid in hops[:-1]]
            same = g.service[root] == g.service[v]
            if intra_service_mbps is not None and same and any(g.service[r] for r in relays):
                latency[i, j] = latency_ms / 1e3
                crossing[("private", i, j)] = (intra_service_mbps * 1e6, [(i, j)])
                continue
            latency[i, j] = sum(g.links[lid].latency_ms for lid in hops) / 1e3
            for lid in hops:
                crossing.setdefault(lid, (g.links[lid].bps, []))[1].append((i, j))
    return _collapse(n, latency, list(crossing.values()), f"kollaps: {Path(path).name}")


def _collapse(
    n: int, latency: np.ndarray, resources: list[tuple[float, list[Pair]]], description: str
) -> NetworkSpec:
    """Fold node-wide links into up/down caps; keep the rest as shared links with routes."""
    up = np.full(n, np.inf)
    down = np.full(n, np.inf)
    shared: dict[frozenset[Pair], float] = {}
    for bps, pairs in resources:
        cap = bps / 8.0
        srcs = {p[0] for p in pairs}
        dsts = {p[1] for p in pairs}
        if len(srcs) == 1 and len(pairs) == n - 1:
            (i,) = srcs
            up[i] = min(up[i], cap)
        elif len(dsts) == 1 and len(pairs) == n - 1:
            (j,) = dsts
            down[j] = min(down[j], cap)
        else:
            key = frozenset(pairs)
            shared[key] = min(shared.get(key, math.inf), cap)
    links: list[float] = []
    routes: dict[Pair, list[int]] = {}
    for key, cap in shared.items():
        for pair in key:
            routes.setdefault(pair, []).append(len(links))
        links.append(cap)
    return NetworkSpec(
        up,
        down,
        latency,
        links=links,
        route=RouteTable(n, {p: tuple(sorted(r)) for p, r in routes.items()}) if links else None,
        description=description,
    )


def network_signature(spec: NetworkSpec) -> tuple[np.ndarray, frozenset]:
    """What the flow model sees, independent of representation: latencies, and each finite
    resource as (capacity, the pairs that cross it); a resource dominated by another crossed by
    the same pairs is left out. Two specs with equal signatures behave identically."""
    n = spec.n
    all_pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    resources: list[tuple[float, list[Pair]]] = []
    for i in range(n):
        resources.append((float(spec.up_Bps[i]), [(i, j) for j in range(n) if j != i]))
        resources.append((float(spec.down_Bps[i]), [(j, i) for j in range(n) if j != i]))
    by_link: dict[int, list[Pair]] = {}
    if spec.route is not None:
        for pair in all_pairs:
            for k in spec.route(*pair):
                by_link.setdefault(int(k), []).append(pair)
    for k, pairs in by_link.items():
        resources.append((float(spec.links[k]), pairs))
    best: dict[frozenset[Pair], float] = {}
    for cap, pairs in resources:
        if math.isfinite(cap) and pairs:
            key = frozenset(pairs)
            best[key] = min(best.get(key, math.inf), cap)
    return spec.latency_s.copy(), frozenset((cap, key) for key, cap in best.items())
