"""The experiment spec: typed, validated sections that mirror the TOML file.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored setting.
Names of datasets, models, partitions, topologies, presets and algorithms are looked up in their
registries (``peerlearn.components``), so a wrong name is reported with the list of allowed ones,
plugins' included. ``[algorithm]`` is validated by the named algorithm's own config class, and
``[model]``, ``[topology]`` and ``[network]`` by their entry's class when it brings one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    SerializeAsAny,
    ValidationError,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from peerlearn.components import (
    ALGORITHMS,
    DATASETS,
    MODELS,
    PARTITIONERS,
    PRESETS,
    TOPOLOGIES,
)
from peerlearn.config.algorithms_sync import DPSGDConfig
from peerlearn.config.dynamics import ChurnConfig, DynamicsConfig, check_dynamics
from peerlearn.config.sections import Section
from peerlearn.plugins import load_entry_points, load_modules
from peerlearn.registry import Registry

__all__ = ["DPSGDConfig", "ExperimentConfig"]

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]

#: seeds go to torch and NumPy generators: at most a signed 64-bit integer
MAX_SEED = 2**63 - 1
#: a run evaluates at most this many times (stop.virtual_time_s / eval.every_s)
MAX_EVALUATIONS = 1_000_000
#: a node trains at most this many minibatch steps in one run
MAX_STEPS = 1_000_000_000
#: a run name is a directory name under runs/: no separators, control characters or dot names
MAX_NAME_LENGTH = 200


def check_run_name(name: str) -> str:
    """``name`` if it is one safe path component, else ValueError saying what is allowed."""
    allowed = "a single directory name: not empty, no '/', '\\' or control characters"
    if not name or name.strip() != name:
        raise ValueError(f"must be {allowed}, without leading or trailing spaces")
    if name.startswith("."):
        raise ValueError(f"must not start with '.' ({allowed})")
    if any(ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError(f"must be {allowed}")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
    return name


def _unknown_name(registry: Registry, name: Any) -> PydanticCustomError:
    return PydanticCustomError(
        "unknown_name",
        "unknown {kind}; allowed: {allowed}",
        {"kind": registry.kind, "allowed": registry.allowed()},
    )


def _registered(registry: Registry) -> AfterValidator:
    """A name field that must be in ``registry``."""

    def check(name: str) -> str:
        if name not in registry:
            raise _unknown_name(registry, name)
        return name

    return AfterValidator(check)


def _by_name(registry: Registry, key: str, base: type[Section]) -> WrapValidator:
    """A section validated by the class its name's entry brings (``entry.config``), else by
    ``base``; an unknown name is reported at ``<section>.<key>`` with the allowed names."""

    def pick(value: Any, handler: Callable[[Any], Any]) -> Any:
        if isinstance(value, base) or not isinstance(value, dict):
            return handler(value)
        name = value.get(key, base.model_fields[key].default)
        if not isinstance(name, str) or name not in registry:
            raise ValidationError.from_exception_data(
                base.__name__,
                [InitErrorDetails(type=_unknown_name(registry, name), loc=(key,), input=name)],
            )
        cls = getattr(registry.get(name), "config", None) or base
        return cls.model_validate(value)

    return WrapValidator(pick)


class DataConfig(Section):
    dataset: Annotated[str, _registered(DATASETS)] = "digits"
    root: str | None = None
    variant: str | None = None
    partition: Annotated[str, _registered(PARTITIONERS)] = "iid"
    shards: PosInt = 2
    alpha: PosFloat = 1.0
    min_samples: PosInt = 2
    download: bool = True
    synthetic: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        dataset = DATASETS.get(self.dataset)
        needs = PARTITIONERS.get(self.partition).needs_kind
        if needs is not None and dataset.kind != needs:
            fits = [d.name for d in DATASETS.entries() if d.kind == needs]
            raise ValueError(
                f"partition {self.partition!r} needs a {needs} dataset ({', '.join(fits)}), "
                f"not {self.dataset!r}"
            )
        if dataset.variants is not None and self.variant not in (None, *dataset.variants):
            allowed = ", ".join(repr(v) for v in dataset.variants)
            raise ValueError(
                f"variant {self.variant!r} is not a {self.dataset} variant; allowed: {allowed}"
            )
        return self


class ModelConfig(Section):
    """``[model]``; a plugin model with keys of its own subclasses it (``ModelEntry.config``)."""

    name: Annotated[str, _registered(MODELS)] = "mlp"
    hidden: list[PosInt] = Field(default_factory=lambda: [64])
    factors: PosInt = 20


class TrainConfig(Section):
    batch_size: PosInt = 8
    lr: PosFloat = 0.05
    local_steps: PosInt = 10


class ComputeConfig(Section):
    step_time_s: PosFloat = 0.01
    # compute stragglers: either explicit per-node factors or `stragglers` nodes slowed `slowdown`x
    factors: list[PosFloat] | None = None
    stragglers: Annotated[int, Field(ge=0)] = 0
    slowdown: Annotated[float, Field(ge=1)] = 1.0
    straggler_ids: list[Annotated[int, Field(ge=0)]] | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    # false: every job is trained alone with a plain nn.Module + SGD (reference path, slow)
    batched: bool = True
    # cuda only: let convolutions and matrix products round through TF32 (faster, ~1e-3 relative
    # precision); false keeps strict float32, which matches a CPU run up to float rounding
    tf32: bool = False
    # intra-op threads: "auto" (1 for small models, else the cores this process may use; never
    # above torch's thread count as the caller left it), or a number (docs/performance.md)
    threads: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    # CPU: GN-LeNet's first convolution, and its GroupNorm, max pooling and ReLU, as compiled
    # kernels (compute/fused.py; needs a C++ compiler, else a warning and the torch ops).
    # Faster; equal to the default up to float rounding only, so off by default
    fused: bool = False
    # simulator memory: once the messages waiting in the network exceed this many MB (as sent),
    # the payloads of further sends wait in a temporary file under TMPDIR and are read back at
    # delivery (sim/spill.py); results are the same bits whatever the value
    spill_after_mb: Annotated[float, Field(ge=0)] = 4096.0


class NetworkConfig(Section):
    """``[network]``; a plugin preset with keys of its own subclasses it."""

    preset: Annotated[str, _registered(PRESETS)] = "uniform"
    mbps: PosFloat = 100.0
    fast_mbps: PosFloat = 60.0
    slowdown: Annotated[float, Field(ge=1)] = 5.0
    stragglers: Annotated[int, Field(ge=0)] = 0
    straggler_ids: list[Annotated[int, Field(ge=0)]] | None = None
    latency_ms: NonNegFloat = 1.0
    # preset "kollaps": a Kollaps 2.0 topology XML file
    kollaps_xml: str | None = None
    # 0: exact max-min rates, recomputed at every change; > 0: recomputed at most this often
    # (Kollaps updates every 0.05 s); in between, new connections take the capacity left over
    rate_update_s: NonNegFloat = 0.0
    # DropPending also cancels a message already in transmission (as the DivShare artifact's
    # socket reset intends); false: a started message finishes, as a frame already in a real
    # TCP connection does (docs/fidelity.md)
    recall_in_flight: bool = True
    # the sender's buffers below the process that DropPending cannot reach (sim/send_buffer.py):
    # 0 = none; bytes of kernel send buffer per connection; "autotune": Linux's autotuned
    # buffer, growing with each connection's congestion window; or "deploy": as `peerlearn
    # deploy` sets its sockets (2 x deploy.sndbuf_bytes, "autotune" when it is 0). Any buffer
    # also keeps the message in transmission, as recall_in_flight = false does
    send_buffer: Literal["deploy", "autotune"] | Annotated[int, Field(ge=0)] = 0
    # whole messages held above the kernel buffer (ZeroMQ's pipe); unset: the DEALER's
    # high-water mark (1) with send_buffer = "deploy" or "autotune", else 0
    send_buffer_frames: Annotated[int, Field(ge=0)] | None = None
    # the deployment hosts' net.ipv4.tcp_congestion_control, which sets how an autotuned
    # buffer grows (send_buffer = "autotune" or "deploy" only); unset: deploy.tcp_congestion's
    # algorithm when that is set, else "cubic", Linux's default
    tcp_congestion: Literal["cubic", "bbr"] | None = None
    # Diablo: what two nodes of the same region get (the artifact's file defines no such link)
    intra_region_mbps: PosFloat | None = None

    @model_validator(mode="after")
    def _check(self) -> NetworkConfig:
        if self.preset == "kollaps" and not self.kollaps_xml:
            raise ValueError("preset 'kollaps' needs network.kollaps_xml (a Kollaps XML file)")
        if self.tcp_congestion is not None and self.send_buffer not in ("autotune", "deploy"):
            raise ValueError(
                "network.tcp_congestion only applies to network.send_buffer = 'autotune' or "
                f"'deploy', not {self.send_buffer!r}"
            )
        return self


class TopologyConfig(Section):
    """``[topology]``; a plugin topology with keys of its own subclasses it."""

    kind: Annotated[str, _registered(TOPOLOGIES)] = "regular"
    degree: PosInt = 4
    rewire_p: Annotated[float, Field(ge=0, le=1)] = 0.1
    path: str | None = None
    # a fresh random connected `degree`-regular graph every round, from (seed, round)
    dynamic: bool = False

    @model_validator(mode="after")
    def _check(self) -> TopologyConfig:
        if self.kind == "file" and not self.path:
            raise ValueError("topology kind 'file' needs topology.path (an edge-list file)")
        if self.dynamic and self.kind != "regular":
            raise ValueError(
                f"topology.dynamic = true needs kind 'regular' (a new random degree-regular "
                f"graph every round), got kind {self.kind!r}"
            )
        return self


#: ``[algorithm]``: validated by the named algorithm's config class (its registry entry)
AlgorithmConfig = Annotated[SerializeAsAny[Section], _by_name(ALGORITHMS, "name", DPSGDConfig)]


class StopConfig(Section):
    virtual_time_s: PosFloat | None = 60.0
    iterations: PosInt | None = None

    @model_validator(mode="after")
    def _check(self) -> StopConfig:
        if self.virtual_time_s is None and self.iterations is None:
            raise ValueError("set stop.virtual_time_s or stop.iterations (or both)")
        return self


def synchronous_algorithms() -> list[str]:
    """Algorithms that advance in synchronous rounds (``protocols.rounds.SyncRounds``; a test
    checks the built-ins)."""
    return [e.name for e in ALGORITHMS.entries() if e.synchronous]


def dynamic_topology_algorithms() -> list[str]:
    """Algorithms that follow the topology graph round by round (``[topology] dynamic``)."""
    return [e.name for e in ALGORITHMS.entries() if e.dynamic_topology]


class EvalConfig(Section):
    every_s: PosFloat = 5.0
    # synchronous algorithms, simulator: evaluate whenever every node has finished another
    # every_iterations rounds (instead of every every_s virtual seconds); plus at 0 and the end
    every_iterations: PosInt | None = None
    test_samples: PosInt | None = None
    nodes: PosInt | None = None
    batch_size: PosInt = 500
    targets: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.5, 0.8, 0.9]
    )
    # write messages.csv: send and delivery time of every delivered message (both engines)
    log_messages: bool = False


class DeployConfig(Section):
    """The real runtime (``engine = "deploy"``): sockets, limits, timeouts; the simulator
    ignores it."""

    # where the nodes listen when no hosts file is given; node i uses port base_port + i
    host: str = "127.0.0.1"
    base_port: Annotated[int, Field(ge=1024, le=65000)] = 29500
    # `peerlearn deploy`: nodes per OS process (1: one process per node, as in the artifact;
    # more: fewer torch imports and setups on a small machine, one torch thread per process;
    # unset: chosen by the launcher from this machine's memory and cores, see docs/deploy.md)
    nodes_per_process: PosInt | None = None
    # interface to bind (None: the node's own address; "*" for every interface)
    bind: str | None = None
    # frames above this are dropped unread (None: room for 12 bytes per model coordinate)
    max_message_bytes: PosInt | None = None
    # per-peer outgoing messages waiting in the process; beyond it the oldest is dropped
    max_queue: PosInt = 10_000
    # kernel send buffer of each DEALER (0: the OS default); small values keep the backlog in
    # the process, where DropPending can still remove it
    sndbuf_bytes: Annotated[int, Field(ge=0)] = 0
    # ZeroMQ receive high-water mark (messages buffered by the library before TCP pushes back)
    rcvhwm: PosInt = 1000
    # a node that makes no training progress this long (waiting for dead peers) stops
    stall_timeout_s: PosFloat = 60.0
    # after Finish, how long a node keeps sending what is still queued
    linger_s: NonNegFloat = 2.0
    # hard cap on the run when stop.virtual_time_s is not set
    timeout_s: PosFloat = 3600.0
    # how long the launcher waits for every node to be set up and listening
    ready_timeout_s: PosFloat = 300.0
    # true: pad each local training to compute.step_time_s x factor x steps of wall time
    emulate_compute: bool = False
    # ZeroMQ CURVE: a directory made by `peerlearn keys` (node-<i>.key, node-<i>.key_secret)
    keys_dir: str | None = None
    # `peerlearn deploy --emulate`: one network namespace per node on this machine (root, Linux),
    # links shaped with tc from the network preset; addresses from this private subnet
    emulate: bool = False
    emulate_subnet: str = "10.213.0.0/16"
    # latency: netem in the kernel; transport: each frame held latency[i, j] in the sender before
    # ZeroMQ (for kernels without sch_netem; ACKs are not delayed); auto: netem if present
    emulate_latency: Literal["auto", "netem", "transport", "off"] = "auto"
    # `--emulate`: net.ipv4.tcp_congestion_control in every node's namespace; "system": what the
    # host uses (new namespaces inherit it). The simulator's autotuned send buffer follows it
    # while network.tcp_congestion is unset. Without --emulate only "system" is accepted
    tcp_congestion: Literal["system", "cubic", "bbr", "reno"] = "system"
    # `--emulate`: "off" turns GSO/TSO/GRO off on every veth (ethtool), so the shapers' queues,
    # which count packets, hold single segments rather than super-packets of up to 64 KB;
    # "system": the kernel's default (on). Without --emulate only "system" is accepted
    segmentation_offload: Literal["system", "off"] = "system"


class ExperimentConfig(Section):
    # modules imported before the rest is validated: they register plugins' components
    plugins: list[str] | None = None
    name: Annotated[str, AfterValidator(check_run_name)] = "run"
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 1
    nodes: Annotated[int, Field(ge=2, le=100_000)] = 16
    engine: Literal["sim", "deploy"] = "sim"
    data: DataConfig = Field(default_factory=DataConfig)
    model: Annotated[SerializeAsAny[ModelConfig], _by_name(MODELS, "name", ModelConfig)] = Field(
        default_factory=ModelConfig
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    network: Annotated[
        SerializeAsAny[NetworkConfig], _by_name(PRESETS, "preset", NetworkConfig)
    ] = Field(default_factory=NetworkConfig)
    topology: Annotated[
        SerializeAsAny[TopologyConfig], _by_name(TOPOLOGIES, "kind", TopologyConfig)
    ] = Field(default_factory=TopologyConfig)
    algorithm: AlgorithmConfig = Field(default_factory=DPSGDConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    # a network that changes over time (docs/dynamics.md); both off by default
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    churn: ChurnConfig = Field(default_factory=ChurnConfig)

    @model_validator(mode="before")
    @classmethod
    def _load_plugins(cls, data: Any) -> Any:
        """Installed plugins (entry points) and the config's ``plugins`` modules register their
        components before any name in the config is looked up."""
        load_entry_points()
        names = data.get("plugins") if isinstance(data, dict) else None
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            load_modules(names)  # anything else: the field's own type error
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        n = self.nodes
        for section, ids in (
            ("compute", self.compute.straggler_ids),
            ("network", self.network.straggler_ids),
        ):
            if ids is not None and any(i >= n for i in ids):
                raise ValueError(f"{section}.straggler_ids {ids} has ids >= nodes ({n})")
        if self.compute.factors is not None and len(self.compute.factors) != n:
            raise ValueError(
                f"compute.factors has {len(self.compute.factors)} entries; need one per node ({n})"
            )
        if self.compute.stragglers > n or self.network.stragglers > n:
            raise ValueError(f"more stragglers than nodes ({n})")
        if self.eval.nodes is not None and self.eval.nodes > n:
            raise ValueError(f"eval.nodes = {self.eval.nodes} is more than nodes ({n})")
        if self.eval.every_iterations is not None and (
            not ALGORITHMS.get(self.algorithm.name).synchronous or self.engine != "sim"
        ):
            raise ValueError(
                f"eval.every_iterations needs a synchronous algorithm {synchronous_algorithms()} "
                f"and engine 'sim' (got {self.algorithm.name!r}, {self.engine!r}); "
                "use eval.every_s"
            )
        if self.topology.dynamic and not ALGORITHMS.get(self.algorithm.name).dynamic_topology:
            raise ValueError(
                f"topology.dynamic = true works with {dynamic_topology_algorithms()}, not with "
                f"algorithm {self.algorithm.name!r}: it keeps per-neighbour state (CHOCO-SGD's "
                "sum of public copies) or does not follow the topology graph"
            )
        check = getattr(self.algorithm, "check_experiment", None)
        if check is not None:  # an algorithm's own checks against the rest of the config
            check(self)
        self._check_model_fits_data()
        self._check_budget()
        check_dynamics(self, tuple(synchronous_algorithms()))
        return self

    def _check_model_fits_data(self) -> None:
        """The model reads the dataset's kind of input (``ModelEntry.inputs``)."""
        model, data = self.model.name, self.data.dataset
        entry, kind = MODELS.get(model), DATASETS.get(data).kind
        if kind in entry.inputs:
            return
        takes = [d.name for d in DATASETS.entries() if d.kind in entry.inputs]
        fits = [m.name for m in MODELS.entries() if kind in m.inputs]
        raise ValueError(
            f"model {model!r} reads {' or '.join(entry.inputs)} data (datasets: "
            f"{', '.join(takes) or 'none registered'}), not dataset {data!r} ({kind} data); "
            f"models for {data!r}: {', '.join(fits) or 'none registered'}"
        )

    def _check_budget(self) -> None:
        """Refuse runs that could never finish: too many evaluations or training steps."""
        vt, every = self.stop.virtual_time_s, self.eval.every_s
        if vt is not None and vt / every > MAX_EVALUATIONS:
            raise ValueError(
                f"stop.virtual_time_s = {vt:g} with eval.every_s = {every:g} means "
                f"{vt / every:.3g} evaluations; at most {MAX_EVALUATIONS:,} allowed "
                "(raise eval.every_s or lower stop.virtual_time_s)"
            )
        if vt is not None:
            c = self.compute
            fastest = min(c.factors) if c.factors else 1.0
            steps = vt / (c.step_time_s * fastest)
            if steps > MAX_STEPS:
                raise ValueError(
                    f"stop.virtual_time_s = {vt:g} at compute.step_time_s = {c.step_time_s:g} "
                    f"means {steps:.3g} training steps per node; at most {MAX_STEPS:,} allowed "
                    "(raise compute.step_time_s or lower stop.virtual_time_s)"
                )
        local = self.train.local_steps
        if local > MAX_STEPS:
            raise ValueError(
                f"train.local_steps = {local}: at most {MAX_STEPS:,} steps per local training"
            )
        its = self.stop.iterations
        if its is not None and its * local > MAX_STEPS:
            raise ValueError(
                f"stop.iterations = {its} x train.local_steps = {local} means {its * local:.3g} "
                f"training steps per node; at most {MAX_STEPS:,} allowed"
            )
