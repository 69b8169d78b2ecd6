"""D-PSGD (Lian et al. 2017) in synchronous rounds, as decentralizepy runs it.

Each round: train ``local_steps`` SGD steps, send the trained model to every neighbour, wait for
every neighbour's model of the same round, then average with Metropolis-Hastings weights
w_ij = 1 / (1 + max(d_i, d_j)), w_ii = 1 - sum_j w_ij; the neighbour's degree is in the message.
Models of later rounds that arrive early are buffered (the round itself is ``SyncRounds``).
"""

from __future__ import annotations

from peerlearn.codecs.dense import DenseVector
from peerlearn.protocols.base import Action
from peerlearn.protocols.rounds import SyncRounds, metropolis_hastings

__all__ = ["DPSGD", "metropolis_hastings"]


class DPSGD(SyncRounds):
    name = "dpsgd"
    description = "synchronous D-PSGD: full model to every neighbour, Metropolis-Hastings averaging"

    def make_payload(self) -> tuple[DenseVector, list[Action]]:
        return DenseVector(self.ctx.model.clone(), degree=self.degree), []

    def merge(self, got: dict[int, DenseVector], weights: dict[int, float]) -> None:
        x = self.ctx.model
        mixed = x * weights[-1]
        for j in sorted(got):  # fixed order: identical sums in every run
            mixed.add_(got[j].values, alpha=weights[j])
        x.copy_(mixed)
