"""Epidemic Learning (EL-Oracle, EL-Local) and per-round dynamic topologies, by hand and run."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from peerlearn.algorithms.epidemic import (
    ELLocal,
    ELLocalConfig,
    ELOracle,
    ELOracleConfig,
    local_schedule,
)
from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.message import Message
from peerlearn.config import load_config
from peerlearn.config.load import ConfigError
from peerlearn.experiment import build_setup
from peerlearn.network.dynamic import RoundGraph, round_neighbors
from peerlearn.protocols.base import NodeContext, Record, Send, Started, Train, TrainingDone
from peerlearn.protocols.dpsgd import DPSGD
from peerlearn.sim.engine import Simulator
from tests.conftest import small


def _nodes(cls, n: int, params, seed: int = 3, models=None, neighbors_at=None):
    models = models or [
        torch.randn(5, generator=torch.Generator().manual_seed(i)) for i in range(n)
    ]
    out = []
    for i in range(n):
        ctx = NodeContext(
            i,
            n,
            tuple(j for j in range(n) if j != i),
            models[i],
            np.random.default_rng(i),
            run_seed=seed,
            neighbors_at=None if neighbors_at is None else neighbors_at(i),
        )
        out.append(cls(ctx, params, local_steps=2, max_iterations=None))
    return out


def _round(nodes) -> list[tuple[int, Send]]:
    """One round by hand, without training: every node finishes its (empty) training, then every
    message is delivered; returns the sends. Each node must end the round exactly once."""
    r = nodes[0].iteration
    outbox: list[tuple[int, Send]] = []
    follow: list = []
    for node in nodes:
        if r == 0:
            assert node.handle(Started()) == [Train(2)]
        acts = node.handle(TrainingDone(2))
        outbox += [(node.ctx.node, a) for a in acts if isinstance(a, Send)]
        follow += [a for a in acts if isinstance(a, Train)]
    for src, s in outbox:
        msg = Message(src, s.dest, s.kind, s.iteration, s.payload)
        follow += [a for a in nodes[s.dest].handle_message(msg) if isinstance(a, Train)]
    assert len(follow) == len(nodes) and all(node.iteration == r + 1 for node in nodes)
    return outbox


def _is_regular_connected(adj: tuple[tuple[int, ...], ...], d: int) -> bool:
    g = nx.Graph()
    g.add_nodes_from(range(len(adj)))
    g.add_edges_from((i, j) for i, row in enumerate(adj) for j in row)
    symmetric = all(i in adj[j] for i, row in enumerate(adj) for j in row)
    return symmetric and all(len(row) == d for row in adj) and nx.is_connected(g)


# -- EL-Oracle ----------------------------------------------------------------------------------


def test_el_oracle_with_s_equal_n_minus_1_is_exact_averaging() -> None:
    n = 6
    nodes = _nodes(ELOracle, n, ELOracleConfig(s=n - 1))
    mean = torch.stack([node.ctx.model.clone() for node in nodes]).mean(0)
    sends = _round(nodes)
    assert len(sends) == n * (n - 1)
    for node in nodes:
        torch.testing.assert_close(node.ctx.model, mean, rtol=0, atol=1e-6)


def test_el_oracle_sends_along_each_rounds_s_regular_graph_with_uniform_weights() -> None:
    n, s, seed = 10, 3, 5
    nodes = _nodes(ELOracle, n, ELOracleConfig(s=s), seed=seed)
    for r in range(4):
        before = [node.ctx.model.clone() for node in nodes]
        graph = round_neighbors(n, s, seed, r)
        assert _is_regular_connected(graph, s)
        sends = _round(nodes)
        got = sorted((src, a.dest) for src, a in sends)
        assert got == sorted((i, j) for i in range(n) for j in graph[i])  # n * s sends
        assert all(a.iteration == r and a.payload.degree == s for _, a in sends)
        for i, node in enumerate(nodes):
            expected = (before[i] + sum(before[j] for j in graph[i])) / (s + 1)
            torch.testing.assert_close(node.ctx.model, expected, rtol=0, atol=1e-6)


def test_round_graphs_are_regular_differ_by_round_and_repeat_by_seed() -> None:
    n, d = 16, 4
    graphs = [round_neighbors(n, d, 1, r) for r in range(8)]
    assert all(_is_regular_connected(g, d) for g in graphs)
    assert len(set(graphs)) == 8  # a new graph every round
    round_neighbors.cache_clear()
    assert [round_neighbors(n, d, 1, r) for r in range(8)] == graphs  # rebuilt identically
    assert round_neighbors(n, d, 2, 0) != graphs[0]  # another seed, another graph
    assert RoundGraph(n, d, 1, 5)(3) == graphs[3][5]
    with pytest.raises(ValueError, match="n\\*degree even"):
        round_neighbors(5, 3, 1, 0)


# -- EL-Local -----------------------------------------------------------------------------------


def test_el_local_schedule_pushes_to_s_distinct_others_and_inverts() -> None:
    n, s = 12, 3
    rounds = [local_schedule(n, s, 7, r) for r in range(5)]
    for targets, senders in rounds:
        for j, dests in enumerate(targets):
            assert len(set(dests)) == s and j not in dests and all(0 <= i < n for i in dests)
        assert sorted((j, i) for i, row in enumerate(senders) for j in row) == sorted(
            (j, i) for j, row in enumerate(targets) for i in row
        )
    assert len({r[0] for r in rounds}) == 5
    local_schedule.cache_clear()
    assert local_schedule(n, s, 7, 2) == rounds[2] and local_schedule(n, s, 8, 2) != rounds[2]


def test_el_local_sends_exactly_s_per_node_and_averages_what_arrived() -> None:
    n, s, seed = 8, 2, 11
    nodes = _nodes(ELLocal, n, ELLocalConfig(s=s), seed=seed)
    empty_rounds = 0
    for r in range(6):
        before = [node.ctx.model.clone() for node in nodes]
        targets, senders = local_schedule(n, s, seed, r)
        sends = _round(nodes)
        for i in range(n):
            mine = sorted(a.dest for src, a in sends if src == i)
            assert mine == list(targets[i])  # exactly s, as scheduled
        for i, node in enumerate(nodes):
            k = len(senders[i])
            empty_rounds += k == 0
            expected = (before[i] + sum(before[j] for j in senders[i])) / (k + 1)
            torch.testing.assert_close(node.ctx.model, expected, rtol=0, atol=1e-6)
    assert empty_rounds > 0  # the no-model case was exercised: the model stays as it is


def test_el_local_refuses_a_model_from_a_node_not_scheduled_to_send() -> None:
    n, s, seed = 6, 1, 4
    node = _nodes(ELLocal, n, ELLocalConfig(s=s), seed=seed)[0]
    node.handle(Started())
    senders = local_schedule(n, s, seed, 3)[1][0]
    outsider = next(j for j in range(1, n) if j not in senders)
    msg = Message(outsider, 0, "model", 3, DenseVector(torch.zeros(5), s))
    assert node.handle_message(msg) == [Record("ignored_messages", 1.0)]
    if senders:  # a scheduled sender far ahead is kept for its round
        msg = Message(senders[0], 0, "model", 3, DenseVector(torch.zeros(5), s))
        assert node.handle_message(msg) == [] and 3 in node.inbox


# -- dynamic topologies for the synchronous algorithms -------------------------------------------


def test_dpsgd_on_a_dynamic_graph_follows_each_rounds_graph_with_mh_weights() -> None:
    n, d, seed = 8, 3, 2
    nodes = _nodes(DPSGD, n, None, seed=seed, neighbors_at=lambda i: RoundGraph(n, d, seed, i))
    for r in range(3):
        before = [node.ctx.model.clone() for node in nodes]
        graph = round_neighbors(n, d, seed, r)
        sends = _round(nodes)
        assert sorted((src, a.dest) for src, a in sends) == sorted(
            (i, j) for i in range(n) for j in graph[i]
        )
        assert all(a.payload.degree == d for _, a in sends)
        for i, node in enumerate(nodes):  # MH on a d-regular graph: 1/(d+1) each
            expected = (before[i] + sum(before[j] for j in graph[i])) / (d + 1)
            torch.testing.assert_close(node.ctx.model, expected, rtol=0, atol=1e-6)


def test_dynamic_dpsgd_refuses_a_non_neighbour_and_a_payload_too_far_ahead() -> None:
    n, d, seed = 8, 3, 2
    node = _nodes(DPSGD, n, None, seed=seed, neighbors_at=lambda i: RoundGraph(n, d, seed, i))[0]
    node.handle(Started())
    far = n  # more than n - 1 rounds ahead is impossible for a genuine peer
    j = round_neighbors(n, d, seed, far)[0][0]
    assert node.handle_message(Message(j, 0, "model", far, DenseVector(torch.zeros(5), d))) == [
        Record("ignored_messages", 1.0)
    ]
    r = 4  # a few rounds ahead is possible on a changing graph: buffered
    j = round_neighbors(n, d, seed, r)[0][0]
    assert node.handle_message(Message(j, 0, "model", r, DenseVector(torch.zeros(5), d))) == []
    stranger = next(k for k in range(1, n) if k not in round_neighbors(n, d, seed, 0)[0])
    msg = Message(stranger, 0, "model", 0, DenseVector(torch.zeros(5), d))
    assert node.handle_message(msg) == [Record("ignored_messages", 1.0)]


def _log_edges(sim: Simulator) -> dict[int, set[tuple[int, int]]]:
    by_round: dict[int, set[tuple[int, int]]] = {}
    for src, dst, _kind, it, *_ in sim.message_log:
        by_round.setdefault(it, set()).add((src, dst))
    return by_round


def test_simulated_dynamic_topology_uses_each_rounds_graph_deterministically() -> None:
    cfg = small(
        "topology.kind=regular", "topology.degree=3", "topology.dynamic=true",
        "eval.log_messages=true",
    )  # fmt: skip
    sim = Simulator(build_setup(cfg))
    sim.run()
    edges = _log_edges(sim)
    full = [r for r in edges if r < min(p.iteration for p in sim.protocols)]
    assert len(full) >= 3
    for r in full:
        graph = round_neighbors(cfg.nodes, 3, cfg.seed, r)
        assert edges[r] == {(i, j) for i in range(cfg.nodes) for j in graph[i]}
    again = Simulator(build_setup(cfg))
    again.run()
    assert again.recorder.rows == sim.recorder.rows


def test_el_oracle_equals_dpsgd_on_a_dynamic_graph_of_the_same_degree() -> None:
    """Same per-round graphs, and MH weights are 1/(s+1) on a regular graph: the same run up to
    the rounding of the self weight (MH's 1 - s/(s+1) versus EL's 1/(s+1))."""
    base = ("topology.kind=regular", "topology.degree=2", "eval.log_messages=true")
    el = Simulator(build_setup(small(*base, "algorithm.name=el_oracle", "algorithm.s=2")))
    el.run()
    dyn = Simulator(build_setup(small(*base, "topology.dynamic=true")))
    dyn.run()
    assert [m[:4] for m in el.message_log] == [m[:4] for m in dyn.message_log]
    torch.testing.assert_close(el.models, dyn.models, rtol=1e-4, atol=1e-5)


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["topology.dynamic=true", "topology.kind=ring"], "needs kind 'regular'"),
        (["topology.dynamic=true", "algorithm.name=choco"], "not with algorithm 'choco'"),
        (["topology.dynamic=true", "algorithm.name=divshare"], "not with algorithm 'divshare'"),
        (["topology.dynamic=true", "algorithm.name=el_local"], "not with algorithm 'el_local'"),
        (["algorithm.name=el_oracle", "algorithm.s=16"], "algorithm.s = 16 must be below"),
        (["algorithm.name=el_oracle", "algorithm.s=3", "nodes=15"], "nodes \\* s even"),
        (["algorithm.name=el_oracle", "algorithm.s=1"], "never connected"),
        (["algorithm.name=el_local", "algorithm.s=20"], "algorithm.s = 20 must be below"),
        (["algorithm.name=el_local", "algorithm.s=0"], "algorithm.s"),
    ],
)
def test_bad_epidemic_and_dynamic_settings_are_one_line_errors(sets, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, sets)
    assert "\n" not in str(err.value)


def test_el_local_with_s_1_and_el_oracle_on_two_nodes_are_valid() -> None:
    load_config(None, ["algorithm.name=el_local", "algorithm.s=1"])
    load_config(
        None, ["algorithm.name=el_oracle", "algorithm.s=1", "nodes=2", "network.stragglers=0"]
    )


def test_cli_refuses_choco_on_a_dynamic_topology_with_exit_2(tmp_path, capsys) -> None:
    from peerlearn.cli import main

    out = tmp_path / "run"
    args = ["run", "--set", "topology.dynamic=true", "--set", "algorithm.name=choco"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "topology.dynamic" in err and "choco" in err and not out.exists()


def test_peerlearn_list_names_the_new_algorithms(capsys) -> None:
    from peerlearn.cli import main

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("el_oracle", "el_local", "gossip"))
