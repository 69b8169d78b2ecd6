"""Flow-level network model: hand-computed schedules and max-min properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerlearn.sim.flows import (
    FlowNetwork,
    IncrementalFilling,
    max_min_rates,
    max_min_rates_reference,
)
from peerlearn.sim.send_buffer import AUTOTUNE, Autotune, SendBuffer

INF = math.inf


def net(up, down, **kw) -> FlowNetwork:
    return FlowNetwork(np.array(up, float), np.array(down, float), **kw)


def run_all(fn: FlowNetwork) -> list[tuple[int, float]]:
    """Advance from completion to completion until nothing is pending."""
    done: list[tuple[int, float]] = []
    while fn.pending():
        t = fn.next_completion_time()
        assert math.isfinite(t)
        done += fn.advance_to(t)
    return done


def test_single_flow_gets_min_of_up_and_down():
    fn = net([10, 10], [4, 4])
    fn.enqueue(7, 0, 1, 100)
    assert fn.rate(7) == 4
    assert fn.next_completion_time() == pytest.approx(25.0)
    assert fn.advance_to(24.0) == []
    assert fn.bytes_sent(7) == pytest.approx(96.0)
    assert fn.advance_to(25.0) == [(7, pytest.approx(25.0))]
    assert fn.pending() == []
    assert fn.next_completion_time() == INF
    assert fn.now == 25.0


def test_two_flows_from_one_sender_split_upload_and_run_in_parallel():
    fn = net([10, 100, 100], [100, 100, 100])
    fn.enqueue(1, 0, 1, 50)
    fn.enqueue(2, 0, 2, 50)
    assert fn.rate(1) == pytest.approx(5.0)
    assert fn.rate(2) == pytest.approx(5.0)
    done = fn.advance_to(100.0)
    # Same finishing time: reported together, in start order.
    assert done == [(1, pytest.approx(10.0)), (2, pytest.approx(10.0))]
    assert fn.now == 100.0


def test_max_min_gives_unused_share_to_the_other_flow():
    fn = net([10, INF, INF], [INF, 2, 100])
    fn.enqueue(1, 0, 1, 20)  # bottlenecked by receiver 1's downlink
    fn.enqueue(2, 0, 2, 80)
    assert fn.rate(1) == pytest.approx(2.0)
    assert fn.rate(2) == pytest.approx(8.0)
    assert run_all(fn) == [(1, pytest.approx(10.0)), (2, pytest.approx(10.0))]


def test_fifo_per_pair():
    fn = net([10, 10], [10, 10])
    fn.enqueue(1, 0, 1, 40)
    fn.enqueue(2, 0, 1, 60)
    assert fn.rate(2) == 0.0
    fn.advance_to(2.0)
    assert fn.bytes_sent(2) == 0.0
    assert fn.bytes_sent(1) == pytest.approx(20.0)
    assert fn.advance_to(5.0) == [(1, pytest.approx(4.0))]
    assert fn.rate(2) == pytest.approx(10.0)
    assert fn.bytes_sent(2) == pytest.approx(10.0)
    assert run_all(fn) == [(2, pytest.approx(10.0))]


def test_cancel_in_flight_frees_share_at_once():
    fn = net([10, 100, 100], [100, 100, 100])
    fn.enqueue(1, 0, 1, 100)
    fn.enqueue(2, 0, 2, 100)
    fn.advance_to(4.0)
    assert fn.cancel([1]) == {1: pytest.approx(20.0)}
    assert fn.rate(2) == pytest.approx(10.0)
    # 80 bytes left at 10 B/s.
    assert fn.next_completion_time() == pytest.approx(12.0)
    assert run_all(fn) == [(2, pytest.approx(12.0))]
    assert fn.sent_by_node[0] == pytest.approx(120.0)
    assert fn.received_by_node[1] == pytest.approx(20.0)
    assert fn.received_by_node[2] == pytest.approx(100.0)


def test_cancel_queued_returns_zero_and_unknown_is_ignored():
    fn = net([10, 10], [10, 10])
    fn.enqueue(1, 0, 1, 40)
    fn.enqueue(2, 0, 1, 60)
    fn.enqueue(3, 0, 1, 10)
    fn.advance_to(1.0)
    assert fn.cancel([2, 99]) == {2: 0.0}
    assert fn.pending() == [1, 3]
    assert run_all(fn) == [(1, pytest.approx(4.0)), (3, pytest.approx(5.0))]
    assert fn.cancel([1, 3]) == {}


def test_cancel_head_starts_next_message_of_the_pair():
    fn = net([10, 10], [10, 10])
    fn.enqueue(1, 0, 1, 40)
    fn.enqueue(2, 0, 1, 60)
    fn.advance_to(1.0)
    assert fn.cancel([1]) == {1: pytest.approx(10.0)}
    assert fn.rate(2) == pytest.approx(10.0)
    assert run_all(fn) == [(2, pytest.approx(7.0))]


def test_rates_recomputed_when_a_flow_starts_mid_transfer():
    fn = net([10, 100, 100], [100, 100, 100])
    fn.enqueue(1, 0, 1, 100)
    fn.advance_to(4.0)  # 40 bytes sent alone at 10 B/s
    fn.enqueue(2, 0, 2, 100)
    assert fn.rate(1) == pytest.approx(5.0)
    # Flow 1: 60 left at 5 B/s -> 16. Flow 2: 60 sent by then, 40 left at 10 B/s -> 20.
    assert run_all(fn) == [(1, pytest.approx(16.0)), (2, pytest.approx(20.0))]


def test_shared_link_constraint():
    routes = {(0, 1): [0], (2, 3): [0]}
    fn = net([10] * 4, [10] * 4, links=[6.0], route=lambda s, d: routes.get((s, d), []))
    fn.enqueue(1, 0, 1, 30)
    fn.enqueue(2, 2, 3, 30)
    fn.enqueue(3, 0, 3, 70)  # off the link: shares node 0's uplink and node 3's downlink
    assert fn.rate(1) == pytest.approx(3.0)
    assert fn.rate(2) == pytest.approx(3.0)
    assert fn.rate(3) == pytest.approx(7.0)
    assert run_all(fn) == [
        (1, pytest.approx(10.0)),
        (2, pytest.approx(10.0)),
        (3, pytest.approx(10.0)),
    ]


def test_route_out_of_range_is_an_error():
    fn = net([10, 10], [10, 10], links=[5.0], route=lambda s, d: [1])
    with pytest.raises(ValueError, match="route"):
        fn.enqueue(1, 0, 1, 10)


def test_node_counters_add_up_with_partial_transfers():
    fn = net([10, 20, 5], [8, 8, 8])
    fn.enqueue(1, 0, 1, 100)
    fn.enqueue(2, 1, 2, 50)
    fn.enqueue(3, 2, 0, 30)
    fn.enqueue(4, 0, 2, 70)
    done = fn.advance_to(5.0)
    cancelled = fn.cancel([1, 4])
    done += run_all(fn)
    sizes = {1: 100, 2: 50, 3: 30, 4: 70}
    total = sum(sizes[i] for i, _ in done) + sum(cancelled.values())
    assert fn.sent_by_node.sum() == pytest.approx(total)
    assert fn.received_by_node.sum() == pytest.approx(total)
    assert fn.sent_by_node[1] == pytest.approx(50.0)
    assert fn.received_by_node[1] == pytest.approx(cancelled[1])


def test_infinite_capacity():
    fn = net([INF, INF, INF], [INF, 4, INF])
    fn.enqueue(1, 0, 1, 8)  # the receiver bounds it
    fn.enqueue(2, 0, 2, 8)  # nothing bounds it: finishes at once
    assert fn.rate(2) == INF
    assert fn.next_completion_time() == 0.0
    assert fn.advance_to(0.0) == [(2, 0.0)]
    assert fn.rate(1) == pytest.approx(4.0)
    assert run_all(fn) == [(1, pytest.approx(2.0))]
    assert fn.sent_by_node[0] == pytest.approx(16.0)


def test_zero_byte_message_finishes_at_once_then_next_starts():
    fn = net([10, 10], [10, 10])
    fn.advance_to(3.0)
    fn.enqueue(1, 0, 1, 0)
    fn.enqueue(2, 0, 1, 10)
    assert fn.advance_to(3.0) == [(1, 3.0)]
    assert run_all(fn) == [(2, pytest.approx(4.0))]


def test_latency_scalar_and_matrix():
    assert net([1, 1], [1, 1], latency_s=0.25).latency(0, 1) == 0.25
    lat = np.array([[0.0, 0.1], [0.2, 0.0]])
    fn = net([1, 1], [1, 1], latency_s=lat)
    assert fn.latency(0, 1) == 0.1
    assert fn.latency(1, 0) == 0.2


def test_bad_inputs():
    fn = net([1, 1], [1, 1])
    fn.advance_to(1.0)
    with pytest.raises(ValueError):
        fn.advance_to(0.5)
    with pytest.raises(ValueError):
        fn.enqueue(1, 0, 0, 10)
    with pytest.raises(ValueError):
        fn.enqueue(1, 0, 2, 10)
    fn.enqueue(1, 0, 1, 10)
    with pytest.raises(ValueError):
        fn.enqueue(1, 1, 0, 10)
    with pytest.raises(ValueError):
        net([1, 0], [1, 1])
    with pytest.raises(ValueError):
        net([1, 1], [1, 1], latency_s=np.zeros((3, 3)))
    with pytest.raises(KeyError):
        fn.rate(42)


def test_no_residue_after_many_small_steps():
    fn = net([3, 7], [7, 3])
    fn.enqueue(1, 0, 1, 1000)
    for k in range(1, 334):
        fn.advance_to(k * 0.1)
    done = run_all(fn)
    assert done == [(1, pytest.approx(1000 / 3))]
    assert fn.sent_by_node[0] == 1000.0


def test_many_flows_stay_fast():
    n = 60
    rng = np.random.default_rng(0)
    fn = net(rng.uniform(1, 10, n) * 1e6, rng.uniform(1, 10, n) * 1e6)
    msg = 0
    for s in range(n):
        for d in rng.choice(np.delete(np.arange(n), s), 20, replace=False):
            fn.enqueue(msg, s, int(d), int(rng.integers(1, 10**6)))
            msg += 1
    done = run_all(fn)
    assert len(done) == msg
    times = [t for _, t in done]
    assert times == sorted(times)


def scenario(seed: int) -> tuple[list[tuple[int, float]], np.ndarray]:
    rng = np.random.default_rng(seed)
    fn = net(rng.uniform(1, 5, 6), rng.uniform(1, 5, 6))
    for i in range(40):
        s, d = rng.choice(6, 2, replace=False)
        fn.enqueue(i, int(s), int(d), int(rng.integers(1, 50)))
    done = fn.advance_to(5.0)
    fn.cancel(range(0, 40, 3))
    return done + run_all(fn), fn.sent_by_node.copy()


def test_deterministic():
    a, b = scenario(3), scenario(3)
    assert a[0] == b[0]
    assert np.array_equal(a[1], b[1])


def test_max_min_rates_ties_and_chain():
    # Resources: 0 cap 1, 1 cap 10, 2 cap 10. Flow 0 crosses 0,1; flows 1, 2 cross 1; flow 3 on 2.
    caps = np.array([1.0, 10.0, 10.0])
    flow = np.array([0, 0, 1, 2, 3])
    res = np.array([0, 1, 1, 1, 2])
    assert max_min_rates(caps, flow, res, 4) == pytest.approx([1.0, 4.5, 4.5, 10.0])


def random_flow_set(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """Flows from uplinks 0..n-1 to downlinks n..2n-1: equal capacities (exact ties), repeated
    pairs, infinite resources, capacities that leave some resources with negative room."""
    kind = rng.integers(4)
    if kind == 0:
        caps = rng.choice([1.0, 2.0, 3.0, 6.0], size=2 * n)  # many exact ties
    elif kind == 1:
        caps = rng.uniform(0.1, 10.0, size=2 * n)
    elif kind == 2:
        caps = np.full(2 * n, 7.5e6)
        caps[rng.choice(2 * n, size=max(1, n // 8), replace=False)] = rng.uniform(1.2e6, 1.7e6)
    else:
        caps = rng.uniform(0.1, 10.0, size=2 * n)
        caps[rng.random(2 * n) < 0.2] = INF
    k = int(rng.integers(1, 4 * n * n))
    src = rng.integers(n, size=k)
    dst = n + rng.integers(n, size=k)
    perm = rng.permutation(2 * k)  # entries in any order
    flows = np.concatenate([np.arange(k), np.arange(k)])[perm]
    res = np.concatenate([src, dst])[perm]
    return caps, flows, res, k


def test_max_min_rates_matches_the_reference_bit_for_bit():
    rng = np.random.default_rng(7)
    fast_path = 0
    for _ in range(400):
        caps, flows, res, k = random_flow_set(rng, int(rng.integers(1, 12)))
        fast, ref = max_min_rates(caps, flows, res, k), max_min_rates_reference(caps, flows, res, k)
        assert fast.dtype == ref.dtype and fast.tobytes() == ref.tobytes()
        fast_path += bool(np.all(np.isfinite(caps[res])))
    assert fast_path > 200  # most sets take the two-resources-per-flow path


def test_incremental_filling_equals_a_filling_from_scratch_bit_for_bit():
    rng = np.random.default_rng(11)
    restarts = []
    for case in range(30):
        n = int(rng.integers(2, 9))
        caps = random_flow_set(rng, n)[0]
        if not np.all(np.isfinite(caps)):
            caps = np.where(np.isfinite(caps), caps, 5.0)
        filling = IncrementalFilling(caps)
        src = rng.integers(n, size=int(rng.integers(1, 3 * n)))
        dst = rng.integers(n, size=len(src))
        for _ in range(40):
            # a few flows end, a few start (sometimes none: the same set again)
            keep = rng.random(len(src)) > rng.choice([0.0, 0.1, 0.4])
            new = int(rng.integers(0, 4))
            src = np.concatenate([src[keep], rng.integers(n, size=new)])
            dst = np.concatenate([dst[keep], rng.integers(n, size=new)])
            if not len(src):
                continue
            flows = np.arange(len(src))
            entry_flow = np.concatenate([flows, flows])
            entry_res = np.concatenate([src, n + dst])
            want = max_min_rates_reference(caps, entry_flow, entry_res, len(src))
            before = filling.rounds
            got = filling.rates(src, dst)
            assert got.tobytes() == want.tobytes(), case
            restarts.append(before)
    assert sum(r > 0 for r in restarts) > 100  # most fillings reused kept rounds


def test_max_min_rates_falls_back_for_shared_links():
    # flow 0 crosses 0, 1 and the shared link 2; flow 1 crosses 1 only; flow 2 crosses 2 and 3
    caps = np.array([4.0, 3.0, 2.5, 9.0])
    flow = np.array([0, 0, 0, 1, 2, 2])
    res = np.array([0, 1, 2, 1, 2, 3])
    fast, ref = max_min_rates(caps, flow, res, 3), max_min_rates_reference(caps, flow, res, 3)
    assert fast.tobytes() == ref.tobytes()
    assert fast == pytest.approx([1.25, 1.75, 1.25])


# ---------------------------------------------------------------------------------------------
# Property: feasible and max-min at every step; everything completes; bytes are conserved.

capacity = st.one_of(st.floats(0.5, 20.0), st.just(INF))


@st.composite
def networks(draw):
    n = draw(st.integers(2, 5))
    up = draw(st.lists(capacity, min_size=n, max_size=n))
    down = draw(st.lists(capacity, min_size=n, max_size=n))
    links = draw(st.lists(st.floats(0.5, 20.0), max_size=2))
    routes = {
        (s, d): draw(st.lists(st.integers(0, len(links) - 1), max_size=2, unique=True))
        if links
        else []
        for s in range(n)
        for d in range(n)
    }
    ops = draw(
        st.lists(
            st.tuples(
                st.floats(0.0, 3.0),  # time step before the operation
                st.integers(0, n - 1),
                st.integers(1, n - 1),  # receiver offset, so that src != dst
                st.integers(0, 60),  # bytes
                st.booleans(),  # cancel a random pending message instead of sending
            ),
            min_size=1,
            max_size=25,
        )
    )
    return n, up, down, links, routes, ops


def check_allocation(fn: FlowNetwork, info: dict[int, tuple[int, int]], caps, routes) -> None:
    n = fn.n
    heads: dict[tuple[int, int], int] = {}
    for m in fn.pending():
        heads.setdefault(info[m], m)
    flows = {m: pair for pair, m in heads.items()}
    rate = {m: fn.rate(m) for m in flows}
    for m in fn.pending():
        if m not in flows:
            assert fn.rate(m) == 0.0
    res_of = {m: [s, n + d] + [2 * n + k for k in routes[(s, d)]] for m, (s, d) in flows.items()}
    load = np.zeros(len(caps))
    for m, rs in res_of.items():
        if math.isfinite(rate[m]):
            load[rs] += rate[m]
    tol = 1e-7
    assert np.all(load <= caps * (1 + tol) + tol)  # feasible
    for m, rs in res_of.items():
        assert rate[m] > 0
        if not math.isfinite(rate[m]):
            assert all(not math.isfinite(caps[r]) for r in rs)
            continue
        # Max-min: some resource of m is saturated and no flow on it is faster than m.
        assert any(
            load[r] >= caps[r] * (1 - tol)
            and all(rate[o] <= rate[m] * (1 + tol) for o in res_of if r in res_of[o])
            for r in rs
        ), (m, rate, res_of)


def test_pending_of_a_sender_is_in_enqueue_order_across_connections():
    fn = net([10, 10, 10, 10], [10, 10, 10, 10])
    fn.enqueue(7, 0, 2, 40)
    fn.enqueue(3, 0, 1, 40)
    fn.enqueue(9, 1, 0, 40)
    fn.enqueue_many(0, [5, 1, 8], [2, 3, 1], [10, 10, 10])
    assert fn.pending(0) == [7, 3, 5, 1, 8]
    assert fn.pending(1) == [9]
    assert fn.pending(2) == []
    fn.cancel([5, 3])
    assert fn.pending(0) == [7, 1, 8]
    assert fn.pending() == [7, 9, 1, 8]


@settings(max_examples=150, deadline=None)
@given(networks())
def test_property_feasible_max_min_and_conserving(case):
    n, up, down, links, routes, ops = case
    fn = FlowNetwork(np.array(up), np.array(down), links=links, route=lambda s, d: routes[(s, d)])
    caps = np.array(up + down + links, dtype=float)
    info: dict[int, tuple[int, int]] = {}
    sizes: dict[int, int] = {}
    finished: list[tuple[int, float]] = []
    partial = 0.0
    cancelled: set[int] = set()
    for i, (dt, s, off, nbytes, cancel) in enumerate(ops):
        finished += fn.advance_to(fn.now + dt)
        if cancel and fn.pending():
            victim = fn.pending()[nbytes % len(fn.pending())]
            partial += sum(fn.cancel([victim]).values())
            cancelled.add(victim)
        else:
            d = (s + off) % n
            info[i], sizes[i] = (s, d), nbytes
            fn.enqueue(i, s, d, nbytes)
        check_allocation(fn, info, caps, routes)
    while fn.pending():
        t = fn.next_completion_time()
        assert math.isfinite(t)
        finished += fn.advance_to(t)
        check_allocation(fn, info, caps, routes)
    ids = [m for m, _ in finished]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(sizes) - cancelled
    times = [t for _, t in finished]
    assert times == sorted(times)
    total = sum(sizes[m] for m in ids) + partial
    assert fn.sent_by_node.sum() == pytest.approx(total, rel=1e-9, abs=1e-6)
    assert fn.received_by_node.sum() == pytest.approx(total, rel=1e-9, abs=1e-6)
    for node in range(n):
        assert fn.sent_by_node[node] >= -1e-9


# -- bounded rate updates -----------------------------------------------------------------------


def test_bounded_updates_give_new_flows_the_leftover_until_the_next_update() -> None:
    # sender 0 uplink 10 B/s; flow A to 1 starts alone at t=0 and takes all 10 B/s
    net = FlowNetwork(np.array([10.0, 100, 100]), np.array([100.0, 100, 100]), rate_update_s=1.0)
    net.enqueue(1, 0, 1, 100)
    assert net.rate(1) == pytest.approx(10.0)
    net.advance_to(0.5)
    net.enqueue(2, 0, 2, 100)  # no capacity left on 0's uplink: waits for the update at t=1
    assert net.rate(2) == 0.0
    assert net.next_completion_time() == pytest.approx(1.0)
    assert net.advance_to(1.0) == []
    assert net.rate(1) == pytest.approx(5.0) and net.rate(2) == pytest.approx(5.0)
    assert net.recomputations == 2
    # exact mode would have split the uplink at t=0.5 already
    exact = FlowNetwork(np.array([10.0, 100, 100]), np.array([100.0, 100, 100]))
    exact.enqueue(1, 0, 1, 100)
    exact.advance_to(0.5)
    exact.enqueue(2, 0, 2, 100)
    assert exact.rate(2) == pytest.approx(5.0)


def test_bounded_updates_never_exceed_capacity_and_deliver_everything() -> None:
    rng = np.random.default_rng(3)
    n = 6
    net = FlowNetwork(rng.uniform(5, 20, n), rng.uniform(5, 20, n), rate_update_s=0.3)
    msg = 0
    done = []
    for step in range(40):
        for _ in range(rng.integers(0, 4)):
            src, dst = rng.choice(n, 2, replace=False)
            net.enqueue(msg, int(src), int(dst), int(rng.integers(1, 50)))
            msg += 1
        done += net.advance_to(net.now + 0.1 * (step % 3 + 1))
        slots = net._active_slots()
        up = np.bincount(net._src[slots], weights=net._rate[slots], minlength=n)
        down = np.bincount(net._dst[slots], weights=net._rate[slots], minlength=n)
        assert np.all(up <= net._caps[:n] * (1 + 1e-9))
        assert np.all(down <= net._caps[n:] * (1 + 1e-9))
    while math.isfinite(net.next_completion_time()):
        done += net.advance_to(net.next_completion_time())
    assert sorted(i for i, _ in done) == list(range(msg))


def test_a_connection_with_a_backlog_keeps_its_rate_without_recomputing() -> None:
    net = FlowNetwork(np.array([10.0, 10]), np.array([10.0, 10]))
    for i in range(5):
        net.enqueue(i, 0, 1, 10)
    finished = []
    while math.isfinite(net.next_completion_time()):
        finished += net.advance_to(net.next_completion_time())
    assert [t for _, t in finished] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    assert net.recomputations == 1


# -- send buffers: what a flush can no longer recall (sim/send_buffer.py) ------------------------


def _buffered(kernel_bytes: float, frames: int) -> FlowNetwork:
    """Node 0 (10 B/s up) sends A..E (30, 20, 20, 20, 20 B) to node 1 and F (100 B) to node 2.

    The two connections share the uplink at 5 B/s each; at t = 4 A has 10 B left, so B's first
    byte lies 10 B beyond what the connection has transmitted, C's 30 B, D's 50 B, E's 70 B.
    """
    fn = net([10, INF, INF], [INF, INF, INF], send_buffer=SendBuffer(kernel_bytes, frames))
    for msg_id, size in zip("ABCDE", (30, 20, 20, 20, 20), strict=True):
        fn.enqueue(ord(msg_id), 0, 1, size)
    fn.enqueue(ord("F"), 0, 2, 100)
    assert fn.advance_to(4.0) == []
    return fn


@pytest.mark.parametrize(
    ("kernel_bytes", "frames", "kept"),
    [
        (0, 0, "AF"),  # only the frames being written (recall_in_flight = false)
        (10, 0, "AF"),  # B starts exactly at transmitted + 10: not in the kernel
        (10.5, 0, "ABF"),
        (30, 0, "ABF"),
        (30.5, 0, "ABCF"),
        (25, 1, "ABCF"),  # one whole frame in ZeroMQ's pipe after the kernel's
        (0, 2, "ABCF"),
        (25, 5, "ABCDEF"),
        (1e9, 0, "ABCDEF"),
    ],
)
def test_flush_keeps_exactly_the_messages_within_the_send_buffer(kernel_bytes, frames, kept):
    fn = _buffered(kernel_bytes, frames)
    committed = fn.committed(0)
    assert committed == {ord(c) for c in kept}
    assert fn.committed(1) == set()  # sends nothing
    dropped = fn.cancel(m for m in fn.pending(0) if m not in committed)
    assert dropped == dict.fromkeys((ord(c) for c in "ABCDEF" if c not in kept), 0.0)


def test_committed_messages_finish_at_their_max_min_times():
    # kept A (10 B left), B (20 B), F (80 B left), all at 5 B/s: A ends at 4 + 10/5 = 6, B at
    # 6 + 20/5 = 10; then F has the whole uplink: 100 - 5*10 = 50 B left at 10 B/s, ends at 15
    fn = _buffered(25, 0)
    fn.cancel(m for m in fn.pending(0) if m not in fn.committed(0))
    done = run_all(fn)
    assert [m for m, _ in done] == [ord("A"), ord("B"), ord("F")]
    assert [t for _, t in done] == [pytest.approx(6.0), pytest.approx(10.0), pytest.approx(15.0)]
    assert fn.sent_by_node[0] == pytest.approx(150.0)  # committed bytes all count as sent


def test_no_send_buffer_commits_nothing():
    fn = net([10, INF, INF], [INF, INF, INF])
    fn.enqueue(1, 0, 1, 30)
    fn.advance_to(1.0)
    assert fn.send_buffer is None and fn.committed(0) == set()


def test_send_buffer_state_round_trip():
    fn = _buffered(25, 1)
    state = fn.state_dict()
    assert state["send_buffer"] == [25.0, 1.0]
    other = net([10, INF, INF], [INF, INF, INF], send_buffer=SendBuffer(25, 1))
    other.load_state_dict(state)
    assert other.committed(0) == fn.committed(0)
    for f in (fn, other):
        f.cancel(m for m in f.pending(0) if m not in f.committed(0))
    assert run_all(other) == run_all(fn)
    for buffer in (None, SendBuffer(25, 0), SendBuffer(24, 1)):
        mismatched = net([10, INF, INF], [INF, INF, INF], send_buffer=buffer)
        with pytest.raises(ValueError, match="send buffer"):
            mismatched.load_state_dict(state)
    legacy = {k: v for k, v in net([1, 1], [1, 1]).state_dict().items() if k != "send_buffer"}
    net([1, 1], [1, 1]).load_state_dict(legacy)  # a checkpoint made before the model
    net([1, 1], [1, 1], send_buffer=SendBuffer(0, 0)).load_state_dict(legacy)


def test_send_buffer_rejects_negative_sizes():
    with pytest.raises(ValueError, match="kernel_bytes"):
        SendBuffer(-1, 0)
    with pytest.raises(ValueError, match="frames"):
        SendBuffer(0, -1)
    with pytest.raises(ValueError, match="kernel_bytes"):
        SendBuffer(math.nan, 0)


# -- Linux's autotuned send buffer (sim/send_buffer.py, Autotune) ---------------------------------


def test_autotune_sizes_the_buffer_as_linux_does():
    cubic, bbr = AUTOTUNE["cubic"], AUTOTUNE["bbr"]
    # a fresh connection: expand x 10 segments x 2,304 bytes (ss showed tb 69120 under BBR)
    assert cubic.sndbuf(0, math.inf) == 2 * 10 * 2304 == 46080
    assert bbr.sndbuf(0, math.inf) == 3 * 10 * 2304 == 69120
    assert bbr.kernel_bytes(0, math.inf) == pytest.approx(69120 * 2 / 3)
    # slow start: one segment per segment acknowledged (130,000 B = 89 whole segments)
    assert bbr.cwnd(130_000, math.inf) == 99
    assert bbr.sndbuf(130_000, math.inf) == 3 * 99 * 2304 == 684_288
    # bounded by the path: 1000 queued packets over 11 connections = 90.9 segments each;
    # CUBIC tops out there, BBR at twice that
    share = 1000 / 11
    assert cubic.cwnd(10**9, share) == 90
    assert cubic.sndbuf(10**9, share) == 2 * 90 * 2304
    assert bbr.cwnd(10**9, share) == 181
    assert bbr.sndbuf(10**9, share) == 3 * 181 * 2304
    # not yet there: still growing
    assert cubic.cwnd(50 * 1448, share) == 60
    # tcp_wmem's bounds: never above the third field, never below the second
    assert bbr.sndbuf(10**12, math.inf) == cubic.sndbuf(10**12, math.inf) == 4 * 1024 * 1024
    tiny = Autotune(segment_memory=100)
    assert tiny.sndbuf(0, math.inf) == 16384  # 2 x 10 x 100 = 2,000 < tcp_wmem[1]
    # a path too small for the initial window leaves it at its start
    assert cubic.cwnd(10**9, 3.5) == 10


@pytest.mark.parametrize(
    "bad",
    [
        {"expand": 0},
        {"mss": 0},
        {"cwnd_gain": 0.0},
        {"cwnd_gain": math.nan},
        {"writable": 0.0},
        {"writable": 1.5},
        {"wmem_default": -1},
    ],
)
def test_autotune_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="autotune needs"):
        Autotune(**bad)


# a buffer whose numbers can be followed by hand: 10-byte segments of 10 bytes of memory,
# the window starts at one segment, the whole buffer holds payload: kernel bytes =
# 10 x (1 + acked // 10), i.e. 10 bytes more than the connection has transmitted (whole segments)
_HAND = Autotune(expand=1, mss=10, init_cwnd=1, segment_memory=10, wmem_default=0, writable=1.0)


def _autotuned(t: float, queue_packets: int = 10**6) -> FlowNetwork:
    """Node 0 (10 B/s up) queues 20 messages of 20 B to node 1 at t = 0; advanced to ``t``."""
    buffer = SendBuffer(0, 0, _HAND, queue_packets=queue_packets)
    fn = net([10, INF, INF], [INF, INF, INF], send_buffer=buffer)
    for k in range(20):
        fn.enqueue(k, 0, 1, 20)
    fn.advance_to(t)
    return fn


def test_a_flush_early_in_a_connection_recalls_more_than_a_late_one():
    # t = 1: the head (0) has sent 10 B, so the kernel holds 10 x (1 + 1) = 20 B beyond them:
    # message 1 starts 10 B beyond (kept), message 2 30 B beyond (recalled)
    early = _autotuned(1.0)
    assert early.committed(0) == {0, 1}
    # t = 11: five messages done, the head (5) has sent 10 B: 110 B acknowledged, 120 B in the
    # kernel; message k starts 10 + 20 (k - 6) B beyond, so 6..11 are kept (11 at 110 B)
    late = _autotuned(11.0)
    assert late.committed(0) == set(range(5, 12))
    # the growth is per connection: one opened later starts small again. From t = 11 the two
    # heads share the uplink at 5 B/s: at t = 13 message 5 is done (120 B acknowledged, 130 B
    # in the kernel: 6..12 kept) while the new connection's head (100) has sent 10 B (20 B in
    # the kernel: only 101, 10 B beyond, is kept with it)
    for k in (100, 101, 102):
        late.enqueue(k, 0, 2, 20)
    late.advance_to(13.0)
    assert late.committed(0) == set(range(6, 13)) | {100, 101}


def test_the_path_bounds_the_autotuned_window():
    # a queue of 5 packets, one connection: the window stops at 5 segments, 50 B, whatever has
    # been acknowledged; at t = 11 message k starts 10 + 20 (k - 6) B beyond: 6 and 7 are kept
    fn = _autotuned(11.0, queue_packets=5)
    assert fn.path_segments(0, 1) == 5.0
    assert fn.committed(0) == {5, 6, 7}
    # a second connection on the uplink halves each one's share (the downlinks are uncapped)
    fn.enqueue(100, 0, 2, 20)
    assert fn.path_segments(0, 1) == fn.path_segments(0, 2) == 2.5


def test_path_segments_count_the_bandwidth_delay_product_at_the_bottleneck():
    # node 0 -> 1 over 1000 B/s up (two connections opened) and a 300 B/s downlink (one):
    # 500 B/s per connection up, 300 down: the downlink is the bottleneck. Round trip 1 s:
    # 300 B / 10-byte segments = 30 segments in flight, plus the 4-packet queue
    buffer = SendBuffer(0, 0, _HAND, queue_packets=4)
    fn = net([1000, INF, INF], [INF, 300, INF], latency_s=0.5, send_buffer=buffer)
    fn.enqueue(1, 0, 1, 10)
    fn.enqueue(2, 0, 2, 10)
    assert fn.path_segments(0, 1) == pytest.approx(34.0)
    # the uplink alone: 500 B/s x 1 s / 10 + 4, shared by its two connections
    assert fn.path_segments(0, 2) == pytest.approx((1000 * 1.0 / 10 + 4) / 2)
    with pytest.raises(ValueError, match="autotuned"):
        net([1, 1], [1, 1]).path_segments(0, 1)


def test_autotuned_state_round_trip():
    fn = _autotuned(11.0)
    fn.enqueue(100, 0, 2, 20)
    state = fn.state_dict()
    tuned = [1.0, 1.0, 10.0, 1.0, 10.0, 0.0, 4 * 1024 * 1024, 1.0, 10.0**6]
    assert state["send_buffer"] == [0.0, 0.0, *tuned]
    other = _autotuned(0.0)  # nothing transmitted yet: a smaller buffer
    assert other.committed(0) != fn.committed(0)
    other.load_state_dict(state)
    assert other.committed(0) == fn.committed(0)
    assert other.path_segments(0, 1) == fn.path_segments(0, 1)
    for f in (fn, other):
        f.cancel(m for m in f.pending(0) if m not in f.committed(0))
    assert run_all(other) == run_all(fn)
    fixed = net([10, INF, INF], [INF, INF, INF], send_buffer=SendBuffer(0, 0))
    with pytest.raises(ValueError, match="send buffer"):
        fixed.load_state_dict(state)
