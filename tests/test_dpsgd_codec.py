"""D-PSGD's ``float_codec``: lossless, so the same models as raw float32; only the bytes change,
and they are the codec's real output (simulator and deployed wire alike)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peerlearn.codecs.dense import DenseVector
from peerlearn.codecs.floats import FPZIP, RAW, fpzip_available
from peerlearn.codecs.message import HEADER_BYTES, Message
from peerlearn.codecs.partial import PartialPayload
from peerlearn.config import dump_config, load_config
from peerlearn.deploy.wire import (
    WireLimits,
    algorithm_payloads,
    decode_message,
    default_max_bytes,
    encode_message,
)
from peerlearn.experiment import build_setup
from peerlearn.protocols import registry
from peerlearn.protocols.base import MessageArrived, NodeContext, Record, Send
from peerlearn.protocols.dpsgd import DPSGD
from peerlearn.sim.engine import Simulator
from tests.conftest import SMALL, small

needs_fpzip = pytest.mark.skipif(not fpzip_available(), reason="fpzip not installed")
ROUNDS = ["stop.iterations=4", "stop.virtual_time_s=1000", "eval.every_iterations=1"]


def test_raw_is_the_unset_default_and_leaves_dumps_unchanged() -> None:
    base = load_config(None, SMALL)
    raw = load_config(None, [*SMALL, "algorithm.float_codec=raw"])
    assert base.algorithm.float_codec is None and raw.algorithm.float_codec is None
    assert dump_config(raw) == dump_config(base)
    assert "float_codec" not in dump_config(base)
    fp = load_config(None, [*SMALL, "algorithm.float_codec=fpzip"])
    assert 'float_codec = "fpzip"' in dump_config(fp)
    with pytest.raises(Exception, match="float_codec"):
        load_config(None, [*SMALL, "algorithm.float_codec=zstd"])


def _run(*extra: str, spy: list | None = None, monkeypatch=None):
    if spy is not None:

        class Spy(DPSGD):
            def handle(self, event):
                actions = super().handle(event)
                spy.extend(a.payload for a in actions if isinstance(a, Send))
                return actions

        monkeypatch.setitem(registry.PROTOCOLS, "dpsgd", Spy)
    sim = Simulator(build_setup(small(*ROUNDS, *extra)))
    return sim, sim.run()


_BYTES = ("bytes_", "float_codec_fpzip")


def _without_bytes(rows) -> list:
    """Every row but the byte counts and the codec record, without the virtual time and sorted:
    the times (hence the order of rows) depend on the bytes, smaller messages arrive sooner."""
    return sorted((n, it, m, v) for _, n, it, m, v in rows if not m.startswith(_BYTES))


@needs_fpzip
def test_fpzip_gives_the_raw_run_except_bytes_which_are_the_codecs_output(monkeypatch) -> None:
    raw_sim, raw = _run()
    sent: list = []
    fp_sim, fp = _run("algorithm.float_codec=fpzip", spy=sent, monkeypatch=monkeypatch)
    assert raw.finished_all and fp.finished_all
    assert torch.equal(raw_sim.models, fp_sim.models)  # bit for bit
    assert _without_bytes(fp_sim.recorder.rows) == _without_bytes(raw_sim.recorder.rows)
    codec_rows = [r for r in fp_sim.recorder.rows if r[3] == "float_codec_fpzip"]
    assert len(codec_rows) == 6 and all(r[4] == 1.0 for r in codec_rows)
    # bytes: 28-byte header + what fpzip really wrote + 5 bytes of degree and flags
    assert len(sent) == 4 * 6 * 2 and all(isinstance(p, PartialPayload) and p.full for p in sent)
    numel = build_setup(small()).model.layout.numel
    for p in sent:
        assert p.data_bytes == len(FPZIP.encode(p.values)) and p.meta_bytes == 5
        assert len(p.encode()) == p.nbytes
    assert fp.bytes_sent.sum() == sum(HEADER_BYTES + p.nbytes for p in sent)
    assert fp.counters.data.sum() == sum(p.data_bytes for p in sent)
    assert raw.bytes_sent.sum() == len(sent) * (HEADER_BYTES + 4 + 4 * numel)
    assert fp.bytes_sent.sum() != raw.bytes_sent.sum()


def test_auto_takes_fpzip_where_usable_else_raw(monkeypatch) -> None:
    from peerlearn.codecs import floats

    ctx = NodeContext(0, 2, (1,), torch.ones(5), np.random.default_rng(0))
    cfg = load_config(None, [*SMALL, "algorithm.float_codec=auto"]).algorithm
    want = FPZIP if fpzip_available() else RAW
    assert DPSGD(ctx, cfg, local_steps=1, max_iterations=None).codec is want
    monkeypatch.setattr(floats, "fpzip_available", lambda: False)
    node = DPSGD(ctx, cfg, local_steps=1, max_iterations=None)
    assert node.codec is RAW and node.start_records() == [Record("float_codec_fpzip", 0.0)]
    payload, _ = node.make_payload()
    assert isinstance(payload, PartialPayload) and payload.data_bytes == 4 * 5
    assert DPSGD(ctx, None, local_steps=1, max_iterations=None).start_records() == []


@needs_fpzip
def test_deployed_frame_round_trip_gives_the_same_vector() -> None:
    from peerlearn.deploy.decoder import SandboxedFpzip

    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    msg = Message(0, 1, "model", 3, PartialPayload(x, None, 4, FPZIP))
    frame = encode_message(msg)
    assert len(frame) == msg.nbytes < HEADER_BYTES + 4 * x.size
    codec = SandboxedFpzip()  # what a deployed node decodes fpzip with
    try:
        limits = WireLimits(
            1, 4, x.size, algorithm_payloads("dpsgd"), default_max_bytes(x.size), codec
        )
        got = decode_message(frame, limits, identity=0)
    finally:
        codec.process.close()
    assert got.payload.full and got.payload.degree == 4
    assert np.array_equal(got.payload.values.view(np.uint32), x.view(np.uint32))
    # and the raw default still travels as the dense payload
    dense = Message(0, 1, "model", 3, DenseVector(torch.from_numpy(x), 4))
    assert len(encode_message(dense)) == HEADER_BYTES + 4 + 4 * x.size


def test_a_partial_or_short_model_is_ignored_not_merged() -> None:
    ctx = NodeContext(0, 2, (1,), torch.zeros(4), np.random.default_rng(0))
    node = DPSGD(ctx, None, local_steps=1, max_iterations=None)
    for bad in (
        PartialPayload(np.ones(2, np.float32), np.array([0, 2]), 1, RAW),
        PartialPayload(np.ones(3, np.float32), None, 1, RAW),
    ):
        acts = node.handle(MessageArrived(Message(1, 0, "model", 0, bad)))
        assert acts == [Record("ignored_messages", 1.0)]
    assert not node.inbox


@needs_fpzip
def test_a_dpsgd_deployment_with_fpzip_accepts_every_frame(tmp_path, monkeypatch) -> None:
    """Real sockets, 3 nodes: every fpzip model passes the receiver's checks and sandboxed
    decoder, and the nodes average as in the simulator."""
    from peerlearn.deploy.launcher import deploy_experiment
    from tests.test_deploy_node import free_port_base
    from tests.test_deploy_run import _env

    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    cfg = load_config(
        None,
        [
            "nodes=3",
            "data.dataset=digits",
            "model.hidden=[32]",
            "train.local_steps=5",
            "topology.kind=full",
            "algorithm.float_codec=fpzip",
            "stop.virtual_time_s=4",
            "eval.every_s=1",
            f"deploy.base_port={free_port_base(3)}",
            "deploy.nodes_per_process=3",
        ],
    )
    _, summary = deploy_experiment(cfg, tmp_path / "run", quiet=True)
    assert summary["deploy"]["nodes_failed"] == []
    assert summary["deploy"]["messages_rejected"] == {}
    assert summary["iterations"]["min"] >= 3
    assert summary["messages"]["delivered"] > 0
