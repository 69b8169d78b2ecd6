"""Turn a validated config into the pieces of an experiment, independent of the engine.

config -> (dataset, partition, model, topology, network, compute factors). Both the simulator and
the real runtime start from a ``Setup``; anything derived from the seed is derived here, once, so
every process that builds the same config gets the same pieces.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import torch

from peerlearn.components import MODELS
from peerlearn.compute import budget
from peerlearn.compute.cost_model import compute_factors
from peerlearn.compute.fused import fused_spec
from peerlearn.compute.sampler import MinibatchStream
from peerlearn.config.load import ConfigError
from peerlearn.config.schema import ExperimentConfig, ModelConfig, NetworkConfig, TopologyConfig
from peerlearn.data.base import Dataset
from peerlearn.data.partition import Partition, make_partition
from peerlearn.data.registry import load_dataset
from peerlearn.models.zoo import ModelSpec, build_model, model_shape
from peerlearn.network.dynamic import RoundGraph
from peerlearn.network.presets import NetworkSpec, build_network
from peerlearn.network.schedule import availability_changes, capacity_changes
from peerlearn.network.topology import build_topology
from peerlearn.protocols.base import NodeContext, Protocol
from peerlearn.protocols.registry import protocol_class
from peerlearn.protocols.rounds import SyncRounds


@dataclass
class Setup:
    cfg: ExperimentConfig
    dataset: Dataset
    partition: Partition
    model: ModelSpec
    graph: nx.Graph
    network: NetworkSpec
    compute_factors: np.ndarray
    eval_nodes: np.ndarray
    eval_subset: np.ndarray | None

    def neighbors(self, node: int) -> tuple[int, ...]:
        return tuple(sorted(self.graph.neighbors(node)))

    def protocol(self, node: int, model: torch.Tensor) -> Protocol:
        """Node ``node``'s protocol object, acting on ``model`` (its flat parameters, in place).

        Every engine builds its protocols here, so a node draws the same random streams
        (peer samples, α draws, masks) whether simulated or deployed.
        """
        cfg = self.cfg
        neighbors = self.neighbors(node)
        degree = self.graph.degree
        ctx = NodeContext(
            node=node,
            n_nodes=cfg.nodes,
            neighbors=neighbors,
            model=model,
            rng=np.random.default_rng([cfg.seed, node, 0x9A7]),
            degrees={j: degree[j] for j in neighbors},
            run_seed=cfg.seed,
            layout=self.model.layout,
            neighbors_at=(
                RoundGraph(cfg.nodes, cfg.topology.degree, cfg.seed, node)
                if cfg.topology.dynamic
                else None
            ),
        )
        proto = protocol_class(cfg.algorithm.name)(
            ctx,
            cfg.algorithm,
            local_steps=cfg.train.local_steps,
            max_iterations=cfg.stop.iterations,
        )
        if cfg.churn.round_timeout_s is not None and isinstance(proto, SyncRounds):
            proto.round_timeout_s = cfg.churn.round_timeout_s  # docs/dynamics.md
        return proto

    def stream(self, node: int) -> MinibatchStream:
        """Node ``node``'s minibatches, seeded by run and node (the same in every engine)."""
        return MinibatchStream(
            self.partition.train[node], self.cfg.train.batch_size, self.cfg.seed, node
        )

    def test_sets(self, nodes: Sequence[int]) -> list[np.ndarray] | None:
        """Each node's own test indices (MovieLens by user), or None: the shared test set."""
        local = self.partition.test
        return None if local is None else [local[i] for i in nodes]


@contextmanager
def _section(name: str) -> Iterator[None]:
    """A builder's ValueError becomes a one-line ConfigError naming the config section."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError(f"config: [{name}] {exc}") from None


def load_data(cfg: ExperimentConfig) -> tuple[Dataset, Partition]:
    """The dataset and who holds which samples (ConfigError on bad settings)."""
    d = cfg.data
    with _section("data"):
        dataset = load_dataset(
            d.dataset,
            d.root,
            variant=d.variant,
            seed=cfg.seed,
            download=d.download,
            synthetic=d.synthetic or None,
        )
        partition = make_partition(
            dataset,
            d.partition,
            cfg.nodes,
            cfg.seed,
            shards=d.shards,
            alpha=d.alpha,
            min_samples=d.min_samples,
        )
    return dataset, partition


def own_keys(section: Any, base: type) -> dict[str, Any]:
    """The keys a plugin's config class adds to a section (none for the built-ins)."""
    fields = type(section).model_fields
    return {k: getattr(section, k) for k in fields if k not in base.model_fields}


