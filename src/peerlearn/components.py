"""The registries: one per kind of component, each entry everything about one item.

``peerlearn.api`` is the public way to add entries (``register_algorithm`` and friends); this
module defines what an entry holds and where the built-ins are registered. It imports nothing
heavy (no torch, no networkx): callables may be given as ``"module:attribute"`` strings and are
imported on first use (``peerlearn.registry.resolve``).

Builders and loaders are called with keyword arguments: the keys of their config section (all
of them, so take ``**_`` for those you do not use) plus what the kind adds (see each entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peerlearn.registry import Entry, Registry, RegistryError, resolve

Ref = Any  # a callable or class, or a "module:attribute" string naming one


@dataclass(frozen=True, kw_only=True)
class AlgorithmEntry(Entry):
    """A decentralized learning algorithm.

    ``config``: its ``[algorithm]`` section, a pydantic model (``peerlearn.api.Section``) with a
    ``name`` field whose default is the entry's name. ``protocol``: the ``Protocol`` subclass built
    once per node as ``protocol(ctx, params, local_steps=..., max_iterations=...)``.
    ``payloads``: the payload types (registered names or classes) it may receive; anything else
    is rejected on the wire before decoding. ``kinds``: the message kinds it sends.
    ``synchronous``: it advances in rounds (``protocols.rounds.SyncRounds``), so
    ``eval.every_iterations`` applies. ``dynamic_topology``: it follows the topology graph round
    by round (``NodeContext.neighbors_at``), so ``[topology] dynamic = true`` may change the graph
    every round; algorithms that keep per-neighbour state or draw their own peers leave it False.
    """

    config: type
    protocol: Ref
    payloads: tuple[Ref, ...]
    kinds: tuple[str, ...] = ("model",)
    synchronous: bool = False
    dynamic_topology: bool = False

    def protocol_class(self) -> type:
        return resolve(self.protocol)

    def payload_classes(self) -> frozenset[type]:
        return frozenset(payload_entry(p).payload_class() for p in self.payloads)


@dataclass(frozen=True, kw_only=True)
class ModelEntry(Entry):
    """A model: ``builder(input_shape=, num_classes=, info=, **model keys) -> nn.Module``.

    ``task``: "classification" (cross-entropy) or "regression" (mean squared error). ``inputs``:
    the dataset kinds it can read (``DatasetEntry.kind``). ``config``: a ``ModelConfig`` subclass
    when it takes keys of its own (None: name, hidden, factors). ``size_keys``: the keys that set
    its size, named when a run would not fit in memory.
    """

    builder: Ref
    task: str = "classification"
    inputs: tuple[str, ...] = ("vector", "image")
    config: type | None = None
    size_keys: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class DatasetEntry(Entry):
    """A dataset: ``loader(root=, variant=, seed=, download=, options=) -> Dataset``.

    ``kind``: "vector" (flat features), "image" ((C, H, W) tensors) or "ratings" ((user, item)
    pairs); models and partitioners say which kinds they take. ``variants``: the allowed
    ``data.variant`` values (None: it has none). ``footprint``: (train + test samples, input
    shape, classes) for the deploy launcher's memory estimate without loading it (None: loaded).
    """

    loader: Ref
    kind: str = "vector"
    variants: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()
    footprint: tuple[int, tuple[int, ...], int | None] | None = None


@dataclass(frozen=True, kw_only=True)
class PartitionerEntry(Entry):
    """Who holds which samples: ``split(dataset, n_nodes, seed, **data keys) -> Partition``.

    ``needs_kind``: the dataset kind it requires (None: any).
    """

    split: Ref
    needs_kind: str | None = None


@dataclass(frozen=True, kw_only=True)
class TopologyEntry(Entry):
    """A communication graph: ``builder(n, seed=, **topology keys) -> networkx.Graph``
    (connected, nodes 0..n-1). ``config``: a ``TopologyConfig`` subclass for keys of its own."""

    builder: Ref
    config: type | None = None


@dataclass(frozen=True, kw_only=True)
class PresetEntry(Entry):
    """A network: ``builder(n, seed=, **network keys) -> NetworkSpec`` (capacities, latencies,
    shared links). ``config``: a ``NetworkConfig`` subclass for keys of its own."""

    builder: Ref
    config: type | None = None


@dataclass(frozen=True, kw_only=True)
class PayloadEntry(Entry):
    """A wire payload type: ``cls`` (a ``codecs.message.Payload``) under the 4-bit ``wire_id``.

    ``decode(body, numel=, float_codec=) -> Payload`` (default: ``cls.decode(body)``) and
    ``check(payload, numel)``, which raises ``codecs.message.PayloadError`` for values a codec
    cannot judge alone (lengths and indices against the model size); NaN/inf are always refused.
    """

    cls: Ref
    wire_id: int
    decode: Ref | None = None
    check: Ref | None = None

    def payload_class(self) -> type:
        return resolve(self.cls)


@dataclass(frozen=True, kw_only=True)
class KindEntry(Entry):
    """A message kind ("model", "fragment", ...) under its 4-bit ``wire_id``."""

    wire_id: int


#: the header's kind byte holds two 4-bit ids (message kind, payload type); 0 is never valid
MAX_WIRE_ID = 15

ALGORITHMS: Registry[AlgorithmEntry] = Registry(
    "algorithm",
    (
        "peerlearn.config.algorithms_sync",
        "peerlearn.config.algorithms_async",
        "peerlearn.config.algorithms_sparse",
        "peerlearn.algorithms.epidemic",
        "peerlearn.algorithms.gossip",
    ),
)
MODELS: Registry[ModelEntry] = Registry("model", ("peerlearn.models.catalog",))
DATASETS: Registry[DatasetEntry] = Registry("dataset", ("peerlearn.data.registry",))
PARTITIONERS: Registry[PartitionerEntry] = Registry("partition", ("peerlearn.data.partition",))
TOPOLOGIES: Registry[TopologyEntry] = Registry("topology", ("peerlearn.network.catalog",))
PRESETS: Registry[PresetEntry] = Registry("network preset", ("peerlearn.network.catalog",))
PAYLOADS: Registry[PayloadEntry] = Registry("payload", ("peerlearn.codecs.builtin",))
KINDS: Registry[KindEntry] = Registry("message kind", ("peerlearn.codecs.builtin",))

#: title -> registry, in the order ``peerlearn list`` prints them
ALL: dict[str, Registry] = {
    "algorithms": ALGORITHMS,
    "models": MODELS,
    "datasets": DATASETS,
    "partitions": PARTITIONERS,
    "topologies": TOPOLOGIES,
    "network presets": PRESETS,
    "payloads": PAYLOADS,
    "message kinds": KINDS,
}


def payload_entry(ref: Ref) -> PayloadEntry:
    """The payload entry of a registered name or class."""
    if isinstance(ref, str):
        return PAYLOADS.get(ref)
    for entry in PAYLOADS.entries():
        if entry.payload_class() is ref:
            return entry
    raise RegistryError(
        f"payload class {getattr(ref, '__name__', ref)!r} is not registered; "
        "register it with peerlearn.api.register_payload"
    )


def _check_wire_id(registry: Registry, entry: PayloadEntry | KindEntry) -> None:
    if not isinstance(entry.wire_id, int) or not 1 <= entry.wire_id <= MAX_WIRE_ID:
        raise RegistryError(
            f"{registry.kind} {entry.name!r}: wire_id must be in 1..{MAX_WIRE_ID}, "
            f"got {entry.wire_id!r}"
        )
    for other in registry.entries():
        if other.name != entry.name and other.wire_id == entry.wire_id:
            raise RegistryError(
                f"{registry.kind} {entry.name!r}: wire_id {entry.wire_id} is taken by "
                f"{other.name!r} ({other.source}); free ids: {free_wire_ids(registry)}"
            )


def free_wire_ids(registry: Registry) -> list[int]:
    taken = {e.wire_id for e in registry.entries()}
    return [i for i in range(1, MAX_WIRE_ID + 1) if i not in taken]


# -- registration (re-exported by peerlearn.api) -------------------------------------------------


def register_algorithm(
    name: str,
    *,
    config: type,
    protocol: Ref,
    payloads: tuple[Ref, ...] | list[Ref] = ("dense",),
    kinds: tuple[str, ...] | list[str] = ("model",),
    synchronous: bool = False,
    dynamic_topology: bool = False,
    description: str = "",
) -> AlgorithmEntry:
    """Register an algorithm (see ``AlgorithmEntry``); returns its entry."""
    field = getattr(config, "model_fields", {}).get("name")
    if field is None or field.default != name:
        raise RegistryError(
            f"algorithm {name!r}: its config class {getattr(config, '__name__', config)!r} "
            f"needs a field  name: Literal[{name!r}] = {name!r}"
        )
    return ALGORITHMS.add(
        AlgorithmEntry(
            name=name,
            description=description or (config.__doc__ or "").strip().split("\n")[0],
            config=config,
            protocol=protocol,
            payloads=tuple(payloads),
            kinds=tuple(kinds),
            synchronous=synchronous,
            dynamic_topology=dynamic_topology,
        )
    )


def register_model(
    name: str,
    builder: Ref,
    *,
    task: str = "classification",
    inputs: tuple[str, ...] | list[str] = ("vector", "image"),
    config: type | None = None,
    size_keys: tuple[str, ...] | list[str] = (),
    description: str = "",
) -> ModelEntry:
    if task not in ("classification", "regression"):
        raise RegistryError(f"model {name!r}: task must be 'classification' or 'regression'")
    return MODELS.add(
        ModelEntry(
            name=name,
            description=description,
            builder=builder,
            task=task,
            inputs=tuple(inputs),
            config=config,
            size_keys=tuple(size_keys),
        )
    )


def register_dataset(
    name: str,
    loader: Ref,
    *,
    kind: str = "vector",
    variants: tuple[str, ...] | list[str] | None = None,
    aliases: tuple[str, ...] | list[str] = (),
    footprint: tuple[int, tuple[int, ...], int | None] | None = None,
    description: str = "",
) -> DatasetEntry:
    return DATASETS.add(
        DatasetEntry(
            name=name,
            description=description,
            loader=loader,
            kind=kind,
            variants=None if variants is None else tuple(variants),
            aliases=tuple(aliases),
            footprint=footprint,
        )
    )


def register_partitioner(
    name: str, split: Ref, *, needs_kind: str | None = None, description: str = ""
) -> PartitionerEntry:
    return PARTITIONERS.add(
        PartitionerEntry(name=name, description=description, split=split, needs_kind=needs_kind)
    )


def register_topology(
    name: str, builder: Ref, *, config: type | None = None, description: str = ""
) -> TopologyEntry:
    return TOPOLOGIES.add(
        TopologyEntry(name=name, description=description, builder=builder, config=config)
    )


def register_preset(
    name: str, builder: Ref, *, config: type | None = None, description: str = ""
) -> PresetEntry:
    return PRESETS.add(
        PresetEntry(name=name, description=description, builder=builder, config=config)
    )


def register_payload(
    name: str,
    cls: Ref,
    *,
    wire_id: int,
    decode: Ref | None = None,
    check: Ref | None = None,
    description: str = "",
) -> PayloadEntry:
    entry = PayloadEntry(
        name=name, description=description, cls=cls, wire_id=wire_id, decode=decode, check=check
    )
    _check_wire_id(PAYLOADS, entry)
    return PAYLOADS.add(entry)


def register_message_kind(name: str, *, wire_id: int, description: str = "") -> KindEntry:
    entry = KindEntry(name=name, description=description, wire_id=wire_id)
    _check_wire_id(KINDS, entry)
    return KINDS.add(entry)
