"""D-PSGD as a sans-I/O state machine, fed events by hand, and on the simulator."""

from __future__ import annotations

import numpy as np
import torch

from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.message import Message
from peerlearn.compute.sampler import MinibatchStream
from peerlearn.compute.trainer import BatchedTrainer, TrainJob
from peerlearn.experiment import build_setup
from peerlearn.protocols.base import (
    Finish,
    MessageArrived,
    NodeContext,
    Send,
    Started,
    Train,
    TrainingDone,
)
from peerlearn.protocols.dpsgd import DPSGD, metropolis_hastings
from peerlearn.sim.engine import Simulator
from tests.conftest import small


def _node(i: int, neighbors: tuple[int, ...], model: torch.Tensor, cap: int | None = None) -> DPSGD:
    ctx = NodeContext(i, 4, neighbors, model, np.random.default_rng(i))
    return DPSGD(ctx, None, local_steps=5, max_iterations=cap)


def test_round_by_hand_fully_connected_is_the_mean() -> None:
    models = [torch.full((4,), float(i)) for i in range(3)]
    nodes = [_node(i, tuple(j for j in range(3) if j != i), models[i]) for i in range(3)]
    assert nodes[0].handle(Started()) == [Train(5)]
    outbox: list[Send] = []
    for node in nodes:
        acts = node.handle(TrainingDone(5))
        assert all(isinstance(a, Send) for a in acts) and len(acts) == 2
        outbox += [(node.ctx.node, a) for a in acts]
    replies = []
    for src, send in outbox:
        assert isinstance(send.payload, DenseVector) and send.payload.degree == 2
        msg = Message(src, send.dest, send.kind, send.iteration, send.payload)
        replies += nodes[send.dest].handle(MessageArrived(msg))
    assert replies == [Train(5)] * 3  # each node averaged once and started the next round
    for node in nodes:
        assert node.iteration == 1
        torch.testing.assert_close(node.ctx.model, torch.full((4,), 1.0))


def test_waits_for_every_neighbour_and_buffers_later_rounds() -> None:
    node = _node(0, (1, 2), torch.zeros(3), cap=2)
    node.handle(Started())
    node.handle(TrainingDone(5))
    early = Message(1, 0, "model", 1, DenseVector(torch.ones(3), 2))  # round 1 before round 0
    assert node.handle(MessageArrived(early)) == []
    for j in (1, 2):
        assert node.iteration == 0
        acts = node.handle(
            MessageArrived(Message(j, 0, "model", 0, DenseVector(torch.full((3,), 3.0), 2)))
        )
    assert acts == [Train(5)] and node.iteration == 1
    torch.testing.assert_close(node.ctx.model, torch.full((3,), 2.0))  # (0 + 3 + 3) / 3
    # round 1: the early model is already there; one more neighbour and training finish it
    node.handle(TrainingDone(5))
    acts = node.handle(MessageArrived(Message(2, 0, "model", 1, DenseVector(torch.ones(3), 2))))
    assert acts == [Finish()] and node.finished
    assert node.handle(Started()) == []  # a finished node takes no events


def test_metropolis_hastings_weights() -> None:
    w = metropolis_hastings(2, {1: 2, 5: 4})
    assert w[1] == 1 / 3 and w[5] == 1 / 5
    assert abs(sum(w.values()) - 1) < 1e-12
    # symmetric: what i gives j equals what j gives i
    assert metropolis_hastings(4, {0: 2})[0] == metropolis_hastings(2, {5: 4})[5]


def test_fully_connected_equals_centralized_averaging_each_round() -> None:
    rounds = 3
    cfg = small("topology.kind=full", "stop.iterations=3", "stop.virtual_time_s=1000")
    setup = build_setup(cfg)
    sim = Simulator(setup)
    result = sim.run()
    assert result.finished_all and (result.iterations == rounds).all()

    # the same thing done centrally: every node trains from the average, then average again
    ds = setup.dataset
    trainer = BatchedTrainer(setup.model, ds.train_x, ds.train_y, lr=cfg.train.lr)
    streams = [
        MinibatchStream(setup.partition.train[i], cfg.train.batch_size, cfg.seed, i)
        for i in range(cfg.nodes)
    ]
    x = setup.model.init_vector()
    for _ in range(rounds):
        trained = [
            trainer.run_one_reference(TrainJob(x.clone(), s.take(cfg.train.local_steps)))
            for s in streams
        ]
        x = torch.stack(trained).mean(0)
    for i in range(cfg.nodes):
        torch.testing.assert_close(sim.models[i], x, atol=1e-5, rtol=1e-4)
