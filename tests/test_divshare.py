"""DivShare and Swift: fragments, fanout, flush and aggregation by hand; then on the simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peerlearn.codecs.fragment import FragmentPayload
from peerlearn.codecs.message import Message
from peerlearn.config.algorithms_async import DivShareConfig, SwiftConfig
from peerlearn.experiment import build_setup
from peerlearn.models.layout import ParamLayout
from peerlearn.protocols.base import (
    DropPending,
    Finish,
    MessageArrived,
    NodeContext,
    Record,
    Send,
    Started,
    Train,
    TrainingDone,
)
from peerlearn.protocols.divshare import DivShare
from peerlearn.protocols.fragments import fragment_partition, sample_peers
from peerlearn.protocols.swift import Swift
from peerlearn.sim.engine import Simulator
from tests.conftest import small

SHAPES = ((7, 5), (7,), (3,), (4, 4, 2))  # the (3,) tensor is smaller than Ω=4


def _layout(shapes=SHAPES) -> ParamLayout:
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = tuple(int(o) for o in np.cumsum([0, *sizes[:-1]]))
    names = tuple(f"p{i}" for i in range(len(shapes)))
    return ParamLayout(names, tuple(shapes), offsets, sum(sizes))


def _ctx(node: int, n: int, model: torch.Tensor, layout=None, seed: int = 7) -> NodeContext:
    return NodeContext(
        node=node,
        n_nodes=n,
        neighbors=(),
        model=model,
        rng=np.random.default_rng([seed, node]),
        run_seed=seed,
        layout=layout,
    )


def _divshare(node=0, n=10, model=None, fragments=4, fanout=3, flush=True, cap=None, layout=None):
    layout = layout or _layout()
    model = torch.arange(layout.numel, dtype=torch.float32) if model is None else model
    params = DivShareConfig(fragments=fragments, fanout=fanout, flush=flush)
    return DivShare(_ctx(node, n, model, layout), params, local_steps=5, max_iterations=cap)


def _msg(src: int, dst: int, it: int, k: int, values) -> MessageArrived:
    payload = FragmentPayload(k, torch.as_tensor(values, dtype=torch.float32))
    return MessageArrived(Message(src, dst, "fragment", it, payload))


def _records(actions) -> dict[str, float]:
    return {a.metric: a.value for a in actions if isinstance(a, Record)}


# -- fragments --------------------------------------------------------------------------------


@pytest.mark.parametrize("omega", [1, 2, 4, 10])
def test_fragments_partition_every_coordinate_once(omega: int) -> None:
    layout = _layout()
    frags = fragment_partition(layout.sizes(), omega, seed=3)
    assert len(frags) == omega
    allidx = torch.cat(frags)
    assert sorted(allidx.tolist()) == list(range(layout.numel))
    for k, f in enumerate(frags):
        assert torch.equal(f, torch.sort(f).values)
        # each fragment holds ⌊numel/Ω⌋ of every tensor; the last one also the remainders
        for off, size in zip(layout.offsets, layout.sizes(), strict=True):
            inside = int(((f >= off) & (f < off + size)).sum())
            step = size // omega
            assert inside == (size - (omega - 1) * step if k == omega - 1 else step)


def test_fragments_are_identical_across_nodes_and_depend_on_the_run_seed() -> None:
    a, b = _divshare(node=0), _divshare(node=5)
    assert all(torch.equal(x, y) for x, y in zip(a.fragments, b.fragments, strict=True))
    other = fragment_partition(_layout().sizes(), 4, seed=8)
    assert any(not torch.equal(x, y) for x, y in zip(a.fragments, other, strict=True))
    # a small tensor (3 < Ω) lands wholly in the last fragment, as in the artifact
    small_tensor = set(range(_layout().offsets[2], _layout().offsets[2] + 3))
    assert small_tensor <= set(a.fragments[-1].tolist())


def test_sample_peers_distinct_and_never_self() -> None:
    rng = np.random.default_rng(0)
    for me in range(5):
        for _ in range(50):
            peers = sample_peers(rng, 5, me, 4)
            assert len(set(peers)) == 4 and me not in peers


# -- one iteration by hand ------------------------------------------------------------------


def test_each_fragment_goes_to_r_distinct_peers_in_random_order() -> None:
    node = _divshare(node=3, n=10, fragments=4, fanout=3)
    assert node.handle(Started()) == [Train(5)]
    snapshot = node.ctx.model.clone()  # the "trained" model
    acts = node.handle(TrainingDone(5))
    sends = [a for a in acts if isinstance(a, Send)]
    assert len(sends) == 4 * 3
    per_fragment: dict[int, list[int]] = {}
    for s in sends:
        assert isinstance(s.payload, FragmentPayload) and s.iteration == 0
        assert s.dest != 3 and 0 <= s.dest < 10
        per_fragment.setdefault(s.payload.fragment, []).append(s.dest)
        torch.testing.assert_close(s.payload.values, snapshot[node.fragments[s.payload.fragment]])
    assert sorted(per_fragment) == [0, 1, 2, 3]
    assert all(len(set(d)) == 3 for d in per_fragment.values())
    order = [s.payload.fragment for s in sends]
    assert order != sorted(order)  # shuffled, not fragment by fragment
    assert acts[-1] == Train(5)


def test_flush_comes_before_the_new_sends_and_only_in_divshare() -> None:
    node = _divshare()
    node.handle(Started())
    acts = node.handle(TrainingDone(5))
    assert isinstance(acts[0], DropPending) and acts[0].before_iteration is None
    assert sum(isinstance(a, DropPending) for a in acts) == 1
    no_flush = _divshare(flush=False)
    no_flush.handle(Started())
    assert not any(isinstance(a, DropPending) for a in no_flush.handle(TrainingDone(5)))
    ctx = _ctx(0, 10, torch.zeros(20))
    sw = Swift(ctx, SwiftConfig(fanout=6), local_steps=5, max_iterations=None)
    sw.handle(Started())
    acts = sw.handle(TrainingDone(5))
    assert not any(isinstance(a, DropPending) for a in acts)
    sends = [a for a in acts if isinstance(a, Send)]
    assert len(sends) == 6 and len({s.dest for s in sends}) == 6  # full model to r peers
    assert all(s.payload.values.numel() == 20 for s in sends)


def test_aggregation_is_a_per_coordinate_mean_with_newest_copy_per_sender_and_fragment() -> None:
    # one tensor of 6 coordinates, Ω=2: fragments are 3 coordinates each
    layout = _layout(((6,),))
    x = torch.zeros(6)
    node = _divshare(node=0, n=5, model=x, fragments=2, fanout=2, layout=layout)
    f0, f1 = node.fragments
    node.handle(Started())
    node.iteration = 4  # pretend: this is the node's 5th iteration
    # sender 1, fragment 0: an old copy, then a newer one (replaces), then an older one (ignored)
    node.handle(_msg(1, 0, 2, 0, [10.0, 10.0, 10.0]))
    node.handle(_msg(1, 0, 3, 0, [30.0, 30.0, 30.0]))
    node.handle(_msg(1, 0, 1, 0, [99.0, 99.0, 99.0]))
    # sender 2: fragment 0 twice with the same tag: the later arrival wins
    node.handle(_msg(2, 0, 4, 0, [5.0, 5.0, 5.0]))
    node.handle(_msg(2, 0, 4, 0, [6.0, 6.0, 6.0]))
    # sender 3: fragment 1 only
    node.handle(_msg(3, 0, 4, 1, [4.0, 8.0, 12.0]))
    acts = node.handle(TrainingDone(5))
    expected = torch.zeros(6)
    expected[f0] = (0.0 + 30.0 + 6.0) / 3  # own + sender 1 (newest) + sender 2 (latest)
    expected[f1] = torch.tensor([4.0, 8.0, 12.0]) / 2  # own + sender 3
    torch.testing.assert_close(x, expected)
    rec = _records(acts)
    assert rec["fragments_received"] == 6  # every arrival counts, as in the artifact
    assert rec["received_fraction"] == 6 / (2 * 2)
    assert rec["stale_ignored"] == 1
    assert rec["copies_used"] == 3
    assert rec["aggregation_age_mean"] == pytest.approx(((4 - 3) + 0 + 0) / 3)
    # sends carry the post-training snapshot, taken before aggregation
    sends = [a for a in acts if isinstance(a, Send)]
    assert all(float(s.payload.values.abs().sum()) == 0.0 for s in sends)
    assert node.iteration == 5 and not node.inbox
    # nothing received: the model is left alone
    before = x.clone()
    acts = node.handle(TrainingDone(5))
    torch.testing.assert_close(x, before)
    assert "aggregation_age_mean" not in _records(acts)


def test_rejects_fragments_that_do_not_fit_and_stops_at_the_cap() -> None:
    node = _divshare(cap=1)
    node.handle(Started())
    with pytest.raises(ValueError, match="does not fit"):
        node.handle(_msg(1, 0, 0, 9, [1.0]))
    with pytest.raises(ValueError, match="does not fit"):
        node.handle(_msg(1, 0, 0, 0, [1.0]))
    acts = node.handle(TrainingDone(5))
    assert acts[-1] == Finish() and node.finished


def test_fanout_is_capped_at_the_other_nodes() -> None:
    node = _divshare(n=3, fanout=6, fragments=2)
    node.handle(Started())
    sends = [a for a in node.handle(TrainingDone(5)) if isinstance(a, Send)]
    assert len(sends) == 2 * 2


# -- codec --------------------------------------------------------------------------------------


def test_fragment_payload_round_trip_and_validation() -> None:
    p = FragmentPayload(3, torch.tensor([1.5, -2.0, 3.25]))
    buf = p.encode()
    assert len(buf) == p.nbytes == 8 + 12 and p.data_bytes == 12 and p.meta_bytes == 8
    q = FragmentPayload.decode(buf, n_fragments=4, expected_len=3)
    assert q.fragment == 3 and torch.equal(q.values, p.values)
    assert len(FragmentPayload(0, torch.zeros(0)).encode()) == 8
    with pytest.raises(ValueError, match="shorter"):
        FragmentPayload.decode(b"\x00")
    with pytest.raises(ValueError, match="announces"):
        FragmentPayload.decode(buf[:-1])
    with pytest.raises(ValueError, match="out of range"):
        FragmentPayload.decode(buf, n_fragments=3)
    with pytest.raises(ValueError, match="expected 4"):
        FragmentPayload.decode(buf, expected_len=4)
    with pytest.raises(ValueError, match="1-D"):
        FragmentPayload(0, torch.zeros(2, 2))


# -- on the simulator ---------------------------------------------------------------------------

FAST = ["compute.step_time_s=0.05", "topology.kind=full"]


def _run(*extra: str) -> Simulator:
    sim = Simulator(build_setup(small(*FAST, *extra)))
    sim.result = sim.run()
    return sim


def test_runs_finish_and_are_deterministic() -> None:
    args = ("algorithm.name=divshare", "algorithm.fragments=3", "stop.iterations=4")
    a, b = _run(*args, "stop.virtual_time_s=100"), _run(*args, "stop.virtual_time_s=100")
    assert a.result.finished_all and (a.result.iterations == 4).all()
    assert torch.equal(a.models, b.models)
    assert a.recorder.rows == b.recorder.rows
    assert not torch.equal(a.models[0], a.models[1])  # asynchronous: nodes differ


@pytest.mark.parametrize("omega", [1, 5])
def test_bytes_per_iteration_are_r_models_whatever_omega(omega: int) -> None:
    sim = _run("algorithm.name=divshare", f"algorithm.fragments={omega}", "network.mbps=100")
    fanout = 5  # 6 nodes: r=6 is capped at 5 others
    numel = sim.models.shape[1]
    data = sim.result.counters.data.sum()
    iters = sim.result.iterations.sum()
    assert sim.result.counters.wasted.sum() == 0
    # what is still in flight at the end is at most one iteration per node
    assert data == pytest.approx(iters * fanout * 4 * numel, rel=0.05)


def _mean_metric(sim: Simulator, metric: str, node: int | None = None) -> float:
    rows = sim.recorder.rows
    return float(np.mean([v for _, n, _, m, v in rows if m == metric and node in (None, n)]))


def test_straggler_flush_wastes_bytes_while_swift_delivers_stale_models() -> None:
    # node 0 needs ~2 compute times to push one iteration's models: the artifact's regime
    net = ["network.preset=stragglers", "network.fast_mbps=1", "network.slowdown=5"]
    net += ["network.stragglers=1"]
    div = _run("algorithm.name=divshare", "algorithm.fragments=5", *net)
    swift = _run("algorithm.name=swift", *net)
    assert div.result.counters.wasted[0] > 0  # the straggler's flushed sends
    assert div.result.messages_dropped > 0
    assert swift.result.counters.wasted.sum() == 0 and swift.result.messages_dropped == 0
    # Swift's backlog: what the straggler receives, and what others get from it, grows old
    assert _mean_metric(swift, "aggregation_age_mean", 0) > 3 * _mean_metric(
        div, "aggregation_age_mean", 0
    )
    assert (
        _mean_metric(swift, "aggregation_age_mean")
        > _mean_metric(div, "aggregation_age_mean") + 0.5
    )
