"""Topologies (who talks to whom) and network presets (how fast and how far)."""

from peerlearn.network.presets import PRESETS, NetworkSpec, build_network
from peerlearn.network.topology import TOPOLOGIES, build_topology, metropolis_hastings_weights

__all__ = [
    "PRESETS",
    "TOPOLOGIES",
    "NetworkSpec",
    "build_network",
    "build_topology",
    "metropolis_hastings_weights",
]
