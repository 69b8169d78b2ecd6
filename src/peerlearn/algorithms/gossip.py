"""Gossip learning (Ormándi et al. 2013; Hegedűs et al. 2019), asynchronous, as in gossipy.

Every node keeps a model and its *age*, the number of local updates (one update = one local
training of ``local_steps`` SGD steps) its lineage has seen. The node never waits: after each
local training it ages its model by one and pushes (model, age) to one peer drawn uniformly from
all the others, then merges every model that arrived while it was training and trains again on
the result. Merging one waiting model per sender (the newest, by age) with its own:

* ``merge = "age"`` (default): x <- (a x + sum_j a_j x_j) / (a + sum_j a_j), the age-weighted
  mean (decentralizepy's gossip sharing, Hegedűs et al.); a young model moves an old one little;
* ``merge = "average"``: x <- (x + sum_j x_j) / (1 + k), gossipy's plain mean;

and the age becomes max(a, a_j). The gossip period Δ of the papers is the node's local training
time, so stragglers gossip less often; a model that arrives during a training waits for its end,
because the trainer owns the model meanwhile ("merge, then update", in the order gossipy's
MERGE_UPDATE mode uses). The age rides in the dense vector's int32 header field (the degree for
D-PSGD). See docs/algorithms_epidemic.md.

This file is a complete algorithm written as a user would, against public modules only
(``protocols.base``, ``codecs.dense``, ``config.sections``): a config section and one
``Protocol`` subclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from peerlearn.codecs.message import Message
from peerlearn.components import register_algorithm
from peerlearn.config.sections import Section
from peerlearn.protocols.base import Action, Finish, NodeContext, Protocol, Record, Send, Train

if TYPE_CHECKING:
    import torch

__all__ = ["Gossip", "GossipConfig"]


class GossipConfig(Section):
    """Gossip learning: after each local training, push (model, age) to one random peer."""

    name: Literal["gossip"] = "gossip"
    # how a received model is merged: weighted by the models' ages, or a plain mean
    merge: Literal["age", "average"] = "age"


class Gossip(Protocol):
    name = "gossip"
    description = "asynchronous gossip learning: model + age to one random peer, merge by age"

    def __init__(
        self, ctx: NodeContext, params: Any, *, local_steps: int, max_iterations: int | None
    ) -> None:
        params = params if params is not None else GossipConfig()
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        if ctx.n_nodes < 2:
            raise ValueError(f"gossip needs at least 2 nodes, got {ctx.n_nodes}")
        self.by_age = params.merge == "age"
        self.age = 0
        # sender -> (age, model): the newest model per sender since the last merge
        self.inbox: dict[int, tuple[int, torch.Tensor]] = {}
        self.received = 0  # arrivals since the last merge, replaced ones included

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "age": self.age,
            "inbox": self.inbox,
            "received": self.received,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.age = int(state["age"])
        self.inbox = dict(state["inbox"])
        self.received = int(state["received"])

    # -- events ----------------------------------------------------------------------------------

    def on_start(self) -> list[Action]:
        return [Train(self.local_steps)]

    def on_message(self, message: Message) -> list[Action]:
        from peerlearn.codecs.dense import DenseVector  # torch: not needed to validate a config

        payload = message.payload
        numel = self.ctx.model.numel()
        if not isinstance(payload, DenseVector) or payload.values.numel() != numel:
            raise ValueError(
                f"node {self.ctx.node}: {message.kind!r} from {message.src} must carry a whole "
                f"model of {numel} values"
            )
        age = int(payload.degree)
        if age < 1:  # a pushed model has been trained at least once
            raise ValueError(f"node {self.ctx.node}: model from {message.src} with age {age}")
        self.received += 1
        waiting = self.inbox.get(message.src)
        if waiting is None or waiting[0] <= age:  # FIFO per sender: a tie is the later copy
            self.inbox[message.src] = (age, payload.values)
        return []

    def on_training_done(self, steps: int) -> list[Action]:
        from peerlearn.codecs.dense import DenseVector

        self.age += 1
        me = self.ctx.node
        peer = int(self.ctx.rng.integers(0, self.ctx.n_nodes - 1))
        peer += peer >= me  # uniform over every node but this one
        # a fresh tensor: the queued message keeps the model as it was when sent
        payload = DenseVector(self.ctx.model.clone(), degree=self.age)
        actions: list[Action] = [Send(peer, "model", self.iteration, payload)]
        actions += self._merge()
        self.iteration += 1
        actions.append(Record("iteration_end", float(self.iteration)))
        actions.append(Finish() if self.done_iterating() else Train(self.local_steps))
        return actions

    # -- steps -----------------------------------------------------------------------------------

    def _merge(self) -> list[Action]:
        """Merge every waiting model into the own one (in sender order), then empty the inbox."""
        records: list[Action] = [Record("models_received", float(self.received))]
        if self.inbox:
            x = self.ctx.model
            waiting = [self.inbox[src] for src in sorted(self.inbox)]
            if self.by_age:
                total = self.age + sum(a for a, _ in waiting)
                acc = x * float(self.age)
                for a, values in waiting:
                    acc.add_(values, alpha=float(a))
            else:
                total = 1 + len(waiting)
                acc = x.clone()
                for _, values in waiting:
                    acc.add_(values)
            x.copy_(acc / total)
            self.age = max(self.age, *(a for a, _ in waiting))
            records.append(Record("models_merged", float(len(waiting))))
        records.append(Record("model_age", float(self.age)))
        self.inbox.clear()
        self.received = 0
        return records


register_algorithm(
    "gossip",
    config=GossipConfig,
    protocol=Gossip,
    payloads=("dense",),
    kinds=("model",),
    description=Gossip.description,
)
