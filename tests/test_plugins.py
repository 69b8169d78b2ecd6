"""Components from outside the package: the example plugin under both engines, the config's
``plugins`` route, entry-point discovery, and what a plugin may and may not register."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from peerlearn.cli import main
from peerlearn.codecs.message import Message, Payload, PayloadError
from peerlearn.components import ALGORITHMS, MODELS, PAYLOADS, TOPOLOGIES
from peerlearn.config import ConfigError, load_config
from peerlearn.experiment import build_setup
from peerlearn.plugins import load_entry_points
from peerlearn.registry import RegistryError
from peerlearn.sim.engine import Simulator
from tests.test_deploy_node import free_port_base

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin"
CONFIG = EXAMPLE / "config.toml"
SMALL = ["nodes=4", "stop.virtual_time_s=3", "eval.every_s=1.5"]


@pytest.fixture
def example(monkeypatch):
    """The example plugin importable, as with PYTHONPATH=examples/plugin."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return EXAMPLE


def _final(sim: Simulator, metric: str) -> float:
    rows = [v for _, n, _, m, v in sim.recorder.rows if n == -1 and m == metric]
    return rows[-1]


def test_example_plugin_from_the_config_runs_in_the_simulator(example) -> None:
    cfg = load_config(CONFIG, SMALL)
    assert type(cfg.algorithm).__name__ == "UniformConfig"
    assert type(cfg.model).__name__ == "TanhMLPConfig" and cfg.model.width == 32
    assert ALGORITHMS.get("uniform_avg").source == "config module peerlearn_example"
    assert MODELS.get("tanh_mlp").source == "config module peerlearn_example"
    sim = Simulator(build_setup(cfg))
    result = sim.run()
    assert result.virtual_time_s == 3
    assert _final(sim, "test_acc_mean") > 0.8  # digits, ~30 rounds: the model learns
    # the plugin's model really is the one trained: 64 -> 32 -> 32 -> 10
    assert build_setup(cfg).model.layout.numel == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10


def test_uniform_averaging_is_dpsgd_on_a_regular_graph(example) -> None:
    """On a ring every Metropolis-Hastings weight is 1/3: the plain mean; with more weight on
    the node's own model it is not."""
    base = [*SMALL, "stop.iterations=4", "stop.virtual_time_s=100", "topology.kind=ring"]

    def loss(*extra: str) -> float:
        sim = Simulator(build_setup(load_config(CONFIG, [*base, *extra])))
        sim.run()
        return _final(sim, "test_loss_mean")

    dpsgd = loss("algorithm.name=dpsgd")
    assert loss() == pytest.approx(dpsgd, rel=1e-5)
    assert loss("algorithm.self_weight=3") != pytest.approx(dpsgd, rel=1e-3)


