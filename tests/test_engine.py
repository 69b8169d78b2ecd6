"""The virtual-time engine: timing by hand, byte accounting, lazy batching, cancellation."""

from __future__ import annotations

import gc

import pytest
import torch

from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.message import HEADER_BYTES, Message
from peerlearn.config import ConfigError, load_config
from peerlearn.experiment import build_setup
from peerlearn.protocols import registry
from peerlearn.protocols.base import (
    DropPending,
    Finish,
    MessageArrived,
    Protocol,
    Record,
    Send,
    Train,
)
from peerlearn.sim import engine
from peerlearn.sim.engine import Simulator
from peerlearn.sim.send_buffer import AUTOTUNE, SendBuffer, send_buffer_of
from tests.conftest import small


def two_nodes(k: int, steps: int, step_time: float, mbps: float, lat_ms: float, *extra: str):
    """Two D-PSGD nodes on one link for ``k`` iterations: round times computable by hand."""
    return small(
        "nodes=2",
        "topology.kind=full",
        f"stop.iterations={k}",
        "stop.virtual_time_s=1000",
        f"compute.step_time_s={step_time}",
        f"train.local_steps={steps}",
        f"network.mbps={mbps}",
        f"network.latency_ms={lat_ms}",
        *extra,
    )


def test_two_nodes_round_time_by_hand() -> None:
    k, steps, step_time, mbps, lat_ms = 4, 3, 0.02, 8.0, 5.0
    cfg = two_nodes(k, steps, step_time, mbps, lat_ms)
    setup = build_setup(cfg)
    result = Simulator(setup).run()
    p = setup.model.layout.numel
    nbytes = HEADER_BYTES + 4 + 4 * p  # header + degree + float32 model
    # one flow per uplink and per downlink: full rate; delivered latency after the last byte
    round_time = steps * step_time + nbytes / (mbps * 1e6 / 8) + lat_ms / 1000
    assert result.virtual_time_s == pytest.approx(k * round_time, rel=1e-9)
    assert result.bytes_sent.tolist() == [k * nbytes] * 2
    assert result.counters.delivered.sum() == 2 * k * nbytes
    c = result.counters
    assert (c.data + c.meta == c.delivered).all() and c.wasted.sum() == 0


def test_compute_straggler_slows_the_synchronous_round() -> None:
    base = [
        "nodes=2",
        "topology.kind=full",
        "stop.iterations=2",
        "stop.virtual_time_s=1000",
        "network.preset=ideal",
    ]
    fast = Simulator(build_setup(small(*base))).run()
    slow = Simulator(build_setup(small(*base, "compute.factors=[1.0, 3.0]"))).run()
    assert slow.virtual_time_s == pytest.approx(3 * fast.virtual_time_s)


def test_lazy_batching_equals_training_each_node_alone() -> None:
    # uneven compute: jobs start and end at different times and are batched in varying groups
    extra = [
        "compute.factors=[1.0, 1.5, 2.0, 1.0, 3.0, 1.2]",
        "topology.kind=ring",
        "stop.virtual_time_s=2",
        "data.partition=dirichlet",
    ]
    a = Simulator(build_setup(small(*extra)))
    ra = a.run()
    b = Simulator(build_setup(small(*extra, "compute.batched=false")))
    rb = b.run()
    assert ra.train_batches < ra.train_jobs  # jobs really were run together
    assert (ra.iterations == rb.iterations).all()
    torch.testing.assert_close(a.models, b.models, atol=1e-5, rtol=1e-4)


class _SendThenDrop(Protocol):
    """Node 0 sends two big messages to node 1, then drops them after its training."""

    name = "dpsgd"

    def on_start(self):
        if self.ctx.node != 0:
            return []
        big = DenseVector(torch.zeros(250_000))  # 1 MB
        return [Send(1, "x", 0, big), Send(1, "x", 0, big), Train(1)]

    def on_training_done(self, steps):
        return [DropPending(before_iteration=1)]

    def on_message(self, message):
        return [Record("got", 1.0)]


