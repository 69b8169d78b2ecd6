"""Capacity traces and churn in the simulator (docs/dynamics.md)."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from peerlearn.cli import main
from peerlearn.config import load_config
from peerlearn.config.load import ConfigError, validate
from peerlearn.experiment import build_setup
from peerlearn.network.churn import exponential_churn
from peerlearn.network.presets import mbps_to_Bps
from peerlearn.network.traces import (
    TraceError,
    load_availability_trace,
    load_capacity_trace,
)
from peerlearn.sim.checkpoint import Checkpointer, load_into, parse_every, read_checkpoint
from peerlearn.sim.engine import Simulator
from peerlearn.sim.flows import FlowNetwork

BASE = [
    "nodes=12",
    "network.preset=stragglers",
    "network.stragglers=3",
    "network.fast_mbps=20",
    "train.local_steps=5",
    "stop.virtual_time_s=4",
]


def _digest(sim: Simulator) -> str:
    return hashlib.sha256(repr(sim.recorder.rows).encode()).hexdigest()


def _run(*extra: str) -> Simulator:
    sim = Simulator(build_setup(load_config(None, [*BASE, *extra])))
    sim.run()
    return sim


# -- the flow model --------------------------------------------------------------------------------


def test_capacity_change_mid_transfer_rerates_the_remaining_bytes() -> None:
    # 1000 B at 100 B/s; at t=4, 600 B are left and the uplink drops to 50 B/s: 600 / 50 = 12 s
    net = FlowNetwork(np.array([100.0, 100.0]), np.array([np.inf, np.inf]))
    net.enqueue(0, 0, 1, 1000)
    assert net.advance_to(4.0) == []
    net.set_capacities(np.array([50.0, 100.0]), np.array([np.inf, np.inf]))
    assert net.bytes_sent(0) == pytest.approx(400.0)
    assert net.next_completion_time() == pytest.approx(16.0)
    assert net.advance_to(20.0) == [(0, pytest.approx(16.0))]


def test_capacity_change_with_two_flows_sharing_a_downlink() -> None:
    # 0->2 and 1->2 share node 2's 100 B/s downlink: 50 B/s each. At t=2 (100 B sent each, 300
    # left) the downlink doubles: 100 B/s each, both finish at 2 + 300/100 = 5
    net = FlowNetwork(np.full(3, np.inf), np.array([np.inf, np.inf, 100.0]))
    net.enqueue(0, 0, 2, 400)
    net.enqueue(1, 1, 2, 400)
    net.advance_to(2.0)
    net.set_capacities(np.full(3, np.inf), np.array([np.inf, np.inf, 200.0]))
    assert net.rate(0) == pytest.approx(100.0)
    assert net.advance_to(10.0) == [(0, pytest.approx(5.0)), (1, pytest.approx(5.0))]


def test_set_capacities_refuses_bad_values() -> None:
    net = FlowNetwork(np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="> 0"):
        net.set_capacities(np.array([1.0, 0.0]), np.ones(2))
    with pytest.raises(ValueError, match="must be"):
        net.set_capacities(np.ones(3), np.ones(3))


# -- churn in the engine ---------------------------------------------------------------------------


def test_node_offline_mid_transfer_loses_the_bytes_sent_and_never_delivers(tmp_path: Path) -> None:
    # two nodes at 0.1 Mbps (12 500 B/s) exchange whole models (~19 kB, 1.5 s each) from t=0.1
    # (training 10 x 0.01 s); node 1 leaves at 0.6, 0.5 s into both transfers
    trace = tmp_path / "avail.csv"
    trace.write_text("time_s,node,online\n0.6,1,0\n")
    cfg = load_config(
        None,
        [
            "nodes=2",
            "network.stragglers=0",
            "topology.kind=full",
            "compute.step_time_s=0.01",
            "algorithm.name=swift",
            "algorithm.fanout=1",
            "network.preset=uniform",
            "network.mbps=0.1",
            "stop.virtual_time_s=3",
            "churn.kind=trace",
            f"churn.trace={trace}",
        ],
    )
    sim = Simulator(build_setup(cfg))
    result = sim.run()
    rate = mbps_to_Bps(0.1)
    assert result.messages_delivered == 0
    assert result.churn is not None
    assert result.churn["bytes_lost"] == pytest.approx(2 * 0.5 * rate, rel=1e-9)
    assert sim.dynamics is not None and list(sim.dynamics.bytes_lost) == pytest.approx(
        [0.5 * rate, 0.5 * rate], rel=1e-9
    )
    # node 0 kept training and sending; every message after the leave is lost at once
    assert result.churn["messages_lost"] >= 2 + result.iterations[0] - 5
    assert result.iterations[1] < result.iterations[0]
    assert result.churn["offline_at_end"] == 1
    # node 1 froze: its model is what it was at 0.6, and it never trained again
    assert int(result.iterations[1]) == 5  # trained at 0.1, 0.2, ..., 0.5; frozen in the 6th


def test_offline_node_resumes_its_frozen_events_when_it_rejoins(tmp_path: Path) -> None:
    # node 1 leaves at 0.55 (0.05 s into its 6th training) and rejoins at 2.55: that training
    # ends 0.05 s later, at 2.6, then it goes on every 0.1 s: by 4.05, 5 + 1 + 14 iterations
    trace = tmp_path / "avail.csv"
    trace.write_text("time_s,node,online\n0.55,1,0\n2.55,1,1\n")
    cfg = load_config(
        None,
        [
            "nodes=2",
            "network.stragglers=0",
            "topology.kind=full",
            "compute.step_time_s=0.01",
            "algorithm.name=swift",
            "algorithm.fanout=1",
            "network.preset=ideal",
            "stop.virtual_time_s=4.05",
            "churn.kind=trace",
            f"churn.trace={trace}",
        ],
    )
    result = Simulator(build_setup(cfg)).run()
    assert int(result.iterations[0]) == 40
    assert int(result.iterations[1]) == 40 - 20
    assert result.churn == {
        "messages_lost": 20,  # node 0's sends during 20 of its iterations while 1 was away
        "bytes_lost": 0.0,  # ideal network: nothing is ever in flight
        "transitions": 2,
        "offline_at_end": 0,
    }


ALGORITHMS = [
    ["algorithm.name=divshare"],
    ["algorithm.name=swift"],
    ["algorithm.name=adpsgd"],
    ["algorithm.name=dpsgd", "churn.round_timeout_s=0.3"],
]
DYNAMIC = [
    "churn.kind=exponential",
    "churn.offline_fraction=0.3",
    "churn.mean_offline_s=0.7",
    "dynamics.kind=rotating_stragglers",
    "dynamics.period_s=0.5",
    "dynamics.stragglers=3",
]


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a[0].split("=")[1])
def test_same_config_and_seed_give_identical_results_with_churn(algorithm: list[str]) -> None:
    a, b = _run(*algorithm, *DYNAMIC), _run(*algorithm, *DYNAMIC)
    assert _digest(a) == _digest(b)
    assert a.dynamics is not None and a.dynamics.transitions > 4  # churn did happen
    assert a.dynamics.messages_lost > 0
    c = _run(*algorithm, *DYNAMIC, "seed=2")
    assert _digest(c) != _digest(a)


def test_a_trace_that_changes_nothing_gives_the_static_results(tmp_path: Path) -> None:
    caps = tmp_path / "caps.csv"
    rows = ["time_s,node,up_mbps,down_mbps"]
    rows += [f"0,{i},{20 / 5 if i < 3 else 20},{20 / 5 if i < 3 else 20}" for i in range(12)]
    caps.write_text("\n".join(rows) + "\n")
    static = _run("algorithm.name=divshare")
    traced = _run("algorithm.name=divshare", "dynamics.kind=trace", f"dynamics.trace={caps}")
    assert _digest(traced) == _digest(static)


def test_compute_factor_from_the_trace_slows_training(tmp_path: Path) -> None:
    caps = tmp_path / "caps.csv"
    caps.write_text("time_s,node,up_mbps,down_mbps,compute_factor\n0,0,20,20,2\n2,0,20,20,\n")
    sim = _run("algorithm.name=swift", "dynamics.kind=trace", f"dynamics.trace={caps}")
    its = [p.iteration for p in sim.protocols]
    # node 0 trains at factor 2 throughout (an empty field changes nothing): half as fast
    assert its[0] < 0.6 * its[1]


def test_synchronous_rounds_time_out_and_catch_up_under_churn() -> None:
    sim = _run("algorithm.name=dpsgd", "churn.round_timeout_s=0.3", *DYNAMIC[:3])
    rows = sim.recorder.rows
    assert any(r[3] == "round_timeouts" for r in rows)
    # nodes back from churn skip to their neighbours' round instead of lagging for ever
    assert any(r[3] == "rounds_skipped" for r in rows)
    its = np.array([p.iteration for p in sim.protocols])
    static = _run("algorithm.name=dpsgd")
    assert np.median(its) > 0.3 * np.median([p.iteration for p in static.protocols])


def test_churn_with_a_synchronous_algorithm_needs_a_round_timeout() -> None:
    with pytest.raises(ConfigError, match="round_timeout_s"):
        load_config(None, [*BASE, "algorithm.name=dpsgd", "churn.kind=exponential"])


def test_dynamics_need_a_time_limit() -> None:
    raw = {"stop": {"virtual_time_s": None, "iterations": 5}, "churn": {"kind": "exponential"}}
    with pytest.raises(ConfigError, match=r"need stop\.virtual_time_s"):
        validate(raw)


def test_capacity_traces_are_refused_in_deployment() -> None:
    with pytest.raises(ConfigError, match="simulator-only"):
        load_config(None, [*BASE, "engine=deploy", "dynamics.kind=diurnal"])


# -- checkpoints -----------------------------------------------------------------------------------


class _Stop(Exception):
    pass


class _StopAfter(Checkpointer):
    def __init__(self, *args, stop_after: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop_after = stop_after

    def save(self, sim) -> None:
        super().save(sim)
        if self.count >= self.stop_after:
            raise _Stop


@pytest.mark.parametrize("algorithm", ALGORITHMS[:2], ids=["divshare", "swift"])
def test_resume_across_capacity_changes_and_churn_gives_the_same_result(
    algorithm: list[str], tmp_path: Path
) -> None:
    cfg = load_config(None, [*BASE, *algorithm, *DYNAMIC])
    ref = Simulator(build_setup(cfg))
    ref.run()
    rng = random.Random(algorithm[0])
    run_dir = tmp_path / "run"
    sim = Simulator(build_setup(cfg))
    with pytest.raises(_Stop):  # stops after changes happened and with nodes offline
        sim.run(_StopAfter(run_dir, cfg, parse_every("0.9vs"), stop_after=rng.randint(2, 3)))
    assert sim.dynamics is not None and sim.dynamics.transitions > 0
    _, state = read_checkpoint(run_dir, cfg)
    resumed = Simulator(build_setup(cfg))
    load_into(resumed, state, run_dir)
    resumed.run()
    assert _digest(resumed) == _digest(ref)
    assert resumed.dynamics is not None and ref.dynamics is not None
    assert resumed.dynamics.messages_lost == ref.dynamics.messages_lost


# -- trace files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("time_s,node,up_mbps\n", ":1: missing column(s) ['down_mbps']"),
        ("time_s,node,up_mbps,down_mbps,speed\n", ":1: unknown column(s) ['speed']"),
        ("time_s,node,up_mbps,down_mbps\n0,1,5\n", ":2: 3 fields, the header has 4"),
        (
            "time_s,node,up_mbps,down_mbps\n0,1,5,5\n1,9,5,5\n",
            ":3: node must be an integer in 0..3",
        ),
        ("time_s,node,up_mbps,down_mbps\n-1,1,5,5\n", ":2: time_s must be >= 0"),
        ("time_s,node,up_mbps,down_mbps\n0,1,fast,5\n", ":2: up_mbps is not a number: 'fast'"),
        ("time_s,node,up_mbps,down_mbps\n0,1,0,5\n", ":2: up_mbps must be > 0"),
        ("time_s,node,up_mbps,down_mbps\n0,1,inf,5\n", ":2: up_mbps must be a finite number"),
        ("", ":1: empty file"),
    ],
)
def test_capacity_trace_errors_are_one_clear_line(text: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "caps.csv"
    path.write_text(text)
    with pytest.raises(TraceError) as info:
        load_capacity_trace(str(path), 4)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path)) and expected in message


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.csv", "time_s,node,online\n0,1,maybe\n", ":2: online must be 1 or 0"),
        ("a.json", '[{"time_s": 0, "node": 1}]', "entry 0: missing column(s) ['online']"),
        ("a.json", '[{"time_s": 0,\n "node": 1,,}]', ":2: not valid JSON"),
        ("a.json", '{"time_s": 0}', "a JSON trace is a list"),
    ],
)
def test_availability_trace_errors_are_one_clear_line(
    name: str, content: str, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TraceError, match=None) as info:
        list(load_availability_trace(str(path), 4))
    assert "\n" not in str(info.value) and expected in str(info.value)


def test_a_bad_trace_is_a_config_error_from_the_cli(tmp_path: Path, capsys) -> None:
    path = tmp_path / "caps.csv"
    path.write_text("time_s,node,up_mbps,down_mbps\n0,99,5,5\n")
    args = ["--set", "dynamics.kind=trace", "--set", f"dynamics.trace={path}"]
    code = main(["run", *args, "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and f"{path}:2: node must be an integer" in err


def test_json_capacity_trace_matches_csv(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("time_s,node,up_mbps,down_mbps\n1,0,8,16\n0.5,1,8,8\n")
    rows = [
        {"time_s": 1, "node": 0, "up_mbps": 8, "down_mbps": 16},
        {"time_s": 0.5, "node": 1, "up_mbps": 8, "down_mbps": 8},
    ]
    (tmp_path / "c.json").write_text(json.dumps(rows))
    a = load_capacity_trace(str(tmp_path / "c.csv"), 2)
    b = load_capacity_trace(str(tmp_path / "c.json"), 2)
    assert a == b
    assert [c.time_s for c in a] == [0.5, 1.0]  # sorted by time
    assert a[1].up_Bps == 1e6 and a[1].down_Bps == 2e6


def test_fedscale_device_and_availability_traces(tmp_path: Path) -> None:
    devices = {
        7: {"computation": 50.0, "communication": 8000.0},
        3: {"computation": 100.0, "communication": 2000.0},
        5: {"computation": 200.0, "communication": 4000.0},
    }
    (tmp_path / "device_info").write_bytes(pickle.dumps(devices))
    caps = load_capacity_trace(str(tmp_path / "device_info"), 2)  # clients 3 and 5
    assert [(c.node, c.up_Bps, c.compute_factor) for c in caps] == [
        (0, mbps_to_Bps(2.0), 100 / 150),
        (1, mbps_to_Bps(4.0), 200 / 150),
    ]
    behave = {
        3: {"duration": 100, "active": [2, 10], "inactive": [5, 20], "finish_time": 20},
        5: {"duration": 100, "active": [0], "inactive": [15], "finish_time": 20},
    }
    (tmp_path / "behave.json").write_text(json.dumps(behave))
    changes = list(
        load_availability_trace(str(tmp_path / "behave.json"), 2, "fedscale", horizon_s=25)
    )
    got = [(c.time_s, c.node, c.online) for c in changes]
    assert got == [
        (0.0, 0, False),
        (2.0, 0, True),
        (5.0, 0, False),
        (10.0, 0, True),
        (15.0, 1, False),
        (20.0, 0, False),
        (20.0, 1, True),
        (22.0, 0, True),
        (25.0, 0, False),
        (30.0, 0, True),
        (35.0, 1, False),
        (40.0, 0, False),  # the last period that starts by the horizon, in full
    ]


def test_fedscale_pickle_with_objects_is_refused(tmp_path: Path) -> None:
    (tmp_path / "evil").write_bytes(pickle.dumps({1: {"computation": np.float64(1.0)}}))
    with pytest.raises(TraceError, match="only plain data"):
        load_capacity_trace(str(tmp_path / "evil"), 1)


def test_exponential_churn_reaches_the_target_offline_fraction() -> None:
    n, f, horizon = 200, 0.3, 2000.0
    offline_time = np.zeros(n)
    since = {}
    for c in exponential_churn(
        n, offline_fraction=f, mean_offline_s=10.0, start_offline=True, seed=3
    ):
        if c.time_s > horizon:
            break
        if not c.online:
            since[c.node] = c.time_s
        else:
            offline_time[c.node] += c.time_s - since.pop(c.node)
    for node, t in since.items():
        offline_time[node] += horizon - t
    assert offline_time.sum() / (n * horizon) == pytest.approx(f, abs=0.02)
