"""Epidemic Learning (de Vos et al., NeurIPS 2023): EL-Oracle and EL-Local, in synchronous rounds.

Both follow the authors' code (decentralizepy, tag ``epidemic-neurips-2023``): each round a node
trains ``local_steps`` SGD steps, *then* sends its trained model, waits for the models meant for
it in this round, and replaces its model by the plain mean of its own and the received ones (every
model weight 1/(k+1) for k received, no Metropolis-Hastings), then starts the next round.

* **EL-Oracle**: the round's peers are a fresh random connected s-regular graph over all nodes;
  a node sends to and averages with its s neighbours in it.
* **EL-Local**: every node pushes its model to s peers drawn uniformly from all the others; a node
  averages with whatever was pushed to it this round (possibly nothing: then it keeps its own).

Who talks to whom in round r is a function of (run seed, r) only (``peerlearn.network.dynamic``
for EL-Oracle, ``local_schedule`` here for EL-Local), so every node knows, without a message,
whom it sends to and whom it waits for, in the simulator and in a deployment alike. The
reference's EL-Local instead sends a "not working" notice to every node it does not push to and
waits for all n - 1 notices or models (a global barrier); here a node waits only for its actual
senders, and no notice travels. See docs/algorithms_epidemic.md.

This file is a complete algorithm written as a user would, against public modules only
(``protocols.rounds``, ``codecs.dense``, ``network.dynamic``, ``config.sections`` and
``components.register_algorithm``, which ``peerlearn.api`` re-exports; importing them does not
import torch, so validating a config stays light): a config section per variant and two
``SyncRounds`` subclasses, registered at the bottom.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field

from peerlearn.components import register_algorithm
from peerlearn.config.sections import Section
from peerlearn.protocols.base import Action, Record
from peerlearn.protocols.rounds import SyncRounds

if TYPE_CHECKING:
    from peerlearn.codecs.dense import DenseVector

__all__ = ["ELLocal", "ELLocalConfig", "ELOracle", "ELOracleConfig", "local_schedule"]

#: separates EL-Local's push schedule from every other use of the run seed
_EL_LOCAL_STREAM = 0xE1


# -- configs ----------------------------------------------------------------------------------


class ELOracleConfig(Section):
    """EL-Oracle: every round a fresh random s-regular graph over all nodes, plain averaging."""

    name: Literal["el_oracle"] = "el_oracle"
    # the degree of each round's random regular graph (the authors' tutorial: 7 for 16 nodes)
    s: Annotated[int, Field(gt=0)] = 7

    def check_experiment(self, cfg: Any) -> None:
        """One-line errors for an s that no connected s-regular graph on ``cfg.nodes`` has."""
        n = cfg.nodes
        if self.s >= n:
            raise ValueError(f"algorithm.s = {self.s} must be below nodes ({n}) for el_oracle")
        if n * self.s % 2:
            raise ValueError(
                f"algorithm.s = {self.s} with nodes = {n}: an s-regular graph needs nodes * s even"
            )
        if self.s == 1 and n > 2:
            raise ValueError(
                f"algorithm.s = 1 with nodes = {n}: a 1-regular graph is never connected; "
                "use s >= 2"
            )


class ELLocalConfig(Section):
    """EL-Local: every node pushes its model to s random peers, averages what it received."""

    name: Literal["el_local"] = "el_local"
    # how many peers each node pushes its model to per round
    s: Annotated[int, Field(gt=0)] = 7

    def check_experiment(self, cfg: Any) -> None:
        if self.s >= cfg.nodes:
            raise ValueError(
                f"algorithm.s = {self.s} must be below nodes ({cfg.nodes}) for el_local"
            )


# -- shared pieces ----------------------------------------------------------------------------


def _uniform(got: dict[int, Any]) -> dict[int, float]:
    """Weight 1/(k+1) for each of the k received models and for the own one (key -1)."""
    w = 1.0 / (len(got) + 1)
    return {**dict.fromkeys(got, w), -1: w}


class _EpidemicRound(SyncRounds):
    """The round of both variants: dense model out, plain mean in."""

    def make_payload(self) -> tuple[DenseVector, list[Action]]:
        from peerlearn.codecs.dense import DenseVector  # torch: not needed to validate a config

        return DenseVector(self.ctx.model.clone(), degree=int(self.params.s)), []

    def mixing_weights(self, got: dict[int, Any]) -> dict[int, float]:
        return _uniform(got)

    def merge(self, got: dict[int, DenseVector], weights: dict[int, float]) -> None:
        x = self.ctx.model
        numel = x.numel()
        mixed = x * weights[-1]
        for j in sorted(got):  # fixed order: identical sums in every run
            values = got[j].values
            if values.numel() != numel:
                raise ValueError(
                    f"node {self.ctx.node}: model from {j} has {values.numel()} values, "
                    f"expected {numel}"
                )
            mixed.add_(values, alpha=weights[j])
        x.copy_(mixed)


# -- EL-Oracle --------------------------------------------------------------------------------


class ELOracle(_EpidemicRound):
    name = "el_oracle"
    description = "Epidemic Learning (oracle): a fresh random s-regular graph every round"

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        params = params if params is not None else ELOracleConfig()
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        from peerlearn.network.dynamic import RoundGraph  # networkx: not needed by the config

        # the same generator as topology.dynamic: D-PSGD on a dynamic degree-s graph sees the
        # same graphs, and averages with the same weights (1/(s+1) on a regular graph)
        self.graph = RoundGraph(ctx.n_nodes, int(params.s), ctx.run_seed, ctx.node)

    def send_to(self, round_: int) -> tuple[int, ...]:
        return self.graph(round_)

    def wait_for(self, round_: int) -> tuple[int, ...]:
        return self.graph(round_)

    def max_ahead(self) -> int | None:
        return self.ctx.n_nodes - 1  # connected graphs every round (see SyncRounds.max_ahead)


# -- EL-Local ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def local_schedule(
    n: int, s: int, seed: int, round_: int
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """EL-Local's pushes in round ``round_``: (targets of each node, senders to each node).

    Node j's s targets are drawn uniformly without replacement from the other n - 1 nodes, for
    j = 0, 1, ... in turn, from one generator seeded by (run seed, stream, round): every node
    computes the same schedule, so a receiver knows whom to wait for.
    """
    if not 1 <= s < n:
        raise ValueError(f"EL-Local needs 1 <= s < nodes, got s={s}, nodes={n}")
    rng = np.random.default_rng([seed, _EL_LOCAL_STREAM, round_])
    targets = tuple(
        tuple(sorted(i + (i >= j) for i in rng.choice(n - 1, size=s, replace=False).tolist()))
        for j in range(n)
    )
    senders: list[list[int]] = [[] for _ in range(n)]
    for j, dests in enumerate(targets):
        for i in dests:
            senders[i].append(j)
    return targets, tuple(tuple(x) for x in senders)


class ELLocal(_EpidemicRound):
    name = "el_local"
    description = "Epidemic Learning (local): push to s random peers, average what arrived"

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        params = params if params is not None else ELLocalConfig()
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        self.s = int(params.s)
        local_schedule(ctx.n_nodes, self.s, ctx.run_seed, 0)  # a bad s fails here, not later

    def send_to(self, round_: int) -> tuple[int, ...]:
        return local_schedule(self.ctx.n_nodes, self.s, self.ctx.run_seed, round_)[0][self.ctx.node]

    def wait_for(self, round_: int) -> tuple[int, ...]:
        return local_schedule(self.ctx.n_nodes, self.s, self.ctx.run_seed, round_)[1][self.ctx.node]

    def max_ahead(self) -> int | None:
        # A node that nobody pushes to moves on alone, so a sender can be any number of rounds
        # ahead; a payload is still only accepted from a node the schedule names for that round.
        return None

    def make_payload(self) -> tuple[DenseVector, list[Action]]:
        payload, _ = super().make_payload()
        expected = len(self.wait_for(self.iteration))
        return payload, [Record("models_in", float(expected))]


# -- registration: one entry per algorithm, next to its code -------------------------------------

register_algorithm(
    "el_oracle",
    config=ELOracleConfig,
    protocol=ELOracle,
    payloads=("dense",),
    kinds=("model",),
    synchronous=True,
    description=ELOracle.description,
)
register_algorithm(
    "el_local",
    config=ELLocalConfig,
    protocol=ELLocal,
    payloads=("dense",),
    kinds=("model",),
    synchronous=True,
    description=ELLocal.description,
)
