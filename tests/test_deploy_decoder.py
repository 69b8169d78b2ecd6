"""The fpzip decoder child: exact on honest blobs; crashes, hangs and forgeries are counted."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

from peerlearn.codecs.floats import FPZIP, fpzip_available
from peerlearn.codecs.message import PayloadError
from peerlearn.deploy.decoder import DecoderProcess, SandboxedFpzip

pytestmark = pytest.mark.skipif(not fpzip_available(), reason="fpzip not installed")


@pytest.fixture(scope="module")
def codec():
    c = SandboxedFpzip()
    yield c
    c.process.close()


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.uint32, hnp.array_shapes(min_dims=1, max_dims=1, min_side=1, max_side=3000)))
def test_honest_blobs_decode_bit_exactly(codec, bits) -> None:
    values = bits.view(np.float32)  # every bit pattern: NaN payloads, infinities, subnormals
    blob = FPZIP.encode(values)
    got = codec.decode(blob, values.size)
    assert np.array_equal(got.view(np.uint32), bits)


def test_forged_bodies_are_refused_and_the_child_comes_back(codec) -> None:
    values = np.linspace(-1, 1, 500, dtype=np.float32)
    blob = FPZIP.encode(values)
    rng = np.random.default_rng(3)
    reasons = []
    for _ in range(6):
        forged = blob[:28] + rng.integers(0, 256, len(blob) - 28, dtype=np.uint8).tobytes()
        with pytest.raises(PayloadError) as err:
            codec.decode(forged, 500)
        reasons.append(err.value.reason)
    assert set(reasons) <= {"decoder_crashed", "undecodable"}
    assert codec.process.restarts == reasons.count("decoder_crashed")
    assert np.array_equal(codec.decode(blob, 500), values)  # and it still decodes


def test_a_blob_of_another_count_never_reaches_the_child() -> None:
    proc = DecoderProcess(command=(sys.executable, "-c", "raise SystemExit(3)"))
    codec = SandboxedFpzip(proc)
    blob = FPZIP.encode(np.ones(10, np.float32))
    for count in (9, 11):
        with pytest.raises(PayloadError) as err:
            codec.decode(blob, count)
        assert err.value.reason in {"bad_codec_header", "bad_count"}
    assert proc.proc is None  # checked in Python, no child was ever started
    with pytest.raises(PayloadError) as err:
        codec.decode(b"", 3)
    assert err.value.reason == "bad_count"


def test_a_hanging_child_is_cut_by_the_timeout() -> None:
    hang = "import sys, time; sys.stdout.buffer.write(b'R'); sys.stdout.flush(); time.sleep(60)"
    proc = DecoderProcess(timeout_s=0.3, per_value_s=0.0, command=(sys.executable, "-c", hang))
    codec = SandboxedFpzip(proc)
    blob = FPZIP.encode(np.ones(10, np.float32))
    try:
        with pytest.raises(PayloadError) as err:
            codec.decode(blob, 10)
        assert err.value.reason == "decoder_timeout"
        assert proc.restarts == 1 and proc.proc is not None  # the next child is already starting
    finally:
        proc.close()


def test_a_dead_child_is_a_crash_not_an_exception() -> None:
    proc = DecoderProcess(command=(sys.executable, "-c", "raise SystemExit(0)"))
    codec = SandboxedFpzip(proc)
    blob = FPZIP.encode(np.ones(10, np.float32))
    try:
        for _ in range(2):
            with pytest.raises(PayloadError) as err:
                codec.decode(blob, 10)
            assert err.value.reason == "decoder_crashed"
        assert proc.restarts == 2
    finally:
        proc.close()


def test_a_topk_deployment_with_fpzip_accepts_every_honest_frame(tmp_path, monkeypatch) -> None:
    """Real sockets: every fpzip blob a node sends passes the receiver's header check, the
    child decoder and its re-encoding check (one child shared by the process's 3 nodes)."""
    from peerlearn.config import load_config
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
            "algorithm.name=topk",
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
