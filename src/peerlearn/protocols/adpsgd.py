"""AD-PSGD in two variants: the DivShare artifact's approximation, and Lian et al.'s pairwise one.

``variant = "artifact"`` (the default, what the DivShare paper compared against): after each local
training the node snapshots its model and pings ⌊r/2⌋ peers drawn with replacement with that
snapshot. A node that receives a ping answers at once, even while it trains, with its newest
post-training snapshot. Both sides only *fold* what they received into their next aggregation
(uniform mean of the own model and the newest model per sender). Nothing is ever dropped.

``variant = "atomic"`` follows AD-PSGD (Lian et al., ICML 2018): the update is computed on the model
read before training, then the node averages its model *pairwise* with one random peer, then applies
its update. Without a global lock, "atomic" here means (see docs/algorithms_async.md):

- the responder averages at once, in the single event that handles the ping (its model is touched
  by nothing else in between), and replies with the average;
- the initiator waits for that reply before it goes on (at most one exchange outstanding per node)
  and then adds ``reply - sent`` to its model. If nothing touched its model meanwhile, this is
  exactly the average, so both sides hold (x_i + x_j) / 2. If it served other pings meanwhile,
  adding the difference still keeps x_i + x_j unchanged, so the network's mean model is conserved
  as with true atomic averaging;
- two pings that cross on the same pair would average twice (a swap); the higher id declines the
  lower id's ping instead, so the pair averages once;
- responders never wait, so there is no deadlock; a timeout unblocks an initiator whose peer has
  stopped (a late reply is still applied, keeping the sum).

Both variants make ``max(1, ⌊r/2⌋)`` exchanges per iteration, so traffic is about r models.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

import torch

from peerlearn.codecs.fragment import FragmentPayload
from peerlearn.codecs.message import Message
from peerlearn.protocols.base import (
    Action,
    Finish,
    NodeContext,
    Protocol,
    Record,
    Send,
    SetTimer,
    Train,
)
from peerlearn.protocols.fragments import effective_fanout, random_peers_with_replacement

_EMPTY = torch.zeros(0)


def _model_payload(protocol: Protocol, message: Message) -> torch.Tensor:
    """The whole model carried by ``message``, validated against the node's own model size."""
    payload = message.payload
    numel = protocol.ctx.model.numel()
    if (
        not isinstance(payload, FragmentPayload)
        or payload.fragment != 0
        or payload.n_values != numel
    ):
        raise ValueError(
            f"node {protocol.ctx.node}: {message.kind!r} from {message.src} must carry a whole "
            f"model of {numel} values"
        )
    return payload.values