def test_example_plugin_runs_under_deploy(example, tmp_path: Path, monkeypatch) -> None:
    from peerlearn.deploy.launcher import deploy_experiment

    # the node processes import the plugin too: it must be on their path
    path = os.pathsep.join([str(EXAMPLE), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = load_config(
        CONFIG,
        [
            "nodes=3",
            "stop.virtual_time_s=3",
            "eval.every_s=1",
            f"deploy.base_port={free_port_base(3)}",
        ],
    )
    run_dir, summary = deploy_experiment(cfg, tmp_path / "run", quiet=True)
    assert summary["algorithm"] == "uniform_avg"
    assert summary["deploy"]["nodes_failed"] == []
    assert summary["deploy"]["messages_rejected"] == {}
    assert summary["iterations"]["min"] >= 3
    assert summary["final"]["test_acc_mean"] > 0.5
    assert 'plugins = [\n    "peerlearn_example",\n]' in (run_dir / "config.toml").read_text()


def test_plugin_names_join_the_allowed_lists_and_keys(example) -> None:
    load_config(CONFIG, SMALL)
    with pytest.raises(
        ConfigError, match=r"algorithm\.name = 'foo': unknown algorithm.*uniform_avg"
    ):
        load_config(CONFIG, ["algorithm.name=foo"])
    with pytest.raises(ConfigError, match=r"model\.name = 'x': unknown model.*tanh_mlp"):
        load_config(CONFIG, ["model.name=x"])
    with pytest.raises(ConfigError, match=r"model\.width = 0: Input should be greater than 0"):
        load_config(CONFIG, ["model.width=0"])
    # width belongs to tanh_mlp: the built-in mlp does not take it
    with pytest.raises(ConfigError, match=r"unknown key 'model\.width'.*allowed: factors, hidden"):
        load_config(CONFIG, ["model.name=mlp"])
    with pytest.raises(ConfigError, match=r"unknown key 'algorithm\.fanout'.*self_weight"):
        load_config(CONFIG, ["algorithm.fanout=2"])


def test_missing_plugin_module_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ['plugins=["no_such_lab.el"]'])
    msg = str(info.value)
    assert "\n" not in msg and "'no_such_lab.el'" in msg and "PYTHONPATH" in msg
    code = main(["run", "--set", 'plugins=["no_such_lab.el"]', "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "no_such_lab.el" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="plugins"):
        load_config(None, ["plugins=3"])


def test_peerlearn_list_shows_plugins_and_where_they_came_from(example, capsys) -> None:
    assert main(["list", "--plugins", "peerlearn_example"]) == 0
    out = capsys.readouterr().out
    assert "uniform_avg" in out and "tanh_mlp" in out and "dpsgd" in out
    assert "peerlearn_example" in out and "built-in" in out
    assert main(["list", "--plugins", "no_such_lab"]) == 2


def test_entry_point_plugins_are_found_and_labelled(tmp_path: Path, monkeypatch) -> None:
    """A distribution on sys.path whose entry_points.txt names a module in the
    ``peerlearn.plugins`` group: its registrations say which distribution they came from."""
    (tmp_path / "fake_line_plugin.py").write_text(
        "import networkx as nx\n"
        "from peerlearn.api import register_topology\n"
        "register_topology('fake_line', lambda n, **_: nx.path_graph(n),\n"
        "                  description='a path 0-1-...-n-1')\n"
    )
    dist = tmp_path / "fake_line-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-line\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[peerlearn.plugins]\nline = fake_line_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "entry point line (fake-line 0.3)" in load_entry_points(force=True)
        assert TOPOLOGIES.get("fake_line").source == "entry point line (fake-line 0.3)"
        cfg = load_config(None, ["topology.kind=fake_line", "nodes=5"])
        assert sorted(build_setup(cfg).graph.edges()) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    finally:
        TOPOLOGIES.remove("fake_line")
        sys.modules.pop("fake_line_plugin", None)


def test_broken_entry_point_is_one_line_naming_it(tmp_path: Path, monkeypatch) -> None:
    dist = tmp_path / "broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[peerlearn.plugins]\noops = no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"plugin entry point oops \(broken 1\.0\)") as info:
        load_entry_points(force=True)
    assert "\n" not in str(info.value)


def test_a_plugin_cannot_take_a_builtin_name() -> None:
    from peerlearn.api import Section, register_algorithm

    class Fake(Section):
        name: str = "dpsgd"

    with pytest.raises(RegistryError, match=r"'dpsgd' is already registered \(built-in\)"):
        register_algorithm("dpsgd", config=Fake, protocol=object)
    assert ALGORITHMS.get("dpsgd").source == "built-in"
    with pytest.raises(RegistryError, match="needs a field"):
        register_algorithm("other_name", config=Fake, protocol=object)


class _Pair(Payload):
    """Two float32 values: a payload type a plugin adds, with its own wire id."""

    def __init__(self, a: float, b: float) -> None:
        self.values = np.array([a, b], dtype=np.float32)

    @property
    def data_bytes(self) -> int:
        return 8

    @property
    def meta_bytes(self) -> int:
        return 0

    def encode(self) -> bytes:
        return self.values.tobytes()

    @classmethod
    def decode(cls, body: bytes) -> _Pair:
        if len(body) != 8:
            raise PayloadError("malformed", f"{len(body)} bytes")
        a, b = np.frombuffer(body, dtype="<f4")
        return cls(float(a), float(b))


def _check_pair(payload: _Pair, numel: int) -> None:
    if numel < 2:
        raise PayloadError("bad_range", "model smaller than a pair")


def test_a_plugin_payload_travels_the_wire_under_its_own_id() -> None:
    from peerlearn.api import register_payload
    from peerlearn.deploy.wire import WireError, WireLimits, decode_message, encode_message

    with pytest.raises(RegistryError, match="wire_id 1 is taken by 'dense'"):
        register_payload("pair", _Pair, wire_id=1)
    with pytest.raises(RegistryError, match=r"wire_id must be in 1\.\.15"):
        register_payload("pair", _Pair, wire_id=16)
    register_payload("pair", _Pair, wire_id=12, check=_check_pair)
    try:
        frame = encode_message(Message(0, 1, "model", 3, _Pair(1.5, -2.0)))
        assert frame[3] >> 4 == 12  # the payload nibble of the kind byte
        limits = WireLimits(1, 2, 10, frozenset({_Pair}), 1000)
        got = decode_message(frame, limits, identity=0)
        assert isinstance(got.payload, _Pair) and got.payload.values.tolist() == [1.5, -2.0]
        with pytest.raises(WireError, match="bad_range"):
            decode_message(frame, WireLimits(1, 2, 1, frozenset({_Pair}), 1000))
        with pytest.raises(WireError, match="bad_type"):  # not among the algorithm's payloads
            decode_message(frame, WireLimits(1, 2, 10, frozenset({torch.Tensor}), 1000))
    finally:
        PAYLOADS.remove("pair")


_LAB = '''
"""A plugin with a dataset, a partitioner and a network preset of its own."""
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from peerlearn.api import (
    Dataset, NetworkConfig, NetworkSpec, Partition, mbps_to_Bps,
    register_dataset, register_partitioner, register_preset,
)


def load(*, seed, **_):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    t = lambda a: torch.from_numpy(a)
    return Dataset("halfspace", "classification", t(x[:200]), t(y[:200]), t(x[200:]),
                   t(y[200:]), 2, (6,))


register_dataset("halfspace", load, kind="vector", description="sign of the first feature")


def split(dataset, n_nodes, seed, **_):
    return Partition([np.arange(i, dataset.n_train, n_nodes) for i in range(n_nodes)], None)


register_partitioner("round_robin", split, description="sample i to node i mod n")


class TwoSpeedConfig(NetworkConfig):
    slow_mbps: float = Field(default=1.0, gt=0)


def two_speed(n, *, mbps, slow_mbps, latency_ms, **_):
    up = np.full(n, mbps_to_Bps(mbps))
    up[n // 2:] = mbps_to_Bps(slow_mbps)
    latency = np.full((n, n), latency_ms / 1e3)
    np.fill_diagonal(latency, 0.0)
    return NetworkSpec(up, up.copy(), latency, description="two speeds")


register_preset("two_speed", two_speed, config=TwoSpeedConfig, description="half the nodes slow")
'''


def test_plugin_dataset_partitioner_and_preset(tmp_path: Path, monkeypatch) -> None:
    from peerlearn.components import DATASETS, PARTITIONERS, PRESETS
    from peerlearn.deploy.capacity import _dataset_shape

    (tmp_path / "lab_extras.py").write_text(_LAB)
    monkeypatch.syspath_prepend(str(tmp_path))
    over = [
        'plugins=["lab_extras"]',
        "data.dataset=halfspace",
        "data.partition=round_robin",
        "network.preset=two_speed",
        "network.slow_mbps=2",
        "nodes=4",
        "topology.kind=full",
        "stop.virtual_time_s=2",
        "eval.every_s=1",
    ]
    try:
        cfg = load_config(None, over)
        assert PRESETS.get("two_speed").source == "config module lab_extras"
        setup = build_setup(cfg)
        assert setup.partition.train[1].tolist()[:3] == [1, 5, 9]
        np.testing.assert_allclose(setup.network.up_Bps, [12.5e6, 12.5e6, 2.5e5, 2.5e5])
        sim = Simulator(setup)
        sim.run()
        assert _final(sim, "test_acc_mean") > 0.7  # a half-space is easy
        # the deploy launcher's memory estimate loads a dataset that gives no footprint
        assert _dataset_shape(cfg) == (300, (6,), 2)
        with pytest.raises(ConfigError, match=r"unknown key 'network\.slow_mbps'"):
            load_config(None, [*over, "network.preset=uniform"])
    finally:
        DATASETS.remove("halfspace")
        PARTITIONERS.remove("round_robin")
        PRESETS.remove("two_speed")
        sys.modules.pop("lab_extras", None)
        from peerlearn import plugins

        plugins._modules_loaded.discard("lab_extras")


def test_the_example_protocol_by_hand(example) -> None:
    """docs/extending.md's first level of testing: events in, actions out, no engine."""
    from peerlearn_example.uniform import UniformAveraging, UniformConfig

    from peerlearn.api import Finish, NodeContext, Send, Started, Train, TrainingDone

    models = [torch.full((4,), float(v)) for v in (0, 3, 6)]
    nodes = [
        UniformAveraging(
            NodeContext(
                node=i,
                n_nodes=3,
                neighbors=tuple(j for j in range(3) if j != i),
                model=models[i],
                rng=np.random.default_rng(i),
            ),
            UniformConfig(),
            local_steps=5,
            max_iterations=1,
        )
        for i in range(3)
    ]
    assert nodes[0].handle(Started()) == [Train(5)]
    sends = [
        (p.ctx.node, a) for p in nodes for a in p.handle(TrainingDone(5)) if isinstance(a, Send)
    ]
    assert sorted((src, a.dest) for src, a in sends) == [
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 2),
        (2, 0),
        (2, 1),
    ]
    finished = []
    for src, a in sends:  # each node averages once it has both neighbours' models
        msg = Message(src, a.dest, a.kind, a.iteration, a.payload)
        finished += nodes[a.dest].handle_message(msg)
    assert all(torch.equal(m, torch.full((4,), 3.0)) for m in models)  # the mean, everywhere
    assert finished == [Finish()] * 3  # max_iterations=1: each node says Finish once
