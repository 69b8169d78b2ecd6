"""Gossip learning: one push per local training, age-weighted or plain merge, by hand and run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peerlearn.algorithms.gossip import Gossip, GossipConfig
from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.message import Message
from peerlearn.experiment import build_setup
from peerlearn.protocols.base import Finish, NodeContext, Record, Send, Started, Train, TrainingDone
from peerlearn.sim.engine import Simulator
from tests.conftest import small


def _node(model: torch.Tensor, merge: str = "age", n: int = 4, cap: int | None = None) -> Gossip:
    ctx = NodeContext(0, n, (), model, np.random.default_rng(0))
    return Gossip(ctx, GossipConfig(merge=merge), local_steps=3, max_iterations=cap)


def _msg(src: int, values: list[float], age: int, it: int = 0) -> Message:
    return Message(src, 0, "model", it, DenseVector(torch.tensor(values), degree=age))


def test_one_push_of_model_and_age_per_local_training() -> None:
    node = _node(torch.zeros(2), n=5, cap=3)
    assert node.handle(Started()) == [Train(3)]
    peers = []
    for k in range(1, 4):
        node.ctx.model.add_(1.0)  # what the trainer would have done
        acts = node.handle(TrainingDone(3))
        sends = [a for a in acts if isinstance(a, Send)]
        assert len(sends) == 1 and sends[0].dest != 0 and sends[0].kind == "model"
        assert sends[0].payload.degree == k  # the age: one update per local training
        torch.testing.assert_close(sends[0].payload.values, torch.full((2,), float(k)))
        assert sends[0].payload.values.data_ptr() != node.ctx.model.data_ptr()  # a snapshot
        peers.append(sends[0].dest)
        assert acts[-1] == (Finish() if k == 3 else Train(3))
    assert node.finished and node.iteration == 3


def test_age_weighted_merge_by_hand() -> None:
    node = _node(torch.tensor([1.0, 2.0]))
    node.handle(Started())
    node.handle(TrainingDone(3))  # own age 1
    node.handle(TrainingDone(3))  # own age 2, nothing waiting: model unchanged
    assert node.handle_message(_msg(1, [4.0, 8.0], age=1)) == []
    assert node.handle_message(_msg(2, [7.0, -1.0], age=5)) == []
    acts = node.handle(TrainingDone(3))  # own age 3 before the merge
    # (3 * [1, 2] + 1 * [4, 8] + 5 * [7, -1]) / (3 + 1 + 5) = [42, 9] / 9
    torch.testing.assert_close(node.ctx.model, torch.tensor([42.0 / 9, 1.0]))
    assert node.age == 5  # the oldest lineage
    assert Record("models_merged", 2.0) in acts and Record("model_age", 5.0) in acts
    sent = next(a for a in acts if isinstance(a, Send))
    assert sent.payload.degree == 3  # what was pushed is the model before the merge
    torch.testing.assert_close(sent.payload.values, torch.tensor([1.0, 2.0]))


def test_plain_average_merge_and_newest_copy_per_sender() -> None:
    node = _node(torch.tensor([3.0]), merge="average")
    node.handle(Started())
    node.handle_message(_msg(1, [9.0], age=4))
    node.handle_message(_msg(1, [6.0], age=2))  # older than the one waiting: ignored
    node.handle_message(_msg(2, [0.0], age=1))
    node.handle(TrainingDone(3))
    torch.testing.assert_close(node.ctx.model, torch.tensor([4.0]))  # (3 + 9 + 0) / 3
    assert node.age == 4 and node.inbox == {}


def test_a_model_of_the_wrong_size_or_age_is_refused() -> None:
    node = _node(torch.zeros(2))
    with pytest.raises(ValueError, match="whole model of 2 values"):
        node.handle_message(_msg(1, [1.0, 2.0, 3.0], age=1))
    with pytest.raises(ValueError, match="age 0"):
        node.handle_message(_msg(1, [1.0, 2.0], age=0))


def test_simulated_gossip_pushes_once_per_training_and_learns() -> None:
    cfg = small("algorithm.name=gossip", "eval.log_messages=true")
    sim = Simulator(build_setup(cfg))
    result = sim.run()
    trainings = {i: 0 for i in range(cfg.nodes)}
    for _t, node, _it, metric, _v in sim.recorder.rows:
        if metric == "iteration_end":
            trainings[node] += 1
    sent = {i: 0 for i in range(cfg.nodes)}
    for src, dst, kind, *_ in sim.message_log:
        assert kind == "model" and src != dst
        sent[src] += 1
    # every push is delivered by the end unless it was still on the wire
    in_flight = len(sim.messages)
    assert sum(trainings.values()) == sum(sent.values()) + in_flight
    assert all(v > 5 for v in trainings.values())
    acc = [r[4] for r in sim.recorder.rows if r[3] == "test_acc_mean"]
    assert acc[-1] > acc[0] + 0.2
    assert result.messages_delivered == len(sim.message_log)