def _send_then_drop(monkeypatch, *extra: str) -> tuple[Simulator, object]:
    """Two 1 MB messages over 8 Mbit/s = 1 MB/s; the drop at 0.5 s finds the first half sent
    and the second still queued."""
    monkeypatch.setitem(registry.PROTOCOLS, "dpsgd", _SendThenDrop)
    cfg = small(
        "nodes=2",
        "topology.kind=full",
        "network.mbps=8",
        "compute.step_time_s=0.5",
        "stop.virtual_time_s=5",
        *extra,
    )
    sim = Simulator(build_setup(cfg))
    return sim, sim.run()


def test_drop_pending_cancels_queued_and_in_flight(monkeypatch) -> None:
    sim, result = _send_then_drop(monkeypatch)
    assert result.messages_delivered == 0 and result.messages_dropped == 2
    assert not [r for r in sim.recorder.rows if r[3] == "got"]
    assert result.bytes_sent[0] == pytest.approx(0.5e6)
    assert result.counters.wasted[0] == pytest.approx(0.5e6)


def test_drop_pending_can_leave_the_message_in_transmission(monkeypatch) -> None:
    # network.recall_in_flight = false: the half-sent message finishes, the queued one is dropped
    _, result = _send_then_drop(
        monkeypatch,
        "network.latency_ms=0",
        "network.recall_in_flight=false",
        "eval.log_messages=true",
    )
    assert result.messages_delivered == 1 and result.messages_dropped == 1
    assert result.counters.wasted[0] == 0
    (row,) = result.message_log
    assert row[4] > 1e6  # the 1 MB payload and its header
    assert row[6] == pytest.approx(row[4] / 1e6)  # sent at 0, at 1 MB/s, not slowed by the drop


@pytest.mark.parametrize(
    ("beyond_head", "delivered"),
    [
        (None, 0),  # no buffer: both recalled, as by default
        (0, 1),  # the second message starts exactly at the buffer's end: dropped
        (1, 2),  # it is (just) in the kernel: kept, and delivered after the first
    ],
)
def test_drop_pending_leaves_what_the_send_buffer_holds(monkeypatch, beyond_head, delivered):
    # at the drop (0.5 s at 1 MB/s) the first message has nbytes - 0.5 MB left: the second one's
    # first byte lies that far beyond what was transmitted
    nbytes = Message(0, 1, "x", 0, DenseVector(torch.zeros(250_000)), 0, 0.0).nbytes
    buffer = 0 if beyond_head is None else nbytes - 500_000 + beyond_head
    _, result = _send_then_drop(
        monkeypatch,
        "network.latency_ms=0",
        f"network.send_buffer={buffer}",
        "eval.log_messages=true",
    )
    assert result.messages_delivered == delivered and result.messages_dropped == 2 - delivered
    # sent at 0 at 1 MB/s, one after the other: delivered at 1 s and 2 s (plus headers)
    for k, row in enumerate(result.message_log):
        assert row[6] == pytest.approx((k + 1) * row[4] / 1e6)


def test_send_buffer_deploy_is_sized_as_the_deployment_sets_its_sockets() -> None:
    def buffer(*extra: str):
        cfg = load_config(None, list(extra))
        return send_buffer_of(cfg.network, cfg.deploy)

    assert buffer() is None
    assert buffer("network.recall_in_flight=false") == SendBuffer(0, 0)
    assert buffer("network.send_buffer=deploy", "deploy.sndbuf_bytes=8192") == SendBuffer(16384, 1)
    # the kernel's default buffers: Linux's autotuning (CUBIC unless the hosts run BBR)
    cubic, bbr = AUTOTUNE["cubic"], AUTOTUNE["bbr"]
    for spelled in ("'deploy'", "autotune"):
        assert buffer(f"network.send_buffer={spelled}") == SendBuffer(
            cubic.wmem_max * 2 / 3, 1, cubic
        )
    assert buffer("network.send_buffer=deploy", "network.send_buffer_frames=0").frames == 0
    tuned = buffer("network.send_buffer=autotune", "network.tcp_congestion=bbr")
    assert tuned is not None and tuned.autotune == bbr and tuned.frames == 1
    assert buffer("network.send_buffer=4194304", "network.send_buffer_frames=1") == SendBuffer(
        4 * 1024 * 1024, 1
    )  # the fixed 4 MiB that "deploy" meant before the autotuning model
    assert buffer("network.send_buffer=20000") == SendBuffer(20000, 0)
    assert buffer("network.send_buffer_frames=2") == SendBuffer(0, 2)
    for bad in ("network.send_buffer=-1", "network.send_buffer=kernel"):
        with pytest.raises(ConfigError, match="send_buffer"):
            load_config(None, [bad])
    # the congestion control only means something for an autotuned buffer
    for bad in (
        ["network.tcp_congestion=bbr"],
        ["network.send_buffer=8192", "network.tcp_congestion=cubic"],
    ):
        with pytest.raises(ConfigError, match="tcp_congestion only applies"):
            load_config(None, bad)
    with pytest.raises(ConfigError, match="tcp_congestion"):
        load_config(None, ["network.send_buffer=autotune", "network.tcp_congestion=reno"])


