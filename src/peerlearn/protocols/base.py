"""The sans-I/O protocol interface.

A protocol is one plain object per node. It reacts to events (the node started, its local training
finished, a message arrived, a timer fired) and answers each with a list of actions (train k steps,
send a payload, drop undelivered sends, set a timer, record a metric, stop). It never reads a clock,
sleeps, touches a socket or starts a thread, so the simulator and the real runtime both drive the
same object, and tests drive it by hand.

The node's model is a flat float32 vector owned by the engine and lent to the protocol as
``ctx.model`` (a 1-D tensor, changed in place). Between asking for ``Train`` and receiving
``TrainingDone`` the vector belongs to the trainer: the protocol may read it (it holds the
pre-training values) but must not write it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from peerlearn.codecs.message import Message, Payload
from peerlearn.components import ALGORITHMS

if TYPE_CHECKING:  # config classes living beside a protocol stay importable without torch
    import torch

# ---------------------------------------------------------------------------------------------
# Actions: what a protocol asks its engine to do.


@dataclass(frozen=True, slots=True)
class Train:
    """Run ``steps`` local SGD steps from the current model; answered by ``TrainingDone``."""

    steps: int


@dataclass(slots=True)  # not frozen: one is made per message, and frozen ones cost 3x to make
class Send:
    """Queue ``payload`` for ``dest`` on the (self, dest) FIFO connection."""

    dest: int
    kind: str
    iteration: int
    payload: Payload


@dataclass(frozen=True, slots=True)
class DropPending:
    """Cancel this node's queued and in-flight sends (never delivered).

    With ``before_iteration`` set, only sends tagged with a smaller iteration are dropped.
    """

    before_iteration: int | None = None


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Fire ``TimerFired(tag)`` after ``delay_s`` seconds."""

    delay_s: float
    tag: str


@dataclass(frozen=True, slots=True)
class Record:
    """Record a per-node metric at the current time and iteration."""

    metric: str
    value: float


@dataclass(frozen=True, slots=True)
class Finish:
    """This node is done (iteration cap reached); it takes no further events."""


Action = Train | Send | DropPending | SetTimer | Record | Finish

# ---------------------------------------------------------------------------------------------
# Events: what happens to a protocol.


@dataclass(frozen=True, slots=True)
class Started:
    pass


@dataclass(frozen=True, slots=True)
class TrainingDone:
    steps: int


@dataclass(frozen=True, slots=True)
class MessageArrived:
    message: Message


@dataclass(frozen=True, slots=True)
class TimerFired:
    tag: str


Event = Started | TrainingDone | MessageArrived | TimerFired


@dataclass(slots=True)
class NodeContext:
    """What a protocol knows about its world, handed over at construction."""

    node: int
    n_nodes: int
    neighbors: tuple[int, ...]
    model: torch.Tensor
    rng: np.random.Generator
    degrees: dict[int, int] = field(default_factory=dict)
    #: the run seed, for randomness that must be identical on every node (e.g. fragments)
    run_seed: int = 0
    #: names/shapes/offsets of the flat vector (a ``peerlearn.models.layout.ParamLayout``)
    layout: Any = None
    #: a dynamic topology (``topology.dynamic``): round -> this node's neighbours in that round's
    #: graph, the same on every node and in every engine; None: ``neighbors`` in every round
    neighbors_at: Callable[[int], tuple[int, ...]] | None = None


def default_params(name: str, params: Any) -> Any:
    """``params``, or when None the defaults of algorithm ``name``'s registered config class
    (protocols never import the config: the registry entry joins the two)."""
    return params if params is not None else ALGORITHMS.get(name).config()


class Protocol(ABC):
    """Base class of every algorithm: route events to handlers, collect actions."""

    #: registry name, e.g. "dpsgd"
    name: str = ""

    #: one-line description, for ``peerlearn list``
    description: str = ""

    def __init__(
        self, ctx: NodeContext, params: Any, *, local_steps: int, max_iterations: int | None
    ) -> None:
        self.ctx = ctx
        self.params = params
        self.local_steps = local_steps
        self.max_iterations = max_iterations
        self.iteration = 0
        self.finished = False

    # -- checkpoints -----------------------------------------------------------------------------
    # A protocol's state is everything its future behaviour depends on besides what it was built
    # from (context, params): a tree of plain values, arrays, tensors and payloads
    # (``peerlearn.sim.state``). Subclasses extend both methods, calling ``super()``. The model
    # itself belongs to the engine and is not part of it.

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "finished": self.finished,
            "rng": self.ctx.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.finished = bool(state["finished"])
        self.ctx.rng.bit_generator.state = state["rng"]

    def done_iterating(self) -> bool:
        """True once the iteration cap (if any) is reached."""
        return self.max_iterations is not None and self.iteration >= self.max_iterations

    def handle(self, event: Event) -> list[Action]:
        """Feed one event, get the actions it causes (in order)."""
        if isinstance(event, MessageArrived):  # the most frequent event
            return self.handle_message(event.message)
        if self.finished:
            return []
        match event:
            case Started():
                actions = self.on_start()
            case TrainingDone():
                actions = self.on_training_done(event.steps)
            case TimerFired():
                actions = self.on_timer(event.tag)
            case _:
                raise TypeError(f"unknown event {event!r}")
        return self._note_finish(actions)

    def handle_message(self, message: Message) -> list[Action]:
        """``handle(MessageArrived(message))``; the simulator calls it directly, without building
        an event per delivered copy."""
        if self.finished:
            return []
        return self._note_finish(self.on_message(message))

    def _note_finish(self, actions: list[Action]) -> list[Action]:
        if actions and any(isinstance(a, Finish) for a in actions):
            self.finished = True
        return actions

    @abstractmethod
    def on_start(self) -> list[Action]: ...

    @abstractmethod
    def on_training_done(self, steps: int) -> list[Action]: ...

    @abstractmethod
    def on_message(self, message: Message) -> list[Action]: ...

    def on_timer(self, tag: str) -> list[Action]:
        return []
