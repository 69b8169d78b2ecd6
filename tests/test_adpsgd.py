"""AD-PSGD: the artifact's ping/reply variant and the atomic pairwise one, by hand and simulated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peerlearn.codecs.fragment import FragmentPayload
from peerlearn.codecs.message import Message
from peerlearn.config.algorithms_async import ADPSGDConfig
from peerlearn.experiment import build_setup
from peerlearn.protocols.adpsgd import ADPSGD, ADPSGDArtifact, ADPSGDAtomic
from peerlearn.protocols.base import (
    DropPending,
    MessageArrived,
    NodeContext,
    Record,
    Send,
    SetTimer,
    Started,
    TimerFired,
    Train,
    TrainingDone,
)
from peerlearn.sim.engine import Simulator
from tests.conftest import small


def _node(node: int, model: torch.Tensor, n: int = 5, **params) -> ADPSGD:
    ctx = NodeContext(node, n, (), model, np.random.default_rng([3, node]), run_seed=3)
    return ADPSGD(ctx, ADPSGDConfig(**params), local_steps=4, max_iterations=None)


def _arrive(src: int, dst: int, send: Send) -> MessageArrived:
    return MessageArrived(Message(src, dst, send.kind, send.iteration, send.payload))


def _vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _sends(actions) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


# -- artifact variant -----------------------------------------------------------------------


def test_variant_picks_the_class() -> None:
    assert isinstance(_node(0, torch.zeros(2)), ADPSGDArtifact)
    assert isinstance(_node(0, torch.zeros(2), variant="atomic"), ADPSGDAtomic)


def test_pings_half_the_fanout_with_the_post_training_snapshot_and_never_flushes() -> None:
    x = _vec(1, 2)
    node = _node(2, x, n=5, fanout=6)
    assert node.handle(Started()) == [Train(4)]
    x.add_(10.0)  # the trainer's result
    acts = node.handle(TrainingDone(4))
    pings = _sends(acts)
    assert len(pings) == 3 and all(p.kind == "ping" and p.dest != 2 for p in pings)
    assert all(torch.equal(p.payload.values, _vec(11, 12)) for p in pings)
    assert not any(isinstance(a, DropPending) for a in acts)
    assert acts[-1] == Train(4)
    # drawn with replacement: over many iterations some iteration repeats a peer
    repeats = 0
    for _ in range(30):
        dests = [p.dest for p in _sends(node.handle(TrainingDone(4)))]
        repeats += len(set(dests)) < len(dests)
    assert repeats > 0


def test_a_ping_is_answered_at_once_even_while_training_with_the_newest_snapshot() -> None:
    x = _vec(1, 1)
    node = _node(0, x)
    node.handle(Started())  # training now; the newest snapshot is the initial model
    ping = Send(0, "ping", 0, FragmentPayload(0, _vec(5, 5)))
    (reply,) = node.handle(_arrive(3, 0, ping))
    assert reply.kind == "reply" and reply.dest == 3 and reply.iteration == -1
    assert torch.equal(reply.payload.values, _vec(1, 1))
    x.copy_(_vec(2, 4))  # training finished with this model
    node.handle(TrainingDone(4))
    (reply,) = node.handle(_arrive(4, 0, Send(0, "ping", 0, FragmentPayload(0, _vec(0, 0)))))
    assert reply.kind == "reply" and reply.iteration == 0
    assert torch.equal(reply.payload.values, _vec(2, 4))  # the snapshot, not the averaged model
    # a reply is folded in but never answered
    assert node.handle(_arrive(1, 0, Send(0, "reply", 0, FragmentPayload(0, _vec(9, 9))))) == []


def test_aggregation_is_the_uniform_mean_of_own_and_newest_per_sender() -> None:
    x = _vec(0, 0)
    node = _node(0, x)
    node.handle(Started())
    for src, it, val in ((1, 0, 3.0), (1, 2, 6.0), (1, 1, 100.0), (2, 0, 3.0)):
        msg = Send(0, "reply", it, FragmentPayload(0, _vec(val, val)))
        node.handle(_arrive(src, 0, msg))
    x.copy_(_vec(0, 3))
    acts = node.handle(TrainingDone(4))
    torch.testing.assert_close(x, _vec(3, 4))  # (own + 6 + 3) / 3
    rec = {a.metric: a.value for a in acts if isinstance(a, Record)}
    assert rec["copies_used"] == 2 and rec["fragments_received"] == 4
    assert rec["aggregation_age_mean"] == pytest.approx(((0 - 2) + (0 - 0)) / 2)


# -- atomic variant -----------------------------------------------------------------------


def _atomic(node: int, model: torch.Tensor, n: int = 2, fanout: int = 2) -> ADPSGDAtomic:
    proto = _node(node, model, n=n, fanout=fanout, variant="atomic", reply_timeout_s=5.0)
    assert isinstance(proto, ADPSGDAtomic)
    return proto


def test_atomic_exchange_sets_both_to_the_average_then_applies_each_update() -> None:
    xa, xb = _vec(0, 0), _vec(4, 8)
    a, b = _atomic(0, xa), _atomic(1, xb)
    a.handle(Started())
    b.handle(Started())
    xa.copy_(_vec(1, 1))  # a's update: +1
    acts = a.handle(TrainingDone(4))
    (ping,) = _sends(acts)
    assert ping.kind == "ping" and ping.dest == 1
    assert torch.equal(ping.payload.values, _vec(0, 0))  # the model before the update
    assert any(isinstance(t, SetTimer) for t in acts)
    # b is still training: it serves the ping on its own copy, the trainer's vector is untouched
    (reply,) = _sends(b.handle(_arrive(0, 1, ping)))
    assert reply.kind == "reply" and torch.equal(reply.payload.values, _vec(2, 4))
    assert torch.equal(xb, _vec(4, 8))
    acts = a.handle(_arrive(1, 0, reply))
    torch.testing.assert_close(xa, _vec(3, 5))  # average + own update
    assert acts[-1] == Train(4) and a.iteration == 1
    xb.copy_(_vec(4, 9))  # b's trainer: update (0, +1) computed from the model it read
    b_acts = b.handle(TrainingDone(4))
    (b_ping,) = _sends(b_acts)
    torch.testing.assert_close(b_ping.payload.values, _vec(2, 4))  # the averaged model


def test_atomic_crossing_pings_average_once() -> None:
    xa, xb = _vec(0, 0), _vec(2, 2)
    a, b = _atomic(0, xa), _atomic(1, xb)
    for p in (a, b):
        p.handle(Started())
    (pa,) = _sends(a.handle(TrainingDone(4)))  # no updates: x unchanged by training
    (pb,) = _sends(b.handle(TrainingDone(4)))
    (ans_b,) = _sends(b.handle(_arrive(0, 1, pa)))  # b (higher id) declines
    assert ans_b.kind == "decline" and ans_b.payload.values.numel() == 0
    (ans_a,) = _sends(a.handle(_arrive(1, 0, pb)))  # a serves
    assert ans_a.kind == "reply"
    a.handle(_arrive(1, 0, ans_b))
    b.handle(_arrive(0, 1, ans_a))
    torch.testing.assert_close(xa, _vec(1, 1))
    torch.testing.assert_close(xb, _vec(1, 1))


def test_atomic_timeout_unblocks_and_a_late_reply_still_keeps_the_sum() -> None:
    xa, xb = _vec(0.0), _vec(8.0)
    a, b = _atomic(0, xa), _atomic(1, xb)
    a.handle(Started())
    (ping,) = _sends(a.handle(TrainingDone(4)))
    acts = a.handle(TimerFired("reply:1"))
    assert acts[-1] == Train(4) and a.iteration == 1
    (reply,) = _sends(b.handle(_arrive(0, 1, ping)))  # b was idle (not started): serves at once
    assert torch.equal(xb, _vec(4.0))
    a.handle(TrainingDone(4))  # a trains again (no update) and pings b again
    assert a.handle(_arrive(1, 0, reply)) == []  # the late reply: applied, nothing unblocked
    assert float(xa + xb) == pytest.approx(8.0)
    assert a.handle(TimerFired("reply:1")) == []  # a stale timer does nothing


def test_atomic_exchanges_conserve_the_sum_under_any_interleaving() -> None:
    n = 4
    xs = [torch.full((3,), float(10 * i)) for i in range(n)]
    nodes = [_atomic(i, xs[i], n=n, fanout=6) for i in range(n)]
    rng = np.random.default_rng(0)
    inflight: list[tuple[int, Send]] = []
    for p in nodes:
        p.handle(Started())
    training = set(range(n))
    total = sum(float(x.sum()) for x in xs)
    for _ in range(400):
        choices = [("done", i) for i in training] + [("msg", k) for k in range(len(inflight))]
        kind, k = choices[rng.integers(len(choices))]
        if kind == "done":
            training.discard(k)
            acts = nodes[k].handle(TrainingDone(4))
            src = k
        else:
            # deliver the oldest message of a random (src, dst) connection: FIFO per pair
            src, send = inflight[k]
            first = next(i for i, (s, m) in enumerate(inflight) if (s, m.dest) == (src, send.dest))
            src, send = inflight.pop(first)
            acts = nodes[send.dest].handle(_arrive(src, send.dest, send))
            src = send.dest
        inflight += [(src, a) for a in acts if isinstance(a, Send)]
        training |= {src} if any(isinstance(a, Train) for a in acts) else set()
    # no training changes the model here, so the models' sum is exactly conserved once the
    # messages in flight are delivered
    while inflight:
        src, send = inflight.pop(0)
        for a in nodes[send.dest].handle(_arrive(src, send.dest, send)):
            if isinstance(a, Send):
                inflight.append((send.dest, a))
    logical = [p._model() for p in nodes]
    assert sum(float(x.sum()) for x in logical) == pytest.approx(total, rel=1e-6)
    assert max(float(x.max()) for x in logical) < 30.0  # they did mix


# -- on the simulator ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["artifact", "atomic"])
def test_simulated_runs_finish_and_are_deterministic(variant: str) -> None:
    args = ("algorithm.name=adpsgd", f"algorithm.variant={variant}", "stop.iterations=4")
    args += ("stop.virtual_time_s=100", "compute.step_time_s=0.05")
    runs = [Simulator(build_setup(small(*args))) for _ in range(2)]
    results = [s.run() for s in runs]
    assert all(r.finished_all for r in results)
    assert torch.equal(runs[0].models, runs[1].models)
    assert runs[0].recorder.rows == runs[1].recorder.rows
    assert results[0].messages_delivered > 0 and results[0].messages_dropped == 0


def test_atomic_survives_a_lost_reply() -> None:
    xa, xb = _vec(0.0), _vec(8.0)
    a, b = _atomic(0, xa), _atomic(1, xb)
    a.handle(Started())
    a.handle(TrainingDone(4))  # ping 1 to b: its reply will be lost
    a.handle(TimerFired("reply:1"))
    (ping2,) = _sends(a.handle(TrainingDone(4)))
    (reply2,) = _sends(b.handle(_arrive(0, 1, ping2)))
    acts = a.handle(_arrive(1, 0, reply2))
    assert acts[-1] == Train(4) and a.iteration == 2
    rec = {r.metric: r.value for r in acts if isinstance(r, Record)}
    assert rec["exchanges_lost"] == 1 and rec["exchanges_completed"] == 1
    torch.testing.assert_close(xa, _vec(4.0))
