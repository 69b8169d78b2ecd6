"""The public API for writing components: everything a plugin needs, from one module.

An algorithm is a config class, a protocol class and one registration::

    from typing import Literal
    from peerlearn.api import Protocol, Section, register_algorithm

    class MyConfig(Section):
        name: Literal["mine"] = "mine"
        fanout: int = 2

    @register_algorithm("mine", config=MyConfig, payloads=["dense"], kinds=["model"])
    class Mine(Protocol):
        ...

``register_algorithm`` and ``register_model`` also work as plain calls (``protocol=`` or the
builder given). A module that registers components becomes a plugin when an installed package
names it in the ``peerlearn.plugins`` entry point group, or a config lists it in
``plugins = [...]``. See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from peerlearn import components
from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.fragment import FragmentPayload
from peerlearn.codecs.message import Message, Payload, PayloadError
from peerlearn.codecs.partial import PartialPayload
from peerlearn.codecs.seedmask import SeedMaskVector
from peerlearn.codecs.sparse import SparseVector
from peerlearn.components import (
    register_dataset,
    register_message_kind,
    register_partitioner,
    register_payload,
    register_preset,
    register_topology,
)
from peerlearn.config.schema import ModelConfig, NetworkConfig, TopologyConfig
from peerlearn.config.sections import Section
from peerlearn.data.base import Dataset
from peerlearn.data.partition import Partition
from peerlearn.network.spec import NetworkSpec, mbps_to_Bps
from peerlearn.protocols.base import (
    Action,
    DropPending,
    Event,
    Finish,
    MessageArrived,
    NodeContext,
    Protocol,
    Record,
    Send,
    SetTimer,
    Started,
    TimerFired,
    Train,
    TrainingDone,
)
from peerlearn.protocols.rounds import SyncRounds, metropolis_hastings
from peerlearn.registry import BUILTIN, RegistryError

__all__ = [
    "BUILTIN",
    "Action",
    "Dataset",
    "DenseVector",
    "DropPending",
    "Event",
    "Finish",
    "FragmentPayload",
    "Message",
    "MessageArrived",
    "ModelConfig",
    "NetworkConfig",
    "NetworkSpec",
    "NodeContext",
    "PartialPayload",
    "Partition",
    "Payload",
    "PayloadError",
    "Protocol",
    "Record",
    "RegistryError",
    "Section",
    "SeedMaskVector",
    "Send",
    "SetTimer",
    "SparseVector",
    "Started",
    "SyncRounds",
    "TimerFired",
    "TopologyConfig",
    "Train",
    "TrainingDone",
    "mbps_to_Bps",
    "metropolis_hastings",
    "register_algorithm",
    "register_dataset",
    "register_message_kind",
    "register_model",
    "register_partitioner",
    "register_payload",
    "register_preset",
    "register_topology",
]

T = TypeVar("T")


def register_algorithm(
    name: str,
    *,
    config: type,
    protocol: Any = None,
    payloads: tuple[Any, ...] | list[Any] = ("dense",),
    kinds: tuple[str, ...] | list[str] = ("model",),
    synchronous: bool = False,
    dynamic_topology: bool = False,
    description: str = "",
) -> Any:
    """Register algorithm ``name``; without ``protocol``, a class decorator that registers the
    class it decorates (and returns it unchanged).

    ``config``: its ``[algorithm]`` section (a ``Section`` with ``name: Literal[name] = name``).
    ``payloads``: the payload types its messages carry (registered names such as "dense",
    "fragment", "partial", "sparse", "seedmask", or classes registered with
    ``register_payload``). ``kinds``: the message kinds it sends ("model", "fragment", ...).
    ``synchronous``: it advances in rounds (``eval.every_iterations`` applies).
    ``dynamic_topology``: it follows ``ctx.neighbors_at(round)``, so ``[topology] dynamic = true``
    may give it a new graph every round.
    """

    return _now_or_as_decorator(
        protocol,
        lambda cls: components.register_algorithm(
            name,
            config=config,
            protocol=cls,
            payloads=payloads,
            kinds=kinds,
            synchronous=synchronous,
            dynamic_topology=dynamic_topology,
            description=description or _first_line(cls),
        ),
    )


def register_model(
    name: str,
    builder: Callable[..., Any] | None = None,
    *,
    task: str = "classification",
    inputs: tuple[str, ...] | list[str] = ("vector", "image"),
    config: type | None = None,
    size_keys: tuple[str, ...] | list[str] = (),
    description: str = "",
) -> Any:
    """Register model ``name``; without ``builder``, a function decorator.

    ``builder(input_shape=, num_classes=, info=, **model keys) -> torch.nn.Module`` (take
    ``**_`` for keys it does not use). ``config``: a ``ModelConfig`` subclass when the model has
    keys of its own. ``inputs``: dataset kinds it reads ("vector", "image", "ratings").
    """

    return _now_or_as_decorator(
        builder,
        lambda fn: components.register_model(
            name,
            fn,
            task=task,
            inputs=inputs,
            config=config,
            size_keys=size_keys,
            description=description or _first_line(fn),
        ),
    )


def _now_or_as_decorator(target: Any, register: Callable[[Any], Any]) -> Any:
    """Register ``target`` now, or, when it is None, return a decorator that registers what it
    decorates and returns it unchanged."""

    def add(obj: T) -> T:
        register(obj)
        return obj

    return add if target is None else add(target)


def _first_line(obj: Any) -> str:
    return ((getattr(obj, "__doc__", None) or "").strip().split("\n") or [""])[0]
