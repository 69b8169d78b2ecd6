"""eval.every_iterations: evaluation when the slowest node completes every k-th round."""

from __future__ import annotations

import pytest

from peerlearn.components import ALGORITHMS
from peerlearn.config import ConfigError, load_config
from peerlearn.config.schema import synchronous_algorithms
from peerlearn.experiment import build_setup
from peerlearn.protocols.registry import PROTOCOLS
from peerlearn.protocols.rounds import SyncRounds
from peerlearn.registry import BUILTIN
from peerlearn.sim.engine import Simulator

SMALL = ["nodes=6", "network.stragglers=0", "stop.virtual_time_s=1.5", "train.local_steps=5"]


def test_synchronous_list_matches_the_protocols() -> None:
    # built-ins only: a plugin test may have registered more in this process
    builtin = {e.name for e in ALGORITHMS.entries() if e.source == BUILTIN}
    protocols = {name: PROTOCOLS[name] for name in builtin}
    sync = {name for name, cls in protocols.items() if issubclass(cls, SyncRounds)}
    assert sync == set(synchronous_algorithms()) & builtin


def test_every_iterations_evaluates_at_round_multiples() -> None:
    cfg = load_config(None, [*SMALL, "eval.every_iterations=2"])
    sim = Simulator(build_setup(cfg))
    result = sim.run()
    rows = [(t, it) for t, n, it, m, _ in sim.recorder.rows if n == -1 and m == "test_acc_mean"]
    times = [t for t, _ in rows]
    assert times == sorted(times) and times[0] == 0.0
    assert times[-1] == result.virtual_time_s  # the final evaluation
    rounds = [it for _, it in rows[1:-1]]  # min iteration over nodes at each evaluation
    assert len(rounds) >= 2
    assert rounds == [2 * (k + 1) for k in range(len(rounds))]


def test_every_iterations_needs_a_synchronous_algorithm() -> None:
    with pytest.raises(ConfigError, match="every_iterations"):
        load_config(None, [*SMALL, "eval.every_iterations=2", "algorithm.name=swift"])
