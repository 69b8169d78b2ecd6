"""The built-in topologies and network presets' registrations (their builders are imported
when a run builds one, so that validating a config imports neither networkx nor numpy)."""

from __future__ import annotations

from peerlearn.components import register_preset, register_topology

_T = "peerlearn.network.topology"
register_topology(
    "ring", f"{_T}:ring", description="each node linked to its two neighbours on a cycle"
)
register_topology(
    "regular", f"{_T}:regular", description="random connected d-regular graph (degree=d), seeded"
)
register_topology("full", f"{_T}:full", description="fully connected: every pair of nodes linked")
register_topology(
    "small_world",
    f"{_T}:small_world",
    description="connected Watts-Strogatz graph (k=degree, p=rewire_p), seeded",
)
register_topology(
    "file",
    f"{_T}:edge_file",
    description="edge list read from a file ('u v' lines; decentralizepy format accepted)",
)

_P = "peerlearn.network.presets"
register_preset(
    "uniform",
    f"{_P}:uniform",
    description="every node at mbps up and down, latency_ms between every pair",
)
register_preset(
    "stragglers",
    f"{_P}:stragglers",
    description="fast nodes at fast_mbps; `stragglers` nodes (ids 0..k-1) at fast_mbps/slowdown",
)
register_preset(
    "ideal",
    f"{_P}:ideal",
    description="infinite capacity and zero latency: every message arrives at once",
)
register_preset(
    "divshare_60n7cs5",
    f"{_P}:divshare_60n7cs5",
    description="DivShare artifact: 60 nodes, ids 0..6 at 10-13 Mbps, others 60 Mbps, star",
)
register_preset(
    "diablo_60n",
    f"{_P}:diablo_60n",
    description="DivShare artifact: 10 regions x 6 nodes, measured inter-region Mbps per pair",
)
register_preset(
    "kollaps",
    f"{_P}:kollaps",
    description="import a Kollaps 2.0 topology XML (kollaps_xml), collapsed to end-to-end paths",
)
