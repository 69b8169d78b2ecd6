"""The simulator's flow model of a network spec (``peerlearn.network.spec``)."""

from __future__ import annotations

from peerlearn.network.spec import NetworkSpec
from peerlearn.sim.flows import FlowNetwork
from peerlearn.sim.send_buffer import SendBuffer


def flow_network(
    spec: NetworkSpec, rate_update_s: float = 0.0, send_buffer: SendBuffer | None = None
) -> FlowNetwork:
    """A fresh flow model at time 0 (the spec itself is never mutated); ``send_buffer``: what
    a flush cannot recall (``sim/send_buffer.py``), None for the algorithm as specified."""
    return FlowNetwork(
        spec.up_Bps,
        spec.down_Bps,
        spec.latency_s,
        spec.links,
        spec.route,
        rate_update_s=rate_update_s,
        send_buffer=send_buffer,
    )
