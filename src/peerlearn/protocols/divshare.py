"""DivShare (Biswas et al., WWW 2025), as the sacs-epfl/divshare artifact runs it.

Asynchronous, no barriers. After each local training the node drops every send of earlier
iterations that has not been delivered yet (so a slow uplink only ever carries fresh data),
snapshots its model, sends each of Ω fixed random fragments to r fresh random peers in a random
order, folds everything received since its last aggregation into a per-coordinate mean, and trains
again at once. Small fragments in random order let a straggler deliver a random part of its newest
model before the next flush, instead of a backlog of stale full models. See
``peerlearn.protocols.fragments`` and docs/algorithms_async.md.
"""

from __future__ import annotations

from typing import Any

from peerlearn.protocols.base import NodeContext
from peerlearn.protocols.fragments import FragmentGossip


class DivShare(FragmentGossip):
    name = "divshare"
    description = "asynchronous: Ω random fragments to r random peers each, stale sends dropped"

    def __init__(
        self, ctx: NodeContext, params: Any, *, local_steps: int, max_iterations: int | None
    ) -> None:
        self.n_fragments = int(params.fragments)
        self.flush = bool(params.flush)
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
