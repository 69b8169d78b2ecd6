"""D-PSGD (Lian et al. 2017) in synchronous rounds, as decentralizepy runs it.

Each round: train ``local_steps`` SGD steps, send the trained model to every neighbour, wait for
every neighbour's model of the same round, then average with Metropolis-Hastings weights
w_ij = 1 / (1 + max(d_i, d_j)), w_ii = 1 - sum_j w_ij; the neighbour's degree is in the message.
Models of later rounds that arrive early are buffered.
"""

from __future__ import annotations

from collections import defaultdict

from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.message import Message
from peerlearn.protocols.base import Action, Finish, Protocol, Record, Send, Train


def metropolis_hastings(own_degree: int, neighbor_degrees: dict[int, int]) -> dict[int, float]:
    """Weights for each neighbour and for self (key -1); they sum to 1."""
    weights = {j: 1.0 / (1 + max(own_degree, d)) for j, d in neighbor_degrees.items()}
    weights[-1] = 1.0 - sum(weights.values())
    return weights


class DPSGD(Protocol):
    name = "dpsgd"
    description = "synchronous D-PSGD: full model to every neighbour, Metropolis-Hastings averaging"

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        self.trained = False
        self.inbox: dict[int, dict[int, DenseVector]] = defaultdict(dict)

    def on_start(self) -> list[Action]:
        return [Train(self.local_steps)]

    def on_training_done(self, steps: int) -> list[Action]:
        self.trained = True
        payload = DenseVector(self.ctx.model.clone(), degree=len(self.ctx.neighbors))
        sends: list[Action] = [
            Send(j, "model", self.iteration, payload) for j in self.ctx.neighbors
        ]
        return sends + self._try_average()

    def on_message(self, message: Message) -> list[Action]:
        if message.src not in self.ctx.neighbors or message.iteration < self.iteration:
            return [Record("ignored_messages", 1.0)]
        assert isinstance(message.payload, DenseVector)
        self.inbox[message.iteration][message.src] = message.payload
        return self._try_average()

    def _try_average(self) -> list[Action]:
        got = self.inbox.get(self.iteration, {})
        if not self.trained or len(got) < len(self.ctx.neighbors):
            return []
        del self.inbox[self.iteration]
        weights = metropolis_hastings(
            len(self.ctx.neighbors), {j: p.degree for j, p in got.items()}
        )
        x = self.ctx.model
        mixed = x * weights[-1]
        for j in sorted(got):  # fixed order: identical sums in every run
            mixed.add_(got[j].values, alpha=weights[j])
        x.copy_(mixed)
        self.iteration += 1
        self.trained = False
        if self.done_iterating():
            return [Finish()]
        return [Train(self.local_steps)]
