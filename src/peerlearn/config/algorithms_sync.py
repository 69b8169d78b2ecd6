"""D-PSGD's config section and registration (the other built-ins: ``algorithms_async``,
``algorithms_sparse``). Protocols are named as strings, imported when a run builds them."""

from __future__ import annotations

from typing import Literal

from peerlearn.components import register_algorithm
from peerlearn.config.sections import Section


class DPSGDConfig(Section):
    """Synchronous D-PSGD: train, send the full model to every neighbour, wait, MH-average."""

    name: Literal["dpsgd"] = "dpsgd"


register_algorithm(
    "dpsgd",
    config=DPSGDConfig,
    protocol="peerlearn.protocols.dpsgd:DPSGD",
    payloads=("dense",),
    kinds=("model",),
    synchronous=True,
    dynamic_topology=True,
    description="synchronous D-PSGD: full model to every neighbour, Metropolis-Hastings averaging",
)
