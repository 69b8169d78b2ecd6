"""TopK partial sharing and random sub-sampling: by hand, against D-PSGD, on the simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peerlearn.codecs.message import HEADER_BYTES, Message
from peerlearn.codecs.partial import PartialPayload
from peerlearn.codecs.seedmask import SeedMaskVector, mask_indices
from peerlearn.config.algorithms_sparse import SubsamplingConfig, TopKConfig
from peerlearn.experiment import build_setup
from peerlearn.protocols.base import MessageArrived, Record, Send, Started, TrainingDone
from peerlearn.protocols.dpsgd import DPSGD
from peerlearn.protocols.sparse import Subsampling, TopK, top_k_indices
from peerlearn.sim.engine import Simulator
from tests.conftest import small
from tests.test_jwins import assert_same_history, drive_rounds, initial_models, make_nodes


def _exchange(nodes, trained: list[np.ndarray]) -> list[Send]:
    """One round for two nodes whose training produced ``trained``; returns their sends."""
    sends = []
    for node, x in zip(nodes, trained, strict=True):
        node.ctx.model.copy_(torch.from_numpy(x))
        sends.append(next(a for a in node.handle(TrainingDone(1)) if isinstance(a, Send)))
    for i, s in enumerate(sends):
        nodes[s.dest].handle(MessageArrived(Message(i, s.dest, "model", s.iteration, s.payload)))
    return sends


def test_top_k_indices() -> None:
    s = np.array([0.1, 5.0, 0.3, 4.0, 0.2])
    assert top_k_indices(s, 2).tolist() == [1, 3]
    assert top_k_indices(s, 0).size == 0 and top_k_indices(s, 9).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("cls", "params"),
    [(TopK, TopKConfig(fraction=1.0)), (Subsampling, SubsamplingConfig(fraction=1.0))],
)
def test_full_fraction_equals_dpsgd(cls, params) -> None:
    dpsgd = drive_rounds(make_nodes(DPSGD, None, initial_models()), 4)
    assert_same_history(drive_rounds(make_nodes(cls, params, initial_models()), 4), dpsgd)


def test_topk_sends_current_values_of_most_changed_and_fills_with_own() -> None:
    x0 = [np.zeros(6, np.float32), np.ones(6, np.float32)]
    nodes = make_nodes(
        TopK, TopKConfig(fraction=0.5), [torch.from_numpy(x.copy()) for x in x0], edges=[(0, 1)]
    )
    for n in nodes:
        n.handle(Started())
    t0 = np.array([0.0, 3.0, 0.1, -2.0, 0.0, 1.0], np.float32)  # changes 3, -2, 1 are largest
    t1 = np.array([1.0, 1.0, 1.0, 1.0, 5.0, 1.5], np.float32)  # changes 4, 0.5 (+ a tie at 0)
    sends = _exchange(nodes, [t0, t1])
    p0 = sends[0].payload
    assert isinstance(p0, PartialPayload) and p0.indices.tolist() == [1, 3, 5]
    np.testing.assert_array_equal(p0.values, t0[[1, 3, 5]])
    got = sends[1].payload.indices
    assert got.size == 3 and {4, 5} <= set(got.tolist())
    # weights 1/2: sent coordinates are averaged, the others keep the receiver's own value
    expect0 = t0.copy()
    expect0[got] = (t0[got] + t1[got]) / 2
    np.testing.assert_allclose(nodes[0].ctx.model.numpy(), expect0)
    expect1 = t1.copy()
    expect1[[1, 3, 5]] = (t0[[1, 3, 5]] + t1[[1, 3, 5]]) / 2
    np.testing.assert_allclose(nodes[1].ctx.model.numpy(), expect1)


def test_topk_accumulator_holds_exactly_the_unsent_change() -> None:
    params = TopKConfig(fraction=0.25, accumulation=True)
    models = [torch.zeros(8), torch.zeros(8)]
    nodes = make_nodes(TopK, params, models, edges=[(0, 1)])
    for n in nodes:
        n.handle(Started())
    # node 0 changes 8 coordinates by 1..8: it sends the top 2 (coords 6, 7)
    d = np.arange(1, 9, dtype=np.float32)
    sends = _exchange(nodes, [d.copy(), np.zeros(8, np.float32)])
    assert sends[0].payload.indices.tolist() == [6, 7]
    np.testing.assert_array_equal(nodes[0].acc, np.r_[d[:6], 0, 0])
    # next round: training moves coord 0 by +10 from the averaged model
    x = nodes[0].ctx.model.numpy().copy()
    before = nodes[0].acc.copy()
    x[0] += 10
    sends = _exchange(nodes, [x, nodes[1].ctx.model.numpy().copy()])
    # unsent = previous unsent + this round's training change, minus what was just sent
    expected = before.copy()
    expected[0] += 10
    assert sends[0].payload.indices.tolist() == [0, 5]  # 11 and 6 are the largest pending
    expected[[0, 5]] = 0
    np.testing.assert_array_equal(nodes[0].acc, expected)


def test_subsampling_mask_from_seed_and_fill_with_own() -> None:
    models = initial_models(2, 1000)
    nodes = make_nodes(Subsampling, SubsamplingConfig(fraction=0.3), models, edges=[(0, 1)])
    for n in nodes:
        n.handle(Started())
    trained = [m.numpy().copy() + 1.0 for m in models]
    acts = []
    for node, x in zip(nodes, trained, strict=True):
        node.ctx.model.copy_(torch.from_numpy(x))
        acts.append(node.handle(TrainingDone(1)))
    sends = [next(a for a in actions if isinstance(a, Send)) for actions in acts]
    p = sends[1].payload
    assert isinstance(p, SeedMaskVector) and p.n == 1000
    wire = SeedMaskVector.decode(p.encode())
    idx = mask_indices(wire.seed, 1000, 0.3)
    assert abs(idx.size - 300) < 60 and p.nbytes == 24 + 4 * idx.size
    rec = next(a for a in acts[1] if isinstance(a, Record) and a.metric == "sent_fraction")
    assert rec.value == idx.size / 1000
    nodes[0].handle(MessageArrived(Message(1, 0, "model", 0, wire)))
    expect = trained[0].copy()
    expect[idx] = (trained[0][idx] + trained[1][idx]) / 2
    np.testing.assert_allclose(nodes[0].ctx.model.numpy(), expect, rtol=1e-6)
    assert sends[0].payload.seed != p.seed


@pytest.mark.parametrize(
    "algo",
    [
        ["algorithm.name=jwins"],
        ["algorithm.name=topk", "algorithm.fraction=0.2"],
        ["algorithm.name=subsampling", "algorithm.fraction=0.2"],
        ["algorithm.name=choco", "algorithm.fraction=0.2", "algorithm.compress=true"],
    ],
)
def test_runs_on_the_simulator_and_saves_bytes(algo) -> None:
    cfg = small(*algo, "stop.iterations=3", "stop.virtual_time_s=1000")
    setup = build_setup(cfg)
    sim = Simulator(setup)
    result = sim.run()
    assert result.finished_all and (result.iterations == 3).all()
    dense = 6 * 2 * 3 * (HEADER_BYTES + 4 + 4 * setup.model.layout.numel)
    assert result.bytes_sent.sum() < dense
    assert torch.isfinite(sim.models).all()
    metrics = {row[3] for row in sim.recorder.rows}
    assert "sent_fraction" in metrics
