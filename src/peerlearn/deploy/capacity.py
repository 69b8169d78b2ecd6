"""Will a deployment fit this machine? How many nodes per process?

Every node process imports torch and builds the whole setup (the dataset is held once per
process, not per node), so a run of N nodes in P processes needs about

    P x (process base + dataset) + N x (per-node state)

of memory. ``plan_processes`` checks that against the memory available before anything is
started, and when ``deploy.nodes_per_process`` is unset chooses it: the fewest nodes per process
(the most parallelism) that fit in memory and leave no more than ``PROCESSES_PER_CORE`` processes
per core (every process costs a torch import and a set-up at start: seconds of CPU each), and,
where that is possible, that stay under the file-descriptor limit an all-to-all algorithm needs.
A run that cannot fit is refused with one line saying what it needs.

The constants were measured on the development machine (Python 3.11, torch 2.13, digits and an
MLP [32], DivShare; proportional set size, so that the shared torch libraries count once): one
node process 328-336 MB, 8 nodes in one process 391 MB, 16 nodes of a 32-node run 389-421 MB.
They round up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from peerlearn.components import DATASETS
from peerlearn.config.schema import ExperimentConfig
from peerlearn.deploy.errors import DeployError

MB = 1_000_000
#: resident memory of one node process before its dataset and nodes: Python, torch, numpy,
#: pyzmq, the vmapped training and evaluation functions after warm-up
PROCESS_BASE_BYTES = 350 * MB
#: the dataset is held once per process; loading and normalising it briefly needs a copy more
DATA_FACTOR = 2.0
#: per node: the model vector and its copies (training job, snapshots, received models and
#: fragments, encoded frames waiting in queues) in float32
MODEL_COPIES = 12
#: per node: its protocol, stream, queues, ROUTER and DEALERs (beyond the model copies)
NODE_BASE_BYTES = 8 * MB
#: at most this many node processes per core when the launcher chooses
PROCESSES_PER_CORE = 4
#: plan to use at most this fraction of the memory available now
MEMORY_FRACTION = 0.8

_MOVIELENS_SIZES = {"ml-100k": (943, 1682), "ml-latest-small": (610, 9724)}


@dataclass(frozen=True)
class Footprint:
    """Estimated resident bytes: each process, plus each node."""

    process_bytes: int
    node_bytes: int
    model_params: int
    data_bytes: int

    def total(self, nodes: int, per_process: int) -> int:
        return math.ceil(nodes / per_process) * self.process_bytes + nodes * self.node_bytes


@dataclass(frozen=True)
class Machine:
    """What the planner may use: memory available now, cores, descriptor hard limit."""

    available_bytes: int
    cores: int
    fd_limit: int | None  # None: unlimited

    @classmethod
    def here(cls) -> Machine:
        return cls(_available_memory(), _cores(), _fd_limit())


@dataclass(frozen=True)
class ProcessPlan:
    nodes_per_process: int
    processes: int
    memory_bytes: int  # estimated need of all node processes
    budget_bytes: int  # MEMORY_FRACTION of the memory available
    chosen: bool  # True: chosen by the planner (the config left it unset)
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        how = "chosen" if self.chosen else "configured"
        return (
            f"{self.processes} node processes of up to {self.nodes_per_process} nodes ({how}); "
            f"about {self.memory_bytes / 1e9:.1f} GB of {self.budget_bytes / 1e9:.1f} GB usable"
        )


class CapacityError(DeployError):
    """The run does not fit this machine (one line: what it needs)."""


def estimate(cfg: ExperimentConfig) -> Footprint:
    """Memory of one process and of one node for ``cfg``, from the dataset and model sizes
    (nothing is loaded; the model is built from the known input shape, which is cheap)."""
    samples, shape, classes = _dataset_shape(cfg)
    if cfg.data.dataset == "movielens":
        data = samples * (2 * 8 + 4)  # int64 (user, item), float32 rating
    else:
        data = samples * (4 * math.prod(shape) + 8)  # float32 inputs, int64 labels
    params = _model_params(cfg, shape, classes)
    process = PROCESS_BASE_BYTES + int(DATA_FACTOR * data)
    node = NODE_BASE_BYTES + MODEL_COPIES * 4 * params
    return Footprint(process, node, params, data)


def plan_processes(
    cfg: ExperimentConfig, machine: Machine | None = None, footprint: Footprint | None = None
) -> ProcessPlan:
    """Nodes per process for ``cfg`` on ``machine`` (this one by default), or CapacityError."""
    m = machine or Machine.here()
    fp = footprint or estimate(cfg)
    n = cfg.nodes
    budget = int(MEMORY_FRACTION * m.available_bytes)
    given = cfg.deploy.nodes_per_process
    if cfg.deploy.emulate:
        given = 1  # a namespace per node
    # fewest nodes per process whose estimate fits (more per process: fewer processes)
    k_mem = next((k for k in _candidates(n) if fp.total(n, k) <= budget), None)
    if k_mem is None:
        raise CapacityError(
            f"deploy: {n} nodes need about {fp.total(n, n) / 1e9:.1f} GB even in one process "
            f"({fp.node_bytes / 1e6:.1f} MB per node, model of {fp.model_params:,} parameters), "
            f"but {budget / 1e9:.1f} GB is usable here ({MEMORY_FRACTION:.0%} of "
            f"{m.available_bytes / 1e9:.1f} GB available); use fewer nodes or several machines"
        )
    if given is not None:
        if fp.total(n, given) > budget:
            raise CapacityError(
                f"deploy: {n} nodes in {math.ceil(n / given)} processes of {given} need about "
                f"{fp.total(n, given) / 1e9:.1f} GB ({fp.process_bytes / 1e6:.0f} MB per "
                f"process + {fp.node_bytes / 1e6:.1f} MB per node), but {budget / 1e9:.1f} GB "
                f"is usable here; set deploy.nodes_per_process >= {k_mem} (or leave it unset)"
                + (" (--emulate needs 1: use fewer nodes)" if cfg.deploy.emulate else "")
            )
        return ProcessPlan(given, math.ceil(n / given), fp.total(n, given), budget, False)
    notes = []
    k_cpu = math.ceil(n / (PROCESSES_PER_CORE * max(m.cores, 1)))
    k = max(k_mem, k_cpu)
    k_fd = _max_per_process_for_fds(n, m.fd_limit)
    if k > k_fd:
        if k_mem <= k_fd:
            k = k_fd  # more processes than the cores would like, but every socket fits
        else:
            k = k_mem  # the fewest sockets per process that memory allows
            notes.append(
                f"{k} nodes per process may need more sockets than the descriptor limit "
                f"({m.fd_limit}) allows if every node talks to every other"
            )
    per = math.ceil(n / math.ceil(n / k))  # the same number of processes, balanced
    return ProcessPlan(per, math.ceil(n / per), fp.total(n, per), budget, True, tuple(notes))


def _candidates(n: int) -> list[int]:
    """Nodes per process giving distinct process counts, fewest per process first."""
    out: list[int] = []
    for p in range(n, 0, -1):
        k = math.ceil(n / p)
        if not out or k != out[-1]:
            out.append(k)
    return out


def _max_per_process_for_fds(n: int, fd_limit: int | None) -> int:
    """As ``process._size_for_sockets`` counts: 3 descriptors per socket, a socket per peer."""
    if fd_limit is None:
        return n
    return max(1, (fd_limit - 256) // (3 * (n + 1)))


def _dataset_shape(cfg: ExperimentConfig) -> tuple[int, tuple[int, ...], int | None]:
    if cfg.data.dataset == "synthetic":
        from peerlearn.data.synthetic import DEFAULTS

        p = dict(DEFAULTS, **cfg.data.synthetic)
        return int(p["n_train"]) + int(p["n_test"]), (int(p["n_features"]),), int(p["n_classes"])
    footprint = DATASETS.get(cfg.data.dataset).footprint
    if footprint is not None:  # (n_samples train + test, input shape, classes), without loading
        return footprint
    from peerlearn.experiment import load_data  # a plugin's dataset that gives no footprint

    ds, _ = load_data(cfg)
    return len(ds.train_y) + len(ds.test_y), tuple(ds.input_shape), ds.num_classes


def _model_params(cfg: ExperimentConfig, shape: tuple[int, ...], classes: int | None) -> int:
    from peerlearn.config.schema import ModelConfig
    from peerlearn.experiment import own_keys
    from peerlearn.models.zoo import build_model

    info: dict = {}
    if cfg.model.name == "matrix_factorization":
        users, items = _MOVIELENS_SIZES.get(cfg.data.variant or "", (1000, 10_000))
        info = {"n_users": users, "n_items": items}
    try:
        spec = build_model(
            cfg.model.name,
            input_shape=shape,
            num_classes=classes,
            info=info,
            seed=cfg.seed,
            hidden=tuple(cfg.model.hidden),
            factors=cfg.model.factors,
            **own_keys(cfg.model, ModelConfig),
        )
    except ValueError:  # a bad combination: the nodes will say so; assume a mid-size model
        return 1_000_000
    return int(spec.layout.numel)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 10**9  # unknown: assume a small machine


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _fd_limit() -> int | None:
    try:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    except (ImportError, ValueError, OSError):
        return None
    return None if hard == resource.RLIM_INFINITY else int(hard)