def test_autotuned_send_buffer_runs_are_reproducible() -> None:
    extra = [
        "network.preset=stragglers",
        "network.stragglers=2",
        "network.fast_mbps=0.2",
        "algorithm.name=divshare",
        "eval.log_messages=true",
    ]
    tuned = [*extra, "network.send_buffer=autotune", "network.tcp_congestion=bbr"]
    results = []
    for _ in range(2):
        sim = Simulator(build_setup(small(*tuned)))
        result = sim.run()
        results.append((sim.recorder.rows, result.message_log, result.messages_dropped))
    assert results[0] == results[1]
    # the buffer matters: a flush keeps what it holds, so fewer messages are dropped than
    # when a flush recalls everything
    assert 0 < results[0][2] < Simulator(build_setup(small(*extra))).run().messages_dropped


def test_message_log_times_each_delivery() -> None:
    k, steps, step_time, mbps, lat_ms = 3, 3, 0.02, 8.0, 5.0
    cfg = two_nodes(k, steps, step_time, mbps, lat_ms, "eval.log_messages=true")
    setup = build_setup(cfg)
    result = Simulator(setup).run()
    nbytes = HEADER_BYTES + 4 + 4 * setup.model.layout.numel
    log = result.message_log
    assert log is not None and len(log) == result.messages_delivered == 2 * k
    round_time = steps * step_time + nbytes / (mbps * 1e6 / 8) + lat_ms / 1000
    for src, dst, kind, it, size, sent, delivered in log:
        assert (src, dst, kind, size) == (src, 1 - src, "model", nbytes)
        # D-PSGD sends right after training: (it + 1) rounds' compute, `it` rounds before it
        assert sent == pytest.approx(it * round_time + steps * step_time, rel=1e-9)
        assert delivered - sent == pytest.approx(round_time - steps * step_time, rel=1e-9)
    assert Simulator(build_setup(small("nodes=2"))).run().message_log is None


def test_run_restores_the_garbage_collector() -> None:
    """The loop tunes the cyclic collector for its own allocations; the caller gets it back."""
    before = gc.get_threshold()
    sim = Simulator(build_setup(two_nodes(2, 2, 0.01, 8.0, 1.0)))
    seen: list[tuple[int, int, int]] = []
    loop = sim._loop
    sim._loop = lambda: (seen.append(gc.get_threshold()), loop())[1]
    sim.run()
    assert seen[0] == (max(before[0], engine._GC_GEN0_THRESHOLD), *before[1:])  # while it ran
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0 and gc.isenabled()


class _StopOnSecondMessage(Protocol):
    """Counts arrivals; the second one ends the node."""

    def on_start(self):
        return []

    def on_training_done(self, steps):
        return []

    def on_message(self, message):
        self.iteration += 1
        return [Record("got", float(message.src))] + ([Finish()] if self.iteration == 2 else [])


def test_handle_message_is_handle_of_message_arrived() -> None:
    """The engine's delivery path skips the event object; actions and state must not change."""
    msgs = [Message(s, 0, "x", 0, DenseVector(torch.zeros(2))) for s in (1, 2, 3)]
    by_event, direct = (
        _StopOnSecondMessage(None, None, local_steps=1, max_iterations=None) for _ in range(2)
    )
    for m in msgs:
        assert by_event.handle(MessageArrived(m)) == direct.handle_message(m)
        assert (by_event.finished, by_event.iteration) == (direct.finished, direct.iteration)
    assert direct.finished and direct.iteration == 2
