"""CHOCO-SGD's ``wire = "reference"``: decentralizepy's TopK with ties and int64 indices, against
hand-computed cases and bytes per message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peerlearn.codecs.message import HEADER_BYTES, Message
from peerlearn.codecs.sparse import SparseVector, SparseVector64
from peerlearn.config import dump_config, load_config
from peerlearn.config.algorithms_sparse import ChocoConfig
from peerlearn.deploy.wire import (
    WireLimits,
    algorithm_payloads,
    decode_message,
    default_max_bytes,
    encode_message,
)
from peerlearn.experiment import build_setup
from peerlearn.protocols import registry
from peerlearn.protocols.base import MessageArrived, Record, Send, Started, TrainingDone
from peerlearn.protocols.choco import Choco, top_k_with_ties
from peerlearn.protocols.sparse import top_k_indices
from peerlearn.sim.engine import Simulator
from tests.conftest import SMALL, small
from tests.test_jwins import drive_rounds, initial_models, make_nodes

REFERENCE = ChocoConfig(fraction=1 / 3, gamma=0.5, wire="reference")


@pytest.mark.parametrize(
    ("k", "kept"),
    [
        (1, [0]),  # threshold 3: no tie
        (2, [0, 2, 3, 4]),  # threshold 2, held by three coordinates: 4 kept for k = 2
        (3, [0, 2, 3, 4]),
        (4, [0, 2, 3, 4]),  # exactly k
        (5, [0, 1, 2, 3, 4]),
        (6, [0, 1, 2, 3, 4, 5]),
        (0, [0, 1, 2, 3, 4, 5]),  # round(fraction * N) = 0: the reference skips TopK
    ],
)
def test_ties_at_the_threshold_are_all_kept(k: int, kept: list[int]) -> None:
    scores = np.array([3.0, 1.0, 2.0, 2.0, 2.0, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(top_k_with_ties(scores, k), kept)
    if 0 < k < 6:
        assert top_k_indices(scores, k).size == k  # the default keeps exactly k


def _reference_mask(q: np.ndarray, k: int) -> np.ndarray:
    """decentralizepy's ``topk_sparsification_tensor`` (in torch, as it is written there)."""
    t = torch.from_numpy(q.copy())
    a = t.abs()
    if k > 0:
        cutoff, _ = torch.kthvalue(-a.flatten(), k)
        t[a < -cutoff] = 0
    return t.flatten().nonzero(as_tuple=True)[0].numpy()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-4, 4), min_size=1, max_size=60),  # few values: many ties and zeros
    st.floats(0.0, 1.0),
)
def test_same_coordinates_as_the_reference_formula(ints: list[int], fraction: float) -> None:
    q = np.array(ints, dtype=np.float32) * np.float32(0.25)
    k = round(fraction * q.size)
    idx = top_k_with_ties(np.abs(q), k)
    idx = idx[q[idx] != 0]  # what Choco.make_payload then keeps
    np.testing.assert_array_equal(idx, _reference_mask(q, k))


def _first_round(params: ChocoConfig, a: list[float], b: list[float]):
    models = [torch.tensor(a), torch.tensor(b)]
    nodes = make_nodes(Choco, params, models, edges=[(0, 1)])
    for n in nodes:
        n.handle(Started())
    out = [n.handle(TrainingDone(1)) for n in nodes]
    return nodes, out, [next(x for x in acts if isinstance(x, Send)) for acts in out]


A = [1.0, -2.0, 2.0, 0.5, 2.0, 0.0]
B = [3.0, 0.0, -3.0, 1.0, 1.0, 0.25]


def test_one_round_by_hand_with_ties() -> None:
    a0, b0 = np.array(A, np.float32), np.array(B, np.float32)
    nodes, out, sends = _first_round(REFERENCE, A, B)
    # k = round(6 / 3) = 2. Node 0: |q| = |x| = 1 2 2 .5 2 0, the 2nd largest is 2, held three
    # times: 3 values. Node 1: 3 0 3 1 1 .25, threshold 3, held twice: 2 values.
    p0, p1 = sends[0].payload, sends[1].payload
    assert type(p0) is SparseVector64 and type(p1) is SparseVector64
    np.testing.assert_array_equal(p0.indices, [1, 2, 4])
    np.testing.assert_array_equal(p0.values, [-2.0, 2.0, 2.0])
    np.testing.assert_array_equal(p1.indices, [0, 2])
    np.testing.assert_array_equal(p1.values, [3.0, -3.0])
    assert Record("sent_fraction", 3 / 6) in out[0] and Record("sent_fraction", 2 / 6) in out[1]
    # bytes: int32 degree, uint32 count, then 8 + 4 bytes per coordinate
    assert (p0.meta_bytes, p0.data_bytes, p0.nbytes) == (8 + 3 * 8, 3 * 4, 44)
    assert (p1.meta_bytes, p1.data_bytes, p1.nbytes) == (8 + 2 * 8, 2 * 4, 32)
    for p in (p0, p1):
        assert len(p.encode()) == p.nbytes
    for i, s in enumerate(sends):
        got = SparseVector64.decode(s.payload.encode())
        nodes[s.dest].handle(MessageArrived(Message(i, s.dest, "model", 0, got)))
    q0 = np.array([0, -2.0, 2.0, 0, 2.0, 0], np.float32)
    q1 = np.array([3.0, 0, -3.0, 0, 0, 0], np.float32)
    # MH weights 1/2 each: x_hat = q_own, s = (q0 + q1) / 2, x += gamma (s - x_hat)
    np.testing.assert_array_equal(nodes[0].x_hat, q0)
    np.testing.assert_array_equal(nodes[0].s, (q0 + q1) / 2)
    np.testing.assert_allclose(nodes[0].ctx.model, a0 + 0.5 * ((q0 + q1) / 2 - q0))
    np.testing.assert_allclose(nodes[1].ctx.model, b0 + 0.5 * ((q0 + q1) / 2 - q1))


