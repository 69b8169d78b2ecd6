"""The synchronous round shared by D-PSGD, JWINS, TopK, sub-sampling and CHOCO-SGD.

Each round: train ``local_steps`` SGD steps, send one payload to every neighbour, wait for every
neighbour's payload of the same round (later rounds are buffered), merge with
Metropolis-Hastings weights computed from the degree each payload carries, start the next round.
Subclasses decide only what is sent and how it is merged, and may change who talks to whom in a
round (``send_to``/``wait_for``: a per-round graph, Epidemic Learning's random pushes) and the
weights (``mixing_weights``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections import defaultdict
from typing import Any

import numpy as np

from peerlearn.codecs.message import Message, Payload
from peerlearn.protocols.base import Action, Finish, Protocol, Record, Send, SetTimer, Train


def metropolis_hastings(own_degree: int, neighbor_degrees: dict[int, int]) -> dict[int, float]:
    """Weights for each neighbour and for self (key -1); they sum to 1."""
    weights = {j: 1.0 / (1 + max(own_degree, d)) for j, d in neighbor_degrees.items()}
    weights[-1] = 1.0 - sum(weights.values())
    return weights


class SyncRounds(Protocol):
    """D-PSGD's synchronous round with pluggable payload and merge.

    Subclasses build one payload per round (sent to every neighbour) and merge the neighbours'
    payloads of the same round, given Metropolis-Hastings weights (key -1 = self) computed from
    each payload's ``degree``.
    """

    def __init__(self, ctx, params, *, local_steps, max_iterations) -> None:
        super().__init__(ctx, params, local_steps=local_steps, max_iterations=max_iterations)
        self.trained = False
        self.inbox: dict[int, dict[int, Any]] = defaultdict(dict)
        #: churn.round_timeout_s (set by the engine's Setup): None waits for every neighbour
        self.round_timeout_s: float | None = None
        self.catch_up = 0  # with a timeout: the latest round a neighbour is known to be in

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "trained": self.trained, "inbox": dict(self.inbox)}
        if self.round_timeout_s is not None:
            state["catch_up"] = self.catch_up
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.trained = bool(state["trained"])
        self.inbox = defaultdict(dict, state["inbox"])
        self.catch_up = int(state.get("catch_up", 0))

    # -- what subclasses provide ----------------------------------------------------------------
    def start_records(self) -> list[Action]:
        """Actions to emit once at start (e.g. which float codec the run uses)."""
        return []

    @abstractmethod
    def make_payload(self) -> tuple[Payload, list[Action]]:
        """This round's payload (the model is freshly trained) and any records to emit."""

    @abstractmethod
    def merge(self, got: dict[int, Any], weights: dict[int, float]) -> None:
        """Combine own state with one payload per neighbour; writes ``ctx.model`` in place."""

    # -- who talks to whom, and with which weights (overridable) ----------------------------------
    def send_to(self, round_: int) -> tuple[int, ...]:
        """The peers this node sends its payload of ``round_`` to."""
        at = self.ctx.neighbors_at
        return self.ctx.neighbors if at is None else at(round_)

    def wait_for(self, round_: int) -> tuple[int, ...]:
        """The peers whose payload of ``round_`` this node needs before it merges."""
        at = self.ctx.neighbors_at
        return self.ctx.neighbors if at is None else at(round_)

    def max_ahead(self) -> int | None:
        """How many rounds ahead of this node a genuine payload can be (None: no bound).

        On a fixed graph a neighbour cannot finish a round without our payload, so it is at most
        one round ahead. On a connected graph that changes every round, the nodes that must have
        finished round r + k - 1 for a peer to be in round r + k grow by at least one per round
        going back and never include us, so k <= n - 1 (docs/algorithms_epidemic.md).
        """
        return 1 if self.ctx.neighbors_at is None else self.ctx.n_nodes - 1

    def mixing_weights(self, got: dict[int, Any]) -> dict[int, float]:
        """Weights per sender and for self (key -1), from the degree each payload carries."""
        return metropolis_hastings(self.degree, {j: p.degree for j, p in got.items()})

    # -- the round ------------------------------------------------------------------------------
    @property
    def degree(self) -> int:
        """This round's number of neighbours (the degree sent for Metropolis-Hastings)."""
        return len(self.wait_for(self.iteration))

    def model_array(self) -> np.ndarray:
        """A float32 numpy copy of the node's current model."""
        return self.ctx.model.detach().cpu().numpy().astype(np.float32, copy=True)

    def set_model(self, x: np.ndarray) -> None:
        import torch  # here, not at the top: see protocols/base.py

        self.ctx.model.copy_(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))

    def on_start(self) -> list[Action]:
        return [*self.start_records(), Train(self.local_steps)]

    def on_training_done(self, steps: int) -> list[Action]:
        self.trained = True
        payload, records = self.make_payload()
        sends: list[Action] = [
            Send(j, "model", self.iteration, payload) for j in self.send_to(self.iteration)
        ]
        timer: list[Action] = []
        if self.round_timeout_s is not None:
            timer = [SetTimer(self.round_timeout_s, f"round {self.iteration}")]
        return records + sends + timer + self._try_merge()

    def on_message(self, message: Message) -> list[Action]:
        # a genuine payload is at most max_ahead() rounds ahead, so a later round is forged;
        # buffering it would let a peer grow our memory at will
        ahead = message.iteration - self.iteration
        bound = self.max_ahead()
        expected = message.src in self.wait_for(message.iteration)
        if ahead < 0 or (bound is not None and ahead > bound) or not expected:
            if self.round_timeout_s is not None and expected and ahead > 0:
                return self._ahead(message)  # with churn, a peer may be far ahead
            return [Record("ignored_messages", 1.0)]
        self.inbox[message.iteration][message.src] = message.payload
        return self._try_merge()

    def on_timer(self, tag: str) -> list[Action]:
        """The round's timeout: merge with the payloads that came (weights of the missing
        neighbours stay with the node itself)."""
        if tag != f"round {self.iteration}" or not self.trained:
            return []  # that round is over
        return [Record("round_timeouts", 1.0), *self._try_merge(force=True)]

    def _ahead(self, message: Message) -> list[Action]:
        """With timeouts, neighbours can get many rounds ahead (a node back from churn): keep
        each one's newest payload (one per neighbour, so memory stays bounded) and skip to
        that round at the end of this one."""
        for rnd in [r for r in self.inbox if r > self.iteration + 1]:
            self.inbox[rnd].pop(message.src, None)
            if not self.inbox[rnd]:
                del self.inbox[rnd]
        self.inbox[message.iteration][message.src] = message.payload
        self.catch_up = max(self.catch_up, message.iteration)
        return []

    def _try_merge(self, force: bool = False) -> list[Action]:
        got = self.inbox.get(self.iteration, {})
        if not self.trained or (len(got) < len(self.wait_for(self.iteration)) and not force):
            return []
        self.inbox.pop(self.iteration, None)
        self.merge(got, self.mixing_weights(got))
        self.iteration += 1
        self.trained = False
        skip: list[Action] = []
        if self.catch_up > self.iteration:  # behind its neighbours: join their round
            skip = [Record("rounds_skipped", float(self.catch_up - self.iteration))]
            for rnd in [r for r in self.inbox if r < self.catch_up]:
                del self.inbox[rnd]
            self.iteration = self.catch_up
            if self.max_iterations is not None:
                self.iteration = min(self.iteration, self.max_iterations)
        if skip:
            return [*skip, Finish()] if self.done_iterating() else [*skip, Train(self.local_steps)]
        if self.done_iterating():
            return [Finish()]
        return [Train(self.local_steps)]
