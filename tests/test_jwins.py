"""JWINS: the wavelet transform, alpha = 1 is D-PSGD, the accumulator, byte accounting.

``make_nodes`` and ``drive_rounds`` run protocols by hand, round by round, through the real wire
path (encode, decode) and are shared with the other sparse-protocol tests.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.message import HEADER_BYTES, Message
from peerlearn.codecs.partial import PartialPayload
from peerlearn.config.algorithms_sparse import JWINSConfig
from peerlearn.experiment import build_setup
from peerlearn.models.zoo import build_model
from peerlearn.protocols import registry
from peerlearn.protocols.base import (
    MessageArrived,
    NodeContext,
    Protocol,
    Record,
    Send,
    Started,
    Train,
    TrainingDone,
)
from peerlearn.protocols.dpsgd import DPSGD, metropolis_hastings
from peerlearn.protocols.jwins import JWINS
from peerlearn.protocols.wavelet import FlatWavelet
from peerlearn.sim.engine import Simulator
from tests.conftest import small

# 5 nodes with degrees 3, 2, 2, 2, 1: Metropolis-Hastings weights differ per edge
EDGES = [(0, 1), (0, 2), (0, 3), (1, 2), (3, 4)]


def adjacency(edges: list[tuple[int, int]]) -> dict[int, tuple[int, ...]]:
    g = nx.Graph(edges)
    return {i: tuple(sorted(g.neighbors(i))) for i in sorted(g.nodes)}


def make_nodes(
    cls: type[Protocol], params, models: list[torch.Tensor], edges=EDGES, seed: int = 0
) -> list[Protocol]:
    adj = adjacency(edges)
    n = len(models)
    return [
        cls(
            NodeContext(
                i,
                n,
                adj[i],
                models[i],
                np.random.default_rng([seed, i]),
                degrees={j: len(adj[j]) for j in adj[i]},
            ),
            params,
            local_steps=1,
            max_iterations=None,
        )
        for i in range(n)
    ]


def initial_models(n_nodes: int = 5, size: int = 300, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=g) * 0.1 for _ in range(n_nodes)]


def fake_training(r: int, node: int, model: torch.Tensor) -> None:
    """Deterministic, model-dependent "SGD": pull towards a node target, plus noise."""
    g = torch.Generator().manual_seed(1000 * r + node)
    target = torch.randn(model.numel(), generator=torch.Generator().manual_seed(node))
    model.add_(0.2 * (target - model) + 0.05 * torch.randn(model.numel(), generator=g))


def drive_rounds(
    nodes: list[Protocol],
    rounds: int,
    train: Callable[[int, int, torch.Tensor], None] = fake_training,
    sent: list | None = None,
) -> list[torch.Tensor]:
    """Run synchronous rounds by hand; every payload goes through encode/decode. Returns the
    (nodes x params) models after each round."""
    for node in nodes:
        assert Train(1) in node.handle(Started())
    history = []
    for r in range(rounds):
        outbox = []
        for node in nodes:
            train(r, node.ctx.node, node.ctx.model)
            outbox += [
                (node.ctx.node, a) for a in node.handle(TrainingDone(1)) if isinstance(a, Send)
            ]
        for src, send in outbox:
            payload = send.payload
            wire = payload.encode()
            assert len(wire) == payload.nbytes
            if sent is not None:
                sent.append((src, send))
            msg = Message(src, send.dest, send.kind, send.iteration, type(payload).decode(wire))
            nodes[send.dest].handle(MessageArrived(msg))
        assert all(node.iteration == r + 1 for node in nodes)
        history.append(torch.stack([node.ctx.model.clone() for node in nodes]))
    return history


def assert_same_history(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for r, (x, y) in enumerate(zip(a, b, strict=True)):
        torch.testing.assert_close(x, y, atol=2e-6, rtol=1e-5, msg=f"round {r}")


# --- wavelet ----------------------------------------------------------------------------------


def test_wavelet_is_exactly_invertible_on_gn_lenet() -> None:
    spec = build_model("gn_lenet", input_shape=(3, 32, 32), num_classes=10, info={}, seed=1)
    x = spec.init_vector().numpy()
    assert x.size == 89_834
    w = FlatWavelet(x.size, "sym2", 4)
    assert w.length == 89_843  # as measured for the reference (jwins.md §3)
    c = w.forward(x)
    assert c.dtype == np.float32 and c.size == w.length
    back = w.inverse(c)
    assert back.dtype == np.float32 and back.shape == x.shape
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-6)
    # linear: W(a - b) = W(a) - W(b) up to float32 rounding
    y = np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    np.testing.assert_allclose(w.forward(x - y), c - w.forward(y), atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 400), st.sampled_from(["sym2", "haar", "db3"]), st.integers(1, 5))
def test_wavelet_round_trip_any_length(n: int, wavelet: str, level: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    w = FlatWavelet(n, wavelet, level)
    np.testing.assert_allclose(w.inverse(w.forward(x)), x, rtol=1e-5, atol=1e-5)


def test_wavelet_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown wavelet"):
        FlatWavelet(10, "nope")
    with pytest.raises(ValueError):
        FlatWavelet(10).forward(np.zeros(11, np.float32))


# --- JWINS = D-PSGD at alpha = 1 --------------------------------------------------------------


def test_alpha_one_equals_dpsgd_round_for_round_by_hand() -> None:
    dpsgd = drive_rounds(make_nodes(DPSGD, None, initial_models()), 6)
    nodes = make_nodes(JWINS, JWINSConfig(fixed_alpha=1.0), initial_models())
    jwins = drive_rounds(nodes, 6)
    assert_same_history(jwins, dpsgd)


def test_alpha_list_of_only_full_shares_equals_dpsgd() -> None:
    dpsgd = drive_rounds(make_nodes(DPSGD, None, initial_models()), 3)
    params = JWINSConfig(alpha_list=[0.5, 1.0], metadata_cap=0.5)  # every draw is a full share
    assert_same_history(drive_rounds(make_nodes(JWINS, params, initial_models()), 3), dpsgd)


def test_alpha_one_equals_dpsgd_on_the_simulator() -> None:
    base = ["topology.kind=regular", "topology.degree=2", "stop.iterations=3"]
    base += ["stop.virtual_time_s=1000"]
    ref = Simulator(build_setup(small(*base)))
    ref.run()
    sim = Simulator(build_setup(small(*base, "algorithm.name=jwins", "algorithm.fixed_alpha=1.0")))
    result = sim.run()
    assert result.finished_all and (result.iterations == 3).all()
    torch.testing.assert_close(sim.models, ref.models, atol=1e-5, rtol=1e-4)


# --- the accumulator and the payload ------------------------------------------------------------


def test_accumulator_by_hand_two_nodes() -> None:
    """A after a round = (A with the sent coefficients zeroed) + W(x_avg - x_avg_prev)."""
    models = initial_models(2, 64)
    x0 = [m.numpy().copy() for m in models]
    nodes = make_nodes(JWINS, JWINSConfig(fixed_alpha=0.25), models, edges=[(0, 1)])
    w = FlatWavelet(64, "sym2", 4)
    k = round(0.25 * w.length)
    sent: list = []
    drive_rounds(nodes, 1, sent=sent)
    trained = []
    for i in range(2):  # replay training on a copy to know x after training
        t = torch.from_numpy(x0[i].copy())
        fake_training(0, i, t)
        trained.append(t.numpy())
    for i, node in enumerate(nodes):
        payload = next(s.payload for src, s in sent if src == i)
        score = np.abs(w.forward(trained[i] - x0[i]))  # A starts at 0
        expected_idx = np.sort(np.argsort(-score, kind="stable")[:k])
        assert np.array_equal(np.sort(payload.indices), expected_idx)
        np.testing.assert_array_equal(payload.values, w.forward(trained[i])[expected_idx])
        x_avg = node.ctx.model.numpy()
        np.testing.assert_allclose(node.acc, w.forward(x_avg - x0[i]), atol=1e-6)
        np.testing.assert_array_equal(node.x_prev, x_avg)
        np.testing.assert_array_equal(node.p, x_avg)

    # round 2: the new score is W(train delta) + A, and only the sent coefficients of A are zeroed
    acc_before = [node.acc.copy() for node in nodes]
    prev = [node.x_prev.copy() for node in nodes]
    sent.clear()
    outbox = []
    for i, node in enumerate(nodes):
        fake_training(1, i, node.ctx.model)
        trained[i] = node.ctx.model.numpy().copy()
        outbox += [a for a in node.handle(TrainingDone(1)) if isinstance(a, Send)]
    for i, node in enumerate(nodes):
        payload = outbox[i].payload
        score = np.abs(w.forward(trained[i] - prev[i]) + acc_before[i])
        expected_idx = np.sort(np.argsort(-score, kind="stable")[:k])
        assert np.array_equal(payload.indices, expected_idx)
        expected_acc = acc_before[i].copy()
        expected_acc[expected_idx] = 0
        np.testing.assert_array_equal(node.acc, expected_acc)  # before averaging
    for i, send in enumerate(outbox):
        nodes[send.dest].handle(MessageArrived(Message(i, send.dest, "model", 1, send.payload)))
    for i, node in enumerate(nodes):
        expected_acc = acc_before[i].copy()
        expected_acc[outbox[i].payload.indices] = 0
        expected_acc += w.forward(node.ctx.model.numpy() - prev[i])
        np.testing.assert_allclose(node.acc, expected_acc, atol=1e-6)


def test_full_share_clears_accumulator_and_receiver_fills_with_own_values() -> None:
    models = initial_models(2, 64)
    nodes = make_nodes(JWINS, JWINSConfig(fixed_alpha=0.1), models, edges=[(0, 1)])
    drive_rounds(nodes, 2)
    assert np.abs(nodes[0].acc).sum() > 0
    node = nodes[0]
    node.params = JWINSConfig(fixed_alpha=1.0)
    node.handle(TrainingDone(1))  # full share this round
    assert not node.acc.any()

    # receiver fill-in: a partial message of one coefficient moves only that coefficient
    r = make_nodes(JWINS, JWINSConfig(fixed_alpha=0.1), initial_models(2, 64), edges=[(0, 1)])
    recv = r[0]
    recv.handle(Started())
    recv.handle(TrainingDone(1))
    own = recv.own.copy()
    theirs = PartialPayload(np.array([own[5] + 2.0], np.float32), np.array([5]), degree=1)
    recv.handle(MessageArrived(Message(1, 0, "model", 0, theirs)))
    expected = own.copy()
    expected[5] += 1.0  # weight 1/2 on the neighbour's value, 1/2 on own
    # (the wavelet basis is redundant at the boundaries, so compare in the parameter domain)
    np.testing.assert_allclose(recv.ctx.model.numpy(), recv.wavelet.inverse(expected), atol=1e-6)


def test_random_alpha_per_node_and_records() -> None:
    params = JWINSConfig()
    nodes = make_nodes(JWINS, params, initial_models(5, 500))
    starts = [node.handle(Started()) for node in nodes]
    assert all(
        Record("float_codec_fpzip", float(n.codec.name == "fpzip")) in s
        for n, s in zip(nodes, starts, strict=True)
    )
    alphas = []
    for _ in range(20):
        acts = nodes[0].handle(TrainingDone(1))
        rec = {a.metric: a.value for a in acts if isinstance(a, Record)}
        payload = next(a.payload for a in acts if isinstance(a, Send))
        alpha = rec["alpha"]
        assert alpha in params.alpha_list
        length = nodes[0].length
        if alpha >= params.metadata_cap:
            assert payload.full and rec["sent_fraction"] == 1.0
        else:
            assert payload.indices.size == round(alpha * length)
            assert rec["sent_fraction"] == payload.indices.size / length
        alphas.append(alpha)
        nodes[0].trained = False
    assert len(set(alphas)) >= 3  # really drawn
    other = []
    for _ in range(20):
        acts = nodes[1].handle(TrainingDone(1))
        other.append(next(a.value for a in acts if isinstance(a, Record) and a.metric == "alpha"))
        nodes[1].trained = False
    assert other != alphas  # each node draws from its own generator


# --- Metropolis-Hastings and byte accounting ---------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.floats(0.1, 1.0), st.integers(0, 10_000))
def test_metropolis_hastings_is_symmetric_and_stochastic(n: int, p: float, seed: int) -> None:
    g = nx.gnp_random_graph(n, p, seed=seed)
    w = np.zeros((n, n))
    for i in g.nodes:
        weights = metropolis_hastings(g.degree[i], {j: g.degree[j] for j in g.neighbors(i)})
        for j, v in weights.items():
            w[i, i if j == -1 else j] = v
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(w, w.T)
    assert (w >= 0).all()


def test_simulator_bytes_equal_encoded_payloads_plus_headers(monkeypatch) -> None:
    sizes: list[tuple[int, int, int]] = []

    class Spy(JWINS):
        def handle(self, event):
            actions = super().handle(event)
            for a in actions:
                if isinstance(a, Send):
                    wire = a.payload.encode()
                    sizes.append((len(wire), a.payload.data_bytes, a.payload.meta_bytes))
            return actions

    monkeypatch.setitem(registry.PROTOCOLS, "jwins", Spy)
    cfg = small("algorithm.name=jwins", "stop.iterations=4", "stop.virtual_time_s=1000")
    result = Simulator(build_setup(cfg)).run()
    assert result.finished_all and len(sizes) == 4 * 6 * 2  # ring of 6: two sends per round
    total = sum(HEADER_BYTES + s for s, _, _ in sizes)
    c = result.counters
    assert result.bytes_sent.sum() == total == c.delivered.sum()
    assert c.data.sum() == sum(d for _, d, _ in sizes)
    assert c.meta.sum() == sum(HEADER_BYTES + m for _, _, m in sizes)
    dense = HEADER_BYTES + len(DenseVector(torch.zeros(1)).encode()) - 4
    assert total < len(sizes) * (dense + 4 * build_setup(cfg).model.layout.numel)