class ADPSGD(Protocol):
    """Picks the variant class from ``params.variant`` (both answer to the name "adpsgd")."""

    name = "adpsgd"
    description = "asynchronous AD-PSGD: r/2 pings answered with the newest model (or atomic)"

    def __new__(cls, ctx: NodeContext, params: Any, **kwargs: Any) -> ADPSGD:
        if cls is ADPSGD:
            variant = getattr(params, "variant", "artifact")
            cls = {"artifact": ADPSGDArtifact, "atomic": ADPSGDAtomic}[variant]
        return super().__new__(cls)

    def __init__(
        self, ctx: NodeContext, params: Any, *, local_steps: int, max_iterations: int | None
    ) -> None:
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        effective_fanout(params.fanout, ctx.n_nodes)  # checks n >= 2; peers repeat, so no cap
        self.exchanges = max(1, int(params.fanout) // 2)

    def _end_iteration(self, records: list[Action]) -> list[Action]:
        self.iteration += 1
        records.append(Record("iteration_end", float(self.iteration)))
        if self.done_iterating():
            return [*records, Finish()]
        return [*records, *self._train()]

    def _train(self) -> list[Action]:
        return [Train(self.local_steps)]


class ADPSGDArtifact(ADPSGD):
    """Pings fold into the next aggregation on both sides; no flush (so backlogs grow)."""

    def __init__(
        self, ctx: NodeContext, params: Any, *, local_steps: int, max_iterations: int | None
    ) -> None:
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        # the artifact snapshots once before the loop, so early pings get the initial model
        self.latest = ctx.model.clone()
        self.latest_tag = -1
        self.inbox: dict[int, tuple[int, torch.Tensor]] = {}  # sender -> (tag, model)
        self.received = 0

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "latest": self.latest,
            "latest_tag": self.latest_tag,
            "inbox": self.inbox,
            "received": self.received,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.latest = state["latest"]
        self.latest_tag = int(state["latest_tag"])
        self.inbox = dict(state["inbox"])
        self.received = int(state["received"])

    def on_start(self) -> list[Action]:
        return self._train()

    def on_training_done(self, steps: int) -> list[Action]:
        # a fresh tensor each time: queued pings and replies keep the snapshot they were given
        self.latest = self.ctx.model.clone()
        self.latest_tag = self.iteration
        payload = FragmentPayload(0, self.latest)
        peers = random_peers_with_replacement(
            self.ctx.rng, self.ctx.n_nodes, self.ctx.node, self.exchanges
        )
        actions: list[Action] = [Send(int(j), "ping", self.iteration, payload) for j in peers]
        return actions + self._end_iteration(self._aggregate())

    def on_message(self, message: Message) -> list[Action]:
        values = _model_payload(self, message)
        self.received += 1
        waiting = self.inbox.get(message.src)
        if waiting is None or waiting[0] <= message.iteration:
            self.inbox[message.src] = (message.iteration, values)
        if message.kind == "ping":
            reply = FragmentPayload(0, self.latest)
            return [Send(message.src, "reply", self.latest_tag, reply)]
        return []

    def _aggregate(self) -> list[Action]:
        records: list[Action] = [
            Record("fragments_received", float(self.received)),
            Record("received_fraction", self.received / (2 * self.exchanges)),
        ]
        if self.inbox:
            x = self.ctx.model
            ages = []
            for src in sorted(self.inbox):
                tag, values = self.inbox[src]
                x += values
                ages.append(self.iteration - tag)
            x /= 1 + len(ages)
            records.append(Record("aggregation_age_mean", sum(ages) / len(ages)))
            records.append(Record("copies_used", float(len(ages))))
        self.inbox.clear()
        self.received = 0
        return records


class ADPSGDAtomic(ADPSGD):
    """Train, then ⌊r/2⌋ sequential pairwise averages, then apply the local update."""

    def __init__(
        self, ctx: NodeContext, params: Any, *, local_steps: int, max_iterations: int | None
    ) -> None:
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        self.timeout_s = float(params.reply_timeout_s)
        self.training = False
        self.x_start: torch.Tensor | None = None  # model read when training started
        self.shadow: torch.Tensor | None = None  # the node's model while the trainer owns it
        self.delta: torch.Tensor | None = None  # local update withheld during exchanges
        self.left = 0  # exchanges still to start this iteration
        self.seq = 0  # exchange counter, names the reply timers
        self.awaiting: tuple[int, int] | None = None  # (peer, seq) of the blocking exchange
        # peer -> exchanges sent to it and not yet answered: (seq, iteration tag, model sent)
        self.outstanding: dict[int, deque[tuple[int, int, torch.Tensor]]] = defaultdict(deque)
        self.counts = dict.fromkeys(
            ("completed", "served", "declined", "timeouts", "late", "lost", "unmatched"), 0
        )

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "training": self.training,
            "x_start": self.x_start,
            "shadow": self.shadow,
            "delta": self.delta,
            "left": self.left,
            "seq": self.seq,
            "awaiting": self.awaiting,
            # peers in insertion order, empty queues included (the dict's order is its history)
            "outstanding": {peer: list(queue) for peer, queue in self.outstanding.items()},
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.training = bool(state["training"])
        self.x_start, self.shadow, self.delta = state["x_start"], state["shadow"], state["delta"]
        self.left, self.seq = int(state["left"]), int(state["seq"])
        self.awaiting = None if state["awaiting"] is None else tuple(state["awaiting"])
        self.outstanding = defaultdict(
            deque, {peer: deque(queue) for peer, queue in state["outstanding"].items()}
        )
        self.counts = dict(state["counts"])

    # -- the node's current model ----------------------------------------------------------------

    def _model(self) -> torch.Tensor:
        """The node's model; while training it is a shadow copy (ctx.model is the trainer's)."""
        if not self.training:
            return self.ctx.model
        if self.shadow is None:
            assert self.x_start is not None
            self.shadow = self.x_start.clone()
        return self.shadow

    def _train(self) -> list[Action]:
        self.x_start = self.ctx.model.clone()
        self.training = True
        return [Train(self.local_steps)]

    # -- events ----------------------------------------------------------------------------------

    def on_start(self) -> list[Action]:
        return self._train()

    def on_training_done(self, steps: int) -> list[Action]:
        assert self.x_start is not None
        x = self.ctx.model
        self.delta = x - self.x_start  # the update, computed on the model read at the start
        x.copy_(self.shadow if self.shadow is not None else self.x_start)  # pings served since
        self.training = False
        self.x_start = self.shadow = None
        self.left = self.exchanges
        return self._next_exchange()

    def on_message(self, message: Message) -> list[Action]:
        src = message.src
        if message.kind == "ping":
            values = _model_payload(self, message)
            if self.outstanding[src] and self.ctx.node > src:
                # our own ping to src crosses this one; src serves ours, so the pair averages once
                self.counts["declined"] += 1
                return [Send(src, "decline", message.iteration, FragmentPayload(0, _EMPTY))]
            x = self._model()
            x.add_(values).mul_(0.5)
            self.counts["served"] += 1
            return [Send(src, "reply", message.iteration, FragmentPayload(0, x.clone()))]
        if message.kind not in ("reply", "decline"):
            raise ValueError(f"node {self.ctx.node}: unknown message kind {message.kind!r}")
        pending = self.outstanding[src]
        # FIFO both ways: answers come in ping order, so the answered ping is the oldest one
        # with this tag; older ones lost their answer (the peer stopped, a message was lost)
        while pending and pending[0][1] != message.iteration:
            pending.popleft()
            self.counts["lost"] += 1
        if not pending:
            self.counts["unmatched"] += 1  # answers no ping of ours (only after losses)
            return []
        seq, _, sent = pending.popleft()
        if message.kind == "reply":
            # + (reply - sent): the average if nothing intervened; the pair's sum is kept always
            self._model().add_(_model_payload(self, message) - sent)
        if self.awaiting != (src, seq):
            self.counts["late"] += 1  # its timer already fired
            return []
        self.awaiting = None
        self.counts["completed"] += 1
        return self._next_exchange()

    def on_timer(self, tag: str) -> list[Action]:
        if self.awaiting is None or tag != f"reply:{self.awaiting[1]}":
            return []  # the reply came in time
        self.awaiting = None
        self.counts["timeouts"] += 1
        return self._next_exchange()

    # -- steps -----------------------------------------------------------------------------------

    def _next_exchange(self) -> list[Action]:
        if self.left == 0:
            assert self.delta is not None
            self.ctx.model.add_(self.delta)
            self.delta = None
            records: list[Action] = [
                Record(f"exchanges_{k}", float(v)) for k, v in self.counts.items() if v
            ]
            self.counts = dict.fromkeys(self.counts, 0)
            return self._end_iteration(records)
        self.left -= 1
        peer = int(
            random_peers_with_replacement(self.ctx.rng, self.ctx.n_nodes, self.ctx.node, 1)[0]
        )
        sent = self.ctx.model.clone()
        self.seq += 1
        self.outstanding[peer].append((self.seq, self.iteration, sent))
        self.awaiting = (peer, self.seq)
        return [
            Send(peer, "ping", self.iteration, FragmentPayload(0, sent)),
            SetTimer(self.timeout_s, f"reply:{self.seq}"),
        ]
