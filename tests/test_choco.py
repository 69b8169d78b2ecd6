"""CHOCO-SGD: identity compression with gamma = 1 is D-PSGD; one round by hand; the invariants."""

from __future__ import annotations

import numpy as np
import torch

from peerlearn.codecs.message import Message
from peerlearn.codecs.partial import PartialPayload
from peerlearn.codecs.sparse import SparseVector
from peerlearn.config.algorithms_sparse import ChocoConfig
from peerlearn.experiment import build_setup
from peerlearn.protocols.base import MessageArrived, Send, Started, TrainingDone
from peerlearn.protocols.choco import Choco
from peerlearn.protocols.dpsgd import DPSGD, metropolis_hastings
from peerlearn.sim.engine import Simulator
from tests.conftest import small
from tests.test_jwins import (
    EDGES,
    adjacency,
    assert_same_history,
    drive_rounds,
    initial_models,
    make_nodes,
)


def no_training(r: int, node: int, model: torch.Tensor) -> None:
    pass


def test_identity_compressor_gamma_one_equals_dpsgd_by_hand() -> None:
    dpsgd = drive_rounds(make_nodes(DPSGD, None, initial_models()), 6)
    params = ChocoConfig(fraction=1.0, gamma=1.0)
    assert_same_history(drive_rounds(make_nodes(Choco, params, initial_models()), 6), dpsgd)


def test_identity_compressor_gamma_one_equals_dpsgd_on_the_simulator() -> None:
    base = ["topology.kind=regular", "topology.degree=2", "stop.iterations=3"]
    base += ["stop.virtual_time_s=1000"]
    ref = Simulator(build_setup(small(*base)))
    ref.run()
    algo = ["algorithm.name=choco", "algorithm.fraction=1.0", "algorithm.gamma=1.0"]
    sim = Simulator(build_setup(small(*base, *algo)))
    result = sim.run()
    assert result.finished_all
    torch.testing.assert_close(sim.models, ref.models, atol=1e-5, rtol=1e-4)


def test_one_round_by_hand() -> None:
    a = torch.tensor([1.0, -4.0, 0.5, 2.0])
    b = torch.tensor([0.0, 1.5, 3.0, -1.0])
    a0, b0 = a.numpy().copy(), b.numpy().copy()  # the nodes update a and b in place
    nodes = make_nodes(Choco, ChocoConfig(fraction=0.5, gamma=0.5), [a, b], edges=[(0, 1)])
    for n in nodes:
        n.handle(Started())
    sends = [next(x for x in n.handle(TrainingDone(1)) if isinstance(x, Send)) for n in nodes]
    # q = top-2 of x - x_hat (x_hat = 0): node 0 sends coords 1, 3; node 1 coords 1, 2
    assert isinstance(sends[0].payload, SparseVector)
    np.testing.assert_array_equal(sends[0].payload.indices, [1, 3])
    np.testing.assert_array_equal(sends[0].payload.values, [-4.0, 2.0])
    np.testing.assert_array_equal(sends[1].payload.indices, [1, 2])
    for i, s in enumerate(sends):
        nodes[s.dest].handle(MessageArrived(Message(i, s.dest, "model", 0, s.payload)))
    q0 = np.array([0, -4.0, 0, 2.0])
    q1 = np.array([0, 1.5, 3.0, 0])
    # weights 1/2 each; x_hat0 = q0; s0 = q0/2 + q1/2; x0 += 0.5 * (s0 - x_hat0)
    np.testing.assert_allclose(nodes[0].x_hat, q0)
    np.testing.assert_allclose(nodes[0].s, (q0 + q1) / 2)
    np.testing.assert_allclose(nodes[0].ctx.model, a0 + 0.5 * ((q0 + q1) / 2 - q0))
    np.testing.assert_allclose(nodes[1].ctx.model, b0 + 0.5 * ((q0 + q1) / 2 - q1))


def test_s_tracks_the_weighted_sum_of_public_copies_and_mean_is_kept() -> None:
    nodes = make_nodes(Choco, ChocoConfig(fraction=0.2, gamma=0.4), initial_models())
    adj = adjacency(EDGES)
    mean0 = torch.stack([n.ctx.model.clone() for n in nodes]).mean(0)
    spread0 = None
    for r, models in enumerate(drive_rounds(nodes, 15, no_training)):
        for i, node in enumerate(nodes):
            w = metropolis_hastings(len(adj[i]), {j: len(adj[j]) for j in adj[i]})
            expected = w[-1] * nodes[i].x_hat + sum(w[j] * nodes[j].x_hat for j in adj[i])
            np.testing.assert_allclose(node.s, expected, atol=1e-5)
        # symmetric doubly-stochastic weights: the sum of the x's is untouched by gossip
        torch.testing.assert_close(models.mean(0), mean0, atol=1e-5, rtol=0)
        spread = (models - models.mean(0)).norm().item()
        if r == 0:
            spread0 = spread
    assert spread < 0.5 * spread0  # and they do approach consensus


def test_compressed_wire_format_gives_identical_models() -> None:
    plain = drive_rounds(make_nodes(Choco, ChocoConfig(fraction=0.3), initial_models()), 4)
    params = ChocoConfig(fraction=0.3, compress=True)
    nodes = make_nodes(Choco, params, initial_models())
    sent: list = []
    packed = drive_rounds(nodes, 4, sent=sent)
    assert all(isinstance(s.payload, PartialPayload) for _, s in sent)
    for x, y in zip(plain, packed, strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    raw = SparseVector(sent[0][1].payload.indices, sent[0][1].payload.values)
    assert sent[0][1].payload.meta_bytes < raw.meta_bytes  # Elias beats raw int32 indices
