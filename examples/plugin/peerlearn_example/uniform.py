"""Uniform averaging: synchronous rounds, every neighbour weighted 1 / (degree + 1).

Each round a node trains ``local_steps`` SGD steps, sends its model to every neighbour, waits
for each neighbour's model of the same round, and replaces its model by the plain mean of its
own and theirs. It needs no degrees from its neighbours, but its mixing matrix is doubly
stochastic only on a regular graph; there it equals D-PSGD's Metropolis-Hastings weights.
Written against ``peerlearn.api`` alone, as an outside package would.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peerlearn.api import (
    Action,
    DenseVector,
    Finish,
    Message,
    Protocol,
    Record,
    Section,
    Send,
    Train,
    register_algorithm,
)


class UniformConfig(Section):
    """``[algorithm]`` of uniform averaging; ``self_weight`` scales the node's own model."""

    name: Literal["uniform_avg"] = "uniform_avg"
    # 1.0: the plain mean; larger values keep more of the node's own model each round
    self_weight: float = Field(default=1.0, gt=0)


@register_algorithm(
    "uniform_avg",
    config=UniformConfig,
    payloads=["dense"],
    kinds=["model"],
    synchronous=True,
    description="synchronous rounds, plain mean of own and neighbours' models (example plugin)",
)
class UniformAveraging(Protocol):
    name = "uniform_avg"

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        self.trained = False
        # round -> sender -> model; a neighbour may be one round ahead of us
        self.inbox: dict[int, dict[int, DenseVector]] = {}

    def state_dict(self) -> dict:  # for checkpoints: everything besides ctx and params
        return {**super().state_dict(), "trained": self.trained, "inbox": self.inbox}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.trained, self.inbox = bool(state["trained"]), dict(state["inbox"])

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
        ahead = message.iteration - self.iteration
        if message.src not in self.ctx.neighbors or ahead not in (0, 1):
            return [Record("ignored_messages", 1.0)]
        self.inbox.setdefault(message.iteration, {})[message.src] = message.payload
        return self._try_average()

    def _try_average(self) -> list[Action]:
        got = self.inbox.get(self.iteration, {})
        if not self.trained or len(got) < len(self.ctx.neighbors):
            return []
        del self.inbox[self.iteration]
        x = self.ctx.model
        own = float(self.params.self_weight)
        total = x * own
        for j in sorted(got):  # a fixed order: the same sums in every run
            total.add_(got[j].values)
        x.copy_(total / (own + len(got)))
        self.iteration += 1
        self.trained = False
        return [Finish()] if self.done_iterating() else [Train(self.local_steps)]