def network_spec(cfg: ExperimentConfig) -> NetworkSpec:
    """The network preset of ``cfg`` (ValueError on bad parameters), for every engine."""
    net = cfg.network
    return build_network(
        net.preset,
        cfg.nodes,
        mbps=net.mbps,
        fast_mbps=net.fast_mbps,
        slowdown=net.slowdown,
        stragglers=net.stragglers,
        straggler_ids=net.straggler_ids,
        latency_ms=net.latency_ms,
        kollaps_xml=net.kollaps_xml,
        intra_region_mbps=net.intra_region_mbps,
        seed=cfg.seed,
        **own_keys(net, NetworkConfig),
    )


def check_model_budget(cfg: ExperimentConfig, dataset: Dataset) -> None:
    """Refuse a run whose model, batches or index buffers cannot fit in this machine's memory
    (estimated on the meta device, before any of it is allocated)."""
    m = cfg.model
    with _section("model"):
        module = model_shape(
            m.name,
            input_shape=dataset.input_shape,
            num_classes=dataset.num_classes,
            info=dataset.info,
            hidden=tuple(m.hidden),
            factors=m.factors,
            **own_keys(m, ModelConfig),
        )
    params = sum(p.numel() for p in module.parameters())
    integer = not dataset.train_x.is_floating_point()
    terms = budget.estimate(
        nodes=cfg.nodes if cfg.engine == "sim" else cfg.deploy.nodes_per_process,
        params=params,
        act_per_sample=budget.activations_per_sample(module, dataset.input_shape, integer),
        batch_size=cfg.train.batch_size,
        local_steps=cfg.train.local_steps,
        device=cfg.compute.device,
        model_keys=", ".join(f"model.{k} = {getattr(m, k)!r}" for k in MODELS.get(m.name).size_keys)
        or f"nodes = {cfg.nodes}",
    )
    try:
        budget.check(terms)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None


def build_setup(cfg: ExperimentConfig) -> Setup:
    """Build every piece; a builder ValueError becomes a ConfigError naming its section."""
    n, seed = cfg.nodes, cfg.seed
    dataset, partition = load_data(cfg)
    check_model_budget(cfg, dataset)
    with _section("model"):
        model = build_model(
            cfg.model.name,
            input_shape=dataset.input_shape,
            num_classes=dataset.num_classes,
            info=dataset.info,
            seed=seed,
            hidden=tuple(cfg.model.hidden),
            factors=cfg.model.factors,
            **own_keys(cfg.model, ModelConfig),
        )
    if cfg.compute.fused:  # an opt-in kernel that changes float rounding (compute/fused.py)
        model = fused_spec(model)
    fragments = getattr(cfg.algorithm, "fragments", None)
    if fragments is not None and fragments > model.layout.numel:
        raise ConfigError(
            f"config: algorithm.fragments = {fragments}: more fragments than the model has "
            f"parameters; at most {model.layout.numel:,}"
        )
    t = cfg.topology
    with _section("topology"):
        graph = build_topology(
            t.kind,
            n,
            degree=t.degree,
            rewire_p=t.rewire_p,
            path=t.path,
            seed=seed,
            **own_keys(t, TopologyConfig),
        )
    with _section("network"):
        network = network_spec(cfg)
    # which nodes and which test samples are evaluated: fixed for the run, drawn from the seed
    rng = np.random.default_rng([seed, 0xE7A1])
    eval_nodes = (
        np.sort(rng.choice(n, size=cfg.eval.nodes, replace=False))
        if cfg.eval.nodes is not None
        else np.arange(n)
    )
    n_test = len(dataset.test_y)
    eval_subset = None
    if cfg.eval.test_samples is not None and cfg.eval.test_samples < n_test:
        eval_subset = np.sort(rng.choice(n_test, size=cfg.eval.test_samples, replace=False))
    setup = Setup(
        cfg=cfg,
        dataset=dataset,
        partition=partition,
        model=model,
        graph=graph,
        network=network,
        compute_factors=compute_factors(cfg.compute, n),
        eval_nodes=eval_nodes,
        eval_subset=eval_subset,
    )
    if cfg.dynamics.enabled or cfg.churn.enabled:  # read the trace files now: errors up front
        with _section("dynamics"):
            capacity_changes(setup)
        with _section("churn"):
            availability_changes(setup)
    return setup