def test_the_default_keeps_exactly_k_with_int32_indices() -> None:
    _, _, sends = _first_round(ChocoConfig(fraction=1 / 3, gamma=0.5), A, B)
    p0 = sends[0].payload
    assert type(p0) is SparseVector and p0.indices.size == 2
    assert (p0.meta_bytes, p0.data_bytes, p0.nbytes) == (8 + 2 * 4, 2 * 4, 24)


def test_zero_k_sends_every_nonzero_as_the_reference() -> None:
    # round(0.05 * 6) = 0: the reference does not sparsify; exact zeros never travel
    _, _, sends = _first_round(ChocoConfig(fraction=0.05, wire="reference"), A, B)
    np.testing.assert_array_equal(sends[0].payload.indices, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(sends[1].payload.indices, [0, 2, 3, 4, 5])
    _, _, sends = _first_round(ChocoConfig(fraction=0.05), A, B)
    assert sends[0].payload.indices.size == 0


def test_reference_with_compress_keeps_ties_in_the_elias_format() -> None:
    params = ChocoConfig(fraction=1 / 3, wire="reference", compress=True, float_codec="raw")
    _, _, sends = _first_round(params, A, B)
    np.testing.assert_array_equal(sends[0].payload.indices, [1, 2, 4])


def test_reference_and_int32_agree_without_ties() -> None:
    """Continuous random models have no ties: the same coordinates, so the same models; only
    the index width differs."""
    hist = {}
    for wire in ("int32", "reference"):
        nodes = make_nodes(Choco, ChocoConfig(fraction=0.1, wire=wire), initial_models())
        sent: list = []
        hist[wire] = (drive_rounds(nodes, 4, sent=sent), sent)
    for x, y in zip(hist["int32"][0], hist["reference"][0], strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    for (_, s32), (_, s64) in zip(hist["int32"][1], hist["reference"][1], strict=True):
        n = s32.payload.indices.size
        assert s64.payload.indices.size == n
        assert s64.payload.nbytes - s32.payload.nbytes == 4 * n


def test_config_int32_is_unset_and_dumps_are_unchanged() -> None:
    base = load_config(None, [*SMALL, "algorithm.name=choco"])
    explicit = load_config(None, [*SMALL, "algorithm.name=choco", "algorithm.wire=int32"])
    assert base.algorithm.wire is None and explicit.algorithm.wire is None
    assert dump_config(explicit) == dump_config(base) and "\nwire =" not in dump_config(base)
    ref = load_config(None, [*SMALL, "algorithm.name=choco", "algorithm.wire=reference"])
    assert 'wire = "reference"' in dump_config(ref)
    with pytest.raises(Exception, match="wire"):
        load_config(None, [*SMALL, "algorithm.name=choco", "algorithm.wire=int64"])


def test_deployed_frame_round_trip() -> None:
    idx = np.array([0, 5, 17, 49])
    vals = np.array([1.0, -2.5, 3.25, 0.125], np.float32)
    msg = Message(0, 1, "model", 2, SparseVector64(idx, vals, 3))
    frame = encode_message(msg)
    assert len(frame) == msg.nbytes == HEADER_BYTES + 8 + 12 * 4
    limits = WireLimits(1, 4, 50, algorithm_payloads("choco"), default_max_bytes(50))
    got = decode_message(frame, limits, identity=0).payload
    assert type(got) is SparseVector64 and got.degree == 3
    np.testing.assert_array_equal(got.indices, idx)
    np.testing.assert_array_equal(got.values, vals)
    # a message with every coordinate fits the default size limit
    full = Message(0, 1, "model", 2, SparseVector64(np.arange(50), np.ones(50, np.float32)))
    decode_message(encode_message(full), limits, identity=0)


def test_simulator_counts_the_int64_bytes(monkeypatch) -> None:
    sizes: list[int] = []

    class Spy(Choco):
        def handle(self, event):
            actions = super().handle(event)
            for a in actions:
                if isinstance(a, Send):
                    assert type(a.payload) is SparseVector64
                    sizes.append(a.payload.indices.size)
            return actions

    monkeypatch.setitem(registry.PROTOCOLS, "choco", Spy)
    algo = ["algorithm.name=choco", "algorithm.wire=reference"]
    cfg = small(*algo, "stop.iterations=3", "stop.virtual_time_s=1000")
    result = Simulator(build_setup(cfg)).run()
    assert result.finished_all and len(sizes) == 3 * 6 * 2
    assert result.bytes_sent.sum() == sum(HEADER_BYTES + 8 + 12 * n for n in sizes)
    assert result.counters.data.sum() == sum(4 * n for n in sizes)
